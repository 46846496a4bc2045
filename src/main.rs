//! The `phx-gateway` binary: command line, config, logging, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use phx_gateway::config::Settings;
use phx_gateway::{logging, server, Gateway};
use secrecy::ExposeSecret;

// Heap profiling builds only (see the `dhat-heap` feature in Cargo.toml).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

// The allocator, chosen by measurement (docs/benchmarks.md, "Memory under churn"): jemalloc
// by default; mimalloc or the system allocator by feature.
#[cfg(all(feature = "mimalloc", not(feature = "dhat-heap")))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
// jemalloc unless another allocator was asked for.
#[cfg(all(
    feature = "jemalloc",
    not(feature = "mimalloc"),
    not(feature = "dhat-heap")
))]
mod jemalloc {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    #[global_allocator]
    static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// Hooks jemalloc into the gateway: its heap counts on `/metrics`, and idle threads
    /// handing their caches back (`runtime`'s workers each time they park).
    pub(crate) fn install(runtime: &mut tokio::runtime::Builder) {
        phx_gateway::metrics::report_heap(heap);
        runtime.on_thread_park(release_thread_cache);
        phx_gateway::shrink::register_thread_cache_release(release_thread_cache);
    }

    /// jemalloc's own counts of its heap, for `/metrics`.
    fn heap() -> Option<phx_gateway::metrics::HeapStats> {
        // The counts are a snapshot taken when the epoch advances.
        tikv_jemalloc_ctl::epoch::advance().ok()?;
        Some(phx_gateway::metrics::HeapStats {
            allocated: tikv_jemalloc_ctl::stats::allocated::read().ok()? as u64,
            resident: tikv_jemalloc_ctl::stats::resident::read().ok()? as u64,
            metadata: tikv_jemalloc_ctl::stats::metadata::read().ok()? as u64,
        })
    }

    /// Hands the calling thread's cache of freed blocks back to jemalloc's arenas, from where
    /// the background threads return emptied pages to the OS. Rate-limited per thread: it
    /// runs when a runtime worker goes idle, which under load is thousands of times a second.
    /// Without it a worker that goes idle keeps its cache for good (jemalloc trims a thread's
    /// cache only as that thread allocates): megabytes, and the pages under them.
    fn release_thread_cache() {
        const AT_MOST_EVERY: Duration = Duration::from_secs(1);
        thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
        let now = Instant::now();
        if LAST
            .get()
            .is_some_and(|last| now.duration_since(last) < AT_MOST_EVERY)
        {
            return;
        }
        LAST.set(Some(now));
        #[allow(unsafe_code)]
        // SAFETY: `thread.tcache.flush` reads and writes nothing, so every pointer is null and
        // the length 0, as jemalloc requires; the name is NUL-terminated. An error (no cache
        // on this thread) leaves nothing to do.
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.tcache.flush".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
    }
}

/// The allocator's name, for the start-up log. jemalloc's settings (background threads
/// returning freed pages to the OS about a second after they are freed) are built in: see
/// .cargo/config.toml.
fn allocator() -> &'static str {
    if cfg!(feature = "dhat-heap") {
        "dhat"
    } else if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else {
        "system"
    }
}

/// A realtime gateway speaking the Phoenix Channels protocol.
///
/// Settings come from built-in defaults, then the config file (`--config`, or
/// `config/gateway.toml` if present), then environment variables named
/// `PHX_GATEWAY__<SECTION>__<KEY>` (e.g. `PHX_GATEWAY__HTTP__HOST`, `PHX_GATEWAY__HTTP__PORT`).
/// Log level through `RUST_LOG` (e.g. `RUST_LOG=debug`).
#[derive(Parser)]
#[command(name = "phx-gateway", version, about, long_about)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway (the default).
    Serve,
    /// Apply the Redis key-layout migrations (`migrations/`) and exit.
    Migrate,
    /// Mint a connect token for testing, with the configured `auth` settings
    /// (Phoenix.Token, or JWT HS256).
    Token {
        /// The user id (the token's subject).
        #[arg(long)]
        user_id: String,
        /// Lifetime in seconds (default: auth.max_age_s).
        #[arg(long)]
        max_age_s: Option<u64>,
        /// Extra claims as a JSON object, e.g. '{"topics":["room:*"]}'.
        #[arg(long)]
        claims: Option<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration and exit (0: valid).
    Check,
}

