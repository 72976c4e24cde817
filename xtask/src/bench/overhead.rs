//! `cargo xtask bench overhead` (issue #16): what tracing costs, measured by the kernel itself.
//!
//! `kernel.bpf_stats_enabled` is set for the run (and put back after), so the kernel counts
//! `run_time_ns` and `run_cnt` for every BPF program; `bpftool prog show --json` names the
//! programs each process holds. For each workload (reclaim churn, a fork/exec storm, cgroup
//! churn, an adj flood, an OOM storm) the bench alternates three variants in a rotating order,
//! `OOMLAB_BENCH_PAIRS` (default 20) times: nothing attached, `oomlab trace` (node-wide, every
//! class, its default human output) and bpftrace counting the same 19 tracepoints. It prints, per
//! workload, the kernel's ns per event for each tool, the share of one CPU spent in their
//! programs, the wall-time ratio to the same round's untraced run (median and interquartile
//! range), oomlab's own CPU and its RSS before and after; then ns per event per tracepoint over
//! every workload. The statistics themselves cost two clock reads per program run, in every
//! variant alike. Last, the per-event floor on the adj tracepoint (`floors`): an empty program,
//! bpftrace counting, bpftrace printing each event, and oomlab's record, side by side
//! (`OOMLAB_BENCH_WORKLOADS=floor` runs only that). Figures are printed, never asserted.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::{
    cgroup::BenchCgroup,
    median,
    traced::{kernel_release, percentile, rss_mib, Sysctl, Traced},
};
use crate::{run as sh, target_dir};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// bpftrace counting every tracepoint `oomlab trace` attaches by default (its catalogue).
const BPFTRACE_SCRIPT: &str = "BEGIN { printf(\"ready\\n\"); } \
tracepoint:oom:mark_victim, tracepoint:oom:oom_score_adj_update, tracepoint:oom:reclaim_retry_zone, \
tracepoint:oom:compact_retry, tracepoint:oom:wake_reaper, tracepoint:oom:start_task_reaping, \
tracepoint:oom:finish_task_reaping, tracepoint:oom:skip_task_reaping, \
tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin, tracepoint:vmscan:mm_vmscan_memcg_reclaim_end, \
tracepoint:vmscan:mm_vmscan_direct_reclaim_begin, tracepoint:vmscan:mm_vmscan_direct_reclaim_end, \
tracepoint:vmscan:mm_vmscan_kswapd_wake, tracepoint:cgroup:cgroup_mkdir, tracepoint:cgroup:cgroup_rmdir, \
tracepoint:cgroup:cgroup_attach_task, tracepoint:sched:sched_process_fork, \
tracepoint:sched:sched_process_exit, tracepoint:sched:sched_process_exec, \
tracepoint:signal:signal_generate { @[probe] = count(); }";

/// The ids of the BPF programs `pid` holds, from the `prog_id:` lines of its fds' fdinfo (prog
/// and link fds both carry one). bpftool's own `pids` needs a pid iterator this bpftool lacks.
fn prog_ids(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Cumulative (run_time_ns, run_cnt) per program name, for the programs `pid` holds.
fn prog_stats(pid: u32) -> Result<BTreeMap<String, (u64, u64)>> {
    let ids = prog_ids(pid);
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progs: Vec<Value> =
        serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    let mut stats = BTreeMap::new();
    for p in progs {
        let id = p["id"].as_u64();
        if id.is_none_or(|id| ids.binary_search(&id).is_err()) {
            continue;
        }
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let e: &mut (u64, u64) = stats.entry(name).or_default();
        e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        e.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(stats)
}

/// `after - before` per program.
fn delta(
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
) -> BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(name, &(ns, n))| {
            let (ns0, n0) = before.get(name).copied().unwrap_or_default();
            (name.clone(), (ns.saturating_sub(ns0), n.saturating_sub(n0)))
        })
        .collect()
}

