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
    report::{json_line, timeline::RunReport, OutputFormat},
    size::human,
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
}

/// Sizes are divided by 8 when OOMLAB_VM=1 (the slow emulated test VMs).
fn vm_scale() -> bool {
    std::env::var("OOMLAB_VM").is_ok_and(|v| v == "1")
}

pub fn run(args: Args) -> anyhow::Result<i32> {
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
        if let Err(e) = runner::write_report(dir, &report) {
            eprintln!("oomlab run: {e}");
            return Ok(exit::FAILED);
        }
    }
    match args.output {
        OutputFormat::Json => {
            let mut out = std::io::stdout().lock();
            for v in &report.expectations {
                json_line(&mut out, "expectation", v)?;
            }
            json_line(&mut out, "summary", &report.summary)?;
        }
        OutputFormat::Human => print_end(&report, args.report.as_deref()),
    }
    Ok(if report.passed() {
        exit::OK
    } else {
        exit::FAILED
    })
}

fn print_end(r: &RunReport, dir: Option<&std::path::Path>) {
    let s = &r.summary;
    println!();
    println!("== summary");
    println!(
        "   {:.1} s; OOM kills {} (kernel counter), {} seen ({} worker, {} app{}), {} lost; {} respawn(s); peak usage {}",
        s.duration_s,
        s.oom_kills,
        s.traced_victims,
        s.worker_kills,
        s.app_kills,
        if s.victims_from_kmsg > 0 {
            format!("; {} from the kernel log only", s.victims_from_kmsg)
        } else {
            String::new()
        },
        s.lost_events,
        s.respawns,
        human(s.peak_usage_bytes)
    );
    if !r.expectations.is_empty() {
        println!("== expectations");
        for v in &r.expectations {
            println!(
                "   {:<8} {}  {:<32} {}",
                v.scope,
                if v.passed { "pass" } else { "FAIL" },
                format!("{} = {}", v.key, v.expected),
                v.observed,
            );
        }
        println!(
            "   {} passed, {} failed",
            s.expectations_passed, s.expectations_failed
        );
    }
    if let Some(d) = dir {
        println!(
            "== report: {0}/report.md, {0}/report.json, {0}/timeline.svg",
            d.display()
        );
    }
    if let Some(c) = &r.conclusion {
        println!("== conclusion");
        for line in c.trim().lines() {
            println!("   {line}");
        }
    }
}
