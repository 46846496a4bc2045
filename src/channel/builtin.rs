//! The config-driven channel: join policy, presence, and which client events are
//! broadcast, broadcast to others, or echoed. No Rust needed for common cases.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::{Channel, Context, Reply, Router};
use crate::config::{JoinPolicy, RouteSettings};
use crate::presence::Meta;
use crate::protocol::Payload;

/// Builds a router from configured routes.
pub fn router(routes: &[RouteSettings]) -> Result<Router, super::PatternError> {
    routes.iter().try_fold(Router::new(), |router, route| {
        let route = Arc::new(route.clone());
        router.route(&route.topic.clone(), move |_: &str| -> Box<dyn Channel> {
            Box::new(BuiltinChannel {
                route: route.clone(),
                key: None,
                meta: Meta::new(),
                join_params: Map::new(),
            })
        })
    })
}

/// A channel configured by a [`RouteSettings`].
pub struct BuiltinChannel {
    route: Arc<RouteSettings>,
    /// The presence key this channel tracks, once tracked.
    key: Option<String>,
    /// The meta currently tracked.
    meta: Meta,
    join_params: Map<String, Value>,
}

/// The text of an assign used as a presence key: strings as they are, numbers as digits.
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl BuiltinChannel {
    fn initial_meta(&self) -> Meta {
        let mut meta = Meta::new();
        for field in &self.route.presence_meta {
            if field == "online_at" {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                meta.insert(field.clone(), Value::String(now.to_string()));
            } else if let Some(v) = self.join_params.get(field) {
                meta.insert(field.clone(), v.clone());
            }
        }
        meta
    }
}

#[async_trait]
impl Channel for BuiltinChannel {
    async fn join(&mut self, _ctx: &mut Context, payload: Payload) -> Result<Value, Value> {
        match self.route.join {
            JoinPolicy::Deny => Err(json!({"reason": self.route.deny_reason})),
            JoinPolicy::Allow => {
                if let Payload::Json(Value::Object(params)) = payload {
                    self.join_params = params;
                }
                Ok(json!({}))
            }
        }
    }

    async fn after_join(&mut self, ctx: &mut Context) {
        let Some(key_name) = &self.route.presence_key else {
            return;
        };
        // The snapshot goes first, then our own join arrives as a diff, as in Phoenix apps.
        ctx.push_presence_state().await;
        let Some(key) = ctx.assigns.get(key_name).and_then(key_text) else {
            tracing::debug!(key = %key_name, "socket has no presence key: watching only");
            return;
        };
        let meta = self.initial_meta();
        match ctx.track(&key, meta.clone()).await {
            Ok(_) => (self.key, self.meta) = (Some(key), meta),
            Err(e) => tracing::warn!(error = %e, "presence track failed"),
        }
    }

    async fn handle_in(&mut self, ctx: &mut Context, event: &str, payload: Payload) -> Reply {
        let has = |list: &[String]| list.iter().any(|e| e == event);
        if has(&self.route.echo) {
            return Reply::Reply {
                status: "ok".into(),
                response: payload,
            };
        }
        if has(&self.route.broadcast) {
            ctx.broadcast(event, payload);
            return Reply::ok(json!({}));
        }
        if has(&self.route.broadcast_from) {
            ctx.broadcast_from(event, payload);
            return Reply::ok(json!({}));
        }
        if self.route.presence_update_event.as_deref() == Some(event) {
            let (Some(key), Payload::Json(Value::Object(fields))) = (self.key.clone(), payload)
            else {
                return Reply::error(json!({"reason": "no presence to update"}));
            };
            let mut meta = self.meta.clone();
            meta.extend(
                fields
                    .into_iter()
                    .filter(|(k, _)| k != "phx_ref" && k != "phx_ref_prev"),
            );
            return match ctx.update_presence(&key, meta.clone()).await {
                Ok(_) => {
                    self.meta = meta;
                    Reply::ok(json!({}))
                }
                Err(e) => Reply::error(json!({"reason": e.to_string()})),
            };
        }
        Reply::unhandled()
    }
}
