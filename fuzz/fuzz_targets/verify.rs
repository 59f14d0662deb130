//! Logs handed to `warden verify` may be anything: verification must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = agent_user::audit::verify::verify(data, &Default::default());
});
