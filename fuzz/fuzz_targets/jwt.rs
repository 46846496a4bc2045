//! HS256 JWT verifier. Input layout:
//!
//! - byte 0, flags: bit 0 set = the rest is `[header JSON "\0"] claims JSON`, which the
//!   harness encodes and signs with the verifier's secret (so fuzzing reaches claim parsing
//!   and the iss/aud/exp/nbf checks behind the signature; without a `\0` the header is
//!   `{"typ":"JWT","alg":"HS256"}`), clear = the rest is the token text as received;
//!   bit 1 = verifier that requires `iss`/`aud`; bit 5 = `now_s` is `t` instead of a fixed
//!   time inside the seeds' validity.
//! - bytes 1..9: `t`, a big-endian u64.
//! - the rest: token text, or header/claims.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use phx_gateway::auth::{JwtKey, JwtVerifier};
use sha2::Sha256;

const SECRET: &[u8] = b"hs256-test-secret-0123456789abcdef";
/// The seeds' claims expire at 1_750_003_600.
const NOW_S: u64 = 1_750_000_000;
const DEFAULT_HEADER: &[u8] = br#"{"typ":"JWT","alg":"HS256"}"#;

struct Fixture {
    plain: JwtVerifier,
    iss_aud: JwtVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| Fixture {
    plain: JwtVerifier::new(JwtKey::Hs256(SECRET.to_vec()), None, None, 30).expect("verifier"),
    iss_aud: JwtVerifier::new(
        JwtKey::Hs256(SECRET.to_vec()),
        Some("https://auth.example".to_owned()),
        Some("phx-gateway".to_owned()),
        30,
    )
    .expect("verifier"),
});

fn sign(header: &[u8], claims: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET).expect("any key length");
    mac.update(token.as_bytes());
    let tag = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let fixture = &*FIXTURE;
    let flags = data[0];
    let t = u64::from_be_bytes(data[1..9].try_into().unwrap());
    let rest = &data[9..];
    let now_s = if flags & 0x20 != 0 { t } else { NOW_S };
    let verifier = if flags & 2 != 0 {
        &fixture.iss_aud
    } else {
        &fixture.plain
    };

    if flags & 1 != 0 {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (DEFAULT_HEADER, rest),
        };
        let token = sign(header, claims);
        // Whatever the claims, an accepted token carries `exp` (it is required).
        if let Ok(claims) = verifier.verify_at(&token, now_s) {
            assert!(claims.contains_key("exp"), "exp is required");
        }
    } else if let Ok(token) = std::str::from_utf8(rest) {
        let _ = verifier.verify_at(token, now_s);
    }
});
