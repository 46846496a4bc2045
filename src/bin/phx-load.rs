//! `phx-load`: a Phoenix V2 load generator for phx-gateway (or any Phoenix server).
//!
//! Scenario `connect`: opens N sockets at a given rate, each joined to one of K topics, holds
//! them idle (heartbeating like phoenix.js), and reports connect+join latency percentiles,
//! joins per second, and the server's resident memory per socket (from /proc/PID/status).
//! Client sockets are spread over several loopback source addresses so that N can exceed
//! one address's ephemeral port range.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "phx-load", about = "Phoenix Channels load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N idle sockets joined to K topics; report join latency and server RSS per socket.
    Connect(ConnectArgs),
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:4000")]
    addr: SocketAddr,
    /// WebSocket path and fixed params.
    #[arg(long, default_value = "/socket/websocket?vsn=2.0.0")]
    path: String,
    /// Number of sockets.
    #[arg(long, short = 'n', default_value_t = 1000)]
    sockets: usize,
    /// Number of topics; socket i joins `<prefix><i % topics>`.
    #[arg(long, short = 'k', default_value_t = 100)]
    topics: usize,
    /// Topic prefix (e.g. `fan:` for no presence, `room:` for presence).
    #[arg(long, default_value = "fan:")]
    topic_prefix: String,
    /// Send `user_id=u<i % users>` so presence tracks sockets (with `room:` topics).
    #[arg(long)]
    users: Option<usize>,
    /// Connects started per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Number of loopback source addresses (127.0.0.1 .. 127.0.0.N).
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Seconds to hold the sockets after the last join.
    #[arg(long, default_value_t = 3)]
    hold: u64,
    /// PID of the server, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_seconds_self() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn one_socket(
    args: Arc<ConnectArgs>,
    i: usize,
    joined: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let src: IpAddr = format!("127.0.0.{}", 1 + (i % usize::from(args.sources.max(1))))
        .parse()
        .map_err(|e| format!("{e}"))?;
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = sock
        .connect(args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut url = format!("ws://{}{}", args.addr, args.path);
    if let Some(users) = args.users {
        url.push_str(&format!("&user_id=u{}", i % users.max(1)));
    }
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let topic = format!("{}{}", args.topic_prefix, i % args.topics.max(1));
    ws.send(Message::text(format!(
        r#"["1","1","{topic}","phx_join",{{}}]"#
    )))
    .await
    .map_err(|e| e.to_string())?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(r#"["1","1""#) => {
                if !t.contains(r#""status":"ok""#) {
                    return Err(format!("join refused: {t}"));
                }
                break;
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("closed before the join reply: {other:?}")),
        }
    }
    let latency = start.elapsed();
    joined.fetch_add(1, Ordering::Relaxed);
    // Hold: heartbeat every 30 s like phoenix.js, drain whatever arrives.
    let mut hb = tokio::time::interval(Duration::from_secs(30));
    hb.tick().await;
    let mut r = 2u64;
    let released = release.notified();
    tokio::pin!(released);
    loop {
        tokio::select! {
            _ = &mut released => break,
            _ = hb.tick() => {
                r += 1;
                let _ = ws.send(Message::text(format!(r#"[null,"{r}","phoenix","heartbeat",{{}}]"#))).await;
            }
            msg = ws.next() => if msg.is_none() { return Err("closed while holding".into()) },
        }
    }
    let _ = ws.close(None).await;
    Ok(latency)
}

async fn connect(args: ConnectArgs) {
    let args = Arc::new(args);
    let rss_before = args.server_pid.and_then(rss_kib);
    let joined = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let cpu_before = cpu_seconds_self();
    let mut tasks = Vec::with_capacity(args.sockets);
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    for i in 0..args.sockets {
        tokio::time::sleep_until(next).await;
        next += gap;
        tasks.push(tokio::spawn(one_socket(
            args.clone(),
            i,
            joined.clone(),
            release.clone(),
        )));
    }
    while joined.load(Ordering::Relaxed) < args.sockets && tasks.iter().any(|t| !t.is_finished()) {
        if started.elapsed() > Duration::from_secs(300) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_phase = started.elapsed();
    let n_joined = joined.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    release.notify_waiters();
    let mut latencies = Vec::new();
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.push(l),
            Ok(Err(e)) => *errors.entry(e.chars().take(80).collect()).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    latencies.sort();
    println!(
        "scenario connect: {} sockets over {} topics ({}), rate {}/s, {} source addresses",
        args.sockets, args.topics, args.topic_prefix, args.rate, args.sources
    );
    println!(
        "joined: {n_joined} in {:.2} s = {:.0} joins/s",
        join_phase.as_secs_f64(),
        n_joined as f64 / join_phase.as_secs_f64()
    );
    println!(
        "connect+join latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        println!(
            "server RSS: {:.1} MiB before, {:.1} MiB with {n_joined} sockets = {:.2} KiB per socket",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            a.saturating_sub(b) as f64 / n_joined.max(1) as f64
        );
    }
    println!("load tool CPU: {:.1} s", cpu_seconds_self() - cpu_before);
    for (e, n) in errors {
        println!("errors: {n} x {e}");
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.scenario {
        Scenario::Connect(args) => runtime.block_on(connect(args)),
    }
}
