//! Two gateway processes sharing a presence topic: the setup of the node-failure tests.

use std::time::Duration;

use super::presence_view::{counts, View};
use super::process::NodeProcess;
use super::redis_server::RedisServer;
use super::Client;

/// Heartbeats every 300 ms, a silent node reaped after 1.2 s: failures seen within seconds.
pub(crate) const FAST_HEARTBEATS: [(&str, &str); 2] = [
    ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
    ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
];

/// `u1` joined `topic` on `first`, `w1` on `second`; `view` is w1's, holding both.
pub(crate) struct NodePair {
    pub first: NodeProcess,
    pub second: NodeProcess,
    pub u1: Client,
    pub w1: Client,
    pub view: View,
}

impl NodePair {
    /// Starts nodes named `names` on `redis` with `env` and joins both users to `topic`.
    pub(crate) async fn start(
        redis: &RedisServer,
        names: [&str; 2],
        env: &[(&str, &str)],
        topic: &str,
    ) -> Self {
        let first = NodeProcess::start(&redis.url(), names[0], env);
        let second = NodeProcess::start(&redis.url(), names[1], env);
        let mut u1 = Client::connect(&first.ws_url("vsn=2.0.0&user_id=u1")).await;
        u1.join("1", topic).await;
        let mut w1 = Client::connect(&second.ws_url("vsn=2.0.0&user_id=w1")).await;
        w1.join("1", topic).await;
        let mut view = View::default();
        view.converge(&mut w1, &Self::both(), Duration::from_secs(5))
            .await;
        Self {
            first,
            second,
            u1,
            w1,
            view,
        }
    }

    /// Both users, once each.
    pub(crate) fn both() -> super::presence_view::Counts {
        counts(&[("u1", 1), ("w1", 1)])
    }
}
