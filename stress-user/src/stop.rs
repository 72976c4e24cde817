//! The process-wide request to stop a long-running command (`oomlab run`, `oomlab inject`): the
//! signal handlers (SIGINT, SIGTERM, SIGHUP, SIGQUIT) and a closed stdout both set it, and every
//! loop, wait and sleep of those commands looks at it, so whatever phase they are in ends in
//! order: workers released, apps killed, scratch cgroups removed, the report written.

use std::{
    io::{self, Write},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// The exit code of a command stopped by one of [`SIGNALS`] before its end (where a signal is not
/// its normal end): 128 + SIGINT, as a shell reports a Ctrl-C, whichever of the four it was.
pub const EXIT_INTERRUPTED: i32 = 130;
/// The exit code of a command whose stdout was closed under it (`| head -1`) and that then ended
/// in order: 128 + SIGPIPE, what a shell shows for a command a closed pipe killed.
pub const EXIT_STDOUT_CLOSED: i32 = 141;

/// 0: no stop asked; a signal number; or [`STDOUT_CLOSED`].
static CAUSE: AtomicI32 = AtomicI32::new(0);
const STDOUT_CLOSED: i32 = -1;

/// Signals that ask a long-running command to stop in order.
pub const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// How often the interruptible sleeps look at the request.
const STEP: Duration = Duration::from_millis(20);

/// Why a stop was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Signal(i32),
    /// Writing to stdout failed (EPIPE: the reader went away, as `| head -1` does).
    StdoutClosed,
}

impl Cause {
    /// `SIGINT`, or `stdout closed`.
    pub fn name(self) -> String {
        match self {
            Cause::Signal(s) => nix::sys::signal::Signal::try_from(s)
                .map_or_else(|_| format!("signal {s}"), |x| x.as_str().to_string()),
            Cause::StdoutClosed => "stdout closed".into(),
        }
    }
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    // The first cause is kept: a second Ctrl-C does not rename why the run ended.
    let _ = CAUSE.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
}

/// Installs the stop handlers for [`SIGNALS`], without SA_RESTART so a blocking `poll` or `read`
/// on the main thread wakes at once. Call it first thing, before any thread exists: the threads
/// started later inherit no mask that would keep a signal from the handler.
pub fn install_handlers() {
    for sig in SIGNALS {
        // SAFETY: the handler only does an atomic compare-exchange (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once a stop was asked, by a signal or a closed stdout.
pub fn requested() -> bool {
    CAUSE.load(Ordering::SeqCst) != 0
}

/// Why the stop was asked, if it was.
pub fn cause() -> Option<Cause> {
    match CAUSE.load(Ordering::SeqCst) {
        0 => None,
        STDOUT_CLOSED => Some(Cause::StdoutClosed),
        s => Some(Cause::Signal(s)),
    }
}

/// Notes that stdout cannot be written any more: the command stops as if signalled.
pub fn stdout_closed() {
    let _ = CAUSE.compare_exchange(0, STDOUT_CLOSED, Ordering::SeqCst, Ordering::SeqCst);
}

/// Writes to stdout with `f` and flushes; a failure (EPIPE once the reader is gone — SIGPIPE is
/// ignored) asks the command to stop instead of killing it mid-way. After that nothing more is
/// written.
pub fn write_stdout(f: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) {
    if cause() == Some(Cause::StdoutClosed) {
        return;
    }
    let mut out = io::stdout().lock();
    if f(&mut out).and_then(|()| out.flush()).is_err() {
        stdout_closed();
    }
}

/// Looks, without writing, whether stdout is a pipe whose reader is gone (POLLERR on its write
/// end), so a command that has nothing to print for a while still ends when `head` has left.
pub fn check_stdout() {
    let mut fds = [libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, no wait. Files and /dev/null never report POLLERR; a closed
    // descriptor reports POLLNVAL, which is left alone.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    if rc > 0 && fds[0].revents & libc::POLLERR != 0 {
        stdout_closed();
    }
}

/// Sleeps for `d` unless a stop is asked (or stdout found closed) first; true when it slept the
/// whole time.
pub fn sleep(d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        check_stdout();
        if requested() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(STEP));
    }
}

/// True when `e`, or an error it wraps, is a write to a closed pipe.
pub fn is_broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_names() {
        assert_eq!(Cause::Signal(libc::SIGINT).name(), "SIGINT");
        assert_eq!(Cause::Signal(libc::SIGQUIT).name(), "SIGQUIT");
        assert_eq!(Cause::StdoutClosed.name(), "stdout closed");
    }

    #[test]
    fn broken_pipe_is_found_inside_a_chain() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(e.as_ref()));
        let other = anyhow::anyhow!("something else");
        assert!(!is_broken_pipe(other.as_ref()));
    }
}
