//! The frames Phoenix.PubSub.Redis (phoenix_pubsub_redis 3.x) publishes, read and written.
//!
//! A frame is `:erlang.term_to_binary({3, mode, node, topic, message, dispatcher})`, optionally
//! compressed, on the Redis channel `phx:<adapter>` (one channel for everything):
//! - `mode` `:except`: every node but `node` (the publisher) delivers; `:only`: only `node`;
//! - `message` is what the subscribers get; for a channel broadcast a
//!   `%Phoenix.Socket.Broadcast{topic, event, payload}` map, with the dispatcher
//!   `Phoenix.Channel.Server` (which fastlanes it to sockets and runs `handle_out`).
//!
//! Everything else on the channel (Phoenix.Tracker's replication, LiveView messages, payloads
//! without a JSON form) is refused with the reason, to be counted by the caller.

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::Value;

use super::Broadcast;
use crate::etf::{self, json, EtfError, Limits, Reader, Term};
use crate::protocol::Payload;

/// The frame version phoenix_pubsub_redis 3.x writes and reads (other versions are ignored
/// by both sides).
pub const VERSION: i64 = 3;
/// The struct of a channel broadcast.
const BROADCAST_STRUCT: &str = "Elixir.Phoenix.Socket.Broadcast";
/// The dispatcher of channel broadcasts (`Endpoint.broadcast`, `broadcast!` in a channel).
pub const CHANNEL_DISPATCHER: &str = "Elixir.Phoenix.Channel.Server";
/// The default dispatcher (`Phoenix.PubSub.broadcast/3`); a `%Broadcast{}` sent with it still
/// reaches the channel processes, which push it.
const PUBSUB_DISPATCHER: &str = "Elixir.Phoenix.PubSub";

/// What one frame may cost to read: the largest broadcast the gateway relays anyway is far
/// below 16 MiB, and real payloads hold far fewer atoms and levels.
pub const LIMITS: Limits = Limits {
    max_bytes: 16 << 20,
    max_depth: 128,
    max_atoms: 100_000,
};

/// The Redis channel of a Phoenix PubSub named `pubsub` (e.g. `MyApp.PubSub`): Phoenix
/// names it after the adapter, `Module.concat(pubsub, "Adapter")`, printed with its
/// `Elixir.` prefix.
pub fn channel(pubsub: &str) -> String {
    let name = pubsub.strip_prefix("Elixir.").unwrap_or(pubsub);
    format!("phx:Elixir.{name}.Adapter")
}

/// Who a frame is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every node except the named one (a broadcast; the name is its publisher's).
    Except,
    /// Only the named node (`Phoenix.PubSub.direct_broadcast`).
    Only,
}

/// Why a frame carries nothing for the gateway's sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a frame: broken bytes or another shape.
    #[error("malformed frame: {0}")]
    Malformed(EtfError),
    /// A frame version this gateway does not read.
    #[error("frame version {0} is not 3")]
    Version(i64),
    /// A message other than a `%Phoenix.Socket.Broadcast{}` for channels (Phoenix.Tracker's
    /// replication, LiveView or application messages).
    #[error("not a channel broadcast")]
    NotBroadcast,
    /// A broadcast whose payload has no JSON form (pids, references, funs, tuples, non-UTF-8
    /// strings, integers wider than 64 bits).
    #[error("payload not representable: {0}")]
    Unsupported(EtfError),
}

impl Refused {
    /// A short name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Malformed(_) => "malformed",
            Refused::Version(_) => "version",
            Refused::NotBroadcast => "not_broadcast",
            Refused::Unsupported(_) => "unsupported",
        }
    }
}

/// A frame whose header has been read; the message is decoded on demand.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Who it is for.
    pub mode: Mode,
    /// The publisher (`Except`) or the addressee (`Only`).
    pub node: Cow<'a, str>,
    /// The topic it is published on.
    pub topic: Cow<'a, str>,
    /// The message and dispatcher, or why they could not be read (a message holding a pid
    /// is refused before its dispatcher is reached).
    rest: Result<(&'a [u8], Cow<'a, str>), EtfError>,
}

/// Reads a frame's header. `plain` is the frame uncompressed, version byte included
/// ([`etf::plain`]).
pub fn read(plain: &[u8]) -> Result<Frame<'_>, Refused> {
    let body = plain.get(1..).unwrap_or_default();
    let mut r = Reader::new(body, &LIMITS);
    if r.tuple().map_err(Refused::Malformed)? != 6 {
        return Err(Refused::Malformed(EtfError("not a 6-tuple")));
    }
    let version = r.int().map_err(Refused::Malformed)?;
    if version != VERSION {
        return Err(Refused::Version(version));
    }
    let mode = match r.text().map_err(Refused::Malformed)?.as_ref() {
        "except" => Mode::Except,
        "only" => Mode::Only,
        _ => return Err(Refused::Malformed(EtfError("unknown mode"))),
    };
    let node = r.text().map_err(Refused::Malformed)?;
    let topic = r.text().map_err(Refused::Malformed)?;
    let rest = (|| {
        let message = r.term()?;
        let dispatcher = r.text()?;
        r.end()?;
        Ok((message, dispatcher))
    })();
    Ok(Frame {
        mode,
        node,
        topic,
        rest,
    })
}

