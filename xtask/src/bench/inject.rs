//! `cargo xtask bench inject`: time to charge 2 GiB and 8 GiB into a fresh memory cgroup,
//! `oomlab inject` against `stress-ng --vm 1 --vm-keep` (default and `--vm-populate`) and a raw
//! ceiling (one process, one `mmap(MAP_POPULATE)` of the size: the kernel's page-fault and
//! zeroing cost and nothing else), runs alternating, 5 each, medians and ratios; CPU used while
//! holding for 10 s; accuracy (charged / requested, from the cgroup's own counter). Targets:
//! ≤ 0.9 × the --vm-populate time, within 10 % of the raw ceiling, ≥ 5 × faster than
//! stress-ng's default, < 1 % of a core while holding, accuracy within ±2 %.
//!
//! Every tool is timed the same way: from spawn until the cgroup's `memory.usage_in_bytes` has
//! grown by 99 % of the size (polled every 2 ms), so no tool's own "ready" message is trusted.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{cgroup::BenchCgroup, median, traced::percentile};
use crate::{run as sh, target_dir};

const GIB: u64 = 1 << 30;
/// Rounds per size (`OOMLAB_BENCH_RUNS` overrides): each round runs every tool once, in turn.
const RUNS: usize = 7;
const HOLD: Duration = Duration::from_secs(10);
/// A tool that has not charged the size by then is reported as timed out.
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Oomlab,
    /// `--thp` (MADV_HUGEPAGE): the huge-page idea, measured beside the default.
    OomlabThp,
    StressNg,
    StressNgPopulate,
    RawPopulate,
}

impl Tool {
    /// The ratios below index this order: 0 oomlab, 1 --vm-populate, 2 stress-ng, 3 raw, 4 --thp.
    const ALL: [Tool; 5] = [
        Tool::Oomlab,
        Tool::StressNgPopulate,
        Tool::StressNg,
        Tool::RawPopulate,
        Tool::OomlabThp,
    ];

    fn name(self) -> &'static str {
        match self {
            Tool::Oomlab => "oomlab inject",
            Tool::OomlabThp => "oomlab inject --thp",
            Tool::StressNg => "stress-ng --vm-keep",
            Tool::StressNgPopulate => "stress-ng --vm-keep --vm-populate",
            Tool::RawPopulate => "raw mmap(MAP_POPULATE)",
        }
    }
}

/// CPU ticks (user + system) of a process, 0 when it is gone.
pub(super) fn cpu_ticks(pid: i32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub(super) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

struct Measured {
    seconds: Option<f64>,
    accuracy: f64,
    /// Percent of one core while holding (only when asked).
    cpu_pct: Option<f64>,
}

fn spawn(tool: Tool, oomlab: &Path, cg: &BenchCgroup, size: u64) -> Result<Child> {
    let mut cmd = match tool {
        Tool::Oomlab | Tool::OomlabThp => {
            let mut c = Command::new(oomlab);
            c.args(["inject", "--cgroup", &cg.rel(), "--size", &size.to_string()])
                .args(["--output", "json"]);
            if tool == Tool::OomlabThp {
                c.arg("--thp");
            }
            c
        }
        Tool::StressNg | Tool::StressNgPopulate => {
            // stress-ng has no cgroup option: a shell joins the cgroup, then becomes stress-ng.
            let populate = if tool == Tool::StressNgPopulate {
                " --vm-populate"
            } else {
                ""
            };
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "echo $$ > {}/cgroup.procs && exec stress-ng --vm 1 --vm-bytes {size} --vm-keep{populate} --timeout 0 --quiet",
                cg.0.display()
            ));
            c
        }
        Tool::RawPopulate => {
            let me = std::env::current_exe().context("the xtask binary's path")?;
            let mut c = Command::new("sh");
            c.arg("-c").arg(format!(
                "echo $$ > {}/cgroup.procs && exec {} {RAW_POPULATE} {size}",
                cg.0.display(),
                me.display()
            ));
            c
        }
    };
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("starting {}", tool.name()))
}

pub(super) fn stop(child: &mut Child) {
    let pgid = child.id() as i32;
    // SAFETY: the process group this bench created for the tool.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: as above.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
}

