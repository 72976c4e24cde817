//! Runs the real `oomlab trace --output json` as a child process for the trace_* root tests:
//! waits for `ready`, collects every JSON line, stops it with SIGTERM like a user would.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct TraceChild {
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
}

impl TraceChild {
    /// Starts `oomlab trace --output json ARGS…` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> TraceChild {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oomlab"))
            .arg("trace")
            .args(["--output", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start oomlab trace");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("oomlab trace printed a non-JSON line {line:?}: {e}")
                });
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut t = TraceChild {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        let first = t
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("oomlab trace printed nothing within 20 s");
        assert_eq!(
            first["type"], "ready",
            "the first line must be ready: {first}"
        );
        t.seen.push(first);
        t
    }

    /// Collects lines until `pred` holds for one of them or `timeout` passes.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    let hit = pred(&v);
                    self.seen.push(v.clone());
                    if hit {
                        return Some(v);
                    }
                }
                Err(_) => break,
            }
        }
        None
    }

    /// SIGTERM, then every line up to EOF; panics unless it exits 0 with a final `lost` line.
    pub fn stop(mut self) -> Vec<Value> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM oomlab trace");
        let status = self.child.wait().expect("wait for oomlab trace");
        assert!(
            status.success(),
            "oomlab trace exited with {status:?} on SIGTERM"
        );
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(v);
        }
        let last = self.seen.last().expect("lines");
        assert_eq!(last["type"], "lost", "the last line reports drops: {last}");
        std::mem::take(&mut self.seen)
    }
}

impl Drop for TraceChild {
    fn drop(&mut self) {
        // Only when a test failed before stop(): end the tracer we started.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn of_type<'a>(lines: &'a [Value], ty: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == ty).collect()
}
