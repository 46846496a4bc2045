//! A real `redis-server` on a free port, and gateway nodes as real processes.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released; the caller retries on a clash).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Polls `cond` every 20 ms until it holds, or panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A redis-server process owned by the test.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// Extra redis-server arguments; `{port}` is replaced by the port.
    args: Vec<String>,
    /// URL template used by the test's own connections; `{port}` is replaced.
    url_template: String,
    /// CA certificate (PEM) for TLS servers.
    ca: Option<Vec<u8>>,
}

impl RedisServer {
    /// Starts redis-server on a free port (never 6379).
    pub fn start() -> Self {
        Self::start_with(&["--port", "{port}"], "redis://127.0.0.1:{port}", None)
    }

    /// Starts redis-server with `args` (`{port}` = the chosen port); the test connects with
    /// `url_template` and, for TLS, trusts `ca` (PEM).
    pub fn start_with(args: &[&str], url_template: &str, ca: Option<Vec<u8>>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "phx-gw-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self {
                port,
                child: None,
                dir: dir.clone(),
                args: args.iter().map(|a| a.to_string()).collect(),
                url_template: url_template.to_owned(),
                ca: ca.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? apt-get install redis-server)");
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(self.args.iter().map(|a| a.replace("{port}", &port)))
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false; // exited: port clash
            }
            if self.conn().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The URL to connect with (by default `redis://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        self.url_template.replace("{port}", &self.port.to_string())
    }

    /// The directory the server runs in (for certificates and the like).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn conn(&self) -> Option<redis::Connection> {
        let client = match &self.ca {
            Some(ca) => {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                };
                redis::Client::build_with_tls(self.url(), certs).ok()?
            }
            None => redis::Client::open(self.url()).ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// Runs a command and returns its reply.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self.conn().expect("redis reachable");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) the server: connections stay open but
    /// nothing is answered while paused.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill {sig} failed");
    }

    /// Starts an empty server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gateway node as a real process.
pub struct NodeProcess {
    pub port: u16,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    child: Child,
}

/// The value of `series` (name and labels, exactly) in a Prometheus text page; 0 if absent.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A blocking HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

impl NodeProcess {
    /// Starts `phx-gateway` with Redis at `redis_url`, the given extra env, on a free port;
    /// waits until it accepts connections.
    pub fn start(redis_url: &str, name: &str, env: &[(&str, &str)]) -> Self {
        for _ in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_phx-gateway"));
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("PHX_GATEWAY__HTTP__PORT", port.to_string())
                .env("PHX_GATEWAY__ADMIN__PORT", admin_port.to_string())
                .env("PHX_GATEWAY__REDIS__NODE_NAME", name)
                .env(
                    "RUST_LOG",
                    std::env::var("TEST_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null());
            if std::env::var("TEST_GATEWAY_LOG").is_err() {
                cmd.stderr(Stdio::null());
            }
            if !redis_url.is_empty() {
                cmd.env("PHX_GATEWAY__REDIS__URL", redis_url);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn phx-gateway");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Self {
                        port,
                        admin_port,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("gateway node {name} did not start");
    }

    /// `ws://127.0.0.1:<port>/socket/websocket?<query>`.
    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/socket/websocket?{}", self.port, query)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// GET on the admin port.
    pub fn admin(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    /// Waits (bounded) until the node holds no socket, channel, channel task or presence.
    pub async fn wait_idle(&self, timeout: Duration) {
        wait_until(
            "sockets, channels, channel tasks and presences back to zero",
            timeout,
            || {
                let page = self.admin("/metrics").map(|r| r.1).unwrap_or_default();
                metric(&page, "phx_gateway_sockets{transport=\"websocket\"}") == 0.0
                    && metric(&page, "phx_gateway_channels") == 0.0
                    && metric(&page, "phx_gateway_channel_tasks") == 0.0
                    && metric(&page, "phx_gateway_presence_entries") == 0.0
            },
        )
        .await;
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
