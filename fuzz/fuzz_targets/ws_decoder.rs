//! Client bytes → WebSocket events, fed in arbitrary chunks, with the
//! consumer pausing on some messages (as a connection with a backend request
//! in flight does): no panic, paused input resumes in order, and buffered
//! bytes never exceed the message limit plus what one read brought.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::ws::{Decoder, Event, Flow};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let max = 1 + (data[0] as usize) * 64;
    let chunk = 1 + data[1] as usize;
    let pause_every = data[2] as usize;
    let mut dec = Decoder::new();
    let mut messages = 0usize;
    let mut on_event = |event: Event<'_>| {
        if matches!(event, Event::Text(_) | Event::Binary(_)) {
            messages += 1;
            if pause_every > 0 && messages % pause_every == 0 {
                return Flow::Pause;
            }
        }
        Flow::Continue
    };
    'input: for piece in data[3..].chunks(chunk) {
        let mut buf = piece.to_vec();
        let mut result = dec.feed(&mut buf, max, &mut on_event);
        // Resume a paused decoder until it wants more input.
        for _ in 0..=data.len() {
            match result {
                Ok(Flow::Pause) => result = dec.feed(&mut [], max, &mut on_event),
                Ok(Flow::Continue) => {
                    assert!(dec.buffered() <= 2 * max.max(125) + 14 + chunk);
                    continue 'input;
                }
                Ok(Flow::Stop) | Err(_) => break 'input,
            }
        }
        panic!("a paused decoder never drained its buffered input");
    }
});