fn add_into(total: &mut BTreeMap<String, (u64, u64)>, d: &BTreeMap<String, (u64, u64)>) {
    for (name, &(ns, n)) in d {
        let e = total.entry(name.clone()).or_default();
        e.0 += ns;
        e.1 += n;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Oomlab,
    Bpftrace,
}

const VARIANTS: [Variant; 3] = [Variant::Bare, Variant::Oomlab, Variant::Bpftrace];

/// One workload: a shell script run in its own scratch cgroup (`$CG` is its cgroup.procs,
/// `$DIR` the cgroup's directory), prepared once by `setup`.
struct Workload {
    name: &'static str,
    what: &'static str,
    limit: u64,
    setup: &'static str,
    script: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "reclaim churn",
        what: "a 256 MiB file read 8 times through a 32 MiB cgroup",
        limit: 32 << 20,
        // Written from inside the cgroup, so its pages are charged there and every read after
        // the first 32 MiB refaults through reclaim.
        setup: "echo $$ > $CG; dd if=/dev/zero of=$FILE bs=1M count=256 2>/dev/null",
        script: "echo $$ > $CG; for i in 1 2 3 4 5 6 7 8; do cat $FILE > /dev/null; done",
    },
    Workload {
        name: "fork/exec storm",
        what: "5,000 /bin/true, one after another",
        limit: 512 << 20,
        setup: "true",
        script: "echo $$ > $CG; i=0; while [ $i -lt 5000 ]; do /bin/true; i=$((i+1)); done",
    },
    Workload {
        name: "cgroup churn",
        what: "1,000 cgroups made, entered, left and removed",
        limit: 512 << 20,
        setup: "true",
        script: "echo $$ > $CG; i=0; while [ $i -lt 1000 ]; do mkdir $DIR/c$i && echo $$ > $DIR/c$i/cgroup.procs && echo $$ > $CG && rmdir $DIR/c$i; i=$((i+1)); done",
    },
    Workload {
        name: "adj flood",
        what: "200,000 writes to the shell's own oom_score_adj",
        limit: 512 << 20,
        setup: "true",
        script: "echo $$ > $CG; i=0; while [ $i -lt 200000 ]; do echo $((i % 1000)) > /proc/self/oom_score_adj; i=$((i+1)); done",
    },
    Workload {
        name: "OOM storm",
        what: "40 processes each filling a 64 MiB buffer in a 24 MiB cgroup (40 kills)",
        limit: 24 << 20,
        setup: "true",
        script: "echo $$ > $CG; echo 0 > /proc/self/oom_score_adj; i=0; while [ $i -lt 40 ]; do sh -c 'echo 1000 > /proc/self/oom_score_adj; exec dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null'; i=$((i+1)); done; true",
    },
];

/// What the runs of one variant of one workload added up to.
#[derive(Default)]
struct Tally {
    walls: Vec<f64>,
    ratios: Vec<f64>,
    progs: BTreeMap<String, (u64, u64)>,
    prog_wall: f64,
    own_cpu: Vec<f64>,
    rss_before: Vec<f64>,
    rss_after: Vec<f64>,
}

impl Tally {
    fn ns_per_event(&self) -> f64 {
        let (ns, n) = self
            .progs
            .values()
            .fold((0u64, 0u64), |(a, b), &(ns, n)| (a + ns, b + n));
        if n == 0 {
            f64::NAN
        } else {
            ns as f64 / n as f64
        }
    }

    fn events(&self) -> u64 {
        self.progs.values().map(|&(_, n)| n).sum()
    }

    /// Share of one CPU spent in the programs while the workload ran, in percent.
    fn prog_cpu_pct(&self) -> f64 {
        let ns: u64 = self.progs.values().map(|&(ns, _)| ns).sum();
        ns as f64 / 1e9 / self.prog_wall * 100.0
    }
}

/// `median [p25 – p75]` of ratios as a signed percentage.
fn ratio_summary(ratios: &[f64]) -> String {
    let mut v: Vec<f64> = ratios.iter().map(|r| (r - 1.0) * 100.0).collect();
    v.sort_by(f64::total_cmp);
    let med = median(&mut v.clone());
    format!(
        "{med:+.1} % [IQR {:+.1} … {:+.1}]",
        percentile(&v, 25.0),
        percentile(&v, 75.0)
    )
}

fn start_tracer(variant: Variant, bin: &str) -> Result<Option<Traced>> {
    let cmdline = match variant {
        Variant::Bare => return Ok(None),
        Variant::Oomlab => format!("{bin} trace --no-hooks"),
        Variant::Bpftrace => format!("bpftrace -e '{BPFTRACE_SCRIPT}'"),
    };
    let t = Traced::start(&cmdline)?;
    t.until("ready", Instant::now())?;
    Ok(Some(t))
}

/// One timed run of `w` with `variant` attached; folds what it measured into `tally`.
fn one_run(
    w: &Workload,
    env: &[(&str, String)],
    variant: Variant,
    bin: &str,
    tally: &mut Tally,
) -> Result<f64> {
    let tracer = start_tracer(variant, bin)?;
    let pid = tracer.as_ref().map(Traced::pid);
    let before = pid.map(prog_stats).transpose()?.unwrap_or_default();
    let cpu0 = tracer.as_ref().map_or(0.0, Traced::cpu_secs);
    if let Some(pid) = pid {
        tally.rss_before.push(rss_mib(pid));
    }
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(w.script)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running the {} workload", w.name))?;
    let wall = t.elapsed().as_secs_f64();
    if !st.success() {
        bail!("the {} workload failed: {st}", w.name);
    }
    if let (Some(tr), Some(pid)) = (&tracer, pid) {
        let after = prog_stats(pid)?;
        add_into(&mut tally.progs, &delta(&before, &after));
        tally.prog_wall += wall;
        tally.own_cpu.push((tr.cpu_secs() - cpu0) / wall * 100.0);
        tally.rss_after.push(rss_mib(pid));
    }
    if let Some(tr) = tracer {
        tr.stop();
    }
    tally.walls.push(wall);
    Ok(wall)
}

