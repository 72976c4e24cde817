//! Helpers shared by the root integration tests: root check, the test cgroup parent, and a
//! `/dev/kmsg` cursor to compare oomlab's reports with the kernel's own log.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    fs::File,
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

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

/// The victim's pid in a kernel `Killed process <pid> (<comm>) …` message.
pub fn killed_pid(msg: &str) -> Option<i32> {
    msg.split("Killed process ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads new `/dev/kmsg` records from the moment it was opened.
pub struct Kmsg {
    file: File,
    /// Messages read by `collect` beyond the ones it returned, handed out first next time.
    held: Vec<String>,
}

impl Kmsg {
    pub fn open_at_end() -> Kmsg {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg");
        file.seek(SeekFrom::End(0))
            .expect("seek /dev/kmsg to its end");
        Kmsg {
            file,
            held: Vec::new(),
        }
    }

    /// The messages (text after `;`) logged since open or the last call.
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = std::mem::take(&mut self.held);
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, msg)) = rec.split_once(';') {
                        out.push(msg.lines().next().unwrap_or_default().to_string());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten; carry on from the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) => panic!("reading /dev/kmsg: {e}"),
            }
        }
        out
    }

    /// The first `n` messages containing `needle`, in order, waiting up to `timeout` for them;
    /// fewer if the deadline passes. Messages not looked at are kept for the next call.
    pub fn collect(&mut self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut found = Vec::new();
        loop {
            let mut msgs = self.drain().into_iter();
            for m in msgs.by_ref() {
                if m.contains(needle) {
                    found.push(m);
                    if found.len() == n {
                        break;
                    }
                }
            }
            self.held = msgs.collect();
            if found.len() >= n || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout` for a message containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            seen.extend(self.drain());
            if let Some(m) = seen.iter().find(|m| m.contains(needle)) {
                return Some(m.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
