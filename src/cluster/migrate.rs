//! Versioned Redis key-layout steps (`migrations/*.lua`), recorded in `<prefix>:schema`.
//!
//! Each step is a Lua script that checks the current version, transforms what it must and
//! records its new version atomically. A gateway only runs against the version it knows.
//!
//! In a Redis Cluster a script only sees the keys of the node it runs on, so every step runs
//! on every master: each master records its version in its own schema key
//! (`<prefix>:schema:{m<n>}`, a hash tag chosen in a slot that master serves), and the
//! cluster's version is the lowest of them.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{ClusterError, Redis};

/// One migration step.
pub struct Step {
    /// Version after this step.
    pub version: u32,
    /// File name, for the record.
    pub name: &'static str,
    /// The Lua script.
    pub script: &'static str,
}

/// All steps, in order.
pub const STEPS: &[Step] = &[Step {
    version: 1,
    name: "0001_initial_layout",
    script: include_str!("../../migrations/0001_initial_layout.lua"),
}];

/// The key-layout version this gateway reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// The schema keys: one with one Redis; one per master, in a slot it serves, in a cluster.
async fn schema_keys(redis: &Redis) -> Result<Vec<String>, ClusterError> {
    if !redis.is_cluster() {
        return Ok(vec![redis.keys.schema()]);
    }
    // CLUSTER SLOTS: [[start, end, [host, port, id, ..], replicas..], ..]
    let slots: Vec<redis::Value> = redis.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
    let mut masters: Vec<(String, Vec<(i64, i64)>)> = Vec::new();
    for range in slots {
        let redis::Value::Array(parts) = range else {
            continue;
        };
        let (
            Some(redis::Value::Int(start)),
            Some(redis::Value::Int(end)),
            Some(redis::Value::Array(node)),
        ) = (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let id = node
            .get(2)
            .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
            .unwrap_or_else(|| format!("{node:?}"));
        match masters.iter_mut().find(|(m, _)| *m == id) {
            Some((_, ranges)) => ranges.push((*start, *end)),
            None => masters.push((id, vec![(*start, *end)])),
        }
    }
    let mut keys = Vec::with_capacity(masters.len());
    for (_, ranges) in &masters {
        let mut found = None;
        for n in 0..10_000u32 {
            let key = redis.keys.schema_tagged(&format!("m{n}"));
            let slot: i64 = redis
                .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key))
                .await?;
            if ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)) {
                found = Some(key);
                break;
            }
        }
        keys.push(found.ok_or_else(|| {
            ClusterError::Layout("no schema key found for a master's slots".into())
        })?);
    }
    if keys.is_empty() {
        return Err(ClusterError::Layout("the cluster reports no master".into()));
    }
    Ok(keys)
}

async fn version_at(redis: &Redis, key: &str) -> Result<u32, ClusterError> {
    let v: Option<u32> = redis
        .query(redis::cmd("HGET").arg(key).arg("version"))
        .await?;
    Ok(v.unwrap_or(0))
}

/// The version recorded in Redis (0 for a fresh Redis; in a cluster, the lowest master's).
pub async fn current_version(redis: &Redis) -> Result<u32, ClusterError> {
    let mut lowest = None;
    for key in schema_keys(redis).await? {
        let v = version_at(redis, &key).await?;
        lowest = Some(lowest.map_or(v, |l: u32| l.min(v)));
    }
    Ok(lowest.unwrap_or(0))
}

/// The highest version recorded anywhere (a newer gateway may have migrated some masters).
async fn highest_version(redis: &Redis) -> Result<u32, ClusterError> {
    let mut highest = 0;
    for key in schema_keys(redis).await? {
        highest = highest.max(version_at(redis, &key).await?);
    }
    Ok(highest)
}

/// Applies every missing step (on every master in a cluster). Returns (version before,
/// version after).
pub async fn migrate(redis: &Redis) -> Result<(u32, u32), ClusterError> {
    let before = current_version(redis).await?;
    let highest = highest_version(redis).await?;
    if highest > LAYOUT_VERSION {
        return Err(newer(highest));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for key in schema_keys(redis).await? {
        migrate_key(redis, &key, now).await?;
    }
    Ok((before, current_version(redis).await?))
}

/// Runs the missing steps against one schema key (one master's, in a cluster).
async fn migrate_key(redis: &Redis, key: &str, now: u64) -> Result<(), ClusterError> {
    let mut version = version_at(redis, key).await?;
    for step in STEPS {
        if step.version <= version {
            continue;
        }
        let script = redis::Script::new(step.script);
        let mut inv = script.prepare_invoke();
        inv.key(key)
            .arg(version)
            .arg(step.version)
            .arg(step.name)
            .arg(now);
        match redis.script::<u32>(&inv).await {
            Ok(v) => {
                version = v;
                tracing::info!(step = step.name, version, "applied redis layout migration");
            }
            Err(e) => {
                // Nodes that start together race to migrate: each step checks the version it
                // expects atomically, so the losers see the winner's version and go on.
                let found = version_at(redis, key).await?;
                if found < step.version {
                    return Err(e);
                }
                if found > LAYOUT_VERSION {
                    return Err(newer(found));
                }
                tracing::info!(
                    step = step.name,
                    version = found,
                    "another node applied this migration"
                );
                version = found;
            }
        }
    }
    Ok(())
}

fn newer(found: u32) -> ClusterError {
    ClusterError::Layout(format!(
        "the Redis key layout is version {found}, newer than this gateway understands ({LAYOUT_VERSION}): upgrade phx-gateway"
    ))
}

/// Start-up check: refuse a newer layout; migrate an older one when `auto`, else refuse
/// and name the command that fixes it.
pub async fn ensure(redis: &Redis, auto: bool) -> Result<(), ClusterError> {
    let highest = highest_version(redis).await?;
    if highest > LAYOUT_VERSION {
        return Err(newer(highest));
    }
    let found = current_version(redis).await?;
    if found == LAYOUT_VERSION {
        return Ok(());
    }
    if auto {
        migrate(redis).await.map(|_| ())
    } else {
        Err(ClusterError::Layout(format!(
            "the Redis key layout is version {found}, this gateway needs {LAYOUT_VERSION}: run `phx-gateway migrate`"
        )))
    }
}
