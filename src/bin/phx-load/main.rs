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

mod presence_view;
mod proc_stats;
mod soak;
use futures_util::{SinkExt, StreamExt};
use presence_view::PresenceView;
use proc_stats::{cpu_seconds_of, cpu_seconds_self, rss_kib};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "phx-load", about = "Phoenix Channels load generator")]
struct Cli {
    /// Runtime worker threads of the load tool (0: one per core). The tool shares the machine
    /// with the server, so fewer threads can leave the server more room.
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N idle sockets joined to K topics; report join latency and server RSS per socket.
    Connect(ConnectArgs),
    /// Closed-loop request/reply: M sockets each push `ping` and wait for the reply, repeatedly.
    Rpc(RpcArgs),
    /// N users join one presence topic (spread over nodes); time until a watcher applying
    /// presence_state/presence_diff like phoenix.js sees all of them, then none after they leave.
    Presence(PresenceArgs),
    /// N subscribers on one topic (spread over several nodes), one publisher at a fixed rate;
    /// report deliveries/s, loss, duplicates, reordering and latency from the scheduled send time.
    Fanout(FanoutArgs),
    /// Many sockets with presence, steady churn and broadcasts for a long time, sampling the
    /// servers' memory, sockets, tasks and presences and Redis's memory (docs/soak.md).
    Soak(soak::SoakArgs),
}

#[derive(clap::Args)]
struct RpcArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:4000")]
    addr: SocketAddr,
    /// Number of sockets.
    #[arg(long, short = 'n', default_value_t = 50)]
    sockets: usize,
    /// Topic (a route that echoes `ping`).
    #[arg(long, default_value = "fan:rpc")]
    topic: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
}

#[derive(clap::Args)]
struct PresenceArgs {
    /// Server addresses; users are spread over them, the watcher uses the first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:4000")]
    addrs: Vec<SocketAddr>,
    /// Number of users.
    #[arg(long, short = 'n', default_value_t = 2000)]
    users: usize,
    /// Presence topic (a route with presence keyed by `user_id`).
    #[arg(long, default_value = "room:presence-load")]
    topic: String,
    /// Number of loopback source addresses.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Most handshakes and joins in flight at once.
    #[arg(long, default_value_t = 500)]
    in_flight: usize,
    /// What the route gives members: `list` (presence_state/diff, read by a watcher like
    /// phoenix.js), `counts` (presence_count, read by every member), `none` (a route without
    /// presence: the baseline for memory).
    #[arg(long, value_enum, default_value = "list")]
    mode: PresenceMode,
    /// PIDs of the servers (comma-separated), to read their CPU time and resident memory.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PresenceMode {
    List,
    Counts,
    None,
}

