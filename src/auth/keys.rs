//! Minimal PEM and DER reading for JWT public keys.
//!
//! `jsonwebtoken` is built without its `use_pem` feature (which would pull in two more
//! crates), so PEM public keys are unpacked here into the forms its DER constructors take:
//! PKCS#1 `RSAPublicKey` DER for RSA and the SEC1 point for P-256. Only the handful of DER
//! structures needed is understood; everything is bounds-checked and returns an error rather
//! than panicking, even though key files are operator configuration rather than client input.

use super::TokenError;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// DER content of OID 1.2.840.113549.1.1.1 (rsaEncryption).
const OID_RSA_ENCRYPTION: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// DER content of OID 1.2.840.10045.2.1 (id-ecPublicKey).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// DER content of OID 1.2.840.10045.3.1.7 (prime256v1 / P-256).
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// RSA moduli accepted: below 2048 bits is too weak to trust, above 4096 bits the RSA backend
/// refuses the key anyway (better to fail at startup than on every token).
pub(super) const RSA_MIN_BITS: usize = 2048;
pub(super) const RSA_MAX_BITS: usize = 4096;

/// Decodes the first PEM block of `text`, returning its label (`PUBLIC KEY`, ...) and DER.
pub(super) fn pem_decode(text: &[u8]) -> Result<(String, Vec<u8>), TokenError> {
    let bad = || TokenError::invalid("malformed PEM");
    let text = std::str::from_utf8(text).map_err(|_| bad())?;
    let begin = text.find("-----BEGIN ").ok_or_else(bad)?;
    let after_begin = text.get(begin + "-----BEGIN ".len()..).ok_or_else(bad)?;
    let label_end = after_begin.find("-----").ok_or_else(bad)?;
    let label = after_begin.get(..label_end).ok_or_else(bad)?;
    let body_start = label_end + "-----".len();
    let end_marker = format!("-----END {label}-----");
    let body_len = after_begin
        .get(body_start..)
        .and_then(|rest| rest.find(&end_marker))
        .ok_or_else(bad)?;
    let body = after_begin
        .get(body_start..body_start + body_len)
        .ok_or_else(bad)?;
    if body.contains(':') {
        // RFC 1421 headers (Proc-Type/DEK-Info) mean an encrypted key: not a public key.
        return Err(TokenError::invalid("encrypted PEM not supported"));
    }
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(|_| bad())?;
    Ok((label.to_owned(), der))
}

/// Splits one DER TLV off the front of `buf`: `(tag, content, rest)`. Only definite lengths of
/// up to four bytes are accepted (DER forbids the indefinite form).
fn tlv(buf: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = buf.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = (rest.get(..n)?, rest.get(n..)?);
        rest = after;
        len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let content = rest.get(..len)?;
    Some((tag, content, rest.get(len..)?))
}

/// Reads a TLV that must carry `tag`.
fn expect(buf: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match tlv(buf)? {
        (t, content, rest) if t == tag => Some((content, rest)),
        _ => None,
    }
}

/// SubjectPublicKeyInfo → (algorithm OID, algorithm parameters TLV bytes, key bytes).
fn parse_spki(der: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (spki, trailing) = expect(der, TAG_SEQUENCE)?;
    if !trailing.is_empty() {
        return None;
    }
    let (alg_id, rest) = expect(spki, TAG_SEQUENCE)?;
    let (oid, params) = expect(alg_id, TAG_OID)?;
    let (bits, rest) = expect(rest, TAG_BIT_STRING)?;
    if !rest.is_empty() {
        return None;
    }
    // The first content byte of a BIT STRING counts unused trailing bits; keys use whole bytes.
    let (&unused, key) = bits.split_first()?;
    if unused != 0 {
        return None;
    }
    Some((oid, params, key))
}

/// Number of significant bits in a big-endian unsigned integer.
pub(super) fn bit_len(be: &[u8]) -> usize {
    let first = be.iter().position(|&b| b != 0);
    match first.and_then(|i| be.get(i..)) {
        Some(digits) => {
            let top = digits.first().map_or(0, |b| 8 - b.leading_zeros() as usize);
            (digits.len() - 1) * 8 + top
        }
        None => 0,
    }
}

