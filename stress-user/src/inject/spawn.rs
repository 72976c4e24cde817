//! Starting a process inside a cgroup, for a worker and an app alike: created there by
//! clone3(CLONE_INTO_CGROUP) when asked and the kernel has it, otherwise forked and joined to the
//! cgroup before exec. Either way it dies with oomlab and has its oom_score_adj before it runs.

use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::ExitStatus,
};

use nix::fcntl::OFlag;

use crate::process::PidFd;

const ADJ_PATH: &CStr = c"/proc/self/oom_score_adj";

/// Where one of the child's standard streams goes; its stderr is always oomlab's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// A pipe whose other end the [`Child`] holds.
    Pipe,
    /// /dev/null.
    Null,
}

/// What to start, where, and how.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// Looked up in `PATH` when it has no `/`.
    pub program: PathBuf,
    /// The arguments after the program name.
    pub args: Vec<OsString>,
    /// The cgroup's directory: the child is created inside it, or writes its `cgroup.procs`
    /// before exec (so the new image's every page is charged there).
    pub cgroup_dir: PathBuf,
    /// cgroup v2: try clone3(CLONE_INTO_CGROUP) first, so not even the pages the child touches
    /// before exec are charged elsewhere.
    pub clone_into_cgroup: bool,
    pub oom_score_adj: Option<i32>,
    /// Leave oomlab's process group, so a terminal's Ctrl-C reaches only oomlab, which then
    /// releases everything in order.
    pub own_process_group: bool,
    pub stdin: Io,
    pub stdout: Io,
}

/// How a process got into its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Birth {
    /// Created inside it: clone3(CLONE_INTO_CGROUP), cgroup v2, Linux ≥ 5.7.
    Clone3,
    /// Wrote itself into cgroup.procs between fork and exec.
    Join,
}

/// A started process, waited for by pid and signalled through a pidfd.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// Opened while the child was not yet reaped (so on this very process); `None` before
    /// Linux 5.3, where the unreaped pid is still ours alone.
    pidfd: Option<PidFd>,
    pub birth: Birth,
    /// The write end of its stdin, with [`Io::Pipe`].
    pub stdin: Option<File>,
    /// The read end of its stdout, with [`Io::Pipe`].
    pub stdout: Option<File>,
    /// Set once reaped.
    status: Option<ExitStatus>,
}

impl Child {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn reap(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        while self.status.is_none() {
            let mut st: libc::c_int = 0;
            // SAFETY: waiting for our own child.
            let rc = unsafe { libc::waitpid(self.pid, &mut st, flags) };
            if rc == self.pid {
                self.status = Some(ExitStatus::from_raw(st));
            } else if rc == 0 {
                break;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
        Ok(self.status)
    }

    /// The exit status if it has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.reap(0)?
            .ok_or_else(|| io::Error::other("waitpid returned without a status"))
    }

    /// SIGKILL, unless it was reaped already (then its pid may be another process's).
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        if let Some(fd) = &self.pidfd {
            return fd.kill();
        }
        // SAFETY: our own child, not yet reaped, so the pid is still ours.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Starts the process: created inside the cgroup by clone3 when `clone_into_cgroup` is set and
/// the kernel has it, otherwise forked and joined to it. Returns once it has exec'd; an error
/// of the child's (joining, the adj, exec) comes back as this call's error.
pub fn spawn(opts: &SpawnOptions) -> io::Result<Child> {
    spawn_gated(opts, None)
}

/// As [`spawn`], and `born` is called with the child's pid while the child waits, before it
/// joins the cgroup (or, born inside it, before it execs): whatever `born` records about the
/// pid is in place before the child can charge the cgroup, and so before the OOM killer can
/// pick it — a worker respawned into a full cgroup may be killed during its own exec.
pub fn spawn_noting(opts: &SpawnOptions, born: &mut dyn FnMut(i32)) -> io::Result<Child> {
    spawn_gated(opts, Some(born))
}

fn spawn_gated(opts: &SpawnOptions, born: Option<&mut dyn FnMut(i32)>) -> io::Result<Child> {
    let (prepared, mut ends) = Prepared::new(opts, born.is_some())?;
    let (pid, birth) = if opts.clone_into_cgroup {
        let cgroup = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&opts.cgroup_dir)?;
        match prepared.clone_into(&cgroup) {
            Ok(pid) => (pid, Birth::Clone3),
            // No clone3 (< 5.3) or no CLONE_INTO_CGROUP (< 5.7): join instead.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)
                ) =>
            {
                log::info!(
                    "clone3(CLONE_INTO_CGROUP) unavailable ({e}); processes join the cgroup instead"
                );
                (prepared.fork_joining()?, Birth::Join)
            }
            Err(e) => return Err(e),
        }
    } else {
        (prepared.fork_joining()?, Birth::Join)
    };
    if let (Some(born), Some(mut gate)) = (born, ends.gate.take()) {
        born(pid);
        // The child goes on at this byte (or at end of file, should the write fail).
        let _ = io::Write::write_all(&mut gate, b"g");
    }
    // The child's ends close here, so the report pipe reads end of file once it has exec'd.
    drop(prepared);
    ends.wait_for_exec(pid, birth)
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", Path::new(s).display())))
}

