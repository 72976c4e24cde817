//! A `/dev/kmsg` cursor, to compare oomlab's reports with the kernel's own log.

use std::{
    fs::File,
    io::{ErrorKind, Read, Seek, SeekFrom},
    os::unix::fs::OpenOptionsExt,
    time::{Duration, Instant},
};

/// The victim's pid in a kernel `Killed process <pid> (<comm>) …` message.
pub(crate) fn killed_pid(msg: &str) -> Option<i32> {
    msg.split("Killed process ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads new `/dev/kmsg` records from the moment it was opened.
pub(crate) struct Kmsg {
    file: File,
    /// Messages read by `collect` beyond the ones it returned, handed out first next time.
    held: Vec<String>,
}

impl Kmsg {
    pub(crate) fn open_at_end() -> Kmsg {
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

    /// The records logged since open or the last read, whole, one string each.
    fn read_records(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten; carry on from the next one.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) => panic!("reading /dev/kmsg: {e}"),
            }
        }
        out
    }

    /// The messages (text after `;`) logged since open or the last call.
    pub(crate) fn drain(&mut self) -> Vec<String> {
        let mut out = std::mem::take(&mut self.held);
        for rec in self.read_records() {
            if let Some((_, msg)) = rec.split_once(';') {
                out.push(msg.lines().next().unwrap_or_default().to_string());
            }
        }
        out
    }

    /// Every record logged since open, whole (`PRIO,SEQ,TS,FLAGS;MSG` and its ` KEY=VALUE`
    /// lines), as `dd if=/dev/kmsg` would save them. Messages `drain` has read are not in it.
    pub(crate) fn records(&mut self) -> String {
        self.read_records().concat()
    }

    /// The first `n` messages containing `needle`, in order, waiting up to `timeout` for them;
    /// fewer if the deadline passes. Messages not looked at are kept for the next call.
    pub(crate) fn collect(&mut self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
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

    /// Whether the kernel printed the `oom-kill:` summary of an OOM report for `pid` (waiting
    /// up to 2 s): the kernel ratelimits its OOM reports (10 per 5 s, node-wide; the `Killed
    /// process` line is always printed), and without a report no constraint is known.
    pub(crate) fn reported(&mut self, pid: i64) -> bool {
        self.wait_for(&format!(",pid={pid},uid="), Duration::from_secs(2))
            .is_some()
    }

    /// Waits up to `timeout` for a message containing `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        self.collect(needle, 1, timeout).pop()
    }
}
