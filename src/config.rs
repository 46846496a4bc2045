//! Typed settings: built-in defaults < config file < `PHX_GATEWAY__*` environment variables.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing a source failed, or a key is unknown or has the wrong type.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// All gateway settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The public HTTP/WebSocket listener.
    #[serde(default)]
    pub http: HttpSettings,
    /// Per-socket protocol settings and limits.
    #[serde(default)]
    pub socket: SocketSettings,
    /// Logging.
    #[serde(default)]
    pub log: LogSettings,
    /// The demo page.
    #[serde(default)]
    pub demo: DemoSettings,
    /// Presence.
    #[serde(default)]
    pub presence: PresenceSettings,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: AdminSettings,
    /// Graceful shutdown.
    #[serde(default)]
    pub shutdown: ShutdownSettings,
    /// The long-poll transport.
    #[serde(default)]
    pub longpoll: LongPollSettings,
    /// Admission limits.
    #[serde(default)]
    pub limits: LimitSettings,
    /// Connect authentication (tokens).
    #[serde(default)]
    pub auth: AuthSettings,
    /// Backend webhooks (routes with `join = "webhook"` or an `event_webhook`).
    #[serde(default)]
    pub webhook: WebhookSettings,
    /// The server API for application backends.
    #[serde(default)]
    pub api: ApiSettings,
    /// Redis, for running several nodes as one cluster. Without `redis.url` the gateway is a
    /// single node with in-memory pub/sub and presence.
    #[serde(default)]
    pub redis: RedisSettings,
    /// Config-driven channel routes, first match wins. Empty means the built-in defaults.
    #[serde(default)]
    pub routes: Vec<RouteSettings>,
}

/// The public listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address to bind (default `127.0.0.1`; use `0.0.0.0` in containers).
    pub host: String,
    /// Port (default 4000).
    pub port: u16,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 4000,
            workers: 0,
        }
    }
}

/// Socket protocol settings and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketSettings {
    /// Mount path; transports live under it (`/socket/websocket`).
    pub path: String,
    /// A socket that sends nothing for this long is closed (Phoenix: 60 s).
    pub heartbeat_timeout_ms: u64,
    /// Largest accepted client message in bytes: one frame, or a message sent in fragments
    /// (default 8 MiB; Phoenix sets no limit). Beyond it the socket is closed with 1009.
    pub max_frame_bytes: usize,
    /// Most channels one socket may join (Phoenix: 100).
    pub max_channels: usize,
    /// Longest accepted topic in bytes.
    pub max_topic_bytes: usize,
    /// Frames queued for one socket before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Bytes queued for one socket before it is closed as a slow consumer (a single frame
    /// into an empty queue is always accepted).
    pub outbound_queue_bytes: usize,
    /// Client events queued for one channel before new ones get an error reply.
    pub channel_inbox: usize,
    /// Allowed browser origins: `true` (same host as the request, the default), `false`, or
    /// a list (`https://app.example.com`, `//*.example.com`), comma-separated in env vars.
    pub check_origin: CheckOrigin,
    /// Socket id template, e.g. `users_socket:{user_id}`: `{name}` is replaced by that
    /// connect param. Sockets without the param get no id. Empty: no ids.
    pub id: String,
}

impl Default for SocketSettings {
    fn default() -> Self {
        Self {
            path: "/socket".into(),
            heartbeat_timeout_ms: 60_000,
            max_frame_bytes: 8 * 1024 * 1024,
            max_channels: 100,
            max_topic_bytes: 255,
            outbound_queue: 1024,
            outbound_queue_bytes: 1024 * 1024,
            channel_inbox: 128,
            check_origin: CheckOrigin::default(),
            id: "users_socket:{user_id}".into(),
        }
    }
}

/// Which browser origins may open sockets. Requests without an `Origin` header (non-browser
/// clients) are always allowed, as in Phoenix.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CheckOrigin {
    /// `true`: the origin's host must be the request's `Host`; `false`: any origin.
    Enabled(bool),
    /// Allowed origins: `https://example.com`, `//example.com` (any scheme),
    /// `//*.example.com` (any subdomain), optionally with a port.
    List(Vec<String>),
    /// The same list, comma-separated (handy in environment variables).
    Text(String),
}

