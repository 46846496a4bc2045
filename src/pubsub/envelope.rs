//! The message published to Redis for a broadcast (documented in docs/redis.md).
//!
//! A JSON object, so that any backend can publish into the gateway through Redis:
//! `{"v":1,"node":"<origin>","from":<sender>,"topic":"..","event":"..","payload":{..},"ts":<ms>}`
//! with `"binary":"<base64>"` instead of `payload` for binary broadcasts.

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Broadcast, Position, Seq};
use crate::protocol::Payload;

/// The envelope version this gateway writes and reads.
pub const VERSION: u32 = 1;

#[derive(Serialize)]
struct Out<'a> {
    v: u32,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<u64>,
    topic: &'a str,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<JsonOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    binary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// Set by the append script in Redis; written here only when re-encoding a decoded one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pos: Option<String>,
    /// The origin's number for this topic (normally stamped by the publisher task).
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
    ts: u64,
}

/// A JSON payload as a value or as text encoded earlier (copied verbatim).
#[derive(Serialize)]
#[serde(untagged)]
enum JsonOut<'a> {
    Value(&'a Value),
    Encoded(Box<serde_json::value::RawValue>),
}

#[derive(Deserialize)]
struct In {
    v: u32,
    #[serde(default)]
    node: String,
    #[serde(default)]
    from: Option<u64>,
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    binary: Option<String>,
    /// The presence change number of a `presence_diff`.
    #[serde(default)]
    seq: Option<u64>,
    /// The history position, added by the append script (`<epoch>:<stream id>`).
    #[serde(default)]
    pos: Option<String>,
    /// The origin node's number of this envelope on its topic (`numbering.rs`).
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    ts: u64,
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Origin node id (empty for external publishers).
    pub node: String,
    /// Subscriber that sent it (`broadcast_from`), meaningful only on the origin node.
    pub from: Option<u64>,
    /// Publish time, unix milliseconds (0 if unknown).
    pub ts: u64,
    /// The origin's number of this envelope on its topic (None from external publishers).
    pub n: Option<u64>,
    /// The broadcast.
    pub broadcast: Broadcast,
}

/// Why an envelope was rejected.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or missing fields.
    #[error("invalid envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// `binary` is not base64.
    #[error("invalid envelope: binary payload: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Both `payload` and `binary`.
    #[error("invalid envelope: both payload and binary")]
    BothPayloads,
    /// A version this gateway does not read.
    #[error("unsupported envelope version {0}")]
    Version(u32),
}

/// Whether an envelope was published by a backend rather than a gateway node (no `node`, or
/// an empty one). Reads only the top-level keys; the payload is skipped, not built.
pub fn is_external(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Origin<'a> {
        #[serde(default, borrow)]
        node: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Origin<'_>>(bytes).is_ok_and(|o| o.node.is_none_or(|n| n.is_empty()))
}

/// Encodes a broadcast for Redis (unnumbered: the publisher task stamps the number).
pub fn encode(node: &str, from: Option<u64>, ts: u64, msg: &Broadcast) -> Vec<u8> {
    encode_numbered(node, from, ts, msg, None)
}

