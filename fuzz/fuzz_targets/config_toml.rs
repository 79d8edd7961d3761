//! Configuration files: any text loads or fails with a message, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = ringcast::config::Config::from_toml(text, "fuzz") {
            let _ = c.validate();
        }
    }
});
