//! Kernel records are untrusted bytes: decoding must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agent_user::decode::decode(data);
});
