//! Backend webhooks: a route can ask the application backend to authorize joins and to
//! handle client events, over HTTP, so that business logic stays out of the gateway.
//!
//! - Join: `POST <join_webhook>` with `{topic, params, user_id, assigns, socket_id}`; the
//!   answer `{"allow": true, "reply": {..}, "assigns": {..}, "presence_meta": {..}}` joins,
//!   `{"allow": false, "reason": ".."}` refuses.
//! - Event: `POST <event_webhook>` with `{topic, event, payload, user_id, assigns}`; the
//!   answer may hold `"reply": {"status": "ok", "response": {..}}` and/or
//!   `"broadcast": {"event": "..", "payload": {..}}` (and `"broadcast_from"`).
//!
//! Calls are bounded: at most `webhook.max_concurrency` at once, each within
//! `webhook.timeout_ms`; only joins (which do not change anything) are retried, once, on a
//! connection error. A backend that is down gives a clean error reply, never a stuck channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use crate::config::WebhookSettings;

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Too many calls in flight for too long.
    #[error("webhook concurrency limit reached")]
    Busy,
    /// The backend did not answer in time.
    #[error("webhook timed out")]
    Timeout,
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Client(#[source] reqwest::Error),
    /// The backend could not be reached (the URL is left out: it may carry a secret).
    #[error("webhook failed: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The backend answered with a non-2xx status.
    #[error("webhook failed: backend answered HTTP {0}")]
    Status(u16),
    /// The answer was not JSON.
    #[error("webhook answer invalid: {0}")]
    NotJson(#[source] reqwest::Error),
    /// The answer was JSON of the wrong shape.
    #[error("webhook answer invalid: {0}")]
    Shape(#[from] serde_json::Error),
}

/// The answer to a join webhook.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinAnswer {
    /// Whether the join is allowed.
    #[serde(default)]
    pub allow: bool,
    /// Refusal reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Join reply payload.
    #[serde(default)]
    pub reply: Option<Value>,
    /// Assigns merged into the channel's assigns.
    #[serde(default)]
    pub assigns: Option<Map<String, Value>>,
    /// Presence meta fields (merged into the route's meta).
    #[serde(default)]
    pub presence_meta: Option<Map<String, Value>>,
}

/// A reply requested by an event webhook.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplySpec {
    /// Reply status (default `ok`).
    #[serde(default = "ok")]
    pub status: String,
    /// Reply body (default `{}`).
    #[serde(default)]
    pub response: Option<Value>,
}

fn ok() -> String {
    "ok".into()
}

/// A broadcast requested by an event webhook.
#[derive(Debug, Clone, Deserialize)]
pub struct BroadcastSpec {
    /// Event name.
    pub event: String,
    /// Payload (default `{}`).
    #[serde(default)]
    pub payload: Option<Value>,
}

/// The answer to an event webhook.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventAnswer {
    /// Reply to the pusher.
    #[serde(default)]
    pub reply: Option<ReplySpec>,
    /// Broadcast to every subscriber of the topic.
    #[serde(default)]
    pub broadcast: Option<BroadcastSpec>,
    /// Broadcast to every subscriber but the pusher.
    #[serde(default)]
    pub broadcast_from: Option<BroadcastSpec>,
}

/// The webhook HTTP client, shared by every channel.
pub struct Webhooks {
    client: reqwest::Client,
    limit: Arc<Semaphore>,
    timeout: Duration,
    secret: Option<SecretString>,
}

impl Webhooks {
    /// A client with the configured limits.
    pub fn new(settings: &WebhookSettings) -> Result<Self, WebhookError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(settings.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Self {
            client,
            limit: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            timeout,
            secret: settings
                .secret
                .clone()
                .filter(|s| !s.expose_secret().is_empty()),
        })
    }

    async fn call(
        &self,
        kind: &'static str,
        url: &str,
        body: &Value,
        retry: bool,
    ) -> Result<Value, WebhookError> {
        let started = Instant::now();
        let result = self.call_inner(url, body, retry).await;
        ::metrics::histogram!(crate::metrics::WEBHOOK_SECONDS, "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            ::metrics::counter!(crate::metrics::WEBHOOK_ERRORS, "kind" => kind).increment(1);
            tracing::warn!(error = %e, kind, "webhook call failed");
        }
        result
    }

    async fn call_inner(
        &self,
        url: &str,
        body: &Value,
        retry: bool,
    ) -> Result<Value, WebhookError> {
        let _permit = tokio::time::timeout(self.timeout, self.limit.acquire())
            .await
            .map_err(|_| WebhookError::Busy)?
            .map_err(|_| WebhookError::Busy)?;
        let attempts = if retry { 2 } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.client.post(url).json(body);
            if let Some(secret) = &self.secret {
                req = req.bearer_auth(secret.expose_secret());
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => {
                    return resp
                        .json::<Value>()
                        .await
                        .map_err(|e| WebhookError::NotJson(e.without_url()));
                }
                Ok(resp) => return Err(WebhookError::Status(resp.status().as_u16())),
                Err(e) if e.is_timeout() => return Err(WebhookError::Timeout),
                // Only a connection failure (nothing reached the backend) is worth a retry.
                Err(e) if e.is_connect() && attempt < attempts => continue,
                Err(e) => return Err(WebhookError::Unreachable(e.without_url())),
            }
        }
    }

    /// Asks the backend whether a join is allowed (retried once on a connection error).
    pub async fn join(&self, url: &str, request: Value) -> Result<JoinAnswer, WebhookError> {
        let answer = self.call("join", url, &request, true).await?;
        Ok(serde_json::from_value(answer)?)
    }

    /// Hands a client event to the backend (never retried: it may not be idempotent).
    pub async fn event(&self, url: &str, request: Value) -> Result<EventAnswer, WebhookError> {
        let answer = self.call("event", url, &request, false).await?;
        Ok(serde_json::from_value(answer)?)
    }
}

/// The error payload given to clients when the backend fails.
pub fn unavailable() -> Value {
    json!({"reason": "backend unavailable"})
}
