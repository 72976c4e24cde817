//! Worker processes: the agent re-executes its own binary (`oomlab __worker`) so that each worker
//! is a fresh process that joins the target cgroup before it allocates a byte, dies with the
//! agent, and holds its memory asleep. The agent steers it over a pipe.
//!
//! Protocol, one line per message. Agent → worker (stdin): `T <bytes>` (hold this much),
//! `Q` (release and exit); end of file means the agent is gone. Worker → agent (stdout):
//! `R` (ready, nothing allocated yet), `H <bytes>` (holding this much so far), `D <bytes>`
//! (reached the last target), `E <message>` (an allocation failed; holding what it has).

use std::{
    ffi::OsString,
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd},
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant},
};

use super::{
    alloc::{AllocOptions, Fill, Kind, Region},
    spawn::{spawn, Birth, Child, Io, SpawnOptions},
};
use crate::sys::page_align;

/// Arguments of the hidden `oomlab __worker` subcommand (written by `WorkerSpec::argv`).
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
    /// The target's directory: `cgroup.procs` there is written by the child before exec, or
    /// (v2) the child is created inside it with clone3(CLONE_INTO_CGROUP).
    pub cgroup_dir: PathBuf,
    /// cgroup v2: try clone3(CLONE_INTO_CGROUP) first.
    pub clone_into_cgroup: bool,
    pub oom_score_adj: Option<i32>,
}

/// The agent's handle on a running worker.
#[derive(Debug)]
pub struct Worker {
    pub pid: i32,
    pub birth: Birth,
    child: Child,
    stdin: Option<File>,
    stdout: File,
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

impl WorkerSpec {
    /// `oomlab __worker …`, without the program name.
    fn argv(&self) -> Vec<OsString> {
        let a = &self.args;
        let mut v: Vec<OsString> = vec!["__worker".into(), "--kind".into(), a.kind.as_str().into()];
        v.push("--fill".into());
        v.push(
            match a.fill {
                Fill::Zero => "zero",
                Fill::Random => "random",
            }
            .into(),
        );
        v.push("--chunk".into());
        v.push(a.chunk.to_string().into());
        v.push("--file-dir".into());
        v.push(a.file_dir.clone().into());
        if a.thp {
            v.push("--thp".into());
        }
        if a.mlock {
            v.push("--mlock".into());
        }
        if let Some(ms) = a.redirty_ms {
            v.push("--redirty-ms".into());
            v.push(ms.to_string().into());
        }
        v
    }

    /// Starts a worker inside the target: on cgroup v2 created there by clone3
    /// (CLONE_INTO_CGROUP) when the kernel has it, otherwise by joining before exec.
    pub fn spawn(&self) -> io::Result<Worker> {
        let child = spawn(&SpawnOptions {
            program: self.exe.clone(),
            args: self.argv(),
            cgroup_dir: self.cgroup_dir.clone(),
            clone_into_cgroup: self.clone_into_cgroup,
            oom_score_adj: self.oom_score_adj,
            own_process_group: true,
            stdin: Io::Pipe,
            stdout: Io::Pipe,
        })?;
        Worker::new(child)
    }
}

impl Worker {
    fn new(mut child: Child) -> io::Result<Worker> {
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("a worker needs both pipes"));
        };
        // SAFETY: setting O_NONBLOCK on a descriptor we own.
        unsafe {
            let fd = stdout.as_raw_fd();
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(Worker {
            pid: child.pid(),
            birth: child.birth,
            child,
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

    /// The exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        self.child.wait().ok()
    }

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
        self.wait();
    }
}

/// A worker never outlives its handle: whatever path the agent leaves by (an error included),
/// the memory is released.
impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
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
