//! JWT public keys (PEM files and JWK components), read and checked with the RustCrypto crates
//! that `jsonwebtoken`'s backend verifies with.
//!
//! `jsonwebtoken` is built without its `use_pem` feature (two more crates, and it checks neither
//! the RSA key size nor the curve), and it only parses a key when a token arrives. Parsing here
//! instead makes an unusable key fail configuration at start-up rather than every token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::spki::Error as SpkiError;
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPublicKey};

/// RSA moduli accepted, in bits: below 2048 is too weak to trust; above 4096 the RSA backend
/// refuses the key anyway (its `RsaPublicKey::MAX_SIZE`).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=RsaPublicKey::MAX_SIZE;

/// Why a configured JWT public key is unusable.
///
/// Keys are public, so the texts may quote parser details (labels, OIDs, offsets).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text holds no PEM block.
    #[error("malformed PEM: {0}")]
    Pem(#[from] pem::PemError),
    /// The PEM block holds something other than the expected kind of public key.
    #[error("PEM label {label:?} is not {expected}")]
    Label {
        /// The label found (`PRIVATE KEY`, `CERTIFICATE`, ...).
        label: String,
        /// The labels accepted.
        expected: &'static str,
    },
    /// The `PUBLIC KEY` holds a key of another algorithm or curve.
    #[error("PUBLIC KEY holds no {expected} key")]
    Algorithm {
        /// `RSA` or `P-256`.
        expected: &'static str,
        /// The parser's error (it names the OID it expected).
        #[source]
        source: SpkiError,
    },
    /// A malformed `PUBLIC KEY` (SPKI) block: bad DER, an RSA modulus over 4096 bits, a point
    /// off the curve.
    #[error("bad {expected} public key: {source}")]
    Spki {
        /// `RSA` or `P-256`.
        expected: &'static str,
        /// What the parser refused.
        #[source]
        source: SpkiError,
    },
    /// A malformed `RSA PUBLIC KEY` (PKCS#1) block.
    #[error("bad RSA public key: {0}")]
    Pkcs1(#[source] rsa::pkcs1::Error),
    /// The RSA modulus is outside the accepted sizes.
    #[error("RSA key size must be 2048 to 4096 bits, not {bits}")]
    RsaSize {
        /// Size of the modulus found.
        bits: usize,
    },
    /// JWK coordinates that are not a P-256 point.
    #[error("JWK coordinates are not a P-256 point")]
    OffCurve(#[source] p256::elliptic_curve::Error),
    /// A JWK member that is not base64url.
    #[error("bad JWK: {0}")]
    JwkBase64(#[from] base64::DecodeError),
    /// `jsonwebtoken` refused the JWK.
    #[error("bad JWK: {0}")]
    Jwk(#[from] jsonwebtoken::errors::Error),
}

/// Sorts an SPKI parser error: an unknown OID means the key is of another kind.
fn spki_error(expected: &'static str) -> impl Fn(SpkiError) -> KeyError {
    move |source| match source {
        SpkiError::OidUnknown { .. } => KeyError::Algorithm { expected, source },
        _ => KeyError::Spki { expected, source },
    }
}

/// Decodes the PEM block of a key file.
fn decode_pem(pem: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
    // Lenient about line lengths and blank lines, as key files written by tools other than
    // openssl (76-column or one-line bodies) are common.
    let block = pem::parse(pem)?;
    Ok((block.tag().to_owned(), block.into_contents()))
}

fn check_rsa_bits(bits: usize) -> Result<(), KeyError> {
    if RSA_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::RsaSize { bits })
    }
}

/// RS256 key from a PEM RSA public key (`PUBLIC KEY` SPKI or `RSA PUBLIC KEY` PKCS#1).
pub(super) fn rs256_pem(pem: &[u8]) -> Result<DecodingKey, KeyError> {
    let (label, der) = decode_pem(pem)?;
    let key = match label.as_str() {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&der).map_err(spki_error("RSA"))?,
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&der).map_err(KeyError::Pkcs1)?,
        _ => {
            return Err(KeyError::Label {
                label,
                expected: "PUBLIC KEY or RSA PUBLIC KEY",
            })
        }
    };
    check_rsa_bits(key.n().bits())?;
    Ok(DecodingKey::from_rsa_raw_components(
        &key.n().to_bytes_be(),
        &key.e().to_bytes_be(),
    ))
}

