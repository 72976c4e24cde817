//! The cgroups the tests make: each under [`TEST_PARENT`] with a name unique to the test
//! process, and removed by its guard (a `ScratchCgroup`) however the test ends.

use stress_user::cgroup::{Hierarchy, MemCgroup, ScratchCgroup, Version};

/// Every cgroup a test creates lives under this parent.
pub(crate) const TEST_PARENT: &str = "oomlab-test";

/// This node's memory controller.
pub(crate) fn hierarchy() -> Hierarchy {
    Hierarchy::detect().expect("a memory cgroup controller")
}

/// The hierarchy when the memory controller is on cgroup v2 (and we are root), else says why
/// `test` skips: the host has memory on v1, and `cargo xtask vm-test` runs it on v2.
pub(crate) fn v2_hierarchy(test: &str) -> Option<Hierarchy> {
    if !super::need_root(test) {
        return None;
    }
    let hier = hierarchy();
    if hier.memory_version != Version::V2 {
        eprintln!(
            "skipped: {test} needs the cgroup v2 memory controller (memory is on cgroup {} here; cargo xtask vm-test runs it on v2)",
            hier.memory_version
        );
        return None;
    }
    Some(hier)
}

/// A new cgroup `oomlab-test/<name>-<pid>` with a hard limit of `limit` bytes (none when
/// `None`), removed with anything left inside on drop.
pub(crate) fn scratch(hier: &Hierarchy, name: &str, limit: Option<u64>) -> ScratchCgroup {
    ScratchCgroup::create(hier, TEST_PARENT, &super::unique(name), limit)
        .unwrap_or_else(|e| panic!("creating test cgroup {name}: {e}"))
}

/// The cgroup's memory usage as the kernel counts it.
pub(crate) fn usage(cg: &MemCgroup) -> u64 {
    cg.usage().expect("memory.usage_in_bytes")
}