impl Default for CheckOrigin {
    fn default() -> Self {
        CheckOrigin::Enabled(true)
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The demo page (the Phoenix guide's chat + presence example).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSettings {
    /// Serve the demo at `/`.
    pub enabled: bool,
    /// Directory of the demo page.
    pub dir: PathBuf,
    /// The official `phoenix` client's ESM build, installed by `npm ci`.
    pub phoenix_js: PathBuf,
}

impl Default for DemoSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "demo".into(),
            phoenix_js: "node_modules/phoenix/priv/static/phoenix.mjs".into(),
        }
    }
}

/// Presence settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSettings {
    /// A topic's presence changes within this window are broadcast as one `presence_diff`
    /// (0: one diff per change). Bounds a join storm to one diff per window per subscriber.
    pub diff_batch_ms: u64,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self { diff_batch_ms: 25 }
    }
}

/// The admin listener (metrics and health), separate from the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address to bind (default `127.0.0.1`; use `0.0.0.0` in containers).
    pub host: String,
    /// Port (default 9568); 0 disables the admin listener.
    pub port: u16,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9568,
        }
    }
}

/// The long-poll transport (`<socket.path>/longpoll`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LongPollSettings {
    /// Serve long-poll (phoenix.js falls back to it when WebSockets are blocked).
    pub enabled: bool,
    /// How long a poll waits for messages before answering 204 (Phoenix: 10 s). A session
    /// that does not poll for 1.5 windows is closed.
    pub window_ms: u64,
}

impl Default for LongPollSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            window_ms: 10_000,
        }
    }
}

/// Admission limits; 0 disables a limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Sockets one node accepts (beyond: HTTP 503, the balancer tries another node).
    pub max_sockets: usize,
    /// Sockets one user (socket id) may hold on one node (beyond: HTTP 429).
    pub max_sockets_per_user: usize,
    /// New connections per second from one IP (token bucket; beyond: HTTP 429).
    pub connects_per_ip_per_second: u32,
    /// Burst of new connections from one IP.
    pub connects_per_ip_burst: u32,
    /// New connections per second to this node (token bucket; beyond: HTTP 503, the
    /// balancer tries another node).
    pub connects_per_second: u32,
    /// Burst of new connections to this node.
    pub connects_burst: u32,
    /// Channel joins per second on this node (token bucket; beyond: error reply
    /// `rate limited`).
    pub joins_per_second: u32,
    /// Burst of joins on this node.
    pub joins_burst: u32,
    /// Channel joins per second from one IP (token bucket; beyond: error reply
    /// `rate limited`).
    pub joins_per_ip_per_second: u32,
    /// Burst of joins from one IP.
    pub joins_per_ip_burst: u32,
    /// Client messages per second on one socket (token bucket; heartbeats are exempt;
    /// beyond: error reply `rate limited`).
    pub messages_per_second: u32,
    /// Burst of client messages on one socket.
    pub messages_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_sockets: 0,
            max_sockets_per_user: 0,
            connects_per_ip_per_second: 0,
            connects_per_ip_burst: 100,
            connects_per_second: 0,
            connects_burst: 1_000,
            joins_per_second: 0,
            joins_burst: 5_000,
            joins_per_ip_per_second: 0,
            joins_per_ip_burst: 500,
            messages_per_second: 1_000,
            messages_burst: 2_000,
        }
    }
}

/// How sockets authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No token: connect params are trusted as they are (the demo).
    None,
    /// A Phoenix.Token signed by the app (same `secret_key_base` and salt).
    PhoenixToken,
    /// A JWT.
    Jwt,
}

/// JWT signature algorithms accepted (pinned: the token's header never chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `jwt_secret`.
    HS256,
    /// RSA-SHA256 with a public key or JWKS.
    RS256,
    /// ECDSA P-256 with a public key or JWKS.
    ES256,
}

