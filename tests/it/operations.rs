//! Operating a node: admin endpoints, metrics, readiness, and draining on SIGTERM.

use std::time::{Duration, Instant};

use crate::support::presence_view::{Counts, View};
use crate::support::process::NodeProcess;
use crate::support::redis_server::RedisServer;
use crate::support::{client::ws_status, metric, wait_until, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_health_readiness_and_metrics() {
    let node = NodeProcess::start("", "solo", &[]);
    assert_eq!(node.admin("/healthz").await.map(|r| r.0), Some(200));
    assert_eq!(node.admin("/readyz").await.map(|r| r.0), Some(200));
    let mut c = Client::connect(&node.ws_url("vsn=2.0.0&user_id=m1")).await;
    c.join("1", "room:metrics").await;
    c.send_text(r#"["1","2","room:metrics","new_msg",{"x":1}]"#)
        .await;
    c.recv_until("reply", |v| v[1] == "2").await;
    c.send_text("garbage").await;
    c.expect_close().await;
    let (status, body) = node.admin("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for needle in [
        "phx_gateway_connects_total{result=\"ok\"}",
        "phx_gateway_joins_total{result=\"ok\"}",
        "phx_gateway_messages_in_total{kind=\"join\"}",
        "phx_gateway_messages_out_total{kind=\"broadcast\"}",
        "phx_gateway_messages_in_total{kind=\"malformed\"}",
        "phx_gateway_socket_closes_total{reason=\"malformed_frame\"}",
        "phx_gateway_broadcast_fanout_seconds_bucket",
        "phx_gateway_bytes_in_total",
        "phx_gateway_sockets{transport=\"websocket\"}",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}:\n{body}");
    }
    // The allocator's own counts, from the default build's jemalloc.
    if cfg!(all(
        feature = "jemalloc",
        not(feature = "mimalloc"),
        not(feature = "dhat-heap")
    )) {
        for needle in [
            "phx_gateway_heap_allocated_bytes",
            "phx_gateway_heap_resident_bytes",
            "phx_gateway_heap_metadata_bytes",
        ] {
            let value = metric(&body, needle);
            assert!(
                value > 0.0,
                "/metrics lacks {needle} (read {value}):\n{body}"
            );
        }
    }
    assert!(
        !body.contains("room:metrics") && !body.contains("m1"),
        "no topic or user id may become a label"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_sockets_over_the_drain_period_then_exits_zero() {
    let mut node = NodeProcess::start(
        "",
        "drainer",
        &[("PHX_GATEWAY__SHUTDOWN__DRAIN_MS", "1500")],
    );
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(&node.ws_url(&format!("vsn=2.0.0&user_id=d{i}"))).await;
        c.join("1", "room:drain").await;
        clients.push(c);
    }
    let started = Instant::now();
    node.signal("TERM");
    wait_until("readiness off", Duration::from_secs(2), async || {
        node.admin("/readyz").await.map(|r| r.0) == Some(503)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "readiness must go false at once"
    );
    // New sockets are refused while draining.
    assert_eq!(
        ws_status(&node.ws_url("vsn=2.0.0"), &[]).await,
        503,
        "a new socket during the drain must be refused"
    );
    // Every socket is closed with 1012 (phoenix.js reconnects), at moments spread over the drain.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (code, _) = c.expect_close().await;
                (code, started.elapsed())
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for t in tasks {
        let (code, at) = t.await.expect("client task");
        assert_eq!(code, 1012);
        closed_at.push(at);
    }
    let spread = closed_at.iter().max().copied().unwrap_or_default()
        - closed_at.iter().min().copied().unwrap_or_default();
    assert!(
        spread > Duration::from_millis(300),
        "closes should be spread over the drain period, spread {spread:?}"
    );
    assert_eq!(
        node.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "a drained node exits 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_leaves_no_presence_behind_and_clients_move_to_the_other_node() {
    let redis = RedisServer::start();
    // A long down period: leaves must come from the drain itself, not from the reaper.
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "1000"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "30000"),
        ("PHX_GATEWAY__SHUTDOWN__DRAIN_MS", "1000"),
    ];
    let mut a = NodeProcess::start(&redis.url(), "rolling-a", &env);
    let b = NodeProcess::start(&redis.url(), "rolling-b", &env);
    let mut watcher = Client::connect(&b.ws_url("vsn=2.0.0")).await;
    watcher.join("1", "room:roll").await;
    let mut view = View::default();
    let users: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let mut on_a = Vec::new();
    for u in &users {
        let mut c = Client::connect(&a.ws_url(&format!("vsn=2.0.0&user_id={u}"))).await;
        c.join("1", "room:roll").await;
        on_a.push((u.clone(), c));
    }
    let all: Counts = users.iter().map(|u| (u.clone(), 1)).collect();
    view.converge(&mut watcher, &all, Duration::from_secs(5))
        .await;

    let started = Instant::now();
    a.signal("TERM");
    // Node A removes its presences at once: the watcher sees everyone leave right away.
    view.converge(&mut watcher, &Counts::new(), Duration::from_secs(3))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "leaves must not wait for the reaper"
    );
    // Each client is closed with 1012 and reconnects to B, as phoenix.js behind a balancer would.
    let mut moved = Vec::new();
    for (u, mut c) in on_a {
        assert_eq!(c.expect_close().await.0, 1012);
        let mut c = Client::connect(&b.ws_url(&format!("vsn=2.0.0&user_id={u}"))).await;
        c.join("2", "room:roll").await;
        moved.push(c);
    }
    view.converge(&mut watcher, &all, Duration::from_secs(5))
        .await;
    assert_eq!(a.wait_exit(Duration::from_secs(10)).await, Some(0));
    // Redis holds exactly the live presences, all on B.
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:roll}"]);
    assert_eq!(fields.len(), users.len(), "{fields:?}");
    assert!(
        fields.iter().all(|f| f.starts_with("rolling-b")),
        "{fields:?}"
    );
    let nodes: Vec<String> = redis.cmd(&["SMEMBERS", "phx:nodes"]);
    assert!(
        nodes.iter().all(|n| n.starts_with("rolling-b")),
        "the drained node unregistered itself: {nodes:?}"
    );
    drop(moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis_after_a_grace_period() {
    let mut redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1000"),
        ("PHX_GATEWAY__REDIS__READY_GRACE_MS", "500"),
    ];
    let mut node = NodeProcess::start(&redis.url(), "ready", &env);
    assert_eq!(node.admin("/readyz").await.map(|r| r.0), Some(200));
    redis.kill();
    wait_until(
        "not ready after the grace period",
        Duration::from_secs(10),
        async || node.admin("/readyz").await.map(|r| r.0) == Some(503),
    )
    .await;
    assert_eq!(
        node.admin("/healthz").await.map(|r| r.0),
        Some(200),
        "still alive"
    );
    redis.restart();
    wait_until("ready again", Duration::from_secs(10), async || {
        node.admin("/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    assert!(node.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaks_after_clients_come_and_go() {
    let redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
        ("PHX_GATEWAY__REDIS__UNSUBSCRIBE_DELAY_MS", "100"),
    ];
    let a = NodeProcess::start(&redis.url(), "leak-a", &env);
    let b = NodeProcess::start(&redis.url(), "leak-b", &env);
    let baseline_keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
    let fds_before = metric(
        &a.admin("/metrics").await.expect("metrics").1,
        "process_open_fds",
    );
    for round in 0..3 {
        let mut clients = Vec::new();
        for i in 0..60 {
            let node = if i % 2 == 0 { &a } else { &b };
            let mut c =
                Client::connect(&node.ws_url(&format!("vsn=2.0.0&user_id=l{round}-{i}"))).await;
            c.join("1", &format!("room:leak{}", i % 7)).await;
            clients.push(c);
        }
        // Half leave politely, half just disconnect.
        for (i, mut c) in clients.into_iter().enumerate() {
            if i % 2 == 0 {
                c.send_text(&format!(
                    r#"["1","9","room:leak{}","phx_leave",{{}}]"#,
                    i % 7
                ))
                .await;
                c.recv_until("close", |v| v[3] == "phx_close").await;
            }
        }
    }
    for node in [&a, &b] {
        node.wait_idle(Duration::from_secs(10)).await;
    }
    // Redis holds no presence hash and no topic channel any more: only the node bookkeeping.
    wait_until(
        "redis back to its baseline keys",
        Duration::from_secs(10),
        async || {
            let keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
            let mut topic_keys: Vec<&String> = keys
                .iter()
                .filter(|k| k.contains(":p:") || k.contains(":topics"))
                .collect();
            topic_keys.sort();
            topic_keys.is_empty() && keys.len() <= baseline_keys.len() + 2
        },
    )
    .await;
    wait_until(
        "no topic channel subscribed",
        Duration::from_secs(10),
        async || {
            redis
                .cmd::<Vec<String>>(&["PUBSUB", "CHANNELS", "phx:b:{room:leak*"])
                .is_empty()
        },
    )
    .await;
    let fds_after = metric(
        &a.admin("/metrics").await.expect("metrics").1,
        "process_open_fds",
    );
    assert!(
        fds_after <= fds_before + 2.0,
        "file descriptors leaked: {fds_before} -> {fds_after}"
    );
}
