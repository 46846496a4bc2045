//! The security claims of docs/security.md that no other test file proves: safe defaults
//! (origin check, admin port, limits), the server API's key handling, the webhook bearer
//! secret, reserved topics, and that no secret, token or key ever reaches the logs, the
//! `config check` output or the settings' `Debug` text.

use std::path::PathBuf;

use base64::Engine;
use phx_gateway::auth::sign_hs256;
use phx_gateway::config::CheckOrigin;
use phx_gateway::config::Settings;
use serde_json::{json, Value};

use crate::support::backend::Backend;
use crate::support::client::ws_status;
use crate::support::http::{http, http_raw};
use crate::support::process::{run_gateway, NodeProcess};
use crate::support::redis_server::RedisServer;
use crate::support::server::{jwt_claim_server, JWT_SECRET};
use crate::support::{free_port, now_ms, Client, TestServer};

// ---------------------------------------------------------------------------------------
// Safe defaults.

#[tokio::test]
async fn the_default_origin_check_refuses_cross_origin_browsers() {
    let srv = TestServer::start(|_| {});
    assert_eq!(
        srv.gateway.settings.socket.check_origin,
        CheckOrigin::Enabled(true),
        "the origin check is on by default"
    );
    let url = srv.ws_url("vsn=2.0.0");
    let port = srv.addr.port();
    for origin in [
        "https://evil.example.com".to_owned(),
        "null".to_owned(),
        // Same host name, other port; and the gateway's authority as a prefix of another host.
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{port}.evil.example.com"),
    ] {
        assert_eq!(
            ws_status(&url, &[("Origin", &origin)]).await,
            403,
            "a browser page at {origin} must not open a socket"
        );
    }
    // The page served by the gateway's own host, and non-browser clients (no Origin).
    let same = format!("http://127.0.0.1:{port}");
    assert_eq!(ws_status(&url, &[("Origin", &same)]).await, 101);
    assert_eq!(ws_status(&url, &[]).await, 101);

    // Long-poll runs the same connect checks: a foreign origin cannot open a session.
    let path = "/socket/longpoll?vsn=2.0.0";
    let (status, body) = http_raw(
        srv.addr,
        "GET",
        path,
        &[("Origin", "https://evil.example.com")],
        "",
    )
    .await;
    assert_eq!(
        status, 200,
        "long-poll answers 200 with the status in the body"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["status"],
        403,
        "{body}"
    );
    let (_, body) = http_raw(srv.addr, "GET", path, &[("Origin", &same)], "").await;
    let opened: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(opened["status"], 410, "same origin opens a session: {body}");
}

#[tokio::test]
async fn listeners_default_to_loopback_and_admin_endpoints_are_not_public() {
    let defaults = Settings::defaults();
    let shipped = Settings::load(Some(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml"),
    ))
    .expect("config/gateway.toml loads");
    for (what, s) in [("defaults", &defaults), ("config/gateway.toml", &shipped)] {
        assert_eq!(s.http.host, "127.0.0.1", "{what}: public listener");
        assert_eq!(s.admin.host, "127.0.0.1", "{what}: admin listener");
        assert_ne!(s.admin.port, s.http.port, "{what}: admin has its own port");
        assert!(s.api.key.is_none(), "{what}: no API key, so no server API");
    }
    // /metrics, /healthz and /readyz live only on the admin listener.
    let srv = TestServer::start(|_| {});
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, body) = http_raw(srv.addr, "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path} on the public port: {body}");
    }
}

#[tokio::test]
async fn long_poll_session_tokens_are_128_random_bits() {
    let srv = TestServer::start(|_| {});
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let (_, body) = http_raw(srv.addr, "GET", "/socket/longpoll?vsn=2.0.0", &[], "").await;
        let opened: Value = serde_json::from_str(&body).expect("JSON");
        let token = opened["token"].as_str().expect("session token");
        let (node, random) = token.rsplit_once('.').expect("<node>.<random>");
        assert!(!node.is_empty(), "{token}");
        assert!(
            random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "128 bits of hex after the node name: {token}"
        );
        assert!(
            seen.insert(random.to_owned()),
            "a session token repeated: {token}"
        );
    }
    // A made-up token opens a new session of its own; it never reaches someone else's.
    let (_, body) = http_raw(
        srv.addr,
        "GET",
        "/socket/longpoll?vsn=2.0.0&token=local.00000000000000000000000000000000",
        &[],
        "",
    )
    .await;
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["status"], 410, "{body}");
    assert_ne!(answer["token"], "local.00000000000000000000000000000000");
}

