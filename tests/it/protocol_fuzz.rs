//! Property tests: the decoders never panic on arbitrary input, and what the server encodes
//! decodes back to the same message.

use phx_gateway::protocol::{Outbound, Payload, Serializer};
use proptest::prelude::*;
use serde_json::{json, Value};

fn scalar_ref() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        "[0-9]{1,6}".prop_map(Value::String),
        any::<u32>().prop_map(|n| json!(n))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn text_decoders_never_panic(s in "\\PC{0,200}") {
        let _ = Serializer::V1.decode_text(&s);
        let _ = Serializer::V2.decode_text(&s);
    }

    #[test]
    fn json_shaped_input_never_panics(parts in prop::collection::vec(prop_oneof![
        Just("null".to_string()), Just("{}".to_string()), Just("[]".to_string()),
        "\"[a-z:_]{0,10}\"", "-?[0-9]{1,5}", Just("true".to_string()),
    ], 0..8)) {
        let arr = format!("[{}]", parts.join(","));
        let _ = Serializer::V2.decode_text(&arr);
        let obj = format!("{{\"topic\":{},\"event\":{},\"payload\":{},\"ref\":{}}}",
            parts.first().map_or("null", String::as_str), parts.get(1).map_or("null", String::as_str),
            parts.get(2).map_or("null", String::as_str), parts.get(3).map_or("null", String::as_str));
        let _ = Serializer::V1.decode_text(&obj);
    }

    #[test]
    fn binary_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Serializer::V2.decode_binary(&bytes);
        let _ = Serializer::V1.decode_binary(&bytes);
    }

    #[test]
    fn v2_encode_decode_round_trip(jr in scalar_ref(), r in scalar_ref(), topic in "\\PC{0,40}", event in "\\PC{0,20}", n in any::<i64>(), s in "\\PC{0,40}") {
        let payload = Payload::Json(json!({"n": n, "s": s}));
        let msg = Outbound::Event { join_ref: &jr, msg_ref: &r, topic: &topic, event: &event, payload: &payload };
        let frame = Serializer::V2.encode(&msg).expect("encodes");
        let phx_gateway::protocol::Frame::Text(text) = frame else { panic!("text") };
        let back = Serializer::V2.decode_text(&text).expect("decodes");
        prop_assert_eq!(back.join_ref, jr);
        prop_assert_eq!(back.msg_ref, r);
        prop_assert_eq!(back.topic, topic);
        prop_assert_eq!(back.event, event);
        prop_assert_eq!(back.payload, payload);
    }

    #[test]
    fn binary_push_round_trip(jr in "[0-9]{0,10}", r in "[0-9]{0,10}", topic in "\\PC{0,40}", event in "\\PC{0,20}", body in prop::collection::vec(any::<u8>(), 0..100)) {
        // A client push frame, as phoenix.js encodes it.
        let mut frame = vec![0u8, jr.len() as u8, r.len() as u8, topic.len() as u8, event.len() as u8];
        for f in [&jr, &r, &topic, &event] {
            frame.extend_from_slice(f.as_bytes());
        }
        frame.extend_from_slice(&body);
        let m = Serializer::V2.decode_binary(&frame).expect("decodes");
        prop_assert_eq!(m.topic, topic);
        prop_assert_eq!(m.event, event);
        prop_assert_eq!(m.payload, Payload::Binary(body.into()));
    }
}

#[test]
fn deeply_nested_payloads_are_rejected_not_overflowing_the_stack() {
    let deep = format!(
        "[\"1\",\"1\",\"t\",\"e\",{}{}]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(Serializer::V2.decode_text(&deep).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn envelope_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = phx_gateway::pubsub::envelope::decode(&bytes);
    }

    #[test]
    fn envelope_shaped_input_never_panics(topic in "\\PC{0,30}", event in "\\PC{0,10}", v in 0u32..3, b64 in "[A-Za-z0-9+/=*]{0,20}") {
        let text = format!(r#"{{"v":{v},"topic":{},"event":{},"binary":"{b64}"}}"#, json!(topic), json!(event));
        let _ = phx_gateway::pubsub::envelope::decode(text.as_bytes());
    }

    #[test]
    fn longpoll_body_parser_never_panics_and_caps_lines(body in prop::collection::vec(any::<u8>(), 0..2000), ndjson in any::<bool>()) {
        if let Some(frames) = phx_gateway::transport::longpoll::parse_body(ndjson, &body) {
            prop_assert!(frames.len() <= 100);
            if !ndjson {
                prop_assert_eq!(frames.len(), 1);
            }
        }
    }

    #[test]
    fn token_verifiers_never_panic(token in "\\PC{0,200}") {
        // Key derivation (PBKDF2) happens once, not per case.
        static VERIFIERS: std::sync::LazyLock<(phx_gateway::auth::PhoenixToken, phx_gateway::auth::JwtVerifier)> =
            std::sync::LazyLock::new(|| {
                (
                    phx_gateway::auth::PhoenixToken::new("abcdefghijabcdefghijabcdefghij", "user socket"),
                    phx_gateway::auth::JwtVerifier::new(phx_gateway::auth::JwtKey::Hs256(b"secret".to_vec()), None, None, 30)
                        .expect("verifier"),
                )
            });
        let _ = VERIFIERS.0.verify(&token, None, 1_700_000_000_000);
        let _ = VERIFIERS.1.verify(&token);
    }
}

#[test]
fn longpoll_ndjson_lines() {
    use phx_gateway::transport::longpoll::{parse_body, Incoming};
    let frames =
        parse_body(true, b"[\"1\",\"1\",\"t\",\"e\",{}]\r\nAAEBAQF0ZQ==\n\n").expect("parses");
    assert!(matches!(&frames[0], Incoming::Text(t) if t.starts_with('[')));
    assert!(matches!(&frames[1], Incoming::Binary(b) if b == &[0, 1, 1, 1, 1, b't', b'e']));
    assert_eq!(frames.len(), 2);
    let many = "[]\n".repeat(150);
    assert_eq!(
        parse_body(true, many.as_bytes()).expect("parses").len(),
        100,
        "at most 100 lines, as Phoenix"
    );
    assert!(parse_body(true, b"not base64 !!").is_none());
}