impl Frame<'_> {
    /// Whether the frame may hold a channel broadcast, without decoding it: the message is
    /// a map (a struct) for a channel dispatcher. Tracker replication (a tuple, or a term
    /// holding pids) is refused here.
    pub fn may_be_broadcast(&self) -> Result<(), Refused> {
        self.message().map(|_| ())
    }

    fn message(&self) -> Result<&[u8], Refused> {
        let (message, dispatcher) = match &self.rest {
            Ok(rest) => rest,
            // A pid or a reference is a term we do not read, not broken bytes.
            Err(e) if e.is_unsupported() => return Err(Refused::NotBroadcast),
            Err(e) => return Err(Refused::Malformed(*e)),
        };
        if dispatcher != CHANNEL_DISPATCHER && dispatcher != PUBSUB_DISPATCHER {
            return Err(Refused::NotBroadcast);
        }
        if !etf::is_map(message) {
            return Err(Refused::NotBroadcast);
        }
        Ok(message)
    }

    /// The channel broadcast this frame carries.
    pub fn broadcast(&self) -> Result<Broadcast, Refused> {
        let message = self.message()?;
        let Term::Map(map) = etf::decode_validated(message).map_err(Refused::Malformed)? else {
            return Err(Refused::NotBroadcast);
        };
        let mut map = map.map;
        let mut take = |key: &str| map.remove(&Term::from(eetf::Atom::from(key)));
        match take("__struct__") {
            Some(Term::Atom(a)) if a.name == BROADCAST_STRUCT => {}
            _ => return Err(Refused::NotBroadcast),
        }
        let text = |t: Option<Term>| match t {
            Some(Term::Binary(b)) => String::from_utf8(b.bytes).ok(),
            _ => None,
        };
        let (Some(topic), Some(event), Some(payload)) =
            (text(take("topic")), text(take("event")), take("payload"))
        else {
            return Err(Refused::NotBroadcast);
        };
        if topic != self.topic {
            // Phoenix would push it to this topic's sockets under the other name; nothing
            // sends that.
            return Err(Refused::NotBroadcast);
        }
        Ok(Broadcast::new(topic, event, payload_of(payload)?))
    }
}

/// A broadcast's payload: `{:binary, data}` is sent as a binary frame (as Phoenix's V2
/// serializer does), anything else as the JSON Jason would write.
fn payload_of(term: Term) -> Result<Payload, Refused> {
    if let Term::Tuple(t) = &term {
        if let [Term::Atom(tag), Term::Binary(data)] = t.elements.as_slice() {
            if tag.name == "binary" {
                return Ok(Payload::Binary(Bytes::copy_from_slice(&data.bytes)));
            }
        }
    }
    json::term_to_json(&term, json::Style::Jason, 2, LIMITS.max_depth)
        .map(Payload::Json)
        .map_err(Refused::Unsupported)
}

