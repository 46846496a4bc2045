//! Count-only presence (`presence = "counts"`): members get `presence_count`, never the list,
//! exact cluster-wide and at most once per interval.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::support::http::http;
use crate::support::redis_server::RedisServer;
use crate::support::{Client, TestServer};

const KEY: &str = "test-api-key";
const INTERVAL_MS: u64 = 200;
const TOPIC: &str = "big:room";

fn counting(s: &mut phx_gateway::config::Settings) {
    let mut r = phx_gateway::config::default_routes().remove(2);
    r.topic = "big:*".into();
    r.presence = phx_gateway::config::PresenceMode::Counts;
    r.presence_count_interval_ms = INTERVAL_MS;
    r.history_size = 0;
    s.routes.insert(0, r);
    s.api.key = Some(KEY.into());
}

/// What one member saw.
struct Seen {
    counts: usize,
    last: Value,
}

/// Reads `c`'s frames until a `presence_count` equals `want` (within 15 s); panics on a
/// member list (`presence_state`/`presence_diff`) or a close.
async fn read_until(c: &mut Client, want: &Value) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Seen {
        counts: 0,
        last: Value::Null,
    };
    while seen.last != *want {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = match c.recv_within(left).await {
            Some(crate::support::client::Received::Text(t)) => {
                serde_json::from_str::<Value>(&t).expect("JSON frame")
            }
            other => panic!("want {want}, last {}: got {other:?}", seen.last),
        };
        match frame[3].as_str() {
            Some("presence_count") => {
                seen.counts += 1;
                seen.last = frame[4].clone();
                assert_eq!(frame[2], TOPIC);
            }
            Some("presence_state" | "presence_diff") => {
                panic!("a counting room's member got the list: {frame}")
            }
            _ => {}
        }
    }
    seen
}

async fn join(url: String) -> Client {
    let mut c = Client::connect(&url).await;
    let reply = c.join("1", TOPIC).await;
    assert_eq!(reply[4]["status"], "ok", "{reply}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counting_room_gives_every_member_the_exact_count_and_never_the_list() {
    const N: usize = 300;
    let redis = RedisServer::start();
    let [a, b] = TestServer::cluster(&redis, counting).await;
    let nodes = [&a, &b];
    let started = Instant::now();
    // N users over two nodes, joining 50 at a time, and one user ("twin") on both.
    let mut members: Vec<(usize, Client)> = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let joins: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let url = nodes[i % 2].ws_url(&format!("vsn=2.0.0&user_id=u{i}"));
                tokio::spawn(async move { (i % 2, join(url).await) })
            })
            .collect();
        for j in joins {
            members.push(j.await.expect("member joined"));
        }
    }
    for (node, srv) in nodes.iter().enumerate() {
        members.push((node, join(srv.ws_url("vsn=2.0.0&user_id=twin")).await));
    }
    let want = json!({"users": N + 1, "connections": N + 2});
    let readers: Vec<_> = members
        .into_iter()
        .map(|(node, mut c)| {
            let want = want.clone();
            tokio::spawn(async move {
                let seen = read_until(&mut c, &want).await;
                (node, c, seen)
            })
        })
        .collect();
    let mut members = Vec::new();
    for r in readers {
        let (node, c, seen) = r.await.expect("every member reaches the exact count");
        // At most one count per interval since the storm began (and one on its join).
        let bound = started.elapsed().as_millis() as usize / INTERVAL_MS as usize + 2;
        assert!(
            seen.counts <= bound,
            "{} presence_count events in {:?}: more than one per {INTERVAL_MS} ms",
            seen.counts,
            started.elapsed()
        );
        members.push((node, c));
    }
    // The server API counts the same room, from either node.
    for srv in nodes {
        let (status, count) = http(
            srv.addr,
            "GET",
            &format!("/api/v1/presence/{TOPIC}/count"),
            Some(KEY),
            None,
        )
        .await;
        assert_eq!((status, &count), (200, &want));
    }
    let (_, list) = http(
        a.addr,
        "GET",
        &format!("/api/v1/presence/{TOPIC}?limit=1000"),
        Some(KEY),
        None,
    )
    .await;
    assert_eq!(
        list["presences"].as_object().map(|m| m.len()),
        Some(N + 1),
        "the list of a counting room is still there for the backend"
    );

    // Every member of node B leaves at once: node A's members converge on what is left.
    let (mut stay, gone): (Vec<_>, Vec<_>) = members.into_iter().partition(|(n, _)| *n == 0);
    drop(gone);
    let left = N / 2 + 1; // node A's users, the twin included (once, on A)
    let want = json!({"users": left, "connections": left});
    for (_, c) in &mut stay {
        read_until(c, &want).await;
    }
}

#[tokio::test]
async fn a_lone_member_counts_itself_and_leaving_empties_the_room() {
    let srv = TestServer::start(counting);
    let mut first = join(srv.ws_url("vsn=2.0.0&user_id=solo")).await;
    // The count on join may precede its own track; the next one holds it.
    read_until(&mut first, &json!({"users": 1, "connections": 1})).await;
    // A watcher without a presence key counts the others only.
    let mut watcher = join(srv.ws_url("vsn=2.0.0")).await;
    read_until(&mut watcher, &json!({"users": 1, "connections": 1})).await;
    first.close().await;
    read_until(&mut watcher, &json!({"users": 0, "connections": 0})).await;
    // The counting companion is not a topic clients can join.
    let mut probe = srv.v2("").await;
    let reply = probe.join("1", "phx_internal:count:big:room").await;
    assert_eq!(reply[4]["status"], "error", "{reply}");
}
