//! `Phoenix.Token` compatible signing and verification (PROTOCOL.md §11).
//!
//! A token is `HEADER "." b64url(message) "." b64url(HMAC(key, HEADER "." b64url(message)))`
//! where `key = PBKDF2-HMAC-SHA256(secret_key_base, salt, 1000 iterations, 32 bytes)` and
//! `message = term_to_binary({data, signed_at_ms, max_age_s})`. We mint `SFMyNTY` (HS256) and
//! accept `SFMzODQ` (HS384) and `SFM1MTI` (HS512) as Plug.Crypto does.
//!
//! The data term is returned as JSON: integers → numbers (outside `i64`/`u64` → invalid rather
//! than rounded), floats → numbers, UTF-8 binaries → strings (non-UTF-8 binaries → invalid, as
//! Jason would refuse them), `true`/`false`/`nil` → `true`/`false`/`null`, other atoms → strings,
//! lists and tuples → arrays, maps → objects (binary/atom keys as text, other keys as their JSON
//! text). Pids, references, funs, ports, bitstrings and improper lists → invalid.
//!
//! Payloads made with plug_crypto 2.2's `compressed: true` are accepted (bounded
//! decompression); `local: true` payloads are rejected, as only the issuing runtime can
//! decode them.

use super::{TokenError, MAX_TOKEN_LEN};
use crate::etf::{self, json as etf_json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

/// `base64url("HS256")`: the header `Phoenix.Token.sign` always writes.
const HS256_HEADER: &str = "SFMyNTY";
/// `base64url("HS384")`, accepted when verifying.
const HS384_HEADER: &str = "SFMzODQ";
/// `base64url("HS512")`, accepted when verifying.
const HS512_HEADER: &str = "SFM1MTI";

/// Plug.Crypto's key-derivation defaults (`key_iterations`, `key_length`).
const KEY_ITERATIONS: u32 = 1000;
const KEY_LEN: usize = 32;

/// What a token's payload may cost to decode: real connect data is a user id or a small map.
/// A compressed payload (`compressed: true`) may inflate to at most `max_bytes`, which is what
/// stops a zlib bomb.
const TERM_LIMITS: etf::Limits = etf::Limits {
    max_bytes: 256 * 1024,
    max_depth: 64,
    max_atoms: 4096,
};

/// `max_age` written by `Phoenix.Token.sign` when none is given, and assumed for the legacy
/// token shapes that carry none.
pub const DEFAULT_MAX_AGE_S: u64 = 86_400;

/// Phoenix refuses a `secret_key_base` shorter than this when it is passed directly.
pub const MIN_SECRET_KEY_BASE_LEN: usize = 20;

/// Which maximum age to enforce when verifying (Plug.Crypto's `:max_age` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxAge {
    /// Use the max age stored in the token by its signer (the option left out).
    Token,
    /// Override with this many seconds (`0` means every token is expired).
    Seconds(u64),
    /// Never expire (`max_age: :infinity`).
    Infinity,
}

/// A verifier/signer for one `(secret_key_base, salt)` pair, e.g. `"user socket"`.
///
/// The PBKDF2 key is derived once at construction; verification is then a single HMAC.
#[derive(Clone)]
pub struct PhoenixToken {
    key: [u8; KEY_LEN],
    salt: String,
    future_leeway_ms: u64,
}

impl std::fmt::Debug for PhoenixToken {
    // Hand-written so that the derived key can never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoenixToken")
            .field("salt", &self.salt)
            .field("key", &"<redacted>")
            .field("future_leeway_ms", &self.future_leeway_ms)
            .finish()
    }
}

/// Plain storage for the decoded message before the age check.
struct Message {
    data: eetf::Term,
    signed_ms: i128,
    max_age: StoredMaxAge,
}

/// A max age in the token may be an integer, a float (Plug does `trunc(max_age * 1000)`), or
/// `:infinity` when the signer passed `max_age: :infinity`.
enum StoredMaxAge {
    Infinity,
    /// `(seconds <= 0, trunc(seconds * 1000))`
    Finite {
        non_positive: bool,
        ms: i128,
    },
}