/// Connect token settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `none`, `phoenix_token` or `jwt`.
    pub mode: AuthMode,
    /// Connect param carrying the token (phoenix.js `authToken` works too).
    pub token_param: String,
    /// Phoenix.Token: the app's `secret_key_base` (set from a secret).
    pub secret_key_base: Option<SecretString>,
    /// Phoenix.Token: the salt the app signs with.
    pub salt: String,
    /// Phoenix.Token: maximum token age in seconds.
    pub max_age_s: u64,
    /// JWT: accepted algorithm.
    pub jwt_algorithm: JwtAlgorithm,
    /// JWT HS256: the shared secret (set from a secret).
    pub jwt_secret: Option<SecretString>,
    /// JWT RS256/ES256: PEM public key file.
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWT RS256/ES256: JWKS file (keys chosen by `kid`).
    pub jwt_jwks_file: Option<PathBuf>,
    /// JWT: required issuer.
    pub jwt_issuer: Option<String>,
    /// JWT: required audience.
    pub jwt_audience: Option<String>,
    /// JWT: clock leeway in seconds for exp/nbf.
    pub jwt_leeway_s: u64,
    /// JWT: the claim holding the user id.
    pub user_id_claim: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            token_param: "token".into(),
            secret_key_base: None,
            salt: "user socket".into(),
            max_age_s: 86_400,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_jwks_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: 30,
            user_id_claim: "sub".into(),
        }
    }
}

/// Backend webhook client settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Timeout of one call (connect included).
    pub timeout_ms: u64,
    /// Calls in flight at most; more wait (within the timeout) for a slot.
    pub max_concurrency: usize,
    /// Sent as `Authorization: Bearer <secret>` so the backend can trust the caller.
    pub secret: Option<SecretString>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 5_000,
            max_concurrency: 64,
            secret: None,
        }
    }
}

/// The server API (`/api/v1`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Bearer key; unset or empty turns the API off (404). Set it from a secret
    /// (`PHX_GATEWAY__API__KEY`), not in a file.
    pub key: Option<SecretString>,
}

/// Graceful shutdown (drain).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// On SIGTERM, sockets are closed (code 1012) at random moments spread over this period,
    /// so that their reconnections do not hit the other nodes at once.
    pub drain_ms: u64,
    /// The same on SIGINT (Ctrl-C): faster.
    pub sigint_drain_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_ms: 10_000,
            sigint_drain_ms: 1_000,
        }
    }
}

/// Redis cluster settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// One Redis endpoint: `redis://[user:password@]host:port/db` or `rediss://` (TLS).
    /// Unset (and no cluster or Sentinel): single node.
    pub url: Option<SecretString>,
    /// Seed nodes of a Redis Cluster (`redis://host:port`, comma-separated in the
    /// environment). Exclusive with `url` and `sentinel_urls`.
    pub cluster_urls: Vec<SecretString>,
    /// Sentinels watching the primary (`redis://host:26379`, comma-separated in the
    /// environment); credentials in these URLs are the Sentinels' own. Needs
    /// `sentinel_master`.
    pub sentinel_urls: Vec<SecretString>,
    /// The name under which the Sentinels monitor the primary.
    pub sentinel_master: Option<String>,
    /// ACL user of the data nodes in Sentinel mode (the Sentinel URLs carry the Sentinels'
    /// credentials; in the other modes the URL carries them).
    pub username: Option<String>,
    /// ACL password of the data nodes in Sentinel mode.
    pub password: Option<SecretString>,
    /// PEM file of the CA that signed the Redis server's certificate (`rediss://` with a
    /// private CA). Unset: the bundled Mozilla roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every key and channel, so several gateways can share one Redis.
    pub key_prefix: String,
    /// Node name; a random suffix is added per start. Default: the host name.
    pub node_name: String,
    /// No longer used (one multiplexed connection carries every command); accepted so that
    /// an old configuration still loads, with a warning.
    pub pool_size: Option<usize>,
    /// Timeout of one Redis command (and of a connection attempt).
    pub command_timeout_ms: u64,
    /// How often a node writes its heartbeat and refreshes its keys.
    pub heartbeat_ms: u64,
    /// A node silent this long is dead: its presences are removed and their leaves broadcast.
    pub down_ms: u64,
    /// Delay before unsubscribing a topic whose last local subscriber left (absorbs flaps).
    pub unsubscribe_delay_ms: u64,
    /// Broadcasts waiting to be published; when full, new ones are dropped and counted.
    pub publish_queue: usize,
    /// Apply missing key-layout migrations at start-up (else `phx-gateway migrate` must run).
    pub auto_migrate: bool,
    /// `/readyz` stays 200 this long after Redis became unreachable (local traffic still works).
    pub ready_grace_ms: u64,
    /// The Phoenix PubSub to join, as the Phoenix app names it (e.g. `MyApp.PubSub`, whose
    /// adapter Phoenix.PubSub.Redis publishes on `phx:Elixir.MyApp.PubSub.Adapter`): its
    /// channel broadcasts reach this gateway's sockets and the gateway's broadcasts reach the
    /// Phoenix nodes' channels. Unset: off.
    pub phoenix_pubsub: Option<String>,
    /// The node name gateway nodes publish under on that channel; Phoenix nodes must use
    /// other names. A Phoenix `direct_broadcast` to it reaches every gateway node, one to a
    /// gateway's `node_name` (or node id) reaches that node.
    pub phoenix_node_name: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            cluster_urls: Vec::new(),
            sentinel_urls: Vec::new(),
            sentinel_master: None,
            username: None,
            password: None,
            tls_ca_file: None,
            key_prefix: "phx".into(),
            node_name: String::new(),
            pool_size: None,
            command_timeout_ms: 2_000,
            heartbeat_ms: 5_000,
            down_ms: 15_000,
            unsubscribe_delay_ms: 2_000,
            publish_queue: 65_536,
            auto_migrate: true,
            ready_grace_ms: 30_000,
            phoenix_pubsub: None,
            phoenix_node_name: "phx-gateway".into(),
        }
    }
}