#[derive(clap::Args)]
struct FanoutArgs {
    /// Server addresses; subscribers are spread over them, the publisher uses the first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:4000")]
    addrs: Vec<SocketAddr>,
    /// Number of subscribers.
    #[arg(long, short = 'n', default_value_t = 100)]
    subscribers: usize,
    /// Topic (a route that broadcasts `new_msg` to all, e.g. `fan:*` in config/bench.toml).
    #[arg(long, default_value = "fan:load")]
    topic: String,
    /// Messages per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds to publish.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Payload padding in bytes.
    #[arg(long, default_value_t = 0)]
    size: usize,
    /// Number of loopback source addresses for subscriber sockets.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Subscribers send `user_id=s<i>`, so that on a presence route (`room:*`) every one of
    /// them is tracked: fan-out in a room with presence.
    #[arg(long)]
    tracked: bool,
    /// Step mode: start at --rate and multiply by --step-factor until a run loses messages or
    /// its p99 exceeds --max-p99-ms; report the highest passing rate.
    #[arg(long)]
    step: bool,
    /// Rate multiplier between steps.
    #[arg(long, default_value_t = 1.25)]
    step_factor: f64,
    /// p99 bound for step mode, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    max_p99_ms: f64,
    /// Node the publisher connects to (default: the first of --addrs); e.g. another node
    /// than the subscribers' to measure cross-node delivery.
    #[arg(long)]
    publish_to: Option<SocketAddr>,
    /// Extra subscribers that join and then never read (with a 4 KiB receive buffer), to
    /// check that stalled clients do not slow the others down. Not counted in deliveries.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Before the run, this many KiB are broadcast to the stalled subscribers alone (on
    /// `<topic>:stalled`), to fill the kernel's socket buffers so that the server's queue for
    /// them is already backing up when the run starts.
    #[arg(long, default_value_t = 4096)]
    stalled_prefill_kib: usize,
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
    /// Prefix of the user ids (`<prefix><i % users>`), e.g. to give each run new users.
    #[arg(long, default_value = "u")]
    user_prefix: String,
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

/// A Phoenix V2 message `[join_ref, ref, topic, event, payload]` as a text frame; serde_json
/// escapes the topic and event, whatever they hold.
fn frame(
    join_ref: Option<&str>,
    r: &str,
    topic: &str,
    event: &str,
    payload: &impl Serialize,
) -> Message {
    // Cannot fail: strings and the string-keyed payloads built here always serialize.
    Message::text(serde_json::to_string(&(join_ref, r, topic, event, payload)).unwrap_or_default())
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
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut url = format!("ws://{}{}", args.addr, args.path);
    if let Some(users) = args.users {
        url.push_str(&format!(
            "&user_id={}{}",
            args.user_prefix,
            i % users.max(1)
        ));
    }
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let topic = format!("{}{}", args.topic_prefix, i % args.topics.max(1));
    join(&mut ws, &topic).await?;
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
                let _ = ws.send(frame(None, &r.to_string(), "phoenix", "heartbeat", &json!({}))).await;
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
    let cpu_hold_start = args.server_pid.and_then(cpu_seconds_of);
    let hold_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    if let (Some(before), Some(after)) = (cpu_hold_start, args.server_pid.and_then(cpu_seconds_of))
    {
        println!(
            "server CPU while holding {} idle sockets for {:.0} s: {:.2}% of one core",
            joined.load(Ordering::Relaxed),
            hold_started.elapsed().as_secs_f64(),
            (after - before) / hold_started.elapsed().as_secs_f64() * 100.0
        );
    }
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

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open(addr: SocketAddr, src: IpAddr, query: &str) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0{query}");
    // tungstenite zeroes up to `read_buffer_size` bytes of its buffer before every read
    // (128 KiB by default): with thousands of sockets that memset was half the tool's CPU.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn join(ws: &mut Ws, topic: &str) -> Result<(), String> {
    join_as(ws, topic, "1").await
}

/// Joins `topic` with join_ref and ref `r`.
async fn join_as(ws: &mut Ws, topic: &str, r: &str) -> Result<(), String> {
    ws.send(frame(Some(r), r, topic, "phx_join", &json!({})))
        .await
        .map_err(|e| e.to_string())?;
    let want = format!("[{},{}", json!(r), json!(r));
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(&want) => {
                return if t.contains(r#""status":"ok""#) {
                    Ok(())
                } else {
                    Err(format!("join refused: {t}"))
                };
            }
            Some(Ok(_)) => continue,
            other => return Err(format!("closed before the join reply: {other:?}")),
        }
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    latencies_us: Vec<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
}

async fn subscriber(mut ws: Ws, expected: u64, done: Arc<tokio::sync::Notify>) -> Seen {
    let mut seen = Seen::default();
    let mut got = vec![false; expected as usize];
    let mut last: Option<u64> = None;
    let finished = done.notified();
    tokio::pin!(finished);
    // Heartbeats every 30 s, as phoenix.js sends them: joining a big room takes a while.
    let mut beat = tokio::time::interval(Duration::from_secs(30));
    beat.tick().await;
    loop {
        let msg = tokio::select! {
            _ = &mut finished => break,
            _ = beat.tick() => {
                let _ = ws.send(frame(None, "hb", "phoenix", "heartbeat", &json!({}))).await;
                continue;
            }
            m = ws.next() => m,
        };
        let Some(Ok(Message::Text(t))) = msg else {
            if msg.is_none() {
                break;
            } else {
                continue;
            }
        };
        if !t.contains("\"new_msg\"") {
            continue;
        }
        let now = now_ns();
        let (Some(seq), Some(at)) = (number_after(&t, "\"seq\":"), number_after(&t, "\"at\":"))
        else {
            continue;
        };
        seen.received += 1;
        if let Some(slot) = got.get_mut(seq as usize) {
            if *slot {
                seen.duplicates += 1;
            }
            *slot = true;
        }
        if last.is_some_and(|l| seq < l) {
            seen.reordered += 1;
        }
        last = Some(seq);
        seen.latencies_us.push(now.saturating_sub(at) / 1000);
    }
    seen
}

