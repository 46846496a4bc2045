//! The server API under `/api/v1`, for application backends: broadcast, presence, disconnect
//! and node info. Authenticated with `Authorization: Bearer <api.key>`; with no key
//! configured the API does not exist (404). Documented in `docs/openapi.json`.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::gateway::Gateway;
use crate::protocol::Payload;
use crate::pubsub::Broadcast;

/// Most messages in one batch broadcast.
const MAX_BATCH: usize = 1000;

/// Registers the API routes on an app scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .route("/broadcast", web::post().to(broadcast))
            .route("/presence/{topic:.*}", web::get().to(presence))
            .route("/disconnect", web::post().to(disconnect))
            .route("/info", web::get().to(info))
            .default_service(web::to(not_found)),
    );
}

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": message}))
}

async fn not_found() -> HttpResponse {
    error(actix_web::http::StatusCode::NOT_FOUND, "not found")
}

/// Checks the bearer key: `Some` is the refusal to send (404 when the API is off).
fn refuse(req: &HttpRequest, gateway: &Gateway) -> Option<HttpResponse> {
    let Some(key) = gateway
        .settings
        .api
        .key
        .as_deref()
        .filter(|k| !k.is_empty())
    else {
        return Some(HttpResponse::NotFound().finish());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Digests are compared, not the keys: equal lengths, so the key's length cannot leak
    // through the comparison's timing either.
    let digest = |k: &str| sha2::Sha256::digest(k.as_bytes());
    if bool::from(digest(given).ct_eq(&digest(key))) {
        None
    } else {
        tracing::info!(peer = ?req.peer_addr(), "server API: missing or wrong key");
        Some(
            HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .json(json!({"error": "unauthorized"})),
        )
    }
}

/// One broadcast in a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    topic: String,
    event: String,
    #[serde(default)]
    payload: Option<Value>,
}

/// A single broadcast, or a batch.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BroadcastRequest {
    Batch { messages: Vec<Message> },
    One(Message),
}

fn validate(m: Message, gateway: &Gateway) -> Result<Broadcast, String> {
    if m.topic.is_empty() || m.topic.len() > gateway.settings.socket.max_topic_bytes {
        return Err(format!(
            "topic must be 1 to {} bytes",
            gateway.settings.socket.max_topic_bytes
        ));
    }
    if m.topic
        .starts_with(crate::transport::relay::INTERNAL_PREFIX)
    {
        return Err("topics starting with phx_internal: are reserved".into());
    }
    if m.event.is_empty() || m.event.len() > 255 {
        return Err("event must be 1 to 255 bytes".into());
    }
    let payload = match m.payload {
        None => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err("payload must be a JSON object".into()),
    };
    Ok(Broadcast::new(m.topic, m.event, Payload::Json(payload)))
}

async fn broadcast(
    req: HttpRequest,
    gateway: web::Data<Arc<Gateway>>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(resp) = refuse(&req, &gateway) {
        return resp;
    }
    let parsed: BroadcastRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                actix_web::http::StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            )
        }
    };
    let messages = match parsed {
        BroadcastRequest::One(m) => vec![m],
        BroadcastRequest::Batch { messages } => messages,
    };
    if messages.is_empty() || messages.len() > MAX_BATCH {
        return error(
            actix_web::http::StatusCode::BAD_REQUEST,
            &format!("send 1 to {MAX_BATCH} messages"),
        );
    }
    // Validate the whole batch first: a batch is published entirely or not at all.
    let mut valid = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        match validate(m, &gateway) {
            Ok(b) => valid.push(b),
            Err(e) => {
                return error(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    &format!("message {i}: {e}"),
                )
            }
        }
    }
    let count = valid.len();
    for b in valid {
        gateway.pubsub.broadcast(Arc::new(b), None);
    }
    HttpResponse::Accepted().json(json!({"ok": true, "count": count}))
}

async fn presence(
    req: HttpRequest,
    gateway: web::Data<Arc<Gateway>>,
    topic: web::Path<String>,
) -> HttpResponse {
    if let Some(resp) = refuse(&req, &gateway) {
        return resp;
    }
    let topic = topic.into_inner();
    if topic.is_empty() || topic.len() > gateway.settings.socket.max_topic_bytes {
        return error(actix_web::http::StatusCode::BAD_REQUEST, "invalid topic");
    }
    HttpResponse::Ok().json(gateway.presence.list(&topic).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    socket_id: String,
}

async fn disconnect(
    req: HttpRequest,
    gateway: web::Data<Arc<Gateway>>,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(resp) = refuse(&req, &gateway) {
        return resp;
    }
    let parsed: DisconnectRequest = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                actix_web::http::StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            )
        }
    };
    if parsed.socket_id.is_empty()
        || parsed.socket_id.len() > gateway.settings.socket.max_topic_bytes
        || parsed
            .socket_id
            .starts_with(crate::transport::relay::INTERNAL_PREFIX)
    {
        return error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid socket_id",
        );
    }
    let msg = Broadcast::new(parsed.socket_id, "disconnect", Payload::empty());
    gateway.pubsub.broadcast(Arc::new(msg), None);
    HttpResponse::Accepted().json(json!({"ok": true}))
}

async fn info(req: HttpRequest, gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
    if let Some(resp) = refuse(&req, &gateway) {
        return resp;
    }
    let (node, mode, nodes) = match &gateway.cluster {
        Some(c) => {
            let nodes: Vec<String> = c
                .redis
                .query(redis::cmd("SMEMBERS").arg(c.redis.keys.nodes()))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "server API info: cannot list nodes");
                    vec![c.redis.node.to_string()]
                });
            (c.redis.node.to_string(), "cluster", nodes)
        }
        None => ("local".to_string(), "single", vec!["local".to_string()]),
    };
    HttpResponse::Ok().json(json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "mode": mode,
        "ready": gateway.ready(),
        "cluster": {"nodes": nodes},
    }))
}
