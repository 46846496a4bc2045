//! Terms to JSON (as Jason would encode them) and JSON to terms (as `Jason.decode!` gives
//! them to an Elixir app), for Phoenix.Token data and Phoenix.PubSub payloads.

use eetf::Term;
use serde_json::{Map, Number, Value};

use super::{
    EtfError, ATOM_EXT, BINARY_EXT, INTEGER_EXT, LIST_EXT, MAP_EXT, NEW_FLOAT_EXT, NIL_EXT,
    SMALL_ATOM_UTF8_EXT, SMALL_BIG_EXT, SMALL_INTEGER_EXT, SMALL_TUPLE_EXT, STRING_EXT,
};

/// How terms without a JSON form in Jason are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Phoenix.Token data: tuples become arrays (keeps `{:user, 42}` usable as an id).
    Token,
    /// A channel payload, exactly what Jason can encode: tuples are refused, and a struct is
    /// its fields without `__struct__` (what `@derive Jason.Encoder` gives).
    Jason,
}

const UNREPRESENTABLE: EtfError = EtfError("data not representable as JSON");

/// Reads an integer term as `i128` (wide enough for every `i64` and `u64`).
pub fn term_to_int(term: &Term) -> Option<i128> {
    match term {
        Term::FixInteger(i) => Some(i128::from(i.value)),
        // Validation caps bignums at 8 magnitude bytes, so the decimal text always fits i128.
        // Going through text avoids a direct dependency on num-traits just for `to_i128`.
        Term::BigInteger(b) => b.to_string().parse::<i128>().ok(),
        _ => None,
    }
}

/// Converts a term into JSON the way Jason would encode it: integers → numbers (outside
/// `i64`/`u64` → refused rather than rounded), UTF-8 binaries → strings, `true`/`false`/`nil`
/// → `true`/`false`/`null`, other atoms → strings, lists → arrays, maps → objects (binary
/// and atom keys as text, other keys as their JSON text); tuples as `style` says. `depth` is
/// the nesting already spent; `max_depth` bounds it.
pub fn term_to_json(
    term: &Term,
    style: Style,
    depth: usize,
    max_depth: usize,
) -> Result<Value, EtfError> {
    if depth > max_depth {
        return Err(EtfError("payload nested too deeply"));
    }
    let nested = |t: &Term| term_to_json(t, style, depth + 1, max_depth);
    Ok(match term {
        Term::FixInteger(_) | Term::BigInteger(_) => {
            let n = term_to_int(term).ok_or(UNREPRESENTABLE)?;
            if let Ok(i) = i64::try_from(n) {
                Value::from(i)
            } else if let Ok(u) = u64::try_from(n) {
                Value::from(u)
            } else {
                // Silently rounding an identifier to f64 could map two users to one id.
                return Err(UNREPRESENTABLE);
            }
        }
        Term::Float(f) => Value::Number(Number::from_f64(f.value).ok_or(UNREPRESENTABLE)?),
        Term::Atom(a) => match a.name.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "nil" => Value::Null,
            other => Value::String(other.to_owned()),
        },
        // Jason refuses binaries that are not UTF-8, and so do we: there is no lossless JSON
        // string for them, and guessing an encoding (base64?) would change the data's meaning.
        Term::Binary(b) => {
            Value::String(String::from_utf8(b.bytes.clone()).map_err(|_| UNREPRESENTABLE)?)
        }
        Term::ByteList(l) => Value::Array(l.bytes.iter().map(|&b| Value::from(b)).collect()),
        Term::List(l) => Value::Array(l.elements.iter().map(nested).collect::<Result<_, _>>()?),
        // Jason cannot encode tuples. In token data the gateway reads them as arrays, the only
        // reasonable JSON shape, which keeps e.g. `{:user, 42}` usable.
        Term::Tuple(t) if style == Style::Token => {
            Value::Array(t.elements.iter().map(nested).collect::<Result<_, _>>()?)
        }
        Term::Map(m) => {
            let mut entries = Vec::with_capacity(m.map.len());
            for (k, v) in &m.map {
                let key = map_key(k, style, depth, max_depth)?;
                if style == Style::Jason && key == "__struct__" && matches!(k, Term::Atom(_)) {
                    continue;
                }
                entries.push((key, nested(v)?));
            }
            // eetf hands us a HashMap; sorting makes the result independent of hash order
            // (and of serde_json's `preserve_order` feature). It is also Erlang's order of a
            // small map's binary keys, so Jason would have written the same.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut obj = Map::new();
            for (k, v) in entries {
                // Two distinct Erlang keys can stringify alike (`"1"` and `1`); picking one
                // silently would make the result depend on hash order.
                if obj.insert(k, v).is_some() {
                    return Err(EtfError("duplicate map key"));
                }
            }
            Value::Object(obj)
        }
        // Tuples in a payload, pids, ports, references, funs, bitstrings, improper lists: no
        // JSON meaning (the validator already rejects most of their tags).
        _ => return Err(UNREPRESENTABLE),
    })
}

