//! V1 JSON serializer (`vsn=1.0.0`): `{"topic", "event", "payload", "ref", "join_ref"?}`.
//!
//! The server never sends `join_ref` in V1 (Phoenix drops it), and writes keys sorted.

use serde_json::Value;

use super::{check_ref, into_string, write_json, write_str};
use super::{DecodeError, Message, Outbound, Payload};

/// Decodes a V1 text frame. `topic`, `event`, `payload` and `ref` are required.
pub(super) fn decode(text: &str) -> Result<Message, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::Shape(
            "a vsn 1.0.0 message must be a JSON object",
        ));
    };
    let Some(Value::String(topic)) = obj.remove("topic") else {
        return Err(DecodeError::Shape("`topic` must be a string"));
    };
    let Some(Value::String(event)) = obj.remove("event") else {
        return Err(DecodeError::Shape("`event` must be a string"));
    };
    let Some(payload) = obj.remove("payload") else {
        return Err(DecodeError::Shape("`payload` is required"));
    };
    let Some(msg_ref) = obj.remove("ref") else {
        return Err(DecodeError::Shape("`ref` is required"));
    };
    let join_ref = obj.remove("join_ref").unwrap_or(Value::Null);
    check_ref(&msg_ref)?;
    check_ref(&join_ref)?;
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// Encodes a server message as a V1 JSON object (keys sorted: event, payload, ref, topic).
pub(super) fn encode(msg: &Outbound<'_>) -> String {
    let (_, msg_ref, topic, event) = msg.head();
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"event\":");
    write_str(&mut out, event);
    out.extend_from_slice(b",\"payload\":");
    msg.write_payload(&mut out);
    out.extend_from_slice(b",\"ref\":");
    write_json(&mut out, msg_ref);
    out.extend_from_slice(b",\"topic\":");
    write_str(&mut out, topic);
    out.push(b'}');
    into_string(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, Serializer};
    use super::*;
    use serde_json::json;

    fn enc(msg: Outbound<'_>) -> String {
        match Serializer::V1.encode(&msg).expect("encodes") {
            Frame::Text(s) => s.to_string(),
            Frame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn decodes_with_and_without_join_ref() {
        let m = decode(
            r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#,
        )
        .expect("decodes");
        assert_eq!(
            (m.topic.as_str(), m.event.as_str()),
            ("room:lobby", "phx_join")
        );
        assert_eq!(m.join_ref, json!("1"));
        let m = decode(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"2"}"#)
            .expect("decodes");
        assert_eq!(m.join_ref, Value::Null);
        assert_eq!(m.msg_ref, json!("2"));
    }

    #[test]
    fn rejects_missing_keys_and_wrong_types() {
        for bad in [
            r#"{"event":"e","payload":{},"ref":"1"}"#,
            r#"{"topic":"t","payload":{},"ref":"1"}"#,
            r#"{"topic":"t","event":"e","ref":"1"}"#,
            r#"{"topic":"t","event":"e","payload":{}}"#,
            r#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#,
            r#"{"topic":"t","event":"e","payload":{},"ref":{}}"#,
            r#"["1","1","t","e",{}]"#,
            "nope",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should not decode");
        }
    }

    #[test]
    fn encodes_exact_phoenix_shapes() {
        let (n, r, j) = (Value::Null, json!("1"), json!("12"));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                msg_ref: &r,
                topic: "room:lobby",
                status: "ok",
                response: &Payload::empty()
            }),
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}"#
        );
        let body = Payload::Json(json!({"body": "hi"}));
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &n,
                msg_ref: &n,
                topic: "room:lobby",
                event: "new_msg",
                payload: &body
            }),
            r#"{"event":"new_msg","payload":{"body":"hi"},"ref":null,"topic":"room:lobby"}"#
        );
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &j,
                msg_ref: &j,
                topic: "room:lobby",
                event: "phx_close",
                payload: &Payload::empty()
            }),
            r#"{"event":"phx_close","payload":{},"ref":"12","topic":"room:lobby"}"#
        );
    }

    #[test]
    fn cannot_encode_binary_payloads() {
        let n = Value::Null;
        let p = Payload::Binary(bytes::Bytes::from_static(b"\x01"));
        let msg = Outbound::Event {
            join_ref: &n,
            msg_ref: &n,
            topic: "t",
            event: "e",
            payload: &p,
        };
        assert!(Serializer::V1.encode(&msg).is_err());
    }

    #[test]
    fn binary_frames_are_read_as_json_text() {
        let text = r#"{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1"}"#;
        assert_eq!(
            Serializer::V1.decode_binary(text.as_bytes()),
            Serializer::V1.decode_text(text)
        );
        assert!(Serializer::V1
            .decode_binary(b"\x00\x01\x01\x01\x01abcd")
            .is_err());
        assert_eq!(
            Serializer::V1.decode_binary(b"\xff\xfe"),
            Err(DecodeError::NotText)
        );
    }
}
