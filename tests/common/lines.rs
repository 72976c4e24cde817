//! JSON lines from a child's stdout or an HTTP stream, read on a thread so that a test can
//! wait for them with a deadline; every line read is kept, in order.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::guard::Reap;

pub(crate) struct Lines {
    rx: Receiver<Value>,
    /// Every line read so far, in order.
    pub(crate) seen: Vec<Value>,
}

impl Lines {
    /// Every line of `reader` must be JSON: one that is not panics the reader thread (naming
    /// `what`), which ends the stream.
    pub(crate) fn json(reader: impl Read + Send + 'static, what: &'static str) -> Lines {
        Lines::spawn(reader, move |line| {
            Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                panic!("{what} printed a line that is not JSON ({e}): {line:?}")
            }))
        })
    }

    /// The JSON objects among the lines of `reader`; the rest (chunked transfer framing: hex
    /// sizes, blank lines) is skipped.
    pub(crate) fn objects(reader: impl Read + Send + 'static) -> Lines {
        Lines::spawn(reader, |line| {
            serde_json::from_str::<Value>(&line)
                .ok()
                .filter(Value::is_object)
        })
    }

    fn spawn(
        reader: impl Read + Send + 'static,
        parse: impl Fn(String) -> Option<Value> + Send + 'static,
    ) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if let Some(v) = parse(line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line that `pred` accepts, reading on for up to `timeout`.
    pub(crate) fn next_where(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, RecvTimeoutError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.rx.recv_timeout(left)?;
            self.seen.push(v.clone());
            if pred(&v) {
                return Ok(v);
            }
        }
    }

    /// A line that `pred` accepts: the first one already read, else the next within `timeout`.
    pub(crate) fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        self.next_where(timeout, pred).ok()
    }

    /// Reads on until the stream ends (true) or `timeout` passes (false).
    pub(crate) fn wait_end(&mut self, timeout: Duration) -> bool {
        matches!(
            self.next_where(timeout, |_| false),
            Err(RecvTimeoutError::Disconnected)
        )
    }

    /// Reads every line until the stream ends or stays silent for `idle`.
    pub(crate) fn rest(&mut self, idle: Duration) {
        while let Ok(v) = self.rx.recv_timeout(idle) {
            self.seen.push(v);
        }
    }
}

/// Starts `cmd` with its stdout read as JSON lines (see [`Lines::json`]); `what` names it in
/// messages.
pub(crate) fn spawn_json(cmd: &mut Command, what: &'static str) -> (Reap, Lines) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    (Reap(child), Lines::json(stdout, what))
}

pub(crate) fn is_type(v: &Value, ty: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(ty)
}

/// The lines of type `ty`, in order.
pub(crate) fn of_type<'a>(lines: &'a [Value], ty: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| is_type(v, ty)).collect()
}
