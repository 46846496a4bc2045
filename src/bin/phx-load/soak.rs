//! Scenario `soak`: many sockets with presence, steady churn and steady broadcasts for a long
//! time, sampling the servers' memory, sockets, channel tasks and presences and Redis's
//! memory as it goes. What a soak must show: the samples stay flat and nothing errs.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use serde_json::json;

use super::{frame, join, join_as, open};

/// Topics per publisher socket (a socket may join at most 100 channels).
const PER_PUBLISHER: usize = 50;

#[derive(clap::Args)]
pub(crate) struct SoakArgs {
    /// Server addresses; sockets are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:4000")]
    addrs: Vec<SocketAddr>,
    /// The servers' admin addresses, for /metrics samples.
    #[arg(long, value_delimiter = ',')]
    admin: Vec<SocketAddr>,
    /// Redis URL, for `INFO memory` samples.
    #[arg(long)]
    redis: Option<String>,
    /// Sockets held open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    sockets: usize,
    /// Topics (presence routes, `room:` prefix by default), sockets spread over them.
    #[arg(long, short = 'k', default_value_t = 1_000)]
    topics: usize,
    /// Topic prefix.
    #[arg(long, default_value = "room:soak")]
    topic_prefix: String,
    /// Share of the sockets closed and reopened per minute.
    #[arg(long, default_value_t = 0.10)]
    churn_per_minute: f64,
    /// Broadcasts per second (`new_msg`, round-robin over the topics).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds of warm-up before the baseline sample (0: none).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Share of the sockets reopened per minute during the warm-up.
    #[arg(long, default_value_t = 1.0)]
    warmup_churn_per_minute: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 60)]
    sample_every: u64,
    /// Loopback source addresses for the sockets.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Seconds after every socket closed for a last sample (memory handed back; 0: none).
    #[arg(long, default_value_t = 60)]
    after_close: u64,
}

/// Counters shared by all sockets.
#[derive(Default)]
struct Counts {
    errors: AtomicU64,
    opened: AtomicU64,
    churned: AtomicU64,
    delivered: AtomicU64,
}

/// GET `path` over plain HTTP/1.0; the body.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn redis_used_memory(url: &str) -> Option<u64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_connection().ok()?;
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One sample line: per node RSS, heap, allocator metadata, sockets, channel tasks,
/// presences; Redis memory.
fn sample(args: &SoakArgs, started: Instant, counts: &Counts) {
    let mut line = format!("t={:>4}s", started.elapsed().as_secs());
    for (i, admin) in args.admin.iter().enumerate() {
        let page = http_get(*admin, "/metrics").unwrap_or_default();
        line.push_str(&format!(
            " | node{i}: rss {:.1} MiB, heap {:.1} MiB (allocator metadata {:.1}), sockets {}, channel tasks {}, presences {}",
            metric(&page, "process_resident_memory_bytes") / 1048576.0,
            metric(&page, "phx_gateway_heap_allocated_bytes") / 1048576.0,
            metric(&page, "phx_gateway_heap_metadata_bytes") / 1048576.0,
            metric(&page, "phx_gateway_sockets{transport=\"websocket\"}"),
            metric(&page, "phx_gateway_channel_tasks"),
            metric(&page, "phx_gateway_presence_entries"),
        ));
    }
    if let Some(url) = &args.redis {
        let mem =
            redis_used_memory(url).map_or("?".into(), |b| format!("{:.1}", b as f64 / 1048576.0));
        line.push_str(&format!(" | redis {mem} MiB"));
    }
    line.push_str(&format!(
        " | opened {}, churned {}, delivered {}, errors {}",
        counts.opened.load(Ordering::Relaxed),
        counts.churned.load(Ordering::Relaxed),
        counts.delivered.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    ));
    println!("{line}");
}

