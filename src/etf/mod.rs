//! The slice of Erlang's External Term Format the gateway reads and writes: Phoenix.Token
//! payloads (`auth`) and Phoenix.PubSub.Redis frames (`pubsub::phoenix`).
//!
//! Decoding goes through `eetf`, but only after [`validate`] has proven the bytes are a
//! well-formed term of the small subset we accept: `eetf` itself panics on some tags
//! (`unimplemented!` for distribution headers and atom-cache refs), allocates whatever a length
//! field claims, and recurses without limit, none of which is acceptable for bytes that come
//! from a client or from Redis. After validation every length is known to fit the input,
//! nesting and atom count are bounded and only harmless tags remain (no pids, references,
//! ports, funs or bitstrings), so the `eetf` decode cannot misbehave. Atoms become strings:
//! nothing here has `binary_to_term` semantics that could create atoms.
//!
//! Encoding (JSON → ETF) is done by hand in [`json`]: `eetf` encodes map keys in `HashMap`
//! order (output would not be reproducible) and writes lists of negative small integers as a
//! byte string (`[-1]` would come out as `[255]`).

pub mod json;
mod reader;

pub use eetf::Term;
pub use reader::Reader;

/// ETF version byte that starts every `term_to_binary` output.
pub const VERSION: u8 = 131;

// Tags (names as in erts' `erl_ext_dist`).
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

/// Bignums wider than this cannot become a JSON integer (`i64`/`u64`) anyway, so they are
/// rejected during validation, before `eetf`/`num-bigint` allocate for them.
const MAX_BIG_BYTES: usize = 8;

/// What one decode may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest term accepted, compressed or not (for a compressed one: its declared and actual
    /// inflated size, so a zlib bomb stops after one chunk).
    pub max_bytes: usize,
    /// Deepest nesting of containers: keeps `eetf`'s recursive decoder and the converters far
    /// from the stack limit of any thread.
    pub max_depth: usize,
    /// Most atoms in one term (they become strings here, but each costs an allocation).
    pub max_atoms: usize,
}

/// Why bytes were refused. The text names the failed check, never the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EtfError(pub &'static str);

/// Whether the refusal is about a term we do not accept (a pid, a reference, a fun, a
/// bitstring...) rather than broken bytes.
impl EtfError {
    /// The term is well-formed but holds something outside the accepted subset.
    pub fn is_unsupported(&self) -> bool {
        self.0 == UNSUPPORTED
    }
}

const UNSUPPORTED: &str = "unsupported term";
const TRUNCATED: &str = "truncated payload";
const MALFORMED: &str = "malformed payload";

/// Whether a term's bytes (no version byte) start a map.
pub fn is_map(body: &[u8]) -> bool {
    body.first() == Some(&MAP_EXT)
}

/// Parses a complete `term_to_binary` output (version byte, optionally compressed) into a
/// term, refusing anything outside the accepted subset or beyond `limits`.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Term, EtfError> {
    let plain = plain(bytes, limits)?;
    validate(plain.get(1..).unwrap_or_default(), limits)?;
    Term::decode(plain.as_ref()).map_err(|_| EtfError(MALFORMED))
}

/// Decodes one term's bytes (no version byte) that a [`Reader`] already validated.
pub fn decode_validated(body: &[u8]) -> Result<Term, EtfError> {
    let mut bytes = Vec::with_capacity(body.len() + 1);
    bytes.push(VERSION);
    bytes.extend_from_slice(body);
    Term::decode(bytes.as_slice()).map_err(|_| EtfError(MALFORMED))
}