/// ES256 key from a PEM P-256 public key (`PUBLIC KEY` SPKI).
pub(super) fn es256_pem(pem: &[u8]) -> Result<DecodingKey, KeyError> {
    let (label, der) = decode_pem(pem)?;
    if label != "PUBLIC KEY" {
        return Err(KeyError::Label {
            label,
            expected: "PUBLIC KEY",
        });
    }
    let key = p256::PublicKey::from_public_key_der(&der).map_err(spki_error("P-256"))?;
    Ok(DecodingKey::from_ec_der(
        key.to_encoded_point(false).as_bytes(),
    ))
}

/// RS256 key from JWK components (base64url modulus and exponent), with the size policy of
/// PEM keys.
pub(super) fn rs256_jwk(n: &str, e: &str) -> Result<DecodingKey, KeyError> {
    let n = URL_SAFE_NO_PAD.decode(n)?;
    let e = URL_SAFE_NO_PAD.decode(e)?;
    check_rsa_bits(BigUint::from_bytes_be(&n).bits())?;
    Ok(DecodingKey::from_rsa_raw_components(&n, &e))
}

/// ES256 key from JWK coordinates (base64url `x` and `y`).
pub(super) fn es256_jwk(x: &str, y: &str) -> Result<DecodingKey, KeyError> {
    let key = DecodingKey::from_ec_components(x, y)?;
    // `from_ec_components` does not look at the point; parse the bytes the backend will parse.
    p256::PublicKey::from_sec1_bytes(key.try_get_as_bytes()?).map_err(KeyError::OffCurve)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_pem_is_an_error() {
        for text in [
            &b""[..],
            b"-----BEGIN PUBLIC KEY-----",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END PUBLIC KEY-----",
            b"\xff\xfe",
        ] {
            assert!(matches!(rs256_pem(text), Err(KeyError::Pem(_))));
            assert!(matches!(es256_pem(text), Err(KeyError::Pem(_))));
        }
        // Well-formed PEM around a non-key.
        let junk = b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert!(matches!(rs256_pem(junk), Err(KeyError::Spki { .. })));
        assert!(matches!(es256_pem(junk), Err(KeyError::Spki { .. })));
        let junk = b"-----BEGIN RSA PUBLIC KEY-----\nMAA=\n-----END RSA PUBLIC KEY-----\n";
        assert!(matches!(rs256_pem(junk), Err(KeyError::Pkcs1(_))));
    }

    #[test]
    fn wrong_label_is_an_error() {
        let cert = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert!(matches!(rs256_pem(cert), Err(KeyError::Label { .. })));
        assert!(matches!(es256_pem(cert), Err(KeyError::Label { .. })));
        let pkcs1 = b"-----BEGIN RSA PUBLIC KEY-----\nMAA=\n-----END RSA PUBLIC KEY-----\n";
        assert!(matches!(es256_pem(pkcs1), Err(KeyError::Label { .. })));
    }

    #[test]
    fn jwk_rsa_size_is_checked() {
        let n2048 = URL_SAFE_NO_PAD.encode([0x80; 256]);
        assert!(rs256_jwk(&n2048, "AQAB").is_ok());
        let n2047 = URL_SAFE_NO_PAD.encode([[0x40].as_slice(), &[0; 255]].concat());
        assert_eq!(
            rs256_jwk(&n2047, "AQAB").err(),
            Some(KeyError::RsaSize { bits: 2047 })
        );
        let n4104 = URL_SAFE_NO_PAD.encode([0xff; 513]);
        assert!(matches!(
            rs256_jwk(&n4104, "AQAB"),
            Err(KeyError::RsaSize { bits: 4104 })
        ));
        assert!(matches!(
            rs256_jwk("!", "AQAB"),
            Err(KeyError::JwkBase64(_))
        ));
    }
}