impl PhoenixToken {
    /// Derives the signing key from `secret_key_base` (used as raw bytes, not decoded) and
    /// `salt` with Plug.Crypto's defaults (PBKDF2-HMAC-SHA256, 1000 iterations, 32 bytes).
    ///
    /// Does not enforce Phoenix's 20-byte minimum; use [`PhoenixToken::try_new`] (or validate
    /// configuration) for that.
    pub fn new(secret_key_base: &str, salt: &str) -> Self {
        let mut key = [0u8; KEY_LEN];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            secret_key_base.as_bytes(),
            salt.as_bytes(),
            KEY_ITERATIONS,
            &mut key,
        );
        PhoenixToken {
            key,
            salt: salt.to_owned(),
            future_leeway_ms: 0,
        }
    }

    /// Like [`PhoenixToken::new`] but refuses a `secret_key_base` shorter than
    /// [`MIN_SECRET_KEY_BASE_LEN`] bytes, as `Phoenix.Token` does.
    pub fn try_new(secret_key_base: &str, salt: &str) -> Result<Self, TokenError> {
        if secret_key_base.len() < MIN_SECRET_KEY_BASE_LEN {
            return Err(TokenError::invalid("secret_key_base shorter than 20 bytes"));
        }
        Ok(Self::new(secret_key_base, salt))
    }

    /// Tolerates tokens whose `signed_at` is up to `ms` milliseconds ahead of our clock.
    ///
    /// Plug.Crypto rejects any future-dated token as invalid (the default here, `0`), which is
    /// right when signer and verifier share a clock; a gateway on another host may want a small
    /// allowance (say 5000) for clock skew, since clients connect right after being handed a
    /// freshly minted token.
    #[must_use]
    pub fn with_future_leeway_ms(mut self, ms: u64) -> Self {
        self.future_leeway_ms = ms;
        self
    }

    /// The salt this instance was built with (not secret; handy for logs).
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// Verifies `token` as `Phoenix.Token.verify(ctx, salt, token, max_age: ...)` would, at
    /// time `now_ms` (Unix milliseconds), and returns its data as JSON.
    ///
    /// `max_age`: `None` uses the max age stored in the token, `Some(s)` overrides it.
    /// Use [`PhoenixToken::verify_max_age`] for `:infinity`.
    pub fn verify(
        &self,
        token: &str,
        max_age: Option<u64>,
        now_ms: u64,
    ) -> Result<Value, TokenError> {
        let max_age = max_age.map_or(MaxAge::Token, MaxAge::Seconds);
        self.verify_max_age(token, max_age, now_ms)
    }

    /// [`PhoenixToken::verify`] with the full range of Plug.Crypto's `:max_age` option.
    pub fn verify_max_age(
        &self,
        token: &str,
        max_age: MaxAge,
        now_ms: u64,
    ) -> Result<Value, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let payload = self.verify_mac(token)?;
        let message = decode_message(&payload)?;
        check_age(&message, max_age, now_ms, self.future_leeway_ms)?;
        etf_json::term_to_json(
            &message.data,
            etf_json::Style::Token,
            0,
            TERM_LIMITS.max_depth,
        )
        .map_err(|e| TokenError::invalid(e.0))
    }

    /// Mints a token as `Phoenix.Token.sign(ctx, salt, data, signed_at: signed_at_ms / 1000,
    /// max_age: max_age_s)` would, with `data` encoded as the Elixir term `Jason.decode!` gives
    /// for it (strings → binaries, objects → maps with binary keys, `null` → `nil`).
    ///
    /// Fails only if the data cannot be encoded (nesting deeper than the verifier accepts).
    pub fn sign(
        &self,
        data: &Value,
        signed_at_ms: u64,
        max_age_s: u64,
    ) -> Result<String, TokenError> {
        // {data, signed_at_ms, max_age_s} as SMALL_TUPLE_EXT of arity 3.
        let mut message = vec![131, 104, 3];
        etf_json::encode_json(data, &mut message, 1, TERM_LIMITS.max_depth)
            .map_err(|e| TokenError::invalid(e.0))?;
        etf_json::encode_int(i128::from(signed_at_ms), &mut message);
        etf_json::encode_int(i128::from(max_age_s), &mut message);
        self.sign_message(&message)
    }

    /// Wraps an already encoded ETF message into an HS256 token.
    fn sign_message(&self, message: &[u8]) -> Result<String, TokenError> {
        let mut token = String::with_capacity(HS256_HEADER.len() + message.len() * 2 + 48);
        token.push_str(HS256_HEADER);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(message, &mut token);
        let tag = hmac_tag(HS256_HEADER, &self.key, token.as_bytes())
            .ok_or_else(|| TokenError::invalid("signing failed"))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(tag, &mut token);
        Ok(token)
    }

    /// Checks structure and MAC; returns the decoded payload bytes.
    fn verify_mac(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        let malformed = || TokenError::invalid("malformed token");
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::invalid("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        // The MAC covers the text exactly as received ("HEADER.PAYLOAD").
        let signed_part = token
            .get(..header.len() + 1 + payload_b64.len())
            .ok_or_else(malformed)?;
        let expected = hmac_tag(header, &self.key, signed_part.as_bytes())
            .ok_or_else(|| TokenError::invalid("unsupported token header"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| malformed())?;
        let signature = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| malformed())?;
        // Constant time so that the comparison leaks nothing about the expected tag; slices of
        // different lengths simply compare unequal.
        if !bool::from(expected.as_slice().ct_eq(signature.as_slice())) {
            return Err(TokenError::invalid("bad signature"));
        }
        Ok(payload)
    }
}

