//! `Phoenix.Token` verifier. Input layout:
//!
//! - byte 0, flags: bit 0 set = the rest is an ETF message that the harness signs with the
//!   verifier's key (so fuzzing reaches the term decoder, decompression and the age checks
//!   behind the MAC), clear = the rest is the token text as received; bits 1-2 = max age
//!   (0/3: the token's own, 1: `Seconds(t)`, 2: infinity); bits 3-4 = header for signed
//!   messages (1: HS384, 2: HS512, else HS256); bit 5 = `now_ms` is `t` instead of a fixed
//!   time inside the seeds' validity; bit 6 = verifier with 5 s future leeway.
//! - bytes 1..9: `t`, a big-endian u64.
//! - the rest: token text or ETF message.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use phx_gateway::auth::{MaxAge, PhoenixToken};
use sha2::{Sha256, Sha384, Sha512};

/// The secret and salt of the unit tests in src/auth/phoenix_token.rs.
const SKB: &str = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij";
const SALT: &str = "user socket";
/// Just after the seeds were signed (1_700_000_000_000), inside a one-hour max age.
const NOW_MS: u64 = 1_700_000_001_000;
/// A reference token from the unit tests, used to check the harness's own signing.
const VECTOR_42: &str =
    "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y";

struct Fixture {
    strict: PhoenixToken,
    lenient: PhoenixToken,
    /// PBKDF2-HMAC-SHA256(SKB, SALT, 1000, 32), derived here as Plug.Crypto does.
    key: [u8; 32],
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let mut key = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(SKB.as_bytes(), SALT.as_bytes(), 1000, &mut key);
    let strict = PhoenixToken::new(SKB, SALT);
    let fixture = Fixture {
        lenient: strict.clone().with_future_leeway_ms(5000),
        strict,
        key,
    };
    // The harness signs exactly like the gateway, or signed inputs would test nothing.
    let payload = URL_SAFE_NO_PAD
        .decode(VECTOR_42.split('.').nth(1).unwrap())
        .unwrap();
    assert_eq!(sign(&fixture.key, "SFMyNTY", &payload), VECTOR_42);
    fixture
});

fn tag<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn sign(key: &[u8], header: &str, message: &[u8]) -> String {
    let mut token = format!("{header}.");
    URL_SAFE_NO_PAD.encode_string(message, &mut token);
    let mac = match header {
        "SFMzODQ" => tag::<Hmac<Sha384>>(key, token.as_bytes()),
        "SFM1MTI" => tag::<Hmac<Sha512>>(key, token.as_bytes()),
        _ => tag::<Hmac<Sha256>>(key, token.as_bytes()),
    };
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac, &mut token);
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

    let max_age = match (flags >> 1) & 3 {
        1 => MaxAge::Seconds(t),
        2 => MaxAge::Infinity,
        _ => MaxAge::Token,
    };
    let now_ms = if flags & 0x20 != 0 { t } else { NOW_MS };
    let verifier = if flags & 0x40 != 0 {
        &fixture.lenient
    } else {
        &fixture.strict
    };

    if flags & 1 != 0 {
        let header = match (flags >> 3) & 3 {
            1 => "SFMzODQ",
            2 => "SFM1MTI",
            _ => "SFMyNTY",
        };
        let token = sign(&fixture.key, header, rest);
        let _ = verifier.verify_max_age(&token, max_age, now_ms);
    } else if let Ok(token) = std::str::from_utf8(rest) {
        let _ = verifier.verify_max_age(token, max_age, now_ms);
    }
});
