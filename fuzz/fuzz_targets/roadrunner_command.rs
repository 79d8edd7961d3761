//! roadrunner client commands (simd-json in place), reusing buffers as the shard does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut buffers = simd_json::Buffers::default();
    if let Ok(cmd) = ringcast::dialect::roadrunner::parse_command(&mut buf, &mut buffers) {
        let _ = format!("{cmd:?}");
    }
});