/// HMAC of `data` with the digest named by `header`, or `None` for an unknown header.
fn hmac_tag(header: &str, key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    fn mac<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Option<Vec<u8>> {
        // HMAC accepts keys of any length, so this never fails; still no unwrap on this path.
        let mut m = <M as KeyInit>::new_from_slice(key).ok()?;
        m.update(data);
        Some(m.finalize().into_bytes().to_vec())
    }
    match header {
        HS256_HEADER => mac::<Hmac<Sha256>>(key, data),
        HS384_HEADER => mac::<Hmac<Sha384>>(key, data),
        HS512_HEADER => mac::<Hmac<Sha512>>(key, data),
        _ => None,
    }
}

/// Decodes the ETF message and picks out the three accepted shapes.
fn decode_message(payload: &[u8]) -> Result<Message, TokenError> {
    use eetf::Term;
    let shape = || TokenError::invalid("unexpected payload shape");
    let term = etf::decode(payload, &TERM_LIMITS).map_err(|e| TokenError::invalid(e.0))?;
    let (data, signed, max_age) = match term {
        Term::Tuple(t) => {
            let mut it = t.elements.into_iter();
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some(d), Some(s), Some(m), None) => (d, s, Some(m)),
                // Plug.Crypto < 1.2 wrote {data, signed}.
                (Some(d), Some(s), None, None) => (d, s, None),
                _ => return Err(shape()),
            }
        }
        // Pre-Plug.Crypto Phoenix wrote %{data: d, signed: s}; extra keys are tolerated, as
        // Elixir's map pattern match would.
        Term::Map(mut m) => {
            let data = m
                .map
                .remove(&Term::from(eetf::Atom::from("data")))
                .ok_or_else(shape)?;
            let signed = m
                .map
                .remove(&Term::from(eetf::Atom::from("signed")))
                .ok_or_else(shape)?;
            (data, signed, None)
        }
        _ => return Err(shape()),
    };
    let signed_ms = etf_json::term_to_int(&signed).ok_or_else(shape)?;
    let max_age = match max_age {
        None => StoredMaxAge::Finite {
            non_positive: false,
            ms: i128::from(DEFAULT_MAX_AGE_S) * 1000,
        },
        Some(Term::Atom(a)) if a.name == "infinity" => StoredMaxAge::Infinity,
        Some(Term::Float(f)) => StoredMaxAge::Finite {
            non_positive: f.value <= 0.0,
            // `as` saturates for out-of-range floats; eetf only yields finite ones.
            ms: (f.value * 1000.0).trunc() as i128,
        },
        Some(other) => {
            let secs = etf_json::term_to_int(&other).ok_or_else(shape)?;
            StoredMaxAge::Finite {
                non_positive: secs <= 0,
                ms: secs.saturating_mul(1000),
            }
        }
    };
    Ok(Message {
        data,
        signed_ms,
        max_age,
    })
}