#[tokio::test]
async fn the_demo_serves_only_plain_file_names_from_its_directory() {
    let srv = TestServer::start(|_| {});
    let (status, _) = http_raw(srv.addr, "GET", "/demo/app.js", &[], "").await;
    assert_eq!(status, 200, "the demo is on by default");
    for path in [
        "/demo/..%2FCargo.toml",
        "/demo/%2E%2E%2FCargo.toml",
        "/demo/..%5CCargo.toml",
        "/demo/.gitignore",
        "/demo/../Cargo.toml",
        "/demo/%2Fetc%2Fpasswd",
    ] {
        let (status, body) = http_raw(srv.addr, "GET", path, &[], "").await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            !body.contains("[package]") && !body.contains("root:"),
            "{path}: {body}"
        );
    }
    let srv = TestServer::start(|s| s.demo.enabled = false);
    let (status, _) = http_raw(srv.addr, "GET", "/demo/app.js", &[], "").await;
    assert_eq!(status, 404, "demo.enabled = false removes it");
}

#[test]
fn protective_limits_are_on_by_default() {
    let s = Settings::defaults();
    assert_eq!(s.socket.max_frame_bytes, 8 * 1024 * 1024);
    assert_eq!(s.socket.max_channels, 100);
    assert_eq!(s.socket.max_topic_bytes, 255);
    assert_eq!(s.socket.heartbeat_timeout_ms, 60_000);
    assert_eq!(
        (s.socket.outbound_queue, s.socket.outbound_queue_bytes),
        (1024, 1024 * 1024)
    );
    assert_eq!(s.socket.channel_inbox, 128);
    assert_eq!(
        (s.limits.messages_per_second, s.limits.messages_burst),
        (1_000, 2_000)
    );
    assert_eq!(
        (s.webhook.timeout_ms, s.webhook.max_concurrency),
        (5_000, 64)
    );
    // Documented as off by default (docs/security.md, known gaps): per-node and per-user
    // socket caps and the per-IP connection rate.
    assert_eq!(
        (
            s.limits.max_sockets,
            s.limits.max_sockets_per_user,
            s.limits.connects_per_ip_per_second
        ),
        (0, 0, 0)
    );
}

// ---------------------------------------------------------------------------------------
// The server API.

