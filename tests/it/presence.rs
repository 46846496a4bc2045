//! Presence over real sockets: the guide's Alice/Bob scenario, updates and departures.

use std::time::Duration;

use serde_json::json;

use crate::support::presence_view::{join_storm, View};
use crate::support::{Client, TestServer};

async fn join_lobby(c: &mut Client) {
    c.join("1", "room:lobby").await;
}

#[tokio::test]
async fn the_guides_alice_and_bob_scenario() {
    let srv = TestServer::start(|_| {});
    let mut watcher = srv.v2("").await;
    join_lobby(&mut watcher).await;
    let mut view = View::default();
    view.wait_for(&mut watcher, &[]).await;

    let mut alice1 = srv.v2("user_id=Alice").await;
    let mut alice2 = srv.v1("user_id=Alice").await;
    let mut bob = srv.v2("user_id=Bob").await;
    join_lobby(&mut alice1).await;
    alice2.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    join_lobby(&mut bob).await;
    view.wait_for(&mut watcher, &[("Alice", 2), ("Bob", 1)])
        .await;

    // A late joiner's presence_state already holds everyone.
    let mut late = srv.v2("").await;
    late.join("9", "room:lobby").await;
    let state = late
        .recv_until("presence_state", |v| v[3] == "presence_state")
        .await;
    assert_eq!(state[0], "9");
    assert_eq!(state[4]["Alice"]["metas"].as_array().map(Vec::len), Some(2));
    assert_eq!(state[4]["Bob"]["metas"].as_array().map(Vec::len), Some(1));
    let meta = &state[4]["Bob"]["metas"][0];
    assert!(
        meta["online_at"].is_string() && meta["phx_ref"].is_string(),
        "{meta}"
    );

    alice2.close().await;
    view.wait_for(&mut watcher, &[("Alice", 1), ("Bob", 1)])
        .await;
    drop(bob);
    view.wait_for(&mut watcher, &[("Alice", 1)]).await;
    alice1
        .send_text(r#"["1","5","room:lobby","phx_leave",{}]"#)
        .await;
    view.wait_for(&mut watcher, &[]).await;
}

#[tokio::test]
async fn update_sends_one_diff_with_leave_and_join_and_phx_ref_prev() {
    let srv = TestServer::start(|_| {});
    let mut b = srv.v2("user_id=b200").await;
    join_lobby(&mut b).await;
    let own = b
        .recv_until("own join diff", |v| v[3] == "presence_diff")
        .await;
    let first_ref = own[4]["joins"]["b200"]["metas"][0]["phx_ref"].clone();
    b.send_text(r#"["1","3","room:lobby","update_meta",{"status":"away"}]"#)
        .await;
    // The reply comes at once; the diff follows within the presence batch window.
    let reply = b.recv_until("update reply", |v| v[1] == "3").await;
    assert_eq!(reply[4]["status"], "ok");
    let diff = b
        .recv_until("update diff", |v| v[3] == "presence_diff")
        .await;
    let joined = &diff[4]["joins"]["b200"]["metas"][0];
    assert_eq!(joined["status"], "away");
    assert_eq!(joined["phx_ref_prev"], first_ref);
    assert_ne!(joined["phx_ref"], first_ref);
    assert_eq!(diff[4]["leaves"]["b200"]["metas"][0]["phx_ref"], first_ref);
    assert!(diff[4]["leaves"]["b200"]["metas"][0]
        .get("status")
        .is_none());
}

#[tokio::test]
async fn a_crash_or_disconnect_removes_the_presence() {
    let srv = TestServer::start(|_| {});
    let mut watcher = srv.v2("").await;
    join_lobby(&mut watcher).await;
    let mut view = View::default();
    view.wait_for(&mut watcher, &[]).await;
    let mut carol = srv.v2("user_id=carol").await;
    join_lobby(&mut carol).await;
    view.wait_for(&mut watcher, &[("carol", 1)]).await;
    // A malformed frame kills carol's connection: her presence must go.
    carol.send_text("garbage").await;
    carol.expect_close().await;
    view.wait_for(&mut watcher, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_joiner_gets_exactly_the_changes_after_its_snapshot() {
    let srv = TestServer::start(|s| s.presence.diff_batch_ms = 200);
    let url = srv.ws_url("vsn=2.0.0");
    let mut members = join_storm(std::slice::from_ref(&url), "room:storm", 6, Duration::ZERO).await;
    // A later join: every view takes it as the one change after what it holds.
    let mut marker = Client::connect(&format!("{url}&user_id=zz")).await;
    marker.join("1", "room:storm").await;
    let mut want: Vec<(String, usize)> = (0..6).map(|u| (format!("u{u}"), 2)).collect();
    want.push(("zz".into(), 1));
    let want: Vec<(&str, usize)> = want.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    for (c, view) in &mut members {
        view.wait_for(c, &want).await;
    }
}

#[tokio::test]
async fn track_then_state_puts_the_joiners_own_presence_in_its_state() {
    let srv = TestServer::start(|s| {
        for r in &mut s.routes {
            r.presence_order = phx_gateway::config::PresenceOrder::TrackThenState;
        }
    });
    let mut a = srv.v2("user_id=ann").await;
    a.join("1", "room:lobby").await;
    let state = a
        .recv_until("presence_state", |v| v[3] == "presence_state")
        .await;
    let own = state[4]["ann"]["metas"][0]["phx_ref"].clone();
    assert!(own.is_string(), "her own presence is in her state: {state}");
    let mut view = View::strict();
    view.apply(&state);
    let mut b = srv.v2("user_id=ben").await;
    b.join("1", "room:lobby").await;
    // ann's view takes ben's join; a diff repeating her own join would fail the strict view.
    view.wait_for(&mut a, &[("ann", 1), ("ben", 1)]).await;
    let mut bview = View::strict();
    bview.wait_for(&mut b, &[("ann", 1), ("ben", 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_the_queue_bound_never_closes_a_joiner_that_reads() {
    // A room whose presence_state (about 4 KB) is twice the outbound byte bound.
    let srv = TestServer::start(|s| s.socket.outbound_queue_bytes = 2048);
    let mut watcher = srv.v2("").await;
    join_lobby(&mut watcher).await;
    let names: Vec<String> = (0..40)
        .map(|i| format!("member-with-a-long-name-{i:02}"))
        .collect();
    let mut members = Vec::new();
    for name in &names {
        let mut c = srv.v2(&format!("user_id={name}")).await;
        join_lobby(&mut c).await;
        members.push(c);
    }
    let expected: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    View::default().wait_for(&mut watcher, &expected).await;
    // Late joiners, all at once: each gets its join reply, then the big snapshot behind it.
    let joiners = (0..10).map(|i| {
        let srv_url = srv.ws_url(&format!("vsn=2.0.0&user_id=late-{i}"));
        tokio::spawn(async move {
            let mut c = Client::connect(&srv_url).await;
            c.send(json!(["1", "1", "room:lobby", "phx_join", {}]))
                .await;
            let state = c
                .recv_until("presence_state", |v| v[3] == "presence_state")
                .await;
            let users = state[4].as_object().map_or(0, |m| m.len());
            assert!(users >= 40, "the snapshot holds the room: {users} users");
            c.send(json!([null, "h", "phoenix", "heartbeat", {}])).await;
            c.recv_until("heartbeat reply, so still open", |v| v[1] == "h")
                .await;
        })
    });
    for j in joiners.collect::<Vec<_>>() {
        j.await.expect("joiner kept up and stayed connected");
    }
    drop(members);
}
