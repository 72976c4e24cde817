//! `cargo xtask bench pressure`: how fast and how close `oomlab inject --pressure some=N%` holds
//! 5/10/20/40 % of memory stall, beside the peer: `stress-ng --vm 1 --vm-bytes B --vm-keep` with
//! B the bytes oomlab brought the cgroup to (its stall, expected near 0, and its spread), same
//! run. Two halves: on the host, `--node-pressure` in a 256 MiB cgroup, the stall read here once
//! a second from `/proc/pressure/memory` `some total=`; in the cgroup v2 guests of the VM matrix,
//! the target's own `memory.pressure`, read by the guest half (`tests/pressure.rs`,
//! `bench_pressure_levels_v2`) and scored here. Never from oomlab's own lines.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    cgroup::BenchCgroup,
    inject::{clock_ticks, cpu_ticks, stop},
};
use crate::{run as sh, target_dir};

const LEVELS: [f64; 4] = [5.0, 10.0, 20.0, 40.0];
const LIMIT: u64 = 256 << 20;
const SECS: usize = 30;
/// Seconds after which a level counts as held (the settling bound).
const SETTLE: usize = 10;

/// µs of `some` stall since boot, from the node's PSI file.
fn node_some_us() -> u64 {
    fs::read_to_string("/proc/pressure/memory")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("some "))
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One share per second for `secs` seconds, and the CPU ticks of the cgroup's processes.
fn watch(cg: &BenchCgroup, secs: usize) -> (Vec<f64>, u64, u64) {
    let mut shares = Vec::new();
    let mut last = (Instant::now(), node_some_us());
    let mut peak = 0;
    let mut ticks = 0;
    for _ in 0..secs {
        thread::sleep(Duration::from_secs(1));
        let now = (Instant::now(), node_some_us());
        let wall = now.0.duration_since(last.0).as_micros() as f64;
        shares.push(now.1.saturating_sub(last.1) as f64 / wall * 100.0);
        last = now;
        peak = peak.max(cg.usage());
        ticks = cg
            .procs()
            .into_iter()
            .map(cpu_ticks)
            .sum::<u64>()
            .max(ticks);
    }
    (shares, peak, ticks)
}

struct Row {
    settle_s: Option<usize>,
    mean: f64,
    abs_err: f64,
    p95: f64,
    cpu_pct: f64,
}

