//! The slice of the Erlang External Term Format that Phoenix tokens use.
//!
//! Decoding goes through `eetf`, but only after [`validate`] has proven the bytes are a
//! well-formed term of the small subset we accept (PROTOCOL.md §11.3): `eetf` itself panics on
//! some tags (`unimplemented!` for distribution headers and atom-cache refs), allocates whatever
//! a length field claims, and recurses without limit, none of which is acceptable for bytes that
//! arrive inside a token. After validation every length is known to fit the input, nesting is
//! bounded and only harmless tags remain, so the `eetf` decode cannot misbehave.
//!
//! Encoding (JSON → ETF, for minting) is done by hand: `eetf` encodes map keys in `HashMap`
//! order (tokens would not be reproducible) and writes lists of negative small integers as a
//! byte string (`[-1]` would come out as `[255]`).

use super::TokenError;
use eetf::Term;
use serde_json::{Map, Number, Value};

/// ETF version byte that starts every `term_to_binary` output.
const VERSION: u8 = 131;

// Tags of the accepted subset (names as in erts' `erl_ext_dist`).
const NEW_FLOAT_EXT: u8 = 70;
const COMPRESSED: u8 = 80;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const ATOM_EXT: u8 = 100;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const STRING_EXT: u8 = 107;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const SMALL_ATOM_EXT: u8 = 115;
const MAP_EXT: u8 = 116;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;

/// Deepest nesting of containers accepted in a token term. Real connect data is a user id or
/// a small map; the bound keeps both `eetf`'s recursive decoder and our converters far away
/// from the stack limit of any thread.
pub(super) const MAX_DEPTH: usize = 64;

/// Largest decompressed term accepted from a compressed (`compressed: true`) token. This is
/// what stops a zlib bomb: decompression is aborted as soon as output exceeds it.
pub(super) const MAX_TERM_BYTES: usize = 256 * 1024;

/// Bignums wider than this cannot become a JSON integer (`i64`/`u64`) anyway, so they are
/// rejected during validation, before `eetf`/`num-bigint` allocate for them.
const MAX_BIG_BYTES: usize = 8;

/// Parses a complete `term_to_binary` output (with version byte, optionally compressed) into a
/// term, refusing anything outside the accepted subset.
pub(super) fn decode(bytes: &[u8]) -> Result<Term, TokenError> {
    let bad = || TokenError::invalid("malformed payload");
    let (&version, body) = bytes.split_first().ok_or_else(bad)?;
    if version != VERSION {
        return Err(bad());
    }
    if body.first() == Some(&COMPRESSED) {
        let rest = body.get(1..).ok_or_else(bad)?;
        let size_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(bad)?;
        let size = usize::try_from(u32::from_be_bytes(size_bytes)).map_err(|_| bad())?;
        if size > MAX_TERM_BYTES {
            return Err(TokenError::invalid("compressed payload too large"));
        }
        let zlib = rest.get(4..).ok_or_else(bad)?;
        let inflated = inflate(zlib, size)?;
        // Hand eetf a plain (uncompressed) term so that it never decompresses by itself: its
        // own inflater has no size limit and the inner bytes would escape validation.
        let mut plain = Vec::with_capacity(inflated.len().saturating_add(1));
        plain.push(VERSION);
        plain.extend_from_slice(&inflated);
        return decode_plain(&plain);
    }
    decode_plain(bytes)
}

/// Validates then decodes an uncompressed term (version byte included).
fn decode_plain(bytes: &[u8]) -> Result<Term, TokenError> {
    let body = bytes.get(1..).unwrap_or_default();
    validate(body)?;
    Term::decode(bytes).map_err(|_| TokenError::invalid("malformed payload"))
}