/// Plug.Crypto's `expired?/2` plus the future-timestamp check of plug_crypto HEAD, in the
/// order of PROTOCOL.md §11.2.
fn check_age(
    message: &Message,
    max_age: MaxAge,
    now_ms: u64,
    future_leeway_ms: u64,
) -> Result<(), TokenError> {
    let effective = match max_age {
        MaxAge::Token => match message.max_age {
            StoredMaxAge::Infinity => return Ok(()),
            StoredMaxAge::Finite { non_positive, ms } => (non_positive, ms),
        },
        MaxAge::Infinity => return Ok(()),
        MaxAge::Seconds(s) => (s == 0, i128::from(s).saturating_mul(1000)),
    };
    let (non_positive, max_age_ms) = effective;
    if non_positive {
        return Err(TokenError::Expired);
    }
    let now = i128::from(now_ms);
    if message.signed_ms > now.saturating_add(i128::from(future_leeway_ms)) {
        return Err(TokenError::invalid("token signed in the future"));
    }
    if message.signed_ms.saturating_add(max_age_ms) < now {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SKB: &str = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij";
    const SALT: &str = "user socket";
    const VECTOR_42: &str =
        "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y";
    const VECTOR_USER: &str =
        "SFMyNTY.g2gDbQAAAAd1c2VyLTQybgYAAGjlz4sBYgAADhA.Me5cabQyAmAundUclEP9GR-jdbHl9lu-Jq0T__bk-Hs";
    const SIGNED_AT_MS: u64 = 1_700_000_000_000;
    /// A fixed "now" well after the vectors were signed (2025-01-01).
    const NOW_2025: u64 = 1_735_689_600_000;

    /// Shared instance: PBKDF2 in a debug build is slow enough to dominate proptest runs.
    fn pt() -> &'static PhoenixToken {
        static PT: std::sync::OnceLock<PhoenixToken> = std::sync::OnceLock::new();
        PT.get_or_init(|| PhoenixToken::new(SKB, SALT))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn derives_the_reference_key() {
        assert_eq!(SKB.len(), 70);
        assert_eq!(
            hex(&pt().key),
            "25af3cea2f85f91ac39b0f0adb4dcae82c895d091e33374ed15e1dff83d136c2"
        );
    }

    #[test]
    fn signs_the_reference_vectors_byte_for_byte() {
        let t = pt();
        assert_eq!(
            t.sign(&json!(42), SIGNED_AT_MS, DEFAULT_MAX_AGE_S)
                .as_deref(),
            Ok(VECTOR_42)
        );
        assert_eq!(
            t.sign(&json!("user-42"), SIGNED_AT_MS, 3600).as_deref(),
            Ok(VECTOR_USER)
        );
    }

    #[test]
    fn payload_bytes_match_the_vector() {
        let payload = pt().verify_mac(VECTOR_42).expect("mac");
        assert_eq!(
            payload,
            [
                0x83, 0x68, 0x03, 0x61, 0x2A, 0x6E, 0x06, 0x00, 0x00, 0x68, 0xE5, 0xCF, 0x8B, 0x01,
                0x62, 0x00, 0x01, 0x51, 0x80
            ]
        );
    }

    #[test]
    fn verifies_the_reference_vectors() {
        let t = pt();
        assert_eq!(
            t.verify_max_age(VECTOR_42, MaxAge::Infinity, NOW_2025),
            Ok(json!(42))
        );
        assert_eq!(
            t.verify(VECTOR_42, None, NOW_2025),
            Err(TokenError::Expired)
        );
        assert_eq!(
            t.verify(VECTOR_42, Some(86_400), NOW_2025),
            Err(TokenError::Expired)
        );
        // Within the token's own day it is valid.
        assert_eq!(
            t.verify(VECTOR_42, None, SIGNED_AT_MS + 1000),
            Ok(json!(42))
        );
        // Boundary: signed + max_age*1000 == now is still valid (`<`, not `<=`).
        assert_eq!(
            t.verify(VECTOR_42, None, SIGNED_AT_MS + 86_400_000),
            Ok(json!(42))
        );
        assert_eq!(
            t.verify(VECTOR_42, None, SIGNED_AT_MS + 86_400_001),
            Err(TokenError::Expired)
        );

        assert_eq!(
            t.verify_max_age(VECTOR_USER, MaxAge::Infinity, NOW_2025),
            Ok(json!("user-42"))
        );
        assert_eq!(
            t.verify(VECTOR_USER, None, SIGNED_AT_MS + 3_600_000),
            Ok(json!("user-42"))
        );
        assert_eq!(
            t.verify(VECTOR_USER, None, SIGNED_AT_MS + 3_600_001),
            Err(TokenError::Expired)
        );
        // An explicit max_age overrides the token's own, in both directions.
        assert_eq!(
            t.verify(VECTOR_USER, Some(7200), SIGNED_AT_MS + 3_600_001),
            Ok(json!("user-42"))
        );
        assert_eq!(
            t.verify(VECTOR_USER, Some(0), SIGNED_AT_MS),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_salt_or_secret_is_invalid() {
        let other = PhoenixToken::new(SKB, "other salt");
        assert!(matches!(
            other.verify_max_age(VECTOR_42, MaxAge::Infinity, NOW_2025),
            Err(TokenError::Invalid(_))
        ));
        let other = PhoenixToken::new(&SKB.replace('a', "b"), SALT);
        assert!(matches!(
            other.verify_max_age(VECTOR_42, MaxAge::Infinity, NOW_2025),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn empty_token_is_missing() {
        assert_eq!(pt().verify("", None, NOW_2025), Err(TokenError::Missing));
    }

    #[test]
    fn tampering_is_invalid() {
        let t = pt();
        let parts: Vec<&str> = VECTOR_42.split('.').collect();
        let tamper = |s: &str| {
            // Flip one base64 character to another valid one.
            let mut c: Vec<char> = s.chars().collect();
            if let Some(first) = c.get_mut(4) {
                *first = if *first == 'A' { 'B' } else { 'A' };
            }
            c.into_iter().collect::<String>()
        };
        let bad_sig = format!("{}.{}.{}", parts[0], parts[1], tamper(parts[2]));
        let bad_payload = format!("{}.{}.{}", parts[0], tamper(parts[1]), parts[2]);
        // The same signature under another header must not verify either.
        let other_header = format!("{HS512_HEADER}.{}.{}", parts[1], parts[2]);
        let truncated_sig = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
        for token in [bad_sig, bad_payload, other_header, truncated_sig] {
            assert!(
                matches!(
                    t.verify_max_age(&token, MaxAge::Infinity, NOW_2025),
                    Err(TokenError::Invalid(_))
                ),
                "{token}"
            );
        }
    }

    #[test]
    fn accepts_hs384_and_hs512_headers() {
        let t = pt();
        let payload = URL_SAFE_NO_PAD.encode(t.verify_mac(VECTOR_USER).expect("mac"));
        for header in [HS384_HEADER, HS512_HEADER] {
            let signed = format!("{header}.{payload}");
            let tag = hmac_tag(header, &t.key, signed.as_bytes()).expect("tag");
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag));
            assert_eq!(t.verify(&token, None, SIGNED_AT_MS), Ok(json!("user-42")));
        }
    }

    #[test]
    fn future_signed_at_is_invalid() {
        let t = pt();
        let token = t.sign(&json!(1), NOW_2025 + 10_000, 60).expect("sign");
        assert!(matches!(
            t.verify(&token, None, NOW_2025),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            t.verify(&token, Some(86_400), NOW_2025),
            Err(TokenError::Invalid(_))
        ));
        // Plug's order: an :infinity max age short-circuits before the future check.
        assert_eq!(
            t.verify_max_age(&token, MaxAge::Infinity, NOW_2025),
            Ok(json!(1))
        );
        // And a configured allowance for clock skew lets it through.
        let lenient = pt().clone().with_future_leeway_ms(10_000);
        assert_eq!(lenient.verify(&token, None, NOW_2025), Ok(json!(1)));
    }

    #[test]
    fn roundtrips_structured_data() {
        let t = pt();
        let data = json!({"user_id": 42, "name": "Zoë", "roles": ["admin"], "ok": true, "x": null, "f": 0.25});
        let token = t.sign(&data, NOW_2025, 60).expect("sign");
        assert_eq!(t.verify(&token, None, NOW_2025 + 59_000), Ok(data));
        assert_eq!(
            t.verify(&token, None, NOW_2025 + 60_001),
            Err(TokenError::Expired)
        );
    }

    /// Builds `term_to_binary` output from raw body bytes and signs it.
    fn signed_raw(body: &[u8]) -> String {
        let mut m = vec![131];
        m.extend_from_slice(body);
        pt().sign_message(&m).expect("sign")
    }

    fn signed_ms_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        etf_json::encode_int(i128::from(SIGNED_AT_MS), &mut out);
        out
    }

    #[test]
    fn legacy_two_tuple_shape() {
        let mut body = vec![104, 2, 97, 7];
        body.extend(signed_ms_bytes());
        let token = signed_raw(&body);
        let t = pt();
        assert_eq!(t.verify(&token, None, SIGNED_AT_MS + 1), Ok(json!(7)));
        assert_eq!(
            t.verify(&token, None, SIGNED_AT_MS + 86_400_001),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn legacy_map_shape() {
        // %{data: "u1", signed: ms, extra: 1} with old-style ATOM_EXT keys.
        let mut body = vec![116, 0, 0, 0, 3];
        body.extend([100, 0, 4]);
        body.extend(b"data");
        body.extend([109, 0, 0, 0, 2, b'u', b'1']);
        body.extend([100, 0, 6]);
        body.extend(b"signed");
        body.extend(signed_ms_bytes());
        body.extend([119, 5]);
        body.extend(b"extra");
        body.extend([97, 1]);
        let token = signed_raw(&body);
        let t = pt();
        assert_eq!(t.verify(&token, None, SIGNED_AT_MS + 1), Ok(json!("u1")));
        assert_eq!(
            t.verify(&token, None, SIGNED_AT_MS + 86_400_001),
            Err(TokenError::Expired)
        );
        // A map missing `signed` is not a token.
        let token = signed_raw(&[116, 0, 0, 0, 1, 119, 4, b'd', b'a', b't', b'a', 97, 1]);
        assert!(matches!(
            t.verify_max_age(&token, MaxAge::Infinity, NOW_2025),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn stored_infinity_and_float_max_age() {
        let t = pt();
        let mut body = vec![104, 3, 97, 1];
        body.extend(signed_ms_bytes());
        body.extend([119, 8]);
        body.extend(b"infinity");
        assert_eq!(t.verify(&signed_raw(&body), None, NOW_2025), Ok(json!(1)));
        // A configured max age still applies.
        assert_eq!(
            t.verify(&signed_raw(&body), Some(60), NOW_2025),
            Err(TokenError::Expired)
        );

        let mut body = vec![104, 3, 97, 1];
        body.extend(signed_ms_bytes());
        body.push(70);
        body.extend(1.5f64.to_be_bytes());
        let token = signed_raw(&body);
        assert_eq!(t.verify(&token, None, SIGNED_AT_MS + 1500), Ok(json!(1)));
        assert_eq!(
            t.verify(&token, None, SIGNED_AT_MS + 1501),
            Err(TokenError::Expired)
        );

        // Stored max_age <= 0 → expired immediately.
        let mut body = vec![104, 3, 97, 1];
        body.extend(signed_ms_bytes());
        body.extend([98, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            t.verify(&signed_raw(&body), None, SIGNED_AT_MS),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn bad_shapes_and_unrepresentable_data_are_invalid() {
        let t = pt();
        let with_data = |data: &[u8]| {
            let mut body = vec![104, 3];
            body.extend_from_slice(data);
            body.extend(signed_ms_bytes());
            body.extend([97, 60]);
            signed_raw(&body)
        };
        let cases = [
            signed_raw(&[97, 1]),                                 // not a tuple
            signed_raw(&[104, 1, 97, 1]),                         // 1-tuple
            signed_raw(&[104, 4, 97, 1, 97, 1, 97, 1, 97, 1]),    // 4-tuple
            signed_raw(&[104, 3, 97, 1, 109, 0, 0, 0, 0, 97, 1]), // signed not an integer
            with_data(&[109, 0, 0, 0, 2, 0xff, 0xfe]),            // non-UTF-8 binary
            with_data(&[88, 119, 1, b'n', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]), // pid
            with_data(&[90, 0, 1, 119, 1, b'n', 0, 0, 0, 0, 0, 0, 0, 1]), // reference
            with_data(&[110, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]),   // 2^63 fits u64: valid...
        ];
        for (i, token) in cases.iter().enumerate() {
            let res = t.verify(token, None, SIGNED_AT_MS);
            if i == cases.len() - 1 {
                assert_eq!(res, Ok(json!(9_223_372_036_854_775_808u64)));
            } else {
                assert!(
                    matches!(res, Err(TokenError::Invalid(_))),
                    "case {i}: {res:?}"
                );
            }
        }
        // ...but a negative one beyond i64::MIN does not.
        let token = with_data(&[110, 8, 1, 1, 0, 0, 0, 0, 0, 0, 0x80]);
        assert!(matches!(
            t.verify(&token, None, SIGNED_AT_MS),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let t = pt();
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let inputs = [
            "x",
            ".",
            "..",
            "...",
            "SFMyNTY",
            "SFMyNTY.",
            "SFMyNTY..",
            "SFMyNTY.g2gD",
            "SFMyNTY.g2gD.",
            "SFMyNTY.!!!.abc",
            "SFMyNTY.g2gD.!!!",
            "SFMyNTY.g2gD=.x5eP",
            "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y.extra",
            "HS256.g2gD.abc",
            "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y=",
            "SFMyNTY.g2gDYSpuBgAAaOXPiwFiAAFRgA==.x5ePTXG_GeWPvCofqyQJFuhseqnWQpkVSWmpIKaq01Y",
            "ünïcødé.ü.ü",
            &long,
        ];
        for input in inputs {
            assert!(
                matches!(
                    t.verify_max_age(input, MaxAge::Infinity, NOW_2025),
                    Err(TokenError::Invalid(_))
                ),
                "{input:.80}"
            );
        }
    }

    #[test]
    fn valid_mac_over_hostile_etf_never_panics() {
        let t = pt();
        let mut deep_list = Vec::new();
        for _ in 0..50_000 {
            deep_list.extend([108, 0, 0, 0, 1]);
        }
        let mut deep_tuple = vec![104, 3];
        for _ in 0..50_000 {
            deep_tuple.extend([104, 1]);
        }
        deep_tuple.push(106);
        let bodies: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xde, 0xad, 0xbe, 0xef],
            vec![68, 0, 0], // distribution header
            vec![82, 0],    // atom cache ref
            vec![109, 0xff, 0xff, 0xff, 0xff],
            vec![108, 0xff, 0xff, 0xff, 0xff],
            vec![105, 0xff, 0xff, 0xff, 0xff],
            vec![116, 0xff, 0xff, 0xff, 0xff],
            vec![111, 0xff, 0xff, 0xff, 0xff, 0],
            vec![80, 0xff, 0xff, 0xff, 0xff, 0x78, 0x9c, 0, 0],
            vec![80, 0, 0, 0, 4, 1, 2, 3],
            vec![77, 0, 0, 0, 1, 0, 0xff],
            deep_list,
            deep_tuple,
        ];
        for body in bodies {
            let token = signed_raw(&body);
            assert!(matches!(
                t.verify_max_age(&token, MaxAge::Infinity, NOW_2025),
                Err(TokenError::Invalid(_))
            ));
        }
        // Wrong version byte.
        let token = t.sign_message(&[130, 97, 1]).expect("sign");
        assert!(t.verify(&token, None, NOW_2025).is_err());
    }

    #[test]
    fn compressed_payloads_verify() {
        let t = pt();
        let data = json!({"user": "u".repeat(300)});
        let mut inner = vec![104, 3];
        etf_json::encode_json(&data, &mut inner, 1, TERM_LIMITS.max_depth).expect("encode");
        etf_json::encode_int(i128::from(SIGNED_AT_MS), &mut inner);
        etf_json::encode_int(60, &mut inner);
        let mut body = vec![80];
        body.extend(u32::try_from(inner.len()).expect("len").to_be_bytes());
        body.extend(noflate::zlib::compress(&inner).expect("zlib"));
        assert_eq!(t.verify(&signed_raw(&body), None, SIGNED_AT_MS), Ok(data));
    }

    #[test]
    fn debug_and_errors_hide_secrets() {
        let t = pt();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("abcdefghij"));
        assert!(!dbg.contains(&hex(&t.key)));
        assert!(dbg.contains("redacted"));
        let err = PhoenixToken::new("wrong-wrong-wrong-wrong", SALT)
            .verify(VECTOR_42, None, NOW_2025)
            .expect_err("must fail");
        assert!(!err.to_string().contains("wrong-wrong"));
        assert!(PhoenixToken::try_new("short", SALT).is_err());
        assert!(PhoenixToken::try_new(SKB, SALT).is_ok());
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings_never_panic(s in ".{0,300}") {
                let _ = pt().verify_max_age(&s, MaxAge::Infinity, NOW_2025);
            }

            #[test]
            fn arbitrary_token_shaped_strings_never_panic(
                h in prop::sample::select(vec![HS256_HEADER, HS384_HEADER, HS512_HEADER, "x"]),
                p in "[A-Za-z0-9_-]{0,120}",
                s in "[A-Za-z0-9_-]{0,90}",
            ) {
                let token = format!("{h}.{p}.{s}");
                prop_assert!(pt().verify_max_age(&token, MaxAge::Infinity, NOW_2025).is_err());
            }

            #[test]
            fn validly_signed_random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200)) {
                let _ = pt().verify_max_age(&signed_raw(&body), MaxAge::Infinity, NOW_2025);
            }

            #[test]
            fn validly_signed_mutated_tokens_never_panic(idx in 0usize..64, byte in any::<u8>()) {
                // Mutate a byte of a real, structured message: exercises deep paths of the
                // validator rather than failing at the first tag.
                let data = json!({"a": [1, -2, "x", {"b": null}], "c": 1.5, "d": u64::MAX});
                let mut inner = vec![131, 104, 3];
                etf_json::encode_json(&data, &mut inner, 1, TERM_LIMITS.max_depth).map_err(|e| TestCaseError::fail(e.to_string()))?;
                etf_json::encode_int(i128::from(SIGNED_AT_MS), &mut inner);
                etf_json::encode_int(60, &mut inner);
                let len = inner.len();
                if let Some(b) = inner.get_mut(1 + idx % (len - 1)) {
                    *b = byte;
                }
                let token = pt().sign_message(&inner).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let _ = pt().verify_max_age(&token, MaxAge::Infinity, NOW_2025);
            }

            #[test]
            fn sign_verify_roundtrip(id in any::<i64>(), name in "\\PC{0,40}", at in 0u64..4_000_000_000_000, age in 1u64..1_000_000) {
                let data = json!({"id": id, "name": name});
                let t = pt();
                let token = t.sign(&data, at, age).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(t.verify(&token, None, at), Ok(data));
            }
        }
    }
}