/// Encodes a broadcast as a Phoenix node would publish it: `{3, :except, node, topic,
/// %Phoenix.Socket.Broadcast{}, Phoenix.Channel.Server}`, uncompressed (what
/// phoenix_pubsub_redis writes by default; every node reads both).
pub fn encode(node: &str, msg: &Broadcast) -> Result<Vec<u8>, EtfError> {
    let mut out = Vec::with_capacity(160 + msg.topic.len() * 2 + msg.event.len());
    out.push(etf::VERSION);
    json::encode_tuple_header(6, &mut out);
    json::encode_int(i128::from(VERSION), &mut out);
    json::encode_ascii_atom("except", &mut out);
    json::encode_binary(node.as_bytes(), &mut out)?;
    json::encode_binary(msg.topic.as_bytes(), &mut out)?;
    // Erlang writes a small map's keys in term order: these atoms sort as listed.
    json::encode_map_header(4, &mut out)?;
    json::encode_ascii_atom("__struct__", &mut out);
    json::encode_ascii_atom(BROADCAST_STRUCT, &mut out);
    json::encode_ascii_atom("event", &mut out);
    json::encode_binary(msg.event.as_bytes(), &mut out)?;
    json::encode_ascii_atom("payload", &mut out);
    match &msg.payload {
        Payload::Json(v) => json::encode_json(v, &mut out, 2, LIMITS.max_depth)?,
        Payload::Encoded(text) => {
            let v: Value =
                serde_json::from_str(text).map_err(|_| EtfError("payload is not JSON"))?;
            json::encode_json(&v, &mut out, 2, LIMITS.max_depth)?;
        }
        Payload::Binary(data) => {
            json::encode_tuple_header(2, &mut out);
            json::encode_ascii_atom("binary", &mut out);
            json::encode_binary(data, &mut out)?;
        }
    }
    json::encode_ascii_atom("topic", &mut out);
    json::encode_binary(msg.topic.as_bytes(), &mut out)?;
    json::encode_ascii_atom(CHANNEL_DISPATCHER, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Frames recorded from Phoenix 1.7.21 with phoenix_pubsub_redis 3.0.1, by file order.
    fn recorded() -> Vec<Vec<u8>> {
        let text = include_str!("../../tests/fixtures/phoenix-pubsub-redis-frames.json");
        let doc: Value = serde_json::from_str(text).expect("fixture is JSON");
        doc["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .map(|f| {
                let hex = f["hex"].as_str().expect("hex");
                (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
                    .collect()
            })
            .collect()
    }

    fn decode(bytes: &[u8]) -> (Mode, String, String, Result<Broadcast, Refused>) {
        let plain = etf::plain(bytes, &LIMITS).expect("frame inflates");
        let frame = read(&plain).expect("frame header");
        let b = frame.broadcast();
        (frame.mode, frame.node.into(), frame.topic.into(), b)
    }

    #[test]
    fn every_recorded_frame_decodes_as_phoenix_means_it() {
        let frames = recorded();
        assert_eq!(frames.len(), 11);
        let json_of = |b: &Broadcast| match &b.payload {
            Payload::Json(v) => v.clone(),
            other => panic!("not JSON: {other:?}"),
        };
        // 1, 5, 8: Phoenix.Tracker replication (the first without pids): not for sockets.
        for i in [0, 4, 7] {
            let (mode, node, topic, b) = decode(&frames[i]);
            assert_eq!((mode, node.as_str()), (Mode::Except, "etf_a"));
            assert_eq!(topic, "phx_presence:Elixir.RefWeb.Presence_shard0");
            assert_eq!(b, Err(Refused::NotBroadcast), "frame {}", i + 1);
        }
        // 2: every JSON type, a u64 bignum, unicode, empty containers.
        let (mode, node, topic, b) = decode(&frames[1]);
        assert_eq!(
            (mode, node.as_str(), topic.as_str()),
            (Mode::Except, "etf_a", "room:lobby")
        );
        let b = b.expect("broadcast");
        assert_eq!(
            (b.topic.as_str(), b.event.as_str()),
            ("room:lobby", "new_msg")
        );
        assert_eq!(
            json_of(&b),
            json!({"body":"hello","n":1,"f":1.5,"ok":true,"none":null,"list":[1,"two",{"three":3}],
                   "nested":{"a":{"b":"c"}},"unicode":"héllo ✓","big":12345678901234567890u64,
                   "neg":-42,"empty_map":{},"empty_list":[]})
        );
        // 3: a socket id's disconnect.
        let b = decode(&frames[2]).3.expect("broadcast");
        assert_eq!(
            (b.topic.as_str(), b.event.as_str()),
            ("users_socket:alice", "disconnect")
        );
        assert_eq!(json_of(&b), json!({}));
        // 4: a binary longer than 65,535 bytes.
        let b = decode(&frames[3]).3.expect("broadcast");
        assert_eq!(json_of(&b), json!({"long": "x".repeat(70_000)}));
        // 6, 7 and 9 (6 compressed): channel broadcasts; broadcast_from looks like broadcast.
        let b6 = decode(&frames[5]).3.expect("broadcast");
        assert_eq!(
            json_of(&b6),
            json!({"body": "from client", "user_id": "alice"})
        );
        let b7 = decode(&frames[6]).3.expect("broadcast");
        assert_eq!(
            (b7.event.as_str(), json_of(&b7)),
            ("shout", json!({"body": "to others"}))
        );
        assert_eq!(decode(&frames[8]).3.expect("compressed broadcast"), b6);
        // 10: {:binary, data} is a binary payload.
        let b = decode(&frames[9]).3.expect("broadcast");
        assert_eq!(b.event, "bin_evt");
        assert_eq!(
            b.payload,
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 253, 254, 255]))
        );
        // 11: a direct broadcast to one node.
        let (mode, node, _, b) = decode(&frames[10]);
        assert_eq!((mode, node.as_str()), (Mode::Only, "gw-node-1"));
        assert_eq!(b.expect("broadcast"), b6);
    }

    #[test]
    fn what_the_gateway_writes_is_byte_for_byte_what_phoenix_wrote() {
        let frames = recorded();
        let msg = Broadcast::new(
            "room:lobby",
            "new_msg",
            Payload::Json(json!({"body": "from client", "user_id": "alice"})),
        );
        assert_eq!(encode("etf_a", &msg).expect("encode"), frames[5]);
        let shout = Broadcast::new(
            "room:lobby",
            "shout",
            Payload::Json(json!({"body": "to others"})),
        );
        assert_eq!(encode("etf_a", &shout).expect("encode"), frames[6]);
        let bin = Broadcast::new(
            "room:lobby",
            "bin_evt",
            Payload::Binary(Bytes::from_static(&[0, 1, 2, 253, 254, 255])),
        );
        assert_eq!(encode("etf_a", &bin).expect("encode"), frames[9]);
        let bye = Broadcast::new("users_socket:alice", "disconnect", Payload::Json(json!({})));
        assert_eq!(encode("etf_a", &bye).expect("encode"), frames[2]);
        let long = Broadcast::new(
            "fan:x",
            "srv",
            Payload::Json(json!({"long": "x".repeat(70_000)})),
        );
        assert_eq!(encode("etf_a", &long).expect("encode"), frames[3]);
    }

    #[test]
    fn a_shared_encoded_payload_is_written_as_its_json() {
        let text: std::sync::Arc<str> = r#"{"a":[1,null]}"#.into();
        let msg = Broadcast::new("t", "e", Payload::Encoded(text));
        let bytes = encode("gw", &msg).expect("encode");
        let got = decode(&bytes).3.expect("broadcast");
        assert_eq!(got.payload, Payload::Json(json!({"a": [1, null]})));
    }

    #[test]
    fn channel_names_follow_module_concat() {
        assert_eq!(channel("Ref.PubSub"), "phx:Elixir.Ref.PubSub.Adapter");
        assert_eq!(
            channel("Elixir.MyApp.PubSub"),
            "phx:Elixir.MyApp.PubSub.Adapter"
        );
    }

    #[test]
    fn frames_that_are_not_broadcasts_are_refused_with_a_reason() {
        let frames = recorded();
        // Another version.
        let mut v2 = etf::plain(&frames[5], &LIMITS).expect("plain").into_owned();
        v2[4] = 2;
        assert_eq!(read(&v2).map(|_| ()), Err(Refused::Version(2)));
        // Truncated anywhere: never a panic, never a broadcast.
        for cut in 0..frames[5].len() {
            if let Ok(plain) = etf::plain(&frames[5][..cut], &LIMITS) {
                if let Ok(f) = read(&plain) {
                    assert!(f.broadcast().is_err(), "cut at {cut}");
                }
            }
        }
        // A tuple as the payload: Jason could not encode it, neither do we.
        let mut t = vec![etf::VERSION];
        json::encode_tuple_header(2, &mut t);
        json::encode_ascii_atom("ok", &mut t);
        json::encode_int(1, &mut t);
        let msg = Broadcast::new("room:lobby", "e", Payload::Json(json!(null)));
        let mut bytes = encode("n", &msg).expect("encode");
        // Replace the payload `nil` (SMALL_ATOM_UTF8_EXT "nil") with the tuple.
        let nil = [119u8, 3, b'n', b'i', b'l'];
        let at = bytes
            .windows(5)
            .position(|w| w == nil)
            .expect("nil payload");
        bytes.splice(at..at + 5, t[1..].iter().copied());
        assert!(matches!(decode(&bytes).3, Err(Refused::Unsupported(_))));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn what_the_gateway_writes_reads_back_the_same(
            topic in "[a-z:0-9]{1,20}",
            event in "[a-z_]{1,12}",
            payload in json_value(),
            binary in prop::collection::vec(any::<u8>(), 0..64),
            as_binary in any::<bool>(),
        ) {
            let payload = if as_binary { Payload::Binary(Bytes::from(binary)) } else { Payload::Json(payload) };
            let msg = Broadcast::new(topic.clone(), event, payload);
            let bytes = encode("gw-tier", &msg).expect("encode");
            let (mode, node, t, got) = decode(&bytes);
            prop_assert_eq!((mode, node.as_str(), t.as_str()), (Mode::Except, "gw-tier", topic.as_str()));
            prop_assert_eq!(got.expect("broadcast"), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut framed = vec![etf::VERSION];
            framed.extend(&bytes);
            if let Ok(plain) = etf::plain(&framed, &LIMITS) {
                if let Ok(f) = read(&plain) {
                    let _ = f.broadcast();
                }
            }
        }

        #[test]
        fn mutated_recorded_frames_never_panic(i in 0usize..11, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut frame = recorded()[i].clone();
            let at = at.index(frame.len());
            frame[at] = byte;
            if let Ok(plain) = etf::plain(&frame, &LIMITS) {
                if let Ok(f) = read(&plain) {
                    let _ = f.broadcast();
                }
            }
        }
    }
}