fn measure(tool: Tool, oomlab: &Path, size: u64, run: usize, hold: bool) -> Result<Measured> {
    let cg = BenchCgroup::create(
        "inject",
        &format!("bench-{}-{}-{run}", std::process::id(), size / GIB),
        size * 2,
    )?;
    let base = cg.usage();
    let goal = base + size / 100 * 99;
    let start = Instant::now();
    let mut child = spawn(tool, oomlab, &cg, size)?;
    let mut seconds = None;
    while start.elapsed() < TIMEOUT {
        if cg.usage() >= goal {
            seconds = Some(start.elapsed().as_secs_f64());
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            stop(&mut child);
            bail!("{} exited early: {status}", tool.name());
        }
        thread::sleep(Duration::from_millis(2));
    }
    // Let the tools finish what they do after the pages are in (oomlab's last correction).
    thread::sleep(Duration::from_millis(500));
    let accuracy = cg.usage().saturating_sub(base) as f64 / size as f64;
    let cpu_pct = if hold {
        let mut pids = cg.procs();
        pids.push(child.id() as i32);
        let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        thread::sleep(HOLD);
        let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        Some((after - before) as f64 / clock_ticks() / HOLD.as_secs_f64() * 100.0)
    } else {
        None
    };
    stop(&mut child);
    Ok(Measured {
        seconds,
        accuracy,
        cpu_pct,
    })
}

/// The hidden first argument that makes the xtask binary the raw ceiling (see [`raw_populate`]).
pub(crate) const RAW_POPULATE: &str = "__raw-populate";

/// The raw ceiling: one private anonymous mapping of `bytes`, faulted in whole by the kernel
/// (`MAP_POPULATE`) in this one process, then held until the bench kills it.
pub(crate) fn raw_populate(bytes: &str) -> Result<()> {
    let len: usize = bytes
        .parse()
        .with_context(|| format!("{RAW_POPULATE}: {bytes:?} is not a byte count"))?;
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        bail!("{RAW_POPULATE}: mmap: {}", std::io::Error::last_os_error());
    }
    loop {
        // SAFETY: pause(2) has no preconditions; the bench ends this process with a signal.
        unsafe { libc::pause() };
    }
}

/// `median [IQR p25 … p75]` of per-round ratios `a / b` (the same round's runs: they shared the
/// machine's state, which on these VMs swings a populate of 8 GiB between 2.6 and 8.7 s).
fn round_ratios(a: &[Option<f64>], b: &[Option<f64>]) -> (f64, String) {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some((*x)? / (*y)?))
        .collect();
    r.sort_by(f64::total_cmp);
    let med = median(&mut r.clone());
    let text = format!(
        "{med:>5.2} × [IQR {:.2} … {:.2}, {} rounds]",
        percentile(&r, 25.0),
        percentile(&r, 75.0),
        r.len()
    );
    (med, text)
}

