//! What the trace and overhead benches share: a tracer (oomlab or bpftrace) run as a child with
//! its stdout read on a thread, its CPU and RSS from /proc, and the report helpers.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::Receiver,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// A process started through `sh -c 'ulimit -l unlimited; exec …'` (the same for both tools),
/// its stdout read line by line on a thread.
pub(super) struct Traced {
    child: Child,
    lines: Receiver<String>,
}

impl Traced {
    pub(super) fn start(cmdline: &str) -> Result<Traced> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -l unlimited 2>/dev/null; exec {cmdline}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmdline}"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Traced { child, lines: rx })
    }

    /// Seconds until a line containing `needle`.
    pub(super) fn until(&self, needle: &str, started: Instant) -> Result<f64> {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .context("no ready line within 30 s")?;
            if line.contains(needle) {
                return Ok(started.elapsed().as_secs_f64());
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak RSS (VmHWM) in MiB.
    pub(super) fn peak_rss_mib(&self) -> f64 {
        fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// CPU seconds (user + system) the process has used so far (/proc/PID/stat fields 14, 15).
    pub(super) fn cpu_secs(&self) -> f64 {
        let stat =
            fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let f: Vec<f64> = after_comm
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        if f.len() == 2 && hz > 0.0 {
            (f[0] + f[1]) / hz
        } else {
            f64::NAN
        }
    }

    /// SIGTERM, wait (SIGKILL after 10 s: bpftrace 0.17 was seen to sit in epoll_wait for
    /// minutes after a SIGTERM), then every remaining line.
    pub(super) fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let comm =
                fs::read_to_string(format!("/proc/{}/comm", self.child.id())).unwrap_or_default();
            eprintln!(
                "bench: pid {} ({}) ignored SIGTERM for 10 s; killed",
                self.child.id(),
                comm.trim()
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let mut rest = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(3)) {
            rest.push(l);
        }
        rest
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints a line of the report as it comes, and keeps it for the summary.
pub(super) fn say(report: &mut Vec<String>, line: String) {
    println!("{line}");
    report.push(line);
}

/// CPU seconds the children of this process have used (RUSAGE_CHILDREN: the eBPF programs run
/// in the workload's context, so their cost shows up there).
pub(super) fn children_cpu() -> f64 {
    // SAFETY: an all-zero rusage is valid, and getrusage only writes into the one we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Resident set in MiB (VmRSS) of a live process.
pub(super) fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The running kernel, for the summary line.
pub(super) fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| format!("kernel {}", s.trim()))
        .unwrap_or_else(|_| "kernel ?".into())
}

/// A sysctl (a `/proc/sys` file) set for a bench's run and put back as it was on drop.
pub(super) struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    /// Writes `value(old)` to `path`; `what` says in an error what the file is for.
    pub(super) fn set(
        path: &'static str,
        what: &str,
        value: impl FnOnce(&str) -> String,
    ) -> Result<Sysctl> {
        let old = fs::read_to_string(path)
            .with_context(|| format!("reading {path} ({what})"))?
            .trim()
            .to_string();
        let new = value(&old);
        fs::write(path, &new).with_context(|| format!("writing {new} to {path} (root?)"))?;
        Ok(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(self.path, &self.old) {
            eprintln!(
                "bench: could not put {} back to {:?}: {e}",
                self.path, self.old
            );
        }
    }
}
