//! Runs the real `oomlab trace --output json` as a child process for the trace_* root tests:
//! waits for `ready`, collects every JSON line, stops it with SIGTERM like a user would.

use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use serde_json::Value;

use super::{
    guard::Reap,
    lines::{spawn_json, Lines},
};

pub(crate) struct TraceChild {
    child: Reap,
    lines: Lines,
}

impl TraceChild {
    /// Starts `oomlab trace --output json ARGS…` and waits for its `ready` line.
    pub(crate) fn start(args: &[&str]) -> TraceChild {
        TraceChild::start_as(&mut super::oomlab(), args)
    }

    /// [`TraceChild::start`] with `cmd` as the program: `oomlab`, or a wrapper that runs it
    /// (e.g. `setpriv … oomlab`).
    pub(crate) fn start_as(cmd: &mut Command, args: &[&str]) -> TraceChild {
        let (child, mut lines) = spawn_json(
            cmd.arg("trace").args(["--output", "json"]).args(args),
            "oomlab trace",
        );
        let first = lines
            .next_where(Duration::from_secs(20), |_| true)
            .expect("oomlab trace printed nothing within 20 s");
        assert_eq!(
            first["type"], "ready",
            "the first line must be ready: {first}"
        );
        TraceChild { child, lines }
    }

    /// Collects lines until `pred` holds for one of them or `timeout` passes.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.lines.wait_for(timeout, pred)
    }

    /// SIGTERM, then every line up to EOF; panics unless it exits 0 with a final `lost` line.
    pub(crate) fn stop(mut self) -> Vec<Value> {
        super::signal(self.child.0.id() as i32, Signal::SIGTERM);
        let status = self.child.0.wait().expect("wait for oomlab trace");
        assert!(
            status.success(),
            "oomlab trace exited with {status:?} on SIGTERM"
        );
        self.lines.rest(Duration::from_secs(5));
        let last = self.lines.seen.last().expect("lines");
        assert_eq!(last["type"], "lost", "the last line reports drops: {last}");
        std::mem::take(&mut self.lines.seen)
    }
}
