//! The Phoenix Channels wire protocol: message model and serializers.
//!
//! Pure code, no I/O: decoding what clients send and encoding what the gateway sends, for
//! the V1 JSON object format (`vsn=1.0.0`), the V2 JSON array format (`vsn=2.0.0`) and V2
//! binary frames. Everything here is safe to feed arbitrary bytes (see the fuzz/proptests).

mod binary;
mod v1;
mod v2;

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::Value;

pub use binary::{decode_binary, encode_binary};

/// Reserved event names of the protocol.
pub mod events {
    /// Client asks to join a topic.
    pub const JOIN: &str = "phx_join";
    /// Client leaves a topic.
    pub const LEAVE: &str = "phx_leave";
    /// Server reply to a client message (carries the client's `ref`).
    pub const REPLY: &str = "phx_reply";
    /// Server tells the client that a channel crashed.
    pub const ERROR: &str = "phx_error";
    /// Server tells the client that a channel ended.
    pub const CLOSE: &str = "phx_close";
    /// Socket-level keep-alive on topic [`super::HEARTBEAT_TOPIC`].
    pub const HEARTBEAT: &str = "heartbeat";
    /// Full presence snapshot pushed after a join.
    pub const PRESENCE_STATE: &str = "presence_state";
    /// Incremental presence change broadcast.
    pub const PRESENCE_DIFF: &str = "presence_diff";
    /// A counting room's size (`presence = "counts"`): `{"users": U, "connections": C}`.
    pub const PRESENCE_COUNT: &str = "presence_count";
    /// Broadcast on a socket id topic (e.g. `users_socket:42`): closes that user's sockets.
    pub const DISCONNECT: &str = "disconnect";
}

/// The reserved topic of socket-level messages (heartbeats).
pub const HEARTBEAT_TOPIC: &str = "phoenix";

/// Topics under this prefix are the gateway's own (e.g. the long-poll relay's): clients can
/// neither join nor publish them.
pub const INTERNAL_PREFIX: &str = "phx_internal:";

/// A message payload: JSON, or raw bytes (V2 binary frames only).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON value (an object for everything the server pushes).
    Json(Value),
    /// Raw bytes of a binary frame.
    Binary(Bytes),
    /// JSON text encoded once and shared, e.g. a `presence_state` sent to many joiners: the
    /// serializers copy it into frames without parsing or re-encoding it. Must be valid JSON.
    Encoded(Arc<str>),
}

impl Payload {
    /// An empty JSON object, `{}`.
    pub fn empty() -> Self {
        Payload::Json(Value::Object(Default::default()))
    }

    /// The JSON value, if this payload is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match self {
            Payload::Json(v) => Some(v),
            Payload::Binary(_) | Payload::Encoded(_) => None,
        }
    }
}

impl From<Value> for Payload {
    fn from(v: Value) -> Self {
        Payload::Json(v)
    }
}

/// A reference (`ref` or `join_ref`). Phoenix echoes refs verbatim, including their JSON type,
/// so they are kept as JSON scalars: a string, a number, or null.
pub type Ref = Value;

/// A message decoded from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The `ref` of the `phx_join` that created the channel incarnation this message is for.
    pub join_ref: Ref,
    /// The client's id for this message, echoed in the reply.
    pub msg_ref: Ref,
    /// The topic, e.g. `room:lobby`.
    pub topic: String,
    /// The event, e.g. `phx_join` or an application event.
    pub event: String,
    /// The payload.
    pub payload: Payload,
}

