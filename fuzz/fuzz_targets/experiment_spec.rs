//! Experiment spec files (TOML): any text either parses or gives an error pointing into it,
//! with and without the VM scale.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::experiment;

fuzz_target!(|text: &str| {
    for vm in [false, true] {
        if let Err(e) = experiment::parse("fuzz.toml", text, vm) {
            let _ = e.to_string();
        }
    }
});
