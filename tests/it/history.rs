//! History replay racing live traffic: joiners that ask for the topic's whole history while
//! a publisher sends as fast as it can must each get every message exactly once, in order
//! (the replay and the live stream meet at the gate), on one node and on two nodes over
//! Redis.

use std::time::Duration;

use phx_gateway::config::{RouteSettings, Settings};
use serde_json::{json, Value};

use crate::support::redis_server::RedisServer;
use crate::support::{Client, Received, TestServer};

/// Messages the publisher sends; the history keeps them all.
const TOTAL: u64 = 400;

fn hist_route() -> RouteSettings {
    let mut r = phx_gateway::config::default_routes().remove(2);
    r.topic = "hist:*".into();
    r.presence_key = None;
    r.presence_meta = vec![];
    r.presence_update_event = None;
    r.broadcast = vec!["new_msg".into()];
    r.broadcast_from = vec![];
    r.history_size = 1000;
    r.history_ttl_s = 60;
    r
}

fn routes(s: &mut Settings) {
    s.routes = vec![hist_route()];
}

/// Reads `new_msg` numbers (and their refs) until `TOTAL` arrived or nothing comes for 5 s.
async fn read_all(c: &mut Client) -> (Vec<u64>, Vec<String>) {
    let mut got = Vec::new();
    let mut refs = Vec::new();
    while (got.len() as u64) < TOTAL {
        let Some(Received::Text(t)) = c.recv_within(Duration::from_secs(5)).await else {
            break;
        };
        let v: Value = serde_json::from_str(&t).expect("json");
        if v[3] == "new_msg" {
            got.push(v[4]["n"].as_u64().expect("n"));
            refs.push(v[1].as_str().unwrap_or_default().to_owned());
        }
    }
    (got, refs)
}

async fn race(publisher_url: String, joiner_urls: Vec<String>) {
    let topic = "hist:race";
    let mut publisher = Client::connect(&publisher_url).await;
    publisher.join("1", topic).await;
    let sender = tokio::spawn(async move {
        for n in 0..TOTAL {
            publisher
                .send(json!(["1", format!("p{n}"), topic, "new_msg", {"n": n}]))
                .await;
            // At full speed, but within the channel's inbox (128): wait for every 50th reply.
            if n % 50 == 49 {
                let r = format!("p{n}");
                publisher
                    .recv_until("publish reply", |v| v[1] == r.as_str())
                    .await;
            }
        }
        publisher
    });
    // Joiners arrive while the publisher runs, each asking for everything kept.
    let mut joiners = Vec::new();
    for (i, url) in joiner_urls.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(3 * i as u64)).await;
        let mut c = Client::connect(url).await;
        c.send(json!(["1", "1", topic, "phx_join", {"history": {"last": 1000}}]))
            .await;
        let reply = c
            .recv_until("join reply", |v| v[1] == "1" && v[3] == "phx_reply")
            .await;
        assert_eq!(reply[4]["status"], "ok", "{reply}");
        assert_eq!(
            reply[4]["response"]["history"]["recovered"], true,
            "{reply}"
        );
        joiners.push(c);
    }
    let _publisher = sender.await.expect("publisher");
    for (i, c) in joiners.iter_mut().enumerate() {
        let (got, refs) = read_all(c).await;
        let want: Vec<u64> = (0..TOTAL).collect();
        assert_eq!(
            got, want,
            "joiner {i}: every message exactly once, in order"
        );
        assert!(
            refs.iter().all(|r| r.contains(':') && r.contains('-')),
            "joiner {i}: every broadcast carries a position: {:?}",
            &refs[..3]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_racing_live_traffic_on_one_node() {
    let server = TestServer::start(routes);
    let urls = (0..12).map(|_| server.ws_url("vsn=2.0.0")).collect();
    race(server.ws_url("vsn=2.0.0"), urls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_racing_live_traffic_over_redis() {
    let redis = RedisServer::start();
    let [n1, n2] = TestServer::cluster(&redis, routes).await;
    // Joiners on both nodes; the publisher on the first.
    let urls = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                n1.ws_url("vsn=2.0.0")
            } else {
                n2.ws_url("vsn=2.0.0")
            }
        })
        .collect();
    race(n1.ws_url("vsn=2.0.0"), urls).await;
    let stream: i64 = redis.cmd(&["XLEN", "phx:h:{hist:race}"]);
    assert_eq!(stream as u64, TOTAL, "one stream entry per message");
}
