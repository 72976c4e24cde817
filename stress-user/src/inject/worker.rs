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
    spawn::{spawn_noting, Birth, Child, Io, SpawnOptions},
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
    /// Be the pressure cycler instead (`inject::pressure::cycler`): `T` sizes the file set it
    /// cycles through, `P` its pace.
    #[arg(long)]
    pub cycle: bool,
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
    /// The cycler's pages read so far (its last `C` report).
    pub cycled: u64,
}

/// What a worker said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Ready,
    Holding(u64),
    Done(u64),
    /// The cycler: pages it has read so far, in all.
    Cycled(u64),
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
        if a.cycle {
            v.push("--cycle".into());
        }
        if let Some(ms) = a.redirty_ms {
            v.push("--redirty-ms".into());
            v.push(ms.to_string().into());
        }
        v
    }

    /// Starts a worker inside the target: on cgroup v2 created there by clone3
    /// (CLONE_INTO_CGROUP) when the kernel has it, otherwise by joining before exec. `born`
    /// gets its pid before it charges the target (see [`spawn_noting`]).
    pub fn spawn(&self, born: &mut dyn FnMut(i32)) -> io::Result<Worker> {
        let opts = SpawnOptions {
            program: self.exe.clone(),
            args: self.argv(),
            cgroup_dir: self.cgroup_dir.clone(),
            clone_into_cgroup: self.clone_into_cgroup,
            oom_score_adj: self.oom_score_adj,
            own_process_group: true,
            stdin: Io::Pipe,
            stdout: Io::Pipe,
        };
        Worker::new(spawn_noting(&opts, born)?)
    }
}

impl Worker {
    fn new(mut child: Child) -> io::Result<Worker> {
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
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
            cycled: 0,
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

    /// Asks the cycler to read this many pages a second (`--cycle` workers only).
    pub fn set_pace(&mut self, pages_per_s: u64) {
        if let Some(stdin) = &mut self.stdin {
            if writeln!(stdin, "P {pages_per_s}").is_err() {
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
                    Report::Cycled(n) => self.cycled = *n,
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
        "C" => rest.trim().parse().ok().map(Report::Cycled),
        "E" => Some(Report::Error(rest.to_string())),
        _ => None,
    }
}

/// What the agent asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Target(u64),
    /// Pages a second (the cycler's pace).
    Pace(u64),
    Quit,
}

pub fn parse_command(line: &str) -> Option<Order> {
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "T" => rest.trim().parse().ok().map(Order::Target),
        "P" => rest.trim().parse().ok().map(Order::Pace),
        "Q" => Some(Order::Quit),
        _ => None,
    }
}

/// The worker side: runs in the child after exec. Returns the exit code.
pub fn worker_main(args: WorkerArgs) -> i32 {
    // The name tracers know workers by (see `trace::enrich::is_oomlab_worker`).
    if let Err(e) = crate::sys::set_comm(crate::sys::WORKER_COMM) {
        log::warn!("worker keeps its comm: {e}");
    }
    if args.cycle {
        return super::pressure::cycler::cycler_main(&args);
    }
    // SAFETY: fds 0 and 1 are the pipes the agent set up and nothing else in this process uses.
    let mut stdin = unsafe { File::from_raw_fd(0) };
    let stdout = unsafe { File::from_raw_fd(1) };
    let mut holder = Holder::new(args, stdout);
    let mut inbuf: Vec<u8> = Vec::new();
    holder.say("R\n");
    loop {
        if readable(0, holder.timeout_ms()) && !holder.take_orders(&mut stdin, &mut inbuf) {
            return 0;
        }
        holder.step();
    }
}

/// Sleeps until `fd` can be read or `timeout_ms` passes (-1: no timeout).
pub(crate) fn readable(fd: i32, timeout_ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    n > 0 && pfd.revents != 0
}

/// The worker's memory and the target it moves it towards.
struct Holder {
    args: WorkerArgs,
    opts: AllocOptions,
    chunk: usize,
    redirty: Option<Duration>,
    next_redirty: Option<Instant>,
    regions: Vec<Region>,
    held: usize,
    target: usize,
    /// A target arrived and its `D` has not been said yet.
    pending_done: bool,
    out: File,
}

impl Holder {
    fn new(args: WorkerArgs, out: File) -> Holder {
        let redirty = args.redirty_ms.map(Duration::from_millis);
        Holder {
            opts: AllocOptions {
                thp: args.thp,
                fill: args.fill,
                mlock: args.mlock,
            },
            chunk: page_align(args.chunk.max(1)),
            next_redirty: redirty.map(|d| Instant::now() + d),
            redirty,
            args,
            regions: Vec::new(),
            held: 0,
            target: 0,
            pending_done: false,
            out,
        }
    }

