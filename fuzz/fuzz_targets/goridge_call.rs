//! goridge frames → RPC calls and replies: no panic; replies decode again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::rpc::{frame, service};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::decode(rest, 1 << 16) {
        assert!(used > 0 && used <= rest.len());
        let limits = ringcast::publish::Limits { max_topics: 1000, max_bytes: 1 << 20, max_topic_length: 256 };
        let call = service::interpret(&f, "memory", &limits);
        let mut out = Vec::new();
        call.error_reply(&mut out, "x");
        call.ok_reply(&mut out);
        let (reply, n) = frame::decode(&out, usize::MAX).unwrap().unwrap();
        assert_eq!(reply.options.len(), 2);
        assert!(n < out.len());
        rest = &rest[used..];
    }
});
