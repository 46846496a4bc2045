//! Channels written in Rust: intercept/handle_out, stop, crash isolation, push, slow consumers.

use futures_util::FutureExt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use phx_gateway::channel::{Channel, Context, Outgoing, Reply, Router};
use phx_gateway::config::Settings;
use phx_gateway::protocol::Payload;
use phx_gateway::pubsub::Broadcast;
use phx_gateway::Gateway;
use serde_json::{json, Value};

use crate::support::client::ws_status;
use crate::support::{Received, TestServer};

#[derive(Default)]
struct TestChannel {
    name: String,
}

#[async_trait]
impl Channel for TestChannel {
    async fn join(&mut self, ctx: &mut Context, payload: Payload) -> Result<Value, Value> {
        if payload.as_json().is_some_and(|p| p["crash_join"] == true) {
            panic!("join blew up");
        }
        self.name = ctx
            .assigns
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("anon")
            .to_owned();
        Ok(json!({"hello": self.name}))
    }

    async fn after_join(&mut self, ctx: &mut Context) {
        ctx.push("welcome", &Payload::Json(json!({"to": self.name})));
    }

    async fn handle_in(&mut self, ctx: &mut Context, event: &str, payload: Payload) -> Reply {
        match event {
            "crash" => panic!("handler blew up"),
            "stop" => Reply::Stop { reply: None },
            "stop_with_reply" => Reply::Stop {
                reply: Some(("ok".into(), Payload::Json(json!({"bye": true})))),
            },
            "shout" => {
                ctx.broadcast("user_joined", payload);
                Reply::NoReply
            }
            "custom_status" => Reply::Reply {
                status: "accepted".into(),
                response: payload,
            },
            _ => Reply::unhandled(),
        }
    }

    fn intercepts(&self) -> Vec<String> {
        vec!["user_joined".into()]
    }

    async fn handle_out(
        &mut self,
        _ctx: &mut Context,
        _event: &str,
        payload: &Payload,
    ) -> Outgoing {
        let who = payload
            .as_json()
            .and_then(|p| p["who"].as_str())
            .unwrap_or_default();
        if who == self.name {
            Outgoing::Skip
        } else {
            Outgoing::Push(Payload::Json(json!({"who": who, "seen_by": self.name})))
        }
    }
}

fn server(tweak: impl FnOnce(&mut Settings)) -> TestServer {
    let mut settings = Settings::defaults();
    settings.http.workers = 1;
    tweak(&mut settings);
    let router = Router::new()
        .route("test:*", |_: &str| -> Box<dyn Channel> {
            Box::new(TestChannel::default())
        })
        .expect("route");
    let gateway = Gateway::builder(settings)
        .router(router)
        .start()
        .now_or_never()
        .expect("a single-node gateway starts without waiting")
        .expect("gateway");
    TestServer::start_gateway(gateway)
}