/// The child's end and oomlab's end of one standard stream.
fn stream(io: Io, child_reads: bool) -> io::Result<(OwnedFd, Option<File>)> {
    match io {
        Io::Null => {
            let null = File::options()
                .read(child_reads)
                .write(!child_reads)
                .open("/dev/null")?;
            Ok((null.into(), None))
        }
        Io::Pipe => {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            Ok(if child_reads {
                (read, Some(write.into()))
            } else {
                (write, Some(read.into()))
            })
        }
    }
}

/// Everything the child needs, made before it exists: between fork and exec it may only make
/// async-signal-safe syscalls on memory prepared here.
struct Prepared {
    /// Keeps the strings `argv` points into alive.
    _args: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    procs: CString,
    adj: Option<Vec<u8>>,
    parent: libc::pid_t,
    own_process_group: bool,
    stdin: OwnedFd,
    stdout: OwnedFd,
    /// Write end of the pipe that carries the child's errno if it fails before exec.
    report: OwnedFd,
    /// Read end of the pipe the child waits on until its parent has noted its pid.
    gate: Option<OwnedFd>,
}

/// oomlab's ends of the child's pipes.
struct Ends {
    stdin: Option<File>,
    stdout: Option<File>,
    report: File,
    gate: Option<File>,
}

impl Prepared {
    fn new(opts: &SpawnOptions, gated: bool) -> io::Result<(Prepared, Ends)> {
        let mut args = vec![cstring(opts.program.as_os_str())?];
        for a in &opts.args {
            args.push(cstring(a)?);
        }
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|c| c.as_ptr()).collect();
        argv.push(std::ptr::null());
        let (stdin, stdin_end) = stream(opts.stdin, true)?;
        let (stdout, stdout_end) = stream(opts.stdout, false)?;
        let (report_end, report) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (gate, gate_end) = match gated {
            true => {
                let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
                (Some(read), Some(File::from(write)))
            }
            false => (None, None),
        };
        let prepared = Prepared {
            _args: args,
            argv,
            procs: cstring(opts.cgroup_dir.join("cgroup.procs").as_os_str())?,
            adj: opts.oom_score_adj.map(|a| format!("{a}\n").into_bytes()),
            parent: std::process::id() as libc::pid_t,
            own_process_group: opts.own_process_group,
            stdin,
            stdout,
            report,
            gate,
        };
        let ends = Ends {
            stdin: stdin_end,
            stdout: stdout_end,
            report: report_end.into(),
            gate: gate_end,
        };
        Ok((prepared, ends))
    }

    /// cgroup v2: the child is created inside `cgroup` (a directory fd).
    fn clone_into(&self, cgroup: &File) -> io::Result<i32> {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: cgroup.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM is a fork; the child only runs `exec`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                size_of::<CloneArgs>(),
            )
        };
        match pid {
            // SAFETY: in the child, see `exec`.
            0 => unsafe { self.exec(false) },
            p if p < 0 => Err(io::Error::last_os_error()),
            p => Ok(p as i32),
        }
    }

    /// A plain fork; the child joins the cgroup itself.
    fn fork_joining(&self) -> io::Result<i32> {
        // SAFETY: the child only runs `exec`.
        match unsafe { libc::fork() } {
            // SAFETY: in the child, see `exec`.
            0 => unsafe { self.exec(true) },
            p if p < 0 => Err(io::Error::last_os_error()),
            p => Ok(p),
        }
    }

    /// In the child: set up, then exec, or send the errno up the report pipe and exit.
    ///
    /// # Safety
    /// Only between fork and exec: it makes async-signal-safe syscalls only and allocates
    /// nothing.
    unsafe fn exec(&self, join: bool) -> ! {
        let err = match self.set_up(join) {
            Ok(()) => {
                libc::execvp(self.argv[0], self.argv.as_ptr());
                io::Error::last_os_error()
            }
            Err(e) => e,
        };
        let code = err.raw_os_error().unwrap_or(libc::EINVAL).to_ne_bytes();
        libc::write(self.report.as_raw_fd(), code.as_ptr().cast(), code.len());
        libc::_exit(127)
    }

    /// Puts the streams in place and resets the signal state as `std::process::Command` does
    /// (Rust ignores SIGPIPE; a child must not inherit that). Then: asks to be SIGKILLed when
    /// oomlab dies and checks oomlab did not die already; waits at the gate, if any, for the
    /// parent to note its pid; joins the cgroup; sets the adj; and leaves oomlab's process group
    /// if asked.
    unsafe fn set_up(&self, join: bool) -> io::Result<()> {
        dup_onto(&self.stdin, 0)?;
        dup_onto(&self.stdout, 1)?;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if libc::signal(libc::SIGPIPE, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != self.parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        if let Some(gate) = &self.gate {
            // Until the parent has noted the pid; a dead parent means SIGKILL (above).
            let mut byte = 0u8;
            while libc::read(gate.as_raw_fd(), (&raw mut byte).cast(), 1) < 0
                && *libc::__errno_location() == libc::EINTR
            {}
        }
        if join {
            write_raw(&self.procs, b"0\n")?;
        }
        if let Some(adj) = &self.adj {
            write_raw(ADJ_PATH, adj)?;
        }
        if self.own_process_group && libc::setpgid(0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Ends {
    /// Waits until the child has exec'd (the report pipe closes) or reported why it could not.
    fn wait_for_exec(self, pid: i32, birth: Birth) -> io::Result<Child> {
        let mut child = Child {
            pid,
            pidfd: PidFd::open(pid).ok(),
            birth,
            stdin: self.stdin,
            stdout: self.stdout,
            status: None,
        };
        let mut report = self.report;
        let mut code = [0u8; 4];
        let read = loop {
            match report.read(&mut code) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match read {
            Ok(0) => Ok(child),
            Ok(_) => {
                let _ = child.wait();
                Err(io::Error::from_raw_os_error(i32::from_ne_bytes(code)))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

/// `dup2`, clearing close-on-exec when the descriptor is already in place.
unsafe fn dup_onto(fd: &OwnedFd, to: libc::c_int) -> io::Result<()> {
    let rc = if fd.as_raw_fd() == to {
        libc::fcntl(to, libc::F_SETFD, 0)
    } else {
        libc::dup2(fd.as_raw_fd(), to)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `open(2)` + `write(2)` only: safe between fork and exec.
fn write_raw(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: async-signal-safe syscalls on a valid C string and buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n < 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// `struct clone_args` (linux/sched.h), up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};

    use super::*;
    use crate::cgroup::Hierarchy;

    fn options(program: &str, cgroup_dir: PathBuf) -> SpawnOptions {
        SpawnOptions {
            program: program.into(),
            args: Vec::new(),
            cgroup_dir,
            clone_into_cgroup: false,
            oom_score_adj: None,
            own_process_group: true,
            stdin: Io::Pipe,
            stdout: Io::Pipe,
        }
    }

    /// This process's own memory cgroup (joining it moves nothing), or `None`, said, without
    /// root.
    fn own_cgroup() -> Option<PathBuf> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: joining a cgroup needs root");
            return None;
        }
        Some(
            Hierarchy::detect()
                .and_then(|h| h.of_pid(std::process::id() as i32))
                .expect("own memory cgroup")
                .dir(),
        )
    }

    #[test]
    fn a_failed_join_is_the_spawn_error() {
        let err = spawn(&options("true", "/nonexistent-oomlab".into())).expect_err("no cgroup");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn the_child_runs_with_its_pipes_and_exec_errors_come_back() {
        let Some(own) = own_cgroup() else { return };
        let err = spawn(&options("/nonexistent-oomlab/prog", own.clone())).expect_err("no program");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

        let mut child = spawn(&options("cat", own)).expect("cat starts from PATH");
        assert_eq!(child.birth, Birth::Join);
        let mut stdin = child.stdin.take().expect("piped");
        writeln!(stdin, "hello").expect("write");
        drop(stdin);
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line, "hello\n");
        assert!(child.wait().expect("reaped").success());
        assert!(child.kill().is_ok(), "a reaped child is not signalled");
    }

    #[test]
    fn born_sees_the_pid_before_the_child_goes_on() {
        let Some(own) = own_cgroup() else { return };
        let mut opts = options("sleep", own);
        opts.args = vec!["5".into()];
        // A fork copies the calling thread's name.
        let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
        let me = me.trim_end().to_string();
        let mut seen = None;
        let mut child = spawn_noting(&opts, &mut |pid| {
            // Held at the gate: still a copy of this process, not yet `sleep`.
            std::thread::sleep(std::time::Duration::from_millis(50));
            seen = Some((pid, fs_comm(pid)));
        })
        .expect("sleep starts");
        let (pid, comm) = seen.expect("born was called");
        assert_eq!(pid, child.pid());
        assert_eq!(comm, me, "the child waited at the gate");
        assert_eq!(fs_comm(pid), "sleep", "and went on to exec");
        child.kill().expect("kill");
        child.wait().expect("reaped");
    }

    fn fs_comm(pid: i32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }
}
