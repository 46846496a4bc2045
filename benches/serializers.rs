//! Serializer costs: decoding client frames and encoding server frames (V1, V2, binary).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use phx_gateway::protocol::{Outbound, Payload, Serializer};
use serde_json::{json, Value};

fn serializers(c: &mut Criterion) {
    let push = r#"["3","7","room:lobby","new_msg",{"body":"hello there, how is everyone today?","user":"alice","n":42}]"#;
    c.bench_function("decode v2 text push", |b| {
        b.iter(|| Serializer::V2.decode_text(black_box(push)))
    });
    let v1 = r#"{"topic":"room:lobby","event":"new_msg","payload":{"body":"hello","n":42},"ref":"7","join_ref":"3"}"#;
    c.bench_function("decode v1 text push", |b| {
        b.iter(|| Serializer::V1.decode_text(black_box(v1)))
    });

    let payload = Payload::Json(
        json!({"body": "hello there, how is everyone today?", "user": "alice", "n": 42}),
    );
    let null = Value::Null;
    let msg = Outbound::Event {
        join_ref: &null,
        msg_ref: &null,
        topic: "room:lobby",
        event: "new_msg",
        payload: &payload,
    };
    c.bench_function("encode v2 broadcast", |b| {
        b.iter(|| Serializer::V2.encode(black_box(&msg)))
    });
    c.bench_function("encode v1 broadcast", |b| {
        b.iter(|| Serializer::V1.encode(black_box(&msg)))
    });

    let bin = Payload::Binary(Bytes::from(vec![7u8; 256]));
    let bmsg = Outbound::Event {
        join_ref: &null,
        msg_ref: &null,
        topic: "room:lobby",
        event: "new_msg",
        payload: &bin,
    };
    c.bench_function("encode v2 binary broadcast", |b| {
        b.iter(|| Serializer::V2.encode(black_box(&bmsg)))
    });
    let mut frame = vec![0u8, 1, 1, 10, 4];
    frame.extend_from_slice(b"19room:lobbyping");
    frame.extend_from_slice(&[1u8; 256]);
    c.bench_function("decode v2 binary push", |b| {
        b.iter(|| Serializer::V2.decode_binary(black_box(&frame)))
    });
}

criterion_group!(benches, serializers);
criterion_main!(benches);
