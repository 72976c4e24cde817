//! Command-line interface: one file per subcommand, as bpfman's CLI is laid out.

mod app;
mod cleanup;
mod doctor;
mod explain;
mod inject;
mod run;
mod serve;
mod trace;

use clap::{Parser, Subcommand};

/// Exit codes shared by every subcommand.
pub mod exit {
    pub const OK: i32 = 0;
    /// The command ran and found a failure (doctor: oomlab cannot work here).
    pub const FAILED: i32 = 1;
    /// Bad input: nothing was created.
    pub const USAGE: i32 = 2;
    /// `oomlab run` was stopped by SIGINT, SIGTERM, SIGHUP or SIGQUIT before its end: what it
    /// created is gone, its report covers what ran and names the stages it skipped. (As a shell
    /// reports a Ctrl-C, 128 + SIGINT, whichever of the four it was.)
    pub const INTERRUPTED: i32 = crate::stop::EXIT_INTERRUPTED;
    /// stdout was closed under the command (`| head -1`): it stopped writing and ended in order,
    /// everything it created gone. (128 + SIGPIPE, what a shell shows for a command the closed
    /// pipe killed.)
    pub const STDOUT_CLOSED: i32 = crate::stop::EXIT_STDOUT_CLOSED;
}

#[derive(Debug, Parser)]
#[command(
    name = "oomlab",
    version,
    about = "Memory-pressure injector and OOM tracer for Linux nodes (eBPF)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report what this kernel lets oomlab do, by trying it.
    Doctor(doctor::Args),
    /// Trace OOM kills and oom_score_adj changes in real time.
    Trace(trace::Args),
    /// Explain the OOM kills of a saved kernel log (dmesg, journalctl -k, kern.log, a /dev/kmsg
    /// dump) or of this node's ring buffer: victims, candidates ranked by badness, a verdict.
    Explain(explain::Args),
    /// Run an experiment (a TOML file, or the built-in demo): inject and trace together,
    /// check expectations, write a report with a timeline plot.
    Run(run::Args),
    /// A small service that allocates and holds memory (for experiments and tests).
    App(app::Args),
    /// Hold exactly the requested memory inside a target cgroup, charged there.
    Inject(inject::Args),
    /// Remove scratch cgroups under `oomlab/` left behind by a killed `oomlab inject`.
    Cleanup(cleanup::Args),
    /// Internal: one `oomlab inject` worker (started by the agent, never by hand).
    #[command(name = "__worker", hide = true)]
    Worker(crate::inject::worker::WorkerArgs),
    /// Node-wide tracing as a daemon: Prometheus /metrics, live /events (NDJSON), /healthz.
    Serve(serve::Args),
}

/// Sets the signal dispositions the command runs with. SIGPIPE is ignored in every command that
/// runs for long (a closed stdout is a write error they end on in order, never a death that
/// leaves workers or cgroups behind); the short printers die quietly on it as `cat` does. Only
/// `run` and `inject` keep the stop handlers `main` installed; the others get the defaults back
/// (`trace` and `serve` take theirs from tokio), and a signal that came before that ends them
/// now.
fn set_dispositions(command: &Command) {
    let (keep_stop, pipe) = match command {
        Command::Run(_) | Command::Inject(_) => (true, libc::SIG_IGN),
        Command::Trace(_) | Command::Serve(_) | Command::App(_) | Command::Worker(_) => {
            (false, libc::SIG_IGN)
        }
        Command::Doctor(_) | Command::Explain(_) | Command::Cleanup(_) => (false, libc::SIG_DFL),
    };
    // SAFETY: plain dispositions, set on the main thread before the command starts any thread.
    unsafe { libc::signal(libc::SIGPIPE, pipe) };
    if keep_stop {
        return;
    }
    for sig in crate::stop::SIGNALS {
        // SAFETY: as above.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    if let Some(crate::stop::Cause::Signal(sig)) = crate::stop::cause() {
        // SAFETY: re-raising a signal that was asked for, now with its default action.
        unsafe { libc::raise(sig) };
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    set_dispositions(&cli.command);
    let result = match cli.command {
        Command::Doctor(a) => doctor::run(&a),
        Command::Trace(a) => trace::run(a),
        Command::Explain(a) => explain::run(&a),
        Command::Run(a) => run::run(a),
        Command::App(a) => app::run(&a),
        Command::Inject(a) => inject::run(&a),
        Command::Cleanup(a) => cleanup::run(&a),
        Command::Worker(a) => Ok(crate::inject::worker::worker_main(a)),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(code) => code,
        // A closed stdout is how a reader says it has seen enough: no error message for it.
        Err(e) if crate::stop::is_broken_pipe(e.as_ref()) => exit::STDOUT_CLOSED,
        Err(e) => {
            eprintln!("oomlab: error: {e:#}");
            exit::FAILED
        }
    }
}
