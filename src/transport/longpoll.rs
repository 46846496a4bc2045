//! The long-poll transport (`/socket/longpoll`), as Phoenix and phoenix.js 1.8 speak it.
//!
//! A session is a task that owns a [`Socket`] exactly like a WebSocket connection does, plus
//! a buffer of encoded frames. `GET` polls (answered at once when frames are buffered, else
//! parked for up to `window_ms`), `POST` delivers client frames (ndjson batches). Every
//! response is HTTP 200 with the real status in the JSON body, as the client expects:
//! 410 = new session (with its token) or session gone, 200 = messages/accepted, 204 = no
//! messages within the window, 403 = refused, 408 = a POST not processed in time.
//!
//! The session token is `<owner node>.<128 random bits>`: unguessable, and it names the node
//! that owns the session so that, in a cluster, a request landing elsewhere can be relayed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::accept::{accept, Accepted};
use super::parse_params;
use super::Env;
use crate::channel::SocketInfo;
use crate::outbox::{outbox_bounded, CloseReason};
use crate::protocol::Frame;
use crate::socket::Socket;

/// Most lines of one POST that are processed (the rest are ignored, as in Phoenix).
const MAX_LINES: usize = 100;

/// A client frame carried by a POST.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A JSON text frame.
    Text(String),
    /// A V2 binary frame (sent base64-encoded).
    Binary(Vec<u8>),
}

/// What a poll gets.
#[derive(Debug)]
pub enum PollResult {
    /// Frames (already serialized text), oldest first.
    Messages(Vec<String>),
    /// Nothing arrived within the window.
    Empty,
}

/// A request to a session task.
pub enum SessionCmd {
    /// A GET.
    Poll(oneshot::Sender<PollResult>),
    /// A POST of client frames; answered once they were all processed.
    Post(Vec<Incoming>, oneshot::Sender<()>),
}

/// The long-poll sessions owned by this node.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, mpsc::Sender<SessionCmd>>>,
}

impl Sessions {
    fn get(&self, token: &str) -> Option<mpsc::Sender<SessionCmd>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }

    fn insert(&self, token: String, tx: mpsc::Sender<SessionCmd>) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx);
    }

    fn remove(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether there is no open session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs a command on a local session; None if the session does not exist (any more).
    pub async fn poll(&self, token: &str, wait: Duration) -> Option<PollResult> {
        let tx = self.get(token)?;
        let (reply, rx) = oneshot::channel();
        tx.send(SessionCmd::Poll(reply)).await.ok()?;
        tokio::time::timeout(wait, rx).await.ok()?.ok()
    }

    /// Delivers client frames to a local session. `Some(true)`: processed; `Some(false)`:
    /// not processed within `wait` (408); None: no such session (410).
    pub async fn post(&self, token: &str, frames: Vec<Incoming>, wait: Duration) -> Option<bool> {
        let tx = self.get(token)?;
        let (reply, rx) = oneshot::channel();
        tx.send(SessionCmd::Post(frames, reply)).await.ok()?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(())) => Some(true),
            Ok(Err(_)) => None,
            Err(_) => Some(false),
        }
    }
}

fn json_response(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .content_type("application/json; charset=utf-8")
        .body(body.to_string())
}

fn status(code: u16) -> HttpResponse {
    json_response(json!({"status": code}))
}

/// The session token of a request: the `x-phoenix-longpoll-token` header wins over the
/// `token` query parameter (whose last occurrence wins).
fn request_token(req: &HttpRequest) -> Option<String> {
    if let Some(t) = req
        .headers()
        .get("x-phoenix-longpoll-token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(t.to_owned());
    }
    match parse_params(req.query_string()).remove("token") {
        Some(Value::String(t)) if !t.is_empty() => Some(t),
        _ => None,
    }
}

/// Splits a POST body into client frames: for `application/x-ndjson`, one frame per line
/// (JSON when it starts with `[` or `{`, else standard base64 of a binary frame), at most
/// [`MAX_LINES`]; for any other content type, the whole body is one text frame. None when a
/// line is neither JSON-looking nor base64.
pub fn parse_body(ndjson: bool, body: &[u8]) -> Option<Vec<Incoming>> {
    let text = String::from_utf8_lossy(body);
    if !ndjson {
        return Some(vec![Incoming::Text(text.into_owned())]);
    }
    let mut frames = Vec::new();
    for line in text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .take(MAX_LINES)
    {
        if line.starts_with('[') || line.starts_with('{') {
            frames.push(Incoming::Text(line.to_owned()));
        } else {
            frames.push(Incoming::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .ok()?,
            ));
        }
    }
    Some(frames)
}

