//! The gateway binary as a real process: a node that serves until stopped, or a command that
//! runs to its end.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, metric, poll, wait_until, WAIT};

/// `phx-gateway`, run from the crate root (where `config/` and `demo/` are).
fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_phx-gateway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// How a command ended and what it printed.
pub(crate) struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// stdout, then stderr.
    pub(crate) fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `phx-gateway` with `args` and extra `env` to its end.
pub(crate) fn run_gateway(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = gateway()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("runs");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A gateway node as a real process.
pub(crate) struct NodeProcess {
    pub port: u16,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    child: Child,
    /// Everything the process printed, when it was started with [`NodeProcess::start_logged`].
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl NodeProcess {
    /// Starts `phx-gateway` with Redis at `redis_url` (none if empty), the given extra env, on
    /// a free port; waits until it accepts connections. It logs at the level
    /// `TEST_GATEWAY_LOG` names, to stderr, or to a file per process in the directory
    /// `TEST_GATEWAY_LOG_DIR` names; nowhere without `TEST_GATEWAY_LOG`.
    pub(crate) fn start(redis_url: &str, name: &str, env: &[(&str, &str)]) -> Self {
        let log = std::env::var("TEST_GATEWAY_LOG").ok();
        let mut all = vec![
            ("PHX_GATEWAY__REDIS__NODE_NAME", name),
            ("RUST_LOG", log.as_deref().unwrap_or("warn")),
        ];
        if !redis_url.is_empty() {
            all.push(("PHX_GATEWAY__REDIS__URL", redis_url));
        }
        all.extend_from_slice(env);
        Self::spawn(&[], &all, &format!("gateway node {name}"), false)
    }

    /// Like [`NodeProcess::start`], with the configuration file `config` (relative to the
    /// repository root).
    pub(crate) fn start_configured(
        redis_url: &str,
        name: &str,
        env: &[(&str, &str)],
        config: &str,
    ) -> Self {
        let log = std::env::var("TEST_GATEWAY_LOG").ok();
        let mut all = vec![
            ("PHX_GATEWAY__REDIS__NODE_NAME", name),
            ("RUST_LOG", log.as_deref().unwrap_or("warn")),
        ];
        if !redis_url.is_empty() {
            all.push(("PHX_GATEWAY__REDIS__URL", redis_url));
        }
        all.extend_from_slice(env);
        Self::spawn(
            &["--config", config],
            &all,
            &format!("gateway node {name}"),
            false,
        )
    }

    /// Starts `phx-gateway` with `args` and `env` as [`NodeProcess::start`] does, keeping
    /// everything it prints (without colours) for [`NodeProcess::stop`].
    pub(crate) fn start_logged(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(args, env, "the gateway process", true)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], name: &str, keep_output: bool) -> Self {
        for _ in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            let mut cmd = gateway();
            cmd.args(args)
                .env("PHX_GATEWAY__HTTP__PORT", port.to_string())
                .env("PHX_GATEWAY__ADMIN__PORT", admin_port.to_string())
                .envs(env.iter().copied());
            if keep_output {
                cmd.env("NO_COLOR", "1")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
            } else if let Some(dir) = std::env::var_os("TEST_GATEWAY_LOG_DIR") {
                // One file per process, named for the node and its port: the logs of a
                // failing test among many running at once.
                let file = std::path::Path::new(&dir)
                    .join(format!("{}-{port}.log", name.replace(' ', "_")));
                let out = std::fs::File::create(&file).expect("create the node's log file");
                cmd.env("NO_COLOR", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::from(out));
            } else if std::env::var_os("TEST_GATEWAY_LOG").is_some() {
                cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
            } else {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            let mut child = cmd.spawn().expect("spawn phx-gateway");
            let output: Arc<Mutex<String>> = Arc::default();
            let streams: [Option<Box<dyn Read + Send>>; 2] = [
                child.stdout.take().map(|s| Box::new(s) as _),
                child.stderr.take().map(|s| Box::new(s) as _),
            ];
            let readers = streams
                .into_iter()
                .flatten()
                .map(|stream| {
                    let output = output.clone();
                    std::thread::spawn(move || {
                        let mut reader = BufReader::new(stream);
                        let mut line = Vec::new();
                        while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                            output
                                .lock()
                                .expect("lock")
                                .push_str(&String::from_utf8_lossy(&line));
                            line.clear();
                        }
                    })
                })
                .collect();
            let mut node = Self {
                port,
                admin_port,
                child,
                output,
                readers,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if !node.is_running() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return node;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            node.kill9();
            for r in std::mem::take(&mut node.readers) {
                let _ = r.join();
            }
            let output = node.output.lock().expect("lock");
            if !output.is_empty() {
                eprintln!("{name} did not start:\n{output}");
            }
        }
        panic!("{name} did not start");
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `ws://127.0.0.1:<port>/socket/websocket?<query>`.
    pub(crate) fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/socket/websocket?{}", self.port, query)
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        poll(timeout, async || !self.is_running()).await;
        self.child.try_wait().ok().flatten()?.code()
    }

    /// GET on the admin port: (status, body), or None without an answer.
    pub(crate) async fn admin(&self, path: &str) -> Option<(u16, String)> {
        let admin = SocketAddr::from(([127, 0, 0, 1], self.admin_port));
        super::http::request(admin, "GET", path, &[], "")
            .await
            .map(|r| (r.status, r.body))
    }

    /// Waits (bounded) until the node holds no socket, channel, channel task or presence.
    pub(crate) async fn wait_idle(&self, timeout: Duration) {
        wait_until(
            "sockets, channels, channel tasks and presences back to zero",
            timeout,
            async || {
                let page = self
                    .admin("/metrics")
                    .await
                    .map(|r| r.1)
                    .unwrap_or_default();
                metric(&page, "phx_gateway_sockets{transport=\"websocket\"}") == 0.0
                    && metric(&page, "phx_gateway_channels") == 0.0
                    && metric(&page, "phx_gateway_channel_tasks") == 0.0
                    && metric(&page, "phx_gateway_presence_entries") == 0.0
            },
        )
        .await;
    }

    /// Waits (bounded) until the process has printed `needle` (see [`NodeProcess::start_logged`]).
    pub(crate) async fn wait_for_log(&self, needle: &str) {
        let printed = poll(WAIT, async || {
            self.output.lock().expect("lock").contains(needle)
        })
        .await;
        assert!(
            printed,
            "no log line with {needle:?} within {WAIT:?}:\n{}",
            self.output.lock().expect("lock")
        );
    }

    /// SIGTERM, waits (bounded) for the exit, and returns everything the process printed.
    pub(crate) async fn stop(mut self) -> String {
        self.signal("TERM");
        let exited = poll(Duration::from_secs(15), async || !self.is_running()).await;
        assert!(exited, "the gateway did not exit after SIGTERM");
        for r in std::mem::take(&mut self.readers) {
            let _ = r.join();
        }
        let output = self.output.lock().expect("lock").clone();
        output
    }

    /// SIGKILL, as a crash.
    pub(crate) fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
