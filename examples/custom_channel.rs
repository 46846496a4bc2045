//! A gateway with a channel written in Rust.
//!
//! `RoomChannel` joins `room:*` topics, tracks presence, answers `ping`, broadcasts
//! `new_msg` with the sender's name added, and intercepts `user_joined` so that each
//! subscriber gets a personalised copy (or none, for the user who joined).
//!
//! Run it with `cargo run --example custom_channel`, then connect a phoenix.js client to
//! `ws://127.0.0.1:4000/socket` with params `{user_id: "alice"}`.

use std::sync::Arc;

use async_trait::async_trait;
use phx_gateway::channel::{Channel, Context, Outgoing, Reply, Router};
use phx_gateway::config::Settings;
use phx_gateway::protocol::Payload;
use phx_gateway::{server, Gateway};
use serde_json::{json, Value};

/// One value per joined (socket, topic); it lives in its own actor task.
#[derive(Default)]
struct RoomChannel {
    user: String,
}

#[async_trait]
impl Channel for RoomChannel {
    async fn join(&mut self, ctx: &mut Context, _payload: Payload) -> Result<Value, Value> {
        match ctx.assigns.get("user_id").and_then(Value::as_str) {
            Some(user) => {
                self.user = user.to_owned();
                Ok(json!({"welcome": user}))
            }
            None => Err(json!({"reason": "user_id required"})),
        }
    }

    async fn after_join(&mut self, ctx: &mut Context) {
        ctx.push_presence_state().await;
        let meta = json!({"online_at": "now"})
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Err(e) = ctx.track(&self.user, meta).await {
            tracing::warn!(error = %e, "track failed");
        }
        ctx.broadcast_from("user_joined", Payload::Json(json!({"user": self.user})));
    }

    async fn handle_in(&mut self, ctx: &mut Context, event: &str, payload: Payload) -> Reply {
        match (event, payload) {
            ("ping", payload) => Reply::Reply {
                status: "ok".into(),
                response: payload,
            },
            ("new_msg", Payload::Json(Value::Object(mut body))) => {
                body.insert("user".into(), json!(self.user));
                ctx.broadcast("new_msg", Payload::Json(Value::Object(body)));
                Reply::NoReply
            }
            ("bye", _) => Reply::Stop {
                reply: Some(("ok".into(), Payload::empty())),
            },
            _ => Reply::unhandled(),
        }
    }

    fn intercepts(&self) -> Vec<String> {
        vec!["user_joined".into()]
    }

    async fn handle_out(
        &mut self,
        _ctx: &mut Context,
        _event: &str,
        payload: &Payload,
    ) -> Outgoing {
        let joined = payload
            .as_json()
            .and_then(|p| p["user"].as_str())
            .unwrap_or_default();
        if joined == self.user {
            return Outgoing::Skip;
        }
        Outgoing::Push(Payload::Json(
            json!({"user": joined, "greeting": format!("{}, say hi to {joined}", self.user)}),
        ))
    }
}

fn main() -> anyhow::Result<()> {
    phx_gateway::logging::init(phx_gateway::config::LogFormat::Text);
    let settings = Settings::load(None)?;
    let router = Router::new().route("room:*", |_: &str| -> Box<dyn Channel> {
        Box::new(RoomChannel::default())
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let gateway = Arc::new(Gateway::builder(settings).router(router).start().await?);
        let running = server::start(gateway.clone(), server::bind(&gateway)?)?;
        tracing::info!(addr = %running.addr, "custom_channel example listening");
        running.server.await?;
        Ok(())
    })
}
