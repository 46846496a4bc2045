//! History in Redis: one stream per topic (`<p>:h:{topic}`) and its epoch (`<p>:he:{topic}`),
//! in the topic's slot (docs/history.md).
//!
//! A broadcast on a route with history is appended and published by one script, so the
//! position every subscriber sees is the stream's id, and the order of the stream is the
//! order of delivery on every node.

use std::sync::Arc;

use redis::Value;

use super::history::{self, Position, Replay, Retention, Since};
use super::{envelope, Broadcast};
use crate::cluster::{ClusterError, Redis};

/// Appends an envelope to a topic's stream and publishes it with its position.
/// KEYS: stream, epoch. ARGV: channel, envelope, max length, ttl ms, a fresh epoch (used
/// when the stream is new: an old position must not match a new stream), publish verb.
/// The published message is the envelope with `"pos":"<epoch>:<id>"` put first.
pub(crate) const APPEND_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[5]
  redis.call('SET', KEYS[2], epoch)
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[1], '{"pos":"' .. epoch .. ':' .. id .. '",' .. string.sub(ARGV[2], 2))
return id
"#;

/// Reads a topic's history. KEYS: stream, epoch. ARGV: `last` and a count, or `since`, a
/// stream id and a count. Returns {} without history, else {epoch, last id, newest trimmed
/// id, entries}.
const READ_SCRIPT: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch or redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, trimmed = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then trimmed = info[i + 1] end
end
local entries
if ARGV[1] == 'last' then
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[2])
else
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
return {epoch, last, trimmed, entries}
";

/// The EVALSHA of one append (see `APPEND_SCRIPT`).
pub(crate) fn append_cmd(
    redis: &Redis,
    topic: &str,
    envelope: &[u8],
    retention: Retention,
    verb: &str,
) -> redis::Cmd {
    let script = redis::Script::new(APPEND_SCRIPT);
    let k = &redis.keys;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(2)
        .arg(k.history(topic))
        .arg(k.history_epoch(topic))
        .arg(k.channel(topic))
        .arg(envelope)
        .arg(retention.size.max(1))
        .arg(ttl_ms(retention))
        .arg(history::new_epoch())
        .arg(verb);
    cmd
}

fn ttl_ms(retention: Retention) -> u64 {
    u64::try_from(retention.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Loads the append script on every primary (after `NOSCRIPT`).
pub(crate) async fn load(redis: &Redis) -> Result<(), ClusterError> {
    redis
        .query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(APPEND_SCRIPT))
        .await
        .map(drop)
}

/// Reads a topic's history (see [`Replay`]).
pub(crate) async fn read(
    redis: &Redis,
    topic: &str,
    retention: Retention,
    since: &Since,
) -> Result<Replay, ClusterError> {
    let script = redis::Script::new(READ_SCRIPT);
    let mut inv = script.prepare_invoke();
    inv.key(redis.keys.history(topic))
        .key(redis.keys.history_epoch(topic));
    match since {
        Since::Last(n) => inv.arg("last").arg((*n).min(retention.size)),
        Since::After(p) => inv
            .arg("since")
            .arg(format!("{}-{}", p.offset.0, p.offset.1))
            .arg(retention.size.max(1) + 1),
    };
    let reply: Vec<Value> = redis.script(&inv).await?;
    let [epoch, last, trimmed, entries] = <[Value; 4]>::try_from(reply)
        .unwrap_or_else(|_| [Value::Nil, Value::Nil, Value::Nil, Value::Nil]);
    let (Some(epoch), Some(last), Some(trimmed)) = (text(&epoch), text(&last), text(&trimmed))
    else {
        // No history for this topic (never written, expired, or Redis lost it).
        return Ok(Replay {
            recovered: matches!(since, Since::Last(_)),
            ..Replay::default()
        });
    };
    let epoch: Arc<str> = epoch.into();
    let (Some(last), Some(trimmed)) = (history::parse_id(&last), history::parse_id(&trimmed))
    else {
        return Err(ClusterError::Layout(
            "history stream ids are not ids".into(),
        ));
    };
    let position = Some(Position {
        epoch: epoch.clone(),
        offset: last,
    });
    if let Since::After(p) = since {
        // The stream is trimmed approximately (`MAXLEN ~`): it may hold a little more than
        // `size`. Recovery is promised for at most `size` missed messages, as in memory;
        // the read asked for one more to tell.
        let too_many = matches!(&entries, Value::Array(e) if e.len() > retention.size);
        if too_many || !history::recoverable(p, &epoch, last, trimmed) {
            return Ok(Replay {
                recovered: false,
                position,
                messages: Vec::new(),
            });
        }
    }
    let Value::Array(entries) = entries else {
        return Ok(Replay {
            recovered: true,
            position,
            messages: Vec::new(),
        });
    };
    let mut messages: Vec<Arc<Broadcast>> = entries
        .iter()
        .filter_map(|e| entry(e, &epoch, topic))
        .collect();
    if matches!(since, Since::Last(_)) {
        messages.reverse(); // XREVRANGE: newest first
    }
    Ok(Replay {
        recovered: true,
        position,
        messages,
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// One stream entry `[id, ["e", envelope]]` as a broadcast with its position.
fn entry(e: &Value, epoch: &Arc<str>, topic: &str) -> Option<Arc<Broadcast>> {
    let Value::Array(parts) = e else { return None };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset = history::parse_id(&text(id)?)?;
    let Value::BulkString(bytes) = fields.get(1)? else {
        return None;
    };
    let mut b = envelope::decode(bytes).ok()?.broadcast;
    if b.topic != topic {
        return None;
    }
    b.position = Some(Position {
        epoch: epoch.clone(),
        offset,
    });
    Some(Arc::new(b))
}
