//! Long-poll POST body parser. The first byte picks the content type (odd: ndjson, even: a
//! single JSON frame), the rest is the body. Never panics; at most 100 frames per body; a
//! non-ndjson body is always exactly one text frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phx_gateway::transport::longpoll::{parse_body, Incoming};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 == 1;
    let Some(frames) = parse_body(ndjson, body) else {
        assert!(ndjson, "a non-ndjson body is never rejected");
        return;
    };
    assert!(frames.len() <= 100, "at most 100 lines per POST");
    if !ndjson {
        assert_eq!(frames.len(), 1);
        let Incoming::Text(text) = &frames[0] else {
            panic!("a non-ndjson body is one text frame");
        };
        assert_eq!(*text, String::from_utf8_lossy(body));
        return;
    }
    for frame in &frames {
        match frame {
            Incoming::Text(line) => {
                assert!(line.starts_with('[') || line.starts_with('{'));
                assert!(!line.contains('\n') && !line.ends_with('\r'));
            }
            // Base64 shrinks: a decoded line is never longer than the body.
            Incoming::Binary(bytes) => assert!(bytes.len() <= body.len()),
        }
    }
});
