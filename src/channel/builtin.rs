//! The config-driven channel: join policy (allow, deny, token claim, backend webhook),
//! presence, and which client events are broadcast, broadcast to others, echoed, or handed
//! to the backend. No Rust needed for common cases.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::webhook::{self, Webhooks};
use super::{Channel, Context, Reply, Router, TopicPattern};
use crate::config::{JoinPolicy, PresenceMode, PresenceOrder, RouteSettings};
use crate::presence::Meta;
use crate::protocol::Payload;
use crate::pubsub::Retention;

/// Builds a router from configured routes; `webhooks` serves routes that call the backend.
pub fn router(
    routes: &[RouteSettings],
    webhooks: Option<Arc<Webhooks>>,
) -> Result<Router, super::PatternError> {
    routes.iter().try_fold(Router::new(), |router, route| {
        let route = Arc::new(route.clone());
        let webhooks = webhooks.clone();
        router.route(&route.topic.clone(), move |_: &str| -> Box<dyn Channel> {
            Box::new(BuiltinChannel {
                route: route.clone(),
                webhooks: webhooks.clone(),
                key: None,
                meta: Meta::new(),
                extra_meta: Map::new(),
                join_params: Map::new(),
            })
        })
    })
}

/// A channel configured by a [`RouteSettings`].
pub struct BuiltinChannel {
    route: Arc<RouteSettings>,
    webhooks: Option<Arc<Webhooks>>,
    /// The presence key this channel tracks, once tracked.
    key: Option<String>,
    /// The meta currently tracked (kept only on routes with an update event).
    meta: Meta,
    /// Meta fields given by the join webhook.
    extra_meta: Map<String, Value>,
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

/// Whether a claim (a pattern, or a list of patterns) allows `topic`.
fn claim_allows(claim: Option<&Value>, topic: &str) -> bool {
    let allows = |p: &Value| {
        p.as_str()
            .and_then(|p| TopicPattern::parse(p).ok())
            .is_some_and(|p| p.matches(topic))
    };
    match claim {
        Some(Value::Array(patterns)) => patterns.iter().any(allows),
        Some(p @ Value::String(_)) => allows(p),
        _ => false,
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
        meta.extend(self.extra_meta.clone());
        meta
    }

    fn refused(&self) -> Value {
        json!({"reason": self.route.deny_reason})
    }

    async fn webhook_join(&mut self, ctx: &mut Context, params: Value) -> Result<Value, Value> {
        let (Some(url), Some(hooks)) = (self.route.join_webhook.as_deref(), self.webhooks.as_ref())
        else {
            tracing::warn!("route has join = webhook but no join_webhook URL");
            return Err(webhook::unavailable());
        };
        let request = json!({
            "topic": ctx.topic(),
            "params": params,
            "user_id": ctx.assigns.get("user_id"),
            "assigns": ctx.assigns,
            "socket_id": ctx.socket().id,
        });
        match hooks.join(url, request).await {
            Ok(answer) if answer.allow => {
                if let Some(assigns) = answer.assigns {
                    ctx.assigns.extend(assigns);
                }
                self.extra_meta = answer.presence_meta.unwrap_or_default();
                Ok(answer.reply.unwrap_or_else(|| json!({})))
            }
            Ok(answer) => Err(
                json!({"reason": answer.reason.unwrap_or_else(|| self.route.deny_reason.clone())}),
            ),
            Err(_) => Err(webhook::unavailable()),
        }
    }

    async fn webhook_event(
        &self,
        ctx: &mut Context,
        url: &str,
        event: &str,
        payload: Payload,
    ) -> Reply {
        let Some(hooks) = self.webhooks.as_ref() else {
            return Reply::error(webhook::unavailable());
        };
        let Payload::Json(payload) = payload else {
            return Reply::error(json!({"reason": "binary payloads are not sent to the backend"}));
        };
        let request = json!({
            "topic": ctx.topic(),
            "event": event,
            "payload": payload,
            "user_id": ctx.assigns.get("user_id"),
            "assigns": ctx.assigns,
        });
        let answer = match hooks.event(url, request).await {
            Ok(a) => a,
            Err(_) => return Reply::error(webhook::unavailable()),
        };
        if let Some(b) = answer.broadcast {
            ctx.broadcast(
                &b.event,
                Payload::Json(b.payload.unwrap_or_else(|| json!({}))),
            );
        }
        if let Some(b) = answer.broadcast_from {
            ctx.broadcast_from(
                &b.event,
                Payload::Json(b.payload.unwrap_or_else(|| json!({}))),
            );
        }
        match answer.reply {
            Some(r) => Reply::Reply {
                status: r.status,
                response: Payload::Json(r.response.unwrap_or_else(|| json!({}))),
            },
            None => Reply::ok(json!({})),
        }
    }
}

#[async_trait]
impl Channel for BuiltinChannel {
    fn history(&self) -> Option<Retention> {
        (self.route.history_size > 0).then(|| Retention {
            size: self.route.history_size,
            ttl: Duration::from_secs(self.route.history_ttl_s.max(1)),
        })
    }

