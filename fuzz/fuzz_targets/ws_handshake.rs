//! Upgrade request parsing: any bytes give a request, "need more", or an HTTP error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match ringcast::ws::handshake::parse(data) {
        Ok(Some((upgrade, used))) => {
            assert!(used <= data.len());
            assert!(upgrade.response().starts_with(b"HTTP/1.1 101"));
        }
        Ok(None) => assert!(data.len() < ringcast::ws::handshake::MAX_REQUEST_HEAD),
        Err(e) => assert!((400..600).contains(&e.status)),
    }
});
