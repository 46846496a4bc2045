//! A presence view maintained the way phoenix.js does it, for tests.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{Client, Received};

/// Presence counts by key.
pub type Counts = BTreeMap<String, usize>;

/// A presence view maintained like phoenix.js does (by phx_ref, state then diffs).
#[derive(Default)]
pub struct View {
    refs: BTreeMap<String, Vec<String>>,
}

impl View {
    pub fn apply(&mut self, frame: &Value) {
        let (event, payload) = if frame.is_array() {
            (&frame[3], &frame[4])
        } else {
            (&frame["event"], &frame["payload"])
        };
        match event.as_str() {
            Some("presence_state") => {
                // phoenix.js syncState: the new state replaces the old one.
                self.refs.clear();
                self.add(payload);
            }
            Some("presence_diff") => {
                self.add(&payload["joins"]);
                for (key, p) in payload["leaves"].as_object().into_iter().flatten() {
                    let gone: Vec<&str> = p["metas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["phx_ref"].as_str())
                        .collect();
                    if let Some(refs) = self.refs.get_mut(key) {
                        refs.retain(|r| !gone.contains(&r.as_str()));
                        if refs.is_empty() {
                            self.refs.remove(key);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn add(&mut self, presences: &Value) {
        for (key, p) in presences.as_object().into_iter().flatten() {
            let refs = self.refs.entry(key.clone()).or_default();
            for m in p["metas"].as_array().into_iter().flatten() {
                let r = m["phx_ref"].as_str().unwrap_or_default().to_owned();
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
        }
    }

    pub fn counts(&self) -> Counts {
        self.refs
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// Applies frames from `client` until the counts equal `want` (within 5 s).
    pub async fn wait_for(&mut self, client: &mut Client, want: &[(&str, usize)]) {
        self.converge(client, &counts(want), Duration::from_secs(5))
            .await;
    }

    /// Applies frames from `client` until the view equals `want`, within `timeout`.
    pub async fn converge(&mut self, client: &mut Client, want: &Counts, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.counts() != *want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match client.recv_within(left).await {
                Some(Received::Text(t)) => self.apply(&serde_json::from_str(&t).expect("json")),
                Some(other) => panic!("watcher got {other:?}"),
                None => panic!(
                    "presence did not converge within {timeout:?}: have {:?}, want {want:?}",
                    self.counts()
                ),
            }
        }
    }
}

pub fn counts(pairs: &[(&str, usize)]) -> Counts {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}
