//! Runs an experiment in one process: the tracer and the kernel-log reader on a tokio runtime,
//! a sampler thread reading the cgroup every 100 ms, and the injector's agent on the main thread
//! (its workers must be forked there: PR_SET_PDEATHSIG follows the forking thread). Everything
//! lands on one CLOCK_MONOTONIC timeline — the clock of the kernel's event timestamps.
//!
//! This file orders the stages; the apps, the collector, the sampler and the report's building
//! each have a module of their own, and everything printed is rendered by `report::run_live`.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    apps::{self, AppProc},
    collector::{lock, Collector, Shared},
    report_build::{self, RunEnd, StageRun},
    sampler::Sampler,
    spec::{Adj, App, Experiment, Inject, SpecError, Stage},
    stage_plan::plan_stage,
    target::{open_target, preflight},
    trace_feed::start_tracer,
};
use crate::{
    cgroup::{CgroupError, Hierarchy, MemCgroup},
    inject::{agent, control::Pace, event, plan},
    process,
    report::{
        run_live::{self, AppStarted, Ready, StageEnd, StageStart, StageTotals},
        timeline::RunReport,
        OutputFormat,
    },
    sys::monotonic_ns,
    trace::Tracer,
};

/// How long after the last stage the run waits for late kernel-log lines and events.
const FLUSH_WAIT: Duration = Duration::from_millis(700);
/// The same once interrupted: a stopped run must end within a couple of seconds, and the
/// tracer's drain (until the ring buffer and the kernel log are quiet for 100 ms) still reads
/// what came just before the stop.
const FLUSH_WAIT_INTERRUPTED: Duration = Duration::ZERO;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The experiment cannot run as written (bad input: exit 2).
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Input(String),
    /// Something failed while running (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl From<CgroupError> for RunError {
    fn from(e: CgroupError) -> Self {
        RunError::Failed(e.to_string())
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub output: OutputFormat,
    /// Draw a progress bar on ramps (human output on a terminal).
    pub progress: bool,
    /// Where `--kind file` puts its files.
    pub file_dir: PathBuf,
    /// `--allow-group-kill`: as `allow_group_kill = true` in the file.
    pub allow_group_kill: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            output: OutputFormat::Human,
            progress: std::io::stdout().is_terminal(),
            file_dir: PathBuf::from("/var/tmp"),
            allow_group_kill: false,
        }
    }
}

/// Runs the experiment and returns its report. Workers and the built-in app are started from
/// this very binary. A stop request (SIGINT, SIGTERM, SIGHUP, SIGQUIT — handled from the
/// process's first instant — or a closed stdout) ends whatever phase is running at once: the
/// report then covers what ran, and says what was cut short and what was skipped.
pub fn run(exp: &Experiment, opts: &RunOptions) -> Result<RunReport, RunError> {
    // An app's orphans (a daemonizing child, its grandchildren) are re-parented to oomlab, so
    // the run's end finds and kills every one of them, in whatever cgroup they are.
    if let Err(e) = process::become_subreaper() {
        log::warn!("PR_SET_CHILD_SUBREAPER failed ({e}): an app's orphans may outlive the run");
    }
    let hier = preflight(exp)?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let (cg, scratch) = open_target(exp, &hier)?;
    if scratch.is_none() {
        plan::refuse_group_kill(&cg, exp.allow_group_kill || opts.allow_group_kill)
            .map_err(|e| RunError::Input(e.to_string()))?;
    }

    let t0 = monotonic_ns();
    let shared = Collector::new(t0, opts.output, exp.stages.len());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(format!("starting the async runtime: {e}")))?;
    lock(&shared).enter("loading the tracer");
    // Interrupted before the tracer was loaded: nothing to trace, no reason to load it.
    let tracing = if lock(&shared).check_stop() {
        None
    } else {
        // Victims named by the runtimes (container, pod, init or not) in the run's report.
        let names = crate::runtime::cache::Names::start(
            crate::runtime::Runtimes::new(&exp.runtime, Some(&hier)),
            Some(hier.memory_version),
            Duration::from_secs(3),
        );
        Some(start_tracer(&rt, &cg, &shared, names)?)
    };
    let (tracer, kmsg_ok, feed) = match tracing {
        Some((t, k, f)) => (Some(t), k, Some(f)),
        None => (None, false, None),
    };
    // A signal while it loaded is noticed (and named) here, not in the next phase.
    lock(&shared).check_stop();
    announce(
        exp,
        &cg,
        scratch.is_some(),
        tracer.as_ref(),
        kmsg_ok,
        t0,
        &shared,
    );
    let sampler = Sampler::start(&shared, &cg);

    let mut apps: Vec<AppProc> = Vec::new();
    let ctx = Ctx {
        opts,
        hier: &hier,
        cg: &cg,
        shared: &shared,
    };
    let result = run_stages(exp, &ctx, &exe, &mut apps);
    let interrupted = lock(&shared).check_stop();

    // Let go of the apps (each with all it started), then give late events and kernel-log
    // lines time to arrive: less of it once interrupted, which must end promptly.
    note_exits(&shared, &mut apps, false);
    let apps_alive = apps::alive(&apps);
    apps.iter_mut().for_each(AppProc::kill);
    let (killed, all_gone) = process::kill_descendants(Duration::from_secs(1));
    if !all_gone {
        log::warn!("some processes the apps started were still running after the run");
    } else if killed > 0 {
        log::info!("killed {killed} processes the apps left behind");
    }
    thread::sleep(if interrupted {
        FLUSH_WAIT_INTERRUPTED
    } else {
        FLUSH_WAIT
    });
    sampler.stop();
    lock(&shared).stop();
    if let Some(feed) = feed {
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), feed).await });
    }
    let stats = tracer.as_ref().map(Tracer::stats);
    let oom_kills_total = cg.oom_kills().unwrap_or(0);
    // Detaching waits in the kernel for RCU grace periods (0.5-0.7 s measured under load on
    // 6.18): done beside the rest of the teardown, joined before returning.
    let detach = tracer.map(|t| thread::spawn(move || drop(t)));
    rt.shutdown_timeout(Duration::from_millis(200));
    let stage_runs = match result {
        Ok(runs) => runs,
        Err(e) => {
            if let Some(d) = detach {
                let _ = d.join();
            }
            return Err(e);
        }
    };

    let end = RunEnd {
        apps_alive,
        lost: stats.map_or(0, |s| s.lost),
        oom_kills_total,
        stop: crate::stop::cause(),
    };
    let report = report_build::build(exp, &cg, &mut lock(&shared), &stage_runs, &end);
    drop(scratch);
    if let Some(d) = detach {
        let _ = d.join();
    }
    Ok(report)
}