/// The uncompressed form of a `term_to_binary` output, version byte included (borrowed when
/// it was not compressed).
pub fn plain<'a>(bytes: &'a [u8], limits: &Limits) -> Result<std::borrow::Cow<'a, [u8]>, EtfError> {
    let (&version, body) = bytes.split_first().ok_or(EtfError(MALFORMED))?;
    if version != VERSION {
        return Err(EtfError(MALFORMED));
    }
    if body.first() != Some(&COMPRESSED) {
        if bytes.len() > limits.max_bytes {
            return Err(EtfError("term too large"));
        }
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    let rest = body.get(1..).ok_or(EtfError(MALFORMED))?;
    let size_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(EtfError(MALFORMED))?;
    let size = usize::try_from(u32::from_be_bytes(size_bytes)).map_err(|_| EtfError(MALFORMED))?;
    if size > limits.max_bytes {
        return Err(EtfError("compressed payload too large"));
    }
    // The inner bytes are handed on uncompressed, so that eetf never decompresses by itself:
    // its inflater has no size limit and the inner bytes would escape validation. A
    // compressed term inside is refused by the validator (compression may not nest).
    let mut out = Vec::with_capacity(size.saturating_add(1));
    out.push(VERSION);
    inflate(rest.get(4..).ok_or(EtfError(MALFORMED))?, size, &mut out)?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Inflates a zlib stream that must produce exactly `expected` bytes (Erlang checks the
/// declared size too). Input is fed in small chunks so that a bomb is caught after at most one
/// chunk's worth of expansion.
fn inflate(data: &[u8], expected: usize, out: &mut Vec<u8>) -> Result<(), EtfError> {
    let bad = EtfError("malformed compressed payload");
    let start = out.len();
    let mut decoder = noflate::zlib::Decoder::new();
    for chunk in data.chunks(256) {
        decoder.feed(chunk).map_err(|_| bad)?;
        let produced = decoder.output();
        if produced.len() > expected.saturating_sub(out.len() - start) {
            return Err(bad);
        }
        out.extend_from_slice(produced);
        let consumed = produced.len();
        decoder.advance(consumed);
    }
    if !decoder.is_finished() || out.len() - start != expected {
        return Err(bad);
    }
    Ok(())
}

/// Checks that `body` (a term without the version byte) is exactly one well-formed term of the
/// accepted subset within `limits`, with no trailing bytes (as `binary_to_term` requires).
pub fn validate(body: &[u8], limits: &Limits) -> Result<(), EtfError> {
    let mut walk = Walk {
        buf: body,
        atoms_left: limits.max_atoms,
        max_depth: limits.max_depth,
    };
    walk.term(0)?;
    if !walk.buf.is_empty() {
        return Err(EtfError("trailing bytes after payload"));
    }
    Ok(())
}

/// A bounds-checked walk over term bytes; every read returns an error instead of reading past
/// the end.
struct Walk<'a> {
    buf: &'a [u8],
    atoms_left: usize,
    max_depth: usize,
}

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EtfError> {
        if n > self.buf.len() {
            return Err(EtfError(TRUNCATED));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, EtfError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<usize, EtfError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn u32(&mut self) -> Result<usize, EtfError> {
        let b = self.take(4)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| EtfError(TRUNCATED))
    }

    /// Walks one term. Element counts are checked against the bytes left (every element takes
    /// at least one byte), which rejects absurd length fields at once and bounds what `eetf`
    /// pre-allocates later.
    fn term(&mut self, depth: usize) -> Result<(), EtfError> {
        if depth > self.max_depth {
            return Err(EtfError("payload nested too deeply"));
        }
        let tag = self.u8()?;
        match tag {
            NEW_FLOAT_EXT => {
                let b = self.take(8)?;
                let bits = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if !f64::from_bits(bits).is_finite() {
                    return Err(EtfError("non-finite float in payload"));
                }
            }
            SMALL_INTEGER_EXT => {
                self.take(1)?;
            }
            INTEGER_EXT => {
                self.take(4)?;
            }
            SMALL_BIG_EXT | LARGE_BIG_EXT => {
                let n = if tag == SMALL_BIG_EXT {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                if self.u8()? > 1 {
                    return Err(EtfError("bad integer sign"));
                }
                if n > MAX_BIG_BYTES {
                    return Err(EtfError("integer too large"));
                }
                self.take(n)?;
            }
            BINARY_EXT => {
                let n = self.u32()?;
                self.take(n)?;
            }
            ATOM_EXT | ATOM_UTF8_EXT | SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                let n = if tag == ATOM_EXT || tag == ATOM_UTF8_EXT {
                    self.u16()?
                } else {
                    usize::from(self.u8()?)
                };
                let name = self.take(n)?;
                let utf8 = tag == ATOM_UTF8_EXT || tag == SMALL_ATOM_UTF8_EXT;
                if utf8 && std::str::from_utf8(name).is_err() {
                    return Err(EtfError("bad atom"));
                }
                self.atoms_left = self
                    .atoms_left
                    .checked_sub(1)
                    .ok_or(EtfError("too many atoms"))?;
            }
            SMALL_TUPLE_EXT | LARGE_TUPLE_EXT => {
                let n = if tag == SMALL_TUPLE_EXT {
                    usize::from(self.u8()?)
                } else {
                    self.u32()?
                };
                self.elements(n, depth)?;
            }
            MAP_EXT => {
                let pairs = self.u32()?;
                self.elements(pairs.checked_mul(2).ok_or(EtfError(TRUNCATED))?, depth)?;
            }
            NIL_EXT => {}
            STRING_EXT => {
                let n = self.u16()?;
                self.take(n)?;
            }
            LIST_EXT => {
                let n = self.u32()?;
                self.elements(n, depth)?;
                // Improper lists have no JSON form (Jason cannot encode them either), so only
                // the proper tail is accepted; this also keeps eetf's list decoding simple.
                if self.u8()? != NIL_EXT {
                    return Err(EtfError("improper list in payload"));
                }
            }
            _ => return Err(EtfError(UNSUPPORTED)),
        }
        Ok(())
    }

    fn elements(&mut self, n: usize, depth: usize) -> Result<(), EtfError> {
        if n > self.buf.len() {
            return Err(EtfError(TRUNCATED));
        }
        for _ in 0..n {
            self.term(depth + 1)?;
        }
        Ok(())
    }
}

/// The limits the unit tests decode with.
#[cfg(test)]
pub(crate) const TEST_LIMITS: Limits = Limits {
    max_bytes: 256 * 1024,
    max_depth: 64,
    max_atoms: 1024,
};

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = TEST_LIMITS;

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
            assert!(decode(&c, &LIMITS).is_err(), "{c:?}");
        }
        assert!(decode(&[VERSION, 88, 0], &LIMITS)
            .expect_err("pid")
            .is_unsupported());
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
            assert!(decode(&t, &LIMITS).is_err());
        }
    }

    #[test]
    fn counts_atoms_and_size() {
        let few = Limits {
            max_atoms: 2,
            ..LIMITS
        };
        let mut t = vec![VERSION, SMALL_TUPLE_EXT, 3];
        for _ in 0..3 {
            t.extend([SMALL_ATOM_UTF8_EXT, 1, b'a']);
        }
        assert!(decode(&t, &LIMITS).is_ok());
        assert_eq!(decode(&t, &few), Err(EtfError("too many atoms")));
        let small = Limits {
            max_bytes: 4,
            ..LIMITS
        };
        assert_eq!(decode(&t, &small), Err(EtfError("term too large")));
    }

    #[test]
    fn compressed_terms_are_bounded() {
        let mut inner = vec![BINARY_EXT, 0, 0, 2, 0];
        inner.resize(5 + 512, b'x');
        let z = noflate::zlib::compress(&inner).expect("compress");
        let frame = |declared: usize| {
            let mut t = vec![VERSION, COMPRESSED];
            t.extend(u32::try_from(declared).expect("len").to_be_bytes());
            t.extend(&z);
            t
        };
        assert!(
            matches!(decode(&frame(inner.len()), &LIMITS), Ok(Term::Binary(b)) if b.bytes.len() == 512)
        );
        // Declared size smaller than the real output: refused (bomb guard).
        assert!(decode(&frame(10), &LIMITS).is_err());
        // A real bomb: 16 MiB of zeros in a binary, declared honestly.
        let mut big = vec![BINARY_EXT, 0, 0x10, 0, 0];
        big.resize(5 + (16 << 20), 0);
        let zb = noflate::zlib::compress(&big).expect("compress");
        let mut bomb = vec![VERSION, COMPRESSED];
        bomb.extend(u32::try_from(big.len()).expect("len").to_be_bytes());
        bomb.extend(&zb);
        assert!(decode(&bomb, &LIMITS).is_err());
        // Compression may not nest.
        let outer = frame(inner.len());
        let mut nested = vec![VERSION, COMPRESSED];
        nested.extend(u32::try_from(outer.len() - 1).expect("len").to_be_bytes());
        nested.extend(noflate::zlib::compress(&outer[1..]).expect("compress"));
        assert!(decode(&nested, &LIMITS).is_err());
    }
}
