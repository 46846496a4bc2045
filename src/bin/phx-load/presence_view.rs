//! A presence view maintained the way phoenix.js does it (by `phx_ref`: a state replaces
//! everything, a diff adds joins and removes leaves).
//!
//! Shared with the integration tests (`tests/it/support/presence_view.rs` includes this file
//! and adds its strict checks on top): the load tool's watcher and the tests read presence
//! the same way.

use std::collections::BTreeMap;

use serde_json::Value;

/// Refs per presence key, from `presence_state` and `presence_diff` frames.
#[derive(Default)]
pub(crate) struct PresenceView {
    refs: BTreeMap<String, Vec<String>>,
}

#[allow(dead_code)] // Each includer uses its part.
impl PresenceView {
    /// Presence keys present.
    pub(crate) fn len(&self) -> usize {
        self.refs.len()
    }

    /// Metas per key.
    pub(crate) fn counts(&self) -> BTreeMap<String, usize> {
        self.refs
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect()
    }

    /// Whether the view holds meta `phx_ref` under `key`.
    pub(crate) fn has(&self, key: &str, phx_ref: &str) -> bool {
        self.refs
            .get(key)
            .is_some_and(|v| v.iter().any(|x| x == phx_ref))
    }

    /// The event and payload of a V2 frame (`[join_ref, ref, topic, event, payload]`) or a
    /// V1 one (`{topic, event, payload, ref}`).
    pub(crate) fn event_of(frame: &Value) -> (Option<&str>, &Value) {
        if frame.is_array() {
            (frame[3].as_str(), &frame[4])
        } else {
            (frame["event"].as_str(), &frame["payload"])
        }
    }

    /// Applies one frame; events other than `presence_state` and `presence_diff` are
    /// ignored.
    pub(crate) fn apply(&mut self, frame: &Value) {
        match Self::event_of(frame) {
            (Some("presence_state"), payload) => {
                // phoenix.js syncState: the new state replaces the old one.
                self.refs.clear();
                self.add(payload);
            }
            (Some("presence_diff"), payload) => {
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
}
