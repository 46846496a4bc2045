//! V2 JSON decoder (`vsn=2.0.0`): arbitrary text must decode or be rejected, never panic.
//! A message that decodes is re-encoded as a server push and must decode back to itself.
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
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = Serializer::V2.decode_text(text) else {
        return;
    };
    let out = Outbound::Event {
        join_ref: &msg.join_ref,
        msg_ref: &msg.msg_ref,
        topic: &msg.topic,
        event: &msg.event,
        payload: &msg.payload,
    };
    let Ok(Frame::Text(encoded)) = Serializer::V2.encode(&out) else {
        panic!("a decoded V2 JSON message must re-encode as a text frame");
    };
    let back = Serializer::V2
        .decode_text(&encoded)
        .expect("re-encoded V2 message must decode");
    assert_eq!(back.topic, msg.topic);
    assert_eq!(back.event, msg.event);
    let floats = has_float(&msg.join_ref)
        || has_float(&msg.msg_ref)
        || msg.payload.as_json().is_some_and(has_float);
    if !floats {
        assert_eq!(back, msg);
    }
});
