//! `cargo xtask fuzz`: runs the cargo-fuzz targets in fuzz/ (nightly, libFuzzer, debug assertions
//! and overflow checks on) for a given time each, after seeding each empty corpus from the real
//! fixtures, and prints one line per target: executions and crashes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::{run, workspace_root};

/// Every fuzz target (a `[[bin]]` of fuzz/Cargo.toml) and the fixture folders, relative to the
/// workspace root, its corpus starts from; fuzz/seeds/<target>/ is added when it exists.
pub(crate) const TARGETS: &[(&str, &[&str])] = &[
    ("kmsg_record", &["tests/data/kmsg"]),
    ("oom_report", &["tests/data/kmsg"]),
    ("episode_builder", &["tests/data/kmsg"]),
    ("tracepoint_format", &["tests/data/kernel"]),
    ("event_decode", &[]),
    ("mountinfo", &[]),
    ("proc_cgroup", &[]),
    ("kube_path", &[]),
    ("psi", &[]),
    ("flat_keyed", &[]),
    ("size", &[]),
    ("experiment_spec", &["examples"]),
    ("serve_config", &[]),
    (
        "explain_log",
        &["tests/data/explain/6.18", "tests/data/explain/6.18-hostile"],
    ),
];

/// Seconds each target runs inside `cargo xtask test`.
pub(crate) const CI_SECONDS: u64 = 5;

/// `cargo fuzz` flags shared by the build and every run, so a run never rebuilds: overflow
/// checks on, as they are for the kernel's numbers in a debug build.
const BUILD_FLAGS: &[&str] = &["--debug-assertions"];

/// The same for `--dev`: no optimisation, and cargo's default codegen units instead of
/// cargo-fuzz's one. With the runtime clients and rustls in the dependency tree the optimised
/// build took 777 s on 2 cores (`cargo xtask test`'s budget is 45 min in all); five seconds
/// per target need coverage, not speed. Debug assertions come with the dev profile.
const DEV_BUILD_FLAGS: &[&str] = &["--dev"];

#[derive(clap::Args)]
pub(crate) struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Build without optimisation (faster to build, slower to run), as `cargo xtask test` does.
    #[arg(long)]
    pub dev: bool,
    /// One target (default: all of them, one after another).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS.iter().map(|(t, _)| *t)))]
    pub target: Option<String>,
}

/// What one target's run did.
struct Outcome {
    target: &'static str,
    runs: Option<u64>,
    seconds: f64,
    crashed: bool,
}

pub(crate) fn run_all(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&(&str, &[&str])> = TARGETS
        .iter()
        .filter(|(t, _)| args.target.as_deref().is_none_or(|want| want == *t))
        .collect();
    let start = Instant::now();
    let flags = if args.dev {
        DEV_BUILD_FLAGS
    } else {
        BUILD_FLAGS
    };
    let mut build = vec!["+nightly", "fuzz", "build"];
    build.extend(flags);
    if let Some(t) = &args.target {
        build.push(t);
    }
    run("cargo", &build)?;
    eprintln!(
        "xtask fuzz: built in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let mut outcomes = Vec::new();
    for (target, fixtures) in targets {
        seed(target, fixtures)?;
        outcomes.push(run_target(target, args.seconds, flags)?);
    }
    for o in &outcomes {
        let runs = o.runs.map_or("?".to_string(), |r| r.to_string());
        eprintln!(
            "xtask fuzz: {:<18} {:>10} runs in {:>4.0} s, {}",
            o.target,
            runs,
            o.seconds,
            if o.crashed { "CRASHED" } else { "0 crashes" }
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target)
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs under fuzz/artifacts/)",
            crashed.join(", ")
        );
    }
    eprintln!(
        "xtask fuzz: {} targets, {:.0} s in all",
        outcomes.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fills an empty fuzz/corpus/<target>/ with the fixture files and the target's seeds.
fn seed(target: &str, fixtures: &[&str]) -> Result<()> {
    let root = workspace_root();
    let corpus = root.join("fuzz/corpus").join(target);
    if fs::read_dir(&corpus).is_ok_and(|mut d| d.next().is_some()) {
        return Ok(());
    }
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = format!("fuzz/seeds/{target}");
    let sources = fixtures.iter().copied().chain([seeds.as_str()]);
    let mut n = 0;
    for rel in sources {
        for file in files_under(&root.join(rel))? {
            // The path names the copy, so equal file names from two kernels stay apart.
            let name = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .replace('/', "_");
            fs::copy(&file, corpus.join(name))
                .with_context(|| format!("copying {} into the corpus", file.display()))?;
            n += 1;
        }
    }
    eprintln!("xtask fuzz: seeded {} with {n} files", corpus.display());
    Ok(())
}

/// Every file below `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(out);
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.is_dir() {
            out.extend(files_under(&path)?);
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn run_target(target: &'static str, seconds: u64, flags: &[&'static str]) -> Result<Outcome> {
    let max_time = format!("-max_total_time={seconds}");
    let mut args = vec!["+nightly", "fuzz", "run"];
    args.extend(flags);
    args.extend([target, "--", &max_time, "-print_final_stats=1"]);
    eprintln!("xtask fuzz: {target} for {seconds} s");
    let start = Instant::now();
    // libFuzzer reports every new coverage point on stderr: keep it for a crash, print a summary.
    let out = Command::new("cargo")
        .args(&args)
        .current_dir(workspace_root())
        .output()
        .context("starting cargo fuzz (run `cargo xtask setup`)")?;
    let log = String::from_utf8_lossy(&out.stderr);
    let crashed = !out.status.success();
    if crashed {
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
    Ok(Outcome {
        target,
        runs: executed_units(&log),
        seconds: start.elapsed().as_secs_f64(),
        crashed,
    })
}

/// The executions libFuzzer counted (`stat::number_of_executed_units: N`).
fn executed_units(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fuzz_bin_is_listed() {
        let manifest =
            fs::read_to_string(workspace_root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        let bins: Vec<&str> = manifest
            .split("[[bin]]")
            .skip(1)
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("name = ")))
            .map(|n| n.trim_matches('"'))
            .collect();
        let listed: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
        assert_eq!(bins, listed);
    }

    #[test]
    fn fixtures_exist() {
        for (target, fixtures) in TARGETS {
            for rel in *fixtures {
                assert!(
                    workspace_root().join(rel).is_dir(),
                    "{target}: {rel} is not a folder"
                );
            }
        }
    }

    #[test]
    fn reads_the_execution_count() {
        let log = "Done 5 runs in 1 second(s)\nstat::number_of_executed_units: 123456\n";
        assert_eq!(executed_units(log), Some(123_456));
        assert_eq!(executed_units("==1==ERROR: AddressSanitizer"), None);
    }
}
