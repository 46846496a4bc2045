//! Faults under load, each with the guarantee it checks:
//!
//! - a stalled reader among 1,000 fast ones: the broadcast path never waits for it, and the
//!   fast subscribers' latency stays where it was without it;
//! - a webhook backend that hangs: callers get a timely error, nothing else waits, and the
//!   gateway recovers by itself when the backend does;
//! - a client behind a stalled network: it is dropped after the heartbeat timeout and its
//!   presence leaves, while the others on its topic are served throughout;
//! - Redis frozen (SIGSTOP) for 20 s while messages flow: local delivery loses nothing,
//!   cross-node delivery is at-most-once during the freeze and complete after it, presence
//!   converges, and no socket, channel task, presence, Redis key or memory is left behind;
//! - a node whose heartbeats timed out while Redis was frozen, and which comes back after
//!   another node wrote the topic's hash again: its presences are written back, although
//!   its late heartbeat made its key look alive.

use std::time::{Duration, Instant};

use phx_gateway::config::{RouteSettings, Settings};
use serde_json::json;

use crate::support::backend::Backend;
use crate::support::load::{spawn_load, LoadRun};
use crate::support::node_pair::{NodePair, FAST_HEARTBEATS};
use crate::support::presence_view::{counts, View};
use crate::support::process::NodeProcess;
use crate::support::redis_server::RedisServer;
use crate::support::{metric, wait_until, Client, TestServer, NO_HISTORY_CONFIG};

/// A `fan:*` route as in config/bench.toml: `new_msg` broadcast to all, no presence.
fn fan_route() -> RouteSettings {
    let mut r = phx_gateway::config::default_routes().remove(2);
    r.topic = "fan:*".into();
    r.presence_key = None;
    r.presence_meta = vec![];
    r.presence_update_event = None;
    r.broadcast = vec!["new_msg".into()];
    r.broadcast_from = vec![];
    r.history_size = 0;
    r
}

/// The figures of one `phx-load fanout` run (its `result:` line).
#[derive(Debug)]
struct Run {
    lost: u64,
    p99_ms: f64,
    stalled: String,
}

