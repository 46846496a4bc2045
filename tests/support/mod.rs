//! Test harness: an in-process gateway on a free port and a raw WebSocket client.
#![allow(dead_code)]

pub mod presence_view;
pub mod redis_server;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use phx_gateway::config::Settings;
use phx_gateway::Gateway;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expectation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A gateway running in-process on its own thread and runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    /// Starts a gateway with the default settings changed by `tweak`.
    pub fn start(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::defaults();
        settings.http.workers = 1;
        tweak(&mut settings);
        let gateway = Gateway::new(settings.validated().expect("valid settings")).expect("gateway");
        Self::start_gateway(gateway)
    }

    /// Installs a log subscriber for in-process nodes (`RUST_LOG=phx_gateway=debug`).
    pub fn init_logs() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }

    /// Starts a cluster node on Redis at `redis_url` (Redis tasks run on the caller's runtime).
    pub async fn start_node(redis_url: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::init_logs();
        let mut settings = Settings::defaults();
        settings.http.workers = 1;
        settings.redis.url = Some(redis_url.to_owned());
        settings.redis.heartbeat_ms = 300;
        settings.redis.down_ms = 1000;
        settings.redis.unsubscribe_delay_ms = 100;
        tweak(&mut settings);
        let gateway = Gateway::start(settings.validated().expect("valid settings"))
            .await
            .expect("node starts");
        Self::start_gateway(gateway)
    }

    /// Starts a prepared gateway (e.g. with Rust channels).
    pub fn start_gateway(gateway: Gateway) -> Self {
        let gateway = Arc::new(gateway);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let running = phx_gateway::server::start(gateway.clone(), listener).expect("server starts");
        let (addr, handle, server) = (running.addr, running.handle, running.server);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = rt.block_on(server);
        });
        Self {
            addr,
            gateway,
            handle,
        }
    }

    /// The WebSocket URL with a query string.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// Connects a client with `vsn=2.0.0` and the given extra params.
    pub async fn v2(&self, params: &str) -> Client {
        Client::connect(&self.ws_url(&format!("vsn=2.0.0&{params}"))).await
    }

    /// Connects a client with `vsn=1.0.0` and the given extra params.
    pub async fn v1(&self, params: &str) -> Client {
        Client::connect(&self.ws_url(&format!("vsn=1.0.0&{params}"))).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.gateway.shutdown.cancel();
        let handle = self.handle.clone();
        // Stopping needs a runtime; the server thread ends once the server future resolves.
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(handle.stop(false));
            }
        });
    }
}

/// An HTTP/1.0 request on loopback with extra header lines and a body: (status, body text).
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let text = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, text)
}

/// An HTTP/1.0 request on loopback: (status, JSON body or Null).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = bearer.map(|key| format!("Bearer {key}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let (status, text) = http_raw(addr, method, path, &headers, &body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The raw response head of a request (status line and headers).
pub async fn http_head(addr: SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    raw.split_once("\r\n\r\n")
        .map(|(h, _)| h.to_owned())
        .unwrap_or(raw)
}

/// What a client received.
#[derive(Debug, PartialEq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    Closed(Option<(u16, String)>),
}

/// A raw WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects or panics with the reason.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        Self { ws }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text))
            .await
            .expect("send text");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(WsMessage::binary(data))
            .await
            .expect("send binary");
    }

    /// Sends one text message in fragments: a first frame, then continuation frames.
    pub async fn send_fragments(&mut self, parts: &[&str]) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(Data::Text)
            } else {
                OpCode::Data(Data::Continue)
            };
            let frame = Frame::message(part.as_bytes().to_vec(), opcode, i + 1 == parts.len());
            self.ws
                .send(WsMessage::Frame(frame))
                .await
                .expect("send fragment");
        }
    }

    /// The next data frame or the close, within [`WAIT`].
    pub async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("nothing received within the wait")
    }

    /// The next data frame or the close, or None if nothing came within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None => Received::Closed(None),
                Some(Err(_)) => Received::Closed(None),
                Some(Ok(WsMessage::Text(t))) => Received::Text(t.to_string()),
                Some(Ok(WsMessage::Binary(b))) => Received::Binary(b.to_vec()),
                Some(Ok(WsMessage::Close(frame))) => {
                    Received::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => continue,
            });
        }
    }

    /// The next text frame as a string (panics on anything else).
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Received::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame parsed as JSON.
    pub async fn recv_json(&mut self) -> Value {
        let t = self.recv_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    /// Receives text frames until one satisfies `pred`; returns it. Panics after [`WAIT`].
    pub async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(Received::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON frame");
                    if pred(&v) {
                        return v;
                    }
                }
                Some(other) => panic!("waiting for {what}, got {other:?}"),
                None => panic!("waiting for {what}: nothing within {WAIT:?}"),
            }
        }
    }

    /// Asserts that no data frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(r) = self.recv_within(wait).await {
            panic!("expected nothing, got {r:?}");
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(Received::Closed(Some(c))) => return c,
                Some(Received::Closed(None)) => panic!("connection dropped without a close frame"),
                Some(_) => continue,
                None => panic!("no close within {:?}", WAIT * 2),
            }
        }
    }

    /// V2 join of `topic` with join_ref = ref = `r`; returns the reply.
    pub async fn join(&mut self, r: &str, topic: &str) -> Value {
        self.send(serde_json::json!([r, r, topic, "phx_join", {}]))
            .await;
        self.recv_until("join reply", |v| v[1] == r && v[3] == "phx_reply")
            .await
    }

    /// Sends a close frame and keeps the client to read the answer.
    pub async fn send_close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        self.ws
            .send(WsMessage::Close(Some(frame)))
            .await
            .expect("send close");
    }

    /// Sends a close frame.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// Asserts a V2 text frame equals the given JSON text exactly (byte for byte).
#[macro_export]
macro_rules! assert_frame {
    ($client:expr, $expected:expr) => {{
        let got = $client.recv_text().await;
        assert_eq!(got, $expected);
    }};
}
