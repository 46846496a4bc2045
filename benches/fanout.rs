//! The fan-out hot path: one broadcast delivered to N local subscribers (encode once per
//! serializer, then a reference-counted clone and a queue push per subscriber).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use phx_gateway::outbox::{outbox, OutboxReceiver};
use phx_gateway::protocol::{Payload, Serializer};
use phx_gateway::pubsub::{next_subscriber_id, Broadcast, Registry, Subscriber};
use serde_json::json;

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for n in [500usize, 5000] {
        let registry = Registry::new();
        let mut receivers: Vec<OutboxReceiver> = Vec::with_capacity(n);
        for i in 0..n {
            // One socket in ten is a V1 client: two encodings per broadcast.
            let serializer = if i % 10 == 0 {
                Serializer::V1
            } else {
                Serializer::V2
            };
            let (tx, rx) = outbox(serializer, 1 << 16);
            registry.subscribe(
                "room:fan",
                Subscriber::socket(next_subscriber_id(), tx),
                None,
            );
            receivers.push(rx);
        }
        let msg = Arc::new(Broadcast::new(
            "room:fan",
            "new_msg",
            Payload::Json(json!({"body": "hello there", "seq": 1, "at": 1_700_000_000_000u64})),
        ));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let stats = registry.dispatch(black_box(&msg), None);
                // Keep the queues from filling up: drain what was delivered.
                for rx in receivers.iter_mut() {
                    while rx.rx.try_recv().is_ok() {}
                }
                stats
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
