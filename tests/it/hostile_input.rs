//! Hostile and broken input over a real socket: every class gets the documented reply or
//! close code, is counted, and the server keeps serving everyone else.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::logs::Recording;
use crate::support::{process_metric, wait_until, Client, Received, TestServer, WAIT};

/// What the gateway must do with an input.
enum Expect {
    /// Close the socket with this code, counted under this reason label.
    Close(u16, &'static str),
    /// Answer the message with an error reply whose reason is this.
    ErrorReply(&'static str),
}

enum Input {
    Text(String),
    Binary(Vec<u8>),
    /// One text message sent in fragments.
    Fragments(Vec<String>),
}

fn cases() -> Vec<(&'static str, Input, Expect)> {
    let huge = "x".repeat(300);
    let deep = format!(
        "[\"1\",\"1\",\"room:a\",\"e\",{}{}]",
        "[".repeat(200),
        "]".repeat(200)
    );
    vec![
        (
            "not JSON",
            Input::Text("hello".into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "empty text",
            Input::Text(String::new()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "array of 4",
            Input::Text(r#"["1","1","room:a","e"]"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "object under V2",
            Input::Text(r#"{"topic":"a"}"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "topic not a string",
            Input::Text(r#"["1","1",5,"e",{}]"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "event not a string",
            Input::Text(r#"["1","1","room:a",null,{}]"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "ref an object",
            Input::Text(r#"["1",{},"room:a","e",{}]"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "join_ref an array",
            Input::Text(r#"[[1],"1","room:a","e",{}]"#.into()),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "deeply nested payload",
            Input::Text(deep),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "binary garbage",
            Input::Binary(vec![9, 9, 9]),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "binary truncated header",
            Input::Binary(vec![0, 200, 0, 0, 0, 1]),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "binary reply kind from a client",
            Input::Binary(vec![1, 0, 0, 0, 0]),
            Expect::Close(1011, "malformed_frame"),
        ),
        (
            "frame over the size limit",
            Input::Text(format!(
                r#"["1","1","room:a","ping",{{"x":"{}"}}]"#,
                "y".repeat(70_000)
            )),
            Expect::Close(1009, "frame_too_large"),
        ),
        (
            "fragmented message over the size limit",
            Input::Fragments(vec![
                r#"["1","1","room:a","ping",{"x":""#.into(),
                "y".repeat(40_000),
                "y".repeat(40_000),
                r#""}]"#.into(),
            ]),
            Expect::Close(1009, "message_too_large"),
        ),
        (
            "huge topic in a join",
            Input::Text(format!(r#"["1","1","room:{huge}","phx_join",{{}}]"#)),
            Expect::ErrorReply("topic too long"),
        ),
        (
            "huge event on an unjoined topic",
            Input::Text(format!(r#"["1","1","room:a","{huge}",{{}}]"#)),
            Expect::ErrorReply("unmatched topic"),
        ),
        (
            "push before join",
            Input::Text(r#"["1","1","room:a","ping",{}]"#.into()),
            Expect::ErrorReply("unmatched topic"),
        ),
        (
            "reserved internal topic",
            Input::Text(r#"["1","1","phx_internal:lp:x","phx_join",{}]"#.into()),
            Expect::ErrorReply("unmatched topic"),
        ),
        (
            "unknown topic",
            Input::Text(r#"["1","1","nope:1","phx_join",{}]"#.into()),
            Expect::ErrorReply("unmatched topic"),
        ),
    ]
}

/// The metric series each expected outcome increments.
fn counted_by(expect: &Expect) -> String {
    match expect {
        Expect::Close(_, reason) => {
            format!("phx_gateway_socket_closes_total{{reason=\"{reason}\"}}")
        }
        Expect::ErrorReply("unmatched topic") => "phx_gateway_unmatched_total".into(),
        Expect::ErrorReply(_) => "phx_gateway_joins_total{result=\"refused\"}".into(),
    }
}

/// The log line each expected outcome writes: its level and one of its messages.
fn logged_as(expect: &Expect) -> (&'static str, &'static [&'static str]) {
    match expect {
        Expect::Close(1009, _) => ("INFO", &["frame too large", "message too large"]),
        Expect::Close(..) => ("INFO", &["malformed frame", "websocket protocol error"]),
        Expect::ErrorReply("topic too long") => ("INFO", &["join refused: topic too long"]),
        Expect::ErrorReply(_) => (
            "DEBUG",
            &["event for a topic not joined", "join of an unmatched topic"],
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_bad_input_gets_its_answer_and_others_are_unaffected() {
    phx_gateway::metrics::init();
    // Every test of the binary logs into the one subscriber: a line counts only if it comes
    // from the socket of the case (its span names the socket id).
    let logs = Recording::start();
    let srv = TestServer::start(|s| s.socket.max_frame_bytes = 64 * 1024);
    // A bystander on a joined topic must keep being served throughout.
    let mut bystander = srv.v2("").await;
    bystander.join("1", "room:by").await;
    for (i, (name, input, expect)) in cases().into_iter().enumerate() {
        // Counters are process-wide and other tests run alongside: compare with before.
        let series = counted_by(&expect);
        let before = process_metric(&series);
        let (level, messages) = logged_as(&expect);
        let logged_from = logs.len();
        let mut c = srv.v2(&format!("user_id=hostile{i}")).await;
        let span = format!("socket{{id=\"users_socket:hostile{i}\"}}");
        match input {
            Input::Text(t) => c.send_text(&t).await,
            Input::Binary(b) => c.send_binary(b).await,
            Input::Fragments(parts) => {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                c.send_fragments(&parts).await;
            }
        }
        match expect {
            Expect::Close(code, _) => assert_eq!(c.expect_close().await.0, code, "{name}"),
            Expect::ErrorReply(reason) => {
                let reply = c.recv_until(name, |v| v[3] == "phx_reply").await;
                assert_eq!(
                    reply[4],
                    json!({"response": {"reason": reason}, "status": "error"}),
                    "{name}"
                );
                // The socket stays usable.
                c.send_text(r#"[null,"hb","phoenix","heartbeat",{}]"#).await;
                assert_eq!(
                    c.recv_until("heartbeat", |v| v[1] == "hb").await[4]["status"],
                    "ok",
                    "{name}"
                );
            }
        }
        wait_until(
            &format!("{name} counted in {series}"),
            Duration::from_secs(2),
            async || process_metric(&series) > before,
        )
        .await;
        wait_until(
            &format!("{name} logged at {level}"),
            Duration::from_secs(2),
            async || {
                logs.since(logged_from).lines().any(|l| {
                    l.contains(&format!(" {level} "))
                        && l.contains(&span)
                        && messages.iter().any(|m| l.contains(m))
                })
            },
        )
        .await;
        bystander
            .send(json!(["1", name, "room:by", "ping", {"after": name}]))
            .await;
        let pong = bystander
            .recv_until("bystander ping", |v| v[1] == name)
            .await;
        assert_eq!(
            pong[4]["response"]["after"],
            json!(name),
            "the bystander is still served after {name}"
        );
    }
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_the_socket() {
    // Raw WebSocket framing: a masked text frame whose payload is not UTF-8.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start(|_| {});
    let mut s = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let req = format!(
        "GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        srv.addr
    );
    s.write_all(req.as_bytes()).await.expect("handshake");
    let mut buf = vec![0u8; 1024];
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.expect("101");
        assert!(n > 0, "connection closed during the handshake");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"));
    let payload = [0xffu8, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).await.expect("frame");
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    // A close frame (opcode 8) with a protocol-violation class code, or the connection closed.
    assert!(
        n >= 4,
        "expected a close frame with a code, got {:?}",
        &buf[..n]
    );
    {
        assert_eq!(
            buf[0] & 0x0f,
            8,
            "expected a close frame, got {:?}",
            &buf[..n]
        );
        let code = u16::from_be_bytes([buf[2], buf[3]]);
        assert_eq!(code, 1011, "close code {code}: {:?}", &buf[..n]);
    }
    // The server still serves others.
    let mut ok = srv.v2("").await;
    ok.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(ok.recv_json().await[4]["status"], "ok");
}

#[tokio::test]
async fn a_join_storm_and_many_topics_on_one_socket_are_bounded() {
    let srv = TestServer::start(|s| s.socket.max_channels = 50);
    let mut c = srv.v2("").await;
    for i in 0..200 {
        c.send(json!([
            i.to_string(),
            i.to_string(),
            format!("room:{i}"),
            "phx_join",
            {}
        ]))
        .await;
    }
    let mut ok = 0;
    let mut refused = 0;
    let mut replies = 0;
    while replies < 200 {
        match c.recv().await {
            Received::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v[3] == "phx_reply" {
                    replies += 1;
                    match v[4]["status"].as_str() {
                        Some("ok") => ok += 1,
                        _ => refused += 1,
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (50, 150),
        "exactly max_channels joins succeed"
    );
    let mut other: Client = srv.v2("").await;
    other
        .send_text(r#"[null,"1","phoenix","heartbeat",{}]"#)
        .await;
    assert_eq!(other.recv_json().await[4]["status"], "ok");
}
