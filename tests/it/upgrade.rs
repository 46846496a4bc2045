//! The WebSocket upgrade path, byte by byte: the upgrade hook answers every `Upgrade:
//! websocket` request itself (the App never sees them), and an accepted connection leaves the
//! HTTP dispatcher with whatever the client already sent.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{without_history, TestServer, WAIT};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A masked client frame.
fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 | opcode } else { opcode }];
    assert!(payload.len() < 126, "short frames only");
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads the response head (through the blank line) and returns it with what followed it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one unmasked short server frame following `pending`: (opcode, payload).
async fn read_frame(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    let mut chunk = [0u8; 4096];
    loop {
        if pending.len() >= 2 && pending.len() >= 2 + (pending[1] & 0x7f) as usize {
            let len = (pending[1] & 0x7f) as usize;
            assert!(len < 126, "short frames only");
            let frame = (pending[0], pending[2..2 + len].to_vec());
            pending.drain(..2 + len);
            return frame;
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("frame in time")
            .expect("read");
        assert!(n > 0, "connection closed before the frame");
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// Sends `request` and returns the status line and whether the server then closed.
async fn answer(addr: SocketAddr, request: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let (head, _) = read_head(&mut s).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .is_ok();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (
        status,
        closed && head.to_ascii_lowercase().contains("connection: close"),
    )
}

// Multi-threaded: the server hands upgraded connections to this runtime, as the binary does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_handshake_are_read_and_fragments_joined() {
    let srv = TestServer::start(without_history);
    let mut s = TcpStream::connect(srv.addr).await.expect("connect");
    let mut bytes = upgrade_request("GET", "/socket/websocket?vsn=2.0.0", "").into_bytes();
    // The first heartbeat in the same packet as the handshake, the second in two fragments.
    bytes.extend(frame(1, true, br#"[null,"1","phoenix","heartbeat",{}]"#));
    bytes.extend(frame(1, false, br#"[null,"2","phoe"#));
    bytes.extend(frame(9, true, b"ping"));
    bytes.extend(frame(0, true, br#"nix","heartbeat",{}]"#));
    s.write_all(&bytes).await.expect("write");
    let (head, mut pending) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    let mut texts = Vec::new();
    let mut pongs = Vec::new();
    while texts.len() < 2 || pongs.is_empty() {
        match read_frame(&mut s, &mut pending).await {
            (0x81, text) => texts.push(String::from_utf8(text).expect("utf-8")),
            (0x8a, payload) => pongs.push(payload),
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(
        texts,
        [
            r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        ],
        "both heartbeats answered, in order"
    );
    assert_eq!(pongs, [b"ping".to_vec()], "the pong echoes the ping");
}

#[tokio::test]
async fn upgrades_the_endpoint_does_not_take_get_http_answers_and_a_close() {
    let srv = TestServer::start(without_history);
    let (status, closed) = answer(srv.addr, &upgrade_request("GET", "/nowhere", "")).await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    assert!(closed, "a refused upgrade closes the connection");
    let (status, closed) =
        answer(srv.addr, &upgrade_request("POST", "/socket/websocket", "")).await;
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");
    assert!(closed);
    let bad_version = upgrade_request("GET", "/socket/websocket", "")
        .replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    let (status, closed) = answer(srv.addr, &bad_version).await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(closed);
    let (status, closed) = answer(
        srv.addr,
        &upgrade_request("GET", "/socket/websocket?vsn=9.0.0", ""),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(closed);
    // Not an upgrade at all: the App answers, as for any plain request.
    let plain = crate::support::http::request(srv.addr, "GET", "/socket/websocket", &[], "")
        .await
        .expect("answer");
    assert_eq!(plain.status, 400);
}