/// The unsigned integer right after `key` in `text` (the load tool's own payload fields, so a
/// full JSON parse per delivery is not needed).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Opens a subscriber that joins and then never reads: its receive buffer is shrunk so that
/// the server's writes back up quickly, like a client behind a stalled network.
async fn open_stalled(addr: SocketAddr, topic: &str) -> Result<Ws, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.set_recv_buffer_size(4096).map_err(|e| e.to_string())?;
    let stream = sock
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0");
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    join(&mut ws, topic).await?;
    join_as(&mut ws, &format!("{topic}:stalled"), "2").await?;
    Ok(ws)
}

/// Reads a stalled subscriber until the server's close frame (or `wait` passes): the close
/// code, if the server closed it, and how many of the run's messages (on `topic`) it had been
/// sent before.
async fn drain_stalled(ws: &mut Ws, topic: &str, wait: Duration) -> (Option<u16>, u64) {
    let deadline = tokio::time::Instant::now() + wait;
    let marker = format!(r#"{},"new_msg""#, json!(topic));
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return (frame.map(|f| u16::from(f.code)), seen),
            Ok(Some(Ok(Message::Text(t)))) => seen += u64::from(t.contains(&marker)),
            Ok(Some(Ok(_))) => continue,
            _ => return (None, seen),
        }
    }
}

/// The payload of a fan-out message: scheduled send time (ns), sequence number, padding.
#[derive(Serialize)]
struct Stamped<'a> {
    at: u64,
    seq: u64,
    z: &'a str,
}

