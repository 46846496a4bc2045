//! Protocol behaviour over a real WebSocket, checked frame by frame against what Phoenix sends.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::client::ws_status;
use crate::support::{process_metric, without_history, Client, Received, TestServer};

#[tokio::test]
async fn join_heartbeat_echo_broadcast_exact_v2_frames() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("user_id=a200").await;
    a.send_text(r#"["1","1","room:lobby","phx_join",{}]"#).await;
    assert_frame!(
        a,
        r#"["1","1","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_frame!(a, r#"["1",null,"room:lobby","presence_state",{}]"#);
    let diff = a.recv_json().await;
    assert_eq!(diff[0], Value::Null);
    assert_eq!(diff[3], "presence_diff");
    assert_eq!(diff[4]["leaves"], json!({}));
    let meta = &diff[4]["joins"]["a200"]["metas"][0];
    assert!(
        meta["online_at"].is_string() && meta["phx_ref"].as_str().map(str::len) == Some(16),
        "{meta}"
    );

    a.send_text(r#"[null,"2","phoenix","heartbeat",{}]"#).await;
    assert_frame!(
        a,
        r#"[null,"2","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );

    a.send_text(r#"["1","3","room:lobby","ping",{"hello":"world","n":1}]"#)
        .await;
    assert_frame!(
        a,
        r#"["1","3","room:lobby","phx_reply",{"response":{"hello":"world","n":1},"status":"ok"}]"#
    );

    a.send_text(r#"["1","4","room:lobby","new_msg",{"body":"hi"}]"#)
        .await;
    assert_frame!(a, r#"[null,null,"room:lobby","new_msg",{"body":"hi"}]"#);
    assert_frame!(
        a,
        r#"["1","4","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn heartbeat_is_answered_without_any_channel() {
    let srv = TestServer::start(without_history);
    let mut c = srv.v2("").await;
    c.send_text(r#"[null,"7","phoenix","heartbeat",{}]"#).await;
    assert_frame!(
        c,
        r#"[null,"7","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn v1_objects_never_carry_join_ref() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v1("").await;
    a.send_text(
        r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
    )
    .await;
    assert_frame!(
        a,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}"#
    );
    assert_frame!(
        a,
        r#"{"event":"presence_state","payload":{},"ref":null,"topic":"room:lobby"}"#
    );
    a.send_text(
        r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2","join_ref":null}"#,
    )
    .await;
    assert_frame!(
        a,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"phoenix"}"#
    );
    a.send_text(r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":"3","join_ref":"1"}"#).await;
    assert_frame!(
        a,
        r#"{"event":"new_msg","payload":{"body":"hi"},"ref":null,"topic":"room:lobby"}"#
    );
    assert_frame!(
        a,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"3","topic":"room:lobby"}"#
    );
    a.send_text(
        r#"{"topic":"room:lobby","event":"phx_leave","payload":{},"ref":"4","join_ref":"1"}"#,
    )
    .await;
    assert_frame!(
        a,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"4","topic":"room:lobby"}"#
    );
    assert_frame!(
        a,
        r#"{"event":"phx_close","payload":{},"ref":"1","topic":"room:lobby"}"#
    );
}

#[tokio::test]
async fn missing_vsn_means_v1_and_unsupported_vsn_is_refused() {
    let srv = TestServer::start(without_history);
    let mut c = Client::connect(&srv.ws_url("user_id=novsn")).await;
    c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#)
        .await;
    assert_frame!(
        c,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"phoenix"}"#
    );

    for vsn in ["3.0.0", "2.1.0", "2.0", "123.1.1"] {
        assert_eq!(
            ws_status(&srv.ws_url(&format!("vsn={vsn}")), &[]).await,
            403,
            "vsn {vsn}"
        );
    }
}

#[tokio::test]
async fn refused_unmatched_and_never_joined() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    a.send_text(r#"["6","6","room:private:x","phx_join",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["6","6","room:private:x","phx_reply",{"response":{"reason":"unauthorized"},"status":"error"}]"#
    );
    a.send_text(r#"["7","7","nope:1","phx_join",{}]"#).await;
    assert_frame!(
        a,
        r#"[null,"7","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    a.send_text(r#"["8","8","room:other","ping",{}]"#).await;
    assert_frame!(
        a,
        r#"[null,"8","room:other","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    // A refused join leaves no channel behind.
    a.send_text(r#"["6","9","room:private:x","ping",{}]"#).await;
    assert_frame!(
        a,
        r#"[null,"9","room:private:x","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    // Leaving a topic that is not joined is acknowledged with the message's own refs.
    a.send_text(r#"["5","10","room:none","phx_leave",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["5","10","room:none","phx_reply",{"response":{},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn unhandled_event_keeps_the_channel_joined() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    a.join("1", "room:lobby").await;
    a.send_text(r#"["1","2","room:lobby","wat",{}]"#).await;
    let reply = a.recv_until("reply to wat", |v| v[1] == "2").await;
    assert_eq!(
        reply,
        json!(["1", "2", "room:lobby", "phx_reply", {"response": {"reason": "unhandled event"}, "status": "error"}])
    );
    a.send_text(r#"["1","3","room:lobby","ping",{"still":"here"}]"#)
        .await;
    let reply = a.recv_until("ping reply", |v| v[1] == "3").await;
    assert_eq!(reply[4]["response"], json!({"still": "here"}));
}

#[tokio::test]
async fn leave_replies_then_closes_and_later_events_are_unmatched() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    a.join("15", "room:lobby").await;
    a.recv_until("presence_state", |v| v[3] == "presence_state")
        .await;
    a.send_text(r#"["15","16","room:lobby","phx_leave",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["15","16","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_frame!(a, r#"["15","15","room:lobby","phx_close",{}]"#);
    a.send_text(r#"["15","17","room:lobby","ping",{}]"#).await;
    assert_frame!(
        a,
        r#"[null,"17","room:lobby","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
}

#[tokio::test]
async fn duplicate_join_replies_then_closes_the_old_incarnation() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    a.join("12", "room:lobby").await;
    a.recv_until("presence_state", |v| v[3] == "presence_state")
        .await;
    a.send_text(r#"["13","13","room:lobby","phx_join",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["13","13","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
    assert_frame!(a, r#"["12","12","room:lobby","phx_close",{}]"#);
    assert_frame!(a, r#"["13",null,"room:lobby","presence_state",{}]"#);
    // Only the new incarnation is subscribed: one copy of each broadcast.
    a.send_text(r#"["13","14","room:lobby","new_msg",{"n":1}]"#)
        .await;
    assert_frame!(a, r#"[null,null,"room:lobby","new_msg",{"n":1}]"#);
    assert_frame!(
        a,
        r#"["13","14","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
    // As Phoenix: a push with the old join_ref goes to the current channel, which replies
    // with its own join_ref...
    a.send_text(r#"["12","15","room:lobby","ping",{"p":1}]"#)
        .await;
    assert_frame!(
        a,
        r#"["13","15","room:lobby","phx_reply",{"response":{"p":1},"status":"ok"}]"#
    );
    // ...but a leave with the old join_ref raced the phx_close already sent: ignored.
    a.send_text(r#"["12","16","room:lobby","phx_leave",{}]"#)
        .await;
    a.send_text(r#"["13","17","room:lobby","ping",{}]"#).await;
    assert_frame!(
        a,
        r#"["13","17","room:lobby","phx_reply",{"response":{},"status":"ok"}]"#
    );
}

#[tokio::test]
async fn broadcast_from_skips_only_the_sender() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    let mut b = srv.v2("").await;
    let mut c = srv.v1("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    c.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    c.recv_until("v1 join", |v| v["event"] == "phx_reply").await;

    b.send_text(r#"["1","2","room:lobby","typing",{"who":"b"}]"#)
        .await;
    assert_eq!(
        a.recv_until("typing", |v| v[3] == "typing").await[4],
        json!({"who": "b"})
    );
    assert_eq!(
        c.recv_until("typing", |v| v["event"] == "typing").await["payload"],
        json!({"who": "b"})
    );
    // b gets its ok reply and never its own typing event.
    let reply = b
        .recv_until("typing reply", |v| v[3] == "typing" || v[1] == "2")
        .await;
    assert_eq!(reply[3], "phx_reply");
    b.send_text(r#"["1","3","room:lobby","ping",{}]"#).await;
    let next = b
        .recv_until("ping reply", |v| v[3] == "typing" || v[1] == "3")
        .await;
    assert_eq!(
        next[1], "3",
        "the sender must not receive its own broadcast_from"
    );
}

#[tokio::test]
async fn heartbeat_timeout_closes_a_silent_socket() {
    let srv = TestServer::start(|s| s.socket.heartbeat_timeout_ms = 300);
    let mut a = srv.v2("").await;
    let started = std::time::Instant::now();
    // Talking keeps it open...
    for r in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.send(json!([null, r.to_string(), "phoenix", "heartbeat", {}]))
            .await;
        a.recv_json().await;
    }
    // ...silence closes it, with a code phoenix.js reconnects after (not 1000).
    let (code, reason) = a.expect_close().await;
    assert_eq!((code, reason.as_str()), (1002, "heartbeat timeout"));
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn malformed_frames_close_the_socket_but_not_the_server() {
    let srv = TestServer::start(without_history);
    for bad in [
        "this is not json",
        "[1,2]",
        r#"["1","1",3,"e",{}]"#,
        "{}",
        "",
    ] {
        let mut c = srv.v2("").await;
        c.send_text(bad).await;
        assert_eq!(
            c.expect_close().await,
            (1011, "malformed frame".into()),
            "frame {bad:?}"
        );
    }
    let mut c = srv.v1("").await;
    c.send_binary(vec![0, 1, 1, 1, 1, b'1', b'2', b't', b'e'])
        .await;
    assert_eq!(c.expect_close().await.0, 1011, "binary frames are not V1");
    let mut ok = srv.v2("").await;
    ok.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    ok.recv_json().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let srv = TestServer::start(|s| s.socket.max_frame_bytes = 1024);
    let mut c = srv.v2("").await;
    let big = format!(
        r#"["1","1","room:lobby","ping",{{"x":"{}"}}]"#,
        "a".repeat(4096)
    );
    c.send_text(&big).await;
    assert_eq!(c.expect_close().await.0, 1009);
}

#[tokio::test]
async fn too_many_channels_and_long_topics_are_refused() {
    let srv = TestServer::start(|s| {
        s.socket.max_channels = 2;
        s.socket.max_topic_bytes = 20;
    });
    let mut a = srv.v2("").await;
    assert_eq!(a.join("1", "room:1").await[4]["status"], "ok");
    assert_eq!(a.join("2", "room:2").await[4]["status"], "ok");
    let r = a.join("3", "room:3").await;
    assert_eq!(
        r,
        json!(["3", "3", "room:3", "phx_reply", {"response": {"reason": "too many channels joined"}, "status": "error"}])
    );
    let long = format!("room:{}", "x".repeat(30));
    let r = a.join("4", &long).await;
    assert_eq!(
        r[4],
        json!({"response": {"reason": "topic too long"}, "status": "error"})
    );
}

#[tokio::test]
async fn disconnect_broadcast_on_the_socket_id_closes_every_socket_of_the_user() {
    let srv = TestServer::start(without_history);
    let mut a1 = srv.v2("user_id=42").await;
    let mut a2 = srv.v1("user_id=42").await;
    let mut other = srv.v2("user_id=7").await;
    for c in [&mut a1, &mut other] {
        c.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
        c.recv_json().await;
    }
    a2.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#)
        .await;
    a2.recv_json().await;
    let msg = phx_gateway::pubsub::Broadcast::new(
        "users_socket:42",
        "disconnect",
        phx_gateway::protocol::Payload::empty(),
    );
    srv.gateway.pubsub.broadcast(std::sync::Arc::new(msg), None);
    assert_eq!(a1.expect_close().await.0, 1001);
    assert_eq!(a2.expect_close().await.0, 1001);
    other
        .send_text(r#"[null,"2","phoenix","heartbeat",{}]"#)
        .await;
    assert_eq!(other.recv_json().await[1], "2");
}

#[tokio::test]
async fn binary_push_gets_binary_reply_and_broadcasts_reach_v2_only() {
    let srv = TestServer::start(without_history);
    let mut a = srv.v2("").await;
    let mut b = srv.v2("").await;
    let mut v1 = srv.v1("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    v1.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    v1.recv_until("v1 join", |v| v["event"] == "phx_reply")
        .await;

    // Recorded from Phoenix: push "ping" with de ad be ef -> reply kind 1 with the same bytes.
    let push = include_bytes!("../fixtures/phoenix-push-ping.bin");
    a.send_binary(push.to_vec()).await;
    let reply = loop {
        match a.recv().await {
            Received::Binary(b) => break b,
            Received::Text(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(reply, include_bytes!("../fixtures/phoenix-reply-ok.bin"));

    let mut push = vec![0u8, 1, 2, 10, 7];
    push.extend_from_slice(b"110room:lobbynew_msg");
    push.extend_from_slice(&[1, 2, 3]);
    a.send_binary(push).await;
    let got = loop {
        match b.recv().await {
            Received::Binary(bytes) => break bytes,
            Received::Text(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    let mut expected = vec![2u8, 10, 7];
    expected.extend_from_slice(b"room:lobbynew_msg");
    expected.extend_from_slice(&[1, 2, 3]);
    assert_eq!(got, expected);
    // The V1 socket cannot carry binary; it gets nothing and stays connected.
    v1.send(json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "9"}))
        .await;
    let next = v1
        .recv_until("heartbeat reply", |v| {
            v["ref"] == "9" || v["event"] == "new_msg"
        })
        .await;
    assert_eq!(next["event"], "phx_reply");
}

#[tokio::test]
async fn a_client_close_is_echoed_and_its_presence_leaves() {
    let srv = TestServer::start(without_history);
    let mut watcher = srv.v2("").await;
    watcher.join("1", "room:lobby").await;
    let mut c = srv.v2("user_id=z").await;
    c.join("1", "room:lobby").await;
    watcher
        .recv_until("z joins", |v| {
            v[3] == "presence_diff" && v[4]["joins"].get("z").is_some()
        })
        .await;
    c.send_close(1000).await;
    assert_eq!(c.expect_close().await.0, 1000);
    watcher
        .recv_until("z leaves", |v| {
            v[3] == "presence_diff" && v[4]["leaves"].get("z").is_some()
        })
        .await;
}

#[tokio::test]
async fn origins_are_checked_and_the_auth_token_subprotocol_is_answered() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = TestServer::start(|s| {
        s.socket.check_origin =
            phx_gateway::config::CheckOrigin::List(vec!["https://app.example.com".into()])
    });
    let url = srv.ws_url("vsn=2.0.0");
    let with = |origin: &str, protocols: Option<&str>| {
        let mut req = url.clone().into_client_request().expect("request");
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header"));
        if let Some(p) = protocols {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", p.parse().expect("header"));
        }
        req
    };
    assert_eq!(
        ws_status(&url, &[("Origin", "https://evil.example.com")]).await,
        403,
        "a foreign origin must be refused"
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(with("https://app.example.com", None))
        .await
        .expect("allowed origin");
    assert_eq!(resp.status(), 101);
    // phoenix.js with authToken offers ["phoenix", "base64url.bearer.phx.<btoa(token)>"]: we pick "phoenix".
    let (_ws, resp) = tokio_tungstenite::connect_async(with(
        "https://app.example.com",
        Some("phoenix, base64url.bearer.phx.U0ZNeU5UWS5nMmdE"),
    ))
    .await
    .expect("auth token handshake");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("phoenix")
    );
    // A client that offers only unknown subprotocols is refused, as Phoenix does.
    let mqtt = [
        ("Origin", "https://app.example.com"),
        ("Sec-WebSocket-Protocol", "mqtt"),
    ];
    assert_eq!(ws_status(&url, &mqtt).await, 403);
}

#[tokio::test]
async fn admission_limits_refuse_cleanly_and_count() {
    let srv = TestServer::start(|s| {
        s.limits.max_sockets_per_user = 1;
        s.limits.max_sockets = 3;
        s.limits.messages_per_second = 5;
        s.limits.messages_burst = 5;
    });
    let mut a = srv.v2("user_id=7").await;
    assert_eq!(
        ws_status(&srv.ws_url("vsn=2.0.0&user_id=7"), &[]).await,
        429,
        "one socket per user"
    );
    let _b = srv.v2("user_id=8").await;
    let _c = srv.v2("").await;
    assert_eq!(
        ws_status(&srv.ws_url("vsn=2.0.0"), &[]).await,
        503,
        "the node is full"
    );

    // A burst over the message rate: the excess gets "rate limited"; heartbeats still pass.
    for i in 0..10 {
        a.send(json!(["1", format!("p{i}"), "room:nope", "ping", {}]))
            .await;
    }
    let mut limited = 0;
    for _ in 0..10 {
        let r = a.recv_json().await;
        if r[4]["response"]["reason"] == "rate limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 4,
        "the excess of a burst is refused ({limited} of 10)"
    );
    a.send_text(r#"[null,"hb","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        a.recv_json().await[4]["status"],
        "ok",
        "heartbeats are exempt"
    );
    // Closing a socket frees its place (polled: the server notices the close asynchronously).
    drop(a);
    let mut retry = 0;
    loop {
        match tokio_tungstenite::connect_async(srv.ws_url("vsn=2.0.0&user_id=7")).await {
            Ok(_) => break,
            Err(_) if retry < 50 => {
                retry += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the freed place was not reusable: {e}"),
        }
    }
}

#[tokio::test]
async fn connect_and_join_rates_are_limited_per_node_and_per_ip() {
    phx_gateway::metrics::init();
    let limited =
        |limit: &str| process_metric(&format!("phx_gateway_limited_total{{limit=\"{limit}\"}}"));
    // Joins: at most 3 at once from one IP (all test clients are 127.0.0.1), refilled slowly.
    let srv = TestServer::start(|s| {
        s.limits.joins_per_ip_per_second = 1;
        s.limits.joins_per_ip_burst = 3;
    });
    let before = limited("joins_per_ip");
    let mut c = srv.v2("").await;
    let mut refused = 0;
    for i in 0..6 {
        let r = format!("{i}");
        c.send(json!([r, r, format!("room:rate{i}"), "phx_join", {}]))
            .await;
        let reply = c.recv_until("join reply", |v| v[1] == r.as_str()).await;
        if reply[4]["response"]["reason"] == "rate limited" {
            refused += 1;
        } else {
            assert_eq!(reply[4]["status"], "ok", "{reply}");
        }
    }
    assert!(
        (2..=3).contains(&refused),
        "3 joins pass, the rest are refused ({refused})"
    );
    assert!(limited("joins_per_ip") >= before + refused as f64);
    // The socket is still served.
    c.send_text(r#"[null,"hb","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.recv_until("heartbeat", |v| v[1] == "hb").await[4]["status"],
        "ok"
    );

    // Joins per node: the same, whatever the IP.
    let srv = TestServer::start(|s| {
        s.limits.joins_per_second = 1;
        s.limits.joins_burst = 2;
    });
    let mut a = srv.v2("").await;
    let mut b = srv.v2("").await;
    a.join("1", "room:n1").await;
    b.join("1", "room:n2").await;
    b.send(json!(["2", "2", "room:n3", "phx_join", {}])).await;
    let reply = b.recv_until("join reply", |v| v[1] == "2").await;
    assert_eq!(reply[4]["response"]["reason"], "rate limited", "{reply}");

    // Connects per node: a burst of 2, then HTTP 503 (try another node).
    let srv = TestServer::start(|s| {
        s.limits.connects_per_second = 1;
        s.limits.connects_burst = 2;
    });
    let _a = srv.v2("").await;
    let _b = srv.v2("").await;
    assert_eq!(ws_status(&srv.ws_url("vsn=2.0.0"), &[]).await, 503);
}

/// The frames a V1 (or vsn-less) client sent as binary: join, push, leave.
async fn v1_client_sending_binary(c: &mut Client) {
    let join = json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"});
    c.send_binary(join.to_string().into_bytes()).await;
    assert_frame!(
        c,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}"#
    );
    let ping = json!({"topic": "room:lobby", "event": "ping", "payload": {"n": 1}, "ref": "2"});
    c.send_binary(ping.to_string().into_bytes()).await;
    let reply = c.recv_until("ping reply", |v| v["ref"] == "2").await;
    assert_eq!(
        reply["payload"],
        json!({"response": {"n": 1}, "status": "ok"})
    );
}

#[tokio::test]
async fn v1_json_in_binary_frames_is_read_as_text_and_answered_with_text_frames() {
    let srv = TestServer::start(without_history);
    let mut c = srv.v1("").await;
    v1_client_sending_binary(&mut c).await;
    // Bytes that are not UTF-8 text cannot be JSON: a malformed frame, as in Phoenix.
    c.send_binary(vec![0xff, 0xfe, b'{']).await;
    assert_eq!(c.expect_close().await, (1011, "malformed frame".into()));
}

#[tokio::test]
async fn no_vsn_is_v1_for_text_and_binary_frames() {
    let srv = TestServer::start(without_history);
    let mut c = Client::connect(&srv.ws_url("")).await;
    c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"h"}"#)
        .await;
    assert_frame!(
        c,
        r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"h","topic":"phoenix"}"#
    );
    v1_client_sending_binary(&mut c).await;
    // A V2 array is not a V1 message.
    c.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(c.expect_close().await.0, 1011);
}

#[tokio::test]
async fn a_one_mebibyte_payload_passes_by_default_and_the_close_names_the_limit() {
    let srv = TestServer::start(without_history);
    let mut c = srv.v2("").await;
    c.join("1", "room:lobby").await;
    let body = "m".repeat(1_048_576);
    c.send(json!(["1", "2", "room:lobby", "ping", {"body": body}]))
        .await;
    let reply = c.recv_until("1 MB echo", |v| v[1] == "2").await;
    assert_eq!(
        reply[4]["response"]["body"].as_str().map(str::len),
        Some(1_048_576)
    );

    let small = TestServer::start(|s| s.socket.max_frame_bytes = 1024);
    let mut one = small.v2("").await;
    one.send_text(&format!(
        r#"["1","1","room:lobby","ping",{{"x":"{}"}}]"#,
        "a".repeat(2048)
    ))
    .await;
    assert_eq!(
        one.expect_close().await,
        (1009, "frame too large: over 1024 bytes".into())
    );
    let mut fragmented = small.v2("").await;
    let chunk = "a".repeat(600);
    fragmented
        .send_fragments(&[
            r#"["1","1","room:lobby","ping",{"x":""#,
            &chunk,
            &chunk,
            r#""}]"#,
        ])
        .await;
    assert_eq!(
        fragmented.expect_close().await,
        (1009, "message too large: over 1024 bytes".into())
    );
}
