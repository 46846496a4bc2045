//! Real Redis topologies for failover tests: a 3-master + 3-replica Redis Cluster, and a
//! primary with a replica watched by three `redis-sentinel`s, all on free ports.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::redis_server::RedisServer;

/// Polls `cond` (blocking) every 50 ms until it holds, or panics naming `what`.
fn wait_blocking(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A private CA and a server certificate for 127.0.0.1 (openssl), for TLS topologies.
pub(crate) struct TestCa {
    dir: std::path::PathBuf,
    /// The CA certificate (PEM file), for `redis.tls_ca_file`.
    pub ca_file: std::path::PathBuf,
    /// The same, read.
    pub ca_pem: Vec<u8>,
}

impl TestCa {
    /// Generates the CA and the server certificate in a temporary directory.
    pub(crate) fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("phx-gw-ca-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("dir");
        for cmd in [
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=phx-test-ca 2>/dev/null",
            "openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null",
            "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf",
            "openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 -extfile ext.cnf 2>/dev/null",
        ] {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{cmd} (openssl needed)");
        }
        let ca_file = dir.join("ca.crt");
        let ca_pem = std::fs::read(&ca_file).expect("ca");
        Self {
            dir,
            ca_file,
            ca_pem,
        }
    }

    /// The server certificate, its key and the CA certificate (paths).
    pub(crate) fn server_files(&self) -> (String, String, String) {
        let path = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
        (path("srv.crt"), path("srv.key"), path("ca.crt"))
    }

    /// redis-server arguments for the server certificate.
    fn server_args(&self) -> Vec<String> {
        let (crt, key, ca) = self.server_files();
        vec![
            "--tls-cert-file".into(),
            crt,
            "--tls-key-file".into(),
            key,
            "--tls-ca-cert-file".into(),
            ca,
        ]
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port for a cluster node: its bus listens on port + 10000, which must be a valid,
/// free port too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of 6 `redis-server --cluster-enabled yes`, made 3 masters + 3 replicas
/// by `redis-cli --cluster create`.
pub(crate) struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub(crate) struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// Slot ranges served (masters).
    pub slots: Vec<(u16, u16)>,
}

impl RedisCluster {
    /// Starts the six servers and creates the cluster (`cluster-node-timeout 2000`).
    pub(crate) fn start() -> Self {
        Self::start_as(None)
    }

    /// Like [`RedisCluster::start`], every node reachable only as the ACL user `user` with
    /// `password` (the default user off; replicas authenticate the same way).
    pub(crate) fn start_with_acl(user: &str, password: &str) -> Self {
        Self::start_as(Some((user, password)))
    }

    /// Like [`RedisCluster::start`], over TLS only (clients, cluster bus and replication),
    /// with a certificate for 127.0.0.1 signed by `tls`'s CA.
    pub(crate) fn start_tls(tls: &TestCa) -> Self {
        Self::start_full(None, Some(tls))
    }

    fn start_as(acl: Option<(&str, &str)>) -> Self {
        Self::start_full(acl, None)
    }

    fn start_full(acl: Option<(&str, &str)>, tls: Option<&TestCa>) -> Self {
        let mut args: Vec<String> = [
            "--port",
            "{port}",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .map(String::from)
        .to_vec();
        let mut url = "redis://127.0.0.1:{port}".to_owned();
        if let Some((user, password)) = acl {
            let pw = format!(">{password}");
            args.extend(["--user", user, "on", &pw, "~*", "&*", "+@all"].map(String::from));
            args.extend(["--user", "default", "off"].map(String::from));
            args.extend(["--masteruser", user, "--masterauth", password].map(String::from));
            url = format!("redis://{user}:{password}@127.0.0.1:{{port}}");
        }
        if let Some(tls) = tls {
            args[0] = "--tls-port".into();
            args.extend(
                [
                    "--port",
                    "0",
                    "--tls-cluster",
                    "yes",
                    "--tls-replication",
                    "yes",
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from),
            );
            args.extend(tls.server_args());
            url = url.replace("redis://", "rediss://");
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ca = tls.map(|t| t.ca_pem.clone());
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| RedisServer::start_on(&args, &url, ca.clone(), cluster_port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some((user, password)) = acl {
            create.args(["--user", user, "--pass", password, "--no-auth-warning"]);
        }
        if let Some(tls) = tls {
            create.arg("--tls").arg("--cacert").arg(&tls.ca_file);
        }
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install redis-tools)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`, they agree on 3 masters, and
    /// every replica is in sync with its master (a replica that never synced refuses to
    /// fail over: its data would be too old).
    pub(crate) fn wait_ok(&self) {
        wait_blocking(
            "cluster_state:ok on every node, replicas in sync",
            Duration::from_secs(30),
            || {
                self.live().all(|n| {
                    n.try_cmd::<String>(&["CLUSTER", "INFO"])
                        .is_some_and(|i| i.contains("cluster_state:ok"))
                        && n.try_cmd::<String>(&["INFO", "replication"])
                            .is_some_and(|i| {
                                i.contains("role:master") || i.contains("master_link_status:up")
                            })
                }) && self.masters().len() == 3
            },
        );
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Seed URLs for `redis.cluster_urls` (comma-separated, all six).
    pub(crate) fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The cluster's view (`CLUSTER NODES` from a live node), failed nodes left out.
    pub(crate) fn topology(&self) -> Vec<ClusterNode> {
        let text: String = self
            .live()
            .find_map(|n| n.try_cmd(&["CLUSTER", "NODES"]))
            .expect("a live cluster node");
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let flags = *f.get(2)?;
                if flags.contains("fail") || flags.contains("noaddr") {
                    return None;
                }
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                let slots = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Some(ClusterNode {
                    id: f[0].to_owned(),
                    port,
                    master: flags.contains("master"),
                    slots,
                })
            })
            .collect()
    }

    /// The live masters.
    pub(crate) fn masters(&self) -> Vec<ClusterNode> {
        self.topology().into_iter().filter(|n| n.master).collect()
    }

    /// The slot of `key`.
    pub(crate) fn slot(&self, key: &str) -> u16 {
        let slot: i64 = self
            .live()
            .find_map(|n| n.try_cmd(&["CLUSTER", "KEYSLOT", key]))
            .expect("a live node");
        u16::try_from(slot).expect("slot")
    }

    /// The master that serves `key`'s slot now.
    pub(crate) fn master_of(&self, key: &str) -> ClusterNode {
        let slot = self.slot(key);
        self.masters()
            .into_iter()
            .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// The server process on `port`.
    pub(crate) fn server(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    /// Runs a command on every live master and returns their replies.
    pub(crate) fn on_masters<T: redis::FromRedisValue>(&self, args: &[&str]) -> Vec<T> {
        self.masters()
            .iter()
            .filter_map(|m| self.nodes.iter().find(|n| n.port == m.port))
            .map(|n| n.cmd(args))
            .collect()
    }

    /// Moves `slot` (and its keys) from its master to `to` with CLUSTER SETSLOT and
    /// MIGRATE, as `redis-cli --cluster reshard` does for one slot.
    pub(crate) fn move_slot(&self, slot: u16, to: &ClusterNode) {
        let from = self
            .masters()
            .into_iter()
            .find(|m| m.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .expect("the slot's master");
        let src = self
            .nodes
            .iter()
            .find(|n| n.port == from.port)
            .expect("src");
        let dst = self.nodes.iter().find(|n| n.port == to.port).expect("dst");
        let s = slot.to_string();
        dst.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from.id]);
        src.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to.id]);
        loop {
            let keys: Vec<String> = src.cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            if keys.is_empty() {
                break;
            }
            let port = to.port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            src.cmd::<()>(&args);
        }
        for m in self.masters() {
            let n = self
                .nodes
                .iter()
                .find(|n| n.port == m.port)
                .expect("master");
            n.cmd::<()>(&["CLUSTER", "SETSLOT", &s, "NODE", &to.id]);
        }
    }
}

/// A primary, one replica and three `redis-sentinel`s monitoring it as `mymaster`
/// (`down-after-milliseconds 1000`).
pub(crate) struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Child>,
    pub sentinel_ports: Vec<u16>,
    dir: std::path::PathBuf,
    sentinel_password: Option<String>,
    /// The CA (PEM) of TLS Sentinels.
    ca: Option<Vec<u8>>,
}

impl RedisSentinels {
    /// The master name the Sentinels monitor.
    pub(crate) const MASTER: &'static str = "mymaster";

    /// Starts everything and waits until the Sentinels see the replica.
    pub(crate) fn start() -> Self {
        Self::start_as(None)
    }

    /// Like [`RedisSentinels::start`], the data nodes protected by `data_password` and the
    /// Sentinels by `sentinel_password`.
    pub(crate) fn start_with_passwords(data_password: &str, sentinel_password: &str) -> Self {
        Self::start_full(Some((data_password, sentinel_password)), None)
    }

    /// Like [`RedisSentinels::start`], everything over TLS only (clients, replication, the
    /// Sentinels' own port) with certificates of `tls`'s CA.
    pub(crate) fn start_tls(tls: &TestCa) -> Self {
        Self::start_full(None, Some(tls))
    }

    fn start_as(passwords: Option<(&str, &str)>) -> Self {
        Self::start_full(passwords, None)
    }

    fn start_full(passwords: Option<(&str, &str)>, tls: Option<&TestCa>) -> Self {
        let (mut auth_args, mut url): (Vec<String>, String) = match passwords {
            Some((data, _)) => (
                ["--requirepass", data, "--masterauth", data]
                    .map(String::from)
                    .to_vec(),
                format!("redis://:{data}@127.0.0.1:{{port}}"),
            ),
            None => (vec![], "redis://127.0.0.1:{port}".to_owned()),
        };
        let port_flag = if tls.is_some() {
            "--tls-port"
        } else {
            "--port"
        };
        if let Some(tls) = tls {
            auth_args.extend(
                [
                    "--port",
                    "0",
                    "--tls-replication",
                    "yes",
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from),
            );
            auth_args.extend(tls.server_args());
            url = url.replace("redis://", "rediss://");
        }
        let ca = tls.map(|t| t.ca_pem.clone());
        let mut primary_args = vec![port_flag, "{port}"];
        primary_args.extend(auth_args.iter().map(String::as_str));
        let primary = RedisServer::start_with(&primary_args, &url, ca.clone());
        let replica_of = format!("127.0.0.1 {}", primary.port);
        let (host, port) = replica_of.split_once(' ').expect("addr");
        let mut replica_args = vec![port_flag, "{port}", "--replicaof", host, port];
        replica_args.extend(auth_args.iter().map(String::as_str));
        let replica = RedisServer::start_with(&replica_args, &url, ca.clone());
        let dir = std::env::temp_dir().join(format!(
            "phx-gw-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel dir");
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3 {
            let sport = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "{listen}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {m} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {m} 1000\n\
                     sentinel failover-timeout {m} 5000\n\
                     sentinel parallel-syncs {m} 1\n{auth}",
                    dir.display(),
                    primary.port,
                    m = Self::MASTER,
                    listen = match tls {
                        Some(t) => format!(
                            "port 0\ntls-port {sport}\ntls-replication yes\ntls-auth-clients no\n{}",
                            t.server_args()
                                .chunks(2)
                                .map(|kv| format!("{} {}", kv[0].trim_start_matches("--"), kv[1]))
                                .collect::<Vec<_>>()
                                .join("\n")
                        ),
                        None => format!("port {sport}"),
                    },
                    auth = match passwords {
                        Some((data, sentinel)) => format!(
                            "sentinel auth-pass {} {data}\nrequirepass {sentinel}\n",
                            Self::MASTER
                        ),
                        None => String::new(),
                    },
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-sentinel (apt-get install redis-sentinel)");
            sentinels.push(child);
            sentinel_ports.push(sport);
        }
        let s = Self {
            primary,
            replica,
            sentinels,
            sentinel_ports,
            dir,
            sentinel_password: passwords.map(|(_, s)| s.to_owned()),
            ca,
        };
        wait_blocking("the replica in sync", Duration::from_secs(20), || {
            s.replica
                .try_cmd::<String>(&["INFO", "replication"])
                .is_some_and(|i| i.contains("master_link_status:up"))
        });
        wait_blocking(
            "every sentinel to know the replica and the other sentinels",
            Duration::from_secs(20),
            || {
                s.sentinel_ports.iter().all(|p| {
                    s.sentinel_cmd(*p, &["SENTINEL", "MASTER", Self::MASTER])
                        .is_some_and(|v| {
                            let v = format!("{v:?}");
                            v.contains("num-slaves") && !v.contains("\"num-slaves\", \"0\"")
                        })
                })
            },
        );
        s
    }

    /// Sentinel URLs for `redis.sentinel_urls` (with the Sentinels' password, if any).
    pub(crate) fn urls(&self) -> String {
        let auth = self
            .sentinel_password
            .as_deref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        self.sentinel_ports
            .iter()
            .map(|p| format!("{scheme}://{auth}127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The primary's port according to the Sentinels (the first that answers).
    pub(crate) fn primary_port(&self) -> Option<u16> {
        self.sentinel_ports.iter().find_map(|p| {
            let v =
                self.sentinel_cmd(*p, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER])?;
            let addr: Vec<String> = redis::from_redis_value(v).ok()?;
            addr.get(1)?.parse().ok()
        })
    }
}

impl RedisSentinels {
    fn sentinel_cmd(&self, port: u16, args: &[&str]) -> Option<redis::Value> {
        let auth = self
            .sentinel_password
            .as_deref()
            .map_or(String::new(), |p| format!(":{p}@"));
        let client = match &self.ca {
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://{auth}127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .ok()?,
            None => redis::Client::open(format!("redis://{auth}127.0.0.1:{port}")).ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
