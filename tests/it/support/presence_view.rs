//! A presence view maintained the way phoenix.js does it, for tests.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Client, Received};

/// Presence counts by key.
pub(crate) type Counts = BTreeMap<String, usize>;

/// The load tool's view, shared so that tests and load runs read presence the same way.
#[path = "../../../src/bin/phx-load/presence_view.rs"]
mod shared;

/// A presence view maintained like phoenix.js does (by phx_ref, state then diffs).
#[derive(Default)]
pub(crate) struct View {
    view: shared::PresenceView,
    /// Panics on a diff that does not follow from what the view holds: a join it already
    /// has, a leave of a meta it never had, or a diff before the first `presence_state`.
    /// That is what a client that appends metas (phoenix.js 1.2/1.3's static API) needs.
    strict: bool,
    has_state: bool,
}

impl View {
    /// A view that checks that every diff holds exactly changes after what it has.
    pub(crate) fn strict() -> Self {
        Self {
            strict: true,
            ..Self::default()
        }
    }

    pub(crate) fn apply(&mut self, frame: &Value) {
        match shared::PresenceView::event_of(frame) {
            (Some("presence_state"), _) => self.has_state = true,
            (Some("presence_diff"), payload) if self.strict => {
                assert!(
                    self.has_state,
                    "a presence_diff before presence_state: {frame}"
                );
                self.check_diff(payload);
            }
            _ => {}
        }
        self.view.apply(frame);
    }

    fn check_diff(&self, diff: &Value) {
        for (key, p) in diff["joins"].as_object().into_iter().flatten() {
            for m in p["metas"].as_array().into_iter().flatten() {
                let r = m["phx_ref"].as_str().unwrap_or_default();
                assert!(
                    !self.view.has(key, r),
                    "a diff repeats a join the view already holds ({key} {r}): {diff}"
                );
            }
        }
        for (key, p) in diff["leaves"].as_object().into_iter().flatten() {
            for m in p["metas"].as_array().into_iter().flatten() {
                let r = m["phx_ref"].as_str().unwrap_or_default();
                // An update within one diff leaves a ref the same diff's joins replace.
                let joined_here = diff["joins"][key]["metas"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|j| j["phx_ref"] == r));
                assert!(
                    self.view.has(key, r) || joined_here,
                    "a diff leaves a meta the view never had ({key} {r}): {diff}"
                );
            }
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        self.view.counts()
    }

    /// Applies frames from `client` until the counts equal `want` (within 5 s).
    pub(crate) async fn wait_for(&mut self, client: &mut Client, want: &[(&str, usize)]) {
        self.converge(client, &counts(want), Duration::from_secs(5))
            .await;
    }

    /// Applies frames from `client` until the view equals `want`, within `timeout`.
    pub(crate) async fn converge(&mut self, client: &mut Client, want: &Counts, timeout: Duration) {
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

/// The users of a join storm and the marker user: counts each view must reach.
/// Connects `n` sockets (two per user) and sends their joins at once, so that every
/// snapshot is taken while others' joins wait for the next diff; each one's view must then
/// follow exactly from its presence_state and the diffs after it.
pub(crate) async fn join_storm(
    urls: &[String],
    topic: &str,
    users: usize,
    pace: Duration,
) -> Vec<(Client, View)> {
    let mut members = Vec::new();
    for i in 0..users * 2 {
        if !pace.is_zero() {
            // Joins spread over several batch windows: snapshots and diffs interleave.
            tokio::time::sleep(pace).await;
        }
        let url = &urls[i % urls.len()];
        let mut c = Client::connect(&format!("{url}&user_id=u{}", i % users)).await;
        c.send(json!(["1", "1", topic, "phx_join", {}])).await;
        members.push((c, View::strict()));
    }
    let want: Vec<(String, usize)> = (0..users).map(|u| (format!("u{u}"), 2)).collect();
    let want: Vec<(&str, usize)> = want.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    for (c, view) in &mut members {
        view.wait_for(c, &want).await;
    }
    members
}

pub(crate) fn counts(pairs: &[(&str, usize)]) -> Counts {
    pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}
