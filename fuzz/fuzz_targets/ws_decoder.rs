//! Client bytes → WebSocket events, fed in arbitrary chunks: no panic, and
//! buffered bytes never exceed the message limit plus one frame header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::ws::{Decoder, Flow};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let max = 1 + (data[0] as usize) * 64;
    let chunk = 1 + data.get(1).copied().unwrap_or(0) as usize;
    let mut dec = Decoder::new();
    for piece in data[2.min(data.len())..].chunks(chunk) {
        let mut buf = piece.to_vec();
        match dec.feed(&mut buf, max, &mut |_event| Flow::Continue) {
            Ok(Flow::Continue) => assert!(dec.buffered() <= max.max(125) + 14 + max),
            Ok(Flow::Stop) | Err(_) => break,
        }
    }
});