/// The lines before the first stage, and the `ready` JSON line.
fn announce(
    exp: &Experiment,
    cg: &MemCgroup,
    scratch: bool,
    tracer: Option<&Tracer>,
    kmsg_ok: bool,
    t0: u64,
    shared: &Shared,
) {
    let s = lock(shared);
    let ready = Ready {
        experiment: &exp.name,
        cgroup: cg.path(),
        cgroup_version: cg.version.to_string(),
        limit_bytes: cg.limit().ok().flatten(),
        tracepoints: tracer.map_or(&[][..], |t| &t.attached),
        clock: "CLOCK_MONOTONIC",
        t0_ns: t0,
    };
    let desc = exp.description.as_deref();
    for line in run_live::ready_lines(&ready, desc, scratch, cg.version, kmsg_ok) {
        s.say(&line);
    }
    s.json("ready", &ready);
}

/// The run's context every stage works in.
struct Ctx<'a> {
    opts: &'a RunOptions,
    hier: &'a Hierarchy,
    cg: &'a MemCgroup,
    shared: &'a Shared,
}

fn run_stages(
    exp: &Experiment,
    ctx: &Ctx<'_>,
    exe: &Path,
    apps: &mut Vec<AppProc>,
) -> Result<Vec<StageRun>, RunError> {
    for app in &exp.apps {
        lock(ctx.shared).enter(format!("starting app {}", app.name));
        if lock(ctx.shared).check_stop() {
            return Ok(Vec::new());
        }
        start_app(app, ctx, exe, apps)?;
    }
    let mut runs = Vec::new();
    let n = exp.stages.len();
    for (i, stage) in exp.stages.iter().enumerate() {
        if lock(ctx.shared).check_stop() {
            break;
        }
        lock(ctx.shared).enter(format!("stage {}", i + 1));
        runs.push(run_stage(i, n, stage, ctx, apps)?);
    }
    Ok(runs)
}

/// Starts an app and waits until it holds its memory; it is in `apps` (to be killed at the
/// end) even when it failed to get ready.
fn start_app(
    app: &App,
    ctx: &Ctx<'_>,
    exe: &Path,
    apps: &mut Vec<AppProc>,
) -> Result<(), RunError> {
    let (mut proc, out) = AppProc::spawn(app, ctx.cg, exe)?;
    let pid = proc.pid;
    {
        let mut s = lock(ctx.shared);
        let role = format!("app:{}", app.name);
        s.roles.insert(pid, role.clone());
        s.mark("app_started", Some(pid), Some(role), app.name.clone());
    }
    let ready = proc.wait_ready(out);
    if ready.is_ok() && !crate::stop::requested() {
        let s = lock(ctx.shared);
        s.say(&run_live::app_line(app, pid, ctx.cg.usage().ok()));
        let started = AppStarted {
            name: &app.name,
            pid,
            oom_score_adj: app.oom_score_adj,
            t: s.t(),
        };
        s.json("app_started", &started);
    }
    apps.push(proc);
    ready
}