/// One fan-out run at `rate`; returns (lost deliveries, p99 ms), None if it could not run.
async fn fanout_once(args: &FanoutArgs, rate: u64) -> Option<(u64, f64)> {
    let total = rate * args.duration;
    let done = Arc::new(tokio::sync::Notify::new());
    let mut subs = Vec::new();
    for i in 0..args.subscribers {
        let addr = args.addrs[i % args.addrs.len()];
        let src: IpAddr = format!("127.0.0.{}", 1 + (i % usize::from(args.sources.max(1))))
            .parse()
            .expect("ip");
        let query = if args.tracked {
            format!("&user_id=s{i}")
        } else {
            String::new()
        };
        let mut ws = match open(addr, src, &query).await {
            Ok(ws) => ws,
            Err(e) => return eprint_none(format!("subscriber {i}: {e}")),
        };
        if let Err(e) = join(&mut ws, &args.topic).await {
            return eprint_none(format!("subscriber {i}: {e}"));
        }
        subs.push(tokio::spawn(subscriber(ws, total, done.clone())));
    }
    let mut stalled = Vec::new();
    for i in 0..args.stalled {
        match open_stalled(args.addrs[i % args.addrs.len()], &args.topic).await {
            Ok(ws) => stalled.push(ws),
            Err(e) => return eprint_none(format!("stalled subscriber {i}: {e}")),
        }
    }
    let mut publisher = match open(
        args.publish_to.unwrap_or(args.addrs[0]),
        "127.0.0.1".parse().expect("ip"),
        "",
    )
    .await
    {
        Ok(ws) => ws,
        Err(e) => return eprint_none(format!("publisher: {e}")),
    };
    if let Err(e) = join(&mut publisher, &args.topic).await {
        return eprint_none(format!("publisher: {e}"));
    }
    if !stalled.is_empty() {
        let stall_topic = format!("{}:stalled", args.topic);
        if let Err(e) = join_as(&mut publisher, &stall_topic, "2").await {
            return eprint_none(format!("publisher: {e}"));
        }
        let chunk = "y".repeat(64 * 1024);
        for i in 0..args.stalled_prefill_kib / 64 {
            let fill = frame(
                Some("2"),
                &format!("f{i}"),
                &stall_topic,
                "new_msg",
                &json!({ "fill": chunk }),
            );
            if publisher.send(fill).await.is_err() {
                return eprint_none("publisher closed during the prefill".into());
            }
            // Read our own copies as we go so the publisher never backs up.
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(1), publisher.next()).await
            {}
        }
        // The run starts only once the server has handled the whole prefill: our own copy of
        // a last marker message proves it, so the prefill's cost cannot leak into the run.
        let marker = frame(
            Some("2"),
            "done",
            &stall_topic,
            "new_msg",
            &json!({ "prefill_done": true }),
        );
        if publisher.send(marker).await.is_err() {
            return eprint_none("publisher closed during the prefill".into());
        }
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(msg)) = publisher.next().await {
                if matches!(&msg, Message::Text(t) if t.contains("prefill_done")) {
                    return true;
                }
            }
            false
        })
        .await;
        if !matches!(waited, Ok(true)) {
            return eprint_none("the prefill was not handled within 30 s".into());
        }
    }
    // The publisher's own copies and replies are drained so its socket never backs up.
    let (mut tx, mut rx) = publisher.split();
    let drain = tokio::spawn(async move { while rx.next().await.is_some() {} });
    let pad = "x".repeat(args.size);
    let cpu_before = cpu_seconds_self();
    let start = now_ns() + 50_000_000;
    let gap = 1_000_000_000 / rate.max(1);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    for seq in 0..total {
        // Latency counts from the scheduled time, so a stalled sender cannot hide delays.
        let at = start + seq * gap;
        tokio::time::sleep_until(t0 + Duration::from_nanos(seq * gap)).await;
        let payload = Stamped { at, seq, z: &pad };
        let msg = frame(
            Some("1"),
            &format!("p{seq}"),
            &args.topic,
            "new_msg",
            &payload,
        );
        if tx.send(msg).await.is_err() {
            eprintln!("publisher closed at seq {seq}");
            break;
        }
    }
    // Give the tail time to arrive, then stop the subscribers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.notify_waiters();
    drain.abort();
    let mut all = Vec::new();
    let (mut received, mut dups, mut reordered) = (0u64, 0u64, 0u64);
    for s in subs {
        if let Ok(seen) = s.await {
            received += seen.received;
            dups += seen.duplicates;
            reordered += seen.reordered;
            all.extend(seen.latencies_us);
        }
    }
    all.sort_unstable();
    let expected = total * args.subscribers as u64;
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "scenario fanout: {} subscribers over {} node(s), publisher on {}, {} msg/s for {} s, payload pad {} B",
        args.subscribers,
        args.addrs.len(),
        args.publish_to.unwrap_or(args.addrs[0]),
        rate,
        args.duration,
        args.size
    );
    println!(
        "deliveries: {received} of {expected} ({:.0}/s), lost {}, duplicates {dups}, reordered {reordered}",
        received as f64 / args.duration as f64,
        expected.saturating_sub(received - dups)
    );
    println!(
        "latency from scheduled send: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        all.last().copied().unwrap_or(0) as f64 / 1000.0
    );
    if !stalled.is_empty() {
        let mut summary = Vec::new();
        for ws in &mut stalled {
            let (code, seen) = drain_stalled(ws, &args.topic, Duration::from_secs(5)).await;
            summary.push(match code {
                Some(c) => format!("closed with {c} after {seen} of {total} messages"),
                None => format!("not closed, sent {seen} of {total} messages"),
            });
        }
        println!("stalled subscribers: {}", summary.join("; "));
    }
    println!("load tool CPU: {:.1} s", cpu_seconds_self() - cpu_before);
    // One line for scripts and tests.
    println!(
        "result: rate={rate} expected={expected} received={received} lost={} dups={dups} reordered={reordered} p50_ms={:.3} p99_ms={:.3}",
        expected.saturating_sub(received - dups),
        pct(0.5),
        pct(0.99)
    );
    Some((expected.saturating_sub(received - dups), pct(0.99)))
}

fn eprint_none<T>(msg: String) -> Option<T> {
    eprintln!("{msg}");
    None
}

async fn fanout(args: FanoutArgs) {
    if !args.step {
        let _ = fanout_once(&args, args.rate).await;
        return;
    }
    // Raise the rate until a run loses a message or its p99 exceeds the bound.
    let mut rate = args.rate.max(1);
    let mut best: Option<u64> = None;
    loop {
        match fanout_once(&args, rate).await {
            Some((0, p99)) if p99 <= args.max_p99_ms => best = Some(rate),
            _ => break,
        }
        rate = ((rate as f64) * args.step_factor).ceil() as u64;
    }
    match best {
        Some(r) => println!(
            "highest rate with no loss and p99 <= {} ms: {r} msg/s = {} deliveries/s",
            args.max_p99_ms,
            r * args.subscribers as u64
        ),
        None => println!(
            "no rate met the rule (start lower than {} msg/s)",
            args.rate
        ),
    }
}