/// How the gateway reaches Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// No Redis: one node, in-memory pub/sub and presence.
    Embedded,
    /// One endpoint (`redis.url`).
    Single,
    /// A Redis Cluster (`redis.cluster_urls`).
    Cluster,
    /// A primary found through Sentinel (`redis.sentinel_urls`, `redis.sentinel_master`).
    Sentinel,
}

impl RedisSettings {
    /// The configured topology (after `validated`, at most one is set).
    pub fn mode(&self) -> RedisMode {
        if !self.cluster_urls.is_empty() {
            RedisMode::Cluster
        } else if !self.sentinel_urls.is_empty() {
            RedisMode::Sentinel
        } else if self.url.is_some() {
            RedisMode::Single
        } else {
            RedisMode::Embedded
        }
    }
}

/// Checks that `url` is a redis:// or rediss:// URL; `what` names the setting.
fn check_redis_url(what: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::Invalid(format!("{what} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "redis" | "rediss") {
        return Err(ConfigError::Invalid(format!(
            "{what} must start with redis:// or rediss://, not {}://",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::Invalid(format!("{what} has no host")));
    }
    Ok(())
}

/// Whether a route accepts joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinPolicy {
    /// Every join is accepted.
    Allow,
    /// Every join is refused with `deny_reason`.
    Deny,
    /// Allowed when a socket assign (a token claim, `join_claim`) lists a matching topic
    /// pattern.
    Claim,
    /// The backend decides (`join_webhook`).
    Webhook,
}

/// The order of a joiner's `presence_state` and its own track.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceOrder {
    /// Push `presence_state`, then track: the joiner's own join arrives as a diff.
    #[default]
    StateThenTrack,
    /// Track, then push `presence_state` holding the joiner's own presence.
    TrackThenState,
}

/// What a route's members learn about the topic's presences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceMode {
    /// `presence_state` and `presence_diff`: every member sees the member list (Phoenix).
    #[default]
    List,
    /// `presence_count` `{"users", "connections"}` only, at most once per
    /// `presence_count_interval_ms`: for rooms where a member list is pointless.
    Counts,
}