#[tokio::test]
async fn push_after_join_carries_join_ref_and_null_ref() {
    let srv = server(|_| {});
    let mut a = srv.v2("name=ann").await;
    a.send_text(r#"["4","4","test:1","phx_join",{}]"#).await;
    assert_frame!(
        a,
        r#"["4","4","test:1","phx_reply",{"response":{"hello":"ann"},"status":"ok"}]"#
    );
    assert_frame!(a, r#"["4",null,"test:1","welcome",{"to":"ann"}]"#);
    a.send_text(r#"["4","5","test:1","custom_status",{"x":1}]"#)
        .await;
    assert_frame!(
        a,
        r#"["4","5","test:1","phx_reply",{"response":{"x":1},"status":"accepted"}]"#
    );
}

#[tokio::test]
async fn intercepted_broadcasts_are_rewritten_or_skipped_per_subscriber() {
    let srv = server(|_| {});
    let mut ann = srv.v2("name=ann").await;
    let mut bob = srv.v2("name=bob").await;
    let mut v1 = srv.v1("name=cy").await;
    for c in [&mut ann, &mut bob] {
        c.join("1", "test:room").await;
        c.recv_until("welcome", |v| v[3] == "welcome").await;
    }
    v1.send(json!({"topic": "test:room", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    v1.recv_until("welcome", |v| v["event"] == "welcome").await;

    ann.send_text(r#"["1","2","test:room","shout",{"who":"ann"}]"#)
        .await;
    // Each subscriber gets its own copy as a channel push (join_ref set, ref null).
    assert_frame!(
        bob,
        r#"["1",null,"test:room","user_joined",{"seen_by":"bob","who":"ann"}]"#
    );
    assert_frame!(
        v1,
        r#"{"event":"user_joined","payload":{"seen_by":"cy","who":"ann"},"ref":null,"topic":"test:room"}"#
    );
    // ann filtered it out for herself.
    ann.send_text(r#"["1","3","test:room","custom_status",{}]"#)
        .await;
    assert_eq!(
        ann.recv_json().await[1],
        "3",
        "ann must not receive her own user_joined"
    );
}

#[tokio::test]
async fn stop_closes_the_channel_with_phx_close() {
    let srv = server(|_| {});
    let mut a = srv.v2("").await;
    a.join("13", "test:1").await;
    a.recv_until("welcome", |v| v[3] == "welcome").await;
    a.send_text(r#"["13","14","test:1","stop",{}]"#).await;
    assert_frame!(a, r#"["13","13","test:1","phx_close",{}]"#);
    a.join("15", "test:1").await;
    a.recv_until("welcome", |v| v[3] == "welcome").await;
    a.send_text(r#"["15","16","test:1","stop_with_reply",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["15","16","test:1","phx_reply",{"response":{"bye":true},"status":"ok"}]"#
    );
    assert_frame!(a, r#"["15","15","test:1","phx_close",{}]"#);
}

#[tokio::test]
async fn a_crashing_channel_errors_alone_and_the_socket_lives_on() {
    let srv = server(|_| {});
    let mut a = srv.v2("").await;
    a.join("1", "test:crashy").await;
    a.recv_until("welcome", |v| v[3] == "welcome").await;
    a.join("2", "test:fine").await;
    a.recv_until("welcome", |v| v[3] == "welcome").await;

    a.send_text(r#"["1","3","test:crashy","crash",{}]"#).await;
    assert_frame!(
        a,
        r#"["1","1","test:crashy","phx_error",{"reason":"channel_crash"}]"#
    );
    a.send_text(r#"["1","4","test:crashy","custom_status",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"[null,"4","test:crashy","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
    );
    a.send_text(r#"["2","5","test:fine","custom_status",{}]"#)
        .await;
    assert_frame!(
        a,
        r#"["2","5","test:fine","phx_reply",{"response":{},"status":"accepted"}]"#
    );
    // The crashed topic can be joined again.
    assert_eq!(a.join("6", "test:crashy").await[4]["status"], "ok");
    a.recv_until("welcome", |v| v[3] == "welcome").await;
    // A join that panics is refused with "join crashed".
    a.send_text(r#"["7","7","test:other","phx_join",{"crash_join":true}]"#)
        .await;
    assert_frame!(
        a,
        r#"["7","7","test:other","phx_reply",{"response":{"reason":"join crashed"},"status":"error"}]"#
    );
}

#[tokio::test]
async fn a_slow_consumer_is_closed_and_others_keep_receiving() {
    let srv = TestServer::start(|s| s.socket.outbound_queue = 16);
    let mut slow = srv.v2("").await;
    let mut fast = srv.v2("").await;
    slow.join("1", "room:flood").await;
    fast.join("1", "room:flood").await;
    fast.recv_until("presence_state", |v| v[3] == "presence_state")
        .await;

    // The slow client stops reading; the gateway keeps broadcasting large messages without
    // ever blocking on it, until its queue overflows.
    let body = "x".repeat(64 * 1024);
    let mut fast_got = 0usize;
    for i in 0..2000 {
        let msg = Broadcast::new(
            "room:flood",
            "big",
            Payload::Json(json!({"i": i, "body": body})),
        );
        srv.gateway.pubsub.broadcast(Arc::new(msg), None);
        // The fast client reads everything as it comes.
        while let Some(r) = fast
            .recv_within(Duration::from_millis(if i % 50 == 0 { 20 } else { 0 }))
            .await
        {
            match r {
                Received::Text(t) if t.contains("\"big\"") => fast_got += 1,
                Received::Text(_) => {}
                other => panic!("fast client: {other:?}"),
            }
        }
        if srv.gateway.pubsub.local_subscribers("room:flood") == 1 {
            break;
        }
    }
    assert_eq!(
        srv.gateway.pubsub.local_subscribers("room:flood"),
        1,
        "the slow consumer must be dropped"
    );
    let (code, reason) = slow.expect_close().await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    // The fast client is still served.
    fast.send_text(r#"[null,"h","phoenix","heartbeat",{}]"#)
        .await;
    let reply = fast.recv_until("heartbeat reply", |v| v[1] == "h").await;
    assert_eq!(reply[4]["status"], "ok");
    assert!(fast_got > 0);
}

struct RefuseAll;

#[async_trait]
impl phx_gateway::socket::Connector for RefuseAll {
    async fn connect(
        &self,
        info: &phx_gateway::socket::ConnectInfo,
    ) -> Result<phx_gateway::socket::Connected, phx_gateway::socket::Refused> {
        if info.params.get("token").and_then(Value::as_str) == Some("good") {
            Ok(phx_gateway::socket::Connected {
                id: None,
                assigns: info.params.clone(),
            })
        } else {
            Err(phx_gateway::socket::Refused("bad token".into()))
        }
    }
}

#[tokio::test]
async fn a_connector_can_refuse_sockets_with_403() {
    let mut settings = Settings::defaults();
    settings.http.workers = 1;
    let gateway = Gateway::builder(settings)
        .connector(Arc::new(RefuseAll))
        .start()
        .now_or_never()
        .expect("a single-node gateway starts without waiting")
        .expect("gateway");
    let srv = TestServer::start_gateway(gateway);
    assert_eq!(
        ws_status(&srv.ws_url("vsn=2.0.0&token=bad"), &[]).await,
        403
    );
    let mut ok = srv.v2("token=good").await;
    ok.send_text(r#"[null,"1","phoenix","heartbeat",{}]"#).await;
    assert_eq!(ok.recv_json().await[4]["status"], "ok");
}