async fn rpc(args: RpcArgs) {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for i in 0..args.sockets {
        let mut ws = match open(args.addr, "127.0.0.1".parse().expect("ip"), "").await {
            Ok(ws) => ws,
            Err(e) => return eprintln!("socket {i}: {e}"),
        };
        if let Err(e) = join(&mut ws, &args.topic).await {
            return eprintln!("socket {i}: {e}");
        }
        let topic = args.topic.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut r = 2u64;
            while Instant::now() < deadline {
                r += 1;
                let started = Instant::now();
                let ping = frame(
                    Some("1"),
                    &r.to_string(),
                    &topic,
                    "ping",
                    &json!({ "n": r }),
                );
                if ws.send(ping).await.is_err() {
                    break;
                }
                let want = format!(r#"["1","{r}","#);
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.starts_with(&want) => break,
                        Some(Ok(_)) => continue,
                        _ => return lat,
                    }
                }
                lat.push(started.elapsed());
            }
            lat
        }));
    }
    let cpu_before = cpu_seconds_self();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort();
    println!(
        "scenario rpc: {} sockets, {} s",
        args.sockets, args.duration
    );
    println!(
        "replies: {} ({:.0}/s)",
        all.len(),
        all.len() as f64 / args.duration as f64
    );
    println!(
        "latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        percentile(&all, 0.999).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("load tool CPU: {:.1} s", cpu_seconds_self() - cpu_before);
}

/// The servers' CPU seconds so far (summed) and resident memory (KiB, each).
fn servers(pids: &[u32]) -> (f64, Vec<u64>) {
    let cpu = pids.iter().filter_map(|p| cpu_seconds_of(*p)).sum();
    let rss = pids.iter().filter_map(|p| rss_kib(*p)).collect();
    (cpu, rss)
}

