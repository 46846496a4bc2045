//! The `phx-gateway` binary: command line, config, logging, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use phx_gateway::config::Settings;
use phx_gateway::{server, telemetry, Gateway};

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
        } => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
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

fn run_migrate(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(settings.log.format);
    if settings.redis.url.is_none() {
        anyhow::bail!("redis.url is not set (PHX_GATEWAY__REDIS__URL): nothing to migrate");
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
    telemetry::init(settings.log.format);
    // Panics are caught per channel; make sure they reach the structured log too.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
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
