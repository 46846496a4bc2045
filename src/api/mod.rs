//! The server API under `/api/v1`, for application backends: broadcast, presence, disconnect
//! and node info. Authenticated with `Authorization: Bearer <api.key>`; with no key
//! configured the API does not exist (404). Documented in `docs/openapi.json`.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{error, web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
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
    // A body that does not parse is a 400 with the parser's reason, in the API's error shape.
    let json = web::JsonConfig::default()
        .content_type_required(false)
        .error_handler(|e, _| {
            let answer = error(
                StatusCode::BAD_REQUEST,
                &format!("invalid request body: {e}"),
            );
            error::InternalError::from_response(e, answer).into()
        });
    let query = web::QueryConfig::default().error_handler(|e, _| {
        let answer = error(StatusCode::BAD_REQUEST, &format!("invalid query: {e}"));
        error::InternalError::from_response(e, answer).into()
    });
    cfg.service(
        web::scope("/api/v1")
            .app_data(json)
            .app_data(query)
            .service(keyed("/broadcast", web::post().to(broadcast)))
            // Before the list: `{topic:.*}` would take `/count` as part of the topic.
            .service(keyed(
                "/presence/{topic:.*}/count",
                web::get().to(presence_count),
            ))
            .service(keyed("/presence/{topic:.*}", web::get().to(presence)))
            .service(keyed("/disconnect", web::post().to(disconnect)))
            .service(keyed("/info", web::get().to(info)))
            .default_service(web::to(not_found)),
    );
}

/// An endpoint behind the key check; other methods on its path are "not found".
fn keyed(
    path: &str,
    route: actix_web::Route,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path)
        .wrap(from_fn(require_key))
        .route(route)
        .default_service(web::to(not_found))
}

fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": message}))
}

async fn not_found() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "not found")
}

/// Lets a request through only with the bearer key (404 for everything when the API is off).
async fn require_key(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    match refusal(req.request()) {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(answer) => Ok(req.into_response(answer).map_into_right_body()),
    }
}

/// The answer to a request without the right key, if it lacks it.
fn refusal(req: &HttpRequest) -> Option<HttpResponse> {
    let key = req
        .app_data::<web::Data<Arc<Gateway>>>()
        .and_then(|g| g.settings.api.key.clone())
        .filter(|k| !k.expose_secret().is_empty());
    let Some(key) = key else {
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
    if bool::from(digest(given).ct_eq(&digest(key.expose_secret()))) {
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

/// Why a message of a request cannot be broadcast.
#[derive(Debug, thiserror::Error)]
enum Invalid {
    #[error("topic must be 1 to {0} bytes")]
    TopicLength(usize),
    #[error("topics starting with phx_internal: are reserved")]
    Reserved,
    #[error("event must be 1 to 255 bytes")]
    EventLength,
    #[error("payload must be a JSON object")]
    PayloadNotObject,
}

fn validate(m: Message, max_topic: usize) -> Result<Broadcast, Invalid> {
    if m.topic.is_empty() || m.topic.len() > max_topic {
        return Err(Invalid::TopicLength(max_topic));
    }
    if m.topic.starts_with(crate::protocol::INTERNAL_PREFIX) {
        return Err(Invalid::Reserved);
    }
    if m.event.is_empty() || m.event.len() > 255 {
        return Err(Invalid::EventLength);
    }
    let payload = match m.payload {
        None => Value::Object(Default::default()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(Invalid::PayloadNotObject),
    };
    Ok(Broadcast::new(m.topic, m.event, Payload::Json(payload)))
}

async fn broadcast(
    gateway: web::Data<Arc<Gateway>>,
    body: web::Json<BroadcastRequest>,
) -> HttpResponse {
    let messages = match body.into_inner() {
        BroadcastRequest::One(m) => vec![m],
        BroadcastRequest::Batch { messages } => messages,
    };
    if messages.is_empty() || messages.len() > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("send 1 to {MAX_BATCH} messages"),
        );
    }
    // Validate the whole batch first: a batch is published entirely or not at all.
    let max_topic = gateway.settings.socket.max_topic_bytes;
    let mut valid = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        match validate(m, max_topic) {
            Ok(b) => valid.push(b),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("message {i}: {e}")),
        }
    }
    let count = valid.len();
    for mut b in valid {
        // Kept in the topic's history like the channel's own broadcasts.
        b.retention = gateway.history_of(&b.topic);
        gateway.pubsub.broadcast(Arc::new(b), None);
    }
    HttpResponse::Accepted().json(json!({"ok": true, "count": count}))
}

