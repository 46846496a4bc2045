//! The server API (/api/v1): auth, each endpoint, responses checked against docs/openapi.json.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::http::{http, request};
use crate::support::redis_server::RedisServer;
use crate::support::{without_history, TestServer};

const KEY: &str = "test-api-key";

/// Asserts `body` matches the named schema of docs/openapi.json.
fn assert_schema(name: &str, body: &Value) {
    let doc: Value = serde_json::from_str(include_str!("../../docs/openapi.json"))
        .expect("openapi.json is JSON");
    let wrapper =
        json!({"$ref": format!("#/components/schemas/{name}"), "components": doc["components"]});
    let validator = jsonschema::validator_for(&wrapper).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "response does not match schema {name}: {errors:?}\n{body}"
    );
}

fn with_key(s: &mut phx_gateway::config::Settings) {
    s.api.key = Some(KEY.into());
}

#[tokio::test]
async fn without_a_key_the_api_does_not_exist() {
    let srv = TestServer::start(|_| {});
    for (method, path) in [
        ("POST", "/api/v1/broadcast"),
        ("GET", "/api/v1/info"),
        ("GET", "/api/v1/presence/room:1"),
        ("POST", "/api/v1/disconnect"),
    ] {
        let (status, _) = http(srv.addr, method, path, Some("anything"), Some(&json!({}))).await;
        assert_eq!(status, 404, "{method} {path}");
    }
}