/// Inflates a zlib stream that must produce exactly `expected` bytes (Erlang checks the
/// declared size too). Input is fed in small chunks so that a bomb is caught after at most one
/// chunk's worth of expansion.
fn inflate(data: &[u8], expected: usize) -> Result<Vec<u8>, TokenError> {
    let bad = || TokenError::invalid("malformed compressed payload");
    let mut decoder = noflate::zlib::Decoder::new();
    let mut out = Vec::with_capacity(expected);
    for chunk in data.chunks(256) {
        decoder.feed(chunk).map_err(|_| bad())?;
        let produced = decoder.output();
        if produced.len() > expected.saturating_sub(out.len()) {
            return Err(bad());
        }
        out.extend_from_slice(produced);
        let consumed = produced.len();
        decoder.advance(consumed);
    }
    if !decoder.is_finished() || out.len() != expected {
        return Err(bad());
    }
    Ok(out)
}

/// A bounds-checked reader over the term bytes; every accessor returns `None` instead of
/// reading past the end.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
    fn u16(&mut self) -> Option<usize> {
        let b: [u8; 2] = self.take(2)?.try_into().ok()?;
        Some(usize::from(u16::from_be_bytes(b)))
    }
    fn u32(&mut self) -> Option<usize> {
        let b: [u8; 4] = self.take(4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(b)).ok()
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
}

/// Checks that `body` (a term without the version byte) is exactly one well-formed term of the
/// accepted subset, with no trailing bytes (as `binary_to_term` requires).
pub(super) fn validate(body: &[u8]) -> Result<(), TokenError> {
    let mut cur = Cursor { buf: body };
    skip_term(&mut cur, 0).map_err(TokenError::invalid)?;
    if cur.remaining() != 0 {
        return Err(TokenError::invalid("trailing bytes after payload"));
    }
    Ok(())
}

/// Walks one term. Recursion depth is bounded by [`MAX_DEPTH`]; element counts are checked
/// against the bytes left (every element takes at least one byte), which both rejects absurd
/// length fields at once and bounds what `eetf` pre-allocates later.
fn skip_term(cur: &mut Cursor<'_>, depth: usize) -> Result<(), &'static str> {
    const TRUNCATED: &str = "truncated payload";
    if depth > MAX_DEPTH {
        return Err("payload nested too deeply");
    }
    let tag = cur.u8().ok_or(TRUNCATED)?;
    match tag {
        NEW_FLOAT_EXT => {
            let b: [u8; 8] = cur
                .take(8)
                .and_then(|s| s.try_into().ok())
                .ok_or(TRUNCATED)?;
            if !f64::from_be_bytes(b).is_finite() {
                return Err("non-finite float in payload");
            }
        }
        SMALL_INTEGER_EXT => {
            cur.take(1).ok_or(TRUNCATED)?;
        }
        INTEGER_EXT => {
            cur.take(4).ok_or(TRUNCATED)?;
        }
        SMALL_BIG_EXT | LARGE_BIG_EXT => {
            let n = if tag == SMALL_BIG_EXT {
                cur.u8().map(usize::from)
            } else {
                cur.u32()
            }
            .ok_or(TRUNCATED)?;
            let sign = cur.u8().ok_or(TRUNCATED)?;
            if sign > 1 {
                return Err("bad integer sign");
            }
            if n > MAX_BIG_BYTES {
                return Err("integer too large");
            }
            cur.take(n).ok_or(TRUNCATED)?;
        }
        BINARY_EXT => {
            let n = cur.u32().ok_or(TRUNCATED)?;
            cur.take(n).ok_or(TRUNCATED)?;
        }
        ATOM_EXT | ATOM_UTF8_EXT => {
            let n = cur.u16().ok_or(TRUNCATED)?;
            let name = cur.take(n).ok_or(TRUNCATED)?;
            if tag == ATOM_UTF8_EXT && std::str::from_utf8(name).is_err() {
                return Err("bad atom");
            }
        }
        SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
            let n = usize::from(cur.u8().ok_or(TRUNCATED)?);
            let name = cur.take(n).ok_or(TRUNCATED)?;
            if tag == SMALL_ATOM_UTF8_EXT && std::str::from_utf8(name).is_err() {
                return Err("bad atom");
            }
        }
        SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
            let n = if tag == SMALL_TUPLE_EXT {
                cur.u8().map(usize::from)
            } else {
                cur.u32()
            }
            .ok_or(TRUNCATED)?;
            skip_elements(cur, n, depth)?;
        }
        MAP_EXT => {
            let pairs = cur.u32().ok_or(TRUNCATED)?;
            skip_elements(cur, pairs.checked_mul(2).ok_or(TRUNCATED)?, depth)?;
        }
        NIL_EXT => {}
        STRING_EXT => {
            let n = cur.u16().ok_or(TRUNCATED)?;
            cur.take(n).ok_or(TRUNCATED)?;
        }
        LIST_EXT => {
            let n = cur.u32().ok_or(TRUNCATED)?;
            skip_elements(cur, n, depth)?;
            // Improper lists have no JSON form (Jason cannot encode them either), so only the
            // proper tail is accepted; this also keeps eetf's list decoding simple.
            if cur.u8() != Some(NIL_EXT) {
                return Err("improper list in payload");
            }
        }
        _ => return Err("unsupported term in payload"),
    }
    Ok(())
}

