//! Helpers for the `oomlab serve` tests: the daemon as a child process on a free loopback port,
//! a plain HTTP/1.1 client, the `/metrics` text and the `/events` stream.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use super::lines::Lines;

/// A port nobody listens on right now.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// `oomlab serve` on loopback; SIGTERM on drop.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) config: Option<PathBuf>,
    /// Where its stderr goes, when the test reads it.
    pub(crate) stderr: Option<PathBuf>,
}

/// How a test wants the daemon started beyond its TOML config.
#[derive(Default)]
pub(crate) struct Launch<'a> {
    /// More command-line arguments after `serve --config FILE`.
    pub(crate) args: &'a [&'a str],
    /// Send stderr to this file (read back with [`Serve::stderr_text`]).
    pub(crate) stderr: Option<PathBuf>,
    /// Ready when this answers true for the port (default: `/healthz` over plain HTTP).
    pub(crate) ready: Option<&'a dyn Fn(u16) -> bool>,
}

impl Serve {
    /// Starts the daemon with `config` (TOML, without `listen`, which is added) and waits until
    /// `/healthz` answers, which is after every program is attached.
    pub(crate) fn start(config: &str) -> Serve {
        Serve::launch(config, &Launch::default())
    }

    pub(crate) fn launch(config: &str, how: &Launch<'_>) -> Serve {
        let port = free_port();
        let path = std::env::temp_dir().join(format!(
            "oomlab-serve-test-{}-{port}.toml",
            std::process::id()
        ));
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}"))
            .expect("write the test config");
        let mut cmd = super::oomlab();
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(how.args)
            .stdin(Stdio::null());
        if let Some(err) = &how.stderr {
            cmd.stderr(std::fs::File::create(err).expect("create the stderr file"));
        }
        let child = cmd.spawn().expect("start oomlab serve");
        let mut serve = Serve {
            child,
            port,
            config: Some(path),
            stderr: how.stderr.clone(),
        };
        let plain = |port| matches!(try_get(port, "/healthz", ""), Ok((200, _)));
        serve.wait_ready(how.ready.unwrap_or(&plain));
        serve
    }

    fn wait_ready(&mut self, ready: &dyn Fn(u16) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("poll oomlab serve") {
                panic!("oomlab serve exited before it was ready: {status}");
            }
            if ready(self.port) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("oomlab serve did not answer /healthz within 20 s");
    }

    /// What the daemon wrote to stderr so far (started with [`Launch::stderr`]).
    pub(crate) fn stderr_text(&self) -> String {
        let path = self.stderr.as_ref().expect("started with Launch::stderr");
        std::fs::read_to_string(path).expect("read the daemon's stderr")
    }

    /// Resident memory (VmRSS) in KiB, from the kernel.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Whether the daemon still runs (not exited, not a zombie).
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().expect("poll oomlab serve").is_none()
    }

    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        get(self.port, path, "")
    }

    /// The value of one series (exact label text) in `/metrics`, 0 when absent.
    pub(crate) fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {text}");
        metric_value(&text, series)
    }

    /// `/metrics` once `oomlab_oom_kills_total` for the cgroup `path` reaches `kills` (a kill
    /// is counted when its episode closes) or `timeout` passes, with that count.
    pub(crate) fn wait_kills(&self, path: &str, kills: u64, timeout: Duration) -> (f64, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, text) = self.get("/metrics");
            let n = metric_sum(
                &text,
                "oomlab_oom_kills_total{",
                &format!("cgroup=\"{path}\""),
            );
            if n >= kills as f64 || Instant::now() > deadline {
                return (n, text);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns how long it took.
    pub(crate) fn stop(&mut self) -> Duration {
        let start = Instant::now();
        super::signal(self.child.id() as i32, Signal::SIGTERM);
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
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for p in [&self.config, &self.stderr].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The `oomlab_oom_kills_total` series of the cgroup `path`.
pub(crate) fn kill_series<'a>(text: &'a str, path: &str) -> Vec<&'a str> {
    let needle = format!("cgroup=\"{path}\"");
    text.lines()
        .filter(|l| l.starts_with("oomlab_oom_kills_total{") && l.contains(&needle))
        .collect()
}

/// Sum of every series of `family` whose label text contains `needle`.
pub(crate) fn metric_sum(text: &str, family: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(needle))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

pub(crate) fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn try_get(
    port: u16,
    path: &str,
    extra_headers: &str,
) -> std::io::Result<(u16, String)> {
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

pub(crate) fn get(port: u16, path: &str, extra_headers: &str) -> (u16, String) {
    try_get(port, path, extra_headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `/events` of a running daemon (HTTP/1.1, read as a raw stream).
pub(crate) fn events(port: u16) -> Lines {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect /events");
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request /events");
    Lines::objects(s)
}

/// Waits for a child to die without reaping it, so its `/proc/PID/cgroup` stays readable: the
/// daemon labels a victim with the cgroup read from there when the event arrives, and a test
/// must not depend on that read winning the race against the parent's `wait`.
pub(crate) fn wait_exit_unreaped(child: &Child, timeout: Duration) {
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

/// Writes to our own oom_score_adj: each one is an `oom:oom_score_adj_update` event. One open
/// file and a pwrite each, so the flood is as fast as the kernel takes it.
pub(crate) fn adj_flood(n: u32) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")
        .expect("open /proc/self/oom_score_adj");
    for i in 0..n {
        f.write_at((i % 50).to_string().as_bytes(), 0)
            .expect("write /proc/self/oom_score_adj");
    }
    f.write_at(b"0", 0).expect("reset oom_score_adj");
}

/// A client for `/events` that never reads, with a receive buffer of a few KiB so the
/// daemon's writes stall after little data (instead of after the megabytes loopback
/// autotuning would otherwise take).
pub(crate) fn stalled_events_client(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd as _;
    // SAFETY: a fresh socket; setsockopt before connect pins the receive window small.
    let stream = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let small: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        TcpStream::from_raw_fd(fd)
    };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    use std::os::fd::AsRawFd as _;
    // SAFETY: addr is a valid sockaddr_in for the socket's family.
    let r = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
    let mut s = stream;
    write!(s, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").expect("request /events");
    s
}

/// Raises this process' open-file soft limit to the hard one (a test holding a thousand
/// sockets meets the usual soft limit of 1024).
pub(crate) fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise RLIMIT_NOFILE");
    hard
}

/// Makes closing `s` send a reset instead of a FIN (SO_LINGER 0): a client that vanishes.
pub(crate) fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our own socket with a valid linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}
