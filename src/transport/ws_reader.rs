//! Incoming WebSocket frames: actix-http's codec turns bytes into frames, and this joins
//! fragmented messages, checks text is UTF-8 and enforces the size limit.
//!
//! It holds no buffer of its own: the connection reads into a buffer that exists only while
//! bytes are in flight, and a fragmented message is kept only until its last fragment.

use actix_http::ws::{CloseReason as WsClose, Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio_util::codec::Decoder;

use crate::outbox::CloseReason;

/// What the client sent, once whole.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    /// A text message.
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same bytes.
    Ping(Bytes),
    /// The client's close frame, with its code if it gave one.
    Close(Option<WsClose>),
}

/// A message being received in fragments.
struct Partial {
    text: bool,
    data: BytesMut,
}

/// Decodes client frames into whole messages.
pub(crate) struct Reader {
    codec: Codec,
    max_bytes: usize,
    partial: Option<Box<Partial>>,
}

impl Reader {
    /// A reader refusing frames and messages over `max_bytes`.
    pub(crate) fn new(max_bytes: usize) -> Self {
        Reader {
            codec: Codec::new().max_size(max_bytes),
            max_bytes,
            partial: None,
        }
    }

    /// The next whole message in `buf` (consumed from it), `None` when `buf` holds no
    /// complete one yet, or the reason to close the connection.
    pub(crate) fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CloseReason> {
        loop {
            let frame = match self.codec.decode(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(ProtocolError::Overflow) => {
                    tracing::info!(max = self.max_bytes, "frame too large");
                    ::metrics::counter!(crate::metrics::LIMITED, "limit" => "frame_bytes")
                        .increment(1);
                    return Err(CloseReason::FrameTooLarge);
                }
                Err(e) => return Err(malformed(&e)),
            };
            let whole = match frame {
                Frame::Text(data) => self.whole(true, data)?,
                Frame::Binary(data) => self.whole(false, data)?,
                Frame::Continuation(item) => self.fragment(item)?,
                Frame::Ping(data) => Some(Incoming::Ping(data)),
                Frame::Pong(_) => None,
                Frame::Close(reason) => Some(Incoming::Close(reason)),
            };
            if let Some(msg) = whole {
                return Ok(Some(msg));
            }
        }
    }

    fn whole(&mut self, text: bool, data: Bytes) -> Result<Option<Incoming>, CloseReason> {
        if self.partial.is_some() {
            return Err(malformed(&"a new message inside a fragmented one"));
        }
        finish(text, data).map(Some)
    }

    fn fragment(&mut self, item: Item) -> Result<Option<Incoming>, CloseReason> {
        let (first, data, last) = match item {
            Item::FirstText(data) => (Some(true), data, false),
            Item::FirstBinary(data) => (Some(false), data, false),
            Item::Continue(data) => (None, data, false),
            Item::Last(data) => (None, data, true),
        };
        let partial = match (first, self.partial.as_mut()) {
            (Some(text), None) => self.partial.insert(Box::new(Partial {
                text,
                data: BytesMut::new(),
            })),
            (None, Some(partial)) => partial,
            (Some(_), Some(_)) => return Err(malformed(&"a new message inside a fragmented one")),
            (None, None) => return Err(malformed(&"a continuation without a first fragment")),
        };
        if partial.data.len() + data.len() > self.max_bytes {
            tracing::info!(max = self.max_bytes, "fragmented message too large");
            ::metrics::counter!(crate::metrics::LIMITED, "limit" => "message_bytes").increment(1);
            return Err(CloseReason::MessageTooLarge);
        }
        partial.data.extend_from_slice(&data);
        if !last {
            return Ok(None);
        }
        let Partial { text, data } = *self.partial.take().expect("set above");
        finish(text, data.freeze()).map(Some)
    }
}

fn finish(text: bool, data: Bytes) -> Result<Incoming, CloseReason> {
    if !text {
        return Ok(Incoming::Binary(data));
    }
    match ByteString::try_from(data) {
        Ok(text) => Ok(Incoming::Text(text)),
        Err(e) => Err(malformed(&e)),
    }
}