fn skip_elements(cur: &mut Cursor<'_>, n: usize, depth: usize) -> Result<(), &'static str> {
    if n > cur.remaining() {
        return Err("truncated payload");
    }
    for _ in 0..n {
        skip_term(cur, depth + 1)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Term → JSON
// ---------------------------------------------------------------------------------------------

/// Reads an integer term as `i128` (wide enough for every `i64` and `u64`).
pub(super) fn term_to_int(term: &Term) -> Option<i128> {
    match term {
        Term::FixInteger(i) => Some(i128::from(i.value)),
        // Validation caps bignums at 8 magnitude bytes, so the decimal text always fits i128.
        // Going through text avoids a direct dependency on num-traits just for `to_i128`.
        Term::BigInteger(b) => b.to_string().parse::<i128>().ok(),
        _ => None,
    }
}

/// Converts the token's data term into JSON the way Phoenix's Jason would encode it, with the
/// extensions listed in the module docs of `phoenix_token`.
pub(super) fn term_to_json(term: &Term, depth: usize) -> Result<Value, TokenError> {
    if depth > MAX_DEPTH {
        return Err(TokenError::invalid("payload nested too deeply"));
    }
    let unrepresentable = || TokenError::invalid("token data not representable as JSON");
    Ok(match term {
        Term::FixInteger(_) | Term::BigInteger(_) => {
            let n = term_to_int(term).ok_or_else(unrepresentable)?;
            if let Ok(i) = i64::try_from(n) {
                Value::from(i)
            } else if let Ok(u) = u64::try_from(n) {
                Value::from(u)
            } else {
                // Silently rounding an identifier to f64 could map two users to one id.
                return Err(unrepresentable());
            }
        }
        Term::Float(f) => Value::Number(Number::from_f64(f.value).ok_or_else(unrepresentable)?),
        Term::Atom(a) => match a.name.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            other => Value::String(other.to_owned()),
        },
        // Jason refuses binaries that are not UTF-8, and so do we: there is no lossless JSON
        // string for them, and guessing an encoding (base64?) would change the data's meaning.
        Term::Binary(b) => {
            Value::String(String::from_utf8(b.bytes.clone()).map_err(|_| unrepresentable())?)
        }
        Term::ByteList(l) => Value::Array(l.bytes.iter().map(|&b| Value::from(b)).collect()),
        Term::List(l) => Value::Array(
            l.elements
                .iter()
                .map(|t| term_to_json(t, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        // Jason cannot encode tuples; the gateway represents them as arrays, which is the only
        // reasonable JSON shape and keeps e.g. `{:user, 42}` usable.
        Term::Tuple(t) => Value::Array(
            t.elements
                .iter()
                .map(|t| term_to_json(t, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Term::Map(m) => {
            let mut entries = Vec::with_capacity(m.map.len());
            for (k, v) in &m.map {
                entries.push((map_key(k, depth)?, term_to_json(v, depth + 1)?));
            }
            // eetf hands us a HashMap; sorting makes the result independent of hash order
            // (and of serde_json's `preserve_order` feature).
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut obj = Map::new();
            for (k, v) in entries {
                // Two distinct Erlang keys can stringify alike (`"1"` and `1`); picking one
                // silently would make the result depend on hash order.
                if obj.insert(k, v).is_some() {
                    return Err(TokenError::invalid("duplicate map key in token data"));
                }
            }
            Value::Object(obj)
        }
        // Pids, ports, references, funs, bitstrings, improper lists: no JSON meaning (and the
        // validator already rejects their tags; this arm is defence in depth).
        _ => return Err(unrepresentable()),
    })
}

/// Object keys: binaries and atoms become their text (Jason's behaviour); any other key is
/// stringified as its JSON text (`1` → `"1"`, `[1,2]` → `"[1,2]"`).
fn map_key(key: &Term, depth: usize) -> Result<String, TokenError> {
    match key {
        Term::Atom(a) => Ok(a.name.clone()),
        Term::Binary(b) => String::from_utf8(b.bytes.clone())
            .map_err(|_| TokenError::invalid("token data not representable as JSON")),
        other => {
            let v = term_to_json(other, depth + 1)?;
            serde_json::to_string(&v)
                .map_err(|_| TokenError::invalid("token data not representable as JSON"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON → ETF (what `:erlang.term_to_binary/1` produces for the Elixir equivalent)
// ---------------------------------------------------------------------------------------------

/// Appends the encoding of an integer, choosing the same tag Erlang would: small integer,
/// 32-bit integer, or a minimal little-endian bignum.
pub(super) fn encode_int(n: i128, out: &mut Vec<u8>) {
    if let Ok(small) = u8::try_from(n) {
        out.push(SMALL_INTEGER_EXT);
        out.push(small);
    } else if let Ok(word) = i32::try_from(n) {
        out.push(INTEGER_EXT);
        out.extend_from_slice(&word.to_be_bytes());
    } else {
        let magnitude = n.unsigned_abs().to_le_bytes();
        let len = magnitude
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        let digits = magnitude.get(..len).unwrap_or_default();
        out.push(SMALL_BIG_EXT);
        // len <= 16 because the magnitude came from a u128.
        out.push(u8::try_from(len).unwrap_or(16));
        out.push(u8::from(n < 0));
        out.extend_from_slice(digits);
    }
}

fn encode_atom(name: &str, out: &mut Vec<u8>) {
    // Callers only pass `true`/`false`/`nil`, all far below the 255-byte small-atom limit.
    out.push(SMALL_ATOM_UTF8_EXT);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}

fn encode_len_u32(len: usize, out: &mut Vec<u8>) -> Result<(), TokenError> {
    let len = u32::try_from(len).map_err(|_| TokenError::invalid("data too large to sign"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends the ETF encoding of a JSON value: numbers → integers/floats, strings → binaries,
/// arrays → lists, objects → maps with binary keys, `true`/`false`/`null` → the atoms
/// `true`/`false`/`nil` (exactly what an Elixir app gets from `Jason.decode!`).
pub(super) fn encode_json(
    value: &Value,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<(), TokenError> {
    if depth > MAX_DEPTH {
        // The verifier would refuse such a token, so refuse to mint it.
        return Err(TokenError::invalid("data nested too deeply"));
    }
    match value {
        Value::Null => encode_atom("nil", out),
        Value::Bool(b) => encode_atom(if *b { "true" } else { "false" }, out),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                encode_int(i128::from(i), out);
            } else if let Some(u) = n.as_u64() {
                encode_int(i128::from(u), out);
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                out.push(NEW_FLOAT_EXT);
                out.extend_from_slice(&f.to_be_bytes());
            } else {
                return Err(TokenError::invalid("number not representable"));
            }
        }
        Value::String(s) => {
            out.push(BINARY_EXT);
            encode_len_u32(s.len(), out)?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => encode_list(items, out, depth)?,
        Value::Object(map) => {
            out.push(MAP_EXT);
            encode_len_u32(map.len(), out)?;
            // Erlang writes small maps in term order, which for binary keys is bytewise order;
            // sorting here makes minting deterministic whatever serde_json's map type is.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                out.push(BINARY_EXT);
                encode_len_u32(k.len(), out)?;
                out.extend_from_slice(k.as_bytes());
                encode_json(v, out, depth + 1)?;
            }
        }
    }
    Ok(())
}

fn encode_list(items: &[Value], out: &mut Vec<u8>, depth: usize) -> Result<(), TokenError> {
    if items.is_empty() {
        out.push(NIL_EXT);
        return Ok(());
    }
    // Erlang packs a list of byte-sized integers as STRING_EXT; do the same so that minted
    // tokens are byte-identical to Elixir's.
    let bytes: Option<Vec<u8>> = items
        .iter()
        .map(|v| v.as_u64().and_then(|u| u8::try_from(u).ok()))
        .collect();
    if let (Some(bytes), Ok(len)) = (bytes, u16::try_from(items.len())) {
        out.push(STRING_EXT);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
        return Ok(());
    }
    out.push(LIST_EXT);
    encode_len_u32(items.len(), out)?;
    for item in items {
        encode_json(item, out, depth + 1)?;
    }
    out.push(NIL_EXT);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: &Value) -> Value {
        let mut out = vec![VERSION];
        encode_json(v, &mut out, 0).expect("encode");
        let term = decode(&out).expect("decode");
        term_to_json(&term, 0).expect("to json")
    }

    #[test]
    fn integers_use_erlang_tags() {
        let enc = |n: i128| {
            let mut out = Vec::new();
            encode_int(n, &mut out);
            out
        };
        assert_eq!(enc(42), vec![97, 42]);
        assert_eq!(enc(86400), vec![98, 0, 1, 0x51, 0x80]);
        assert_eq!(enc(-1), vec![98, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            enc(1_700_000_000_000),
            vec![110, 6, 0, 0x00, 0x68, 0xE5, 0xCF, 0x8B, 0x01]
        );
        assert_eq!(enc(-(1i128 << 40)), vec![110, 6, 1, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn json_roundtrips() {
        for v in [
            json!(42),
            json!(-7),
            json!(-1_700_000_000_000i64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!("user-42"),
            json!(""),
            json!(null),
            json!(true),
            json!([]),
            json!([1, 2, 255]),
            json!([-1, 256, "x"]),
            json!({"id": 1, "roles": ["a", "b"], "meta": {"x": null}}),
            json!({}),
        ] {
            assert_eq!(roundtrip(&v), v, "{v}");
        }
    }

    #[test]
    fn byte_lists_are_string_ext() {
        let mut out = Vec::new();
        encode_json(&json!([1, 2, 3]), &mut out, 0).expect("encode");
        assert_eq!(out, vec![107, 0, 3, 1, 2, 3]);
    }

    #[test]
    fn erlang_shapes_convert_like_jason() {
        // #{1 => a, <<"k">> => nil, k2 => {true, 1.0}}
        let mut t = vec![VERSION, MAP_EXT, 0, 0, 0, 3];
        t.extend([SMALL_INTEGER_EXT, 1, SMALL_ATOM_UTF8_EXT, 1, b'a']);
        t.extend([
            BINARY_EXT, 0, 0, 0, 1, b'k', ATOM_EXT, 0, 3, b'n', b'i', b'l',
        ]);
        t.extend([SMALL_ATOM_EXT, 2, b'k', b'2', SMALL_TUPLE_EXT, 2]);
        t.extend([
            SMALL_ATOM_UTF8_EXT,
            4,
            b't',
            b'r',
            b'u',
            b'e',
            NEW_FLOAT_EXT,
        ]);
        t.extend(1.0f64.to_be_bytes());
        let term = decode(&t).expect("decode");
        assert_eq!(
            term_to_json(&term, 0).expect("json"),
            json!({"1": "a", "k": null, "k2": [true, 1.0]})
        );
    }

    #[test]
    fn rejects_duplicate_stringified_keys() {
        let mut t = vec![VERSION, MAP_EXT, 0, 0, 0, 2];
        t.extend([SMALL_INTEGER_EXT, 1, NIL_EXT]);
        t.extend([BINARY_EXT, 0, 0, 0, 1, b'1', NIL_EXT]);
        let term = decode(&t).expect("decode");
        assert!(term_to_json(&term, 0).is_err());
    }

    #[test]
    fn rejects_unsafe_or_unsupported_terms() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![VERSION],
            vec![130, SMALL_INTEGER_EXT, 1],
            vec![VERSION, 68, 0], // distribution header: eetf panics
            vec![VERSION, 82, 0], // atom cache ref: eetf panics
            vec![VERSION, 77, 0, 0, 0, 1, 0, 0], // bitstring (eetf shift overflow)
            vec![VERSION, 88, 0], // pid
            vec![VERSION, 90, 0], // newer reference
            vec![VERSION, 112, 0], // fun
            vec![VERSION, 99, 0], // old text float
            vec![VERSION, BINARY_EXT, 0xff, 0xff, 0xff, 0xff],
            vec![VERSION, LIST_EXT, 0xff, 0xff, 0xff, 0xff, NIL_EXT],
            vec![VERSION, LARGE_TUPLE_EXT, 0xff, 0xff, 0xff, 0xff],
            vec![VERSION, MAP_EXT, 0xff, 0xff, 0xff, 0xff],
            vec![VERSION, LARGE_BIG_EXT, 0xff, 0xff, 0xff, 0xff, 0],
            vec![VERSION, SMALL_BIG_EXT, 9, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            vec![VERSION, SMALL_BIG_EXT, 1, 2, 1],
            vec![VERSION, SMALL_INTEGER_EXT, 1, 0], // trailing byte
            vec![
                VERSION,
                LIST_EXT,
                0,
                0,
                0,
                1,
                SMALL_INTEGER_EXT,
                1,
                SMALL_INTEGER_EXT,
                2,
            ],
            vec![VERSION, SMALL_ATOM_UTF8_EXT, 1, 0xff],
            vec![VERSION, NEW_FLOAT_EXT, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], // +inf
            vec![VERSION, COMPRESSED, 0, 0, 0, 1],
            vec![VERSION, COMPRESSED, 0xff, 0xff, 0xff, 0xff, 0x78, 0x9c],
        ];
        for c in cases {
            assert!(decode(&c).is_err(), "{c:?}");
        }
    }

    #[test]
    fn rejects_deep_nesting_without_recursing_unboundedly() {
        for tag in [[SMALL_TUPLE_EXT, 1], [LIST_EXT, 0]] {
            let mut t = vec![VERSION];
            for _ in 0..100_000 {
                t.extend(tag);
                if tag[0] == LIST_EXT {
                    t.extend([0, 0, 1]);
                }
            }
            t.push(NIL_EXT);
            assert!(decode(&t).is_err());
        }
        let ok_depth = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        let v: Value = serde_json::from_str(&ok_depth).expect("json");
        assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn compressed_terms() {
        let mut inner = Vec::new();
        encode_json(&json!({"user": "x".repeat(500)}), &mut inner, 0).expect("encode");
        let z = noflate::zlib::compress(&inner).expect("compress");
        let mut t = vec![VERSION, COMPRESSED];
        t.extend(u32::try_from(inner.len()).expect("len").to_be_bytes());
        t.extend(&z);
        let term = decode(&t).expect("decode");
        assert_eq!(
            term_to_json(&term, 0).expect("json"),
            json!({"user": "x".repeat(500)})
        );

        // Declared size smaller than the real output: refused (bomb guard).
        let mut lie = vec![VERSION, COMPRESSED, 0, 0, 0, 10];
        lie.extend(&z);
        assert!(decode(&lie).is_err());

        // A real bomb: 16 MiB of zeros in a binary, declared honestly.
        let mut big = vec![BINARY_EXT, 0, 0x10, 0, 0];
        big.resize(5 + (16 << 20), 0);
        let zb = noflate::zlib::compress(&big).expect("compress");
        let mut bomb = vec![VERSION, COMPRESSED];
        bomb.extend(u32::try_from(big.len()).expect("len").to_be_bytes());
        bomb.extend(&zb);
        assert!(decode(&bomb).is_err());

        // Compression may not nest.
        let mut nested = vec![VERSION, COMPRESSED];
        nested.extend(u32::try_from(t.len() - 1).expect("len").to_be_bytes());
        nested.extend(noflate::zlib::compress(&t[1..]).expect("compress"));
        assert!(decode(&nested).is_err());
    }
}