#[tokio::test]
async fn missing_or_wrong_keys_get_401() {
    let srv = TestServer::start(with_key);
    for key in [None, Some("wrong"), Some("")] {
        let (status, body) = http(srv.addr, "GET", "/api/v1/info", key, None).await;
        assert_eq!(status, 401, "key {key:?}");
        assert_schema("Error", &body);
    }
    let head = request(srv.addr, "GET", "/api/v1/info", &[], "")
        .await
        .expect("an answer")
        .head;
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    let (status, _) = http(srv.addr, "GET", "/api/v1/info", Some(KEY), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn broadcast_one_and_a_batch_reach_subscribers() {
    let srv = TestServer::start(|s| {
        with_key(s);
        without_history(s); // Phoenix-exact frames; see the history test below
    });
    let mut c = srv.v2("").await;
    c.join("1", "room:api").await;
    assert_frame!(c, r#"["1",null,"room:api","presence_state",{}]"#);
    let (status, body) = http(
        srv.addr,
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(&json!({"topic": "room:api", "event": "srv_push", "payload": {"from": "http"}})),
    )
    .await;
    assert_eq!(status, 202);
    assert_schema("BroadcastResult", &body);
    assert_frame!(c, r#"[null,null,"room:api","srv_push",{"from":"http"}]"#);

    let batch = json!({"messages": [
        {"topic": "room:api", "event": "a", "payload": {"n": 1}},
        {"topic": "room:api", "event": "b"}
    ]});
    let (status, body) = http(
        srv.addr,
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(&batch),
    )
    .await;
    assert_eq!((status, body["count"].as_u64()), (202, Some(2)));
    assert_frame!(c, r#"[null,null,"room:api","a",{"n":1}]"#);
    assert_frame!(c, r#"[null,null,"room:api","b",{}]"#);

    for bad in [
        json!({"topic": "room:api", "event": "e", "payload": [1]}),
        json!({"topic": "", "event": "e"}),
        json!({"topic": "room:api"}),
        json!({"messages": []}),
        json!({"messages": [{"topic": "room:api", "event": "ok"}, {"topic": "room:api", "event": "e", "payload": 3}]}),
        json!("nope"),
    ] {
        let (status, body) =
            http(srv.addr, "POST", "/api/v1/broadcast", Some(KEY), Some(&bad)).await;
        assert_eq!(status, 400, "{bad}");
        assert_schema("Error", &body);
    }
    // The invalid batch published nothing: the next frame is a fresh marker.
    http(
        srv.addr,
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(&json!({"topic": "room:api", "event": "marker"})),
    )
    .await;
    assert_frame!(c, r#"[null,null,"room:api","marker",{}]"#);
}

#[tokio::test]
async fn api_broadcasts_land_in_the_topic_s_history() {
    // room:* keeps 100 messages by default.
    let srv = TestServer::start(with_key);
    for n in 0..3 {
        let (status, _) = http(
            srv.addr,
            "POST",
            "/api/v1/broadcast",
            Some(KEY),
            Some(&json!({"topic": "room:api-h", "event": "srv_push", "payload": {"n": n}})),
        )
        .await;
        assert_eq!(status, 202);
    }
    let mut c = srv.v2("").await;
    c.send(json!(["1", "1", "room:api-h", "phx_join", {"history": {"last": 2}}]))
        .await;
    let reply = c
        .recv_until("join reply", |v| v[1] == "1" && v[3] == "phx_reply")
        .await;
    assert_eq!(
        reply[4]["response"]["history"]["recovered"], true,
        "{reply}"
    );
    for n in 1..3 {
        let got = c
            .recv_until("replayed srv_push", |v| v[3] == "srv_push")
            .await;
        assert_eq!(got[4], json!({"n": n}), "the last 2, in order");
        assert!(got[1].is_string(), "with their positions: {got}");
    }
}

#[tokio::test]
async fn presence_disconnect_and_info() {
    let srv = TestServer::start(with_key);
    let mut alice = srv.v2("user_id=alice").await;
    alice.join("1", "room:lobby").await;
    alice
        .recv_until("own join", |v| v[3] == "presence_diff")
        .await;
    let (status, body) = http(
        srv.addr,
        "GET",
        "/api/v1/presence/room%3Alobby",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_schema("PresenceState", &body);
    assert_eq!(body["alice"]["metas"].as_array().map(Vec::len), Some(1));
    let (_, empty) = http(
        srv.addr,
        "GET",
        "/api/v1/presence/room:nobody",
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(empty, json!({}));

    let (status, body) = http(srv.addr, "GET", "/api/v1/info", Some(KEY), None).await;
    assert_eq!(status, 200);
    assert_schema("Info", &body);
    assert_eq!(body["mode"], "single");

    let (status, body) = http(
        srv.addr,
        "POST",
        "/api/v1/disconnect",
        Some(KEY),
        Some(&json!({"socket_id": "users_socket:alice"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_schema("Ok", &body);
    assert_eq!(alice.expect_close().await.0, 1001);
    let (status, _) = http(
        srv.addr,
        "POST",
        "/api/v1/disconnect",
        Some(KEY),
        Some(&json!({"id": 1})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn presence_lists_come_in_pages_and_counts_cluster_wide() {
    let srv = TestServer::start(with_key);
    let names = ["dave", "alice", "erin", "carol", "bob"];
    let mut members = Vec::new();
    for name in names {
        let mut c = srv.v2(&format!("user_id={name}")).await;
        c.join("1", "room:pages").await;
        members.push(c);
    }
    // Bob twice: one user, two connections.
    let mut bob2 = srv.v2("user_id=bob").await;
    bob2.join("1", "room:pages").await;
    let get = |path: String| async move { http(srv.addr, "GET", &path, Some(KEY), None).await };
    crate::support::wait_until("six presences", Duration::from_secs(5), async || {
        get("/api/v1/presence/room:pages/count".into()).await.1
            == json!({"users": 5, "connections": 6})
    })
    .await;
    let (status, count) = get("/api/v1/presence/room:pages/count".into()).await;
    assert_eq!(status, 200);
    assert_schema("PresenceCount", &count);
    // Pages of two, in key order, until next_cursor is null.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".into(),
        };
        let (status, page) = get(format!("/api/v1/presence/room:pages?{query}")).await;
        assert_eq!(status, 200, "{page}");
        assert_schema("PresencePage", &page);
        let keys: Vec<String> = page["presences"]
            .as_object()
            .expect("presences")
            .keys()
            .cloned()
            .collect();
        assert!(keys.len() <= 2, "{page}");
        seen.extend(keys);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["alice", "bob", "carol", "dave", "erin"]);
    let (_, bob) = get("/api/v1/presence/room:pages?limit=1&cursor=alice".into()).await;
    assert_eq!(
        bob["presences"]["bob"]["metas"].as_array().map(Vec::len),
        Some(2)
    );
    for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let (status, body) = get(format!("/api/v1/presence/room:pages?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    // Without limit and cursor: the whole presence_state, as before.
    let (_, all) = get("/api/v1/presence/room:pages".into()).await;
    assert_schema("PresenceState", &all);
    assert_eq!(all.as_object().map(|m| m.len()), Some(5));
    drop((members, bob2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_acts_cluster_wide() {
    let redis = RedisServer::start();
    let [n1, n2] = TestServer::cluster(&redis, with_key).await;
    let mut bob = n2.v2("user_id=bob").await;
    bob.join("1", "room:c").await;
    bob.recv_until("own join", |v| v[3] == "presence_diff")
        .await;
    // Broadcast through node 1 reaches node 2's client.
    http(
        n1.addr,
        "POST",
        "/api/v1/broadcast",
        Some(KEY),
        Some(&json!({"topic": "room:c", "event": "hello"})),
    )
    .await;
    assert_eq!(
        bob.recv_until("hello", |v| v[3] == "hello").await[4],
        json!({})
    );
    // Presence through node 1 sees node 2's user.
    let (_, state) = http(n1.addr, "GET", "/api/v1/presence/room:c", Some(KEY), None).await;
    assert!(state.get("bob").is_some(), "{state}");
    // Info lists both nodes.
    let (_, info) = http(n1.addr, "GET", "/api/v1/info", Some(KEY), None).await;
    assert_schema("Info", &info);
    assert_eq!(info["mode"], "cluster");
    assert_eq!(
        info["cluster"]["nodes"].as_array().map(Vec::len),
        Some(2),
        "{info}"
    );
    // Disconnect through node 1 closes the socket on node 2.
    http(
        n1.addr,
        "POST",
        "/api/v1/disconnect",
        Some(KEY),
        Some(&json!({"socket_id": "users_socket:bob"})),
    )
    .await;
    assert_eq!(bob.expect_close().await.0, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_publishes_straight_into_redis_with_the_example_script() {
    let redis = RedisServer::start();
    let node = TestServer::start_node(&redis.url(), |_| {}).await;
    let mut c = node.v2("").await;
    c.join("1", "room:from redis*").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-publish.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .args(["room:from redis*", "srv_push", r#"{"from":"backend"}"#])
        .env("REDIS_URL", redis.url())
        .output()
        .await
        .expect("runs the example");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        c.recv_until("srv_push", |v| v[3] == "srv_push"),
    )
    .await
    .expect("in time");
    assert_eq!(
        got,
        json!([null, null, "room:from redis*", "srv_push", {"from": "backend"}])
    );
}