/// A config-driven channel route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    /// Topic pattern: exact, or a prefix ending in `*`.
    pub topic: String,
    /// Join policy.
    #[serde(default = "default_join")]
    pub join: JoinPolicy,
    /// Reason given when joins are refused.
    #[serde(default = "default_deny_reason")]
    pub deny_reason: String,
    /// Assign (connect param) whose value keys this socket's presence. None: no presence.
    #[serde(default)]
    pub presence_key: Option<String>,
    /// Presence meta fields: `online_at` (unix seconds, as Phoenix's guide) or a join-param name.
    #[serde(default)]
    pub presence_meta: Vec<String>,
    /// Client event whose payload (an object) replaces the presence meta fields.
    #[serde(default)]
    pub presence_update_event: Option<String>,
    /// When the joiner's own presence is tracked: after its `presence_state` (the Phoenix
    /// presence guide: its own join comes as a diff) or before (later guides and many apps:
    /// its own presence is already in its `presence_state`).
    #[serde(default)]
    pub presence_order: PresenceOrder,
    /// `list` (Phoenix's `presence_state`/`presence_diff`) or `counts` (`presence_count`).
    #[serde(default)]
    pub presence: PresenceMode,
    /// With `presence = "counts"`: the least time between two `presence_count` events of a
    /// topic.
    #[serde(default = "default_presence_count_interval_ms")]
    pub presence_count_interval_ms: u64,
    /// Client events broadcast to every subscriber, the sender included; replied `ok`.
    #[serde(default)]
    pub broadcast: Vec<String>,
    /// Client events broadcast to every subscriber but the sender; replied `ok`.
    #[serde(default)]
    pub broadcast_from: Vec<String>,
    /// Client events answered `ok` with their own payload.
    #[serde(default)]
    pub echo: Vec<String>,
    /// With `join = "claim"`: the assign (token claim) listing allowed topic patterns.
    #[serde(default = "default_join_claim")]
    pub join_claim: String,
    /// With `join = "webhook"`: the backend URL asked about each join.
    #[serde(default)]
    pub join_webhook: Option<String>,
    /// Backend URL for client events no other setting handles.
    #[serde(default)]
    pub event_webhook: Option<String>,
    /// Messages kept per topic for recovery and backfill (docs/history.md); 0: no history.
    #[serde(default)]
    pub history_size: usize,
    /// How long a topic's history outlives its last message, in seconds.
    #[serde(default = "default_history_ttl_s")]
    pub history_ttl_s: u64,
}

fn default_presence_count_interval_ms() -> u64 {
    1000
}

fn default_history_ttl_s() -> u64 {
    300
}

fn default_join_claim() -> String {
    "topics".into()
}

fn default_join() -> JoinPolicy {
    JoinPolicy::Allow
}

fn default_deny_reason() -> String {
    "unauthorized".into()
}

/// The guide's routes: `room:private:*` refused, `room:lobby` and `room:*` open with chat
/// events and presence keyed by `user_id`.
pub fn default_routes() -> Vec<RouteSettings> {
    let room = |topic: &str| RouteSettings {
        topic: topic.into(),
        join: JoinPolicy::Allow,
        deny_reason: default_deny_reason(),
        presence_key: Some("user_id".into()),
        presence_meta: vec!["online_at".into()],
        presence_update_event: Some("update_meta".into()),
        presence_order: PresenceOrder::StateThenTrack,
        presence: PresenceMode::List,
        presence_count_interval_ms: default_presence_count_interval_ms(),
        broadcast: vec!["new_msg".into()],
        broadcast_from: vec!["typing".into()],
        echo: vec!["ping".into()],
        join_claim: default_join_claim(),
        join_webhook: None,
        event_webhook: None,
        history_size: 100,
        history_ttl_s: default_history_ttl_s(),
    };
    vec![
        RouteSettings {
            join: JoinPolicy::Deny,
            presence_key: None,
            presence_meta: vec![],
            presence_update_event: None,
            broadcast: vec![],
            broadcast_from: vec![],
            echo: vec![],
            history_size: 0,
            ..room("room:private:*")
        },
        room("room:lobby"),
        room("room:*"),
    ]
}

impl Settings {
    /// Loads settings: defaults, then `file` (or `config/gateway.toml` if it exists), then
    /// the environment (`PHX_GATEWAY__HTTP__PORT=4001`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let default_file = Path::new("config/gateway.toml");
        let mut builder = config::Config::builder();
        match file {
            Some(path) => {
                builder = builder.add_source(config::File::from(path.to_path_buf()).required(true))
            }
            None if default_file.exists() => {
                builder = builder.add_source(config::File::from(default_file.to_path_buf()))
            }
            None => {}
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PHX_GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("redis.cluster_urls")
                .with_list_parse_key("redis.sentinel_urls"),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validated()
    }

    /// Settings with every default (used by tests and as the base of `load`).
    pub fn defaults() -> Self {
        Settings {
            http: HttpSettings::default(),
            socket: SocketSettings::default(),
            log: LogSettings::default(),
            demo: DemoSettings::default(),
            presence: PresenceSettings::default(),
            admin: AdminSettings::default(),
            shutdown: ShutdownSettings::default(),
            api: ApiSettings::default(),
            longpoll: LongPollSettings::default(),
            webhook: WebhookSettings::default(),
            auth: AuthSettings::default(),
            limits: LimitSettings::default(),
            redis: RedisSettings::default(),
            routes: default_routes(),
        }
    }

