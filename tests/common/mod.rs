//! Helpers shared by the root integration tests, one submodule per job. Every test binary is a
//! crate of its own that declares `mod common;`: it compiles all of them and uses a few.
#![expect(
    dead_code,
    reason = "each test binary is its own crate and uses only some of the shared helpers"
)]

pub mod inject;
pub mod kmsg;
pub mod serve;
pub mod trace;

/// Every cgroup a test creates lives under this parent, and is removed by its guard.
pub const TEST_PARENT: &str = "oomlab-test";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns false (and says why) when the test cannot run here.
pub fn need_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {test} needs root (real cgroups, eBPF and OOM kills)");
        return false;
    }
    true
}

/// True inside `cargo xtask vm-test`'s guests (QEMU TCG, 1 GiB, one vCPU; its /init sets
/// `OOMLAB_VM=1`): emulated memory is ~20x slower, so sizes there should be tens of MiB.
pub fn in_vm() -> bool {
    std::env::var("OOMLAB_VM").is_ok_and(|v| v == "1")
}

/// In the VM matrix, says why the test does not run there and returns true; for tests whose
/// sizes or load do not fit a 1 GiB emulated guest. The host still runs them in full.
pub fn skip_in_vm(test: &str, why: &str) -> bool {
    if in_vm() {
        eprintln!("skipped: {test} does not run in the VM matrix: {why}");
        return true;
    }
    false
}

pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}
