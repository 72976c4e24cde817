//! Worker processes: the agent re-executes its own binary (`oomlab __worker`) so that each worker
//! is a fresh process that joins the target cgroup before it allocates a byte, dies with the
//! agent, and holds its memory asleep. The agent steers it over a pipe.
//!
//! Protocol, one line per message. Agent → worker (stdin): `T <bytes>` (hold this much),
//! `Q` (release and exit); end of file means the agent is gone. Worker → agent (stdout):
//! `R` (ready, nothing allocated yet), `H <bytes>` (holding this much so far), `D <bytes>`
//! (reached the last target), `E <message>` (an allocation failed; holding what it has).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use super::alloc::{page_align, AllocOptions, Fill, Kind, Region};

/// Arguments of the hidden `oomlab __worker` subcommand (written by `WorkerSpec::command`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long, value_enum)]
    pub fill: Fill,
    #[arg(long)]
    pub thp: bool,
    #[arg(long)]
    pub mlock: bool,
    /// Re-touch every page this often (milliseconds).
    #[arg(long)]
    pub redirty_ms: Option<u64>,
    /// Largest single allocation, so a shrinking target can give memory back in pieces.
    #[arg(long)]
    pub chunk: usize,
    /// Where `--kind file` puts its unlinked file.
    #[arg(long)]
    pub file_dir: PathBuf,
}

/// Everything needed to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub exe: PathBuf,
    pub args: WorkerArgs,
    /// The target's `cgroup.procs`, written by the child before exec.
    pub cgroup_procs: PathBuf,
    pub oom_score_adj: Option<i32>,
}

/// The agent's handle on a running worker.
#[derive(Debug)]
pub struct Worker {
    pub child: Child,
    pub pid: i32,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    buf: Vec<u8>,
    /// Bytes the worker last said it holds.
    pub held: u64,
    /// The last target sent.
    pub target: Option<u64>,
    /// The worker reported holding exactly `target`.
    pub done: bool,
    pub ready: bool,
    /// Its stdout closed: it exited (or is exiting).
    pub eof: bool,
}

/// What a worker said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready,
    Holding(u64),
    Done(u64),
    Error(String),
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", p.display())))
}

/// `open(2)` + `write(2)` only: safe between fork and exec.
fn write_raw(path: &CString, data: &[u8]) -> io::Result<()> {
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

impl WorkerSpec {
    fn command(&self) -> Command {
        let a = &self.args;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("__worker")
            .args(["--kind", a.kind.as_str()])
            .args([
                "--fill",
                match a.fill {
                    Fill::Zero => "zero",
                    Fill::Random => "random",
                },
            ])
            .args(["--chunk", &a.chunk.to_string()])
            .arg("--file-dir")
            .arg(&a.file_dir);
        if a.thp {
            cmd.arg("--thp");
        }
        if a.mlock {
            cmd.arg("--mlock");
        }
        if let Some(ms) = a.redirty_ms {
            cmd.args(["--redirty-ms", &ms.to_string()]);
        }
        cmd
    }

    /// Starts a worker inside the target cgroup. Between fork and exec the child: asks to be
    /// SIGKILLed when the agent dies and checks the agent did not die already; joins the cgroup
    /// (before exec, so the new image's every page is charged there); sets its oom_score_adj;
    /// and leaves the agent's process group, so a terminal's Ctrl-C reaches only the agent,
    /// which then releases everything in order.
    pub fn spawn(&self) -> io::Result<Worker> {
        let procs = cstring(&self.cgroup_procs)?;
        let adj_path = CString::new("/proc/self/oom_score_adj").expect("no NUL in a literal");
        let adj = self.oom_score_adj.map(|a| format!("{a}\n").into_bytes());
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = self.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: the closure only makes async-signal-safe syscalls and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                write_raw(&procs, b"0\n")?;
                if let Some(adj) = &adj {
                    write_raw(&adj_path, adj)?;
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        // SAFETY: setting O_NONBLOCK on a descriptor we own.
        unsafe {
            let fd = stdout.as_raw_fd();
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let pid = child.id() as i32;
        Ok(Worker {
            child,
            pid,
            stdin: Some(stdin),
            stdout,
            buf: Vec::new(),
            held: 0,
            target: None,
            done: false,
            ready: false,
            eof: false,
        })
    }
}

impl Worker {
    pub fn stdout_fd(&self) -> i32 {
        self.stdout.as_raw_fd()
    }

    /// Asks the worker to hold `bytes` (no-op when that is already the target).
    pub fn set_target(&mut self, bytes: u64) {
        let bytes = page_align(bytes as usize) as u64;
        if self.target == Some(bytes) {
            return;
        }
        self.target = Some(bytes);
        self.done = false;
        if let Some(stdin) = &mut self.stdin {
            if writeln!(stdin, "T {bytes}").is_err() {
                // The worker is gone; its exit is reported by the caller's wait.
                self.stdin = None;
            }
        }
    }

    /// Reads whatever the worker has written so far, without blocking.
    pub fn read_reports(&mut self) -> Vec<Report> {
        let mut tmp = [0u8; 4096];
        loop {
            match self.stdout.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.eof = true;
                    break;
                }
            }
        }
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Some(r) = parse_report(String::from_utf8_lossy(&line).trim()) {
                match &r {
                    Report::Ready => self.ready = true,
                    Report::Holding(b) => self.held = *b,
                    Report::Done(b) => {
                        self.held = *b;
                        self.done = self.target == Some(*b);
                    }
                    Report::Error(_) => {}
                }
                out.push(r);
            }
        }
        out
    }

    /// SIGKILL and reap (releasing everything it held).
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn parse_report(line: &str) -> Option<Report> {
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "R" => Some(Report::Ready),
        "H" => rest.trim().parse().ok().map(Report::Holding),
        "D" => rest.trim().parse().ok().map(Report::Done),
        "E" => Some(Report::Error(rest.to_string())),
        _ => None,
    }
}

