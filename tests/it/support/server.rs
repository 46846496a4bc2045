//! An in-process gateway on a free port, alone or as a cluster node.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use futures_util::FutureExt;
use phx_gateway::config::{AuthMode, JoinPolicy, JwtAlgorithm, Settings};
use phx_gateway::Gateway;

use super::client::Client;
use super::logs;
use super::redis_server::RedisServer;

/// A gateway running in-process on its own thread and runtime.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    handle: actix_web::dev::ServerHandle,
}

impl TestServer {
    /// Starts a gateway with the default settings changed by `tweak`.
    pub(crate) fn start(tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::defaults();
        settings.http.workers = 1;
        tweak(&mut settings);
        let gateway = Gateway::start(settings.validated().expect("valid settings"))
            .now_or_never()
            .expect("a single-node gateway starts without waiting")
            .expect("gateway");
        Self::start_gateway(gateway)
    }

    /// Starts a cluster node on Redis at `redis_url` (Redis tasks run on the caller's runtime).
    pub(crate) async fn start_node(redis_url: &str, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::defaults();
        settings.http.workers = 1;
        settings.redis.url = Some(redis_url.into());
        settings.redis.heartbeat_ms = 300;
        settings.redis.down_ms = 1000;
        settings.redis.unsubscribe_delay_ms = 100;
        tweak(&mut settings);
        let gateway = Gateway::start(settings.validated().expect("valid settings"))
            .await
            .expect("node starts");
        Self::start_gateway(gateway)
    }

    /// `N` cluster nodes on `redis`, each started with [`TestServer::start_node`].
    pub(crate) async fn cluster<const N: usize>(
        redis: &RedisServer,
        tweak: impl Fn(&mut Settings),
    ) -> [Self; N] {
        let mut nodes = Vec::with_capacity(N);
        for _ in 0..N {
            nodes.push(Self::start_node(&redis.url(), &tweak).await);
        }
        match nodes.try_into() {
            Ok(nodes) => nodes,
            Err(_) => unreachable!("started {N} nodes"),
        }
    }

    /// Starts a prepared gateway (e.g. with Rust channels).
    pub(crate) fn start_gateway(gateway: Gateway) -> Self {
        logs::install();
        let gateway = Arc::new(gateway);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let running = phx_gateway::server::start(gateway.clone(), listener).expect("server starts");
        run_in_background(running.server);
        Self {
            addr: running.addr,
            gateway,
            handle: running.handle,
        }
    }

    /// The WebSocket URL with a query string.
    pub(crate) fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// Connects a client with `vsn=2.0.0` and the given extra params.
    pub(crate) async fn v2(&self, params: &str) -> Client {
        Client::connect(&self.ws_url(&format!("vsn=2.0.0&{params}"))).await
    }

    /// Connects a client with `vsn=1.0.0` and the given extra params.
    pub(crate) async fn v1(&self, params: &str) -> Client {
        Client::connect(&self.ws_url(&format!("vsn=1.0.0&{params}"))).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.gateway.start_drain(std::time::Duration::ZERO);
        stop_in_background(self.handle.clone());
    }
}

/// The HS256 secret of [`jwt_claim_server`].
pub(crate) const JWT_SECRET: &str = "jwt-test-secret-0123456789";

/// A gateway that takes HS256 JWTs signed with [`JWT_SECRET`], with a `team:*` route whose
/// joins the token's `topics` claim authorizes.
pub(crate) fn jwt_claim_server() -> TestServer {
    TestServer::start(|s: &mut Settings| {
        s.auth.mode = AuthMode::Jwt;
        s.auth.jwt_algorithm = JwtAlgorithm::HS256;
        s.auth.jwt_secret = Some(JWT_SECRET.into());
        let mut claimed = phx_gateway::config::default_routes().remove(2);
        claimed.topic = "team:*".into();
        claimed.join = JoinPolicy::Claim;
        s.routes.insert(0, claimed);
    })
}

/// Runs an actix server on a thread and runtime of its own (in-process gateways, backends).
pub(crate) fn run_in_background(server: actix_web::dev::Server) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _ = rt.block_on(server);
    });
}

/// Stops a server started with [`run_in_background`]. Stopping needs a runtime; the server's
/// thread ends once the server future resolves.
pub(crate) fn stop_in_background(handle: actix_web::dev::ServerHandle) {
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(handle.stop(false));
        }
    });
}
