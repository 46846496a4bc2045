//! V2 binary decoder: arbitrary bytes must decode or be rejected, never panic. A decoded push
//! must account for every byte of the frame: 1 kind byte, 4 length bytes, the four header
//! fields and the payload (the rest of the frame, copied verbatim).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phx_gateway::protocol::{Payload, Serializer};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Serializer::V2.decode_binary(data) else {
        return;
    };
    assert_eq!(
        data[0], 0,
        "only push frames (kind 0) are accepted from clients"
    );
    let (Value::String(join_ref), Value::String(msg_ref)) = (&msg.join_ref, &msg.msg_ref) else {
        panic!("binary refs decode as strings");
    };
    let Payload::Binary(body) = &msg.payload else {
        panic!("binary frames carry binary payloads");
    };
    let lens = [
        join_ref.len(),
        msg_ref.len(),
        msg.topic.len(),
        msg.event.len(),
    ];
    for (i, len) in lens.iter().enumerate() {
        assert_eq!(*len, usize::from(data[1 + i]), "header field {i} length");
    }
    let header: usize = 5 + lens.iter().sum::<usize>();
    assert_eq!(header + body.len(), data.len());
    assert_eq!(&data[header..], &body[..]);
});