/// A message the server sends. Borrowed so one encoding path serves replies, pushes and
/// broadcasts without copying payloads.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'a> {
    /// `phx_reply` to a client message: payload `{"response": .., "status": ..}`.
    Reply {
        /// Channel incarnation (null for socket-level replies such as heartbeats).
        join_ref: &'a Ref,
        /// The ref of the message replied to.
        msg_ref: &'a Ref,
        /// Topic of the message replied to.
        topic: &'a str,
        /// Reply status, conventionally `ok` or `error`.
        status: &'a str,
        /// Reply body.
        response: &'a Payload,
    },
    /// Any other message: a channel push (`ref` null), a broadcast (both refs null), or a
    /// `phx_close`/`phx_error` (`ref` = `join_ref`).
    Event {
        /// Channel incarnation, or null for broadcasts.
        join_ref: &'a Ref,
        /// Null except for `phx_close`/`phx_error`, where Phoenix repeats the join_ref.
        msg_ref: &'a Ref,
        /// Topic.
        topic: &'a str,
        /// Event name.
        event: &'a str,
        /// Payload.
        payload: &'a Payload,
    },
}

impl Outbound<'_> {
    /// The join_ref, ref, topic and event (`phx_reply` for a reply).
    fn head(&self) -> (&Ref, &Ref, &str, &str) {
        match *self {
            Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                ..
            } => (join_ref, msg_ref, topic, events::REPLY),
            Outbound::Event {
                join_ref,
                msg_ref,
                topic,
                event,
                ..
            } => (join_ref, msg_ref, topic, event),
        }
    }

    /// Writes the JSON payload (`{"response":..,"status":..}` for a reply).
    fn write_payload(&self, out: &mut Vec<u8>) {
        match *self {
            Outbound::Reply {
                status, response, ..
            } => write_reply_payload(out, status, response),
            Outbound::Event { payload, .. } => write_json_payload(out, payload),
        }
    }
}

/// An encoded frame, ready for the transport. Cloning is cheap (reference counted), so a
/// broadcast encoded once can be handed to every subscriber.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text frame (JSON).
    Text(ByteString),
    /// A binary frame (V2 binary).
    Binary(Bytes),
}

impl Frame {
    /// Size of the frame body in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a client frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// The text is not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// The JSON has the wrong shape for the negotiated serializer.
    #[error("malformed message: {0}")]
    Shape(&'static str),
    /// A binary frame is truncated or of an unknown kind.
    #[error("malformed binary frame: {0}")]
    Binary(&'static str),
    /// A vsn 1.0.0 binary frame whose bytes are not UTF-8 text.
    #[error("a vsn 1.0.0 binary frame must hold JSON text")]
    NotText,
}

/// Why a server message could not be encoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EncodeError {
    /// V1 has no binary frames.
    #[error("binary payloads cannot be sent with vsn 1.0.0")]
    BinaryUnsupported,
    /// A binary frame header field is longer than 255 bytes.
    #[error("binary frame field `{0}` is longer than 255 bytes")]
    FieldTooLong(&'static str),
}

/// The serializer negotiated for a socket from its `vsn` connect parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `vsn=1.0.0` (or no vsn): JSON objects, text only.
    V1,
    /// `vsn=2.0.0`: JSON arrays plus binary frames.
    V2,
}

impl Serializer {
    /// Number of serializers; used to size per-serializer caches.
    pub const COUNT: usize = 2;

    /// Negotiates the serializer from the `vsn` parameter the way Phoenix does: missing means
    /// `1.0.0`; `~> 1.0.0` picks V1 and `~> 2.0.0` picks V2; anything else is refused.
    pub fn negotiate(vsn: Option<&str>) -> Option<Serializer> {
        let vsn = vsn.unwrap_or("1.0.0");
        let mut parts = vsn.split('.');
        let (major, minor, patch) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let num = |s: &str| -> Option<u64> {
            // Full semver numbers: digits only, no leading zeros (except "0").
            if s.is_empty()
                || !s.bytes().all(|b| b.is_ascii_digit())
                || (s.len() > 1 && s.starts_with('0'))
            {
                return None;
            }
            s.parse().ok()
        };
        let (major, minor) = (num(major)?, num(minor)?);
        num(patch)?;
        match (major, minor) {
            (1, 0) => Some(Serializer::V1),
            (2, 0) => Some(Serializer::V2),
            _ => None,
        }
    }

