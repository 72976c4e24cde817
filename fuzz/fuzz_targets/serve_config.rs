//! `oomlab serve`'s TOML config: any text either parses into a config that answers its checks,
//! or gives an error.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use stress_user::{serve::Config, trace::EventClass};

fuzz_target!(|text: &str| {
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(cfg) => {
            let _ = cfg.check_listen();
            let _ = cfg.traces(EventClass::Oom);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
