//! Processes by pidfd rather than by bare pid: a pid read from `/proc` or `cgroup.procs` can be
//! reused by an unrelated process before it is signalled, a pidfd cannot. Also the identity of
//! a process that outlives pid reuse (pid + start time), and the end of a whole process tree:
//! oomlab becomes a child subreaper, so every descendant of an app (even one that double-forks
//! and daemonizes) stays below oomlab, where it can be found and killed.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    thread,
    time::{Duration, Instant},
};

/// An open pidfd: signals go to the process it was opened on, or to nobody.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Opens a pidfd on `pid` (Linux ≥ 5.3). What `pid` names must then be checked to be the
    /// process meant (its parent, its start time, its cgroup): the pid may have been reused
    /// between reading it and opening it, never after.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just gave us and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGKILL to this very process (an exited one is not an error).
    pub fn kill(&self) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on our own descriptor, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// True once the process has exited (the pidfd polls readable).
    pub fn exited(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, no wait.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        rc > 0 && fds[0].revents & libc::POLLIN != 0
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and
/// parentheses: fields start after the last `)`): index 0 is the state, 1 the parent, 19 the
/// start time.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().collect())
}

fn read_stat(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/stat")).ok()
}

/// When the process started, in clock ticks since boot (field 22 of stat): with the pid, an
/// identity no reuse repeats. `None` when it is gone (or the field is unreadable).
pub fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&read_stat(pid)?)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

fn parse_ppid(stat: &str) -> Option<i32> {
    stat_fields(stat)?.get(1)?.parse().ok()
}

/// True while the process recorded as (`pid`, `started`) runs: a pidfd opened on `pid` whose
/// start time is `started` and that has not exited after the start time was read (so the
/// reading was of that process, not of one that reused the pid). A start time of 0 proves
/// nothing (no process starts at tick 0 after boot's first one), so it is not alive.
pub fn is_alive(pid: i32, started: u64) -> bool {
    if pid <= 0 || started == 0 {
        return false;
    }
    let Ok(fd) = PidFd::open(pid) else {
        return false;
    };
    start_time(pid) == Some(started) && !fd.exited()
}

/// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): an orphan below it is
/// re-parented to it instead of to init, so all its descendants stay findable from it.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: a plain prctl on this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Every process's parent, from `/proc`.
fn parents() -> HashMap<i32, i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parse_ppid(&read_stat(pid)?)?)))
        .collect()
}

/// The descendants of `root` in a parent map, parents before children.
fn descendants_in(parents: &HashMap<i32, i32>, root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &ppid) in parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Kills every process below this one and reaps those that end up its children, round after
/// round (a process forking while it is killed adds a round), until none is left or `timeout`
/// passes. Each is signalled through a pidfd, checked after opening to still hang below this
/// process, so a reused pid is never hit. Call it after the direct children oomlab waits for
/// have been reaped by their owners: the rest (orphans re-parented here, their children) are
/// reaped here. Returns how many processes were signalled, and whether none is left.
pub fn kill_descendants(timeout: Duration) -> (usize, bool) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + timeout;
    let mut killed: HashSet<i32> = HashSet::new();
    loop {
        let tree = parents();
        let below = descendants_in(&tree, me);
        if below.is_empty() {
            return (killed.len(), true);
        }
        let ours: HashSet<i32> = below.iter().copied().chain([me]).collect();
        for &pid in &below {
            let Ok(fd) = PidFd::open(pid) else { continue };
            // Opened on the process the scan saw only if it still hangs below us.
            let still_ours = read_stat(pid)
                .and_then(|s| parse_ppid(&s))
                .is_some_and(|pp| ours.contains(&pp));
            if still_ours && fd.kill().is_ok() {
                killed.insert(pid);
            }
            if tree.get(&pid) == Some(&me) || still_ours {
                // A child of ours by now (re-parented): reap it once it is gone.
                let mut st = 0;
                // SAFETY: WNOHANG wait for one pid; ECHILD (not ours) is harmless.
                unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            }
        }
        if Instant::now() >= deadline {
            return (killed.len(), descendants_in(&parents(), me).is_empty());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_hostile_names() {
        // A comm with a space and a parenthesis, as /proc prints it.
        let stat =
            "4242 (a b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_ppid(stat), Some(17));
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn descendants_follow_the_tree_only() {
        let parents: HashMap<i32, i32> = [(2, 1), (3, 2), (4, 3), (5, 1), (6, 9), (7, 6)]
            .into_iter()
            .collect();
        let mut d = descendants_in(&parents, 2);
        d.sort_unstable();
        assert_eq!(d, [3, 4]);
        let mut all = descendants_in(&parents, 1);
        all.sort_unstable();
        assert_eq!(all, [2, 3, 4, 5]);
        assert!(descendants_in(&parents, 4).is_empty());
    }

    #[test]
    fn liveness_is_pid_and_start_time() {
        let me = std::process::id() as i32;
        let started = start_time(me).expect("own start time");
        assert!(is_alive(me, started));
        // Same pid, another start: a reused pid.
        assert!(!is_alive(me, started + 1));
        // No start time recorded proves nothing.
        assert!(!is_alive(me, 0));
        assert!(!is_alive(0, started));
        assert!(!is_alive(-1, started));
    }

    #[test]
    fn a_pidfd_sees_its_process_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let fd = PidFd::open(child.id() as i32).expect("pidfd");
        assert!(!fd.exited());
        fd.kill().expect("killed");
        child.wait().expect("reaped");
        assert!(fd.exited());
        // Signalling a process that is gone is no error.
        fd.kill().expect("no error once gone");
    }
}
