//! `/proc/PID/cgroup`: the memory cgroup's path, for v1 and v2, from any text. The path found
//! is the rest of one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::cgroup::{cgroup_of, Version};

fuzz_target!(|text: &str| {
    for version in [Version::V1, Version::V2] {
        if let Some(path) = cgroup_of(text, version) {
            assert!(text.lines().any(|l| l.ends_with(path.as_str())), "{path:?}");
        }
    }
});
