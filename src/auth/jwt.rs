//! JWT connect tokens: HS256 with a shared secret, RS256/ES256 with a PEM public key, or
//! RS256/ES256 keys from a JWKS document.
//!
//! The algorithm is fixed by configuration (the key kind, or for JWKS the selected key's type),
//! never by the token header: a header naming anything else is rejected, so an attacker cannot
//! turn an RS256 public key into an HS256 secret ("alg confusion") or use `alg: none`.
//!
//! Signature, `iss` and `aud` checks are done by `jsonwebtoken`; `exp`/`nbf` are checked here
//! against an explicit clock so that they are testable and share one leeway.

use super::{keys, TokenError, MAX_TOKEN_LEN};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Suggested clock-skew allowance for `exp`/`nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 30;

/// Largest leeway accepted by [`JwtVerifier::new`]; more than an hour would make `exp`
/// meaningless and is almost certainly a unit mistake (milliseconds given as seconds).
pub const MAX_LEEWAY_S: u64 = 3600;

/// Key material (and thereby the pinned algorithm) for a [`JwtVerifier`].
pub enum JwtKey {
    /// HS256 with this shared secret (raw bytes).
    Hs256(Vec<u8>),
    /// RS256 with this PEM-encoded RSA public key (`PUBLIC KEY` or `RSA PUBLIC KEY`).
    Rs256Pem(Vec<u8>),
    /// ES256 with this PEM-encoded P-256 public key (`PUBLIC KEY`).
    Es256Pem(Vec<u8>),
    /// A JWKS document (`{"keys": [...]}`) as JSON text. RSA keys are used for RS256 and
    /// P-256 EC keys for ES256; symmetric (`oct`) keys, encryption keys (`use: "enc"`) and keys
    /// whose `alg` says otherwise are ignored.
    Jwks(String),
}

impl std::fmt::Debug for JwtKey {
    // Hand-written: the HS256 secret must never be printed. (Public keys are not secret, but
    // printing lengths only keeps logs short and uniform.)
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(s) => write!(f, "Hs256(<redacted {} bytes>)", s.len()),
            JwtKey::Rs256Pem(p) => write!(f, "Rs256Pem(<{} bytes>)", p.len()),
            JwtKey::Es256Pem(p) => write!(f, "Es256Pem(<{} bytes>)", p.len()),
            JwtKey::Jwks(j) => write!(f, "Jwks(<{} bytes>)", j.len()),
        }
    }
}

/// One usable verification key.
struct KeyEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies JWT connect tokens against one configured key (or key set).
pub struct JwtVerifier {
    keys: Vec<KeyEntry>,
    /// Keys came from a JWKS: select by `kid` instead of using the single configured key.
    from_jwks: bool,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for JwtVerifier {
    // `DecodingKey`'s own Debug would print an HS256 secret, so this is written by hand.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{:?}(kid={:?})", k.alg, k.kid))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("from_jwks", &self.from_jwks)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds a verifier. `issuer`/`audience`, when given, become required claims that must
    /// match (`aud` may be a string or an array containing the value). `leeway_s` is the
    /// clock-skew allowance applied to `exp` and `nbf` (at most [`MAX_LEEWAY_S`]).
    ///
    /// Fails if the key cannot be parsed, a JWKS holds no usable key, the HS256 secret is
    /// empty, or the leeway is out of range.
    pub fn new(
        key: JwtKey,
        issuer: Option<String>,
        audience: Option<String>,
        leeway_s: u64,
    ) -> Result<Self, TokenError> {
        if leeway_s > MAX_LEEWAY_S {
            return Err(TokenError::invalid("JWT leeway too large"));
        }
        let (keys, from_jwks) = match key {
            JwtKey::Hs256(secret) => {
                if secret.is_empty() {
                    return Err(TokenError::invalid("empty HS256 secret"));
                }
                let entry = KeyEntry {
                    kid: None,
                    alg: Algorithm::HS256,
                    key: DecodingKey::from_secret(&secret),
                };
                (vec![entry], false)
            }
            JwtKey::Rs256Pem(pem) => {
                let entry = KeyEntry {
                    kid: None,
                    alg: Algorithm::RS256,
                    key: keys::rs256_pem(&pem)?,
                };
                (vec![entry], false)
            }
            JwtKey::Es256Pem(pem) => {
                let entry = KeyEntry {
                    kid: None,
                    alg: Algorithm::ES256,
                    key: keys::es256_pem(&pem)?,
                };
                (vec![entry], false)
            }
            JwtKey::Jwks(json) => (parse_jwks(&json)?, true),
        };
        Ok(JwtVerifier {
            keys,
            from_jwks,
            issuer,
            audience,
            leeway_s,
        })
    }

    /// Verifies `token` at the current system time and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Map<String, Value>, TokenError> {
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now_s)
    }

    /// Verifies `token` as of `now_s` (Unix seconds) and returns its claims.
    ///
    /// Checks, in order: shape, header algorithm equals the pinned one, signature, `iss`/`aud`
    /// when configured, then `exp` (required) and `nbf` (if present) with the leeway. Time is
    /// checked last so that a forged token is reported as invalid, never as expired.
    pub fn verify_at(&self, token: &str, now_s: u64) -> Result<Map<String, Value>, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::invalid("token too long"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(map_jwt_error)?;
        let entry = self.select_key(header.kid.as_deref())?;
        // jsonwebtoken checks this too (Validation::algorithms); checking it here first keeps
        // the pinning explicit and independent of library defaults.
        if header.alg != entry.alg {
            return Err(TokenError::invalid("algorithm not allowed"));
        }

        let mut validation = Validation::new(entry.alg);
        // exp/nbf are checked below against `now_s`; only what is configured is required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            // Without a configured audience any `aud` is acceptable (jsonwebtoken would
            // otherwise reject every token that carries one).
            None => validation.validate_aud = false,
        }

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, &validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;
        self.check_times(&claims, now_s)?;
        Ok(claims)
    }

    /// Picks the key for a token: the single configured key, or the JWKS key named by `kid`
    /// (falling back to the only key of a one-key set that has no `kid` of its own).
    fn select_key(&self, kid: Option<&str>) -> Result<&KeyEntry, TokenError> {
        let only = match self.keys.as_slice() {
            [one] => Some(one),
            _ => None,
        };
        if !self.from_jwks {
            return only.ok_or_else(|| TokenError::invalid("no key configured"));
        }
        if let Some(kid) = kid {
            if let Some(k) = self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                return Ok(k);
            }
            return only
                .filter(|k| k.kid.is_none())
                .ok_or_else(|| TokenError::invalid("unknown key id"));
        }
        only.ok_or_else(|| TokenError::invalid("token has no key id"))
    }

    fn check_times(&self, claims: &Map<String, Value>, now_s: u64) -> Result<(), TokenError> {
        // f64 is exact for any realistic timestamp (< 2^53 s) and also covers the fractional
        // NumericDate values RFC 7519 allows.
        let now = now_s as f64;
        let leeway = self.leeway_s as f64;
        let exp = claims
            .get("exp")
            .ok_or_else(|| TokenError::invalid("missing exp claim"))?;
        let exp = numeric_date(exp).ok_or_else(|| TokenError::invalid("bad exp claim"))?;
        // RFC 7519 §4.1.4: the current time must be *before* exp.
        if now >= exp + leeway {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or_else(|| TokenError::invalid("bad nbf claim"))?;
            if now + leeway < nbf {
                return Err(TokenError::invalid("token not yet valid"));
            }
        }
        Ok(())
    }
}

fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// Reads the usable keys of a JWKS document; a single malformed or foreign key is skipped
/// rather than failing the whole set (identity providers publish mixed sets).
fn parse_jwks(json: &str) -> Result<Vec<KeyEntry>, TokenError> {
    let doc: Value =
        serde_json::from_str(json).map_err(|_| TokenError::invalid("JWKS is not valid JSON"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| TokenError::invalid("JWKS has no keys array"))?;
    let mut out = Vec::new();
    for raw in keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let (alg, want, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => (
                Algorithm::RS256,
                KeyAlgorithm::RS256,
                keys::rs256_jwk(&p.n, &p.e),
            ),
            AlgorithmParameters::EllipticCurve(p) if matches!(p.curve, EllipticCurve::P256) => (
                Algorithm::ES256,
                KeyAlgorithm::ES256,
                keys::es256_jwk(&p.x, &p.y),
            ),
            // oct keys would make a published key set into HMAC secrets; other curves and
            // key types are outside what this gateway supports.
            _ => continue,
        };
        if jwk.common.key_algorithm.is_some_and(|a| a != want) {
            continue;
        }
        let Ok(key) = key else {
            continue;
        };
        out.push(KeyEntry {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if out.is_empty() {
        return Err(TokenError::invalid("JWKS has no usable RS256/ES256 key"));
    }
    Ok(out)
}

/// Maps library errors to fixed texts: library messages could in principle quote input, and
/// callers only need to know which check failed.
fn map_jwt_error(e: jsonwebtoken::errors::Error) -> TokenError {
    let reason = match e.kind() {
        ErrorKind::ExpiredSignature => return TokenError::Expired,
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => "algorithm not allowed",
        ErrorKind::InvalidIssuer => "issuer mismatch",
        ErrorKind::InvalidAudience => "audience mismatch",
        ErrorKind::InvalidSubject => "subject mismatch",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => "missing iss claim",
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => "missing aud claim",
        ErrorKind::MissingRequiredClaim(_) => "missing required claim",
        ErrorKind::InvalidClaimFormat(_) => "bad claim format",
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => "key unusable for this token",
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_) => "malformed token",
        _ => "token rejected",
    };
    TokenError::invalid(reason)
}

/// Mints an HS256 JWT (for tests and the `phx-gateway token` CLI). `claims` must be a JSON
/// object; no claims are added, so include `exp` yourself.
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> Result<String, TokenError> {
    if !claims.is_object() {
        return Err(TokenError::invalid("JWT claims must be a JSON object"));
    }
    if secret.is_empty() {
        return Err(TokenError::invalid("empty HS256 secret"));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| TokenError::invalid("JWT signing failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const SECRET: &[u8] = b"hs256-test-secret-0123456789abcdef";
    const NOW: u64 = 1_750_000_000;

    // Test-only keys generated with `openssl genpkey` for this module; never used elsewhere.
    const RSA1_PRIV: &str = include_str!("../../tests/fixtures/jwt/rsa1-private.pem");
    const RSA1_PUB: &str = include_str!("../../tests/fixtures/jwt/rsa1-public.pem");
    const RSA1_PUB_PKCS1: &str = include_str!("../../tests/fixtures/jwt/rsa1-public-pkcs1.pem");
    /// 1024-bit: below the accepted minimum.
    const RSA1024_PUB: &str = include_str!("../../tests/fixtures/jwt/rsa1024-public.pem");
    const RSA2_PRIV: &str = include_str!("../../tests/fixtures/jwt/rsa2-private.pem");
    const RSA2_PUB: &str = include_str!("../../tests/fixtures/jwt/rsa2-public.pem");
    const EC1_PRIV: &str = include_str!("../../tests/fixtures/jwt/ec1-private.pem");
    const EC1_PUB: &str = include_str!("../../tests/fixtures/jwt/ec1-public.pem");
    const RSA1_N: &str = "ze8WVCt7DX5IaqOU6KmNCYHTf6KIoWfNNVxo5xi_kHojLFi537uSnkz4QYSLAKKul7OZcAUVYq4V8z2_rAbAzUOyZa-wv6Gg7lHaxuZePaNNseuFXWhpBs59Vy24URC4WvebS1fDaOUOtww_jw30crbX2rhom_-5yUgfchLiDxYbHkEodblJQ_6ZWNifUzXYWf6R0G38Rhf1UrsIi8c6MpIACho5D4AykyhvTqMqww1Mbo9kuWyzL_e-vnGY1kMhrpBlEuSLGcskC3urqaB9dRM7LscFE1BMckZg49-9_ans5F1cchGvUhZ14-441jrvWKWo6W10rv_EAvDbPM5tzw";
    const RSA2_N: &str = "z9nc2iK5Qq7y1YW7_GfRiGRdqBlL_uQ26YktPFHwqssA3QVmKb4fUiczLyWqUbnTIPWiSCCelM58IwdBG55TyvlN8NZll9LVscomN06LJmzWxEtshiTlPAECYQ0bZvsG3r_8BjcLOZdxBSGHkgGNMRwyoyRAgdFuHUajrtTSdXBNsLNQJvNxUqE-VC6s0FEOEiBbuUvhlfplnonvjk_zwr3-gf5M-c1m9Xr1Opb8KcYfCnwiwGV1rqUgNf-YV-KiQDJTFJ634xNm1j3nnJpS3meViLjnivXMZIlPcgSBAHe8fF4w4SjG3wey3UXM4UAAcVInog9Gk3PLhml__oSixw";
    const EC1_X: &str = "6M3zIhGqhtCpuTbyeHmuxlhJ9Ai09odNNhqmWf92shc";
    const EC1_Y: &str = "Pf_kna1AHcDMlx4PeB-JZOc5N2E2E3NvlYahM9st9N0";

    fn claims() -> Value {
        json!({"sub": "user-42", "exp": NOW + 600, "iat": NOW})
    }

    fn hs() -> JwtVerifier {
        JwtVerifier::new(JwtKey::Hs256(SECRET.to_vec()), None, None, DEFAULT_LEEWAY_S)
            .expect("verifier")
    }

    fn sign_with(alg: Algorithm, pem: &str, kid: Option<&str>, claims: &Value) -> String {
        // RS256 signing takes PKCS#1 DER ("RSA PRIVATE KEY"), ES256 PKCS#8 DER ("PRIVATE KEY").
        let der = pem::parse(pem).expect("pem").into_contents();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            _ => EncodingKey::from_ec_der(&der),
        };
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).expect("sign")
    }

    fn rsa_jwk(kid: Option<&str>, n: &str) -> Value {
        let mut k = json!({"kty": "RSA", "n": n, "e": "AQAB", "use": "sig"});
        if let (Some(kid), Some(obj)) = (kid, k.as_object_mut()) {
            obj.insert("kid".into(), json!(kid));
        }
        k
    }

    fn is_invalid<T: std::fmt::Debug>(r: &Result<T, TokenError>) -> bool {
        matches!(r, Err(TokenError::Invalid(_)))
    }

    #[test]
    fn hs256_valid_and_claims_returned() {
        let token = sign_hs256(&claims(), SECRET).expect("sign");
        let got = hs().verify_at(&token, NOW).expect("valid");
        assert_eq!(got.get("sub"), Some(&json!("user-42")));
        // Also through the wall clock, with an exp far in the future.
        let token = sign_hs256(&json!({"sub": "x", "exp": 4_000_000_000u64}), SECRET).expect("s");
        assert!(hs().verify(&token).is_ok());
    }

    #[test]
    fn hs256_expiry_and_leeway() {
        let v = hs();
        let token = sign_hs256(&json!({"exp": NOW - 10}), SECRET).expect("sign");
        assert!(v.verify_at(&token, NOW).is_ok(), "within 30 s leeway");
        let token = sign_hs256(&json!({"exp": NOW - 31}), SECRET).expect("sign");
        assert_eq!(v.verify_at(&token, NOW), Err(TokenError::Expired));
        let strict = JwtVerifier::new(JwtKey::Hs256(SECRET.to_vec()), None, None, 0).expect("v");
        let token = sign_hs256(&json!({"exp": NOW}), SECRET).expect("sign");
        assert_eq!(strict.verify_at(&token, NOW), Err(TokenError::Expired));
        assert!(strict.verify_at(&token, NOW - 1).is_ok());
        // Wall-clock path: long expired.
        let token = sign_hs256(&json!({"exp": 1_000_000_000u64}), SECRET).expect("sign");
        assert_eq!(v.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn exp_required_and_nbf_checked() {
        let v = hs();
        let token = sign_hs256(&json!({"sub": "x"}), SECRET).expect("sign");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        let token = sign_hs256(&json!({"exp": "soon"}), SECRET).expect("sign");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        let token = sign_hs256(&json!({"exp": NOW + 600, "nbf": NOW + 100}), SECRET).expect("s");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        assert!(v.verify_at(&token, NOW + 71).is_ok(), "nbf within leeway");
        let token = sign_hs256(&json!({"exp": (NOW + 600) as f64 + 0.5}), SECRET).expect("s");
        assert!(v.verify_at(&token, NOW).is_ok(), "fractional NumericDate");
    }

    #[test]
    fn forged_and_wrong_key_are_invalid() {
        let v = hs();
        let token = sign_hs256(&claims(), SECRET).expect("sign");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&json!({"sub": "admin", "exp": NOW + 600})).expect("json"));
        assert!(is_invalid(&v.verify_at(&parts.join("."), NOW)));
        let other = sign_hs256(&claims(), b"another-secret").expect("sign");
        assert!(is_invalid(&v.verify_at(&other, NOW)));
        // An expired token with a bad signature is reported as invalid, not expired.
        let other = sign_hs256(&json!({"exp": 1}), b"another-secret").expect("sign");
        assert!(is_invalid(&v.verify_at(&other, NOW)));
    }

    #[test]
    fn none_alg_is_rejected() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&json!({"sub": "admin", "exp": NOW + 600})).expect("json"));
        for token in [format!("{header}.{body}."), format!("{header}.{body}")] {
            assert!(is_invalid(&hs().verify_at(&token, NOW)), "{token}");
        }
    }

    #[test]
    fn rs256_pem() {
        let v = JwtVerifier::new(
            JwtKey::Rs256Pem(RSA1_PUB.as_bytes().to_vec()),
            None,
            None,
            DEFAULT_LEEWAY_S,
        )
        .expect("verifier");
        let token = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert_eq!(
            v.verify_at(&token, NOW).expect("valid").get("sub"),
            Some(&json!("user-42"))
        );
        // Signed by another RSA key: rejected here, accepted by that key's verifier.
        let token = sign_with(Algorithm::RS256, RSA2_PRIV, None, &claims());
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        let v2 = JwtVerifier::new(
            JwtKey::Rs256Pem(RSA2_PUB.as_bytes().to_vec()),
            None,
            None,
            0,
        )
        .expect("verifier");
        assert!(v2.verify_at(&token, NOW).is_ok());
        // HS256 token against an RS256 verifier, including the classic confusion attack of
        // using the public key PEM as the HMAC secret.
        let token = sign_hs256(&claims(), SECRET).expect("sign");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        let token = sign_hs256(&claims(), RSA1_PUB.as_bytes()).expect("sign");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        // The PKCS#1 ("RSA PUBLIC KEY") form of the same key works too.
        let v1 = JwtVerifier::new(
            JwtKey::Rs256Pem(RSA1_PUB_PKCS1.as_bytes().to_vec()),
            None,
            None,
            0,
        )
        .expect("verifier");
        let token = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(v1.verify_at(&token, NOW).is_ok());
        // Blank lines around the block and CRLF line ends (editors, secret stores) are fine.
        let padded = format!("\n{}\n\n", RSA1_PUB.replace('\n', "\r\n"));
        let v3 = JwtVerifier::new(JwtKey::Rs256Pem(padded.into_bytes()), None, None, 0)
            .expect("verifier");
        assert!(v3.verify_at(&token, NOW).is_ok());
        // ...and an RS256 token against an HS256 verifier.
        let token = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(is_invalid(&hs().verify_at(&token, NOW)));
    }

    #[test]
    fn es256_pem() {
        let v = JwtVerifier::new(
            JwtKey::Es256Pem(EC1_PUB.as_bytes().to_vec()),
            None,
            None,
            DEFAULT_LEEWAY_S,
        )
        .expect("verifier");
        let token = sign_with(Algorithm::ES256, EC1_PRIV, None, &claims());
        assert!(v.verify_at(&token, NOW).is_ok());
        let token = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(is_invalid(&v.verify_at(&token, NOW)));
        let token = sign_hs256(&claims(), EC1_PUB.as_bytes()).expect("sign");
        assert!(is_invalid(&v.verify_at(&token, NOW)));
    }

    #[test]
    fn bad_key_material_is_rejected_at_construction() {
        let bad = |k: JwtKey| JwtVerifier::new(k, None, None, 30).is_err();
        assert!(bad(JwtKey::Hs256(Vec::new())));
        assert!(bad(JwtKey::Rs256Pem(b"not a pem".to_vec())));
        assert!(bad(JwtKey::Es256Pem(RSA1_PUB.as_bytes().to_vec())));
        assert!(bad(JwtKey::Jwks("not json".into())));
        assert!(bad(JwtKey::Jwks("{}".into())));
        assert!(bad(JwtKey::Jwks(
            json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string()
        )));
        assert!(JwtVerifier::new(JwtKey::Hs256(SECRET.to_vec()), None, None, 3601).is_err());
        assert!(bad(JwtKey::Rs256Pem(RSA1024_PUB.as_bytes().to_vec())));
        assert!(bad(JwtKey::Rs256Pem(EC1_PUB.as_bytes().to_vec())));
        assert!(bad(JwtKey::Rs256Pem(RSA1_PRIV.as_bytes().to_vec())));
        assert!(bad(JwtKey::Es256Pem(EC1_PRIV.as_bytes().to_vec())));
        // A P-256 SPKI whose point is not on the curve fails at construction, not per token.
        let mut der = pem::parse(EC1_PUB).expect("pem").into_contents();
        if let Some(last) = der.last_mut() {
            *last ^= 1;
        }
        let off_curve = pem::encode(&pem::Pem::new("PUBLIC KEY", der));
        assert!(bad(JwtKey::Es256Pem(off_curve.into_bytes())));
        // Same for a JWKS: the bad EC key is skipped, leaving nothing usable.
        let (x, y) = (EC1_X, EC1_Y.replace('N', "M"));
        let doc = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y}]});
        assert!(bad(JwtKey::Jwks(doc.to_string())));
        let n1024 = json!({"keys": [rsa_jwk(None, &RSA1_N[..172])]});
        assert!(bad(JwtKey::Jwks(n1024.to_string())));
    }

    #[test]
    fn jwks_kid_selection() {
        let jwks = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": RSA1_N, "e": "AQAB", "kid": "enc", "use": "enc"},
            {"kty": "weird"},
            rsa_jwk(Some("a"), RSA1_N),
            rsa_jwk(Some("b"), RSA2_N),
            {"kty": "EC", "crv": "P-256", "x": EC1_X, "y": EC1_Y, "kid": "e", "alg": "ES256"},
        ]});
        let v = JwtVerifier::new(JwtKey::Jwks(jwks.to_string()), None, None, 30).expect("v");
        let t = sign_with(Algorithm::RS256, RSA2_PRIV, Some("b"), &claims());
        assert!(v.verify_at(&t, NOW).is_ok());
        let t = sign_with(Algorithm::RS256, RSA2_PRIV, Some("a"), &claims());
        assert!(
            is_invalid(&v.verify_at(&t, NOW)),
            "kid points at another key"
        );
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, Some("a"), &claims());
        assert!(v.verify_at(&t, NOW).is_ok());
        let t = sign_with(Algorithm::ES256, EC1_PRIV, Some("e"), &claims());
        assert!(v.verify_at(&t, NOW).is_ok());
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, Some("zzz"), &claims());
        assert!(is_invalid(&v.verify_at(&t, NOW)), "unknown kid");
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(is_invalid(&v.verify_at(&t, NOW)), "no kid, several keys");
        // The symmetric JWK was skipped: an HS256 token with its kid is not accepted.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("hmac".into());
        let t = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(b"secret"))
            .expect("sign");
        assert!(is_invalid(&v.verify_at(&t, NOW)));
        // An RS256 token naming the EC key's kid: algorithm mismatch.
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, Some("e"), &claims());
        assert!(is_invalid(&v.verify_at(&t, NOW)));
    }

    #[test]
    fn pem_bodies_of_any_line_length_are_read() {
        // Tools other than openssl write 76-column or one-line bodies.
        let body: String = RSA1_PUB
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let wrap = |width: usize| {
            let lines: Vec<&str> = body
                .as_bytes()
                .chunks(width)
                .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
                .collect();
            format!(
                "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
                lines.join("\n")
            )
        };
        for pem in [wrap(76), wrap(body.len())] {
            let v = JwtVerifier::new(JwtKey::Rs256Pem(pem.into_bytes()), None, None, 30)
                .expect("a key wrapped at another width is read");
            let t = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
            assert!(v.verify_at(&t, NOW).is_ok());
        }
    }

    #[test]
    fn jwks_single_key_fallback() {
        let one = json!({"keys": [rsa_jwk(None, RSA1_N)]}).to_string();
        let v = JwtVerifier::new(JwtKey::Jwks(one), None, None, 30).expect("v");
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(v.verify_at(&t, NOW).is_ok());
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, Some("any"), &claims());
        assert!(
            v.verify_at(&t, NOW).is_ok(),
            "kid-less single key is the fallback"
        );

        let one = json!({"keys": [rsa_jwk(Some("k1"), RSA1_N)]}).to_string();
        let v = JwtVerifier::new(JwtKey::Jwks(one), None, None, 30).expect("v");
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, None, &claims());
        assert!(
            v.verify_at(&t, NOW).is_ok(),
            "no kid in token, only one key"
        );
        let t = sign_with(Algorithm::RS256, RSA1_PRIV, Some("k2"), &claims());
        assert!(is_invalid(&v.verify_at(&t, NOW)), "named kid must match");
        // A JWK whose alg is not RS256 is not used for RS256.
        let mut k = rsa_jwk(None, RSA1_N);
        if let Some(o) = k.as_object_mut() {
            o.insert("alg".into(), json!("RS512"));
        }
        let doc = json!({"keys": [k]}).to_string();
        assert!(JwtVerifier::new(JwtKey::Jwks(doc), None, None, 30).is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let v = JwtVerifier::new(
            JwtKey::Hs256(SECRET.to_vec()),
            Some("https://issuer.example".into()),
            Some("phx-gateway".into()),
            30,
        )
        .expect("v");
        let mk = |extra: Value| {
            let mut c = claims();
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                c.extend(e.clone());
            }
            sign_hs256(&c, SECRET).expect("sign")
        };
        let ok = mk(json!({"iss": "https://issuer.example", "aud": "phx-gateway"}));
        assert!(v.verify_at(&ok, NOW).is_ok());
        let ok = mk(json!({"iss": "https://issuer.example", "aud": ["x", "phx-gateway"]}));
        assert!(v.verify_at(&ok, NOW).is_ok());
        for bad in [
            json!({"iss": "https://evil.example", "aud": "phx-gateway"}),
            json!({"iss": "https://issuer.example", "aud": "other"}),
            json!({"aud": "phx-gateway"}),
            json!({"iss": "https://issuer.example"}),
        ] {
            assert!(is_invalid(&v.verify_at(&mk(bad.clone()), NOW)), "{bad}");
        }
        // Without configured iss/aud, tokens carrying them are fine.
        let any = mk(json!({"iss": "whoever", "aud": "whatever"}));
        assert!(hs().verify_at(&any, NOW).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let v = hs();
        let long = "a.b.".repeat(MAX_TOKEN_LEN);
        for t in [
            "x",
            ".",
            "..",
            "a.b.c",
            "a.b",
            "....",
            "eyJ.eyJ.",
            "€.€.€",
            &long,
        ] {
            assert!(is_invalid(&v.verify_at(t, NOW)), "{t:.40}");
        }
        assert_eq!(v.verify_at("", NOW), Err(TokenError::Missing));
    }

    #[test]
    fn sign_hs256_rejects_non_objects_and_empty_secret() {
        assert!(sign_hs256(&json!(42), SECRET).is_err());
        assert!(sign_hs256(&json!([]), SECRET).is_err());
        assert!(sign_hs256(&claims(), b"").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let secret = b"super-secret-value-do-not-print".to_vec();
        let k = JwtKey::Hs256(secret.clone());
        assert!(!format!("{k:?}").contains("super-secret"));
        let v = JwtVerifier::new(k, None, None, 30).expect("v");
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("super-secret"), "{dbg}");
        // Byte-array renderings must not leak it either.
        assert!(!dbg.contains(&format!("{:?}", &secret[..8])));
        let err = v
            .verify_at(&sign_hs256(&claims(), b"other").expect("s"), NOW)
            .expect_err("bad sig");
        assert!(!err.to_string().contains("super-secret"));
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn arbitrary_strings_never_panic(s in ".{0,300}") {
                let _ = hs().verify_at(&s, NOW);
            }

            #[test]
            fn arbitrary_segments_never_panic(
                h in "[A-Za-z0-9_-]{0,60}",
                p in "[A-Za-z0-9_-]{0,60}",
                s in "[A-Za-z0-9_-]{0,60}",
            ) {
                let token = format!("{h}.{p}.{s}");
                prop_assert!(hs().verify_at(&token, NOW).is_err());
            }
        }
    }
}
