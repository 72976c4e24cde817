//! Helpers for the `oomlab serve` tests: the daemon as a child process on a free loopback port,
//! a plain HTTP/1.1 client, and line readers for `/events` and `oomlab trace --output json`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub const OOMLAB: &str = env!("CARGO_BIN_EXE_oomlab");

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// `oomlab serve` on loopback; SIGTERM on drop.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    pub config: Option<std::path::PathBuf>,
}

impl Serve {
    /// Starts the daemon with `config` (TOML, without `listen`, which is added) and waits until
    /// `/healthz` answers, which is after every program is attached.
    pub fn start(config: &str) -> Serve {
        let port = free_port();
        let path = std::env::temp_dir().join(format!(
            "oomlab-serve-test-{}-{port}.toml",
            std::process::id()
        ));
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}"))
            .expect("write the test config");
        let child = Command::new(OOMLAB)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start oomlab serve");
        let mut serve = Serve {
            child,
            port,
            config: Some(path),
        };
        serve.wait_healthy();
        serve
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll oomlab serve") {
                panic!("oomlab serve exited before it was ready: {status}");
            }
            if let Ok((200, _)) = try_get(self.port, "/healthz", "") {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("oomlab serve did not answer /healthz within 20 s");
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.port, path, "")
    }

    /// The value of one series (exact label text) in `/metrics`, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {text}");
        metric_value(&text, series)
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let start = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM serve");
        loop {
            if let Some(status) = self.child.try_wait().expect("poll oomlab serve") {
                assert!(
                    status.success(),
                    "oomlab serve exited with {status} on SIGTERM"
                );
                return start.elapsed();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("oomlab serve did not exit within 10 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(p) = &self.config {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Sum of every series of `family` whose label text contains `needle`.
pub fn metric_sum(text: &str, family: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(needle))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn try_get(port: u16, path: &str, extra_headers: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The server may answer (431) and close before a large request is fully sent: read the
    // answer whatever the write says.
    let sent = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra_headers}\r\n"
    );
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        sent?;
        read?;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn get(port: u16, path: &str, extra_headers: &str) -> (u16, String) {
    try_get(port, path, extra_headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// JSON lines read on a thread, so a test can wait for them with a timeout.
pub struct Lines {
    rx: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Lines {
    fn spawn(reader: impl BufRead + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                // Chunked transfer framing (hex sizes, blank lines) is not JSON: skip it.
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v.is_object() && tx.send(v).is_err() {
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

    /// `/events` of a running daemon (HTTP/1.1, read as a raw stream).
    pub fn events(port: u16) -> Lines {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect /events");
        write!(
            s,
            "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("request /events");
        Lines::spawn(BufReader::new(s))
    }

    pub fn stdout(out: ChildStdout) -> Lines {
        Lines::spawn(BufReader::new(out))
    }

    /// Reads on until the stream ends (true) or `timeout` passes (false); every line read is
    /// kept in `seen`.
    pub fn wait_end(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
    }

    /// Waits for a line that `pred` accepts; every line read is kept in `seen`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }
}

pub fn is_type(v: &serde_json::Value, ty: &str) -> bool {
    v.get("type").and_then(|t| t.as_str()) == Some(ty)
}

/// Waits for a child to die without reaping it, so its `/proc/PID/cgroup` stays readable: the
/// daemon labels a victim with the cgroup read from there when the event arrives, and a test
/// must not depend on that read winning the race against the parent's `wait`.
pub fn wait_exit_unreaped(child: &Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // SAFETY: waitid with WNOWAIT only observes the child; `info` is a plain out-struct.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is valid to read for a WEXITED result.
        if r == 0 && unsafe { info.si_pid() } != 0 {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("child {} did not exit within {timeout:?}", child.id());
}
