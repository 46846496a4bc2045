//! Gateways on a real Redis Cluster (3 masters + 3 replicas) and on a Sentinel-watched
//! primary: sharded subscriptions on the owning shard, and the failover guarantee
//! (docs/redis.md) with the primary killed for real under traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::presence_view::{counts, View};
use crate::support::process::NodeProcess;
use crate::support::redis_topology::{RedisCluster, RedisSentinels, TestCa};
use crate::support::{metric, wait_until, Client, Received, TestServer, WAIT};

/// Short presence timings, as the other cluster tests use.
const TIMINGS: [(&str, &str); 4] = [
    ("PHX_GATEWAY__REDIS__HEARTBEAT_MS", "300"),
    ("PHX_GATEWAY__REDIS__DOWN_MS", "1500"),
    ("PHX_GATEWAY__REDIS__UNSUBSCRIBE_DELAY_MS", "100"),
    ("PHX_GATEWAY__REDIS__COMMAND_TIMEOUT_MS", "1000"),
];

/// A node process on a Redis Cluster.
fn cluster_node(cluster: &RedisCluster, name: &str) -> NodeProcess {
    let urls = cluster.urls();
    let mut env = vec![("PHX_GATEWAY__REDIS__CLUSTER_URLS", urls.as_str())];
    env.extend_from_slice(&TIMINGS);
    NodeProcess::start("", name, &env)
}

/// A node process on the Sentinels' primary.
fn sentinel_node(s: &RedisSentinels, name: &str) -> NodeProcess {
    let urls = s.urls();
    let mut env = vec![
        ("PHX_GATEWAY__REDIS__SENTINEL_URLS", urls.as_str()),
        (
            "PHX_GATEWAY__REDIS__SENTINEL_MASTER",
            RedisSentinels::MASTER,
        ),
    ];
    env.extend_from_slice(&TIMINGS);
    NodeProcess::start("", name, &env)
}

/// The Redis channel of a topic (default key prefix).
fn channel(topic: &str) -> String {
    format!("phx:b:{{{topic}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subscriptions_are_sharded_on_the_owning_master_only() {
    let cluster = RedisCluster::start();
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let tweak = |s: &mut phx_gateway::config::Settings| {
        s.redis.url = None;
        s.redis.cluster_urls = urls.iter().map(|u| u.as_str().into()).collect();
    };
    let n1 = TestServer::start_node("", tweak).await;
    let n2 = TestServer::start_node("", tweak).await;
    // The key-layout migration ran on every master: each records its version.
    for m in cluster.masters() {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.port == m.port)
            .expect("master");
        let keys: Vec<String> = node.cmd(&["KEYS", "phx:schema*"]);
        assert_eq!(keys.len(), 1, "master {}: {keys:?}", m.port);
        let version: String = node.cmd(&["HGET", &keys[0], "version"]);
        assert_eq!(version, "1");
    }
    let topic = "room:sharded";
    let mut a = n1.v2("user_id=alice").await;
    let mut b = n2.v2("user_id=bob").await;
    a.join("1", topic).await;
    b.join("1", topic).await;

    let owner = cluster.master_of(&channel(topic));
    for m in cluster.masters() {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.port == m.port)
            .expect("master");
        let sharded: Vec<String> = node.cmd(&["PUBSUB", "SHARDCHANNELS", "phx:*"]);
        let classic: Vec<String> = node.cmd(&["PUBSUB", "CHANNELS", "phx:*"]);
        assert!(
            classic.is_empty(),
            "no classic subscription in cluster mode: {classic:?}"
        );
        if m.id == owner.id {
            assert!(
                sharded.contains(&channel(topic)),
                "the owning master: {sharded:?}"
            );
        } else {
            assert!(
                !sharded.contains(&channel(topic)),
                "master {} holds {sharded:?}",
                m.port
            );
        }
    }
    // Both nodes subscribed there: 2 sharded subscribers on the owner.
    let owner_node = cluster
        .nodes
        .iter()
        .find(|n| n.port == owner.port)
        .expect("owner");
    let numsub: Vec<Value> = owner_node
        .cmd::<Vec<redis::Value>>(&["PUBSUB", "SHARDNUMSUB", &channel(topic)])
        .into_iter()
        .map(|v| match v {
            redis::Value::Int(n) => json!(n),
            _ => Value::Null,
        })
        .collect();
    assert_eq!(numsub.get(1), Some(&json!(2)), "one subscription per node");

    // Broadcasts and presence cross nodes.
    a.send(json!(["1", "m1", topic, "new_msg", {"body": "hi"}]))
        .await;
    let got = b
        .recv_until("new_msg on node 2", |v| v[3] == "new_msg")
        .await;
    assert_eq!(got[4], json!({"body": "hi"}));
    let mut view = View::default();
    view.converge(
        &mut b,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(5),
    )
    .await;

    // The last leave on both nodes drops the subscriptions.
    a.close().await;
    b.close().await;
    wait_until("sharded subscriptions dropped", WAIT, async || {
        owner_node
            .cmd::<Vec<String>>(&["PUBSUB", "SHARDCHANNELS", "phx:*"])
            .iter()
            .all(|c| !c.contains("room:sharded"))
    })
    .await;
}