/// Checks a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn check_pkcs1(der: &[u8]) -> Result<(), TokenError> {
    let bad = || TokenError::invalid("bad RSA public key");
    let (seq, trailing) = expect(der, TAG_SEQUENCE).ok_or_else(bad)?;
    let (n, rest) = expect(seq, TAG_INTEGER).ok_or_else(bad)?;
    let (e, rest) = expect(rest, TAG_INTEGER).ok_or_else(bad)?;
    if !trailing.is_empty() || !rest.is_empty() || bit_len(e) < 2 {
        return Err(bad());
    }
    let bits = bit_len(n);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Err(TokenError::invalid(
            "RSA key size must be 2048 to 4096 bits",
        ));
    }
    Ok(())
}

/// PEM RSA public key (`PUBLIC KEY` SPKI or `RSA PUBLIC KEY` PKCS#1) → PKCS#1 DER.
pub(super) fn rsa_public_pem_to_pkcs1(pem: &[u8]) -> Result<Vec<u8>, TokenError> {
    let bad = || TokenError::invalid("bad RS256 public key PEM");
    let (label, der) = pem_decode(pem).map_err(|_| bad())?;
    let pkcs1 = match label.as_str() {
        "RSA PUBLIC KEY" => der,
        "PUBLIC KEY" => {
            let (oid, _params, key) = parse_spki(&der).ok_or_else(bad)?;
            if oid != OID_RSA_ENCRYPTION {
                return Err(bad());
            }
            key.to_vec()
        }
        _ => return Err(bad()),
    };
    check_pkcs1(&pkcs1)?;
    Ok(pkcs1)
}

/// PEM P-256 public key (`PUBLIC KEY` SPKI) → SEC1 point bytes.
pub(super) fn p256_public_pem_to_point(pem: &[u8]) -> Result<Vec<u8>, TokenError> {
    let bad = || TokenError::invalid("bad ES256 public key PEM");
    let (label, der) = pem_decode(pem).map_err(|_| bad())?;
    if label != "PUBLIC KEY" {
        return Err(bad());
    }
    let (oid, params, point) = parse_spki(&der).ok_or_else(bad)?;
    let (curve, rest) = expect(params, TAG_OID).ok_or_else(bad)?;
    if oid != OID_EC_PUBLIC_KEY || curve != OID_P256 || !rest.is_empty() {
        return Err(TokenError::invalid("ES256 needs a P-256 public key"));
    }
    let well_formed = match point.first() {
        Some(0x04) => point.len() == 65,
        Some(0x02 | 0x03) => point.len() == 33,
        _ => false,
    };
    if !well_formed {
        return Err(bad());
    }
    Ok(point.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_rejects_bad_lengths() {
        assert!(tlv(&[]).is_none());
        assert!(tlv(&[0x30]).is_none());
        assert!(tlv(&[0x30, 0x80]).is_none(), "indefinite length");
        assert!(tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none(), "5-byte length");
        assert!(
            tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none(),
            "overlong"
        );
        assert!(tlv(&[0x30, 0x02, 0x01]).is_none(), "truncated");
        assert_eq!(
            tlv(&[0x02, 0x01, 0x05, 0xAA]),
            Some((0x02, &[5u8][..], &[0xAAu8][..]))
        );
        assert_eq!(
            tlv(&[0x04, 0x81, 0x01, 0x07]),
            Some((0x04, &[7u8][..], &[][..]))
        );
    }

    #[test]
    fn bit_len_counts_significant_bits() {
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(bit_len(&[0, 0]), 0);
        assert_eq!(bit_len(&[0, 1]), 1);
        assert_eq!(bit_len(&[0x01, 0x00, 0x01]), 17);
        assert_eq!(bit_len(&[0x00, 0x80, 0x00]), 16);
    }

    #[test]
    fn pem_garbage_is_an_error() {
        for text in [
            &b""[..],
            b"-----BEGIN PUBLIC KEY-----",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            b"-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END PUBLIC KEY-----",
            b"\xff\xfe",
        ] {
            assert!(pem_decode(text).is_err());
            assert!(rsa_public_pem_to_pkcs1(text).is_err());
            assert!(p256_public_pem_to_point(text).is_err());
        }
        // Well-formed PEM around a non-key.
        let junk = b"-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n";
        assert!(pem_decode(junk).is_ok());
        assert!(rsa_public_pem_to_pkcs1(junk).is_err());
        assert!(p256_public_pem_to_point(junk).is_err());
    }
}
