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

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> i32 {
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
        Err(e) => {
            eprintln!("oomlab: error: {e:#}");
            exit::FAILED
        }
    }
}
