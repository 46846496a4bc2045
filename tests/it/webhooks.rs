//! Backend webhooks: join authorization and event handling against a real HTTP backend.

use std::time::Duration;

use phx_gateway::config::{RouteSettings, Settings};
use serde_json::json;

use crate::support::backend::{webhook_route, Backend};
use crate::support::{free_port, TestServer};

fn route(topic: &str, backend: u16) -> RouteSettings {
    let mut r = webhook_route(topic, backend);
    r.presence_meta = vec!["online_at".into()];
    r
}

fn server(backend: &Backend) -> TestServer {
    let dead = free_port();
    TestServer::start(move |s: &mut Settings| {
        s.webhook.timeout_ms = 500;
        s.routes = vec![route("game:*", backend.port), route("down:*", dead)];
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_allows_or_refuses_joins() {
    let backend = Backend::start();
    let srv = server(&backend);
    let mut c = srv.v2("user_id=ann").await;
    c.send_text(r#"["1","1","game:ok","phx_join",{"level":3}]"#)
        .await;
    let reply = c.recv_until("join reply", |v| v[1] == "1").await;
    assert_eq!(
        reply[4],
        json!({"response": {"welcome": "ann", "params": {"level": 3}}, "status": "ok"})
    );
    // The presence carries the backend's meta.
    let diff = c
        .recv_until("own presence", |v| v[3] == "presence_diff")
        .await;
    assert_eq!(diff[4]["joins"]["ann"]["metas"][0]["team"], "red");

    c.send_text(r#"["2","2","game:no","phx_join",{}]"#).await;
    assert_eq!(
        c.recv_until("refusal", |v| v[1] == "2").await[4],
        json!({"response": {"reason": "banned"}, "status": "error"})
    );
    // A backend error or a timeout is a clean refusal, quickly.
    for (r, topic) in [("3", "game:broken"), ("4", "game:slow"), ("5", "down:1")] {
        let started = std::time::Instant::now();
        c.send(json!([r, r, topic, "phx_join", {}])).await;
        let reply = c.recv_until("refusal", |v| v[1] == r).await;
        assert_eq!(
            reply[4],
            json!({"response": {"reason": "backend unavailable"}, "status": "error"}),
            "{topic}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{topic} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_handles_events_replies_and_broadcasts() {
    let backend = Backend::start();
    let srv = server(&backend);
    let mut ann = srv.v2("user_id=ann").await;
    let mut bob = srv.v2("user_id=bob").await;
    ann.join("1", "game:ok").await;
    bob.join("1", "game:ok").await;
    ann.send_text(r#"["1","2","game:ok","score",{"points":3}]"#)
        .await;
    let reply = ann.recv_until("score reply", |v| v[1] == "2").await;
    assert_eq!(
        reply[4],
        json!({"response": {"accepted": {"points": 3}, "role": "captain"}, "status": "ok"})
    );
    let scored = bob
        .recv_until("scored broadcast", |v| v[3] == "scored")
        .await;
    assert_eq!(
        scored,
        json!([null, null, "game:ok", "scored", {"by": "ann", "points": 3}])
    );

    ann.send_text(r#"["1","3","game:ok","quiet",{}]"#).await;
    assert_eq!(
        ann.recv_until("quiet ack", |v| v[1] == "3").await[4],
        json!({"response": {}, "status": "ok"})
    );
    ann.send_text(r#"["1","4","game:ok","refuse",{}]"#).await;
    assert_eq!(
        ann.recv_until("refusal", |v| v[1] == "4").await[4],
        json!({"response": {"reason": "not your turn"}, "status": "error"})
    );
    // The backend failing gives an error reply, and the channel stays usable.
    ann.send_text(r#"["1","5","game:ok","unknown",{}]"#).await;
    assert_eq!(
        ann.recv_until("failure", |v| v[1] == "5").await[4],
        json!({"response": {"reason": "backend unavailable"}, "status": "error"})
    );
    ann.send_text(r#"["1","6","game:ok","ping",{"still":1}]"#)
        .await;
    assert_eq!(
        ann.recv_until("ping", |v| v[1] == "6").await[4]["response"],
        json!({"still": 1})
    );
}

#[test]
fn a_webhook_route_without_url_is_a_config_error() {
    let mut s = Settings::defaults();
    let mut r = route("x:*", 1);
    r.join_webhook = None;
    s.routes = vec![r];
    assert!(s.validated().is_err());
}
