//! V2 binary frames: push (kind 0), reply (kind 1) and broadcast (kind 2).
//!
//! Each header field is prefixed by its length in one byte, so fields are at most 255 bytes;
//! the payload is the rest of the frame.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use super::{DecodeError, EncodeError, Message, Outbound, Payload};

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

/// Decodes a client binary frame. Clients may only send pushes (kind 0).
pub fn decode_binary(data: &[u8]) -> Result<Message, DecodeError> {
    let (&kind, rest) = data
        .split_first()
        .ok_or(DecodeError::Binary("empty frame"))?;
    if kind != KIND_PUSH {
        return Err(DecodeError::Binary(
            "clients may only send push frames (kind 0)",
        ));
    }
    if rest.len() < 4 {
        return Err(DecodeError::Binary("truncated header"));
    }
    let lens = [rest[0], rest[1], rest[2], rest[3]].map(usize::from);
    let mut body = &rest[4..];
    let mut fields = [""; 4];
    for (field, len) in fields.iter_mut().zip(lens) {
        if body.len() < len {
            return Err(DecodeError::Binary("truncated header field"));
        }
        let (head, tail) = body.split_at(len);
        *field = std::str::from_utf8(head)
            .map_err(|_| DecodeError::Binary("header field is not UTF-8"))?;
        body = tail;
    }
    let [join_ref, msg_ref, topic, event] = fields;
    Ok(Message {
        join_ref: Value::String(join_ref.to_owned()),
        msg_ref: Value::String(msg_ref.to_owned()),
        topic: topic.to_owned(),
        event: event.to_owned(),
        payload: Payload::Binary(Bytes::copy_from_slice(body)),
    })
}

/// Encodes a server message with a binary payload as a V2 binary frame: replies as kind 1,
/// messages with no refs (broadcasts) as kind 2, other messages (pushes) as kind 0.
pub fn encode_binary(msg: &Outbound<'_>) -> Result<Bytes, EncodeError> {
    match *msg {
        Outbound::Reply {
            join_ref,
            msg_ref,
            topic,
            status,
            response,
        } => {
            let body = binary_body(response);
            let (jr, r) = (ref_text(join_ref), ref_text(msg_ref));
            let header = [
                ("join_ref", jr.as_ref()),
                ("ref", r.as_ref()),
                ("topic", topic),
                ("status", status),
            ];
            frame(KIND_REPLY, &header, body)
        }
        Outbound::Event {
            join_ref,
            msg_ref,
            topic,
            event,
            payload,
        } => {
            let body = binary_body(payload);
            if join_ref.is_null() && msg_ref.is_null() {
                frame(KIND_BROADCAST, &[("topic", topic), ("event", event)], body)
            } else {
                let jr = ref_text(join_ref);
                frame(
                    KIND_PUSH,
                    &[
                        ("join_ref", jr.as_ref()),
                        ("topic", topic),
                        ("event", event),
                    ],
                    body,
                )
            }
        }
    }
}

fn binary_body(p: &Payload) -> &[u8] {
    match p {
        Payload::Binary(b) => b,
        Payload::Json(_) | Payload::Encoded(_) => &[],
    }
}

/// The text of a ref in a binary header: strings as is, null as empty, numbers as digits.
fn ref_text(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

fn frame(kind: u8, fields: &[(&'static str, &str)], body: &[u8]) -> Result<Bytes, EncodeError> {
    let header_len: usize = fields.iter().map(|(_, f)| f.len()).sum();
    let mut out = BytesMut::with_capacity(1 + fields.len() + header_len + body.len());
    out.put_u8(kind);
    for (name, f) in fields {
        let len = u8::try_from(f.len()).map_err(|_| EncodeError::FieldTooLong(name))?;
        out.put_u8(len);
    }
    for (_, f) in fields {
        out.put_slice(f.as_bytes());
    }
    out.put_slice(body);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, Serializer};
    use super::*;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    fn enc(msg: Outbound<'_>) -> Vec<u8> {
        match Serializer::V2.encode(&msg).expect("encodes") {
            Frame::Binary(b) => b.to_vec(),
            Frame::Text(_) => panic!("expected binary"),
        }
    }

    #[test]
    fn decodes_phoenix_js_push_vectors() {
        let m = decode_binary(&hex("00 02 01 03 02 31 30 31 74 6F 70 65 76 01")).expect("decodes");
        assert_eq!((m.join_ref, m.msg_ref), (json!("10"), json!("1")));
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("top", "ev"));
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(&[1])));
        // Recorded from a real Phoenix server session.
        let m = decode_binary(&hex(
            "00 01 01 0a 04 31 39 72 6f 6f 6d 3a 6c 6f 62 62 79 70 69 6e 67 de ad be ef",
        ))
        .expect("decodes");
        assert_eq!((m.topic.as_str(), m.event.as_str()), ("room:lobby", "ping"));
        assert_eq!(
            m.payload,
            Payload::Binary(Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]))
        );
    }

    #[test]
    fn encodes_reply_push_and_broadcast_vectors() {
        let body = Payload::Binary(Bytes::from_static(&[1, 1]));
        let (j, r) = (json!("100"), json!("12"));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                msg_ref: &r,
                topic: "top",
                status: "ok",
                response: &body
            }),
            hex("01 03 02 03 02 31 30 30 31 32 74 6F 70 6F 6B 01 01")
        );
        let (j, n) = (json!("123"), Value::Null);
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &j,
                msg_ref: &n,
                topic: "top",
                event: "some-event",
                payload: &body
            }),
            hex("00 03 03 0A 31 32 33 74 6F 70 73 6F 6D 65 2D 65 76 65 6E 74 01 01")
        );
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &n,
                msg_ref: &n,
                topic: "top",
                event: "some-event",
                payload: &body
            }),
            hex("02 03 0A 74 6F 70 73 6F 6D 65 2D 65 76 65 6E 74 01 01")
        );
    }

    #[test]
    fn rejects_garbage_and_long_fields() {
        for bad in [
            &[][..],
            &[1, 0, 0, 0, 0],
            &[2, 0, 0],
            &[0, 1, 1],
            &[0, 5, 0, 0, 0, b'a'],
            &[0, 1, 0, 0, 0, 0xff],
        ] {
            assert!(decode_binary(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(256);
        let (n, body) = (Value::Null, Payload::Binary(Bytes::new()));
        let msg = Outbound::Event {
            join_ref: &n,
            msg_ref: &n,
            topic: &long,
            event: "e",
            payload: &body,
        };
        assert_eq!(
            Serializer::V2.encode(&msg),
            Err(EncodeError::FieldTooLong("topic"))
        );
    }

    #[test]
    fn multibyte_lengths_are_bytes() {
        let (n, body) = (Value::Null, Payload::Binary(Bytes::new()));
        let out = enc(Outbound::Event {
            join_ref: &n,
            msg_ref: &n,
            topic: "é",
            event: "e",
            payload: &body,
        });
        assert_eq!(out[1], 2);
    }
}
