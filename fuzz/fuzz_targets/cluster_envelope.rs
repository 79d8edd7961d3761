//! What arrives from the broker: any bytes open (with and without a
//! secret), decode or give an error, never a panic; the gap counter takes
//! any sequence numbers, and the frame check any frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::broker::envelope::{self, Body, Gaps};
use ringcast::broker::seal::Sealer;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = Sealer::new(Some(b"a fuzzing secret of 32 bytes or more")).open(bytes.clone());
    let Ok((inner, _)) = Sealer::new(None).open(bytes.clone()) else { return };
    for candidate in [inner, bytes] {
        if let Ok(r) = envelope::decode(candidate) {
            if let Body::Publication(p) = r.body {
                let _ = ringcast::ws::encode::check_data_frame(&p.frame);
                let mut gaps = Gaps::default();
                gaps.see(&r.origin, &p.topic, p.seq);
                gaps.see(&r.origin, &p.topic, p.seq.wrapping_add(1));
                gaps.see(&r.origin, &p.topic, u64::MAX);
                gaps.see(&r.origin, &p.topic, 0);
            }
        }
    }
});