    /// Empty settings count as unset (an empty environment variable); exactly one topology
    /// may remain, each URL well formed.
    fn validate_redis_topology(&mut self) -> Result<(), ConfigError> {
        let r = &mut self.redis;
        if r.url.as_ref().is_some_and(|u| u.expose_secret().is_empty()) {
            r.url = None;
        }
        r.cluster_urls
            .retain(|u| !u.expose_secret().trim().is_empty());
        r.sentinel_urls
            .retain(|u| !u.expose_secret().trim().is_empty());
        if r.sentinel_master
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            r.sentinel_master = None;
        }
        let set = [
            r.url.is_some(),
            !r.cluster_urls.is_empty(),
            !r.sentinel_urls.is_empty(),
        ];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::Invalid(
                "set only one of redis.url, redis.cluster_urls and redis.sentinel_urls".into(),
            ));
        }
        if let Some(url) = &r.url {
            check_redis_url("redis.url", url.expose_secret())?;
        }
        for url in &r.cluster_urls {
            check_redis_url("redis.cluster_urls", url.expose_secret().trim())?;
        }
        for url in &r.sentinel_urls {
            check_redis_url("redis.sentinel_urls", url.expose_secret().trim())?;
        }
        match (r.sentinel_urls.is_empty(), r.sentinel_master.is_some()) {
            (false, false) => Err(ConfigError::Invalid(
                "redis.sentinel_urls needs redis.sentinel_master (the monitored master's name)"
                    .into(),
            )),
            (true, true) => Err(ConfigError::Invalid(
                "redis.sentinel_master is set but redis.sentinel_urls is not".into(),
            )),
            _ => Ok(()),
        }?;
        self.validate_phoenix_pubsub()
    }

    /// The Phoenix PubSub to join: a module name, on one Redis endpoint (Phoenix.PubSub.Redis
    /// talks to one server through Redix, never to a Redis Cluster).
    fn validate_phoenix_pubsub(&mut self) -> Result<(), ConfigError> {
        let r = &mut self.redis;
        if r.phoenix_pubsub
            .as_deref()
            .is_some_and(|n| n.trim().is_empty())
        {
            r.phoenix_pubsub = None;
        }
        let Some(name) = &r.phoenix_pubsub else {
            return Ok(());
        };
        let module_like = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !module_like || name.starts_with('.') || name.ends_with('.') {
            return Err(ConfigError::Invalid(format!(
                "redis.phoenix_pubsub must be the PubSub's module name as the Phoenix app writes it (e.g. MyApp.PubSub): {name:?}"
            )));
        }
        if r.url.is_none() && r.sentinel_urls.is_empty() {
            return Err(ConfigError::Invalid(
                "redis.phoenix_pubsub needs the Redis the Phoenix app uses: set redis.url or redis.sentinel_urls (Phoenix.PubSub.Redis does not run on a Redis Cluster)".into(),
            ));
        }
        if r.phoenix_node_name.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "redis.phoenix_node_name must not be empty".into(),
            ));
        }
        Ok(())
    }

    /// Checks values and fills in the default routes when none are configured.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        if self.routes.is_empty() {
            self.routes = default_routes();
        }
        let s = &self.socket;
        if !s.path.starts_with('/') || s.path.ends_with('/') {
            return Err(ConfigError::Invalid(format!(
                "socket.path must start with `/` and not end with one: {:?}",
                s.path
            )));
        }
        if s.heartbeat_timeout_ms == 0
            || s.max_frame_bytes == 0
            || s.outbound_queue == 0
            || s.outbound_queue_bytes == 0
            || s.channel_inbox == 0
        {
            return Err(ConfigError::Invalid(
                "socket.heartbeat_timeout_ms, max_frame_bytes, outbound_queue, outbound_queue_bytes and channel_inbox must be > 0".into(),
            ));
        }
        self.validate_redis_topology()?;
        let a = &self.auth;
        match a.mode {
            AuthMode::None => {}
            AuthMode::PhoenixToken => {
                if a.secret_key_base
                    .as_ref()
                    .is_none_or(|s| s.expose_secret().len() < 20)
                {
                    return Err(ConfigError::Invalid(
                        "auth.mode = phoenix_token needs auth.secret_key_base (at least 20 bytes; PHX_GATEWAY__AUTH__SECRET_KEY_BASE)".into(),
                    ));
                }
            }
            AuthMode::Jwt => {
                let ok = match a.jwt_algorithm {
                    JwtAlgorithm::HS256 => a
                        .jwt_secret
                        .as_ref()
                        .is_some_and(|s| !s.expose_secret().is_empty()),
                    _ => a.jwt_public_key_file.is_some() || a.jwt_jwks_file.is_some(),
                };
                if !ok {
                    return Err(ConfigError::Invalid(
                        "auth.mode = jwt needs auth.jwt_secret (HS256) or auth.jwt_public_key_file / auth.jwt_jwks_file (RS256, ES256)".into(),
                    ));
                }
            }
        }
        let r = &self.redis;
        if r.heartbeat_ms == 0 || r.down_ms < 2 * r.heartbeat_ms {
            return Err(ConfigError::Invalid(
                "redis.down_ms must be at least twice redis.heartbeat_ms (> 0)".into(),
            ));
        }
        if r.key_prefix.is_empty() || r.key_prefix.contains(['{', '}']) || r.publish_queue == 0 {
            return Err(ConfigError::Invalid(
                "redis.key_prefix must be non-empty without braces; publish_queue > 0".into(),
            ));
        }
        for r in &self.routes {
            if r.join == JoinPolicy::Webhook && r.join_webhook.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "route {:?}: join = \"webhook\" needs join_webhook",
                    r.topic
                )));
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reproduce_the_guide() {
        let s = Settings::defaults().validated().expect("valid");
        assert_eq!((s.http.host.as_str(), s.http.port), ("127.0.0.1", 4000));
        assert_eq!(s.routes[0].topic, "room:private:*");
        assert_eq!(s.routes[0].join, JoinPolicy::Deny);
        assert_eq!(s.socket.heartbeat_timeout_ms, 60_000);
    }

    #[test]
    fn joining_a_phoenix_pubsub_needs_its_redis_and_a_module_name() {
        let with = |f: fn(&mut RedisSettings)| {
            let mut s = Settings::defaults();
            f(&mut s.redis);
            s.validated()
        };
        let ok = with(|r| {
            r.url = Some("redis://127.0.0.1:7000".into());
            r.phoenix_pubsub = Some("MyApp.PubSub".into());
        })
        .expect("one endpoint");
        assert_eq!(ok.redis.phoenix_pubsub.as_deref(), Some("MyApp.PubSub"));
        let off = with(|r| r.phoenix_pubsub = Some(" ".into())).expect("blank is unset");
        assert_eq!(off.redis.phoenix_pubsub, None);
        for bad in [
            with(|r| r.phoenix_pubsub = Some("MyApp.PubSub".into())),
            with(|r| {
                r.cluster_urls = vec!["redis://127.0.0.1:7000".into()];
                r.phoenix_pubsub = Some("MyApp.PubSub".into());
            }),
            with(|r| {
                r.url = Some("redis://127.0.0.1:7000".into());
                r.phoenix_pubsub = Some("phx:MyApp PubSub".into());
            }),
            with(|r| {
                r.url = Some("redis://127.0.0.1:7000".into());
                r.phoenix_pubsub = Some("MyApp.PubSub".into());
                r.phoenix_node_name = String::new();
            }),
        ] {
            assert!(matches!(bad, Err(ConfigError::Invalid(_))), "{bad:?}");
        }
    }

    #[test]
    fn shipped_config_file_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
        let file = Settings::load(Some(&path)).expect("config/gateway.toml loads");
        let defaults = Settings::defaults();
        assert_eq!(
            format!("{:?}", file.routes),
            format!("{:?}", defaults.routes)
        );
        assert_eq!(
            format!("{:?}", file.socket),
            format!("{:?}", defaults.socket)
        );
        assert_eq!(format!("{:?}", file.http), format!("{:?}", defaults.http));
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("phx-gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "[http]\nport = 4100\n[[routes]]\ntopic = \"chat:*\"\necho = [\"ping\"]\n",
        )
        .unwrap();
        let s = Settings::load(Some(&good)).expect("loads");
        assert_eq!(s.http.port, 4100);
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.routes[0].join, JoinPolicy::Allow);

        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[http]\nprot = 4100\n").unwrap();
        assert!(Settings::load(Some(&bad)).is_err());
    }
}
