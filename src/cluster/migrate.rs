//! Versioned Redis key-layout steps (`migrations/*.lua`), recorded in `<prefix>:schema`.
//!
//! Each step is a Lua script that checks the current version, transforms what it must and
//! records its new version atomically. A gateway only runs against the version it knows.

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

/// The version recorded in Redis (0 for a fresh Redis).
pub async fn current_version(redis: &Redis) -> Result<u32, ClusterError> {
    let v: Option<u32> = redis
        .query(redis::cmd("HGET").arg(redis.keys.schema()).arg("version"))
        .await?;
    Ok(v.unwrap_or(0))
}

/// Applies every missing step. Returns (version before, version after).
pub async fn migrate(redis: &Redis) -> Result<(u32, u32), ClusterError> {
    let before = current_version(redis).await?;
    if before > LAYOUT_VERSION {
        return Err(newer(before));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut version = before;
    for step in STEPS {
        if step.version <= version {
            continue;
        }
        let script = redis::Script::new(step.script);
        let mut inv = script.prepare_invoke();
        inv.key(redis.keys.schema())
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
                let found = current_version(redis).await?;
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
    Ok((before, version))
}

fn newer(found: u32) -> ClusterError {
    ClusterError::Layout(format!(
        "the Redis key layout is version {found}, newer than this gateway understands ({LAYOUT_VERSION}): upgrade phx-gateway"
    ))
}

/// Start-up check: refuse a newer layout; migrate an older one when `auto`, else refuse
/// and name the command that fixes it.
pub async fn ensure(redis: &Redis, auto: bool) -> Result<(), ClusterError> {
    let found = current_version(redis).await?;
    if found == LAYOUT_VERSION {
        return Ok(());
    }
    if found > LAYOUT_VERSION {
        return Err(newer(found));
    }
    if auto {
        migrate(redis).await.map(|_| ())
    } else {
        Err(ClusterError::Layout(format!(
            "the Redis key layout is version {found}, this gateway needs {LAYOUT_VERSION}: run `phx-gateway migrate`"
        )))
    }
}
