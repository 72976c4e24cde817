//! Facts about the running system that every layer may use — the page size, the clock the
//! kernel stamps its events with, the node's memory from `/proc/meminfo` — so that no layer has
//! to import a sibling's internals to learn them.

use std::{fs, io, sync::OnceLock, time::Duration};

/// The kernel's page size: `dump_tasks` and `memory.stat` count in it, regions are aligned to
/// it. 4096 when `sysconf` cannot tell (x86-64 and most arm64 kernels).
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .filter(|&p| p > 0)
            .unwrap_or(4096)
    })
}

/// Rounds up to a whole number of pages.
pub fn page_align(len: usize) -> usize {
    let page = usize::try_from(page_size()).unwrap_or(4096);
    len.div_ceil(page).saturating_mul(page)
}

/// CLOCK_MONOTONIC, the clock of the kernel's event timestamps (`bpf_ktime_get_ns`).
pub fn monotonic() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into; CLOCK_MONOTONIC always exists.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// [`monotonic`] in nanoseconds.
pub fn monotonic_ns() -> u64 {
    u64::try_from(monotonic().as_nanos()).unwrap_or(u64::MAX)
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`; `None` once it
/// is gone.
pub fn process_cpu(pid: i32) -> Option<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&text, clock_ticks())
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// `utime + stime` (fields 14 and 15; the comm before them may hold spaces and parentheses).
fn parse_stat_cpu(text: &str, hz: u64) -> Option<Duration> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64))
}

/// The comm every `oomlab __worker` gives itself when it starts, so that a tracer, in any
/// process, can tell a worker victim by the kernel's own event.
pub const WORKER_COMM: &str = "oomlab-worker";

/// Sets the calling thread's comm (`prctl(PR_SET_NAME)`; the kernel keeps the first 15 bytes).
/// The main thread's comm is the process's name in `/proc/PID/comm`, the tracepoints and the
/// kernel's OOM report.
pub fn set_comm(name: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a comm cannot hold NUL"))?;
    // SAFETY: PR_SET_NAME reads at most 16 bytes of a NUL-terminated string that outlives the
    // call.
    if unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The lines of `/proc/meminfo` oomlab reads, in KiB; a missing line is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kb: Option<u64>,
    pub available_kb: Option<u64>,
    pub swap_total_kb: Option<u64>,
}

impl MemInfo {
    pub fn read() -> io::Result<Self> {
        fs::read_to_string("/proc/meminfo").map(|t| Self::parse(&t))
    }

    /// Unknown lines and unparsable values are skipped, not errors: the file grows with kernels.
    pub fn parse(text: &str) -> Self {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.strip_prefix(':')?;
                rest.trim().trim_end_matches("kB").trim().parse().ok()
            })
        };
        MemInfo {
            total_kb: field("MemTotal"),
            available_kb: field("MemAvailable"),
            swap_total_kb: field("SwapTotal"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_lines() {
        let m = MemInfo::parse(
            "MemTotal:       24576000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n\
             SwapTotal:             0 kB\nMemTotalx: 9 kB\n",
        );
        assert_eq!(m.total_kb, Some(24_576_000));
        assert_eq!(m.available_kb, Some(20_000_000));
        assert_eq!(m.swap_total_kb, Some(0));
        assert_eq!(MemInfo::parse("MemTotal: x kB\n"), MemInfo::default());
    }

    #[test]
    fn stat_cpu() {
        let line = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_cpu(line, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
        assert!(process_cpu(std::process::id() as i32).is_some());
    }

    #[test]
    fn page_size_and_align() {
        let p = page_size();
        assert!(p.is_power_of_two() && p >= 4096);
        let p = p as usize;
        assert_eq!(page_align(1), p);
        assert_eq!(page_align(p), p);
        assert_eq!(page_align(0), 0);
    }

    #[test]
    fn set_comm_rejects_nul() {
        assert!(set_comm("a\0b").is_err());
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
