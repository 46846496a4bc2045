//! Connect tokens: Phoenix.Token and JWT, via connect params and the phoenix.js authToken
//! subprotocol; claim-based join authorization; the `token` subcommand.

use phx_gateway::auth::{sign_hs256, PhoenixToken};
use phx_gateway::config::{AuthMode, Settings};
use serde_json::json;

use crate::support::client::ws_status;
use crate::support::process::run_gateway;
use crate::support::server::{jwt_claim_server, JWT_SECRET};
use crate::support::{now_ms, TestServer};

const SECRET: &str = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij";

fn phoenix_server() -> TestServer {
    TestServer::start(|s: &mut Settings| {
        s.auth.mode = AuthMode::PhoenixToken;
        s.auth.secret_key_base = Some(SECRET.into());
    })
}

#[tokio::test]
async fn phoenix_tokens_authenticate_and_name_the_user() {
    let srv = phoenix_server();
    let signer = PhoenixToken::new(SECRET, "user socket");
    let token = signer.sign(&json!(42), now_ms(), 3600).expect("signs");
    // The token's user wins over a user_id the client made up.
    let mut c = srv.v2(&format!("token={token}&user_id=evil")).await;
    c.join("1", "room:lobby").await;
    let diff = c
        .recv_until("own presence", |v| v[3] == "presence_diff")
        .await;
    assert!(
        diff[4]["joins"].get("42").is_some(),
        "presence keyed by the token's user: {diff}"
    );
    assert!(diff[4]["joins"].get("evil").is_none());

    let expired = signer
        // Older than the configured max age (auth.max_age_s = 1 day), which overrides the token's.
        .sign(&json!(42), now_ms() - 2 * 86_400_000, 3600)
        .expect("signs");
    // Change one character in the middle of the signature (the last one may carry only
    // padding bits).
    let mid = token.len() - 10;
    let flipped = if &token[mid..=mid] == "A" { "B" } else { "A" };
    let forged = format!("{}{flipped}{}", &token[..mid], &token[mid + 1..]);
    let other_salt = PhoenixToken::new(SECRET, "other salt")
        .sign(&json!(42), now_ms(), 3600)
        .expect("signs");
    for bad in [
        expired.as_str(),
        forged.as_str(),
        other_salt.as_str(),
        "garbage",
        "",
    ] {
        assert_eq!(
            ws_status(&srv.ws_url(&format!("vsn=2.0.0&token={bad}")), &[]).await,
            403,
            "token {bad:?}"
        );
    }
    assert_eq!(
        ws_status(&srv.ws_url("vsn=2.0.0"), &[]).await,
        403,
        "a missing token is refused"
    );
}

#[tokio::test]
async fn the_auth_token_subprotocol_carries_the_token() {
    use base64::Engine;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let srv = phoenix_server();
    let token = PhoenixToken::new(SECRET, "user socket")
        .sign(&json!("user-7"), now_ms(), 3600)
        .expect("signs");
    // What phoenix.js sends: btoa(token) without padding.
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&token);
    let mut req = srv
        .ws_url("vsn=2.0.0")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("phoenix, base64url.bearer.phx.{b64}")
            .parse()
            .expect("header"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connects with the subprotocol token");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("phoenix")
    );
    drop(ws);
}

#[tokio::test]
async fn jwts_authenticate_and_claims_authorize_joins() {
    let srv = jwt_claim_server();
    let exp = now_ms() / 1000 + 600;
    let token = sign_hs256(
        &json!({"sub": "u1", "exp": exp, "topics": ["team:red"], "role": "admin"}),
        JWT_SECRET.as_bytes(),
    )
    .expect("signs");
    let mut c = srv.v2(&format!("token={token}")).await;
    assert_eq!(c.join("1", "team:red").await[4]["status"], "ok");
    let refused_join = c.join("2", "team:blue").await;
    assert_eq!(
        refused_join[4],
        json!({"response": {"reason": "unauthorized"}, "status": "error"})
    );

    let expired = sign_hs256(
        &json!({"sub": "u1", "exp": now_ms() / 1000 - 3600}),
        JWT_SECRET.as_bytes(),
    )
    .expect("signs");
    let forged = sign_hs256(&json!({"sub": "u1", "exp": exp}), b"not-the-secret").expect("signs");
    for bad in [expired, forged] {
        assert_eq!(
            ws_status(&srv.ws_url(&format!("vsn=2.0.0&token={bad}")), &[]).await,
            403
        );
    }
}

#[test]
fn the_token_subcommand_mints_verifiable_tokens() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let ran = run_gateway(&[&["token"], args].concat(), env);
        (ran.code, ran.stdout.trim().to_owned(), ran.stderr)
    };
    let phoenix = [
        ("PHX_GATEWAY__AUTH__MODE", "phoenix_token"),
        ("PHX_GATEWAY__AUTH__SECRET_KEY_BASE", SECRET),
    ];
    let (code, token, err) = run(&phoenix, &["--user-id", "42"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        PhoenixToken::new(SECRET, "user socket")
            .verify(&token, None, now_ms())
            .expect("verifies"),
        json!(42)
    );

    let jwt = [
        ("PHX_GATEWAY__AUTH__MODE", "jwt"),
        ("PHX_GATEWAY__AUTH__JWT_SECRET", JWT_SECRET),
    ];
    let (code, token, err) = run(
        &jwt,
        &["--user-id", "u9", "--claims", r#"{"topics":["room:*"]}"#],
    );
    assert_eq!(code, Some(0), "{err}");
    let verifier = phx_gateway::auth::JwtVerifier::new(
        phx_gateway::auth::JwtKey::Hs256(JWT_SECRET.as_bytes().to_vec()),
        None,
        None,
        30,
    )
    .expect("verifier");
    let claims = verifier.verify(&token).expect("verifies");
    assert_eq!(
        (claims["sub"].clone(), claims["topics"].clone()),
        (json!("u9"), json!(["room:*"]))
    );

    // A mode that needs a secret fails fast without one.
    let (code, _, err) = run(
        &[("PHX_GATEWAY__AUTH__MODE", "phoenix_token")],
        &["--user-id", "1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("secret_key_base"), "{err}");
}