    /// Index of this serializer in per-serializer caches.
    pub fn index(self) -> usize {
        match self {
            Serializer::V1 => 0,
            Serializer::V2 => 1,
        }
    }

    /// Decodes a text frame.
    pub fn decode_text(self, text: &str) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => v1::decode(text),
            Serializer::V2 => v2::decode(text),
        }
    }

    /// Decodes a binary frame. V1 has no binary format: like Phoenix's V1 serializer, it
    /// reads the bytes as JSON text (some clients send every frame as binary).
    pub fn decode_binary(self, data: &[u8]) -> Result<Message, DecodeError> {
        match self {
            Serializer::V1 => {
                v1::decode(std::str::from_utf8(data).map_err(|_| DecodeError::NotText)?)
            }
            Serializer::V2 => binary::decode_binary(data),
        }
    }

    /// Encodes a server message.
    pub fn encode(self, msg: &Outbound<'_>) -> Result<Frame, EncodeError> {
        let binary = match msg {
            Outbound::Reply { response, .. } => matches!(response, Payload::Binary(_)),
            Outbound::Event { payload, .. } => matches!(payload, Payload::Binary(_)),
        };
        match (self, binary) {
            (Serializer::V1, true) => Err(EncodeError::BinaryUnsupported),
            (Serializer::V1, false) => Ok(Frame::Text(v1::encode(msg).into())),
            (Serializer::V2, false) => Ok(Frame::Text(v2::encode(msg).into())),
            (Serializer::V2, true) => binary::encode_binary(msg).map(Frame::Binary),
        }
    }
}

/// Checks that a decoded ref is a JSON scalar Phoenix clients could send.
fn check_ref(v: &Value) -> Result<(), DecodeError> {
    match v {
        Value::Null | Value::String(_) | Value::Number(_) => Ok(()),
        _ => Err(DecodeError::Shape(
            "ref and join_ref must be strings, numbers or null",
        )),
    }
}

/// Writes the JSON of a payload; binary payloads never reach the JSON encoders.
fn write_json_payload(out: &mut Vec<u8>, p: &Payload) {
    match p {
        Payload::Json(v) => write_json(out, v),
        Payload::Encoded(json) => out.extend_from_slice(json.as_bytes()),
        Payload::Binary(_) => out.extend_from_slice(b"null"),
    }
}

/// Appends the JSON text of a value. serde_json without `preserve_order` sorts object keys,
/// which is exactly what Phoenix's encoder does for Elixir maps.
fn write_json(out: &mut Vec<u8>, v: &Value) {
    // Writing into a Vec<u8> cannot fail, and Values always serialize.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Appends a JSON string literal.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `{"response":<response>,"status":"<status>"}` (keys sorted as Phoenix does).
fn write_reply_payload(out: &mut Vec<u8>, status: &str, response: &Payload) {
    out.extend_from_slice(b"{\"response\":");
    write_json_payload(out, response);
    out.extend_from_slice(b",\"status\":");
    write_str(out, status);
    out.push(b'}');
}

/// Converts encoder output to a string. The encoders only write JSON, which is UTF-8.
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_phoenix() {
        assert_eq!(Serializer::negotiate(None), Some(Serializer::V1));
        for v in ["1.0.0", "1.0.3"] {
            assert_eq!(Serializer::negotiate(Some(v)), Some(Serializer::V1), "{v}");
        }
        for v in ["2.0.0", "2.0.9"] {
            assert_eq!(Serializer::negotiate(Some(v)), Some(Serializer::V2), "{v}");
        }
        for v in [
            "2.1.0",
            "2.0",
            "v2.0.0",
            "2.0.0-rc.1",
            "3.0.0",
            "123.1.1",
            "",
            "2.0.0.0",
            "02.0.0",
        ] {
            assert_eq!(Serializer::negotiate(Some(v)), None, "{v}");
        }
    }
}