fn malformed(why: &dyn std::fmt::Display) -> CloseReason {
    tracing::info!(error = %why, "malformed frame");
    ::metrics::counter!(crate::metrics::MESSAGES_IN, "kind" => "malformed").increment(1);
    CloseReason::MalformedFrame
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::OpCode;

    /// A client frame: masked, as browsers send them.
    fn frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [7u8, 1, 2, 3];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn all(reader: &mut Reader, bytes: &[u8]) -> Result<Vec<Incoming>, CloseReason> {
        let mut buf = BytesMut::from(bytes);
        let mut out = vec![];
        while let Some(msg) = reader.next(&mut buf)? {
            out.push(msg);
        }
        Ok(out)
    }

    #[test]
    fn joins_fragments_and_lets_control_frames_through_between_them() {
        let mut bytes = frame(1, false, b"[nu");
        bytes.extend(frame(9, true, b"p"));
        bytes.extend(frame(0, false, b"ll,"));
        bytes.extend(frame(0, true, b"1]"));
        bytes.extend(frame(2, true, &[1, 2]));
        let got = all(&mut Reader::new(1024), &bytes).expect("valid");
        assert_eq!(
            got,
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(ByteString::from_static("[null,1]")),
                Incoming::Binary(Bytes::from_static(&[1, 2])),
            ]
        );
    }

    #[test]
    fn waits_for_the_rest_of_a_frame() {
        let bytes = frame(1, true, b"hello");
        let mut reader = Reader::new(1024);
        let mut buf = BytesMut::from(&bytes[..4]);
        assert_eq!(reader.next(&mut buf), Ok(None));
        buf.extend_from_slice(&bytes[4..]);
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Incoming::Text(ByteString::from_static("hello"))))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn limits_frames_and_fragmented_messages() {
        assert_eq!(
            all(&mut Reader::new(4), &frame(1, true, b"12345")),
            Err(CloseReason::FrameTooLarge)
        );
        let mut bytes = frame(2, false, b"123");
        bytes.extend(frame(0, true, b"45"));
        assert_eq!(
            all(&mut Reader::new(4), &bytes),
            Err(CloseReason::MessageTooLarge)
        );
    }

    #[test]
    fn refuses_bad_utf8_unmasked_frames_and_stray_continuations() {
        let mut reader = Reader::new(64);
        assert_eq!(
            all(&mut reader, &frame(1, true, &[0xff, 0xfe])),
            Err(CloseReason::MalformedFrame)
        );
        let mut unmasked = BytesMut::new();
        actix_http::ws::Parser::write_message(&mut unmasked, "x", OpCode::Text, true, false);
        assert_eq!(
            all(&mut Reader::new(64), &unmasked),
            Err(CloseReason::MalformedFrame)
        );
        assert_eq!(
            all(&mut Reader::new(64), &frame(0, true, b"x")),
            Err(CloseReason::MalformedFrame)
        );
        let mut interleaved = frame(1, false, b"a");
        interleaved.extend(frame(1, true, b"b"));
        assert_eq!(
            all(&mut Reader::new(64), &interleaved),
            Err(CloseReason::MalformedFrame)
        );
    }

    #[test]
    fn close_frames_carry_their_code() {
        let got = all(
            &mut Reader::new(64),
            &frame(8, true, &1000u16.to_be_bytes()),
        );
        assert_eq!(
            got,
            Ok(vec![Incoming::Close(Some(WsClose {
                code: actix_http::ws::CloseCode::Normal,
                description: None
            }))])
        );
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        fn frames() -> impl Strategy<Value = Vec<u8>> {
            // Valid-looking masked frames of any opcode and fin bit, with random payloads,
            // sometimes followed by garbage.
            let frame = (
                0u8..16,
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..40),
            )
                .prop_map(|(op, fin, payload)| super::frame(op, fin, &payload));
            (
                prop::collection::vec(frame, 0..6),
                prop::collection::vec(any::<u8>(), 0..12),
            )
                .prop_map(|(frames, tail)| frames.concat().into_iter().chain(tail).collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn any_bytes_in_any_pieces_decode_or_close_never_panic(
                bytes in frames(),
                cut in 0usize..64,
            ) {
                let mut reader = Reader::new(48);
                let mut buf = BytesMut::new();
                let cut = cut.min(bytes.len());
                'feed: for piece in [&bytes[..cut], &bytes[cut..]] {
                    buf.extend_from_slice(piece);
                    loop {
                        match reader.next(&mut buf) {
                            Ok(Some(Incoming::Text(t))) => prop_assert!(t.len() <= 48),
                            Ok(Some(Incoming::Binary(b))) => prop_assert!(b.len() <= 48),
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => break 'feed,
                        }
                    }
                }
            }
        }
    }
}