fn main() -> ExitCode {
    // Writes dhat-heap.json when dropped, at the end of main.
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("phx-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config {
            action: ConfigAction::Check,
        } => match phx_gateway::channel::builtin::router(&settings.routes, None) {
            Ok(_) => {
                println!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("phx-gateway: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Token {
            user_id,
            max_age_s,
            claims,
        } => match mint(&settings, &user_id, max_age_s, claims.as_deref()) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("phx-gateway: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Migrate => match run_migrate(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("phx-gateway: {e:#}");
                ExitCode::from(3)
            }
        },
        Command::Serve => match serve(settings) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("phx-gateway: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn mint(
    settings: &Settings,
    user_id: &str,
    max_age_s: Option<u64>,
    claims: Option<&str>,
) -> anyhow::Result<String> {
    use phx_gateway::config::{AuthMode, JwtAlgorithm};
    use serde_json::{json, Value};
    let extra = match claims {
        Some(text) => match serde_json::from_str::<Value>(text)? {
            Value::Object(map) => map,
            _ => anyhow::bail!("--claims must be a JSON object"),
        },
        None => Default::default(),
    };
    let auth = &settings.auth;
    let max_age = max_age_s.unwrap_or(auth.max_age_s);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    // A numeric id is signed as a number, as Phoenix apps usually do.
    let id: Value = user_id
        .parse::<i64>()
        .map_or_else(|_| json!(user_id), |n| json!(n));
    match auth.mode {
        AuthMode::None => {
            anyhow::bail!("auth.mode is none: set PHX_GATEWAY__AUTH__MODE to phoenix_token or jwt")
        }
        AuthMode::PhoenixToken => {
            let secret = auth
                .secret_key_base
                .as_ref()
                .map_or("", |s| s.expose_secret());
            let data = if extra.is_empty() {
                id
            } else {
                let mut map = extra;
                map.insert("user_id".into(), id);
                Value::Object(map)
            };
            let signer = phx_gateway::auth::PhoenixToken::new(secret, &auth.salt);
            Ok(signer
                .sign(&data, now.as_millis() as u64, max_age)
                .map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        AuthMode::Jwt => {
            if auth.jwt_algorithm != JwtAlgorithm::HS256 {
                anyhow::bail!(
                    "only HS256 JWTs can be minted here (RS256/ES256 need the private key)"
                );
            }
            let mut claims = extra;
            claims.insert(auth.user_id_claim.clone(), json!(user_id));
            claims.insert("exp".into(), json!(now.as_secs() + max_age));
            claims.insert("iat".into(), json!(now.as_secs()));
            if let Some(iss) = &auth.jwt_issuer {
                claims.insert("iss".into(), json!(iss));
            }
            if let Some(aud) = &auth.jwt_audience {
                claims.insert("aud".into(), json!(aud));
            }
            let secret = auth.jwt_secret.as_ref().map_or("", |s| s.expose_secret());
            Ok(
                phx_gateway::auth::sign_hs256(&Value::Object(claims), secret.as_bytes())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
    }
}

fn run_migrate(settings: Settings) -> anyhow::Result<()> {
    logging::init(settings.log.format);
    if settings.redis.mode() == phx_gateway::config::RedisMode::Embedded {
        anyhow::bail!("no Redis is configured (redis.url, redis.cluster_urls or redis.sentinel_urls): nothing to migrate");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let redis = phx_gateway::cluster::Redis::connect(&settings.redis).await?;
        let (from, to) = phx_gateway::cluster::migrate::migrate(&redis).await?;
        if from == to {
            println!("redis key layout already at version {to}");
        } else {
            println!("redis key layout migrated from version {from} to {to}");
        }
        Ok(())
    })
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    logging::init(settings.log.format);
    tracing::info!(allocator = allocator(), "memory allocator");
    // Panics are caught per channel; make sure they reach the structured log too.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    #[cfg(all(
        feature = "jemalloc",
        not(feature = "mimalloc"),
        not(feature = "dhat-heap")
    ))]
    jemalloc::install(&mut runtime);
    let runtime = runtime.build()?;
    runtime.block_on(async move {
        let gateway = match Gateway::start(settings).await {
            Ok(g) => Arc::new(g),
            Err(
                e @ phx_gateway::gateway::StartError::Cluster(
                    phx_gateway::cluster::ClusterError::Layout(_),
                ),
            ) => {
                eprintln!("phx-gateway: {e}");
                std::process::exit(3);
            }
            Err(e) => return Err(e.into()),
        };
        let listener = server::bind(&gateway).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {}:{}: {e}",
                gateway.settings.http.host,
                gateway.settings.http.port
            )
        })?;
        let admin = phx_gateway::admin::bind(&gateway).map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on the admin port {}:{}: {e}",
                gateway.settings.admin.host,
                gateway.settings.admin.port
            )
        })?;
        let running = server::start(gateway.clone(), listener)?;
        tracing::info!(addr = %running.addr, "phx-gateway listening");
        let admin = match admin {
            Some(listener) => {
                let addr = listener.local_addr()?;
                let admin = phx_gateway::admin::start(gateway.clone(), listener)?;
                tracing::info!(%addr, "admin listening (/metrics, /healthz, /readyz)");
                Some(admin)
            }
            None => None,
        };
        let admin_handle = admin.as_ref().map(|a| a.handle());
        let admin_task = admin.map(tokio::spawn);
        let handle = running.handle.clone();
        let server = tokio::spawn(running.server);
        // From here on this thread only waits for the signal: hand back the blocks that
        // start-up freed into its cache (about a megabyte), which nothing would reuse.
        phx_gateway::shrink::release_thread_cache();
        let drain = match shutdown_signal().await {
            Signal::Terminate => gateway.settings.shutdown.drain_ms,
            Signal::Interrupt => gateway.settings.shutdown.sigint_drain_ms,
        };
        tracing::info!("shutting down: readiness off, new sockets refused, closing sockets");
        gateway.stop(std::time::Duration::from_millis(drain)).await;
        handle.stop(true).await;
        let _ = server.await;
        if let (Some(h), Some(t)) = (admin_handle, admin_task) {
            h.stop(false).await;
            let _ = t.await;
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// The signal that asked us to stop.
enum Signal {
    /// SIGTERM (Kubernetes): drain over `shutdown.drain_ms`.
    Terminate,
    /// SIGINT (Ctrl-C): drain over `shutdown.sigint_drain_ms`.
    Interrupt,
}

async fn shutdown_signal() -> Signal {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return Signal::Interrupt;
                }
            };
        tokio::select! {
            _ = ctrl_c => Signal::Interrupt,
            _ = term.recv() => Signal::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Signal::Interrupt
    }
}
