//! `oomlab inject`: hold exactly the requested memory inside a target cgroup, charged there by
//! worker processes born in it, until a duration, Ctrl-C or SIGTERM; then release it all.

use std::{path::PathBuf, time::Duration};

use crate::{
    cgroup::{
        find_leftovers, remove_leftover,
        target::{self, TargetArgs},
        Hierarchy, MemCgroup,
    },
    cli::exit,
    inject::{
        agent,
        alloc::{AllocOptions, Fill, Kind},
        control::Pace,
        plan::{self, InjectError, NodeMemory, OnOom, Request},
        pressure::{parse_level, PressureGoal},
    },
    report::{inject::InjectOutput, OutputFormat},
    runtime::{RuntimeArgs, Runtimes},
    size::{SizeError, SizeSpec},
};

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("goal").required(true).args(["size", "working_set", "pressure"]))]
#[command(group = clap::ArgGroup::new("pace").args(["ramp", "rate"]))]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Create a scratch cgroup `oomlab/NAME` as the target (needs --limit); removed at the end.
    #[arg(long, value_name = "NAME", requires = "limit", conflicts_with_all = ["cgroup", "pid", "pod", "container"])]
    new: Option<String>,
    /// The memory limit of the --new cgroup (SIZE, or NN% of node RAM).
    #[arg(
        long,
        value_name = "SIZE",
        requires = "new",
        allow_hyphen_values = true
    )]
    limit: Option<SizeSpec>,
    /// TOTAL memory to hold across all workers (split evenly among them), e.g. 200MiB, 1.5GiB,
    /// or NN% of the target's memory limit.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    size: Option<SizeSpec>,
    /// Instead of --size: hold the target's working set (usage − inactive_file) at this level
    /// (SIZE or NN% of its limit), giving memory back when the app grows and taking it when the
    /// app shrinks.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    working_set: Option<SizeSpec>,
    /// Instead of --size: hold the target's memory stall (PSI) at this share of wall time,
    /// `some=10%` or `full=5%`, steering on the kernel's `total=` counter (cgroup v2: the
    /// target's memory.pressure; needs a memory limit).
    #[arg(long, value_name = "KIND=N%")]
    pressure: Option<String>,
    /// The window --pressure is measured and reported over.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", requires = "pressure")]
    pressure_window: Duration,
    /// --pressure holds the node's /proc/pressure/memory instead (cgroup v1 has no per-cgroup
    /// PSI); every line says so.
    #[arg(long, requires = "pressure")]
    node_pressure: bool,
    /// Worker processes (the size is split evenly among them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// Grow linearly to the size over this long (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    ramp: Option<Duration>,
    /// Grow at this rate, e.g. 100MiB/s.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<u64>,
    /// What memory to hold.
    #[arg(long, value_enum, default_value_t)]
    kind: Kind,
    /// Where --kind file puts its file (a real filesystem, not tmpfs); the file is unlinked at
    /// once and gone at the end.
    #[arg(long, default_value = "/var/tmp")]
    file_dir: PathBuf,
    /// Ask for transparent huge pages (MADV_HUGEPAGE).
    #[arg(long)]
    thp: bool,
    /// What the pages hold: zero, or random (incompressible: zswap/zram cannot shrink it).
    #[arg(long, value_enum, default_value_t)]
    fill: Fill,
    /// Lock the memory (mlock), so it cannot be swapped or reclaimed.
    #[arg(long)]
    mlock: bool,
    /// Re-touch every page this often while holding (e.g. 1s); otherwise workers sleep.
    #[arg(long, value_parser = humantime::parse_duration)]
    redirty: Option<Duration>,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// oom_score_adj of every worker (−1000…1000), set before it allocates.
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    oom_score_adj: Option<i32>,
    /// When a worker dies: stop (exit 3), respawn it with backoff, or continue with the rest
    /// (exit 3 once none is left).
    #[arg(long, value_enum, default_value_t)]
    on_oom: OnOom,
    /// Allow a size over the target's limit (it will OOM).
    #[arg(long)]
    allow_oom: bool,
    /// Allow a target where `memory.oom.group` is set (on it, or on an ancestor up to its OOM
    /// domain): the first worker OOM then kills every process in that group.
    #[arg(long)]
    allow_group_kill: bool,
    /// Allow a size over the node's MemAvailable minus a 5% reserve, and protected targets (the
    /// root cgroup, system slices, the kubepods root and its QoS cgroups).
    #[arg(long)]
    force: bool,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

