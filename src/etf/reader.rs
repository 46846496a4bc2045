//! Reading a term piece by piece: the outer shape of a frame (a tuple of small values) without
//! decoding what the caller does not need, and each inner term validated on its own.

use std::borrow::Cow;

use super::{
    EtfError, Limits, Walk, ATOM_EXT, ATOM_UTF8_EXT, BINARY_EXT, INTEGER_EXT, LARGE_TUPLE_EXT,
    SMALL_ATOM_EXT, SMALL_ATOM_UTF8_EXT, SMALL_INTEGER_EXT, SMALL_TUPLE_EXT,
};

/// Reads the elements of a term in order, within one set of [`Limits`] for the whole term.
pub struct Reader<'a> {
    walk: Walk<'a>,
}

const EXPECTED: &str = "unexpected term shape";

impl<'a> Reader<'a> {
    /// A reader of `body`, a term without its version byte (see [`super::plain`]).
    pub fn new(body: &'a [u8], limits: &Limits) -> Self {
        Self {
            walk: Walk {
                buf: body,
                atoms_left: limits.max_atoms,
                max_depth: limits.max_depth,
            },
        }
    }

    /// The arity of the tuple that starts here; its elements follow.
    pub fn tuple(&mut self) -> Result<usize, EtfError> {
        match self.walk.u8()? {
            SMALL_TUPLE_EXT => Ok(usize::from(self.walk.u8()?)),
            LARGE_TUPLE_EXT => self.walk.u32(),
            _ => Err(EtfError(EXPECTED)),
        }
    }

    /// A small integer (what fits `INTEGER_EXT`).
    pub fn int(&mut self) -> Result<i64, EtfError> {
        match self.walk.u8()? {
            SMALL_INTEGER_EXT => Ok(i64::from(self.walk.u8()?)),
            INTEGER_EXT => {
                let b = self.walk.take(4)?;
                Ok(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            _ => Err(EtfError(EXPECTED)),
        }
    }

    /// An atom's name or a UTF-8 binary's text (Phoenix node names are either).
    pub fn text(&mut self) -> Result<Cow<'a, str>, EtfError> {
        let tag = self.walk.u8()?;
        let bytes = match tag {
            BINARY_EXT => {
                let n = self.walk.u32()?;
                self.walk.take(n)?
            }
            ATOM_EXT | ATOM_UTF8_EXT => {
                let n = self.walk.u16()?;
                self.walk.take(n)?
            }
            SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                let n = usize::from(self.walk.u8()?);
                self.walk.take(n)?
            }
            _ => return Err(EtfError(EXPECTED)),
        };
        if matches!(tag, ATOM_EXT | SMALL_ATOM_EXT) && !bytes.is_ascii() {
            // A Latin-1 atom: every byte is the code point of the same value.
            return Ok(Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()));
        }
        std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| EtfError("text is not UTF-8"))
    }

    /// The bytes of the next whole term, validated (decode them with
    /// [`super::decode_validated`]).
    pub fn term(&mut self) -> Result<&'a [u8], EtfError> {
        let before = self.walk.buf;
        self.walk.term(1)?;
        let used = before.len() - self.walk.buf.len();
        Ok(&before[..used])
    }

    /// Checks that nothing follows the term (as `binary_to_term` requires).
    pub fn end(&self) -> Result<(), EtfError> {
        if self.walk.buf.is_empty() {
            Ok(())
        } else {
            Err(EtfError("trailing bytes after payload"))
        }
    }
}
