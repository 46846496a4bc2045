//! Gateway nodes in a Phoenix app's cluster through Phoenix.PubSub.Redis: the frames a real
//! Phoenix node published reach the gateway's sockets on every node, and the gateway's
//! broadcasts reach the Phoenix channel as a Phoenix node would write them, once.

use std::time::Duration;

use futures_util::StreamExt;
use phx_gateway::config::Settings;
use phx_gateway::etf;
use phx_gateway::protocol::Payload;
use phx_gateway::pubsub::phoenix_frame::{self, Mode};
use serde_json::{json, Value};

use crate::support::client::Received;
use crate::support::http::http;
use crate::support::redis_server::RedisServer;
use crate::support::redis_topology::RedisSentinels;
use crate::support::{process_metric, wait_until, without_history, Client, TestServer};

const PUBSUB: &str = "Ref.PubSub";
const CHANNEL: &str = "phx:Elixir.Ref.PubSub.Adapter";
const API_KEY: &str = "interop-api-key-0123456789";

/// The recorded frames, by file order (1-based in the fixture's notes, 0-based here).
fn recorded() -> Vec<Vec<u8>> {
    let text = include_str!("../fixtures/phoenix-pubsub-redis-frames.json");
    let doc: Value = serde_json::from_str(text).expect("fixture is JSON");
    doc["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            let hex = f["hex"].as_str().expect("hex");
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

/// Two gateway nodes joined to `Ref.PubSub`, named gw-node-1 and gw-node-2.
async fn nodes(redis: &RedisServer) -> [TestServer; 2] {
    nodes_with(redis, without_history).await
}

/// [`nodes`] with the routes changed by `tweak`.
async fn nodes_with(redis: &RedisServer, tweak: fn(&mut Settings)) -> [TestServer; 2] {
    let mut out = Vec::new();
    for name in ["gw-node-1", "gw-node-2"] {
        out.push(
            TestServer::start_node(&redis.url(), |s| {
                s.routes = phx_gateway::config::default_routes();
                let mut fan = s
                    .routes
                    .iter()
                    .find(|r| r.topic == "room:*")
                    .expect("the default room route")
                    .clone();
                fan.topic = "fan:*".into();
                s.routes.push(fan);
                tweak(s);
                s.redis.phoenix_pubsub = Some(PUBSUB.into());
                s.redis.node_name = name.into();
                s.api.key = Some(API_KEY.into());
            })
            .await,
        );
    }
    match out.try_into() {
        Ok(n) => n,
        Err(_) => unreachable!("two nodes"),
    }
}

fn publish(redis: &RedisServer, frame: &[u8]) {
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(frame)
        .query(&mut conn)
        .expect("PUBLISH");
}

fn stats(node: &TestServer) -> &phx_gateway::pubsub::PhoenixStats {
    node.gateway
        .cluster
        .as_ref()
        .and_then(|c| c.phoenix_stats.as_deref())
        .expect("the bridge runs")
}

/// Waits until both nodes listen to the Phoenix channel on `redis`.
async fn listening(redis: &RedisServer) {
    wait_until(
        "both gateway nodes to subscribe the phoenix channel",
        Duration::from_secs(10),
        async || {
            let reply: Vec<redis::Value> = redis.cmd(&["PUBSUB", "NUMSUB", CHANNEL]);
            matches!(reply.get(1), Some(redis::Value::Int(2)))
        },
    )
    .await;
}

async fn next_binary(c: &mut Client) -> Vec<u8> {
    loop {
        match c.recv().await {
            Received::Binary(b) => return b,
            Received::Text(_) => continue,
            Received::Closed(why) => panic!("closed while waiting for a binary frame: {why:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_phoenix_frames_reach_sockets_on_every_gateway_node() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis).await;
    listening(&redis).await;
    let frames = recorded();
    let mut a = n1.v2("").await;
    let mut b = n2.v2("").await;
    let mut b1 = n2.v1("").await;
    let mut fan = n2.v2("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    b1.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    b1.recv_until("v1 join", |v| v["event"] == "phx_reply")
        .await;
    fan.join("1", "fan:x").await;

    let before: Vec<(String, f64)> = [
        "delivered",
        "not_broadcast",
        "malformed",
        "other_node",
        "no_subscribers",
    ]
    .iter()
    .map(|r| {
        let series = format!("phx_gateway_phoenix_frames_total{{result=\"{r}\"}}");
        let now = process_metric(&series);
        (series, now)
    })
    .collect();
    // Tracker traffic first: ignored and counted, never delivered.
    for i in [0, 4, 7] {
        publish(&redis, &frames[i]);
    }
    // Endpoint.broadcast with every JSON type.
    publish(&redis, &frames[1]);
    let want = json!({"body":"hello","n":1,"f":1.5,"ok":true,"none":null,"list":[1,"two",{"three":3}],
        "nested":{"a":{"b":"c"}},"unicode":"héllo ✓","big":12345678901234567890u64,
        "neg":-42,"empty_map":{},"empty_list":[]});
    for c in [&mut a, &mut b] {
        let got = c.recv_until("new_msg", |v| v[3] == "new_msg").await;
        assert_eq!(got, json!([null, null, "room:lobby", "new_msg", want]));
    }
    let got = b1
        .recv_until("new_msg (V1)", |v| v["event"] == "new_msg")
        .await;
    assert_eq!(got["payload"], want);
    // A 70,000-byte string.
    publish(&redis, &frames[3]);
    let got = fan.recv_until("srv", |v| v[3] == "srv").await;
    assert_eq!(got[4]["long"].as_str().map(str::len), Some(70_000));
    // The compressed frame, then {:binary, _} as a binary frame.
    publish(&redis, &frames[8]);
    publish(&redis, &frames[9]);
    for c in [&mut a, &mut b] {
        let got = c
            .recv_until("compressed new_msg", |v| v[3] == "new_msg")
            .await;
        assert_eq!(got[4], json!({"body": "from client", "user_id": "alice"}));
        let bin = next_binary(c).await;
        assert!(
            bin.ends_with(&[0, 1, 2, 253, 254, 255]) && bin.windows(7).any(|w| w == b"bin_evt"),
            "a V2 binary broadcast frame: {bin:?}"
        );
    }
    // A direct broadcast to gw-node-1: only that node delivers. The marker that follows
    // (broadcast_from! in a Phoenix channel: plain for everyone else) reaches both.
    publish(&redis, &frames[10]);
    publish(&redis, &frames[6]);
    let got = a
        .recv_until("direct", |v| v[3] == "new_msg" || v[3] == "shout")
        .await;
    assert_eq!(
        got[3], "new_msg",
        "gw-node-1 delivers the direct broadcast first"
    );
    a.recv_until("shout", |v| v[3] == "shout").await;
    let got = b
        .recv_until("shout", |v| v[3] == "new_msg" || v[3] == "shout")
        .await;
    assert_eq!(
        got[3], "shout",
        "gw-node-2 never gets a broadcast addressed to gw-node-1"
    );

    // Broken bytes on the channel: counted, the reader goes on.
    publish(&redis, b"not a term");
    publish(&redis, &frames[5][..40]);
    publish(&redis, &frames[6]);
    a.recv_until("shout after garbage", |v| v[3] == "shout")
        .await;
    let s1 = stats(&n1);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(s1.received.load(Relaxed), 12, "{s1:?}");
    assert_eq!(
        s1.delivered.load(Relaxed),
        6,
        "frames 2, 9, 10, 11 and 7 twice (4 is for fan:x, which gw-node-1 has no subscriber of): {s1:?}"
    );
    for (series, before) in before {
        assert!(process_metric(&series) > before, "{series} counted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phoenix_disconnect_closes_the_gateway_sockets_with_that_id() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis).await;
    listening(&redis).await;
    let mut alice1 = n1.v2("user_id=alice").await;
    let mut alice2 = n2.v1("user_id=alice").await;
    let mut bob = n2.v2("user_id=bob").await;
    bob.join("1", "room:lobby").await;
    // The id subscription is made as the socket connects; a join proves the socket is up.
    alice1.join("1", "room:lobby").await;
    alice2
        .send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    alice2
        .recv_until("v1 join", |v| v["event"] == "phx_reply")
        .await;
    publish(&redis, &recorded()[2]);
    alice1.expect_close().await;
    alice2.expect_close().await;
    bob.send(json!([null, "h", "phoenix", "heartbeat", {}]))
        .await;
    bob.recv_until("bob is still connected", |v| v[1] == "h")
        .await;
}

/// Reads frames from the Phoenix channel as a Phoenix node would.
struct PhoenixListener {
    stream: redis::aio::PubSubStream,
    /// Kept: the subscription lives as long as its sink.
    _sink: redis::aio::PubSubSink,
}

impl PhoenixListener {
    async fn start(redis: &RedisServer) -> Self {
        let client = redis::Client::open(redis.url()).expect("redis url");
        let (mut sink, stream) = client.get_async_pubsub().await.expect("pubsub").split();
        sink.subscribe(CHANNEL).await.expect("SUBSCRIBE");
        Self {
            stream,
            _sink: sink,
        }
    }

    async fn next(&mut self) -> Option<Vec<u8>> {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next frame, decoded: mode, node, topic, event, payload.
    async fn broadcast(&mut self) -> (Mode, String, String, String, Payload) {
        let bytes = self.next().await.expect("a frame on the phoenix channel");
        let plain = etf::plain(&bytes, &phoenix_frame::LIMITS).expect("plain");
        let frame = phoenix_frame::read(&plain).expect("a frame");
        let b = frame.broadcast().expect("a channel broadcast");
        // The dispatcher that makes Phoenix run handle_out: the frame ends with it.
        let mut tail = vec![100, 0, 29];
        tail.extend(phoenix_frame::CHANNEL_DISPATCHER.as_bytes());
        assert!(
            bytes.ends_with(&tail),
            "dispatched by Phoenix.Channel.Server"
        );
        (
            frame.mode,
            frame.node.into(),
            frame.topic.into(),
            b.event,
            b.payload,
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_broadcasts_reach_the_phoenix_channel_once_as_phoenix_writes_them() {
    let redis = RedisServer::start();
    let [n1, n2] = nodes(&redis).await;
    listening(&redis).await;
    let mut phoenix = PhoenixListener::start(&redis).await;
    let mut a = n1.v2("user_id=alice").await;
    let mut b = n2.v2("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;

    // A client event routed to broadcast (presence diffs of alice's join never cross).
    a.send(json!(["1", "2", "room:lobby", "new_msg", {"body": "hi", "n": 1}]))
        .await;
    let (mode, node, topic, event, payload) = phoenix.broadcast().await;
    assert_eq!(
        (mode, node.as_str(), topic.as_str(), event.as_str()),
        (Mode::Except, "phx-gateway", "room:lobby", "new_msg")
    );
    assert_eq!(payload, Payload::Json(json!({"body": "hi", "n": 1})));
    // The other gateway node gets it once (its envelope), not a second time from the frame.
    let got = b.recv_until("new_msg", |v| v[3] == "new_msg").await;
    assert_eq!(got[4]["n"], 1);

    // The server API, then a binary push broadcast by a client.
    let (status, _) = http(
        n2.addr,
        "POST",
        "/api/v1/broadcast",
        Some(API_KEY),
        Some(&json!({"topic": "room:lobby", "event": "srv", "payload": {"from": "api"}})),
    )
    .await;
    assert!((200..300).contains(&status), "api broadcast: {status}");
    let (_, node, _, event, payload) = phoenix.broadcast().await;
    assert_eq!((node.as_str(), event.as_str()), ("phx-gateway", "srv"));
    assert_eq!(payload, Payload::Json(json!({"from": "api"})));

    // broadcast_from on node 2 (the sender skipped there) is a plain broadcast for Phoenix,
    // whose nodes have no sender to skip.
    b.send(json!(["1", "3", "room:lobby", "typing", {"who": "b"}]))
        .await;
    let (mode, _, _, event, payload) = phoenix.broadcast().await;
    assert_eq!((mode, event.as_str()), (Mode::Except, "typing"));
    assert_eq!(payload, Payload::Json(json!({"who": "b"})));
    a.recv_until("typing on node 1", |v| v[3] == "typing").await;
    // Node 2's client got new_msg once: srv is next.
    let next = b
        .recv_until("srv or new_msg", |v| v[3] == "srv" || v[3] == "new_msg")
        .await;
    assert_eq!(next[3], "srv", "new_msg was delivered once");
    // Nothing else crossed: no presence traffic, no internal topics.
    assert!(phoenix
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats(&n1).published.load(Relaxed), 1);
    assert_eq!(stats(&n2).published.load(Relaxed), 2);
    assert!(
        stats(&n1).ignored.load(Relaxed) >= 2,
        "its own frames are skipped"
    );
}

impl PhoenixListener {
    async fn next_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        tokio::time::timeout(wait, self.stream.next())
            .await
            .ok()
            .flatten()
            .map(|m| m.get_payload_bytes().to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_backend_publishes_through_redis_reaches_phoenix_once_even_when_the_forwarder_dies()
{
    let redis = RedisServer::start();
    let nodes = nodes(&redis).await;
    listening(&redis).await;
    let mut phoenix = PhoenixListener::start(&redis).await;
    let lease = || redis.try_cmd::<String>(&["GET", "phx:phoenix:forwarder"]);
    let forwarding = async || {
        let numpat: i64 = redis.cmd(&["PUBSUB", "NUMPAT"]);
        numpat == 1 && lease().is_some()
    };
    wait_until(
        "one node to take the forwarder lease",
        Duration::from_secs(5),
        forwarding,
    )
    .await;
    let emit = |event: &str| {
        let envelope =
            json!({"v": 1, "topic": "room:emit", "event": event, "payload": {"from": "backend"}});
        let _: i64 = redis.cmd(&["PUBLISH", "phx:b:{room:emit}", &envelope.to_string()]);
    };
    // No gateway node has a subscriber of room:emit: the forwarder still sends it on.
    emit("srv_push");
    let (mode, node, topic, event, payload) = phoenix.broadcast().await;
    assert_eq!(
        (mode, node.as_str(), topic.as_str(), event.as_str()),
        (Mode::Except, "phx-gateway", "room:emit", "srv_push")
    );
    assert_eq!(payload, Payload::Json(json!({"from": "backend"})));
    assert!(
        phoenix
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "forwarded once, by one node"
    );

    // The forwarder crashes: the other node takes the lease when it expires.
    let holder = lease().expect("a lease holder");
    let (dead, alive): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| {
        n.gateway
            .cluster
            .as_ref()
            .is_some_and(|c| *c.redis.node == holder)
    });
    dead[0].gateway.abort();
    let survivor = alive[0]
        .gateway
        .cluster
        .as_ref()
        .expect("cluster")
        .redis
        .node
        .to_string();
    wait_until(
        "the surviving node to take the forwarder lease",
        Duration::from_secs(5),
        async || lease().as_deref() == Some(survivor.as_str()) && forwarding().await,
    )
    .await;
    emit("after_failover");
    let (_, _, _, event, _) = phoenix.broadcast().await;
    assert_eq!(event, "after_failover");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats(alive[0]).forwarded.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_history_publishes_each_broadcast_once_on_a_fresh_redis() {
    // A fresh Redis has no append script: the first pipeline's append fails with NOSCRIPT and
    // is sent again; the PUBLISHes beside it (the Phoenix frame) went out and must not.
    let redis = RedisServer::start();
    let [n1, n2] = nodes_with(&redis, |_| {}).await;
    listening(&redis).await;
    let mut phoenix = PhoenixListener::start(&redis).await;
    let mut a = n1.v2("").await;
    let mut b = n2.v2("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    for n in 1..=2 {
        a.send(json!(["1", format!("m{n}"), "room:lobby", "new_msg", {"n": n}]))
            .await;
        let (_, _, _, event, payload) = phoenix.broadcast().await;
        assert_eq!(
            (event.as_str(), payload),
            ("new_msg", Payload::Json(json!({"n": n})))
        );
        let got = b
            .recv_until("new_msg on node 2", |v| v[3] == "new_msg")
            .await;
        assert_eq!(got[4]["n"], n, "once each, in order");
    }
    assert!(
        phoenix
            .next_within(Duration::from_millis(300))
            .await
            .is_none(),
        "one frame per broadcast"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_listens_again_after_redis_restarts() {
    let mut redis = RedisServer::start();
    let [n1, _n2] = nodes(&redis).await;
    listening(&redis).await;
    let frames = recorded();
    let mut a = n1.v2("").await;
    a.join("1", "room:lobby").await;
    publish(&redis, &frames[6]);
    a.recv_until("shout before the restart", |v| v[3] == "shout")
        .await;
    redis.restart();
    listening(&redis).await;
    publish(&redis, &frames[6]);
    let got = a
        .recv_until("shout after the restart", |v| v[3] == "shout")
        .await;
    assert_eq!(got[4], json!({"body": "to others"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_bridge_follows_a_failover_both_ways() {
    let mut sentinels = RedisSentinels::start();
    let urls = sentinels.urls();
    let mut nodes = Vec::new();
    for name in ["gw-node-1", "gw-node-2"] {
        nodes.push(
            TestServer::start_node("redis://unused", |s| {
                without_history(s);
                s.redis.url = None;
                s.redis.sentinel_urls = urls.split(',').map(|u| u.into()).collect();
                s.redis.sentinel_master = Some(RedisSentinels::MASTER.into());
                s.redis.command_timeout_ms = 1000;
                s.redis.down_ms = 1500;
                s.redis.phoenix_pubsub = Some(PUBSUB.into());
                s.redis.node_name = name.into();
            })
            .await,
        );
    }
    listening(&sentinels.primary).await;
    let frames = recorded();
    let mut a = nodes[0].v2("").await;
    let mut b = nodes[1].v2("").await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    publish(&sentinels.primary, &frames[6]);
    a.recv_until("shout before the failover", |v| v[3] == "shout")
        .await;

    sentinels.primary.kill();
    wait_until(
        "the Sentinels to promote the replica",
        Duration::from_secs(20),
        async || sentinels.primary_port() == Some(sentinels.replica.port),
    )
    .await;
    let primary = &sentinels.replica;
    listening(primary).await;
    // Phoenix -> gateway, on the new primary.
    publish(primary, &frames[6]);
    for c in [&mut a, &mut b] {
        let got = c
            .recv_until("shout after the failover", |v| v[3] == "shout")
            .await;
        assert_eq!(got[4], json!({"body": "to others"}));
    }
    // Gateway -> Phoenix, on the new primary.
    let mut phoenix = PhoenixListener::start(primary).await;
    a.send(json!(["1", "2", "room:lobby", "new_msg", {"after": "failover"}]))
        .await;
    let (_, node, _, event, payload) = phoenix.broadcast().await;
    assert_eq!((node.as_str(), event.as_str()), ("phx-gateway", "new_msg"));
    assert_eq!(payload, Payload::Json(json!({"after": "failover"})));
}