fn fanout(addr: std::net::SocketAddr, stalled: usize) -> Run {
    let run = LoadRun::wait(spawn_load(&format!(
        "fanout --addrs {addr} -n 1000 --rate 20 --duration 3 --sources 2 --threads 1 \
         --stalled {stalled} --stalled-prefill-kib 8192"
    )));
    assert!(run.success, "phx-load failed: {}", run.stdout);
    Run {
        lost: run.figure("lost") as u64,
        p99_ms: run.figure("p99_ms"),
        stalled: run.line("stalled subscribers: ").to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_reader_does_not_slow_down_a_thousand_fast_ones() {
    let srv = TestServer::start(|s| {
        s.routes.insert(0, fan_route());
        s.limits.messages_per_second = 0;
        // Big enough that the stalled reader stays connected, backed up, for the whole run
        // (its close at the bound is covered by the slow-consumer test).
        s.socket.outbound_queue = 4096;
        s.socket.outbound_queue_bytes = 64 << 20;
    });
    let addr = srv.addr;
    let run = |stalled| tokio::task::spawn_blocking(move || fanout(addr, stalled));
    // The first run warms up the server (allocator, registry); it is not compared.
    let warm = run(0).await.expect("warm-up");
    assert_eq!(warm.lost, 0, "{warm:?}");
    let base = run(0).await.expect("baseline");
    assert_eq!(base.lost, 0, "{base:?}");
    // Twice 2x, or 25 ms when the baseline p99 is a few milliseconds: scheduling noise on a
    // shared 2-core machine alone moves such small figures by more than 2x.
    let bound = (2.0 * base.p99_ms).max(base.p99_ms + 25.0);
    let mut stalled = run(1).await.expect("with a stalled reader");
    if stalled.p99_ms > bound {
        // One retry: a noisy neighbour must not fail the build, a systematic slowdown will.
        stalled = run(1).await.expect("with a stalled reader, again");
    }
    eprintln!("without a stalled reader: {base:?}; with one: {stalled:?}");
    assert_eq!(
        stalled.lost, 0,
        "fast subscribers lost messages: {stalled:?}"
    );
    assert!(
        stalled.p99_ms <= bound,
        "fast subscribers' p99 {} ms with a stalled reader, {} ms without",
        stalled.p99_ms,
        base.p99_ms
    );
    // Nothing accepted for the stalled reader was lost either: it gets all of it once it reads.
    assert_eq!(stalled.stalled, "not closed, sent 60 of 60 messages");
}

/// Sends an echo `ping` on the channel joined as `join_ref` and asserts the reply comes
/// within `within`.
async fn assert_served(c: &mut Client, join_ref: &str, topic: &str, r: &str, within: Duration) {
    let started = Instant::now();
    c.send(json!([join_ref, r, topic, "ping", {"r": r}])).await;
    c.recv_until("ping reply", |v| v[1] == r).await;
    assert!(
        started.elapsed() < within,
        "{topic} answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_webhook_backend_costs_its_callers_a_timeout_and_nothing_else() {
    let backend = Backend::start();
    backend.hang(true);
    let srv = TestServer::start(|s: &mut Settings| {
        s.webhook.timeout_ms = 300;
        s.webhook.max_concurrency = 4;
        s.routes.insert(0, backend.route("game:*"));
    });
    let mut bystander = srv.v2("user_id=by").await;
    bystander.join("1", "room:lobby").await;

    // Twelve joins against a backend that never answers: three times the concurrency limit.
    let mut joiners = Vec::new();
    for i in 0..12 {
        let mut c = srv.v2(&format!("user_id=j{i}")).await;
        c.send(json!(["1", "1", format!("game:h{i}"), "phx_join", {}]))
            .await;
        joiners.push(c);
    }
    let sent = Instant::now();
    // Meanwhile, everything that does not need the backend is served at once.
    for i in 0..5 {
        assert_served(
            &mut bystander,
            "1",
            "room:lobby",
            &format!("b{i}"),
            Duration::from_millis(300),
        )
        .await;
    }
    for c in &mut joiners {
        let reply = c.recv_until("join refusal", |v| v[1] == "1").await;
        assert_eq!(
            reply[4],
            json!({"response": {"reason": "backend unavailable"}, "status": "error"})
        );
    }
    // Each waited at most one timeout for a permit and one for the call.
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "refusals took {:?}",
        sent.elapsed()
    );

    // The backend recovers: so does the gateway, with nothing to reset.
    backend.hang(false);
    let mut player = srv.v2("user_id=p").await;
    player.join("1", "game:ok").await;

    // Events on a joined channel while the backend hangs again: an error reply per event,
    // and the socket itself (heartbeats, other channels) is never blocked by them.
    backend.hang(true);
    player.join("2", "room:side").await;
    let sent = Instant::now();
    for i in 0..3 {
        player
            .send(json!(["1", format!("e{i}"), "game:ok", "move", {"i": i}]))
            .await;
    }
    assert_served(
        &mut player,
        "2",
        "room:side",
        "side",
        Duration::from_millis(300),
    )
    .await;
    player
        .send(json!([null, "hb", "phoenix", "heartbeat", {}]))
        .await;
    player.recv_until("heartbeat reply", |v| v[1] == "hb").await;
    for i in 0..3 {
        let r = format!("e{i}");
        let reply = player.recv_until("event refusal", |v| v[1] == r).await;
        assert_eq!(
            reply[4]["response"],
            json!({"reason": "backend unavailable"})
        );
    }
    // One channel handles its events in order, so the three waited in turn.
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    backend.hang(false);
    player
        .send(json!(["1", "after", "game:ok", "move", {}]))
        .await;
    let reply = player.recv_until("event reply", |v| v[1] == "after").await;
    assert_eq!(reply[4]["response"], json!({"handled": "move"}));
    // Nothing is left behind by the refused joins or once the player goes.
    player.close().await;
    wait_until(
        "no subscriber left on game topics",
        Duration::from_secs(3),
        async || {
            (0..12).all(|i| srv.gateway.pubsub.local_subscribers(&format!("game:h{i}")) == 0)
                && srv.gateway.pubsub.local_subscribers("game:ok") == 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_stalled_network_is_dropped_and_its_presence_leaves() {
    let srv = TestServer::start(|s| s.socket.heartbeat_timeout_ms = 1000);
    let mut watcher = srv.v2("user_id=watcher").await;
    let mut stalled = srv.v2("user_id=stalled").await;
    watcher.join("1", "room:stall").await;
    stalled.join("1", "room:stall").await;
    let mut view = View::default();
    view.converge(
        &mut watcher,
        &counts(&[("watcher", 1), ("stalled", 1)]),
        Duration::from_secs(3),
    )
    .await;

    // From here the stalled client neither reads nor writes. The watcher keeps talking on the
    // same topic (which also keeps it alive) and is served throughout.
    let stalled_at = Instant::now();
    let mut seq = 0;
    while view.counts() != counts(&[("watcher", 1)]) {
        assert!(
            stalled_at.elapsed() < Duration::from_secs(4),
            "the stalled client's presence did not leave: {:?}",
            view.counts()
        );
        seq += 1;
        let sent = Instant::now();
        watcher
            .send(json!(["1", format!("m{seq}"), "room:stall", "new_msg", {"seq": seq}]))
            .await;
        loop {
            let v = watcher.recv_json().await;
            view.apply(&v);
            if v[3] == "new_msg" && v[4]["seq"] == seq {
                break;
            }
        }
        assert!(
            sent.elapsed() < Duration::from_millis(300),
            "broadcast {seq} took {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stalled_at.elapsed() >= Duration::from_millis(900),
        "dropped before its heartbeat timeout"
    );
    // When its network comes back, the client finds what was queued, then the close.
    let (code, reason) = stalled.expect_close().await;
    assert_eq!((code, reason.as_str()), (1002, "heartbeat timeout"));
    // Nothing of it is left: only the watcher is subscribed to the topic.
    wait_until(
        "the stalled socket's subscription gone",
        Duration::from_secs(3),
        async || srv.gateway.pubsub.local_subscribers("room:stall") == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_twenty_seconds_under_load_loses_only_cross_node_messages_of_the_freeze() {
    let redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
        ("PHX_GATEWAY__REDIS__COMMAND_TIMEOUT_MS", "500"),
        ("PHX_GATEWAY__REDIS__UNSUBSCRIBE_DELAY_MS", "100"),
    ];
    // Without history: on a history route local delivery waits for the append (docs/history.md).
    let n1 = NodeProcess::start_configured(&redis.url(), "f1", &env, NO_HISTORY_CONFIG);
    let n2 = NodeProcess::start_configured(&redis.url(), "f2", &env, NO_HISTORY_CONFIG);
    let baseline_keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
    let rss = async |n: &NodeProcess| {
        metric(
            &n.admin("/metrics").await.expect("metrics").1,
            "process_resident_memory_bytes",
        )
    };
    let rss_before = [rss(&n1).await, rss(&n2).await];

    let mut a = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=alice")).await;
    let mut a2 = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=carol")).await;
    let mut b = Client::connect(&n2.ws_url("vsn=2.0.0&user_id=bob")).await;
    for c in [&mut a, &mut a2, &mut b] {
        c.join("1", "room:freeze").await;
    }
    let want = counts(&[("alice", 1), ("carol", 1), ("bob", 1)]);
    let (mut view_a2, mut view_b) = (View::default(), View::default());
    view_b.converge(&mut b, &want, Duration::from_secs(5)).await;
    view_a2
        .converge(&mut a2, &want, Duration::from_secs(5))
        .await;

    // 20 s frozen while alice publishes 10 messages a second.
    redis.pause(true);
    let frozen_at = Instant::now();
    let mut seq = 0u64;
    let mut worst = Duration::ZERO;
    while frozen_at.elapsed() < Duration::from_secs(20) {
        seq += 1;
        let sent = Instant::now();
        a.send(json!(["1", format!("f{seq}"), "room:freeze", "new_msg", {"seq": seq}]))
            .await;
        let got = a2
            .recv_match("the local message", Duration::from_secs(2), |v| {
                v[3] == "new_msg" && v[4]["seq"] == seq
            })
            .await;
        assert!(
            got.is_some(),
            "local subscriber missed message {seq} during the freeze"
        );
        worst = worst.max(sent.elapsed());
        // Keep every client's connection alive as phoenix.js would.
        for c in [&mut a, &mut a2, &mut b] {
            c.send(json!([null, "hb", "phoenix", "heartbeat", {}]))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.pause(false);
    assert!(
        worst < Duration::from_millis(500),
        "local delivery waited for Redis: worst {worst:?}"
    );
    let frozen_last = seq;

    // Cross-node: whatever bob got from the freeze is in order and without duplicates; every
    // message published once Redis is back reaches him.
    let mut last_seen = 0u64;
    let mut resumed_from = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while resumed_from.is_none() {
        assert!(
            Instant::now() < deadline,
            "cross-node delivery did not resume"
        );
        seq += 1;
        a.send(json!(["1", format!("r{seq}"), "room:freeze", "new_msg", {"seq": seq}]))
            .await;
        while let Some(v) = b
            .recv_match("messages and presence", Duration::from_millis(200), |v| {
                v[3] == "new_msg" || v[3] == "presence_diff" || v[3] == "presence_state"
            })
            .await
        {
            view_b.apply(&v);
            if let Some(s) = v[4]["seq"].as_u64() {
                assert!(
                    s > last_seen,
                    "duplicate or reordered: {s} after {last_seen}"
                );
                last_seen = s;
                if s > frozen_last {
                    resumed_from = Some(s);
                }
            }
        }
    }
    let first_after = resumed_from.expect("resumed");
    for _ in 0..20 {
        seq += 1;
        a.send(json!(["1", format!("p{seq}"), "room:freeze", "new_msg", {"seq": seq}]))
            .await;
    }
    let mut got_after = Vec::new();
    while last_seen < seq {
        let v = b
            .recv_match("messages and presence", Duration::from_secs(5), |v| {
                v[3] == "new_msg" || v[3].as_str().is_some_and(|e| e.starts_with("presence_"))
            })
            .await
            .unwrap_or_else(|| panic!("bob stopped at {last_seen} of {seq}"));
        view_b.apply(&v);
        if let Some(s) = v[4]["seq"].as_u64() {
            assert!(
                s > last_seen,
                "duplicate or reordered: {s} after {last_seen}"
            );
            last_seen = s;
            got_after.push(s);
        }
    }
    let expected: Vec<u64> = (first_after + 1..=seq).collect();
    assert_eq!(got_after, expected, "messages lost after Redis came back");

    // Presence converges everywhere to the truth.
    view_b
        .converge(&mut b, &want, Duration::from_secs(10))
        .await;
    view_a2
        .converge(&mut a2, &want, Duration::from_secs(10))
        .await;

    // Everyone leaves: nothing is left behind on either node or in Redis.
    for c in [a, a2, b] {
        c.close().await;
    }
    for node in [&n1, &n2] {
        node.wait_idle(Duration::from_secs(10)).await;
    }
    wait_until(
        "no presence key left in Redis",
        Duration::from_secs(10),
        async || {
            let keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
            !keys.iter().any(|k| k.contains(":p:")) && keys.len() <= baseline_keys.len() + 2
        },
    )
    .await;
    for (node, before) in [(&n1, rss_before[0]), (&n2, rss_before[1])] {
        let after = rss(node).await;
        assert!(
            after < before + 32.0 * 1024.0 * 1024.0,
            "memory grew from {before} to {after} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_its_keys_expired_writes_its_presences_back_whatever_ran_late() {
    let redis = RedisServer::start();
    let [heartbeat, down] = FAST_HEARTBEATS;
    let env = [
        heartbeat,
        down,
        ("PHX_GATEWAY__REDIS__COMMAND_TIMEOUT_MS", "500"),
    ];
    let NodePair {
        first: late,
        second: _steady,
        u1,
        mut w1,
        mut view,
    } = NodePair::start(&redis, ["late", "steady"], &env, "room:late").await;
    let both = NodePair::both();
    let fields = || redis.cmd::<Vec<String>>(&["HKEYS", "phx:p:{room:late}"]);
    let has = |prefix: &str| fields().iter().any(|f| f.starts_with(prefix));
    assert!(has("late-") && has("steady-"), "{:?}", fields());

    // Frozen: the late node's heartbeats time out and wait in Redis's socket.
    redis.pause(true);
    let failed = "phx_gateway_presence_heartbeats_total{result=\"error\"}";
    wait_until(
        "the late node's heartbeats failing",
        Duration::from_secs(10),
        async || metric(&late.admin("/metrics").await.expect("metrics").1, failed) >= 2.0,
    )
    .await;
    // Every key of the topic expires while frozen (3 x down_ms); Redis cannot be asked.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    // Redis wakes and runs the late node's waiting heartbeats (its key looks alive again)
    // while that node is stopped; the steady node writes the topic's hash again meanwhile.
    late.signal("STOP");
    redis.pause(false);
    wait_until(
        "the steady node's presence written again",
        Duration::from_secs(5),
        async || has("steady-"),
    )
    .await;
    late.signal("CONT");
    wait_until(
        "the late node's presence written again",
        Duration::from_secs(5),
        async || has("late-"),
    )
    .await;
    view.converge(&mut w1, &both, Duration::from_secs(5)).await;
    drop(u1);
}
