//! Presence over real sockets: the guide's Alice/Bob scenario, updates and departures.

mod support;

use serde_json::json;
use support::presence_view::View;
use support::{Client, TestServer};

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