/// What the agent asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Target(u64),
    Quit,
}

pub fn parse_command(line: &str) -> Option<Order> {
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "T" => rest.trim().parse().ok().map(Order::Target),
        "Q" => Some(Order::Quit),
        _ => None,
    }
}

/// The worker side: runs in the child after exec. Returns the exit code.
pub fn worker_main(args: WorkerArgs) -> i32 {
    // SAFETY: fds 0 and 1 are the pipes the agent set up and nothing else in this process uses.
    let mut stdin = unsafe { File::from_raw_fd(0) };
    let mut stdout = unsafe { File::from_raw_fd(1) };
    let say = |out: &mut File, msg: String| {
        // The agent reads lines; if it is gone, PDEATHSIG ends us shortly.
        let _ = out.write_all(msg.as_bytes());
    };
    let opts = AllocOptions {
        thp: args.thp,
        fill: args.fill,
        mlock: args.mlock,
    };
    let chunk = page_align(args.chunk.max(1));
    let redirty = args.redirty_ms.map(Duration::from_millis);
    let mut next_redirty = redirty.map(|d| Instant::now() + d);
    let mut regions: Vec<Region> = Vec::new();
    let mut held: usize = 0;
    let mut target: usize = 0;
    let mut pending_done = false;
    let mut inbuf: Vec<u8> = Vec::new();
    say(&mut stdout, "R\n".into());
    loop {
        let timeout_ms: i32 = if held != target {
            0
        } else if let Some(at) = next_redirty {
            at.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        } else {
            -1
        };
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if n > 0 && pfd.revents != 0 {
            let mut tmp = [0u8; 1024];
            match stdin.read(&mut tmp) {
                // The agent is gone: release and leave (PDEATHSIG would end us anyway).
                Ok(0) | Err(_) => return 0,
                Ok(k) => inbuf.extend_from_slice(&tmp[..k]),
            }
            while let Some(nl) = inbuf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = inbuf.drain(..=nl).collect();
                match parse_command(String::from_utf8_lossy(&line).trim()) {
                    Some(Order::Target(t)) => {
                        target = page_align(t as usize);
                        pending_done = true;
                    }
                    Some(Order::Quit) => return 0,
                    None => {}
                }
            }
        }
        if held < target {
            let len = chunk.min(target - held);
            match Region::new(args.kind, len, opts, &args.file_dir) {
                Ok(r) => {
                    held += r.len();
                    regions.push(r);
                    say(&mut stdout, format!("H {held}\n"));
                }
                Err(e) => {
                    say(
                        &mut stdout,
                        format!("E allocating {len} bytes of {}: {e}\n", args.kind.as_str()),
                    );
                    // Hold what we have; the agent decides what comes next.
                    target = held;
                }
            }
        } else if held > target {
            while let Some(last) = regions.last() {
                if held - last.len() >= target {
                    held -= last.len();
                    regions.pop();
                } else {
                    break;
                }
            }
            if held > target {
                let last = regions.last_mut().expect("held > 0 means a region");
                let keep = last.len() - (held - target);
                if let Err(e) = last.truncate(keep) {
                    say(&mut stdout, format!("E shrinking: {e}\n"));
                }
                held = regions.iter().map(Region::len).sum();
            }
            say(&mut stdout, format!("H {held}\n"));
        }
        if held == target && pending_done {
            pending_done = false;
            say(&mut stdout, format!("D {held}\n"));
        }
        if let (Some(at), Some(every)) = (next_redirty, redirty) {
            if Instant::now() >= at {
                for r in &regions {
                    r.touch();
                }
                next_redirty = Some(Instant::now() + every);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        assert_eq!(parse_report("R"), Some(Report::Ready));
        assert_eq!(parse_report("H 4096"), Some(Report::Holding(4096)));
        assert_eq!(parse_report("D 8192"), Some(Report::Done(8192)));
        assert_eq!(
            parse_report("E no memory"),
            Some(Report::Error("no memory".into()))
        );
        assert_eq!(parse_report("H x"), None);
        assert_eq!(parse_command("T 100"), Some(Order::Target(100)));
        assert_eq!(parse_command("Q"), Some(Order::Quit));
        assert_eq!(parse_command("?"), None);
    }
}
