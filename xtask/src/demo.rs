//! `cargo xtask demo`: the seed story on this machine — `oomlab run` with no file runs the
//! built-in demo (examples/seed-story.toml) in a scratch cgroup, traced as it goes, and writes
//! its report (report.md, report.json, timeline.svg) to target/demo-report.

use anyhow::{bail, Context as _, Result};

use crate::{run as sh, target_dir};

pub(crate) fn run() -> Result<()> {
    sh("cargo", &["build", "--release", "--package", "stress-user"])?;
    let target = target_dir();
    let oomlab = target.join("release/oomlab");
    let report = target.join("demo-report");
    let report_arg = report.to_str().context("non-UTF-8 path")?;
    eprintln!("xtask: $ sudo oomlab run --report {report_arg}");
    let status = std::process::Command::new(&oomlab)
        .args(["run", "--report", report_arg])
        .status()
        .with_context(|| format!("starting {}", oomlab.display()))?;
    if !status.success() {
        bail!("oomlab run ended with {status} (1: an expectation failed, 2: it could not run here; see above)");
    }
    println!(
        "\nopen {0}/report.md and {0}/timeline.svg",
        report.display()
    );
    Ok(())
}