fn score(shares: &[f64], target: f64, cpu_pct: f64) -> Row {
    // Settled: the end of the first 3 seconds whose mean is within ±20 % of the target (as
    // oomlab's own `seconds_to_pressure`).
    let settle_s = (0..shares.len().saturating_sub(2)).find(|&i| {
        let m = shares[i..i + 3].iter().sum::<f64>() / 3.0;
        (m - target).abs() <= target * 0.2
    });
    let after = &shares[SETTLE.min(shares.len())..];
    let mean = after.iter().sum::<f64>() / after.len().max(1) as f64;
    let mut errs: Vec<f64> = after.iter().map(|s| (s - target).abs()).collect();
    errs.sort_by(f64::total_cmp);
    let abs_err = errs.iter().sum::<f64>() / errs.len().max(1) as f64;
    let p95 = errs
        .get(((errs.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    Row {
        settle_s: settle_s.map(|i| i + 3),
        mean,
        abs_err,
        p95,
        cpu_pct,
    }
}

/// CPU ticks over `secs` seconds as a share of one core.
fn ticks_pct(ticks: u64, secs: usize) -> f64 {
    ticks as f64 / clock_ticks() / secs.max(1) as f64 * 100.0
}

fn spread(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Both halves by default; `OOMLAB_BENCH_PRESSURE=host` or `=vm` runs one.
/// `OOMLAB_BENCH_KERNEL` (5.10, 6.1, 6.12, all: the default) picks the guests;
/// `OOMLAB_BENCH_RESCORE=1` scores the guests' consoles under target/vm-bench/ again.
pub(super) fn run() -> Result<()> {
    if !nix_is_root() {
        bail!("bench pressure needs root (it creates a memory cgroup)");
    }
    if Command::new("stress-ng").arg("--version").output().is_err() {
        bail!("stress-ng is not installed (cargo xtask setup installs it)");
    }
    let which = std::env::var("OOMLAB_BENCH_PRESSURE").unwrap_or_else(|_| "both".into());
    if !matches!(which.as_str(), "host" | "vm" | "both") {
        bail!("OOMLAB_BENCH_PRESSURE={which}: want host, vm or both");
    }
    if which != "vm" {
        run_host()?;
    }
    if which != "host" {
        run_vm()?;
    }
    Ok(())
}

const HEADER: &str = "| target some | tool | settled in | mean after settling | mean abs error | p95 error | CPU (% of one core) |\n|---|---|---|---|---|---|---|";

fn print_rows(level: f64, ours: &Row, peer_bytes: u64, peer_shares: &[f64], peer: &Row) {
    println!(
        "| {level} % | oomlab inject --pressure | {} | {:.1} % | {:.1} pts | {:.1} pts | {:.1} |",
        ours.settle_s.map_or("never".into(), |s| format!("{s} s")),
        ours.mean,
        ours.abs_err,
        ours.p95,
        ours.cpu_pct
    );
    println!(
        "| {level} % | stress-ng --vm 1 --vm-bytes {} MiB --vm-keep | {} | {:.1} % (spread {:.1}) | {:.1} pts | {:.1} pts | {:.1} |",
        peer_bytes >> 20,
        peer.settle_s.map_or("never".into(), |s| format!("{s} s")),
        peer.mean,
        spread(&peer_shares[SETTLE.min(peer_shares.len())..]),
        peer.abs_err,
        peer.p95,
        peer.cpu_pct
    );
}

/// One `@@BENCH pressure …` line of the guest half (`tests/pressure.rs`,
/// `bench_pressure_levels_v2`): tool, level, bytes, CPU share, one stall share per second.
#[derive(Debug, PartialEq)]
struct GuestRun {
    tool: String,
    level: f64,
    bytes: u64,
    cpu_pct: f64,
    shares: Vec<f64>,
}

fn parse_guest_line(line: &str) -> Option<GuestRun> {
    let rest = line.trim().strip_prefix("@@BENCH pressure ")?;
    let field = |k: &str| {
        rest.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
    };
    Some(GuestRun {
        tool: field("tool")?.to_string(),
        level: field("level")?.parse().ok()?,
        bytes: field("bytes")?.parse().ok()?,
        cpu_pct: field("cpu_pct")?.parse().ok()?,
        shares: field("shares")?
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?,
    })
}

/// The cgroup v2 half: the guest test holds each level with oomlab and then the peer, reading
/// the cgroup's own `memory.pressure`; scored here like the host half.
fn run_vm() -> Result<()> {
    use clap::ValueEnum as _;
    let kernel = std::env::var("OOMLAB_BENCH_KERNEL").unwrap_or_else(|_| "all".into());
    let kernel = crate::vm::KernelChoice::from_str(&kernel, true)
        .map_err(|e| anyhow::anyhow!("OOMLAB_BENCH_KERNEL={kernel}: {e}"))?;
    let runs = if std::env::var_os("OOMLAB_BENCH_RESCORE").is_some() {
        // Score the figures an earlier run left in the guests' consoles again, booting nothing.
        kernel
            .names()
            .into_iter()
            .map(|k| {
                let log = target_dir().join("vm-bench").join(k).join("console.log");
                let text =
                    fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()));
                (k, text)
            })
            .collect()
    } else {
        let stress_ng =
            crate::setup::find_on_path("stress-ng").context("stress-ng is not on PATH")?;
        crate::vm::run_bench_in_guests(
            "pressure",
            "bench_pressure_levels_v2",
            kernel,
            1200,
            vec![stress_ng],
        )?
    };
    let mut failed = Vec::new();
    for (series, output) in runs {
        let output = match output {
            Ok(o) => o,
            Err(e) => {
                failed.push(format!("{series}: {e:#}"));
                continue;
            }
        };
        let lines: Vec<GuestRun> = output.lines().filter_map(parse_guest_line).collect();
        println!(
            "\nbench pressure in the {series} guest (cgroup v2, the target's own memory.pressure; 96 MiB cgroup beside a 16 MiB app; 30 s per run; error after {SETTLE} s; one TCG vCPU)"
        );
        println!("{HEADER}");
        for level in LEVELS {
            let of = |tool: &str| lines.iter().find(|r| r.tool == tool && r.level == level);
            let (Some(o), Some(p)) = (of("oomlab"), of("stress-ng")) else {
                failed.push(format!("{series}: no figures for {level} %"));
                continue;
            };
            let ours = score(&o.shares, level, o.cpu_pct);
            let peer = score(&p.shares, level, p.cpu_pct);
            print_rows(level, &ours, p.bytes, &p.shares, &peer);
        }
    }
    if !failed.is_empty() {
        bail!("bench pressure in the guests: {}", failed.join("; "));
    }
    Ok(())
}

/// The host half: node PSI with `--node-pressure` (cgroup v1 has no per-cgroup PSI).
fn run_host() -> Result<()> {
    sh("cargo", &["build", "--release", "--package", "stress-user"])?;
    let oomlab = target_dir().join("release/oomlab");
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "bench pressure on kernel {} (node PSI, /proc/pressure/memory; {} MiB cgroup; {SECS} s per run; error after {SETTLE} s)",
        kernel.trim(),
        LIMIT >> 20
    );
    println!("{HEADER}");
    for level in LEVELS {
        let (ours, peak) = run_oomlab(&oomlab, level)?;
        let (shares, ticks) = run_stress_ng(peak, level)?;
        let peer = score(&shares, level, ticks_pct(ticks, SECS));
        print_rows(level, &ours, peak, &shares, &peer);
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// oomlab holding `level` for SECS; its score and the cgroup's peak usage.
fn run_oomlab(oomlab: &Path, level: f64) -> Result<(Row, u64)> {
    let cg = BenchCgroup::create(
        "pressure",
        &format!("bench-psi-{}-{level}", std::process::id()),
        LIMIT,
    )?;
    let mut child = Command::new(oomlab)
        .args(["inject", "--cgroup", &cg.rel(), "--node-pressure"])
        .args(["--pressure", &format!("some={level}%")])
        .args(["--duration", &format!("{}s", SECS + 5), "--output", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting oomlab inject")?;
    let agent = child.id() as i32;
    let (shares, peak, ticks) = watch(&cg, SECS);
    let ticks = ticks + cpu_ticks(agent);
    stop(&mut child);
    Ok((score(&shares, level, ticks_pct(ticks, SECS)), peak))
}

/// stress-ng holding `bytes` in the same kind of cgroup for SECS.
fn run_stress_ng(bytes: u64, level: f64) -> Result<(Vec<f64>, u64)> {
    let cg = BenchCgroup::create(
        "pressure",
        &format!("bench-psi-ng-{}-{level}", std::process::id()),
        LIMIT,
    )?;
    // stress-ng's own process costs a few MiB: ask for the rest.
    let vm_bytes = bytes.saturating_sub(8 << 20);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec stress-ng --vm 1 --vm-bytes {vm_bytes} --vm-keep --timeout {}s --quiet",
            cg.0.display(),
            SECS + 5
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting stress-ng")?;
    let (shares, _, ticks) = watch(&cg, SECS);
    stop(&mut child);
    Ok((shares, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guest_lines() {
        let l = "@@BENCH pressure tool=stress-ng level=10 bytes=52428800 cpu_pct=11.20 shares=0.000,1.500";
        assert_eq!(
            parse_guest_line(l),
            Some(GuestRun {
                tool: "stress-ng".into(),
                level: 10.0,
                bytes: 52428800,
                cpu_pct: 11.2,
                shares: vec![0.0, 1.5],
            })
        );
        assert_eq!(
            parse_guest_line("@@BENCH pressure tool=oomlab level=x"),
            None
        );
        assert_eq!(parse_guest_line("test result: ok"), None);
    }
}
