//! `/proc/self/mountinfo`: the memory controller's mount found from any text, with the v2
//! mount's `cgroup.controllers` taken from the input too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::cgroup::{Hierarchy, Version};

fuzz_target!(|text: &str| {
    // A trailing `controllers:` line plays the v2 mount's cgroup.controllers.
    let (mountinfo, controllers) = text
        .rsplit_once("\ncontrollers:")
        .unwrap_or((text, "memory"));
    if let Ok(h) = Hierarchy::from_mountinfo(mountinfo, |_| controllers.to_string()) {
        if h.memory_version == Version::V2 {
            assert_eq!(h.unified.as_ref(), Some(&h.memory_mount));
        }
        let _ = h.cgroup("a/b").path();
    }
});
