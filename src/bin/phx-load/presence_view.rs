//! The presence view of the `presence` scenario's watcher.
//!
//! It mirrors tests/support/presence_view.rs (the reference, with the test-only strict
//! checks): a binary and the integration tests cannot share a module, and the library is the
//! server, not a client.

use std::collections::HashMap;

use serde_json::Value;

/// A presence view maintained like phoenix.js: refs per key from state and diffs.
#[derive(Default)]
pub(crate) struct PresenceView {
    refs: HashMap<String, Vec<String>>,
}

impl PresenceView {
    /// Presence keys present.
    pub(crate) fn len(&self) -> usize {
        self.refs.len()
    }

    fn add(&mut self, presences: &Value) {
        for (key, p) in presences.as_object().into_iter().flatten() {
            let refs = self.refs.entry(key.clone()).or_default();
            for m in p["metas"].as_array().into_iter().flatten() {
                if let Some(r) = m["phx_ref"].as_str() {
                    if !refs.iter().any(|x| x == r) {
                        refs.push(r.to_owned());
                    }
                }
            }
        }
    }

    /// Applies one V2 frame (`[join_ref, ref, topic, event, payload]`); other events are
    /// ignored.
    pub(crate) fn apply(&mut self, frame: &Value) {
        match frame[3].as_str() {
            Some("presence_state") => {
                // phoenix.js syncState: the new state replaces the old one.
                self.refs.clear();
                self.add(&frame[4]);
            }
            Some("presence_diff") => {
                self.add(&frame[4]["joins"]);
                for (key, p) in frame[4]["leaves"].as_object().into_iter().flatten() {
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
}
