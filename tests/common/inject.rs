//! Helpers for the `oomlab inject` root tests: a running injector whose JSON lines are read on
//! a thread, and sizes scaled to the node.

use std::{process::ExitStatus, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;
use stress_user::sys::MemInfo;

use super::{
    guard::Reap,
    lines::{of_type, spawn_json, Lines},
};

pub(crate) const MIB: u64 = 1 << 20;

/// On nodes under 4 GiB (the VMs of `cargo xtask vm-test` have 1 GiB of slow, emulated memory)
/// the big sizes shrink 8× (the checks stay the same).
pub(crate) fn scale_down() -> u64 {
    let total_kib = MemInfo::read()
        .ok()
        .and_then(|m| m.total_kb)
        .unwrap_or(u64::MAX);
    if total_kib < 4 << 20 {
        8
    } else {
        1
    }
}

/// `n` MiB, scaled down on small nodes.
pub(crate) fn mib(n: u64) -> u64 {
    n * MIB / scale_down()
}

/// A running `oomlab inject --output json`.
pub(crate) struct Injector {
    pub(crate) child: Reap,
    /// Every event received so far, in order.
    events: Lines,
}

impl Injector {
    pub(crate) fn start(args: &[&str]) -> Injector {
        let (child, events) = spawn_json(
            super::oomlab()
                .arg("inject")
                .args(args)
                .args(["--output", "json"]),
            "oomlab inject",
        );
        Injector { child, events }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    /// Waits for the next event of `kind` (events of other kinds are kept in `events`).
    pub(crate) fn wait_for(&mut self, kind: &str, timeout: Duration) -> Value {
        self.try_wait_for(kind, timeout).unwrap_or_else(|| {
            panic!(
                "no {kind:?} event within {timeout:?}; got: {:?}",
                self.events
                    .seen
                    .iter()
                    .map(|e| e["type"].to_string())
                    .collect::<Vec<_>>()
            )
        })
    }

    pub(crate) fn try_wait_for(&mut self, kind: &str, timeout: Duration) -> Option<Value> {
        self.events.next_where(timeout, |v| v["type"] == kind).ok()
    }

    /// All events of `kind` received so far.
    pub(crate) fn all(&self, kind: &str) -> Vec<&Value> {
        of_type(&self.events.seen, kind)
    }

    /// Worker pids from `worker_started` events so far.
    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        self.all("worker_started")
            .iter()
            .map(|e| e["pid"].as_i64().expect("pid") as i32)
            .collect()
    }

    /// Sends SIGTERM and waits for the exit and the summary.
    pub(crate) fn terminate(&mut self) -> (ExitStatus, Value) {
        super::signal(self.pid(), Signal::SIGTERM);
        self.finish()
    }

    /// Waits for the run to end by itself (duration or OOM policy).
    pub(crate) fn finish(&mut self) -> (ExitStatus, Value) {
        self.finish_within(Duration::from_secs(60))
    }

    /// The summary and exit status, panicking when no summary comes within `timeout`.
    pub(crate) fn finish_within(&mut self, timeout: Duration) -> (ExitStatus, Value) {
        let summary = self.wait_for("summary", timeout);
        let status = self.child.0.wait().expect("wait for oomlab inject");
        (status, summary)
    }
}

/// True while `pid` runs; a zombie still answers kill(0), so its state is read instead.
pub(crate) fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Charged bytes vs requested, as a ratio.
pub(crate) fn ratio(charged: u64, requested: u64) -> f64 {
    charged as f64 / requested as f64
}