struct WorkloadResult {
    name: &'static str,
    tallies: [Tally; 3],
}

fn measure(w: &Workload, bin: &str, pairs: usize) -> Result<WorkloadResult> {
    let cg = BenchCgroup::create(
        "overhead",
        &format!("bench-overhead-{}", std::process::id()),
        w.limit,
    )?;
    let file = format!("/var/tmp/oomlab-bench-overhead-{}", std::process::id());
    let env = [
        ("CG", cg.procs_file().display().to_string()),
        ("DIR", cg.0.display().to_string()),
        ("FILE", file.clone()),
    ];
    let setup = Command::new("sh")
        .arg("-c")
        .arg(w.setup)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()?;
    if !setup.success() {
        bail!("setting up the {} workload failed", w.name);
    }
    let mut scratch = Tally::default();
    one_run(w, &env, Variant::Bare, bin, &mut scratch)?; // warm-up, not counted
    let mut tallies: [Tally; 3] = Default::default();
    for round in 0..pairs {
        let mut walls = [0.0; 3];
        for k in 0..3 {
            let i = (round + k) % 3;
            walls[i] = one_run(w, &env, VARIANTS[i], bin, &mut tallies[i])?;
        }
        for i in 1..3 {
            tallies[i].ratios.push(walls[i] / walls[0]);
        }
        eprintln!(
            "bench overhead: {} round {}/{pairs}: bare {:.2} s, oomlab {:.2} s, bpftrace {:.2} s",
            w.name,
            round + 1,
            walls[0],
            walls[1],
            walls[2]
        );
    }
    let _ = fs::remove_file(&file);
    Ok(WorkloadResult {
        name: w.name,
        tallies,
    })
}

pub(super) fn run() -> Result<()> {
    if !Path::new(BPF_STATS).exists() {
        bail!("{BPF_STATS} is missing: this kernel cannot count BPF run time");
    }
    let pairs: usize = std::env::var("OOMLAB_BENCH_PAIRS")
        .ok()
        .map(|v| {
            v.parse()
                .context("OOMLAB_BENCH_PAIRS must be a whole number")
        })
        .transpose()?
        .unwrap_or(20);
    let only = std::env::var("OOMLAB_BENCH_WORKLOADS").ok();
    sh("cargo", &["build", "--release", "-p", "stress-user"])?;
    let bin = target_dir().join("release").join("oomlab");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    let bin = bin.display().to_string();
    let _stats = Sysctl::set(BPF_STATS, "kernel without BPF stats?", |_| "1".into())?;
    let mut results = Vec::new();
    for w in WORKLOADS {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| w.name.starts_with(n.trim())))
        {
            continue;
        }
        eprintln!("bench overhead: {} ({})", w.name, w.what);
        results.push(measure(w, &bin, pairs)?);
    }
    let floor = if only
        .as_deref()
        .is_none_or(|o| o.split(',').any(|n| n.trim() == "floor"))
    {
        Some(floors(&bin)?)
    } else {
        None
    };
    if !results.is_empty() {
        print_report(&results, pairs);
    }
    if let Some(f) = floor {
        print_floors(&f);
    }
    Ok(())
}

/// The per-event floor on one tracepoint, `oom:oom_score_adj_update` (the adj flood's): what a
/// program costs there with nothing in it, counting (two ways, the second being the workloads'
/// peer), printing each event (bpftrace's equivalent of oomlab's per-event line: the perf buffer
/// and a wakeup each), and oomlab's own record. Kernel `run_time_ns / run_cnt` of the program
/// that ran most (the adj program), [`FLOOR_WRITES`] writes per run, [`FLOOR_ROUNDS`] rounds in
/// rotating order.
const FLOOR_VARIANTS: &[(&str, &str)] = &[
    ("empty program (bpftrace `{ }`)", "{ }"),
    ("bpftrace `@ = count()`", "{ @ = count(); }"),
    (
        "bpftrace `@[probe] = count()` (the workloads' peer)",
        "{ @[probe] = count(); }",
    ),
    (
        "bpftrace `printf` of pid, adj and comm (a line per event)",
        "{ printf(\"%d %d %s\\n\", args->pid, args->oom_score_adj, args->comm); }",
    ),
    (
        "oomlab trace --events adj (a record and a line per event)",
        "",
    ),
];
const FLOOR_WRITES: u32 = 50_000;
const FLOOR_ROUNDS: usize = 5;