#[tokio::test]
async fn an_empty_api_key_disables_the_api_instead_of_matching_an_empty_bearer() {
    let srv = TestServer::start(|s| s.api.key = Some(String::new().into()));
    for bearer in [None, Some("")] {
        let (status, _) = http(srv.addr, "GET", "/api/v1/info", bearer, None).await;
        assert_eq!(status, 404, "bearer {bearer:?}");
    }
    // A header with nothing after "Bearer " is not a match for a configured key either.
    let srv = TestServer::start(|s| s.api.key = Some("k-123".into()));
    let (status, _) = http_raw(
        srv.addr,
        "GET",
        "/api/v1/info",
        &[("Authorization", "Bearer ")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    // The key is compared whole: a prefix, another scheme or the bare key do not pass.
    for header in ["Bearer k-12", "Bearer k-1234", "Basic k-123", "k-123"] {
        let (status, _) = http_raw(
            srv.addr,
            "GET",
            "/api/v1/info",
            &[("Authorization", header)],
            "",
        )
        .await;
        assert_eq!(status, 401, "{header:?}");
    }
    let (status, _) = http(srv.addr, "GET", "/api/v1/info", Some("k-123"), None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_api_cannot_publish_to_reserved_internal_topics() {
    let srv = TestServer::start(|s| s.api.key = Some("k-123".into()));
    let body = json!({"topic": "phx_internal:lp:some-node", "event": "poll", "payload": {}});
    let (status, answer) = http(
        srv.addr,
        "POST",
        "/api/v1/broadcast",
        Some("k-123"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("reserved")),
        "{answer}"
    );
    // One reserved topic in a batch refuses the whole batch.
    let batch = json!({"messages": [
        {"topic": "room:1", "event": "e"},
        {"topic": "phx_internal:x", "event": "e"}
    ]});
    let (status, _) = http(
        srv.addr,
        "POST",
        "/api/v1/broadcast",
        Some("k-123"),
        Some(&batch),
    )
    .await;
    assert_eq!(status, 400);
    // Nor can it disconnect an internal topic.
    let (status, answer) = http(
        srv.addr,
        "POST",
        "/api/v1/disconnect",
        Some("k-123"),
        Some(&json!({"socket_id": "phx_internal:lp:some-node"})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = http(
        srv.addr,
        "POST",
        "/api/v1/disconnect",
        Some("k-123"),
        Some(&json!({"socket_id": "users_socket:1"})),
    )
    .await;
    assert!(
        status < 300,
        "an ordinary socket id is accepted: {status} {answer}"
    );
}

// ---------------------------------------------------------------------------------------
// Join authorization with tokens.

/// With token auth, assigns come from the token's claims only: a connect param cannot supply
/// a claim the token does not carry (it is kept under the `params` assign instead).
#[tokio::test]
async fn connect_params_cannot_stand_in_for_token_claims() {
    let srv = jwt_claim_server();
    let token = sign_hs256(
        &json!({"sub": "u1", "exp": (now_ms() / 1000) + 600}),
        JWT_SECRET.as_bytes(),
    )
    .expect("signs");
    let mut c = srv.v2(&format!("token={token}&topics=team:*")).await;
    let reply = c.join("1", "team:red").await;
    assert_eq!(
        reply[4]["status"], "error",
        "a token without a topics claim must not join a claim route: {reply}"
    );
}

// ---------------------------------------------------------------------------------------
// Webhooks: how the backend recognises the gateway.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_calls_carry_the_shared_secret_as_a_bearer_token() {
    let backend = Backend::start();
    for secret in [Some("hook-secret-1"), None] {
        let srv = TestServer::start(|s| {
            s.routes = vec![backend.route("hook:*")];
            s.webhook.secret = secret.map(Into::into);
        });
        let mut c = srv.v2("user_id=w").await;
        assert_eq!(c.join("1", "hook:1").await[4]["status"], "ok");
        let got = backend.pop_authorization().expect("the backend was called");
        assert_eq!(
            got,
            secret.map(|s| format!("Bearer {s}")),
            "with webhook.secret {secret:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Secrets stay out of the settings' Debug text, the CLI's output and the logs.

#[test]
fn settings_debug_output_redacts_every_secret() {
    let mut s = Settings::defaults();
    s.auth.secret_key_base = Some("SKB-secret-value-0123456789".into());
    s.auth.jwt_secret = Some("JWT-secret-value-0123456789".into());
    s.webhook.secret = Some("HOOK-secret-value-0123456789".into());
    s.api.key = Some("API-secret-value-0123456789".into());
    s.redis.url = Some("redis://gw:REDIS-secret-value@127.0.0.1:6390/0".into());
    let text = format!("{s:?} {s:#?}");
    for secret in [
        "SKB-secret-value",
        "JWT-secret-value",
        "HOOK-secret-value",
        "API-secret-value",
        "REDIS-secret-value",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into Debug:\n{text}"
        );
    }
    assert!(text.matches("[REDACTED]").count() >= 5, "{text}");
    // The non-secret settings next to them are still shown.
    assert!(
        text.contains("user socket") && text.contains("HS256"),
        "{text}"
    );
}

/// One environment variable.
type Env<'a> = (&'a str, &'a str);

#[test]
fn config_check_never_prints_secrets_valid_or_not() {
    let secrets = [
        ("PHX_GATEWAY__AUTH__MODE", "phoenix_token"),
        (
            "PHX_GATEWAY__AUTH__SECRET_KEY_BASE",
            "SKB-cli-secret-0123456789",
        ),
        ("PHX_GATEWAY__AUTH__JWT_SECRET", "JWT-cli-secret-0123456789"),
        ("PHX_GATEWAY__API__KEY", "API-cli-secret-0123456789"),
        ("PHX_GATEWAY__WEBHOOK__SECRET", "HOOK-cli-secret-0123456789"),
    ];
    let ran = run_gateway(&["config", "check"], &secrets);
    let (code, out) = (ran.code, ran.output());
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    for (_, v) in &secrets[1..] {
        assert!(!out.contains(v), "{v} printed: {out}");
    }

    // Invalid values: the error names the setting, never the value.
    let invalid: [(&[Env], &str, &str); 3] = [
        (
            &[(
                "PHX_GATEWAY__REDIS__URL",
                "http://gw:REDIS-cli-secret@127.0.0.1:6390/0",
            )],
            "redis.url",
            "REDIS-cli-secret",
        ),
        (
            &[(
                "PHX_GATEWAY__REDIS__URL",
                "redis://gw:REDIS-cli-secret@127.0.0.1:notaport/0",
            )],
            "redis.url",
            "REDIS-cli-secret",
        ),
        (
            &[
                ("PHX_GATEWAY__AUTH__MODE", "phoenix_token"),
                ("PHX_GATEWAY__AUTH__SECRET_KEY_BASE", "SKB-short"),
            ],
            "secret_key_base",
            "SKB-short",
        ),
    ];
    for (env, names, secret) in invalid {
        let ran = run_gateway(&["config", "check"], env);
        let (code, out) = (ran.code, ran.output());
        assert_eq!(code, Some(2), "{env:?}: {out}");
        assert!(out.contains(names), "the error names {names}: {out}");
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }

    // A config file with a secret next to a typo: the error names the typo only.
    let file = "tests/fixtures/secret-next-to-a-typo.toml";
    let ran = run_gateway(&["--config", file, "config", "check"], &[]);
    let (code, out) = (ran.code, ran.output());
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("kye"), "{out}");
    assert!(!out.contains("API-file-secret"), "{out}");
}

/// The last `.`-separated segment of a token (its signature).
fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_key_reaches_the_logs_even_at_trace_level() {
    const JWT: &str = "JWT-log-secret-4f1c9a7e0b";
    const API: &str = "API-log-secret-8d2e6b4a1c";
    const WRONG_API: &str = "WRONG-api-key-3b7f0e9d2a";
    const HOOK: &str = "HOOK-log-secret-6a0c3e8f1b";
    const HOOK_URL_KEY: &str = "HOOKURL-log-secret-1e5d";
    const REDIS_PASS: &str = "REDIS-log-secret-9c4b2a7d";
    let redis = RedisServer::start_with(
        &[
            "--port",
            "{port}",
            "--user",
            "default",
            "off",
            "--user",
            "gw",
            "on",
            &format!(">{REDIS_PASS}"),
            "~*",
            "&*",
            "+@all",
        ],
        &format!("redis://gw:{REDIS_PASS}@127.0.0.1:{{port}}"),
        None,
    );
    // A join webhook whose backend is down (the call fails and is logged), with a key in
    // its URL.
    let dir = std::env::temp_dir().join(format!(
        "phx-gw-sec-log-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[routes]]\ntopic = \"hook:*\"\njoin = \"webhook\"\njoin_webhook = \"http://127.0.0.1:{}/join?key={HOOK_URL_KEY}\"\n\n[[routes]]\ntopic = \"room:*\"\n",
            free_port()
        ),
    )
    .expect("write config");
    let redis_url = redis.url();
    let node = NodeProcess::start_logged(
        &["--config", config.to_str().expect("utf-8 path")],
        &[
            ("RUST_LOG", "trace"),
            ("PHX_GATEWAY__REDIS__URL", &redis_url),
            ("PHX_GATEWAY__AUTH__MODE", "jwt"),
            ("PHX_GATEWAY__AUTH__JWT_SECRET", JWT),
            ("PHX_GATEWAY__API__KEY", API),
            ("PHX_GATEWAY__WEBHOOK__SECRET", HOOK),
            ("PHX_GATEWAY__WEBHOOK__TIMEOUT_MS", "1000"),
            ("PHX_GATEWAY__LONGPOLL__WINDOW_MS", "500"),
            ("PHX_GATEWAY__SHUTDOWN__DRAIN_MS", "100"),
        ],
    );
    let exp = (now_ms() / 1000) + 600;
    let mint =
        |user: &str| sign_hs256(&json!({"sub": user, "exp": exp}), JWT.as_bytes()).expect("signs");
    let in_query = mint("sec-query");
    let in_subprotocol = mint("sec-subprotocol");
    let in_longpoll_header = mint("sec-longpoll");
    let forged = sign_hs256(
        &json!({"sub": "sec-forged", "exp": exp}),
        b"another-secret-entirely",
    )
    .expect("signs");
    let expired = sign_hs256(
        &json!({"sub": "sec-expired", "exp": (now_ms() / 1000) - 3600}),
        JWT.as_bytes(),
    )
    .expect("signs");

    // A token in the query string, used for a join that calls the (dead) webhook.
    let mut c = Client::connect(&node.ws_url(&format!("vsn=2.0.0&token={in_query}"))).await;
    let reply = c.join("1", "hook:1").await;
    assert_eq!(
        reply[4]["response"]["reason"], "backend unavailable",
        "{reply}"
    );
    node.wait_for_log("webhook call failed").await;
    c.join("2", "room:1").await;

    // A token in the authToken subprotocol, as phoenix.js sends it.
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&in_subprotocol);
    let protocols = format!("phoenix, base64url.bearer.phx.{b64}");
    let url = node.ws_url("vsn=2.0.0");
    assert_eq!(
        ws_status(&url, &[("Sec-WebSocket-Protocol", &protocols)]).await,
        101
    );

    // Refused tokens, in both places.
    for bad in [&forged, &expired] {
        let url = node.ws_url(&format!("vsn=2.0.0&token={bad}"));
        assert_eq!(ws_status(&url, &[]).await, 403);
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(bad);
        let protocols = format!("phoenix, base64url.bearer.phx.{b64}");
        assert_eq!(
            ws_status(
                &node.ws_url("vsn=2.0.0"),
                &[("Sec-WebSocket-Protocol", &protocols)]
            )
            .await,
            403
        );
    }
    node.wait_for_log("connect refused").await;

    // Long-poll: the connect token in its header, then the session token in the query.
    let (_, body) = http_raw(
        node.addr(),
        "GET",
        "/socket/longpoll?vsn=2.0.0",
        &[("x-phoenix-authtoken", &in_longpoll_header)],
        "",
    )
    .await;
    let opened: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(opened["status"], 410, "{body}");
    let session = opened["token"].as_str().expect("session token").to_owned();
    let (_, body) = http_raw(
        node.addr(),
        "GET",
        &format!("/socket/longpoll?vsn=2.0.0&token={session}"),
        &[],
        "",
    )
    .await;
    let polled: Value = serde_json::from_str(&body).expect("JSON");
    assert!(
        matches!(polled["status"].as_u64(), Some(200 | 204)),
        "{body}"
    );

    // The server API, with a wrong key and then the right one.
    let (status, _) = http(node.addr(), "GET", "/api/v1/info", Some(WRONG_API), None).await;
    assert_eq!(status, 401);
    let (status, _) = http(node.addr(), "GET", "/api/v1/info", Some(API), None).await;
    assert_eq!(status, 200);
    node.wait_for_log("server API: missing or wrong key").await;

    c.close().await;
    let output = node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    // The logs did record these connections, at the levels asked for...
    for needle in [
        "users_socket:sec-query",
        "users_socket:sec-subprotocol",
        "cluster node started",
        "TRACE",
        "DEBUG",
    ] {
        assert!(
            output.contains(needle),
            "expected {needle:?} in the logs:\n{output}"
        );
    }
    // ...and nothing secret.
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD_NO_PAD.encode(t);
    let secrets = [
        ("JWT secret", JWT.to_owned()),
        ("API key", API.to_owned()),
        ("wrong API key", WRONG_API.to_owned()),
        ("webhook secret", HOOK.to_owned()),
        ("key in the webhook URL", HOOK_URL_KEY.to_owned()),
        ("Redis password", REDIS_PASS.to_owned()),
        ("query token", in_query.clone()),
        ("query token signature", signature(&in_query).to_owned()),
        ("subprotocol token", in_subprotocol.clone()),
        (
            "subprotocol token signature",
            signature(&in_subprotocol).to_owned(),
        ),
        ("subprotocol token, base64", b64(&in_subprotocol)),
        ("long-poll header token", in_longpoll_header.clone()),
        ("forged token signature", signature(&forged).to_owned()),
        ("expired token signature", signature(&expired).to_owned()),
        ("long-poll session token", session.clone()),
        (
            "long-poll session token, random part",
            signature(&session).to_owned(),
        ),
    ];
    for (what, secret) in secrets {
        assert!(
            !output.contains(&secret),
            "the {what} appears in the logs:\n{output}"
        );
    }
}