    fn presence_counts(&self) -> Option<Duration> {
        (self.route.presence == PresenceMode::Counts)
            .then(|| Duration::from_millis(self.route.presence_count_interval_ms.max(1)))
    }

    async fn join(&mut self, ctx: &mut Context, payload: Payload) -> Result<Value, Value> {
        let params = match payload {
            Payload::Json(Value::Object(params)) => params,
            _ => Map::new(),
        };
        self.join_params = params.clone();
        match self.route.join {
            JoinPolicy::Deny => Err(self.refused()),
            JoinPolicy::Allow => Ok(json!({})),
            JoinPolicy::Claim => {
                if claim_allows(ctx.assigns.get(&self.route.join_claim), ctx.topic()) {
                    Ok(json!({}))
                } else {
                    Err(self.refused())
                }
            }
            JoinPolicy::Webhook => self.webhook_join(ctx, Value::Object(params)).await,
        }
    }

    async fn after_join(&mut self, ctx: &mut Context) {
        let Some(key_name) = &self.route.presence_key else {
            return;
        };
        let track_first = self.route.presence_order == PresenceOrder::TrackThenState;
        if !track_first {
            // The snapshot goes first, then our own join arrives as a diff (the Phoenix
            // presence guide's order).
            ctx.push_presence_state().await;
        }
        match ctx.assigns.get(key_name).and_then(key_text) {
            Some(key) => {
                let meta = self.initial_meta();
                // A copy is kept only where an update event can change it: a big room's
                // members would otherwise each hold their meta twice.
                let kept = match self.route.presence_update_event {
                    Some(_) => meta.clone(),
                    None => Meta::new(),
                };
                match ctx.track(&key, meta).await {
                    Ok(_) => (self.key, self.meta) = (Some(key), kept),
                    Err(e) => tracing::warn!(error = %e, "presence track failed"),
                }
            }
            None => tracing::debug!(key = %key_name, "socket has no presence key: watching only"),
        }
        if track_first {
            // Our own join is published before the snapshot is read, so the snapshot holds
            // it and no diff repeats it.
            ctx.presence_flushed().await;
            ctx.push_presence_state().await;
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
        if let Some(url) = self.route.event_webhook.clone() {
            return self.webhook_event(ctx, &url, event, payload).await;
        }
        Reply::unhandled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_with_an_invalid_pattern_is_refused() {
        let mut routes = crate::config::default_routes();
        routes[0].topic = "a*b".into();
        assert!(router(&routes, None).is_err());
    }

    #[test]
    fn claims_list_allowed_topic_patterns() {
        let claim = json!(["room:1", "game:*"]);
        assert!(claim_allows(Some(&claim), "room:1"));
        assert!(claim_allows(Some(&claim), "game:42"));
        assert!(!claim_allows(Some(&claim), "room:2"));
        assert!(claim_allows(Some(&json!("room:*")), "room:9"));
        assert!(!claim_allows(None, "room:1"));
        assert!(!claim_allows(Some(&json!(5)), "room:1"));
    }
}
