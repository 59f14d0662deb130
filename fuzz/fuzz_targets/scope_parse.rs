//! Scope files come from users: parsing and validation must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = agent_user::scope::Scope::parse(text, std::path::Path::new("fuzz.yaml"));
    }
});