/// Most presences in one page of the list.
const MAX_PAGE: usize = 1000;

/// A page of a presence list: `limit` keys after `cursor` (a key), in key order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

fn valid_topic(gateway: &Gateway, topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= gateway.settings.socket.max_topic_bytes
}

/// The whole `presence_state` object, or with `limit`/`cursor` a page of it:
/// `{"presences": {...}, "next_cursor": key or null}`.
async fn presence(
    gateway: web::Data<Arc<Gateway>>,
    topic: web::Path<String>,
    query: web::Query<PageQuery>,
) -> HttpResponse {
    let topic = topic.into_inner();
    if !valid_topic(&gateway, &topic) {
        return error(StatusCode::BAD_REQUEST, "invalid topic");
    }
    let list = gateway.presence.list(&gateway.presence_topic(&topic)).await;
    let PageQuery { limit, cursor } = query.into_inner();
    if limit.is_none() && cursor.is_none() {
        return HttpResponse::Ok().json(list);
    }
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("limit must be 1 to {MAX_PAGE}"),
        );
    }
    let Value::Object(all) = list else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "presence unavailable");
    };
    let (presences, next_cursor) = page(all, cursor.as_deref(), limit);
    HttpResponse::Ok().json(json!({"presences": presences, "next_cursor": next_cursor}))
}

/// The `limit` entries after `cursor` in key order, and the cursor of the next page.
fn page(
    all: serde_json::Map<String, Value>,
    cursor: Option<&str>,
    limit: usize,
) -> (serde_json::Map<String, Value>, Option<String>) {
    let mut entries: Vec<(String, Value)> = all
        .into_iter()
        .filter(|(k, _)| cursor.is_none_or(|c| k.as_str() > c))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let more = entries.len() > limit;
    entries.truncate(limit);
    let next = more
        .then(|| entries.last().map(|(k, _)| k.clone()))
        .flatten();
    (entries.into_iter().collect(), next)
}

/// `{"users": U, "connections": C}`: distinct presence keys and presences, cluster-wide.
async fn presence_count(
    gateway: web::Data<Arc<Gateway>>,
    topic: web::Path<String>,
) -> HttpResponse {
    let topic = topic.into_inner();
    if !valid_topic(&gateway, &topic) {
        return error(StatusCode::BAD_REQUEST, "invalid topic");
    }
    HttpResponse::Ok().json(gateway.presence_count(&topic).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    socket_id: String,
}

async fn disconnect(
    gateway: web::Data<Arc<Gateway>>,
    body: web::Json<DisconnectRequest>,
) -> HttpResponse {
    let socket_id = body.into_inner().socket_id;
    if socket_id.is_empty()
        || socket_id.len() > gateway.settings.socket.max_topic_bytes
        || socket_id.starts_with(crate::protocol::INTERNAL_PREFIX)
    {
        return error(StatusCode::BAD_REQUEST, "invalid socket_id");
    }
    let msg = Broadcast::new(
        socket_id,
        crate::protocol::events::DISCONNECT,
        Payload::empty(),
    );
    gateway.pubsub.broadcast(Arc::new(msg), None);
    HttpResponse::Accepted().json(json!({"ok": true}))
}

async fn info(gateway: web::Data<Arc<Gateway>>) -> HttpResponse {
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
