//! Redis envelope decoder: arbitrary bytes must decode or be rejected, never panic. A decoded
//! envelope is re-encoded and must decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phx_gateway::protocol::Payload;
use phx_gateway::pubsub::envelope;
use serde_json::Value;

/// serde_json's default float parser is not correctly rounded, so a float may legitimately
/// change by one ulp across an encode/decode cycle; such envelopes skip the equality check.
fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(env) = envelope::decode(data) else {
        return;
    };
    let bytes = envelope::encode_numbered(&env.node, env.from, env.ts, &env.broadcast, env.n);
    let back = envelope::decode(&bytes).expect("a re-encoded envelope must decode");
    assert_eq!(back.node, env.node);
    assert_eq!(back.from, env.from);
    assert_eq!(back.ts, env.ts);
    assert_eq!(back.n, env.n);
    assert_eq!(back.broadcast.topic, env.broadcast.topic);
    assert_eq!(back.broadcast.event, env.broadcast.event);
    let floats = matches!(&env.broadcast.payload, Payload::Json(v) if has_float(v));
    if !floats {
        assert_eq!(back, env);
    }
});
