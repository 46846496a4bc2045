//! A raw WebSocket client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

/// The HTTP status of a WebSocket upgrade with extra `headers` (101 when it succeeded).
pub(crate) async fn ws_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("upgrade answered in time")
    {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("upgrade failed without an HTTP answer: {e}"),
    }
}

/// What a client received.
#[derive(Debug, PartialEq)]
pub(crate) enum Received {
    Text(String),
    Binary(Vec<u8>),
    Closed(Option<(u16, String)>),
}

/// A raw WebSocket client.
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects or panics with the reason.
    pub(crate) async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect to {url} failed: {e}"));
        Self { ws }
    }

    /// Sends a text frame.
    pub(crate) async fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text))
            .await
            .expect("send text");
    }

    /// Sends a JSON value as a text frame.
    pub(crate) async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a binary frame.
    pub(crate) async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(WsMessage::binary(data))
            .await
            .expect("send binary");
    }

    /// Sends one text message in fragments: a first frame, then continuation frames.
    pub(crate) async fn send_fragments(&mut self, parts: &[&str]) {
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
    pub(crate) async fn recv(&mut self) -> Received {
        self.recv_within(WAIT)
            .await
            .expect("nothing received within the wait")
    }

    /// The next data frame or the close, or None if nothing came within `wait`.
    pub(crate) async fn recv_within(&mut self, wait: Duration) -> Option<Received> {
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
    pub(crate) async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Received::Text(t) => t,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame parsed as JSON.
    pub(crate) async fn recv_json(&mut self) -> Value {
        let t = self.recv_text().await;
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    /// Receives text frames until one satisfies `pred`; returns it. Panics after [`WAIT`].
    pub(crate) async fn recv_until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.recv_match(what, WAIT, pred)
            .await
            .unwrap_or_else(|| panic!("waiting for {what}: nothing within {WAIT:?}"))
    }

    /// Receives text frames until one satisfies `pred`; returns it, or None if none did
    /// within `wait`. Panics on anything but a text frame.
    pub(crate) async fn recv_match(
        &mut self,
        what: &str,
        wait: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await? {
                Received::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("JSON frame");
                    if pred(&v) {
                        return Some(v);
                    }
                }
                other => panic!("waiting for {what}, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub(crate) async fn expect_close(&mut self) -> (u16, String) {
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
    pub(crate) async fn join(&mut self, r: &str, topic: &str) -> Value {
        self.send(serde_json::json!([r, r, topic, "phx_join", {}]))
            .await;
        self.recv_until("join reply", |v| v[1] == r && v[3] == "phx_reply")
            .await
    }

    /// Sends a close frame and keeps the client to read the answer.
    pub(crate) async fn send_close(&mut self, code: u16) {
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
    pub(crate) async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}
