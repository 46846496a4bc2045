//! The long-poll transport: sessions, polls, POST batches, timeouts, and relaying across
//! nodes without sticky sessions.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::http::http_raw;
use crate::support::redis_server::RedisServer;
use crate::support::{wait_until, without_history, TestServer};

/// One HTTP request; returns the JSON body (long-poll always answers HTTP 200).
async fn lp(addr: SocketAddr, method: &str, query: &str, body: Option<(&str, &str)>) -> Value {
    let (ctype, body) = body.unwrap_or(("application/json", ""));
    let path = format!("/socket/longpoll?{query}");
    let (status, text) = http_raw(addr, method, &path, &[("Content-Type", ctype)], body).await;
    assert_eq!(status, 200, "long-poll always answers 200: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"))
}

/// Polls until `pred` holds on a received frame; returns the frames seen.
async fn poll_until(
    addr: SocketAddr,
    token: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < deadline {
        let r = lp(addr, "GET", &format!("vsn=2.0.0&token={token}"), None).await;
        assert!(r["status"] == 200 || r["status"] == 204, "poll: {r}");
        for m in r["messages"].as_array().into_iter().flatten() {
            let frame: Value = serde_json::from_str(m.as_str().expect("messages are strings"))
                .expect("frame JSON");
            let hit = pred(&frame);
            seen.push(frame);
            if hit {
                return seen;
            }
        }
    }
    panic!("{what}: not seen; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_joins_pushes_and_receives_broadcasts() {
    let srv = TestServer::start(|s| {
        s.longpoll.window_ms = 500;
        without_history(s); // Phoenix-exact frames
    });
    let open = lp(srv.addr, "GET", "vsn=2.0.0&user_id=lp1&", None).await;
    assert_eq!(
        open["status"], 410,
        "a new session answers 410 with its token: {open}"
    );
    assert_eq!(open["messages"], json!([]));
    let token = open["token"].as_str().expect("token").to_owned();

    // An empty poll waits for the window, then 204 with the same token.
    let started = std::time::Instant::now();
    let empty = lp(srv.addr, "GET", &format!("vsn=2.0.0&token={token}"), None).await;
    assert_eq!(
        (empty["status"].as_u64(), empty["token"].as_str()),
        (Some(204), Some(token.as_str()))
    );
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A batch of ndjson lines: join then push.
    let batch = "[\"3\",\"3\",\"room:lobby\",\"phx_join\",{}]\n[\"3\",\"4\",\"room:lobby\",\"ping\",{\"n\":1}]";
    let posted = lp(
        srv.addr,
        "POST",
        &format!("vsn=2.0.0&token={token}"),
        Some(("application/x-ndjson", batch)),
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let seen = poll_until(srv.addr, &token, "ping reply", |f| f[1] == "4").await;
    assert_eq!(
        seen[0],
        json!(["3", "3", "room:lobby", "phx_reply", {"response": {}, "status": "ok"}])
    );
    assert!(seen.iter().any(|f| f[3] == "presence_state"));
    assert_eq!(
        seen.last().cloned(),
        Some(json!(["3", "4", "room:lobby", "phx_reply", {"response": {"n": 1}, "status": "ok"}]))
    );

    // A broadcast from a WebSocket client reaches the long-poll session.
    let mut ws = srv.v2("").await;
    ws.join("1", "room:lobby").await;
    ws.send_text(r#"["1","2","room:lobby","new_msg",{"body":"to lp"}]"#)
        .await;
    let seen = poll_until(srv.addr, &token, "broadcast", |f| f[3] == "new_msg").await;
    assert_eq!(
        seen.last().cloned(),
        Some(json!([null, null, "room:lobby", "new_msg", {"body": "to lp"}]))
    );

    // Unknown tokens: POST -> 410; GET opens a new session (410 with a new token).
    assert_eq!(
        lp(
            srv.addr,
            "POST",
            "vsn=2.0.0&token=local.nope",
            Some(("application/x-ndjson", "[]"))
        )
        .await,
        json!({"status": 410})
    );
    let fresh = lp(srv.addr, "GET", "vsn=2.0.0&token=local.nope", None).await;
    assert_eq!(fresh["status"], 410);
    assert_ne!(fresh["token"], json!(token));
}

#[tokio::test]
async fn refused_connects_and_inactive_sessions() {
    let srv = TestServer::start(|s| s.longpoll.window_ms = 200);
    assert_eq!(
        lp(srv.addr, "GET", "vsn=3.0.0", None).await,
        json!({"status": 403})
    );
    let open = lp(srv.addr, "GET", "vsn=2.0.0", None).await;
    let token = open["token"].as_str().expect("token").to_owned();
    // No poll for 1.5 windows: the session is reaped, POSTs get 410.
    wait_until("session reaped", Duration::from_secs(5), async || {
        srv.gateway.longpoll_sessions() == 0
    })
    .await;
    let r = lp(
        srv.addr,
        "POST",
        &format!("vsn=2.0.0&token={token}"),
        Some((
            "application/x-ndjson",
            "[null,\"1\",\"phoenix\",\"heartbeat\",{}]",
        )),
    )
    .await;
    assert_eq!(r, json!({"status": 410}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_sessions_post_single_json_objects() {
    let srv = TestServer::start(|s| s.longpoll.window_ms = 500);
    let open = lp(srv.addr, "GET", "vsn=1.0.0", None).await;
    let token = open["token"].as_str().expect("token").to_owned();
    let join = r#"{"topic":"room:v1","event":"phx_join","payload":{},"ref":"1"}"#;
    assert_eq!(
        lp(
            srv.addr,
            "POST",
            &format!("vsn=1.0.0&token={token}"),
            Some(("application/json", join))
        )
        .await,
        json!({"status": 200})
    );
    let seen = poll_until(srv.addr, &token, "v1 join reply", |f| {
        f["event"] == "phx_reply"
    })
    .await;
    assert_eq!(
        seen[0],
        json!({"event": "phx_reply", "payload": {"response": {}, "status": "ok"}, "ref": "1", "topic": "room:v1"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_and_posts_landing_on_another_node_reach_the_owner() {
    let redis = RedisServer::start();
    let [a, b] = TestServer::cluster(&redis, |s| s.longpoll.window_ms = 500).await;
    let open = lp(a.addr, "GET", "vsn=2.0.0&user_id=roamer", None).await;
    let token = open["token"].as_str().expect("token").to_owned();
    assert!(
        token.starts_with(a.gateway.node_id()),
        "the token names its owner: {token}"
    );
    // The POST lands on B, the polls alternate between B and A.
    let posted = lp(
        b.addr,
        "POST",
        &format!("vsn=2.0.0&token={token}"),
        Some((
            "application/x-ndjson",
            "[\"3\",\"3\",\"room:lp\",\"phx_join\",{}]",
        )),
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let seen = poll_until(b.addr, &token, "join reply via B", |f| {
        f[1] == "3" && f[3] == "phx_reply"
    })
    .await;
    assert_eq!(
        seen.last().map(|f| f[4]["status"].clone()),
        Some(json!("ok"))
    );
    // A WebSocket client on A broadcasts; the session (owned by A) gets it through a poll
    // landing on B: the relay alone, no broadcast crossing nodes.
    let mut on_a = a.v2("").await;
    let joined = on_a.join("1", "room:lp").await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    on_a.send_text(r#"["1","2","room:lp","new_msg",{"x":1}]"#)
        .await;
    poll_until(b.addr, &token, "broadcast via B", |f| {
        f[3] == "new_msg" && f[4]["x"] == 1
    })
    .await;
    // A WebSocket client on B broadcasts: it crosses nodes to the session, polled on A.
    let mut on_b = b.v2("").await;
    let joined = on_b.join("1", "room:lp").await;
    assert_eq!(joined[4]["status"], "ok", "{joined}");
    on_b.send_text(r#"["1","3","room:lp","new_msg",{"x":2}]"#)
        .await;
    let via_a = tokio::spawn({
        let token = token.clone();
        let addr = a.addr;
        async move {
            poll_until(addr, &token, "broadcast from B via A", |f| {
                f[3] == "new_msg" && f[4]["x"] == 2
            })
            .await
        }
    });
    if let Err(e) = via_a.await {
        // Which hop lost it: B's publisher (publish_dropped) or A's subscriber (lost,
        // reconnects); cross-node delivery is at most once through a Redis reconnect.
        let stats = |s: &TestServer| {
            s.gateway
                .cluster
                .as_ref()
                .map(|c| format!("{:?}", c.pubsub_stats))
        };
        panic!(
            "{e}\nnode A redis: {:?}\nnode B redis: {:?}",
            stats(&a),
            stats(&b)
        );
    }
    // Sessions exist only on their owner.
    assert_eq!(
        (a.gateway.longpoll_sessions(), b.gateway.longpoll_sessions()),
        (1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_vsn_speaks_v1_and_takes_a_one_mebibyte_post() {
    let srv = TestServer::start(|s| s.longpoll.window_ms = 500);
    let open = lp(srv.addr, "GET", "user_id=old", None).await;
    assert_eq!(open["status"], 410, "{open}");
    let token = open["token"].as_str().expect("token").to_owned();
    // phoenix.js 1.2 posts one V1 object per request, as text/plain.
    let join = r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#;
    let posted = lp(
        srv.addr,
        "POST",
        &format!("token={token}"),
        Some(("text/plain", join)),
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let seen = poll_until(srv.addr, &token, "join reply", |f| f["ref"] == "1").await;
    assert_eq!(
        seen.last().cloned(),
        Some(
            json!({"event": "phx_reply", "payload": {"response": {}, "status": "ok"}, "ref": "1", "topic": "room:lobby"})
        ),
        "V1 objects, never V2 arrays"
    );
    let body = "b".repeat(1_048_576);
    let ping =
        json!({"topic": "room:lobby", "event": "ping", "payload": {"body": body}, "ref": "2"})
            .to_string();
    let posted = lp(
        srv.addr,
        "POST",
        &format!("token={token}"),
        Some(("text/plain", &ping)),
    )
    .await;
    assert_eq!(posted, json!({"status": 200}));
    let seen = poll_until(srv.addr, &token, "1 MB echo", |f| f["ref"] == "2").await;
    let echoed = &seen.last().expect("echo")["payload"]["response"]["body"];
    assert_eq!(echoed.as_str().map(str::len), Some(1_048_576));
}
