//! `oomlab run [EXPERIMENT.toml]`: an experiment — target, apps, stages of injection — traced
//! as it runs, checked against its expectations; with no file, the built-in demo (the seed
//! story).

use std::path::PathBuf;

use crate::{
    cli::exit,
    experiment::{
        self,
        runner::{self, RunError, RunOptions},
        DEMO,
    },
    report::{self, OutputFormat},
};

/// Printed after the options of `oomlab run --help`.
const EXIT_CODES: &str = "\
Exit codes:
  0    every expectation held
  1    an expectation failed, or the run could not go on
  2    bad input (the experiment file, a flag): nothing was created
  130  interrupted by SIGINT, SIGTERM, SIGHUP or SIGQUIT (handled from the first instant, at
       every phase): the running stage is cut short, apps and workers are killed with all they
       started, the scratch cgroup is removed, and the report (stdout, --report files) covers
       what ran, names the stages cut short and skipped, and draws no conclusion
  141  stdout was closed (e.g. `| head -1`): the run ended the same way, without writing more";

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// The experiment file (TOML); without one, the built-in demo runs (examples/seed-story.toml).
    experiment: Option<PathBuf>,
    /// Write report.json, timeline.svg and report.md into this directory.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    /// Where `kind = "file"` injections put their (unlinked) files: a real filesystem.
    #[arg(long, default_value = "/var/tmp")]
    file_dir: PathBuf,
    /// Run where `memory.oom.group` is set on the target or an ancestor up to its OOM domain
    /// (as `allow_group_kill = true` in the file): the first worker OOM kills the whole group.
    #[arg(long)]
    allow_group_kill: bool,
}

/// Sizes are divided by 8 when OOMLAB_VM=1 (the slow emulated test VMs).
fn vm_scale() -> bool {
    std::env::var("OOMLAB_VM").is_ok_and(|v| v == "1")
}

pub(super) fn run(args: Args) -> anyhow::Result<i32> {
    let (name, text) = match &args.experiment {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.display().to_string(), t),
            Err(e) => {
                eprintln!("oomlab run: cannot read {}: {e}", p.display());
                return Ok(exit::USAGE);
            }
        },
        None => (
            "built-in demo (examples/seed-story.toml)".to_string(),
            DEMO.to_string(),
        ),
    };
    let exp = match experiment::parse(&name, &text, vm_scale()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("oomlab run: {e}");
            return Ok(exit::USAGE);
        }
    };
    let opts = RunOptions {
        output: args.output,
        file_dir: args.file_dir,
        allow_group_kill: args.allow_group_kill,
        ..RunOptions::default()
    };
    let report = match runner::run(&exp, &opts) {
        Ok(r) => r,
        Err(e @ (RunError::Spec(_) | RunError::Input(_))) => {
            eprintln!("oomlab run: {e}");
            return Ok(exit::USAGE);
        }
        Err(e) => {
            eprintln!("oomlab run: {e}");
            return Ok(exit::FAILED);
        }
    };
    if let Some(dir) = &args.report {
        if let Err(e) = report::files::write_files(dir, &report) {
            eprintln!("oomlab run: {e}");
            return Ok(exit::FAILED);
        }
    }
    crate::stop::write_stdout(|out| match args.output {
        OutputFormat::Json => report::run::write_json(out, &report),
        OutputFormat::Human => report::run::write_human(out, &report, args.report.as_deref()),
    });
    Ok(match crate::stop::cause() {
        Some(crate::stop::Cause::StdoutClosed) => exit::STDOUT_CLOSED,
        Some(crate::stop::Cause::Signal(_)) => exit::INTERRUPTED,
        None if report.passed() => exit::OK,
        None => exit::FAILED,
    })
}