/// `100MiB/s` (the `/s` is optional).
fn parse_rate(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    match SizeSpec::parse(t)? {
        SizeSpec::Bytes(b) => Ok(b),
        SizeSpec::Percent(_) => Err(SizeError::Invalid(text.into())),
    }
}

fn usage(e: impl std::fmt::Display) -> anyhow::Result<i32> {
    eprintln!("oomlab inject: {e}");
    Ok(exit::USAGE)
}

pub(super) fn run(args: &Args) -> anyhow::Result<i32> {
    let hier = Hierarchy::detect()?;
    remove_leftovers(&hier);
    let target = if args.new.is_some() {
        None
    } else {
        match existing_target(&hier, args) {
            Ok(cg) => Some(cg),
            Err(e) => return usage(e),
        }
    };
    let pace = match (args.ramp, args.rate) {
        (Some(d), _) => Pace::Ramp(d),
        (None, Some(0)) => return usage("--rate must be above zero"),
        (None, Some(r)) => Pace::Rate(r),
        (None, None) => Pace::Fast,
    };
    let pressure = match args.pressure.as_deref().map(parse_level).transpose() {
        Ok(level) => level.map(|level| PressureGoal {
            level,
            window: args.pressure_window,
            node: args.node_pressure,
            allow_oom: args.allow_oom,
        }),
        Err(e) => return usage(e),
    };
    let req = Request {
        pressure,
        ..request(args, target, pace)
    };
    let node = NodeMemory::read()?;
    let plan = match plan::check(&hier, &req, node) {
        Ok(p) => p,
        Err(e) => return usage(e),
    };
    let mut output = InjectOutput::new(args.output);
    let summary = agent::run(&hier, &plan, &mut |ev| output.write(ev))?;
    Ok(summary.exit_code)
}

/// A scratch cgroup whose agent was killed is removed before anything else, so its name is
/// free again and its memory is back.
fn remove_leftovers(hier: &Hierarchy) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    for l in find_leftovers(hier, false) {
        match remove_leftover(&l) {
            Ok(()) => eprintln!(
                "oomlab inject: removed leftover scratch cgroup {} (agent {} is gone)",
                l.cgroup.path(),
                l.owner.map_or("?".into(), |p| p.to_string())
            ),
            Err(e) => eprintln!(
                "oomlab inject: could not remove leftover {}: {e}",
                l.cgroup.path()
            ),
        }
    }
}

/// The existing cgroup that --cgroup, --pid, --pod or --container names, if oomlab may write
/// to it.
fn existing_target(hier: &Hierarchy, args: &Args) -> Result<MemCgroup, InjectError> {
    if args.target.is_empty() {
        return Err(InjectError::NoTarget);
    }
    let runtimes = Runtimes::new(&args.runtime, Some(hier));
    let cg = target::resolve_with(hier, &args.target, Some(&runtimes))?;
    target::check_writable(&cg, args.force)?;
    Ok(cg)
}

fn request(args: &Args, target: Option<MemCgroup>, pace: Pace) -> Request {
    Request {
        target,
        new: args.new.clone().zip(args.limit),
        size: args.size,
        working_set: args.working_set,
        pressure: None,
        workers: args.workers as usize,
        pace,
        kind: args.kind,
        alloc: AllocOptions {
            thp: args.thp,
            fill: args.fill,
            mlock: args.mlock,
        },
        redirty: args.redirty,
        duration: args.duration,
        oom_score_adj: args.oom_score_adj,
        on_oom: args.on_oom,
        allow_oom: args.allow_oom,
        allow_group_kill: args.allow_group_kill,
        force: args.force,
        file_dir: args.file_dir.clone(),
    }
}
