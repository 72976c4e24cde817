//! Helpers for the `oomlab inject` root tests: a running injector whose JSON lines are read on
//! a thread, and a test cgroup with a limit.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use stress_user::cgroup::{Hierarchy, MemCgroup, ScratchCgroup};

pub const MIB: u64 = 1 << 20;

/// The VMs of `cargo xtask vm-test` have 1 GiB of slow, emulated memory: there the big sizes
/// shrink 8× (the checks stay the same).
pub fn scale_down() -> u64 {
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(u64::MAX);
    if total_kib < 4 << 20 {
        8
    } else {
        1
    }
}

/// `n` MiB, scaled down on small nodes.
pub fn mib(n: u64) -> u64 {
    n * MIB / scale_down()
}

pub fn oomlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oomlab"))
}

/// A cgroup under `oomlab-test/` with a limit, removed (with anything left inside) on drop.
pub fn test_cgroup(hier: &Hierarchy, name: &str, limit: u64) -> ScratchCgroup {
    ScratchCgroup::create(hier, super::TEST_PARENT, &super::unique(name), Some(limit))
        .unwrap_or_else(|e| panic!("creating test cgroup {name}: {e}"))
}

/// A running `oomlab inject --output json`.
pub struct Injector {
    pub child: Child,
    rx: Receiver<Value>,
    /// Every event received so far, in order.
    pub events: Vec<Value>,
}

impl Injector {
    pub fn start(args: &[&str]) -> Injector {
        let mut child = oomlab()
            .arg("inject")
            .args(args)
            .args(["--output", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start oomlab inject");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("oomlab printed a line that is not JSON ({e}): {line}")
                });
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Injector {
            child,
            rx,
            events: Vec::new(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the next event of `kind` (events of other kinds are kept in `events`).
    pub fn wait_for(&mut self, kind: &str, timeout: Duration) -> Value {
        self.try_wait_for(kind, timeout).unwrap_or_else(|| {
            panic!(
                "no {kind:?} event within {timeout:?}; got: {:?}",
                self.events
                    .iter()
                    .map(|e| e["type"].to_string())
                    .collect::<Vec<_>>()
            )
        })
    }

    pub fn try_wait_for(&mut self, kind: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.events.push(v.clone());
                    if v["type"] == kind {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// All events of `kind` received so far.
    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == kind).collect()
    }

    /// Worker pids from `worker_started` events so far.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.all("worker_started")
            .iter()
            .map(|e| e["pid"].as_i64().expect("pid") as i32)
            .collect()
    }

    /// Sends SIGTERM and waits for the exit and the summary.
    pub fn terminate(&mut self) -> (ExitStatus, Value) {
        signal(self.pid(), libc::SIGTERM);
        self.finish()
    }

    /// Waits for the run to end by itself (duration or OOM policy).
    pub fn finish(&mut self) -> (ExitStatus, Value) {
        self.finish_within(Duration::from_secs(60))
    }

    /// The summary and exit status, panicking when no summary comes within `timeout`.
    pub fn finish_within(&mut self, timeout: Duration) -> (ExitStatus, Value) {
        let summary = self.wait_for("summary", timeout);
        let status = self.child.wait().expect("wait for oomlab inject");
        (status, summary)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: plain syscall on a pid this test started.
    unsafe { libc::kill(pid, sig) };
}

pub fn alive(pid: i32) -> bool {
    // A zombie still answers kill(0): look at the state instead.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn usage(cg: &MemCgroup) -> u64 {
    cg.usage().expect("memory.usage_in_bytes")
}

/// Charged bytes vs requested, as a ratio.
pub fn ratio(charged: u64, requested: u64) -> f64 {
    charged as f64 / requested as f64
}

pub fn hierarchy() -> Hierarchy {
    Hierarchy::detect().expect("a memory cgroup controller")
}

pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}