/// Encodes a broadcast for Redis with the origin's number `n` for its topic.
pub fn encode_numbered(
    node: &str,
    from: Option<u64>,
    ts: u64,
    msg: &Broadcast,
    n: Option<u64>,
) -> Vec<u8> {
    let (payload, binary) = match &msg.payload {
        Payload::Json(v) => (Some(JsonOut::Value(v)), None),
        // Checked once more here: the envelope must stay valid JSON for every node.
        Payload::Encoded(json) => (
            Some(
                serde_json::value::RawValue::from_string(json.to_string())
                    .map_or(JsonOut::Value(&Value::Null), JsonOut::Encoded),
            ),
            None,
        ),
        Payload::Binary(b) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    };
    let out = Out {
        v: VERSION,
        node,
        from,
        topic: &msg.topic,
        event: &msg.event,
        payload,
        binary,
        seq: match msg.seq {
            Some(Seq::Change(n)) => Some(n),
            _ => None,
        },
        pos: msg.position.as_ref().map(ToString::to_string),
        n,
        ts,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Decodes an envelope read from Redis.
pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let raw: In = serde_json::from_slice(bytes)?;
    if raw.v != VERSION {
        return Err(EnvelopeError::Version(raw.v));
    }
    let payload = match (raw.payload, raw.binary) {
        (Some(_), Some(_)) => return Err(EnvelopeError::BothPayloads),
        (None, Some(b64)) => Payload::Binary(Bytes::from(
            base64::engine::general_purpose::STANDARD.decode(b64)?,
        )),
        (Some(v), None) => Payload::Json(v),
        (None, None) => Payload::empty(),
    };
    Ok(Envelope {
        node: raw.node,
        from: raw.from,
        ts: raw.ts,
        n: raw.n,
        broadcast: Broadcast {
            seq: raw
                .seq
                .filter(|_| raw.event == crate::protocol::events::PRESENCE_DIFF)
                .map(Seq::Change),
            position: raw.pos.as_deref().and_then(Position::parse),
            retention: None,
            topic: raw.topic,
            event: raw.event,
            payload,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn external_envelopes_are_the_ones_without_an_origin() {
        let msg = Broadcast::new("t", "e", Payload::Json(json!({"node": "x"})));
        assert!(!is_external(&encode("gw-1", None, 1, &msg)));
        assert!(is_external(&encode("", None, 1, &msg)));
        assert!(is_external(
            br#"{"v":1,"topic":"t","event":"e","payload":{"node":"x"}}"#
        ));
        assert!(is_external(br#"{"v":1,"node":"","topic":"t","event":"e"}"#));
        assert!(!is_external(
            br#"{"pos":"1:2-0","v":1,"node":"gw\u002d1","topic":"t","event":"e"}"#
        ));
        assert!(!is_external(b"not json"));
    }

    #[test]
    fn round_trips_json_and_binary() {
        let b = Broadcast::new("room:1", "new_msg", Payload::Json(json!({"body": "hi"})));
        let bytes = encode("gw-1", Some(7), 1700, &b);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"node":"gw-1","from":7,"topic":"room:1","event":"new_msg","payload":{"body":"hi"},"ts":1700}"#
        );
        let e = decode(&bytes).unwrap();
        assert_eq!((e.node.as_str(), e.from, e.ts), ("gw-1", Some(7), 1700));
        assert_eq!(e.broadcast, b);
        let bin = Broadcast::new("t", "e", Payload::Binary(Bytes::from_static(&[0, 255])));
        assert_eq!(decode(&encode("n", None, 0, &bin)).unwrap().broadcast, bin);
        let mut diff = Broadcast::new("t", "presence_diff", Payload::empty());
        diff.seq = Some(Seq::Change(42));
        let bytes = encode("n", None, 0, &diff);
        assert!(std::str::from_utf8(&bytes).unwrap().contains(r#""seq":42"#));
        assert_eq!(decode(&bytes).unwrap().broadcast, diff);
    }

    #[test]
    fn the_append_script_s_position_is_read() {
        let e = decode(br#"{"pos":"ab12:1700-3","v":1,"node":"n","topic":"room:1","event":"new_msg","payload":{}}"#)
            .unwrap();
        assert_eq!(
            e.broadcast.position,
            Some(Position {
                epoch: "ab12".into(),
                offset: (1700, 3)
            })
        );
        let again = encode(&e.node, e.from, e.ts, &e.broadcast);
        assert_eq!(
            decode(&again).unwrap(),
            e,
            "a position survives a re-encode"
        );
    }

    #[test]
    fn a_backend_can_publish_a_minimal_envelope() {
        let e =
            decode(br#"{"v":1,"topic":"room:1","event":"srv_push","payload":{"from":"backend"}}"#)
                .unwrap();
        assert_eq!(e.node, "");
        assert_eq!(
            e.broadcast.payload,
            Payload::Json(json!({"from": "backend"}))
        );
    }

    #[test]
    fn rejects_garbage_and_other_versions() {
        assert!(decode(b"nope").is_err());
        assert!(decode(br#"{"v":1,"topic":"t"}"#).is_err());
        assert!(matches!(
            decode(br#"{"v":2,"topic":"t","event":"e"}"#),
            Err(EnvelopeError::Version(2))
        ));
        assert!(decode(br#"{"v":1,"topic":"t","event":"e","binary":"***"}"#).is_err());
    }
}
