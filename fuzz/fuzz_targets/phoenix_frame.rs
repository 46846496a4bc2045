//! Phoenix.PubSub.Redis frames (the bytes of the Phoenix channel): arbitrary bytes must be
//! read or refused, never panic, within the frame limits. A broadcast read from them is
//! written again as the gateway publishes it and must read back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phx_gateway::etf;
use phx_gateway::pubsub::phoenix_frame;

fuzz_target!(|data: &[u8]| {
    let Ok(plain) = etf::plain(data, &phoenix_frame::LIMITS) else {
        return;
    };
    let Ok(frame) = phoenix_frame::read(&plain) else {
        return;
    };
    if frame.may_be_broadcast().is_err() {
        assert!(frame.broadcast().is_err(), "the cheap check and the decode agree");
        return;
    }
    let Ok(msg) = frame.broadcast() else {
        return;
    };
    let bytes = phoenix_frame::encode("fuzz", &msg).expect("a broadcast read can be written");
    let plain = etf::plain(&bytes, &phoenix_frame::LIMITS).expect("what we write is plain");
    let back = phoenix_frame::read(&plain).expect("what we write reads back");
    assert_eq!(back.broadcast().expect("and is a broadcast"), msg);
});