/// Waits until `done()` holds (polled every 10 ms), at most `limit`; the time it took.
async fn within(limit: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done() {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The `users` of a `presence_count` text frame.
fn count_users(text: &str) -> Option<u64> {
    // Only the head names the event: a member of a list room must not parse every
    // (megabyte) presence_state.
    let head = text.get(..text.len().min(512)).unwrap_or(text);
    if !head.contains("\"presence_count\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v[3] == "presence_count").then(|| v[4]["users"].as_u64())?
}

async fn presence(args: PresenceArgs) {
    let mode = args.mode;
    let n_users = args.users;
    // The watcher: a phoenix.js-like presence view (list), or the last count it got.
    let mut watcher = match open(args.addrs[0], "127.0.0.1".parse().expect("ip"), "").await {
        Ok(ws) => ws,
        Err(e) => return eprintln!("watcher: {e}"),
    };
    if let Err(e) = join(&mut watcher, &args.topic).await {
        return eprintln!("watcher: {e}");
    }
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let watch_task = tokio::spawn(async move {
        let mut view = PresenceView::default();
        while let Some(Ok(msg)) = watcher.next().await {
            if let Message::Text(t) = msg {
                if let Some(users) = count_users(&t) {
                    let _ = seen_tx.send(users as usize);
                } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) {
                    view.apply(&v);
                    let _ = seen_tx.send(view.len());
                }
            }
        }
    });
    let (cpu_before, _) = servers(&args.server_pids);
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.in_flight.max(1)));
    // Per member: the users of its last presence_count (counts mode).
    let last_counts: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..n_users).map(|_| Default::default()).collect());
    // Members whose socket the server closed (or that failed to join).
    let closed = Arc::new(AtomicUsize::new(0));
    let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut users = Vec::new();
    for i in 0..n_users {
        let addr = args.addrs[i % args.addrs.len()];
        let src: IpAddr = format!("127.0.0.{}", 1 + (i % usize::from(args.sources.max(1))))
            .parse()
            .expect("ip");
        let topic = args.topic.clone();
        let (permits, last_counts, closed, leaving) = (
            permits.clone(),
            last_counts.clone(),
            closed.clone(),
            leaving.clone(),
        );
        users.push(tokio::spawn(async move {
            let ws = {
                let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
                let mut ws = open(addr, src, &format!("&user_id=u{i}")).await?;
                join(&mut ws, &topic).await?;
                ws
            };
            let joined = Instant::now();
            // Keep reading so that the server never sees a slow consumer.
            let (mut tx, mut rx) = ws.split();
            let drain = tokio::spawn(async move {
                while let Some(msg) = rx.next().await {
                    match msg {
                        Ok(Message::Text(t)) => {
                            if let Some(users) = count_users(&t) {
                                last_counts[i].store(users, Ordering::Relaxed);
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if !leaving.load(Ordering::Relaxed) {
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Heartbeats every 30 s, as phoenix.js sends them, until told to leave.
            let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
            let sender = tokio::spawn(async move {
                let mut beat = tokio::time::interval(Duration::from_secs(30));
                beat.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = beat.tick() => {
                            let hb = frame(None, "hb", "phoenix", "heartbeat", &json!({}));
                            if tx.send(hb).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.close().await;
            });
            Ok::<_, String>((stop, sender, drain, joined))
        }));
    }
    let mut held = Vec::new();
    let mut last_reply = started;
    for u in users {
        match u.await {
            Ok(Ok((stop, sender, drain, joined))) => {
                last_reply = last_reply.max(joined);
                held.push((stop, sender, drain));
            }
            Ok(Err(e)) => {
                closed.fetch_add(1, Ordering::Relaxed);
                eprintln!("user: {e}");
            }
            Err(e) => eprintln!("user task: {e}"),
        }
    }
    let joined_in = last_reply - started;
    let n = held.len();
    println!(
        "scenario presence ({}): {n} of {n_users} users joined over {} node(s), {} in flight",
        match mode {
            PresenceMode::List => "list",
            PresenceMode::Counts => "counts",
            PresenceMode::None => "no presence",
        },
        args.addrs.len(),
        args.in_flight
    );
    println!("last join reply after {:.3} s", joined_in.as_secs_f64());
    if mode != PresenceMode::None {
        let all_seen = matches!(
            tokio::time::timeout(Duration::from_secs(60), seen_rx.wait_for(|s| *s >= n)).await,
            Ok(Ok(_))
        );
        println!(
            "watcher saw all {n}: {} {:.3} s after the last join reply",
            if all_seen { "yes" } else { "NO" },
            last_reply.elapsed().as_secs_f64()
        );
        if !all_seen {
            println!("watcher sees {}", *seen_rx.borrow());
        }
    }
    if mode == PresenceMode::Counts {
        let exact = within(Duration::from_secs(60), || {
            last_counts
                .iter()
                .all(|c| c.load(Ordering::Relaxed) == n as u64)
        })
        .await;
        let wrong = last_counts
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) != n as u64)
            .count();
        println!(
            "every member's last presence_count exact: {} {:.3} s after the last join reply ({wrong} not)",
            if exact.is_some() { "yes" } else { "NO" },
            last_reply.elapsed().as_secs_f64()
        );
    }
    // Settled: memory with every member held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_joined, rss) = servers(&args.server_pids);
    println!("closed by the server: {}", closed.load(Ordering::Relaxed));
    println!(
        "server RSS with all joined: {} KiB; server CPU for the joins: {:.1} s",
        rss.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" + "),
        cpu_joined - cpu_before
    );
    leaving.store(true, Ordering::Relaxed);
    let leave_started = Instant::now();
    // All at once: every member is told to close before any close is awaited.
    let mut closing = Vec::with_capacity(held.len());
    for (stop, sender, drain) in held {
        let _ = stop.send(());
        closing.push((sender, drain));
    }
    for (sender, drain) in closing {
        let _ = sender.await;
        drain.abort();
    }
    if mode != PresenceMode::None {
        let none_seen = matches!(
            tokio::time::timeout(Duration::from_secs(60), seen_rx.wait_for(|s| *s == 0)).await,
            Ok(Ok(_))
        );
        println!(
            "watcher saw none after the leaves: {} after {:.3} s",
            if none_seen { "yes" } else { "NO" },
            leave_started.elapsed().as_secs_f64()
        );
    }
    // The leave storm's CPU, with what trails it (2 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_left, _) = servers(&args.server_pids);
    println!(
        "server CPU for the leave storm: {:.2} s",
        cpu_left - cpu_joined
    );
    watch_task.abort();
    println!("load tool CPU: {:.1} s", cpu_seconds_self());
}

fn main() {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        builder.worker_threads(cli.threads);
    }
    let runtime = builder.enable_all().build().expect("tokio runtime");
    match cli.scenario {
        Scenario::Connect(args) => runtime.block_on(connect(args)),
        Scenario::Fanout(args) => runtime.block_on(fanout(args)),
        Scenario::Rpc(args) => runtime.block_on(rpc(args)),
        Scenario::Presence(args) => runtime.block_on(presence(args)),
        Scenario::Soak(args) => runtime.block_on(soak::soak(args)),
    }
}
