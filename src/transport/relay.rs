//! Relaying long-poll requests to the node that owns the session, through the cluster's
//! pub/sub (no node-to-node connections), so that no sticky sessions are needed.
//!
//! Every node subscribes to its own internal topic `phx_internal:lp:<node>`. A node that
//! receives a poll or a POST for another node's session publishes the request there and
//! waits for the owner's answer on its own internal topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::longpoll::{Incoming, PollResult, Sessions};
use crate::protocol::{Payload, INTERNAL_PREFIX};
use crate::pubsub::{next_subscriber_id, Broadcast, PubSub, Subscriber};

fn inbox(node: &str) -> String {
    format!("{INTERNAL_PREFIX}lp:{node}")
}

/// Relays long-poll requests between nodes.
pub struct Relay {
    pubsub: Arc<dyn PubSub>,
    node: String,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
}

impl Relay {
    /// Subscribes to this node's inbox and serves requests for `sessions` until the pub/sub
    /// goes away.
    pub async fn start(
        pubsub: Arc<dyn PubSub>,
        node: String,
        sessions: Arc<Sessions>,
    ) -> Arc<Self> {
        let relay = Arc::new(Self {
            pubsub: pubsub.clone(),
            node: node.clone(),
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
        });
        let (tx, mut rx) = mpsc::channel::<Arc<Broadcast>>(1024);
        let sub = Subscriber::inbox(next_subscriber_id(), tx);
        if let Err(e) = pubsub.subscribe(&inbox(&node), sub, None).await {
            tracing::warn!(error = %e, "long-poll relay inbox not subscribed");
        }
        let me = relay.clone();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let Payload::Json(body) = &msg.payload else {
                    continue;
                };
                match msg.event.as_str() {
                    "reply" => me.complete(body),
                    "poll" | "post" => {
                        let (me, sessions, body, event) = (
                            me.clone(),
                            sessions.clone(),
                            body.clone(),
                            msg.event.clone(),
                        );
                        tokio::spawn(async move { me.serve(&sessions, &event, body).await });
                    }
                    _ => {}
                }
            }
        });
        relay
    }

    fn complete(&self, body: &Value) {
        let Some(id) = body["id"].as_u64() else {
            return;
        };
        if let Some(tx) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        {
            let _ = tx.send(body.clone());
        }
    }

    async fn serve(&self, sessions: &Sessions, event: &str, body: Value) {
        let (Some(id), Some(from), Some(token)) = (
            body["id"].as_u64(),
            body["from"].as_str(),
            body["token"].as_str(),
        ) else {
            return;
        };
        let wait = Duration::from_millis(body["wait_ms"].as_u64().unwrap_or(10_000));
        let answer = match event {
            "poll" => match sessions.poll(token, wait).await {
                Some(PollResult::Messages(m)) => json!({"id": id, "status": 200, "messages": m}),
                Some(PollResult::Empty) => json!({"id": id, "status": 204}),
                None => json!({"id": id, "status": 410}),
            },
            _ => {
                let frames: Vec<Incoming> = body["frames"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| match (f["text"].as_str(), f["binary"].as_str()) {
                        (Some(t), _) => Some(Incoming::Text(t.to_owned())),
                        (None, Some(b)) => base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .ok()
                            .map(Incoming::Binary),
                        _ => None,
                    })
                    .collect();
                match sessions.post(token, frames, wait).await {
                    Some(true) => json!({"id": id, "status": 200}),
                    Some(false) => json!({"id": id, "status": 408}),
                    None => json!({"id": id, "status": 410}),
                }
            }
        };
        let reply = Broadcast::new(inbox(from), "reply", Payload::Json(answer));
        self.pubsub.broadcast(Arc::new(reply), None);
    }

    async fn request(
        &self,
        node: &str,
        event: &str,
        mut body: Value,
        wait: Duration,
    ) -> Option<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        body["id"] = json!(id);
        body["from"] = json!(self.node);
        body["wait_ms"] = json!(wait.as_millis() as u64);
        let msg = Broadcast::new(inbox(node), event, Payload::Json(body));
        self.pubsub.broadcast(Arc::new(msg), None);
        // The owner answers within `wait`; allow for the round trip through Redis.
        let answer = tokio::time::timeout(wait + Duration::from_secs(2), rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if answer.is_none() {
            tracing::debug!(node, "long-poll relay: no answer from the owning node");
        }
        answer
    }

    /// Polls a session owned by `node`; None if it does not answer or has no such session.
    pub async fn poll(&self, node: &str, token: &str, wait: Duration) -> Option<PollResult> {
        if node == self.node {
            return None;
        }
        let answer = self
            .request(node, "poll", json!({"token": token}), wait)
            .await?;
        match answer["status"].as_u64() {
            Some(200) => Some(PollResult::Messages(
                answer["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect(),
            )),
            Some(204) => Some(PollResult::Empty),
            _ => None,
        }
    }

    /// Posts frames to a session owned by `node` (see `Sessions::post`).
    pub async fn post(
        &self,
        node: &str,
        token: &str,
        frames: Vec<Incoming>,
        wait: Duration,
    ) -> Option<bool> {
        if node == self.node {
            return None;
        }
        let frames: Vec<Value> = frames
            .into_iter()
            .map(|f| match f {
                Incoming::Text(t) => json!({"text": t}),
                Incoming::Binary(b) => {
                    json!({"binary": base64::engine::general_purpose::STANDARD.encode(b)})
                }
            })
            .collect();
        let answer = self
            .request(
                node,
                "post",
                json!({"token": token, "frames": frames}),
                wait,
            )
            .await?;
        match answer["status"].as_u64() {
            Some(200) => Some(true),
            Some(408) => Some(false),
            _ => None,
        }
    }
}