    fn say(&mut self, msg: &str) {
        // The agent reads lines; if it is gone, PDEATHSIG ends us shortly.
        let _ = self.out.write_all(msg.as_bytes());
    }

    /// No wait while the target is not met; else until the next re-touch, or for the agent.
    fn timeout_ms(&self) -> i32 {
        if self.held != self.target {
            0
        } else if let Some(at) = self.next_redirty {
            at.saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32
        } else {
            -1
        }
    }

    /// Reads the agent's orders; false when the worker should leave (asked to, or the agent
    /// is gone: PDEATHSIG would end it anyway).
    fn take_orders(&mut self, stdin: &mut File, inbuf: &mut Vec<u8>) -> bool {
        let mut tmp = [0u8; 1024];
        match stdin.read(&mut tmp) {
            Ok(0) | Err(_) => return false,
            Ok(k) => inbuf.extend_from_slice(&tmp[..k]),
        }
        while let Some(nl) = inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = inbuf.drain(..=nl).collect();
            match parse_command(String::from_utf8_lossy(&line).trim()) {
                Some(Order::Target(t)) => {
                    self.target = page_align(t as usize);
                    self.pending_done = true;
                }
                Some(Order::Quit) => return false,
                Some(Order::Pace(_)) | None => {}
            }
        }
        true
    }

    /// One step towards the target (a chunk more, or back down to it), then `D` once there,
    /// and the re-touch when it is due.
    fn step(&mut self) {
        if self.held < self.target {
            self.grow();
        } else if self.held > self.target {
            self.shrink();
        }
        if self.held == self.target && self.pending_done {
            self.pending_done = false;
            self.say(&format!("D {}\n", self.held));
        }
        if let (Some(at), Some(every)) = (self.next_redirty, self.redirty) {
            if Instant::now() >= at {
                for r in &self.regions {
                    r.touch();
                }
                self.next_redirty = Some(Instant::now() + every);
            }
        }
    }

    fn grow(&mut self) {
        let len = self.chunk.min(self.target - self.held);
        match Region::new(self.args.kind, len, self.opts, &self.args.file_dir) {
            Ok(r) => {
                self.held += r.len();
                self.regions.push(r);
                self.say(&format!("H {}\n", self.held));
            }
            Err(e) => {
                let kind = self.args.kind.as_str();
                self.say(&format!("E allocating {len} bytes of {kind}: {e}\n"));
                // Hold what we have; the agent decides what comes next.
                self.target = self.held;
            }
        }
    }

    /// Drops whole regions from the end, then truncates the last one to land on the target.
    fn shrink(&mut self) {
        while let Some(last) = self.regions.last() {
            if self.held - last.len() >= self.target {
                self.held -= last.len();
                self.regions.pop();
            } else {
                break;
            }
        }
        if self.held > self.target {
            let over = self.held - self.target;
            let last = self.regions.last_mut().expect("held > 0 means a region");
            let keep = last.len() - over;
            if let Err(e) = last.truncate(keep) {
                self.say(&format!("E shrinking: {e}\n"));
            }
            self.held = self.regions.iter().map(Region::len).sum();
        }
        self.say(&format!("H {}\n", self.held));
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
        assert_eq!(parse_report("C 12345"), Some(Report::Cycled(12345)));
        assert_eq!(parse_report("C -1"), None);
        assert_eq!(
            parse_report("E no memory"),
            Some(Report::Error("no memory".into()))
        );
        assert_eq!(parse_report("H x"), None);
        assert_eq!(parse_command("T 100"), Some(Order::Target(100)));
        assert_eq!(parse_command("Q"), Some(Order::Quit));
        assert_eq!(parse_command("P 250"), Some(Order::Pace(250)));
        assert_eq!(parse_command("?"), None);
    }
}