/// The node that owns a session token.
pub fn token_node(token: &str) -> Option<&str> {
    token.rsplit_once('.').map(|(node, _)| node)
}

fn window(env: &Env) -> Duration {
    Duration::from_millis(env.longpoll.window_ms)
}

/// `OPTIONS`: CORS preflight.
pub async fn options(req: HttpRequest) -> HttpResponse {
    let requested = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, requested))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "get, post, options"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, "3600"))
        .finish()
}

/// `GET`: poll an existing session, or open a new one (answered 410 with its token).
pub async fn get(req: HttpRequest, env: web::Data<Arc<Env>>) -> HttpResponse {
    let env = env.get_ref().clone();
    if let Some(token) = request_token(&req) {
        let wait = window(&env) + Duration::from_secs(5);
        if let Some(result) = route_poll(&env, &token, wait).await {
            let messages = match result {
                PollResult::Messages(m) => m,
                PollResult::Empty => {
                    return json_response(json!({"status": 204, "token": token, "messages": []}))
                }
            };
            return json_response(json!({"status": 200, "token": token, "messages": messages}));
        }
        // Unknown or expired token: fall through and open a new session (Phoenix does too).
    }
    open(&req, &env).await
}

/// `POST`: client frames for a session (ndjson lines, or one frame for other content types).
pub async fn post(req: HttpRequest, env: web::Data<Arc<Env>>, body: web::Bytes) -> HttpResponse {
    let env = env.get_ref().clone();
    let Some(token) = request_token(&req) else {
        return status(410);
    };
    let ndjson = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim() == "application/x-ndjson")
        });
    let Some(frames) = parse_body(ndjson, &body) else {
        return status(400);
    };
    match route_post(&env, &token, frames, window(&env)).await {
        Some(true) => status(200),
        Some(false) => status(408),
        None => status(410),
    }
}

async fn route_poll(env: &Arc<Env>, token: &str, wait: Duration) -> Option<PollResult> {
    if let Some(result) = env.sessions.poll(token, wait).await {
        return Some(result);
    }
    let relay = env.relay.as_ref()?;
    let node = token_node(token)?;
    relay.poll(node, token, wait).await
}

async fn route_post(
    env: &Arc<Env>,
    token: &str,
    frames: Vec<Incoming>,
    wait: Duration,
) -> Option<bool> {
    if env.sessions.get(token).is_some() {
        return env.sessions.post(token, frames, wait).await;
    }
    let relay = env.relay.as_ref()?;
    let node = token_node(token)?;
    relay.post(node, token, frames, wait).await
}

/// Opens a session: the same checks as a WebSocket connect, then the session task.
async fn open(req: &HttpRequest, env: &Arc<Env>) -> HttpResponse {
    let mut params = parse_params(req.query_string());
    params.remove("token");
    let auth_token = req
        .headers()
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Every refusal is a 403 body for long-poll clients, as in Phoenix.
    let Ok(Accepted {
        serializer,
        connected,
        admission,
        peer_ip,
    }) = accept(req.head(), env, params, auth_token).await
    else {
        return status(403);
    };
    let token = format!("{}.{:032x}", env.node_id, rand::random::<u128>());
    let (tx, rx) = mpsc::channel(16);
    env.sessions.insert(token.clone(), tx);
    let info = SocketInfo {
        id: connected.id,
        assigns: connected.assigns,
        serializer,
        peer_ip,
    };
    let span = tracing::info_span!("longpoll", id = info.id.as_deref().unwrap_or("-"));
    tokio::spawn(tracing::Instrument::instrument(
        run(env.clone(), token.clone(), info, rx, admission),
        span,
    ));
    json_response(json!({"status": 410, "token": token, "messages": []}))
}