fn floors(bin: &str) -> Result<Vec<(&'static str, f64)>> {
    eprintln!("bench overhead: floor ({FLOOR_WRITES} adj writes per run, {FLOOR_ROUNDS} rounds)");
    let script = format!(
        "i=0; while [ $i -lt {FLOOR_WRITES} ]; do echo $((i % 1000)) > /proc/self/oom_score_adj; i=$((i+1)); done"
    );
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); FLOOR_VARIANTS.len()];
    for round in 0..FLOOR_ROUNDS {
        for k in 0..FLOOR_VARIANTS.len() {
            let i = (round + k) % FLOOR_VARIANTS.len();
            let (_, body) = FLOOR_VARIANTS[i];
            let cmdline = if body.is_empty() {
                format!("{bin} trace --no-hooks --events adj")
            } else {
                format!(
                    "bpftrace -e 'BEGIN {{ printf(\"ready\\n\"); }} tracepoint:oom:oom_score_adj_update {body}'"
                )
            };
            let t = Traced::start(&cmdline)?;
            t.until("ready", Instant::now())?;
            let before = prog_stats(t.pid())?;
            let st = Command::new("sh").arg("-c").arg(&script).status()?;
            if !st.success() {
                bail!("the floor's adj writes failed: {st}");
            }
            let after = prog_stats(t.pid())?;
            t.stop();
            let busiest = delta(&before, &after)
                .into_values()
                .max_by_key(|&(_, n)| n)
                .filter(|&(_, n)| n >= u64::from(FLOOR_WRITES));
            match busiest {
                Some((ns, n)) => per[i].push(ns as f64 / n as f64),
                None => bail!("{cmdline}: no program ran {FLOOR_WRITES} times"),
            }
        }
    }
    Ok(FLOOR_VARIANTS
        .iter()
        .zip(per)
        .map(|(&(name, _), mut v)| (name, median(&mut v)))
        .collect())
}

fn print_floors(f: &[(&'static str, f64)]) {
    println!(
        "\nper-event floor on oom:oom_score_adj_update (kernel run_time_ns / run_cnt, median of {FLOOR_ROUNDS} runs of {FLOOR_WRITES} writes):\n"
    );
    let ours = f.last().map_or(f64::NAN, |&(_, ns)| ns);
    println!("| program | ns/event | oomlab's record / this |");
    println!("|---|---|---|");
    for &(name, ns) in f {
        println!("| {name} | {ns:.0} | {:.2} × |", ours / ns);
    }
}

fn print_report(results: &[WorkloadResult], pairs: usize) {
    println!(
        "\nbench overhead ({}; {pairs} rounds of bare / oomlab / bpftrace in rotating order; kernel BPF stats on throughout)\n",
        kernel_release()
    );
    println!("| workload | events/run | ns/event oomlab | ns/event bpftrace | CPU in programs oomlab / bpftrace | wall oomlab vs bare | wall bpftrace vs bare | oomlab user CPU | oomlab RSS before → after |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let [bare, ours, peer] = &r.tallies;
        let runs = ours.walls.len().max(1) as f64;
        let mut cpu = ours.own_cpu.clone();
        let (mut rb, mut ra) = (ours.rss_before.clone(), ours.rss_after.clone());
        println!(
            "| {} ({:.2} s bare) | {:.0} | {:.0} | {:.0} | {:.3} % / {:.3} % | {} | {} | {:.2} % of a core | {:.1} → {:.1} MiB |",
            r.name,
            median(&mut bare.walls.clone()),
            ours.events() as f64 / runs,
            ours.ns_per_event(),
            peer.ns_per_event(),
            ours.prog_cpu_pct(),
            peer.prog_cpu_pct(),
            ratio_summary(&ours.ratios),
            ratio_summary(&peer.ratios),
            median(&mut cpu),
            median(&mut rb),
            median(&mut ra),
        );
    }
    let mut per_prog: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in results {
        add_into(&mut per_prog, &r.tallies[1].progs);
    }
    println!("\noomlab's programs over every workload (kernel run_time_ns / run_cnt):\n");
    println!("| program | runs | ns/run |");
    println!("|---|---|---|");
    for (name, (ns, n)) in per_prog.iter().filter(|(_, &(_, n))| n > 0) {
        println!("| {name} | {n} | {:.0} |", *ns as f64 / *n as f64);
    }
}
