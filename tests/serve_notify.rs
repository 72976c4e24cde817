//! `oomlab serve` speaks systemd's notify protocol, checked without systemd: the test plays the
//! service manager, with its own `NOTIFY_SOCKET` datagram socket and `WATCHDOG_USEC`, and reads
//! what the daemon sends. `packaging/oomlab.service` relies on all of it: `Type=notify` (READY=1
//! only once the port is bound and every program attached), `WatchdogSec` (WATCHDOG=1 pings from
//! the event loop, at least twice per period), `ExecReload` (RELOADING=1 with MONOTONIC_USEC, then
//! READY=1) and a clean stop (STOPPING=1, exit 0).

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    guard::{Reap, TempPath},
    serve::{free_port, try_get},
};
use nix::sys::signal::Signal;

/// The manager's end of the notify socket, removed on drop.
struct Manager {
    sock: UnixDatagram,
    file: TempPath,
}

impl Manager {
    fn bind() -> Manager {
        let file = TempPath::file(temp_file("sock"));
        let _ = std::fs::remove_file(file.path());
        let sock = UnixDatagram::bind(file.path()).expect("bind the notify socket");
        Manager { sock, file }
    }

    /// The next datagram, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .expect("set a read timeout");
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Datagrams until one contains `needle` (returned last), within `timeout`.
    fn until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            let hit = m.lines().any(|l| l == needle);
            seen.push(m);
            if hit {
                return seen;
            }
        }
        panic!("no {needle} within {timeout:?}; received {seen:?}");
    }
}

/// `oomlab-notify-<pid>.<ext>` in the temp dir.
fn temp_file(ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}.{ext}", common::unique("oomlab-notify")))
}

fn send(d: &Reap, sig: Signal) {
    common::signal(d.0.id() as i32, sig);
}

#[test]
fn ready_watchdog_reload_and_stop_reach_the_service_manager() {
    if !common::need_root("ready_watchdog_reload_and_stop_reach_the_service_manager") {
        return;
    }
    let manager = Manager::bind();
    let port = free_port();
    let config = TempPath::file(temp_file("toml"));
    std::fs::write(config.path(), format!("listen = \"127.0.0.1:{port}\"\n"))
        .expect("write config");
    // WatchdogSec=0.4s: the daemon must ping at least every 200 ms.
    let daemon = Reap(
        common::oomlab()
            .args(["serve", "--config"])
            .arg(config.path())
            .env("NOTIFY_SOCKET", manager.file.path())
            .env("WATCHDOG_USEC", "400000")
            .stdin(Stdio::null())
            .spawn()
            .expect("start oomlab serve"),
    );

    // Loading and attaching takes seconds under TCG in the VM matrix: a deadline, not a speed
    // check. Nothing but READY (with its STATUS) may come first.
    let first = manager.until("READY=1", Duration::from_secs(90));
    assert_eq!(first.len(), 1, "READY=1 is the first message: {first:?}");
    assert!(
        first[0].lines().any(|l| l.starts_with("STATUS=")),
        "READY carries a STATUS line: {first:?}"
    );
    // READY means serving: /healthz answers at once.
    let (status, body) = try_get(port, "/healthz", "").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz right after READY=1: {body}");

    // Pings over the next 1.2 s: at 200 ms that is 6; at least 3 even on a slow guest.
    let deadline = Instant::now() + Duration::from_millis(1200);
    let mut pings = 0;
    while let Some(m) = manager.recv(deadline.saturating_duration_since(Instant::now())) {
        assert!(
            m.lines().all(|l| l == "WATCHDOG=1"),
            "only pings while idle: {m:?}"
        );
        pings += 1;
    }
    assert!(
        pings >= 3,
        "{pings} WATCHDOG=1 pings in 1.2 s with WATCHDOG_USEC=400000"
    );

    // SIGHUP: RELOADING=1 with the monotonic timestamp systemd requires, then READY=1 again.
    send(&daemon, Signal::SIGHUP);
    let reload = manager.until("RELOADING=1", Duration::from_secs(20));
    let msg = reload.last().expect("the RELOADING message");
    let usec: u64 = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {msg:?}"))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    let now = stress_user::sys::monotonic().as_micros() as u64;
    assert!(
        usec <= now && now - usec < 20_000_000,
        "MONOTONIC_USEC {usec} is not CLOCK_MONOTONIC now ({now})"
    );
    manager.until("READY=1", Duration::from_secs(20));

    // SIGTERM: STOPPING=1, then a clean exit.
    send(&daemon, Signal::SIGTERM);
    manager.until("STOPPING=1", Duration::from_secs(10));
    let mut daemon = daemon;
    let status = daemon.0.wait().expect("wait for oomlab serve");
    assert!(status.success(), "oomlab serve exited with {status}");
}