/// The session task.
async fn run(
    env: Arc<Env>,
    token: String,
    info: SocketInfo,
    mut cmds: mpsc::Receiver<SessionCmd>,
    // Holds the session's place in the admission limits until it ends.
    _admission: crate::limits::Admission,
) {
    let limits = env.socket.settings.clone();
    let serializer = info.serializer;
    let (out_tx, mut out) = outbox_bounded(serializer, super::queue_bounds(&limits));
    let close_signal = out.close_signal();
    let (events_tx, mut events) = crate::channel::exit_queue();
    let mut socket = Socket::new(info, env.socket.clone(), out_tx, events_tx);
    let mut id_rx = socket.subscribe_id().await;
    ::metrics::gauge!(crate::metrics::SOCKETS, "transport" => "longpoll").increment(1.0);
    let window = window(&env);
    // Phoenix reaps a session that has not polled for 1.5 windows.
    let idle_limit = window.mul_f64(1.5);
    let mut last_poll = Instant::now();
    let mut buffer: Vec<String> = Vec::new();
    let mut parked: Option<(oneshot::Sender<PollResult>, Instant)> = None;
    let mut check = tokio::time::interval(Duration::from_millis(250));
    let reason: &'static str = loop {
        let park_deadline = parked.as_ref().map(|(_, d)| *d);
        tokio::select! {
            reason = close_signal.requested() => break reason.label(),
            _ = env.drain.started() => break CloseReason::Shutdown.label(),
            cmd = cmds.recv() => match cmd {
                None => break "closed",
                Some(SessionCmd::Poll(reply)) => {
                    last_poll = Instant::now();
                    if let Some((old, _)) = parked.take() {
                        let _ = old.send(PollResult::Empty); // a newer poll supersedes
                    }
                    if buffer.is_empty() {
                        parked = Some((reply, Instant::now() + window));
                    } else {
                        let _ = reply.send(PollResult::Messages(std::mem::take(&mut buffer)));
                    }
                }
                Some(SessionCmd::Post(frames, ack)) => {
                    for frame in frames {
                        let decoded = match &frame {
                            Incoming::Text(t) => serializer.decode_text(t),
                            Incoming::Binary(b) => serializer.decode_binary(b),
                        };
                        match decoded {
                            Ok(msg) => socket.handle(msg).await,
                            Err(e) => {
                                ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => "malformed").increment(1);
                                tracing::info!(error = %e, "long-poll: malformed frame ignored");
                            }
                        }
                    }
                    let _ = ack.send(());
                }
            },
            Some(frame) = out.rx.recv() => {
                match frame {
                    Frame::Text(t) => buffer.push(t.to_string()),
                    Frame::Binary(_) => tracing::debug!("long-poll cannot carry binary frames to the client: dropped"),
                }
                while let Ok(frame) = out.rx.try_recv() {
                    if let Frame::Text(t) = frame {
                        buffer.push(t.to_string());
                    }
                }
                if buffer.len() > limits.outbound_queue {
                    tracing::warn!("long-poll buffer full: closing slow consumer");
                    ::metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
                    break CloseReason::SlowConsumer.label();
                }
                if let Some((reply, _)) = parked.take() {
                    let _ = reply.send(PollResult::Messages(std::mem::take(&mut buffer)));
                }
            }
            Some(event) = events.next() => socket.on_exit(*event),
            Some(b) = async { match &mut id_rx { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                if b.event == crate::protocol::events::DISCONNECT {
                    tracing::info!("disconnect broadcast on the socket id");
                    break CloseReason::Disconnected.label();
                }
            }
            _ = async { match park_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                if let Some((reply, _)) = parked.take() {
                    let _ = reply.send(PollResult::Empty);
                }
            }
            _ = check.tick() => {
                if parked.is_none() && last_poll.elapsed() > idle_limit {
                    tracing::debug!("long-poll session inactive: closed");
                    break "inactive";
                }
            }
        }
    };
    env.sessions.remove(&token);
    socket.close();
    ::metrics::gauge!(crate::metrics::SOCKETS, "transport" => "longpoll").decrement(1.0);
    ::metrics::counter!(crate::metrics::SOCKET_CLOSES, "reason" => reason).increment(1);
    // A parked poll learns that the session is gone on its next request (410).
    drop(parked);
}