/// Object keys: binaries and atoms become their text (Jason's behaviour); any other key is
/// stringified as its JSON text (`1` → `"1"`, `[1,2]` → `"[1,2]"`).
fn map_key(key: &Term, style: Style, depth: usize, max_depth: usize) -> Result<String, EtfError> {
    match key {
        Term::Atom(a) => Ok(a.name.clone()),
        Term::Binary(b) => String::from_utf8(b.bytes.clone()).map_err(|_| UNREPRESENTABLE),
        other => {
            let v = term_to_json(other, style, depth + 1, max_depth)?;
            serde_json::to_string(&v).map_err(|_| UNREPRESENTABLE)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON → ETF (what `:erlang.term_to_binary/1` produces for the Elixir equivalent)
// ---------------------------------------------------------------------------------------------

/// Appends the encoding of an integer, choosing the same tag Erlang would: small integer,
/// 32-bit integer, or a minimal little-endian bignum.
pub fn encode_int(n: i128, out: &mut Vec<u8>) {
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

/// Appends an atom as current Erlang releases write it (`SMALL_ATOM_UTF8_EXT`). Callers pass
/// fixed names far below the 255-byte limit.
pub fn encode_atom(name: &str, out: &mut Vec<u8>) {
    out.push(SMALL_ATOM_UTF8_EXT);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}

/// Appends an ASCII atom as OTP 25 and older write it (`ATOM_EXT`, as in the frames
/// Phoenix.PubSub.Redis publishes); every release reads both forms.
pub fn encode_ascii_atom(name: &str, out: &mut Vec<u8>) {
    out.push(ATOM_EXT);
    out.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Appends a binary (`<<...>>`).
pub fn encode_binary(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), EtfError> {
    out.push(BINARY_EXT);
    encode_len_u32(bytes.len(), out)?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// Appends the header of a tuple of `arity` elements (which the caller appends next).
pub fn encode_tuple_header(arity: u8, out: &mut Vec<u8>) {
    out.push(SMALL_TUPLE_EXT);
    out.push(arity);
}

/// Appends the header of a map of `pairs` key/value pairs (which the caller appends next, in
/// Erlang's order: sorted keys).
pub fn encode_map_header(pairs: usize, out: &mut Vec<u8>) -> Result<(), EtfError> {
    out.push(MAP_EXT);
    encode_len_u32(pairs, out)
}

fn encode_len_u32(len: usize, out: &mut Vec<u8>) -> Result<(), EtfError> {
    let len = u32::try_from(len).map_err(|_| EtfError("data too large to encode"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends the ETF encoding of a JSON value: numbers → integers/floats, strings → binaries,
/// arrays → lists, objects → maps with binary keys, `true`/`false`/`null` → the atoms
/// `true`/`false`/`nil` (exactly what an Elixir app gets from `Jason.decode!`).
pub fn encode_json(
    value: &Value,
    out: &mut Vec<u8>,
    depth: usize,
    max_depth: usize,
) -> Result<(), EtfError> {
    if depth > max_depth {
        // The reader would refuse such a term, so refuse to write it.
        return Err(EtfError("data nested too deeply"));
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
                return Err(EtfError("number not representable"));
            }
        }
        Value::String(s) => {
            out.push(BINARY_EXT);
            encode_len_u32(s.len(), out)?;
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(items) => encode_list(items, out, depth, max_depth)?,
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
                encode_json(v, out, depth + 1, max_depth)?;
            }
        }
    }
    Ok(())
}

fn encode_list(
    items: &[Value],
    out: &mut Vec<u8>,
    depth: usize,
    max_depth: usize,
) -> Result<(), EtfError> {
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
        encode_json(item, out, depth + 1, max_depth)?;
    }
    out.push(NIL_EXT);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etf::{decode, Limits, TEST_LIMITS, VERSION};
    use serde_json::json;

    const LIMITS: Limits = TEST_LIMITS;

    fn to_json(bytes: &[u8], style: Style) -> Result<Value, EtfError> {
        term_to_json(&decode(bytes, &LIMITS)?, style, 0, LIMITS.max_depth)
    }

    fn roundtrip(v: &Value) -> Value {
        let mut out = vec![VERSION];
        encode_json(v, &mut out, 0, LIMITS.max_depth).expect("encode");
        to_json(&out, Style::Jason).expect("decode")
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
        let ok_depth = "[".repeat(LIMITS.max_depth) + &"]".repeat(LIMITS.max_depth);
        let v: Value = serde_json::from_str(&ok_depth).expect("json");
        assert_eq!(roundtrip(&v), v);
    }

    #[test]
    fn byte_lists_are_string_ext() {
        let mut out = Vec::new();
        encode_json(&json!([1, 2, 3]), &mut out, 0, 8).expect("encode");
        assert_eq!(out, vec![107, 0, 3, 1, 2, 3]);
    }

    /// `#{1 => a, <<"k">> => nil, k2 => {true, 1.0}}`
    fn erlang_map() -> Vec<u8> {
        let mut t = vec![VERSION, MAP_EXT, 0, 0, 0, 3];
        t.extend([SMALL_INTEGER_EXT, 1, SMALL_ATOM_UTF8_EXT, 1, b'a']);
        t.extend([
            BINARY_EXT, 0, 0, 0, 1, b'k', ATOM_EXT, 0, 3, b'n', b'i', b'l',
        ]);
        t.extend([SMALL_ATOM_UTF8_EXT, 2, b'k', b'2', SMALL_TUPLE_EXT, 2]);
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
        t
    }

    #[test]
    fn erlang_shapes_convert_like_jason() {
        assert_eq!(
            to_json(&erlang_map(), Style::Token).expect("json"),
            json!({"1": "a", "k": null, "k2": [true, 1.0]})
        );
        // Jason cannot encode the tuple: neither does a payload.
        assert_eq!(to_json(&erlang_map(), Style::Jason), Err(UNREPRESENTABLE));
    }

    #[test]
    fn structs_are_their_fields_in_payloads() {
        // %{__struct__: Elixir.P, x: 1}
        let mut t = vec![VERSION, MAP_EXT, 0, 0, 0, 2];
        encode_ascii_atom("__struct__", &mut t);
        encode_ascii_atom("Elixir.P", &mut t);
        encode_ascii_atom("x", &mut t);
        encode_int(1, &mut t);
        assert_eq!(to_json(&t, Style::Jason).expect("json"), json!({"x": 1}));
        assert_eq!(
            to_json(&t, Style::Token).expect("json"),
            json!({"__struct__": "Elixir.P", "x": 1})
        );
    }

    #[test]
    fn rejects_duplicate_stringified_keys() {
        let mut t = vec![VERSION, MAP_EXT, 0, 0, 0, 2];
        t.extend([SMALL_INTEGER_EXT, 1, NIL_EXT]);
        t.extend([BINARY_EXT, 0, 0, 0, 1, b'1', NIL_EXT]);
        assert!(to_json(&t, Style::Token).is_err());
    }

    #[test]
    fn compressed_json_terms() {
        let mut inner = Vec::new();
        encode_json(&json!({"user": "x".repeat(500)}), &mut inner, 0, 8).expect("encode");
        let z = noflate::zlib::compress(&inner).expect("compress");
        let mut t = vec![VERSION, crate::etf::COMPRESSED];
        t.extend(u32::try_from(inner.len()).expect("len").to_be_bytes());
        t.extend(&z);
        assert_eq!(
            to_json(&t, Style::Token).expect("json"),
            json!({"user": "x".repeat(500)})
        );
    }
}
