//! A real `redis-server` on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A redis-server process owned by the test.
pub(crate) struct RedisServer {
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
    pub(crate) fn start() -> Self {
        Self::start_with(&["--port", "{port}"], "redis://127.0.0.1:{port}", None)
    }

    /// Starts redis-server with `args` (`{port}` = the chosen port); the test connects with
    /// `url_template` and, for TLS, trusts `ca` (PEM).
    pub(crate) fn start_with(args: &[&str], url_template: &str, ca: Option<Vec<u8>>) -> Self {
        Self::start_on(args, url_template, ca, free_port)
    }

    /// Like [`RedisServer::start_with`], on ports chosen by `pick`.
    pub(crate) fn start_on(
        args: &[&str],
        url_template: &str,
        ca: Option<Vec<u8>>,
        pick: fn() -> u16,
    ) -> Self {
        for _ in 0..5 {
            let port = pick();
            // One directory per attempt: a failed attempt's server removes its own when
            // dropped, and must not take the next attempt's with it.
            let dir = std::env::temp_dir().join(format!(
                "phx-gw-redis-{}-{}-{port}",
                std::process::id(),
                free_port()
            ));
            std::fs::create_dir_all(&dir).expect("redis dir");
            let mut server = Self {
                port,
                child: None,
                dir,
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
    pub(crate) fn url(&self) -> String {
        self.url_template.replace("{port}", &self.port.to_string())
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
    pub(crate) fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self.conn().expect("redis reachable");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// Runs a command; None if the server is unreachable or answers with an error.
    pub(crate) fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL): its data is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) the server: connections stay open but
    /// nothing is answered while paused.
    pub(crate) fn pause(&self, paused: bool) {
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
    pub(crate) fn restart(&mut self) {
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
