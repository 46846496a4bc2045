//! Test support: real gateways (in-process or as processes), clients, Redis, a webhook
//! backend, and the process's one log subscriber.

pub(crate) mod backend;
pub(crate) mod client;
pub(crate) mod http;
pub(crate) mod load;
pub(crate) mod logs;
pub(crate) mod node_pair;
pub(crate) mod presence_view;
pub(crate) mod process;
pub(crate) mod redis_server;
pub(crate) mod redis_topology;
pub(crate) mod server;

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use client::{Client, Received};
pub(crate) use server::TestServer;

/// Turns history off on every route: for tests of Phoenix-exact frames (a broadcast's ref
/// is null without history) and of local delivery that never waits for Redis.
pub(crate) fn without_history(s: &mut phx_gateway::config::Settings) {
    for r in &mut s.routes {
        r.history_size = 0;
    }
}

/// The configuration file of [`without_history`] for gateway processes.
pub(crate) const NO_HISTORY_CONFIG: &str = "tests/fixtures/no-history.toml";

/// How long any single expectation may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub(crate) async fn poll(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Polls `cond` every 20 ms until it holds, or panics with `what` after `timeout`.
pub(crate) async fn wait_until(what: &str, timeout: Duration, cond: impl AsyncFnMut() -> bool) {
    assert!(
        poll(timeout, cond).await,
        "timed out after {timeout:?} waiting for: {what}"
    );
}

/// A free loopback port (bound and released; the caller retries on a clash).
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The value of `series` (name and labels, exactly) in a Prometheus text page; 0 if absent.
pub(crate) fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The value of `series` in this process's metrics (in-process gateways), 0 if absent.
/// Every test of the binary counts into them: compare with a value read before, never with
/// an absolute one.
pub(crate) fn process_metric(series: &str) -> f64 {
    metric(&phx_gateway::metrics::render(), series)
}

/// Asserts a V2 text frame equals the given JSON text exactly (byte for byte).
macro_rules! assert_frame {
    ($client:expr, $expected:expr) => {{
        let got = $client.recv_text().await;
        assert_eq!(got, $expected);
    }};
}