/// What a receiver saw of a numbered stream of `new_msg`s.
struct Stream {
    /// (n, when received)
    got: Vec<(u64, Instant)>,
    /// When each n was sent.
    sent: Arc<Mutex<Vec<Instant>>>,
}

impl Stream {
    /// Checks at-most-once in order, and returns how long delivery stopped after `cut`
    /// (from `cut` to the first message received after it that was sent after it).
    fn outage_after(&self, cut: Instant) -> Duration {
        for w in self.got.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "duplicate or reordered: {} then {}",
                w[0].0,
                w[1].0
            );
        }
        let sent = self.sent.lock().expect("sent");
        let resumed = self
            .got
            .iter()
            .find(|(n, _)| sent.get(*n as usize).is_some_and(|t| *t > cut))
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("no message sent after the cut ever arrived"));
        resumed.duration_since(cut)
    }

    fn lost(&self) -> usize {
        self.sent.lock().expect("sent").len() - self.got.len()
    }
}

/// Sends `new_msg {n}` on `topic` every 20 ms from `sender` until `stop`.
fn send_numbered(
    mut sender: Client,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Instant>>>, tokio::task::JoinHandle<Client>) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    let task = tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            log.lock().expect("sent").push(Instant::now());
            sender
                .send(json!(["1", format!("s{n}"), topic, "new_msg", {"n": n}]))
                .await;
            n += 1;
            // Replies are not needed; keep the socket's inbound side drained.
            while sender.recv_within(Duration::ZERO).await.is_some() {}
        }
        sender
    });
    (sent, task)
}

/// Reads `receiver` until `until`, recording numbered messages and applying presence.
async fn receive_until(
    receiver: &mut Client,
    view: &mut View,
    got: &mut Vec<(u64, Instant)>,
    until: Instant,
) {
    while Instant::now() < until {
        let wait = until.saturating_duration_since(Instant::now());
        let Some(frame) = receiver
            .recv_within(wait.min(Duration::from_millis(200)))
            .await
        else {
            continue;
        };
        let Received::Text(text) = frame else {
            panic!("receiver closed: {frame:?}");
        };
        let v: Value = serde_json::from_str(&text).expect("json");
        if v[3] == "new_msg" {
            if let Some(n) = v[4]["n"].as_u64() {
                got.push((n, Instant::now()));
            }
        } else {
            view.apply(&v);
        }
    }
}