/// One socket slot: connects, joins, holds (heartbeats every 30 s like phoenix.js, counts
/// deliveries), and reconnects whenever `churn` is notified, until `stop`.
async fn slot(
    args: Arc<SoakArgs>,
    i: usize,
    churn: Arc<Notify>,
    stop: CancellationToken,
    counts: Arc<Counts>,
) {
    let addr = args.addrs[i % args.addrs.len()];
    let src: IpAddr = format!("127.0.0.{}", 1 + (i % usize::from(args.sources.max(1))))
        .parse()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let topic = format!("{}{}", args.topic_prefix, i % args.topics.max(1));
    let mut generation = 0u64;
    loop {
        generation += 1;
        let mut ws = match open(addr, src, &format!("&user_id=s{i}-{generation}")).await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("socket {i}: {e}");
                counts.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = join(&mut ws, &topic).await {
            eprintln!("socket {i}: {e}");
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counts.opened.fetch_add(1, Ordering::Relaxed);
        let mut hb = tokio::time::interval(Duration::from_secs(30));
        hb.tick().await;
        let mut r = 2u64;
        let churned = churn.notified();
        tokio::pin!(churned);
        let leave = loop {
            tokio::select! {
                _ = stop.cancelled() => break true,
                _ = &mut churned => break false,
                _ = hb.tick() => {
                    r += 1;
                    let hb = frame(None, &r.to_string(), "phoenix", "heartbeat", &json!({}));
                    if ws.send(hb).await.is_err() {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        break false;
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if t.contains(r#""new_msg""#) {
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                        } else if t.contains(r#""phx_error""#) || t.contains(r#""status":"error""#) {
                            eprintln!("socket {i}: {t}");
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(_)) => {}
                    other => {
                        eprintln!("socket {i}: closed unexpectedly: {other:?}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        break false;
                    }
                },
            }
        };
        let _ = ws.close(None).await;
        if leave {
            return;
        }
        counts.churned.fetch_add(1, Ordering::Relaxed);
    }
}

/// Closes and reopens random sockets at `per_minute` of them a minute for `secs` seconds,
/// sampling every `sample_every` seconds if asked.
async fn churn(
    args: &Arc<SoakArgs>,
    churns: &[Arc<Notify>],
    per_minute: f64,
    secs: u64,
    sample_every: Option<u64>,
    start: Instant,
    counts: &Arc<Counts>,
) {
    let per_second = args.sockets as f64 * per_minute / 60.0;
    let mut owed = 0.0;
    let mut next_sample = sample_every.map(Duration::from_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        owed += per_second;
        while owed >= 1.0 {
            owed -= 1.0;
            churns[rand::random_range(0..churns.len())].notify_one();
        }
        if let Some(next) = next_sample.as_mut() {
            if start.elapsed() >= *next {
                *next += Duration::from_secs(sample_every.unwrap_or(60));
                let (a, c) = (args.clone(), counts.clone());
                let _ = tokio::task::spawn_blocking(move || sample(&a, start, &c)).await;
            }
        }
    }
}

/// Runs the soak.
pub(crate) async fn soak(args: SoakArgs) {
    let args = Arc::new(args);
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let churns: Vec<Arc<Notify>> = (0..args.sockets).map(|_| Arc::new(Notify::new())).collect();
    let started = Instant::now();
    println!(
        "scenario soak: {} sockets over {} topics on {} node(s), churn {:.0}%/min, {} broadcasts/s, {} s",
        args.sockets,
        args.topics,
        args.addrs.len(),
        args.churn_per_minute * 100.0,
        args.rate,
        args.duration
    );
    let mut slots = Vec::new();
    for (i, churn) in churns.iter().enumerate() {
        slots.push(tokio::spawn(slot(
            args.clone(),
            i,
            churn.clone(),
            stop.clone(),
            counts.clone(),
        )));
        // About 2,000 connects a second.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    while (counts.opened.load(Ordering::Relaxed) as usize) < args.sockets {
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "only {} of {} sockets opened",
                counts.opened.load(Ordering::Relaxed),
                args.sockets
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "all sockets open after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Publishers: one socket per 50 topics (sockets may join at most 100 channels), all
    // joins confirmed; then `new_msg` round-robin over the topics at the given rate.
    let mut senders = Vec::new();
    let mut drains = Vec::new();
    for first in (0..args.topics).step_by(PER_PUBLISHER) {
        let Ok(mut ws) = open(
            args.addrs[0],
            IpAddr::from([127, 0, 0, 1]),
            &format!("&user_id=publisher{first}"),
        )
        .await
        else {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        for t in first..(first + PER_PUBLISHER).min(args.topics) {
            if let Err(e) = join_as(
                &mut ws,
                &format!("{}{t}", args.topic_prefix),
                &format!("j{t}"),
            )
            .await
            {
                eprintln!("publisher: {e}");
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let (tx, mut rx) = ws.split();
        senders.push(tx);
        let counts = counts.clone();
        drains.push(tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                if let Message::Text(t) = msg {
                    if t.contains(r#""phx_error""#) || t.contains(r#""status":"error""#) {
                        eprintln!("publisher: {t}");
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let publisher = {
        let args = args.clone();
        let counts = counts.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_nanos(1_000_000_000 / args.rate.max(1)));
            let mut hb = tokio::time::interval(Duration::from_secs(30));
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = hb.tick() => {
                        for tx in &mut senders {
                            let _ = tx.send(frame(None, &format!("h{n}"), "phoenix", "heartbeat", &json!({}))).await;
                        }
                    }
                    _ = tick.tick() => {
                        let t = (n % args.topics as u64) as usize;
                        let msg = frame(
                            Some(&format!("j{t}")),
                            &format!("p{n}"),
                            &format!("{}{t}", args.topic_prefix),
                            "new_msg",
                            &json!({ "n": n }),
                        );
                        n += 1;
                        let Some(tx) = senders.get_mut(t / PER_PUBLISHER) else { continue };
                        if tx.send(msg).await.is_err() {
                            counts.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            for d in drains {
                d.abort();
            }
        })
    };

    // Warm-up: the allocator's heap grows while it settles on a working set for sockets that
    // come and go among long-lived ones; fast churn gets it there before the baseline.
    if args.warmup > 0 {
        println!(
            "warm-up: {} s at {:.0}%/min churn",
            args.warmup,
            args.warmup_churn_per_minute * 100.0
        );
        let warm_start = Instant::now();
        churn(
            &args,
            &churns,
            args.warmup_churn_per_minute,
            args.warmup,
            None,
            warm_start,
            &counts,
        )
        .await;
        sample(&args, warm_start, &counts);
        println!("steady run:");
    }
    let run_start = Instant::now();
    let (a, c) = (args.clone(), counts.clone());
    let _ = tokio::task::spawn_blocking(move || sample(&a, run_start, &c)).await;
    churn(
        &args,
        &churns,
        args.churn_per_minute,
        args.duration,
        Some(args.sample_every),
        run_start,
        &counts,
    )
    .await;
    if args.duration % args.sample_every.max(1) != 0 {
        let (a, c) = (args.clone(), counts.clone());
        let _ = tokio::task::spawn_blocking(move || sample(&a, run_start, &c)).await;
    }
    stop.cancel();
    let _ = publisher.await;
    for s in slots {
        let _ = s.await;
    }
    // After everyone left: the nodes must come back to nothing (sockets, tasks, presences).
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_secs(15) {
        let admin = args.admin.clone();
        let busy = tokio::task::spawn_blocking(move || {
            admin.iter().any(|a| {
                let page = http_get(*a, "/metrics").unwrap_or_default();
                metric(&page, "phx_gateway_sockets{transport=\"websocket\"}") > 0.0
                    || metric(&page, "phx_gateway_channel_tasks") > 0.0
                    || metric(&page, "phx_gateway_presence_entries") > 0.0
            })
        })
        .await
        .unwrap_or(true);
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("after all sockets closed:");
    let (a, c) = (args.clone(), counts.clone());
    let _ = tokio::task::spawn_blocking(move || sample(&a, run_start, &c)).await;
    if args.after_close > 0 {
        tokio::time::sleep(Duration::from_secs(args.after_close)).await;
        println!("{} s after all sockets closed:", args.after_close);
        let (a, c) = (args.clone(), counts.clone());
        let _ = tokio::task::spawn_blocking(move || sample(&a, run_start, &c)).await;
    }
    println!("errors: {}", counts.errors.load(Ordering::Relaxed));
}
