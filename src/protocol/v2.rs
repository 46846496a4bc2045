//! V2 JSON serializer (`vsn=2.0.0`): `[join_ref, ref, topic, event, payload]`.

use serde_json::Value;

use super::{check_ref, into_string, write_json, write_str};
use super::{DecodeError, Message, Outbound, Payload};

/// Decodes a V2 text frame. Extra trailing elements are ignored, as Phoenix does.
pub(super) fn decode(text: &str) -> Result<Message, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(DecodeError::Shape(
            "a vsn 2.0.0 message must be a JSON array",
        ));
    };
    if items.len() < 5 {
        return Err(DecodeError::Shape("a vsn 2.0.0 message needs 5 elements"));
    }
    let mut it = items.into_iter();
    let (join_ref, msg_ref, topic, event, payload) =
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c), Some(d), Some(e)) => (a, b, c, d, e),
            _ => return Err(DecodeError::Shape("a vsn 2.0.0 message needs 5 elements")),
        };
    check_ref(&join_ref)?;
    check_ref(&msg_ref)?;
    let Value::String(topic) = topic else {
        return Err(DecodeError::Shape("topic must be a string"));
    };
    let Value::String(event) = event else {
        return Err(DecodeError::Shape("event must be a string"));
    };
    Ok(Message {
        join_ref,
        msg_ref,
        topic,
        event,
        payload: Payload::Json(payload),
    })
}

/// Encodes a server message as a V2 JSON array (text).
pub(super) fn encode(msg: &Outbound<'_>) -> String {
    let (join_ref, msg_ref, topic, event) = msg.head();
    let mut out = Vec::with_capacity(128);
    out.push(b'[');
    write_json(&mut out, join_ref);
    out.push(b',');
    write_json(&mut out, msg_ref);
    out.push(b',');
    write_str(&mut out, topic);
    out.push(b',');
    write_str(&mut out, event);
    out.push(b',');
    msg.write_payload(&mut out);
    out.push(b']');
    into_string(out)
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, Serializer};
    use super::*;
    use serde_json::json;

    fn enc(msg: Outbound<'_>) -> String {
        match Serializer::V2.encode(&msg).expect("encodes") {
            Frame::Text(s) => s.to_string(),
            Frame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn decodes_a_join() {
        let m = decode(r#"["3","3","room:lobby","phx_join",{"user":"a"}]"#).expect("decodes");
        assert_eq!(m.join_ref, json!("3"));
        assert_eq!(m.msg_ref, json!("3"));
        assert_eq!(m.topic, "room:lobby");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload, Payload::Json(json!({"user": "a"})));
    }

    #[test]
    fn decodes_heartbeat_with_null_join_ref_and_ignores_extra_elements() {
        let m = decode(r#"[null,"5","phoenix","heartbeat",{},"extra"]"#).expect("decodes");
        assert_eq!(m.join_ref, Value::Null);
        assert_eq!(m.event, "heartbeat");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "this is not json",
            "{}",
            "[]",
            r#"["1","1","t","e"]"#,
            r#"["1","1",3,"e",{}]"#,
            r#"["1","1","t",null,{}]"#,
            r#"[{},"1","t","e",{}]"#,
            r#"["1",[],"t","e",{}]"#,
            "[\"1\",\"1\",\"t\",\"e\",{}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?} should not decode");
        }
    }

    #[test]
    fn encodes_exact_phoenix_shapes() {
        let (n, j, r) = (Value::Null, json!("3"), json!("4"));
        let reply = Payload::Json(json!({"id": 7}));
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &j,
                msg_ref: &r,
                topic: "room:lobby",
                status: "ok",
                response: &reply
            }),
            r#"["3","4","room:lobby","phx_reply",{"response":{"id":7},"status":"ok"}]"#
        );
        let hb = json!("5");
        assert_eq!(
            enc(Outbound::Reply {
                join_ref: &n,
                msg_ref: &hb,
                topic: "phoenix",
                status: "ok",
                response: &Payload::empty()
            }),
            r#"[null,"5","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
        let body = Payload::Json(json!({"user_id": "a200", "body": "hi"}));
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &n,
                msg_ref: &n,
                topic: "room:lobby",
                event: "new_msg",
                payload: &body
            }),
            r#"[null,null,"room:lobby","new_msg",{"body":"hi","user_id":"a200"}]"#
        );
        assert_eq!(
            enc(Outbound::Event {
                join_ref: &j,
                msg_ref: &j,
                topic: "room:lobby",
                event: "phx_close",
                payload: &Payload::empty()
            }),
            r#"["3","3","room:lobby","phx_close",{}]"#
        );
    }

    #[test]
    fn round_trips_client_frames() {
        let text = r#"["0","1","t","e",{"foo":1}]"#;
        let m = decode(text).expect("decodes");
        let out = enc(Outbound::Event {
            join_ref: &m.join_ref,
            msg_ref: &m.msg_ref,
            topic: &m.topic,
            event: &m.event,
            payload: &m.payload,
        });
        assert_eq!(out, text);
    }

    #[test]
    fn escapes_strings() {
        let n = Value::Null;
        let out = enc(Outbound::Event {
            join_ref: &n,
            msg_ref: &n,
            topic: "a\"b\n",
            event: "é",
            payload: &Payload::empty(),
        });
        let back: Value = serde_json::from_str(&out).expect("valid json");
        assert_eq!(back, json!([null, null, "a\"b\n", "é", {}]));
    }
}
