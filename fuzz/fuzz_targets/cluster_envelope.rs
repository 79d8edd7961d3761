//! What arrives from the broker: any bytes decode or give an error, never a
//! panic; the gap counter takes any sequence numbers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::broker::envelope::{self, Body, Gaps};

fuzz_target!(|data: &[u8]| {
    if let Ok((origin, Body::Publication(p))) = envelope::decode(bytes::Bytes::copy_from_slice(data)) {
        let mut gaps = Gaps::default();
        gaps.see(&origin, &p.topic, p.seq);
        gaps.see(&origin, &p.topic, p.seq.wrapping_add(1));
        gaps.see(&origin, &p.topic, u64::MAX);
        gaps.see(&origin, &p.topic, 0);
    }
});
