//! Several gateway nodes on one real Redis: cross-node broadcasts, presence, subscription
//! bookkeeping, node death, Redis restarts and key-layout migrations.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::http::http;
use crate::support::load::{spawn_load, LoadRun};
use crate::support::node_pair::{NodePair, FAST_HEARTBEATS};
use crate::support::presence_view::{counts, join_storm, Counts, View};
use crate::support::process::{run_gateway, NodeProcess};
use crate::support::redis_server::RedisServer;
use crate::support::redis_topology::TestCa;
use crate::support::{
    free_port, wait_until, without_history, Client, TestServer, NO_HISTORY_CONFIG, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_cross_nodes_once_in_order_and_broadcast_from_skips_only_the_sender() {
    let redis = RedisServer::start();
    // Phoenix-exact frames (null refs); history has its own tests.
    let [n1, n2] = TestServer::cluster(&redis, without_history).await;
    let mut a = n1.v2("").await;
    let mut a2 = n1.v2("").await;
    let mut b = n2.v2("").await;
    let mut b1 = n2.v1("").await;
    a.join("1", "room:lobby").await;
    a2.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    b1.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1"}))
        .await;
    b1.recv_until("v1 join", |v| v["event"] == "phx_reply")
        .await;

    for i in 0..50 {
        a.send(json!(["1", format!("m{i}"), "room:lobby", "new_msg", {"n": i}]))
            .await;
    }
    for i in 0..50 {
        let got = b
            .recv_until("new_msg on node 2", |v| v[3] == "new_msg")
            .await;
        assert_eq!(
            got,
            json!([null, null, "room:lobby", "new_msg", {"n": i}]),
            "in order, once each"
        );
        let got = b1
            .recv_until("new_msg on node 2 (V1)", |v| v["event"] == "new_msg")
            .await;
        assert_eq!(got["payload"]["n"], i);
    }
    // The sender's node delivered once too.
    for i in 0..50 {
        assert_eq!(
            a2.recv_until("new_msg on node 1", |v| v[3] == "new_msg")
                .await[4]["n"],
            i
        );
    }

    a.send(json!(["1", "t1", "room:lobby", "typing", {"who": "a"}]))
        .await;
    assert_eq!(
        b.recv_until("typing on node 2", |v| v[3] == "typing").await[4],
        json!({"who": "a"})
    );
    assert_eq!(
        a2.recv_until("typing on node 1", |v| v[3] == "typing")
            .await[4],
        json!({"who": "a"})
    );
    // A marker after the typing: the sender sees the marker but never its own typing.
    b.send(json!(["1", "mk", "room:lobby", "new_msg", {"marker": true}]))
        .await;
    let next = a
        .recv_until("typing or marker", |v| {
            v[3] == "typing" || v[4]["marker"] == true
        })
        .await;
    assert_eq!(
        next[3], "new_msg",
        "the sender must not receive its own broadcast_from"
    );
    // Nothing was duplicated on node 2.
    let next = b
        .recv_until("marker", |v| v[3] == "new_msg" || v[3] == "typing")
        .await;
    assert_eq!(next[4]["marker"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_subscribes_a_topic_once_and_unsubscribes_after_the_last_leave() {
    let redis = RedisServer::start();
    let n1 = TestServer::start_node(&redis.url(), |_| {}).await;
    let numsub = |r: &RedisServer| -> i64 {
        let v: Vec<redis::Value> = r.cmd(&["PUBSUB", "NUMSUB", "phx:b:{room:subs}"]);
        match v.get(1) {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("NUMSUB reply {other:?}"),
        }
    };
    let mut c1 = n1.v2("").await;
    let mut c2 = n1.v2("").await;
    c1.join("1", "room:subs").await;
    c2.join("1", "room:subs").await;
    assert_eq!(
        numsub(&redis),
        1,
        "one subscription per node, not per socket"
    );
    let channels: Vec<String> = redis.cmd(&["PUBSUB", "CHANNELS", "phx:b:*"]);
    assert!(
        channels.contains(&"phx:b:{room:subs}".to_string()),
        "{channels:?}"
    );
    c1.send_text(r#"["1","2","room:subs","phx_leave",{}]"#)
        .await;
    c1.recv_until("close", |v| v[3] == "phx_close").await;
    c2.send_text(r#"["1","2","room:subs","phx_leave",{}]"#)
        .await;
    c2.recv_until("close", |v| v[3] == "phx_close").await;
    wait_until(
        "the node to unsubscribe",
        Duration::from_secs(5),
        async || numsub(&redis) == 0,
    )
    .await;
    // A socket id subscription goes away with its socket too.
    let idsub = n1.v2("user_id=77").await;
    let ch = "phx:b:{users_socket:77}";
    wait_until(
        "socket id subscription",
        Duration::from_secs(5),
        async || redis.cmd::<Vec<String>>(&["PUBSUB", "CHANNELS", ch]).len() == 1,
    )
    .await;
    idsub.close().await;
    wait_until(
        "socket id unsubscription",
        Duration::from_secs(5),
        async || {
            redis
                .cmd::<Vec<String>>(&["PUBSUB", "CHANNELS", ch])
                .is_empty()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_presence_scenario_over_three_nodes() {
    let redis = RedisServer::start();
    let nodes: [_; 3] = TestServer::cluster(&redis, |_| {}).await;
    let mut watchers = Vec::new();
    for n in &nodes {
        let mut w = n.v2("").await;
        w.join("1", "room:lobby").await;
        watchers.push((w, View::default()));
    }
    let mut alice1 = nodes[0].v2("user_id=Alice").await;
    let mut alice2 = nodes[1].v1("user_id=Alice").await;
    let mut bob = nodes[2].v2("user_id=Bob").await;
    alice1.join("1", "room:lobby").await;
    alice2.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    bob.join("1", "room:lobby").await;
    let wait = Duration::from_secs(5);
    for (w, view) in &mut watchers {
        view.converge(w, &counts(&[("Alice", 2), ("Bob", 1)]), wait)
            .await;
    }
    // Redis holds exactly these three presences.
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:lobby}"]);
    assert_eq!(fields.len(), 3, "{fields:?}");
    alice2.close().await;
    for (w, view) in &mut watchers {
        view.converge(w, &counts(&[("Alice", 1), ("Bob", 1)]), wait)
            .await;
    }
    drop(bob);
    for (w, view) in &mut watchers {
        view.converge(w, &counts(&[("Alice", 1)]), wait).await;
    }
    // A late joiner on any node gets the cluster-wide state.
    let mut late = nodes[2].v2("").await;
    late.join("9", "room:lobby").await;
    let state = late
        .recv_until("presence_state", |v| v[3] == "presence_state")
        .await;
    assert_eq!(state[4]["Alice"]["metas"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_clients_joining_and_leaving_concurrently_converge_everywhere() {
    let redis = RedisServer::start();
    let nodes: [_; 3] = TestServer::cluster(&redis, |_| {}).await;
    let (live, _clients) = crowd_converges(&nodes).await;
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:crowd}"]);
    assert_eq!(fields.len(), live, "redis holds exactly the live presences");
}

/// 300 clients join room:crowd concurrently over `nodes`, every third leaves at once, then
/// half of the rest disconnect: watchers on every node converge each time. Returns how many
/// presences are left, and the clients that hold them (they leave when dropped).
pub(crate) async fn crowd_converges(nodes: &[TestServer]) -> (usize, Vec<Option<Client>>) {
    let n = nodes.len();
    let mut watchers = Vec::new();
    for n in nodes {
        let mut w = n.v2("").await;
        w.join("1", "room:crowd").await;
        watchers.push((w, View::default()));
    }
    // 300 clients join concurrently; every third one leaves again right away.
    let mut tasks = Vec::new();
    for i in 0..300usize {
        let url = nodes[i % n].ws_url(&format!("vsn=2.0.0&user_id=u{i}"));
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.join("1", "room:crowd").await;
            if i % 3 == 0 {
                c.send_text(r#"["1","2","room:crowd","phx_leave",{}]"#)
                    .await;
                c.recv_until("close", |v| v[3] == "phx_close").await;
                None
            } else {
                Some(c)
            }
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.push(t.await.expect("client task"));
    }
    let want: Counts = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| (format!("u{i}"), 1))
        .collect();
    for (w, view) in &mut watchers {
        view.converge(w, &want, Duration::from_secs(15)).await;
    }
    // Now half of the rest disconnect at once.
    for (i, c) in kept.iter_mut().enumerate() {
        if i % 2 == 0 {
            c.take();
        }
    }
    let want: Counts = (0..300)
        .filter(|i| i % 3 != 0)
        .filter(|i| kept[*i].is_some())
        .map(|i| (format!("u{i}"), 1))
        .collect();
    for (w, view) in &mut watchers {
        view.converge(w, &want, Duration::from_secs(15)).await;
    }
    (want.len(), kept)
}

/// Background traffic while a fault happens: `phx-load fanout` with 100 subscribers spread
/// over `ws_ports`, publishing 100 messages a second on `room:load` for `secs` seconds.
fn background_load(ws_ports: &[u16], secs: u64) -> std::process::Child {
    let addrs: Vec<String> = ws_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    spawn_load(&format!(
        "fanout --addrs {} -n 100 --topic room:load --rate 100 --duration {secs} --threads 1",
        addrs.join(",")
    ))
}

/// Waits for the background load to finish; asserts the at-most-once guarantees (no
/// duplicate, no reordering) and that traffic flowed.
fn finish_load(load: std::process::Child) -> LoadRun {
    let run = LoadRun::wait(load);
    let result = run.result();
    assert!(
        !result.is_empty(),
        "no result from phx-load: {}",
        run.stdout
    );
    assert_eq!(
        run.figure("dups"),
        0.0,
        "duplicates under the fault: {result}"
    );
    assert_eq!(
        run.figure("reordered"),
        0.0,
        "reordering under the fault: {result}"
    );
    assert!(run.figure("received") > 0.0, "no traffic flowed: {result}");
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_users_leave_everywhere_and_its_keys_go() {
    let redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
    ];
    let mut doomed = NodeProcess::start(&redis.url(), "doomed", &env);
    let survivor = NodeProcess::start(&redis.url(), "survivor", &env);
    let mut watcher = Client::connect(&survivor.ws_url("vsn=2.0.0")).await;
    watcher.join("1", "room:lobby").await;
    let mut view = View::default();
    let mut victims = Vec::new();
    for name in ["v1", "v2"] {
        let mut c = Client::connect(&doomed.ws_url(&format!("vsn=2.0.0&user_id={name}"))).await;
        c.join("1", "room:lobby").await;
        victims.push(c);
    }
    let mut alive = Client::connect(&survivor.ws_url("vsn=2.0.0&user_id=ok")).await;
    alive.join("1", "room:lobby").await;
    view.converge(
        &mut watcher,
        &counts(&[("ok", 1), ("v1", 1), ("v2", 1)]),
        Duration::from_secs(5),
    )
    .await;

    // Under load: 100 subscribers over both nodes, 100 messages a second published on the
    // survivor, through the kill.
    let load = background_load(&[survivor.port, doomed.port], 4);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = std::time::Instant::now();
    doomed.kill9();
    // Down period (1.2 s) plus one heartbeat (0.3 s), with slack for the test machine.
    view.converge(&mut watcher, &counts(&[("ok", 1)]), Duration::from_secs(6))
        .await;
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "users must not leave before the down period ({took:?})"
    );

    // The reaper broadcasts the leaves, then unregisters the node.
    wait_until("the dead node unregistered", WAIT, async || {
        let nodes: Vec<String> = redis.cmd(&["SMEMBERS", "phx:nodes"]);
        nodes.iter().all(|n| !n.starts_with("doomed"))
    })
    .await;
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:lobby}"]);
    assert!(
        fields.iter().all(|f| !f.starts_with("doomed")),
        "dead node's presences remain: {fields:?}"
    );
    // After the reap lock's TTL nothing of the dead node is left.
    wait_until(
        "no key of the dead node",
        Duration::from_secs(5),
        async || redis.cmd::<Vec<String>>(&["KEYS", "*doomed*"]).is_empty(),
    )
    .await;
    // The dead node's subscribers lost what came after the kill (at-most-once); nobody got
    // a message twice or out of order.
    let run = tokio::task::spawn_blocking(move || finish_load(load))
        .await
        .expect("load");
    let result = run.result();
    eprintln!("load through the node kill: {result}");
    // The 50 subscribers on the survivor got all 400 messages.
    let received = run.figure("received") as u64;
    assert!(received >= 50 * 400, "survivors lost messages: {result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_reaped_late_writes_its_presences_back() {
    let redis = RedisServer::start();
    let pair = NodePair::start(&redis, ["reaped", "other"], &FAST_HEARTBEATS, "room:lobby").await;
    let other = &pair.second;

    // A survivor found this node's heartbeat expired (a pause, a partition) and reaps it
    // after the node came back: it takes the reap lock, then removes the node's presences
    // (the topic's hash stays: w1 is in it, so nothing tells the node that its are gone).
    let nodes: Vec<String> = redis.cmd(&["SMEMBERS", "phx:nodes"]);
    let node = nodes
        .iter()
        .find(|n| n.starts_with("reaped"))
        .unwrap_or_else(|| panic!("node not registered: {nodes:?}"));
    let lock = format!("phx:n:{{{node}}}:reap");
    let _: Option<String> = redis.cmd(&["SET", &lock, "other", "NX", "PX", "1200"]);
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:lobby}"]);
    let prefix = format!("{node}|");
    let mut hdel = vec!["HDEL", "phx:p:{room:lobby}"];
    hdel.extend(
        fields
            .iter()
            .filter(|f| f.starts_with(&prefix))
            .map(String::as_str),
    );
    let removed: i64 = redis.cmd(&hdel);
    assert_eq!(
        removed, 1,
        "u1's presence should have been there: {fields:?}"
    );

    // The node sees the lock on its next heartbeat and writes its presences back.
    wait_until(
        "the reaped presence written back",
        Duration::from_secs(5),
        async || {
            let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:lobby}"]);
            fields.iter().any(|f| f.starts_with(&prefix))
        },
    )
    .await;
    // Whoever joins now gets both in its snapshot.
    let mut late = Client::connect(&other.ws_url("vsn=2.0.0&user_id=late")).await;
    late.join("1", "room:lobby").await;
    View::default()
        .converge(
            &mut late,
            &counts(&[("u1", 1), ("w1", 1), ("late", 1)]),
            Duration::from_secs(5),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resumes_broadcasts_and_restores_presence() {
    let mut redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
    ];
    let mut n1 = NodeProcess::start(&redis.url(), "n1", &env);
    let mut n2 = NodeProcess::start(&redis.url(), "n2", &env);
    let mut a = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=alice")).await;
    let mut b = Client::connect(&n2.ws_url("vsn=2.0.0&user_id=bob")).await;
    a.join("1", "room:lobby").await;
    b.join("1", "room:lobby").await;
    let mut view_b = View::default();
    view_b
        .converge(
            &mut b,
            &counts(&[("alice", 1), ("bob", 1)]),
            Duration::from_secs(5),
        )
        .await;

    // Under load: 100 subscribers over both nodes, 100 messages a second, through the outage.
    let load = background_load(&[n1.port, n2.port], 14);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    // Local traffic goes on while Redis is down.
    a.send_text(r#"["1","2","room:lobby","ping",{"local":true}]"#)
        .await;
    assert_eq!(
        a.recv_until("ping reply", |v| v[1] == "2").await[4]["status"],
        "ok"
    );
    // Redis stays down for 10 s; heartbeats keep the sockets alive meanwhile.
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for c in [&mut a, &mut b] {
            c.send(json!([null, format!("h{i}"), "phoenix", "heartbeat", {}]))
                .await;
        }
    }
    assert!(
        n1.is_running() && n2.is_running(),
        "nodes must survive a Redis outage"
    );
    redis.restart();

    // Presences are re-asserted into the empty Redis.
    wait_until(
        "presences restored in redis",
        Duration::from_secs(10),
        async || {
            redis
                .cmd::<Vec<String>>(&["HKEYS", "phx:p:{room:lobby}"])
                .len()
                == 2
        },
    )
    .await;
    // Cross-node delivery resumes by itself: retry until one gets through.
    let mut delivered = false;
    for i in 0..50 {
        a.send(json!(["1", format!("r{i}"), "room:lobby", "new_msg", {"after": i}]))
            .await;
        if let Some(got) =
            recv_event(&mut b, "new_msg", Duration::from_millis(200), &mut view_b).await
        {
            assert!(got[4]["after"].is_number());
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "broadcasts did not resume across nodes after Redis came back"
    );
    view_b
        .converge(
            &mut b,
            &counts(&[("alice", 1), ("bob", 1)]),
            Duration::from_secs(5),
        )
        .await;
    assert!(n1.is_running() && n2.is_running());
    // Cross-node messages of the outage are lost (at-most-once); none twice, none reordered.
    let run = tokio::task::spawn_blocking(move || finish_load(load))
        .await
        .expect("load");
    eprintln!("load through the Redis outage: {}", run.result());
    // Once everyone left, nothing of the outage is left behind on the nodes or in Redis.
    a.close().await;
    b.close().await;
    for node in [&n1, &n2] {
        node.wait_idle(Duration::from_secs(10)).await;
    }
    wait_until(
        "no presence hash left in Redis",
        Duration::from_secs(10),
        async || redis.cmd::<Vec<String>>(&["KEYS", "phx:p:*"]).is_empty(),
    )
    .await;
}

/// Waits for `event` on a V2 client, feeding presence frames to `view` on the way.
async fn recv_event(c: &mut Client, event: &str, wait: Duration, view: &mut View) -> Option<Value> {
    c.recv_match(event, wait, |v| {
        v[3] == event || {
            view.apply(v);
            false
        }
    })
    .await
}

#[test]
fn migrate_fresh_already_migrated_and_newer_layouts() {
    let redis = RedisServer::start();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let (url, port) = (redis.url(), free_port().to_string());
        let mut all = vec![
            ("PHX_GATEWAY__REDIS__URL", url.as_str()),
            ("PHX_GATEWAY__HTTP__PORT", port.as_str()),
        ];
        all.extend_from_slice(env);
        let ran = run_gateway(args, &all);
        (ran.code, ran.output())
    };
    let (code, out) = run(&["migrate"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("from version 0 to 1"), "{out}");
    assert_eq!(redis.cmd::<String>(&["HGET", "phx:schema", "version"]), "1");
    let (code, out) = run(&["migrate"], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already at version 1"), "{out}");

    redis.cmd::<i64>(&["HSET", "phx:schema", "version", "99"]);
    let (code, out) = run(&["migrate"], &[]);
    assert_eq!(code, Some(3), "{out}");
    let (code, out) = run(&["serve"], &[]);
    assert_eq!(code, Some(3), "a gateway must refuse a newer layout: {out}");
    assert!(
        out.contains("version 99") && out.contains("upgrade phx-gateway"),
        "{out}"
    );

    redis.cmd::<i64>(&["DEL", "phx:schema"]);
    let (code, out) = run(&["serve"], &[("PHX_GATEWAY__REDIS__AUTO_MIGRATE", "false")]);
    assert_eq!(code, Some(3), "{out}");
    assert!(
        out.contains("phx-gateway migrate"),
        "the error names the fix: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_fresh_redis_all_migrate() {
    let redis = RedisServer::start();
    let mut settings = phx_gateway::config::Settings::defaults();
    settings.redis.url = Some(redis.url().into());
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(
            phx_gateway::cluster::Redis::connect(&settings.redis)
                .await
                .expect("connects"),
        );
    }
    // All eight read version 0 before any of them writes: seven lose the race.
    let results =
        futures_util::future::join_all(clients.iter().map(phx_gateway::cluster::migrate::migrate))
            .await;
    for r in &results {
        assert_eq!(
            r.as_ref().map(|(_, after)| *after).ok(),
            Some(1),
            "{results:?}"
        );
    }
    assert_eq!(redis.cmd::<String>(&["HGET", "phx:schema", "version"]), "1");
}

/// Two in-process nodes on `redis` (with `tweak`), one client each on `room:sec`: a
/// broadcast from one reaches the other.
async fn assert_cross_node_broadcast(
    redis: &RedisServer,
    tweak: impl Fn(&mut phx_gateway::config::Settings),
) -> (TestServer, TestServer, Client, Client) {
    let [n1, n2] = TestServer::cluster(redis, tweak).await;
    let mut a = n1.v2("user_id=a").await;
    let mut b = n2.v2("user_id=b").await;
    a.join("1", "room:sec").await;
    b.join("1", "room:sec").await;
    a.send_text(r#"["1","2","room:sec","new_msg",{"secure":true}]"#)
        .await;
    let got = b
        .recv_until("cross-node new_msg", |v| v[3] == "new_msg")
        .await;
    assert_eq!(got[4], json!({"secure": true}));
    (n1, n2, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_password_and_database_number() {
    let redis = RedisServer::start_with(
        &[
            "--port", "{port}", "--user", "default", "off", "--user", "gw", "on", ">s3cret", "~*",
            "&*", "+@all",
        ],
        "redis://gw:s3cret@127.0.0.1:{port}/3",
        None,
    );
    let _cluster = assert_cross_node_broadcast(&redis, |_| {}).await;
    // The presence keys went to database 3.
    wait_until(
        "presence hash in db 3",
        Duration::from_secs(5),
        async || {
            redis
                .cmd::<Vec<String>>(&["HKEYS", "phx:p:{room:sec}"])
                .len()
                == 2
        },
    )
    .await;
    // A wrong password refuses to start, with an error and no secret in it.
    let mut settings = phx_gateway::config::Settings::defaults();
    settings.redis.url = Some(format!("redis://gw:wrong@127.0.0.1:{}/3", redis.port).into());
    let err = phx_gateway::Gateway::start(settings)
        .await
        .err()
        .expect("wrong password must fail");
    let msg = err.to_string();
    assert!(
        !msg.contains("wrong"),
        "the password must not appear in errors: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let ca = TestCa::new();
    let (crt, key, cacrt) = ca.server_files();
    let redis = RedisServer::start_with(
        &[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &cacrt,
            "--tls-auth-clients",
            "no",
        ],
        "rediss://127.0.0.1:{port}",
        Some(ca.ca_pem.clone()),
    );
    let ca_path = ca.ca_file.clone();
    let _nodes =
        assert_cross_node_broadcast(&redis, |s| s.redis.tls_ca_file = Some(ca_path.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_topic_names_never_reach_redis_raw() {
    let redis = RedisServer::start();
    let [n1, n2] = TestServer::cluster(&redis, |_| {}).await;
    let long = format!("room:{}", "x*{}".repeat(61)); // 249 bytes, just under the topic limit
    for topic in [
        "room:a*b?c[d]",
        "room:{x}",
        "room:new\nline",
        "room:sp ace",
        "room:ünï",
        long.as_str(),
    ] {
        let mut a = n1.v2("user_id=h1").await;
        let mut b = n2.v2("user_id=h2").await;
        a.send(json!(["1", "1", topic, "phx_join", {}])).await;
        assert_eq!(
            a.recv_until("join", |v| v[1] == "1").await[4]["status"],
            "ok",
            "{topic:?}"
        );
        b.send(json!(["1", "1", topic, "phx_join", {}])).await;
        assert_eq!(
            b.recv_until("join", |v| v[1] == "1").await[4]["status"],
            "ok",
            "{topic:?}"
        );
        a.send(json!(["1", "2", topic, "new_msg", {"t": topic}]))
            .await;
        let got = b
            .recv_until("cross-node new_msg", |v| v[3] == "new_msg")
            .await;
        assert_eq!(
            got[2],
            json!(topic),
            "the topic survives the round trip through Redis"
        );
        let escaped = phx_gateway::cluster::keys::escape(topic);
        let presence_key = format!("phx:p:{{{escaped}}}");
        // Presence is written with the topic's next diff, a batch window later.
        wait_until("the presence hash", WAIT, async || {
            redis
                .cmd::<Vec<String>>(&["KEYS", "*"])
                .contains(&presence_key)
        })
        .await;
        let channels: Vec<String> = redis.cmd(&["PUBSUB", "CHANNELS"]);
        let keys: Vec<String> = redis.cmd(&["KEYS", "*"]);
        let topic_names = channels
            .iter()
            .chain(keys.iter())
            .filter(|n| n.starts_with("phx:b:") || n.starts_with("phx:p:"));
        for name in topic_names {
            // Exactly one hash tag, and nothing between its braces but the escaped form.
            assert_eq!(name.matches('{').count(), 1, "{name:?}");
            assert!(
                !name.contains(['\n', ' ', '*', '?', '[']),
                "raw characters in a Redis name: {name:?}"
            );
        }
        assert!(
            channels.contains(&format!("phx:b:{{{escaped}}}")),
            "{channels:?}"
        );
        assert!(keys.contains(&format!("phx:p:{{{escaped}}}")), "{keys:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_does_not_stop_local_traffic_and_everything_resumes() {
    let redis = RedisServer::start();
    let env = [
        ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
        ("PHX_GATEWAY__REDIS__DOWN_MS", "1200"),
        ("PHX_GATEWAY__REDIS__COMMAND_TIMEOUT_MS", "500"),
    ];
    // Without history: on a history route local delivery waits for the append (docs/history.md).
    let mut n1 = NodeProcess::start_configured(&redis.url(), "p1", &env, NO_HISTORY_CONFIG);
    let mut n2 = NodeProcess::start_configured(&redis.url(), "p2", &env, NO_HISTORY_CONFIG);
    let mut a = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=alice")).await;
    let mut a2 = Client::connect(&n1.ws_url("vsn=2.0.0")).await;
    let mut b = Client::connect(&n2.ws_url("vsn=2.0.0&user_id=bob")).await;
    a.join("1", "room:pause").await;
    a2.join("1", "room:pause").await;
    b.join("1", "room:pause").await;
    let mut view = View::default();
    view.converge(
        &mut b,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(5),
    )
    .await;

    redis.pause(true);
    let paused_at = std::time::Instant::now();
    // While Redis is frozen (connections open, nothing answered), node 1 still serves its own
    // clients: joins, replies and local broadcasts, without waiting on Redis per message.
    for i in 0..10 {
        let started = std::time::Instant::now();
        a.send(json!(["1", format!("l{i}"), "room:pause", "new_msg", {"local": i}]))
            .await;
        let got = a2
            .recv_until("local broadcast", |v| v[3] == "new_msg")
            .await;
        assert_eq!(got[4]["local"], i);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "local delivery must not wait for Redis"
        );
        a.send(json!([null, format!("h{i}"), "phoenix", "heartbeat", {}]))
            .await;
        b.send(json!([null, format!("h{i}"), "phoenix", "heartbeat", {}]))
            .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(paused_at.elapsed() >= Duration::from_secs(4));
    redis.pause(false);
    assert!(
        n1.is_running() && n2.is_running(),
        "nodes survive a frozen Redis"
    );

    // Cross-node delivery resumes by itself.
    let mut delivered = false;
    for i in 0..50 {
        a.send(json!(["1", format!("r{i}"), "room:pause", "new_msg", {"after": i}]))
            .await;
        if recv_event(&mut b, "new_msg", Duration::from_millis(200), &mut view)
            .await
            .is_some_and(|v| v[4]["after"].is_number())
        {
            delivered = true;
            break;
        }
    }
    assert!(
        delivered,
        "cross-node broadcasts did not resume after Redis was resumed"
    );
    view.converge(
        &mut b,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_on_two_nodes_get_exactly_the_changes_after_their_snapshots() {
    let redis = RedisServer::start();
    let [n1, n2] = TestServer::cluster(&redis, |s| s.presence.diff_batch_ms = 200).await;
    let urls = [n1.ws_url("vsn=2.0.0"), n2.ws_url("vsn=2.0.0")];
    let mut members = join_storm(&urls, "room:storm2", 6, Duration::ZERO).await;
    let mut marker = n2.v2("user_id=zz").await;
    marker.join("1", "room:storm2").await;
    let mut want: Counts = (0..6).map(|u| (format!("u{u}"), 2)).collect();
    want.insert("zz".into(), 1);
    for (c, view) in &mut members {
        view.converge(c, &want, Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiners_spread_over_many_diffs_on_two_nodes_never_get_a_change_twice() {
    let redis = RedisServer::start();
    let [n1, n2] = TestServer::cluster(&redis, |s| s.presence.diff_batch_ms = 20).await;
    let urls = [n1.ws_url("vsn=2.0.0"), n2.ws_url("vsn=2.0.0")];
    // Each snapshot is read while other nodes' diffs are on their way: the ones it already
    // holds must not reach the joiner after it.
    join_storm(&urls, "room:storm3", 30, Duration::from_millis(4)).await;
}

/// `calls=N` of one command in `INFO commandstats`.
fn command_calls(info: &str, command: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_cost_the_same_for_a_big_room_and_a_lost_hash_is_written_again() {
    const USERS: usize = 120;
    let redis = RedisServer::start();
    let [node] = TestServer::cluster(&redis, |s| s.api.key = Some("k".into())).await;
    let mut members = Vec::new();
    for i in 0..USERS {
        let mut c = node.v2(&format!("user_id=hb{i}")).await;
        c.join("1", "room:hb").await;
        members.push(c);
    }
    let count = || async {
        http(
            node.addr,
            "GET",
            "/api/v1/presence/room:hb/count",
            Some("k"),
            None,
        )
        .await
        .1
    };
    let all = json!({"users": USERS, "connections": USERS});
    wait_until(
        "every presence committed",
        Duration::from_secs(10),
        async || count().await == all,
    )
    .await;
    let stats = node
        .gateway
        .cluster
        .as_ref()
        .expect("cluster")
        .presence_stats
        .clone();
    let beats = || stats.heartbeats.load(std::sync::atomic::Ordering::Relaxed);
    let _: () = redis.cmd(&["CONFIG", "RESETSTAT"]);
    let from = beats();
    wait_until("four heartbeats", Duration::from_secs(10), async || {
        beats() >= from + 4
    })
    .await;
    let info: String = redis.cmd(&["INFO", "commandstats"]);
    let n = beats() - from;
    // Steady state: no presence is written again; each heartbeat refreshes TTLs, O(1) per
    // topic (the topic's hash and sequence, the node set, the node's topic index).
    assert_eq!(command_calls(&info, "hset"), 0, "{info}");
    let pexpires = command_calls(&info, "pexpire");
    assert!(
        pexpires <= (n + 1) * 4,
        "{pexpires} PEXPIREs for {n} heartbeats of one topic with {USERS} presences: {info}"
    );
    // Redis loses the topic's hash (evicted, or a restart): the next heartbeat writes it again.
    let key = redis
        .cmd::<Vec<String>>(&["KEYS", "*:p:*"])
        .into_iter()
        .next()
        .expect("the topic's presence hash");
    let _: () = redis.cmd(&["DEL", &key]);
    wait_until(
        "the presences written again",
        Duration::from_secs(10),
        async || count().await == all,
    )
    .await;
    drop(members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_and_a_repair_larger_than_what_lua_unpacks_at_once_are_written_whole() {
    // Redis's Lua unpacks at most about 8,000 values at once: 5,000 presences of one node in
    // one topic are 10,000 field/value arguments, in one batch and in one repair.
    const PRESENCES: u64 = 5_000;
    let redis = RedisServer::start();
    let [node] = TestServer::cluster(&redis, |s| s.presence.diff_batch_ms = 2_000).await;
    let presence = node.gateway.presence.clone();
    for i in 0..PRESENCES {
        let meta = serde_json::Map::new();
        presence
            .track("room:big", &format!("u{i}"), i + 1, meta)
            .await
            .expect("track");
    }
    presence.flushed("room:big").await;
    let count = async || presence.count("room:big").await;
    let c = count().await;
    assert_eq!(
        (c.users, c.connections),
        (PRESENCES, PRESENCES),
        "one batch of {PRESENCES} joins"
    );
    let _: () = redis.cmd(&["DEL", "phx:p:{room:big}"]);
    wait_until(
        "the lost hash written again whole",
        Duration::from_secs(10),
        async || count().await.connections == PRESENCES,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stalled_past_down_ms_is_reaped_then_comes_back_in_a_numbered_change() {
    let redis = RedisServer::start();
    let NodePair {
        first: stalled,
        second: _other,
        u1,
        mut w1,
        mut view,
    } = NodePair::start(&redis, ["stalled", "other"], &FAST_HEARTBEATS, "room:stall").await;
    let both = NodePair::both();

    // Stalled past down_ms: the other node reaps it, and its watcher sees u1 leave.
    stalled.signal("STOP");
    view.converge(&mut w1, &counts(&[("w1", 1)]), Duration::from_secs(10))
        .await;
    let seq = || redis.cmd::<Option<String>>(&["GET", "phx:ps:{room:stall}"]);
    let reaped_at: u64 = seq().and_then(|s| s.parse().ok()).expect("numbered reap");

    // Back: the node writes u1 again and broadcasts that change with the topic's next
    // number, so it reaches the other node's watcher in order and no snapshot read before
    // it can take it back.
    stalled.signal("CONT");
    view.converge(&mut w1, &both, Duration::from_secs(10)).await;
    let repaired_at: u64 = seq().and_then(|s| s.parse().ok()).expect("numbered repair");
    assert!(
        repaired_at > reaped_at,
        "the repair was not numbered: {repaired_at} after the reap's {reaped_at}"
    );
    drop(u1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_removes_this_nodes_stale_presences_and_broadcasts_their_leaves() {
    let redis = RedisServer::start();
    let [node] = TestServer::cluster(&redis, |_| {}).await;
    let mut w = node.v2("user_id=w").await;
    w.join("1", "room:ghost").await;
    View::default()
        .converge(&mut w, &counts(&[("w", 1)]), Duration::from_secs(5))
        .await;
    // A presence of this node that its table no longer has (a batch that ran late, say).
    let nodes: Vec<String> = redis.cmd(&["SMEMBERS", "phx:nodes"]);
    let [me] = &nodes[..] else {
        panic!("one node registered: {nodes:?}")
    };
    let ghost = format!("{me}|ghostref");
    let _: i64 = redis.cmd(&[
        "HSET",
        "phx:p:{room:ghost}",
        &ghost,
        r#"{"key":"ghost","meta":{"phx_ref":"ghostref"}}"#,
    ]);
    // Its heartbeat key lost: the next heartbeat repairs its topics.
    let _: i64 = redis.cmd(&["DEL", &format!("phx:n:{{{me}}}:hb")]);
    let diff = w
        .recv_match("the ghost's leave", Duration::from_secs(5), |v| {
            v[3] == "presence_diff" && v[4]["leaves"]["ghost"]["metas"][0]["phx_ref"] == "ghostref"
        })
        .await;
    assert!(diff.is_some(), "no presence_diff with the ghost's leave");
    let fields: Vec<String> = redis.cmd(&["HKEYS", "phx:p:{room:ghost}"]);
    assert!(
        !fields.contains(&ghost),
        "the ghost is still there: {fields:?}"
    );
    assert_eq!(fields.len(), 1, "w's presence stays: {fields:?}");
}
