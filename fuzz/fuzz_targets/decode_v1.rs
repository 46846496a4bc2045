//! V1 JSON decoder (`vsn=1.0.0`): arbitrary text must decode or be rejected, never panic.
//! A message that decodes is re-encoded as a server push and must decode back to itself
//! (V1 never sends `join_ref`, so that one comes back as null). A binary frame is read as
//! the same JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phx_gateway::protocol::{Frame, Outbound, Serializer};
use serde_json::Value;

/// serde_json's default float parser is not correctly rounded, so a float may legitimately
/// change by one ulp across an encode/decode cycle; such messages skip the equality check.
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // Phoenix's V1 serializer reads a binary frame as JSON text: both paths must agree.
    let from_binary = Serializer::V1.decode_binary(data);
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(from_binary.is_err(), "non-UTF-8 binary frame must be refused");
        return;
    };
    assert_eq!(
        from_binary.is_ok(),
        Serializer::V1.decode_text(text).is_ok(),
        "a binary frame decodes exactly when the same bytes as text do"
    );
    let Ok(msg) = Serializer::V1.decode_text(text) else {
        return;
    };
    let out = Outbound::Event {
        join_ref: &msg.join_ref,
        msg_ref: &msg.msg_ref,
        topic: &msg.topic,
        event: &msg.event,
        payload: &msg.payload,
    };
    let Ok(Frame::Text(encoded)) = Serializer::V1.encode(&out) else {
        panic!("a decoded V1 message must re-encode as a text frame");
    };
    let back = Serializer::V1
        .decode_text(&encoded)
        .expect("re-encoded V1 message must decode");
    assert_eq!(back.topic, msg.topic);
    assert_eq!(back.event, msg.event);
    assert_eq!(back.join_ref, Value::Null);
    let floats = has_float(&msg.msg_ref) || msg.payload.as_json().is_some_and(has_float);
    if !floats {
        assert_eq!(back.msg_ref, msg.msg_ref);
        assert_eq!(back.payload, msg.payload);
    }
});