fn run_stage(
    i: usize,
    n: usize,
    stage: &Stage,
    ctx: &Ctx<'_>,
    apps: &mut [AppProc],
) -> Result<StageRun, RunError> {
    let cg = ctx.cg;
    let oom_base = cg.oom_kills().unwrap_or(0);
    let counters_before = cg.pressure_counters();
    let started = Instant::now();
    let limit = cg.limit().ok().flatten();
    let adj = stage
        .inject
        .as_ref()
        .and_then(|i| i.oom_score_adj)
        .map(Adj::resolve);
    let start = begin_stage(ctx.shared, i, n, stage, adj);
    let (summary, requested) = match &stage.inject {
        Some(inj) => {
            let (summary, requested) = inject(ctx, i, stage, inj, adj, limit)?;
            (Some(summary), Some(requested))
        }
        None => {
            crate::stop::sleep(stage.hold);
            (None, None)
        }
    };
    let before_settle = lock(ctx.shared).t();
    crate::stop::sleep(stage.settle);
    let interrupted = lock(ctx.shared).check_stop();
    note_exits(ctx.shared, apps, true);
    let apps_alive = apps::alive(apps);
    let oom_end = cg.oom_kills().unwrap_or(oom_base);
    let pressure = cg
        .pressure_counters()
        .since(&counters_before, started.elapsed());
    let run = StageRun {
        index: i,
        start,
        end: lock(ctx.shared).t(),
        oom_base,
        oom_end,
        summary,
        requested,
        apps_alive,
        pressure,
        interrupted,
    };
    end_stage(ctx, stage, &run, limit, before_settle);
    Ok(run)
}

/// Marks, prints and returns the stage's start.
fn begin_stage(shared: &Shared, i: usize, n: usize, stage: &Stage, adj: Option<i32>) -> f64 {
    let mut s = lock(shared);
    s.stage = Some(i);
    s.mark("stage_start", None, None, stage.name.clone());
    s.say("");
    s.say(&run_live::stage_header(i, n, stage, adj));
    let json = StageStart {
        index: i,
        name: &stage.name,
        t: s.t(),
    };
    s.json("stage_start", &json);
    s.t()
}

/// Runs the stage's injection to its end: what the agent summed up, and the bytes requested.
fn inject(
    ctx: &Ctx<'_>,
    i: usize,
    stage: &Stage,
    inj: &Inject,
    adj: Option<i32>,
    limit: Option<u64>,
) -> Result<(event::Summary, u64), RunError> {
    let plan = plan_stage(i, stage, inj, adj, ctx.hier, ctx.cg, &ctx.opts.file_dir)?;
    let requested = plan.goal.bytes();
    let opts = ctx.opts;
    if opts.progress && opts.output == OutputFormat::Human && inj.pace != Pace::Fast {
        let total = requested.min(limit.unwrap_or(u64::MAX));
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "   ramp [{bar:40}] {binary_bytes}/{binary_total_bytes} held by workers ({elapsed})",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        lock(ctx.shared).progress = Some((pb, total));
    }
    let result = agent::run(ctx.hier, &plan, &mut |ev| lock(ctx.shared).on_agent(ev));
    if let Some((pb, _)) = lock(ctx.shared).progress.take() {
        pb.finish_and_clear();
    }
    let summary = result.map_err(|e| RunError::Failed(format!("stage {}: {e}", i + 1)))?;
    Ok((summary, requested))
}

/// Notes the apps that have exited since the last look; at a stage's end (`tell`) each is
/// also printed and marked on the timeline.
fn note_exits(shared: &Shared, apps: &mut [AppProc], tell: bool) {
    let now = lock(shared).t();
    for a in apps.iter_mut().filter(|a| a.exited.is_none()) {
        let Some(how) = a.poll_exit() else { continue };
        if tell {
            let mut s = lock(shared);
            s.say(&run_live::app_exited_line(now, &a.app.name, a.pid, &how));
            let role = format!("app:{}", a.app.name);
            s.mark(
                "app_exited",
                Some(a.pid),
                Some(role),
                format!("{} {how}", a.app.name),
            );
        }
        a.exited = Some((now, how));
    }
}

/// Marks the stage's end, and prints its totals and its `stage_end` JSON line.
fn end_stage(ctx: &Ctx<'_>, stage: &Stage, run: &StageRun, limit: Option<u64>, before_settle: f64) {
    let mut s = lock(ctx.shared);
    s.mark("stage_end", None, None, stage.name.clone());
    let oom_kills = run.oom_end - run.oom_base;
    let json = StageEnd {
        index: run.index,
        name: &stage.name,
        t: run.end,
        oom_kills,
        requested_bytes: run.requested,
        charged_bytes: run.summary.as_ref().map(|x| x.charged_bytes),
        pressure: &run.pressure,
    };
    s.json("stage_end", &json);
    let peak_usage = s
        .samples
        .iter()
        .filter(|x| x.t >= run.start && x.t <= before_settle)
        .map(|x| x.usage_bytes)
        .max()
        .unwrap_or(0);
    let cgroup = ctx.cg.path();
    let totals = StageTotals {
        summary: run.summary.as_ref(),
        requested: run.requested,
        sized: stage.by_size(),
        limit,
        cgroup: &cgroup,
        version: ctx.cg.version,
        peak_usage,
        host: s.host_peak.get(run.index).copied().unwrap_or((0, 0)),
        oom_kills,
        pressure: &run.pressure,
    };
    for line in run_live::stage_end_lines(&totals) {
        s.say(&line);
    }
}
