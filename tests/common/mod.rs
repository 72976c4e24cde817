//! Helpers shared by the root integration tests, one submodule per job. Every test binary is a
//! crate of its own that declares `mod common;`: it compiles all of them and uses a few.
#![expect(
    dead_code,
    reason = "each test binary is its own crate and uses only some of the shared helpers"
)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

pub(crate) mod cgroup;
pub(crate) mod guard;
pub(crate) mod inject;
pub(crate) mod kmsg;
pub(crate) mod lines;
pub(crate) mod prometheus;
pub(crate) mod runtime;
pub(crate) mod serve;
pub(crate) mod trace;
pub(crate) mod tracer;

/// The `oomlab` binary cargo built for these tests.
pub(crate) const OOMLAB: &str = env!("CARGO_BIN_EXE_oomlab");

pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns false (and says why) when the test cannot run here.
///
/// Under `CI=true` a missing root is a failure, not a skip: a CI run that skipped every root
/// test would otherwise pass having tested nothing.
pub(crate) fn need_root(test: &str) -> bool {
    if !is_root() {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{test} needs root (real cgroups, eBPF and OOM kills) and CI=true: run CI as root"
        );
        eprintln!("skipped: {test} needs root (real cgroups, eBPF and OOM kills)");
        return false;
    }
    true
}

/// True inside `cargo xtask vm-test`'s guests (QEMU TCG, 1 GiB, one vCPU; its /init sets
/// `OOMLAB_VM=1`): emulated memory is ~20x slower, so sizes there should be tens of MiB.
pub(crate) fn in_vm() -> bool {
    std::env::var("OOMLAB_VM").is_ok_and(|v| v == "1")
}

/// In the VM matrix, says why the test does not run there and returns true; for tests whose
/// sizes or load do not fit a 1 GiB emulated guest. The host still runs them in full.
pub(crate) fn skip_in_vm(test: &str, why: &str) -> bool {
    if in_vm() {
        eprintln!("skipped: {test} does not run in the VM matrix: {why}");
        return true;
    }
    false
}

/// Whether this kernel's `oom:mark_victim` carries the victim's comm, oom_score_adj and rss
/// (doctor's check, from the tracepoint's format); where it has only the pid, tests skip what
/// depends on those fields and say so.
pub(crate) fn victim_details() -> bool {
    let tracefs = stress_user::trace::ensure_tracefs().expect("tracefs").path;
    stress_user::doctor::features::mark_victim_details(&tracefs)
}

/// `name` made unique to this test process, for the cgroups and files it creates.
pub(crate) fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

pub(crate) fn oomlab() -> Command {
    Command::new(OOMLAB)
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub(crate) fn output_text(o: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `oomlab app` allocating `size` in the cgroup `cg` and holding it; the caller adds the rest
/// (`--duration`, `--oom-score-adj`, stdio).
pub(crate) fn app(cg: &str, size: &str) -> Command {
    let mut cmd = oomlab();
    cmd.args(["app", "--size", size, "--cgroup", cg]);
    cmd
}

/// Sends `sig` to `pid`, a process this test started.
pub(crate) fn signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("sending {sig} to {pid}: {e}"));
}

/// Polls `f` every 20 ms until it holds or `timeout` passes; the last look comes after the
/// deadline, so a slow machine gets the whole `timeout`.
pub(crate) fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
