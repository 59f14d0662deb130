//! Rule files come from detection engineers: loading (parse, validate, CEL compile) must
//! never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut set = agent_user::rules::RuleSet { rules: Vec::new(), lists: Default::default() };
        let _ = set.add(text, std::path::Path::new("fuzz.yaml"));
    }
});
