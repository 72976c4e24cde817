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

#[derive(Debug, clap::Args)]
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
    match args.output {
        OutputFormat::Json => report::run::write_json(&mut std::io::stdout().lock(), &report)?,
        OutputFormat::Human => report::run::print_human(&report, args.report.as_deref()),
    }
    Ok(if report.passed() {
        exit::OK
    } else {
        exit::FAILED
    })
}