/// The failover scenario on two gateway processes: traffic from node 1 to node 2 on
/// `topic`, presence on both; `kill` takes the primary down for real. Returns the outage.
async fn failover_under_traffic(
    n1: &mut NodeProcess,
    n2: &mut NodeProcess,
    topic: &'static str,
    kill: impl FnOnce(),
) -> (Duration, Stream) {
    let mut sender = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=alice")).await;
    let mut receiver = Client::connect(&n2.ws_url("vsn=2.0.0&user_id=bob")).await;
    sender.join("1", topic).await;
    receiver.join("1", topic).await;
    let mut view = View::default();
    view.converge(
        &mut receiver,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(5),
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, task) = send_numbered(sender, topic, stop.clone());
    let mut got = Vec::new();
    receive_until(
        &mut receiver,
        &mut view,
        &mut got,
        Instant::now() + Duration::from_secs(1),
    )
    .await;
    assert!(!got.is_empty(), "traffic flows before the kill");
    let cut = Instant::now();
    kill();
    // Deliveries must resume well within 10 s; keep going a little after that.
    receive_until(
        &mut receiver,
        &mut view,
        &mut got,
        cut + Duration::from_secs(12),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let _sender = task.await.expect("sender");
    receive_until(
        &mut receiver,
        &mut view,
        &mut got,
        Instant::now() + Duration::from_millis(500),
    )
    .await;
    let stream = Stream { got, sent };
    let outage = stream.outage_after(cut);

    assert!(
        n1.is_running() && n2.is_running(),
        "no gateway exits when Redis fails over"
    );
    // Every message that never arrived is counted by the receiving node (gaps in the
    // sender's numbering of the topic; presence diffs lost on the topic count too).
    let counted = n2.admin("/metrics").await.map_or(0.0, |(_, page)| {
        metric(&page, "phx_gateway_redis_lost_total")
    });
    assert!(
        counted as usize >= stream.lost(),
        "every drop is counted on the receiving node: {counted} counted, {} new_msg lost",
        stream.lost()
    );
    // Presence converges to the truth afterwards.
    view.converge(
        &mut receiver,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(10),
    )
    .await;
    (outage, stream)
}

/// Presence fields of `topic` in `node`'s Redis: one per live gateway node here.
fn presence_nodes(fields: Vec<String>) -> Vec<String> {
    let mut nodes: Vec<String> = fields
        .iter()
        .filter_map(|f| f.split('|').next())
        .map(|n| n.rsplit_once('-').map_or(n, |(name, _)| name).to_owned())
        .collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_traffic_resumes_within_failover_plus_five_seconds() {
    let mut cluster = RedisCluster::start();
    let mut n1 = cluster_node(&cluster, "cf1");
    let mut n2 = cluster_node(&cluster, "cf2");
    let topic = "room:failover";
    let doomed = cluster.master_of(&channel(topic));
    let (outage, stream) = failover_under_traffic(&mut n1, &mut n2, topic, || {
        cluster.server(doomed.port).kill();
    })
    .await;
    let dropped = n1.admin("/metrics").await.map_or(0.0, |(_, page)| {
        metric(&page, "phx_gateway_redis_publish_dropped_total")
    });
    eprintln!(
        "cluster master kill: delivery resumed after {outage:?}; {} of {} messages lost, {dropped} publishes counted as dropped",
        stream.lost(),
        stream.sent.lock().expect("sent").len()
    );
    // cluster-node-timeout is 2 s: the guarantee is failover time + 5 s, well under 10 s.
    assert!(outage < Duration::from_secs(10), "outage {outage:?}");
    cluster.wait_ok();
    let promoted = cluster.master_of(&channel(topic));
    assert_ne!(promoted.port, doomed.port, "a replica took over");
    // No presence of a live node missing in the new master.
    let presence_key = format!("phx:p:{{{topic}}}");
    wait_until(
        "both nodes' presences in the promoted master",
        WAIT,
        async || {
            let fields: Vec<String> = cluster.server(promoted.port).cmd(&["HKEYS", &presence_key]);
            presence_nodes(fields) == ["cf1", "cf2"]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_under_traffic_resumes_within_failover_plus_five_seconds() {
    let mut sentinels = RedisSentinels::start();
    let mut n1 = sentinel_node(&sentinels, "sf1");
    let mut n2 = sentinel_node(&sentinels, "sf2");
    let topic = "room:sentinel";
    let old = sentinels.primary.port;
    let (outage, stream) = failover_under_traffic(&mut n1, &mut n2, topic, || {
        sentinels.primary.kill();
    })
    .await;
    eprintln!(
        "sentinel master kill: delivery resumed after {outage:?}; {} of {} messages lost",
        stream.lost(),
        stream.sent.lock().expect("sent").len()
    );
    // down-after-milliseconds 1000 plus the election: about 2-3 s; + 5 s.
    assert!(outage < Duration::from_secs(9), "outage {outage:?}");
    assert_eq!(
        sentinels.primary_port(),
        Some(sentinels.replica.port),
        "the Sentinels promoted the replica (was {old})"
    );
    let presence_key = format!("phx:p:{{{topic}}}");
    wait_until(
        "both nodes' presences in the promoted primary",
        WAIT,
        async || {
            let fields: Vec<String> = sentinels.replica.cmd(&["HKEYS", &presence_key]);
            presence_nodes(fields) == ["sf1", "sf2"]
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_migration_of_a_busy_topic_needs_no_restart() {
    let cluster = RedisCluster::start();
    let mut n1 = cluster_node(&cluster, "mg1");
    let mut n2 = cluster_node(&cluster, "mg2");
    let topic = "room:migrating";
    let slot = cluster.slot(&channel(topic));
    let from = cluster.master_of(&channel(topic));
    let to = cluster
        .masters()
        .into_iter()
        .find(|m| m.id != from.id)
        .expect("another master");
    let (outage, stream) = failover_under_traffic(&mut n1, &mut n2, topic, || {
        cluster.move_slot(slot, &to);
    })
    .await;
    eprintln!(
        "slot migration: delivery resumed after {outage:?}; {} of {} messages lost",
        stream.lost(),
        stream.sent.lock().expect("sent").len()
    );
    assert!(outage < Duration::from_secs(5), "outage {outage:?}");
    assert_eq!(
        cluster.master_of(&channel(topic)).id,
        to.id,
        "the slot moved"
    );
    let owner = cluster
        .nodes
        .iter()
        .find(|n| n.port == to.port)
        .expect("owner");
    let sharded: Vec<String> = owner.cmd(&["PUBSUB", "SHARDCHANNELS", &channel(topic)]);
    assert_eq!(
        sharded,
        vec![channel(topic)],
        "subscriptions followed the slot"
    );
    let numsub: Vec<redis::Value> = owner.cmd(&["PUBSUB", "SHARDNUMSUB", &channel(topic)]);
    assert_eq!(numsub.get(1), Some(&redis::Value::Int(2)), "both nodes");
    let old = cluster
        .nodes
        .iter()
        .find(|n| n.port == from.port)
        .expect("old owner");
    let left: Vec<String> = old.cmd(&["PUBSUB", "SHARDCHANNELS", &channel(topic)]);
    assert!(left.is_empty(), "nothing left on the old owner: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_killed_gateway_s_users_leave_and_nothing_of_it_stays_in_any_shard() {
    let cluster = RedisCluster::start();
    let mut doomed = cluster_node(&cluster, "gdoomed");
    let survivor = cluster_node(&cluster, "gsurvivor");
    let mut watcher = Client::connect(&survivor.ws_url("vsn=2.0.0")).await;
    // Several topics, so that the dead node's keys spread over shards.
    let topics = [
        "room:k1", "room:k2", "room:k3", "room:k4", "room:k5", "room:k6",
    ];
    watcher.join("1", topics[0]).await;
    let mut victims = Vec::new();
    for topic in topics {
        let mut c = Client::connect(&doomed.ws_url("vsn=2.0.0&user_id=victim")).await;
        c.join("1", topic).await;
        victims.push(c);
    }
    let mut view = View::default();
    view.converge(
        &mut watcher,
        &counts(&[("victim", 1)]),
        Duration::from_secs(5),
    )
    .await;
    let spread: std::collections::HashSet<String> = topics
        .iter()
        .map(|t| cluster.master_of(&format!("phx:p:{{{t}}}")).id)
        .collect();
    assert!(spread.len() > 1, "the test's topics live on several shards");

    let killed_at = Instant::now();
    doomed.kill9();
    // down_ms 1.5 s + one heartbeat 0.3 s, with slack for the machine.
    view.converge(&mut watcher, &counts(&[]), Duration::from_secs(6))
        .await;
    let took = killed_at.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "users must not leave before the down period ({took:?})"
    );
    // After the reap lock's TTL nothing of the dead node is left in any shard.
    wait_until(
        "no key or field of the dead node in any shard",
        Duration::from_secs(8),
        async || {
            let keys: Vec<Vec<String>> = cluster.on_masters(&["KEYS", "*gdoomed*"]);
            let fields = topics.iter().any(|t| {
                let key = format!("phx:p:{{{t}}}");
                let owner = cluster.master_of(&key);
                let node = cluster
                    .nodes
                    .iter()
                    .find(|n| n.port == owner.port)
                    .expect("owner");
                node.cmd::<Vec<String>>(&["HKEYS", &key])
                    .iter()
                    .any(|f| f.starts_with("gdoomed"))
            });
            keys.iter().all(Vec::is_empty) && !fields
        },
    )
    .await;
    let nodes: Vec<Vec<String>> = cluster.on_masters(&["KEYS", "*"]);
    eprintln!("keys left after the reap: {nodes:?}");
}

/// In-process nodes on `cluster`, with `tweak` applied after the topology.
async fn cluster_servers<const N: usize>(
    cluster: &RedisCluster,
    tweak: impl Fn(&mut phx_gateway::config::Settings),
) -> [TestServer; N] {
    let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
    let mut nodes = Vec::new();
    for _ in 0..N {
        nodes.push(
            TestServer::start_node("", |s| {
                s.redis.url = None;
                s.redis.cluster_urls = urls.iter().map(|u| u.as_str().into()).collect();
                tweak(s);
            })
            .await,
        );
    }
    match nodes.try_into() {
        Ok(nodes) => nodes,
        Err(_) => unreachable!("started {N} nodes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_three_hundred_joiners_converge_and_the_shard_holds_exactly_the_live_presences() {
    let cluster = RedisCluster::start();
    let nodes: [TestServer; 3] = cluster_servers(&cluster, |_| {}).await;
    let (live, _clients) = crate::cluster::crowd_converges(&nodes).await;
    let key = "phx:p:{room:crowd}";
    let owner = cluster.master_of(key);
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.port == owner.port)
        .expect("owner");
    let fields: Vec<String> = node.cmd(&["HKEYS", key]);
    assert_eq!(
        fields.len(),
        live,
        "the topic's shard holds exactly the live presences"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_disconnect_by_socket_id_reaches_the_other_node() {
    let cluster = RedisCluster::start();
    let [n1, n2]: [TestServer; 2] =
        cluster_servers(&cluster, |s| s.api.key = Some("k".into())).await;
    let mut bob = n2.v2("user_id=bob").await;
    bob.join("1", "room:c").await;
    let (status, _) = crate::support::http::http(
        n1.addr,
        "POST",
        "/api/v1/disconnect",
        Some("k"),
        Some(&json!({"socket_id": "users_socket:bob"})),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        bob.expect_close().await.0,
        1001,
        "closed from the other node"
    );
}

/// Two gateway processes on `env`: a broadcast and a presence cross nodes.
async fn crosses_nodes(env: &[(&str, &str)], names: [&str; 2]) {
    let mut all = env.to_vec();
    all.extend_from_slice(&TIMINGS);
    let n1 = NodeProcess::start("", names[0], &all);
    let n2 = NodeProcess::start("", names[1], &all);
    let mut a = Client::connect(&n1.ws_url("vsn=2.0.0&user_id=alice")).await;
    let mut b = Client::connect(&n2.ws_url("vsn=2.0.0&user_id=bob")).await;
    a.join("1", "room:auth").await;
    b.join("1", "room:auth").await;
    let mut view = View::default();
    view.converge(
        &mut b,
        &counts(&[("alice", 1), ("bob", 1)]),
        Duration::from_secs(5),
    )
    .await;
    a.send(json!(["1", "m", "room:auth", "new_msg", {"body": "hi"}]))
        .await;
    let got = b
        .recv_until("new_msg on node 2", |v| v[3] == "new_msg")
        .await;
    assert_eq!(got[4], json!({"body": "hi"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_an_acl_user_and_the_default_user_off() {
    let cluster = RedisCluster::start_with_acl("gw", "s3cret");
    let urls = cluster.urls();
    assert!(urls.contains("gw:s3cret@"), "{urls}");
    crosses_nodes(
        &[("PHX_GATEWAY__REDIS__CLUSTER_URLS", &urls)],
        ["acl1", "acl2"],
    )
    .await;
    // The nodes really refuse the default user.
    let no_auth = redis::Client::open(format!("redis://127.0.0.1:{}", cluster.nodes[0].port))
        .expect("client")
        .get_connection()
        .and_then(|mut c| redis::cmd("GET").arg("x").query::<Option<String>>(&mut c));
    assert!(no_auth.is_err(), "the default user is off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_passwords_for_the_data_nodes_and_the_sentinels() {
    let sentinels = RedisSentinels::start_with_passwords("datapw", "sentinelpw");
    let urls = sentinels.urls();
    crosses_nodes(
        &[
            ("PHX_GATEWAY__REDIS__SENTINEL_URLS", &urls),
            (
                "PHX_GATEWAY__REDIS__SENTINEL_MASTER",
                RedisSentinels::MASTER,
            ),
            ("PHX_GATEWAY__REDIS__PASSWORD", "datapw"),
        ],
        ["sp1", "sp2"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_with_a_private_ca() {
    let ca = TestCa::new();
    let cluster = RedisCluster::start_tls(&ca);
    let urls = cluster.urls();
    assert!(urls.starts_with("rediss://"), "{urls}");
    let ca_file = ca.ca_file.to_string_lossy().into_owned();
    crosses_nodes(
        &[
            ("PHX_GATEWAY__REDIS__CLUSTER_URLS", &urls),
            ("PHX_GATEWAY__REDIS__TLS_CA_FILE", &ca_file),
        ],
        ["tls1", "tls2"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_with_a_private_ca() {
    let ca = TestCa::new();
    let sentinels = RedisSentinels::start_tls(&ca);
    let urls = sentinels.urls();
    assert!(urls.starts_with("rediss://"), "{urls}");
    let ca_file = ca.ca_file.to_string_lossy().into_owned();
    crosses_nodes(
        &[
            ("PHX_GATEWAY__REDIS__SENTINEL_URLS", &urls),
            (
                "PHX_GATEWAY__REDIS__SENTINEL_MASTER",
                RedisSentinels::MASTER,
            ),
            ("PHX_GATEWAY__REDIS__TLS_CA_FILE", &ca_file),
        ],
        ["stls1", "stls2"],
    )
    .await;
}