/// One unmeasured raw populate of `size`: on these VMs the first touch of guest memory the
/// hypervisor has not backed yet costs several times a later one (oomlab's first 8 GiB run took
/// 21 s, its next 5.4 s), and whichever tool ran first would pay it.
fn warm_up(oomlab: &Path, size: u64) -> Result<()> {
    let cg = BenchCgroup::create(
        "inject",
        &format!("bench-{}-warm", std::process::id()),
        size * 2,
    )?;
    let goal = cg.usage() + size / 100 * 99;
    let mut child = spawn(Tool::RawPopulate, oomlab, &cg, size)?;
    let start = Instant::now();
    while cg.usage() < goal && start.elapsed() < TIMEOUT {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop(&mut child);
    Ok(())
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

pub(super) fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench inject needs root (it creates memory cgroups)");
    }
    if Command::new("stress-ng").arg("--version").output().is_err() {
        bail!("stress-ng is not installed (cargo xtask setup installs it)");
    }
    sh("cargo", &["build", "--release", "--package", "stress-user"])?;
    let oomlab = target_dir().join("release/oomlab");
    let sizes: Vec<u64> = std::env::var("OOMLAB_BENCH_SIZES_GIB")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![2, 8]);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("bench inject on kernel {}", kernel.trim());
    println!(
        "rounds of every tool in rotating order after one unmeasured warm-up populate; \
         time = spawn → cgroup usage +99% of size; ratios are per round"
    );
    let runs = std::env::var("OOMLAB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS);
    let mut cpu: Vec<(Tool, f64)> = Vec::new();
    let mut acc_ok = true;
    let mut time_ok = true;
    for &gib in &sizes {
        let size = gib * GIB;
        warm_up(&oomlab, size)?;
        let mut times: Vec<Vec<Option<f64>>> = vec![Vec::new(); Tool::ALL.len()];
        let mut accs: Vec<Vec<f64>> = vec![Vec::new(); Tool::ALL.len()];
        for run in 0..runs {
            // The order rotates, so no tool always runs right after the same one.
            for k in 0..Tool::ALL.len() {
                let i = (k + run) % Tool::ALL.len();
                let tool = Tool::ALL[i];
                let hold = gib == sizes[0] && run == 0;
                let m = measure(tool, &oomlab, size, run, hold)?;
                if m.seconds.is_none() {
                    eprintln!(
                        "{} did not charge {gib} GiB within {TIMEOUT:?}",
                        tool.name()
                    );
                }
                times[i].push(m.seconds);
                accs[i].push(m.accuracy);
                if let Some(c) = m.cpu_pct {
                    cpu.push((tool, c));
                }
                eprintln!(
                    "  {gib} GiB run {run} {:<34} {:>7} s  charged {:>6.2}%",
                    tool.name(),
                    m.seconds.map_or("timeout".into(), |s| format!("{s:.3}")),
                    m.accuracy * 100.0
                );
            }
        }
        println!("\n{gib} GiB into a fresh cgroup (median of {runs} rounds)");
        for (i, tool) in Tool::ALL.iter().enumerate() {
            let mut t: Vec<f64> = times[i].iter().flatten().copied().collect();
            println!(
                "  {:<34} {:>8.3} s   charged {:>6.2}% of requested",
                tool.name(),
                median(&mut t),
                median(&mut accs[i].clone()) * 100.0
            );
        }
        let (vs_populate, t_populate) = round_ratios(&times[0], &times[1]);
        let (vs_raw, t_raw) = round_ratios(&times[0], &times[3]);
        let (vs_default, t_default) = round_ratios(&times[2], &times[0]);
        println!(
            "  oomlab / --vm-populate time      {t_populate}   (target ≤ 0.9 ×) {}",
            mark(vs_populate <= 0.9)
        );
        println!(
            "  oomlab / raw MAP_POPULATE time   {t_raw}   (target ≤ 1.1 ×) {}",
            mark(vs_raw <= 1.1)
        );
        println!(
            "  stress-ng default / oomlab time  {t_default}   (target ≥ 5 ×) {}",
            mark(vs_default >= 5.0)
        );
        let (_, t_thp) = round_ratios(&times[4], &times[1]);
        println!("  oomlab --thp / --vm-populate     {t_thp}   (huge pages, opt-in)");
        time_ok &= vs_populate <= 0.9 && vs_raw <= 1.1 && vs_default >= 5.0;
        let a = median(&mut accs[0].clone());
        println!(
            "  oomlab accuracy                  {:>8.2} %   (target 100 ± 2 %) {}",
            a * 100.0,
            mark((a - 1.0).abs() <= 0.02)
        );
        acc_ok &= accs[0].iter().all(|a| (a - 1.0).abs() <= 0.02);
    }
    println!(
        "\nCPU while holding {} GiB for {HOLD:?} (all processes of the tool)",
        sizes[0]
    );
    let mut cpu_ok = true;
    for (tool, pct) in &cpu {
        println!("  {:<34} {pct:>8.2} % of one core", tool.name());
        if *tool == Tool::Oomlab {
            cpu_ok = *pct < 1.0;
        }
    }
    println!("  oomlab target < 1 % of a core: {}", mark(cpu_ok));
    println!(
        "\nverdict: time {}, accuracy {} (every run), CPU {}",
        mark(time_ok),
        mark(acc_ok),
        mark(cpu_ok)
    );
    Ok(())
}
