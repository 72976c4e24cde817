//! Flat-keyed cgroup files (`memory.stat`, `memory.events`, `memory.oom_control`) and
//! `/proc/cgroups`: any text parses, and the map written back as `key value` lines parses to
//! the same map.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::{cgroup::parse_flat_keyed, trace::parse_hierarchy_id};

fuzz_target!(|text: &str| {
    let map = parse_flat_keyed(text);
    let written: String = map.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    assert_eq!(parse_flat_keyed(&written), map, "{written:?}");
    let _ = parse_hierarchy_id(text, "memory");
});
