//! Plain HTTP/1.0 on loopback, written by hand so that a test controls every byte it sends.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A response, split.
pub(crate) struct Response {
    /// 0 if the status line does not parse.
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: String,
}

/// One HTTP/1.0 request with extra header lines and a body; None if the connection failed
/// or the whole response did not come within [`WAIT`].
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Response> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Some(Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// An HTTP/1.0 request with extra header lines and a body: (status, body text).
pub(crate) async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let r = request(addr, method, path, headers, body)
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {path} within {WAIT:?}"));
    (r.status, r.body)
}

/// An HTTP/1.0 request with a bearer key and a JSON body: (status, JSON body or Null).
pub(crate) async fn http(
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
