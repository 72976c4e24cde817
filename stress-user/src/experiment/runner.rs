//! Runs an experiment in one process: the tracer and the kernel-log reader on a tokio runtime,
//! a sampler thread reading the cgroup every 100 ms, and the injector's agent on the main thread
//! (its workers must be forked there: PR_SET_PDEATHSIG follows the forking thread). Everything
//! lands on one CLOCK_MONOTONIC timeline — the clock of the kernel's event timestamps.

use std::{
    collections::HashMap,
    fs,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{
    apps::{self, AppProc},
    expect::{evaluate, Observed},
    spec::{Adj, Amount, AppKind, Experiment, SpecError, Stage, Target},
};
use crate::{
    cgroup::{
        find_leftovers, remove_leftover,
        target::{self, TargetArgs},
        CgroupError, Hierarchy, MemCgroup, Pressure, ScratchCgroup, Version,
    },
    inject::{
        agent,
        alloc::{AllocOptions, Kind},
        control::Pace,
        event::{self, AgentEvent},
        plan::{self, NodeMemory, Request},
    },
    report::{
        inject::timed_json_line,
        json_line,
        timeline::{
            Candidate, CgroupSample, EpisodeReport, Mark, RunReport, RunSummary, StageReport,
            Verdict,
        },
        OutputFormat,
    },
    size::human,
    sys::monotonic_ns,
    trace::{
        episode::{Episode as TraceEpisode, Episodes},
        pump::{Pump, Pumped},
        EventKind, TraceOptions, Tracer,
    },
};

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// How long after the last stage the run waits for late kernel-log lines and events.
const FLUSH_WAIT: Duration = Duration::from_millis(700);

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
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            output: OutputFormat::Human,
            progress: std::io::stdout().is_terminal(),
            file_dir: PathBuf::from("/var/tmp"),
        }
    }
}

/// `worker`, `app:<name>` or `other`.
fn role_of(roles: &HashMap<i32, String>, pid: i32) -> String {
    roles.get(&pid).cloned().unwrap_or_else(|| "other".into())
}

fn role_label(role: &str) -> String {
    match role.strip_prefix("app:") {
        Some(name) => format!("app {name}"),
        None => role.to_string(),
    }
}

/// A victim as the tracer saw it.
#[derive(Debug, Clone, Serialize)]
struct VictimSeen {
    t: f64,
    pid: i32,
    comm: Option<String>,
    role: String,
    oom_score_adj: Option<i32>,
    anon_rss_kb: Option<u64>,
    trigger_pid: u32,
    trigger_comm: String,
    stage: Option<usize>,
    /// Known from the kernel log only: the tracer did not deliver its `mark_victim` (a victim
    /// gone before its cgroup could be read is dropped by the tracer's target filter on v2).
    from_kmsg: bool,
}

/// State shared by the collector task, the sampler thread and the main thread.
struct Shared {
    t0: u64,
    output: OutputFormat,
    roles: HashMap<i32, String>,
    stage: Option<usize>,
    victims: Vec<VictimSeen>,
    episodes: Vec<(TraceEpisode, Option<usize>)>,
    /// Episodes already printed per stage (the first gets its full table).
    printed_tables: Vec<usize>,
    marks: Vec<Mark>,
    samples: Vec<CgroupSample>,
    reclaimed_pages: u64,
    reclaim_passes: u64,
    host_peak: Vec<(u64, u64)>,
    progress: Option<(ProgressBar, u64)>,
    stop: bool,
}

impl Shared {
    fn t(&self) -> f64 {
        monotonic_ns().saturating_sub(self.t0) as f64 / 1e9
    }

    fn t_of(&self, ts: Duration) -> f64 {
        (ts.as_nanos() as i128 - i128::from(self.t0)) as f64 / 1e9
    }

    /// A human line (kept clear of the progress bar).
    fn say(&self, line: &str) {
        if self.output != OutputFormat::Human {
            return;
        }
        match &self.progress {
            Some((pb, _)) => pb.println(line),
            None => println!("{line}"),
        }
    }

    /// A JSON line.
    fn json<T: Serialize>(&self, kind: &str, value: &T) {
        if self.output == OutputFormat::Json {
            let mut out = std::io::stdout().lock();
            let _ = json_line(&mut out, kind, value);
        }
    }

    fn mark(&mut self, kind: &str, pid: Option<i32>, role: Option<String>, label: String) {
        let t = self.t();
        let stage = self.stage;
        self.marks.push(Mark {
            t,
            kind: kind.into(),
            pid,
            role,
            label,
            stage,
        });
    }
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Host memory as `free` reports it (procps-ng 4: used = total − available), in bytes.
fn host_memory() -> (u64, u64) {
    NodeMemory::read().map_or((0, 0), |m| (m.total.saturating_sub(m.available), m.total))
}

/// The target cgroup for the run, and the scratch guard that removes it.
fn open_target(
    exp: &Experiment,
    hier: &Hierarchy,
) -> Result<(MemCgroup, Option<ScratchCgroup>), RunError> {
    match &exp.target {
        Target::Scratch {
            limit,
            memory_high,
            oom_group,
        } => {
            let name = format!("run-{}", std::process::id());
            let scratch = ScratchCgroup::create_owned(hier, &name, *limit)?;
            let cg = scratch.cgroup().clone();
            if let Some(h) = memory_high {
                cg.write("memory.high", &h.value.to_string())?;
            }
            if let Some(g) = oom_group {
                cg.write("memory.oom.group", if g.value { "1" } else { "0" })?;
            }
            Ok((cg, Some(scratch)))
        }
        other => {
            let args = match other {
                Target::Cgroup(p) => TargetArgs {
                    cgroup: Some(p.clone()),
                    ..Default::default()
                },
                Target::Pod(p) => TargetArgs {
                    pod: Some(p.clone()),
                    ..Default::default()
                },
                Target::Container(c) => TargetArgs {
                    container: Some(c.clone()),
                    ..Default::default()
                },
                Target::Pid(p) => TargetArgs {
                    pid: Some(*p),
                    ..Default::default()
                },
                Target::Scratch { .. } => unreachable!("matched above"),
            };
            let cg = target::resolve(hier, &args).map_err(|e| RunError::Input(e.to_string()))?;
            target::check_writable(&cg, false).map_err(|e| RunError::Input(e.to_string()))?;
            Ok((cg, None))
        }
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

/// Runs the experiment and returns its report. `exe` is the oomlab binary (workers and the
/// built-in app are started from it).
pub fn run(exp: &Experiment, opts: &RunOptions) -> Result<RunReport, RunError> {
    let hier = Hierarchy::detect().map_err(|e| RunError::Input(e.to_string()))?;
    exp.check_host(hier.memory_version)?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(RunError::Input(format!(
            "oomlab run must run as root (euid is {euid}): it creates cgroups, loads eBPF programs and reads /dev/kmsg; run it with sudo"
        )));
    }
    for l in find_leftovers(&hier, false) {
        if remove_leftover(&l).is_ok() {
            eprintln!(
                "oomlab run: removed leftover scratch cgroup {} (its oomlab is gone)",
                l.cgroup.path()
            );
        }
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let (cg, scratch) = open_target(exp, &hier)?;

    let t0 = monotonic_ns();
    let shared = Arc::new(Mutex::new(Shared {
        t0,
        output: opts.output,
        roles: HashMap::new(),
        stage: None,
        victims: Vec::new(),
        episodes: Vec::new(),
        printed_tables: vec![0; exp.stages.len()],
        marks: Vec::new(),
        samples: Vec::new(),
        reclaimed_pages: 0,
        reclaim_passes: 0,
        host_peak: vec![(0, 0); exp.stages.len()],
        progress: None,
        stop: false,
    }));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| RunError::Failed(format!("starting the async runtime: {e}")))?;
    let (tracer, kmsg_ok, collector) = {
        let _enter = rt.enter();
        let (tracer, rx) = Tracer::start(&TraceOptions {
            target: Some(cg.clone()),
            ..TraceOptions::default()
        })
        .map_err(|e| RunError::Failed(format!("starting the tracer: {e}")))?;
        // Opened before anything is injected, so no OOM report of the run is missed.
        let mut pump = Pump::new(rx, Some(Episodes::start(None)));
        let kmsg_ok = pump.has_kmsg();
        let sh = shared.clone();
        let cg_path = cg.path();
        let collector = rt.spawn(async move {
            // Stop is asked for through `Shared`; once it is, the pump drains what a kill just
            // before it left in the ring buffer and /dev/kmsg, then closes the open episodes.
            let mut stop_check = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    item = pump.next() => match item {
                        Some(Pumped::Events(batch)) => {
                            for ev in &batch {
                                on_event(&sh, ev);
                            }
                        }
                        Some(Pumped::Episode(ep)) => on_episode(&sh, *ep, &cg_path),
                        None => break,
                    },
                    _ = stop_check.tick(), if !pump.stopping() => {
                        if lock(&sh).stop {
                            pump.stop();
                        }
                    }
                }
            }
        });
        (tracer, kmsg_ok, collector)
    };

    {
        let s = lock(&shared);
        let limit = cg.limit().ok().flatten();
        s.say(&format!(
            "oomlab run {}{}",
            exp.name,
            exp.description
                .as_deref()
                .map_or(String::new(), |d| format!(": {d}"))
        ));
        s.say(&format!(
            "target   {} cgroup {} ({}), limit {}",
            if scratch.is_some() {
                "scratch"
            } else {
                "existing"
            },
            cg.path(),
            cg.version,
            limit.map_or("none".into(), human)
        ));
        s.say(&format!(
            "tracer   ready: {} tracepoints attached{}",
            tracer.attached.len(),
            if kmsg_ok {
                ", kernel log open for the OOM killer's candidate tables"
            } else {
                ""
            }
        ));
        #[derive(Serialize)]
        struct Start<'a> {
            experiment: &'a str,
            cgroup: String,
            cgroup_version: String,
            limit_bytes: Option<u64>,
            tracepoints: &'a [String],
            clock: &'static str,
            t0_ns: u64,
        }
        s.json(
            "ready",
            &Start {
                experiment: &exp.name,
                cgroup: cg.path(),
                cgroup_version: cg.version.to_string(),
                limit_bytes: limit,
                tracepoints: &tracer.attached,
                clock: "CLOCK_MONOTONIC",
                t0_ns: t0,
            },
        );
    }

    // The sampler: cgroup counters, the workers' memory and the reclaim rate every 100 ms.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sh = shared.clone();
        let cg = cg.clone();
        let on = sampling.clone();
        thread::spawn(move || sample_loop(&sh, &cg, &on))
    };

    let mut apps: Vec<AppProc> = Vec::new();
    let result = run_stages(exp, opts, &hier, &cg, &exe, &shared, &mut apps);

    // Let go of the apps, then give late events and kernel-log lines time to arrive.
    for a in apps.iter_mut().filter(|a| a.exited.is_none()) {
        if let Some(how) = a.poll_exit() {
            a.exited = Some((lock(&shared).t(), how));
        }
    }
    let apps_alive_at_end = apps::alive(&apps);
    apps.iter_mut().for_each(AppProc::kill);
    thread::sleep(FLUSH_WAIT);
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.join();
    lock(&shared).stop = true;
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), collector).await });
    let stats = tracer.stats();
    let oom_kills_total = cg.oom_kills().unwrap_or(0);
    drop(tracer);
    rt.shutdown_timeout(Duration::from_millis(200));
    let stage_runs = result?;

    let report = build_report(
        exp,
        &cg,
        &shared,
        &stage_runs,
        &apps_alive_at_end,
        stats.lost,
        oom_kills_total,
    );
    drop(scratch);
    Ok(report)
}

/// What the main thread learned running one stage.
struct StageRun {
    index: usize,
    start: f64,
    end: f64,
    oom_base: u64,
    oom_end: u64,
    summary: Option<event::Summary>,
    requested: Option<u64>,
    apps_alive: Vec<(String, bool)>,
    pressure: Pressure,
}

fn run_stages(
    exp: &Experiment,
    opts: &RunOptions,
    hier: &Hierarchy,
    cg: &MemCgroup,
    exe: &Path,
    shared: &Arc<Mutex<Shared>>,
    apps: &mut Vec<AppProc>,
) -> Result<Vec<StageRun>, RunError> {
    for app in &exp.apps {
        let (mut proc, out) = AppProc::spawn(app, cg, exe)?;
        let pid = proc.pid;
        {
            let mut s = lock(shared);
            s.roles.insert(pid, format!("app:{}", app.name));
            s.mark(
                "app_started",
                Some(pid),
                Some(format!("app:{}", app.name)),
                app.name.clone(),
            );
        }
        if let Err(e) = proc.wait_ready(out) {
            apps.push(proc);
            return Err(e);
        }
        let s = lock(shared);
        let what = match &app.kind {
            AppKind::Builtin { size } => format!("oomlab app holding {}", human(*size)),
            AppKind::Command(argv) => format!("`{}`", argv.join(" ")),
        };
        s.say(&format!(
            "app      {}: pid {pid}, {what}{} — usage now {}",
            app.name,
            app.oom_score_adj
                .map_or(String::new(), |a| format!(", oom_score_adj {a}")),
            cg.usage().map_or("?".into(), human)
        ));
        #[derive(Serialize)]
        struct AppStarted<'a> {
            name: &'a str,
            pid: i32,
            oom_score_adj: Option<i32>,
            t: f64,
        }
        s.json(
            "app_started",
            &AppStarted {
                name: &app.name,
                pid,
                oom_score_adj: app.oom_score_adj,
                t: s.t(),
            },
        );
        drop(s);
        apps.push(proc);
    }

    let mut runs = Vec::new();
    let n = exp.stages.len();
    for (i, stage) in exp.stages.iter().enumerate() {
        if agent::stop_requested() {
            lock(shared).say("interrupted: the remaining stages are skipped");
            break;
        }
        runs.push(run_stage(i, n, stage, opts, hier, cg, shared, apps)?);
    }
    Ok(runs)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the run's whole context"
)]
fn run_stage(
    i: usize,
    n: usize,
    stage: &Stage,
    opts: &RunOptions,
    hier: &Hierarchy,
    cg: &MemCgroup,
    shared: &Arc<Mutex<Shared>>,
    apps: &mut [AppProc],
) -> Result<StageRun, RunError> {
    let oom_base = cg.oom_kills().unwrap_or(0);
    let counters_before = cg.pressure_counters();
    let started = Instant::now();
    let limit = cg.limit().ok().flatten();
    let adj = stage
        .inject
        .as_ref()
        .and_then(|i| i.oom_score_adj)
        .map(Adj::resolve);
    let what = match &stage.inject {
        Some(inj) => format!(
            "inject {}{}, {} worker{}{}{}, hold {}",
            match inj.amount {
                Amount::Size(s) => s.to_string(),
                Amount::WorkingSet(s) => format!("working set {s}"),
            },
            match inj.kind {
                Kind::Anon => String::new(),
                k => format!(" ({})", k.as_str()),
            },
            inj.workers,
            if inj.workers == 1 { "" } else { "s" },
            match (inj.oom_score_adj, adj) {
                (Some(Adj::Lowest), Some(a)) if a > -1000 => format!(
                    " at oom_score_adj {a} (the lowest allowed here: -1000 needs CAP_SYS_RESOURCE, which this host withholds)"
                ),
                (_, Some(a)) => format!(" at oom_score_adj {a}"),
                _ => String::new(),
            },
            match inj.on_oom {
                plan::OnOom::Stop => String::new(),
                plan::OnOom::Respawn => ", killed workers respawn".into(),
                plan::OnOom::Continue => ", killed workers are not replaced".into(),
            },
            humantime::format_duration(stage.hold)
        ),
        None => format!("watch for {}", humantime::format_duration(stage.hold)),
    };
    let start = {
        let mut s = lock(shared);
        s.stage = Some(i);
        s.mark("stage_start", None, None, stage.name.clone());
        s.say("");
        s.say(&format!("== stage {}/{n}: {} ({what})", i + 1, stage.name));
        #[derive(Serialize)]
        struct StageStart<'a> {
            index: usize,
            name: &'a str,
            t: f64,
        }
        s.json(
            "stage_start",
            &StageStart {
                index: i,
                name: &stage.name,
                t: s.t(),
            },
        );
        s.t()
    };

    let mut summary = None;
    let mut requested = None;
    if let Some(inj) = &stage.inject {
        let (size, working_set) = match inj.amount {
            Amount::Size(s) => (Some(s), None),
            Amount::WorkingSet(w) => (None, Some(w)),
        };
        let ramp = match inj.pace {
            Pace::Ramp(d) => d,
            _ => Duration::ZERO,
        };
        let req = Request {
            target: Some(cg.clone()),
            new: None,
            size,
            working_set,
            workers: inj.workers,
            pace: inj.pace,
            kind: inj.kind,
            alloc: AllocOptions::default(),
            redirty: None,
            duration: Some(ramp + stage.hold),
            oom_score_adj: adj,
            on_oom: inj.on_oom,
            // The file says what it wants; going over the limit is the point of many
            // experiments.
            allow_oom: true,
            force: false,
            file_dir: opts.file_dir.clone(),
        };
        let node = NodeMemory::read().map_err(|e| RunError::Failed(e.to_string()))?;
        let plan = plan::check(hier, &req, node)
            .map_err(|e| RunError::Input(format!("stage {} (line {}): {e}", i + 1, stage.line)))?;
        requested = Some(plan.goal.bytes());
        if opts.progress && opts.output == OutputFormat::Human && inj.pace != Pace::Fast {
            let total = plan.goal.bytes().min(limit.unwrap_or(u64::MAX));
            let pb = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "   ramp [{bar:40}] {binary_bytes}/{binary_total_bytes} held by workers ({elapsed})",
            ) {
                pb.set_style(style.progress_chars("=> "));
            }
            lock(shared).progress = Some((pb, total));
        }
        let result = agent::run(hier, &plan, &mut |ev| on_agent(shared, ev));
        if let Some((pb, _)) = lock(shared).progress.take() {
            pb.finish_and_clear();
        }
        summary = Some(result.map_err(|e| RunError::Failed(format!("stage {}: {e}", i + 1)))?);
    } else {
        let until = Instant::now() + stage.hold;
        while Instant::now() < until && !agent::stop_requested() {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let before_settle = lock(shared).t();
    thread::sleep(stage.settle);

    // Which apps are still alive at the end of the stage.
    let now = lock(shared).t();
    for a in apps.iter_mut() {
        if a.exited.is_none() {
            if let Some(how) = a.poll_exit() {
                let mut s = lock(shared);
                s.say(&format!(
                    "{now:>8.2}s  app {} (pid {}) {how}",
                    a.app.name, a.pid
                ));
                s.mark(
                    "app_exited",
                    Some(a.pid),
                    Some(format!("app:{}", a.app.name)),
                    format!("{} {how}", a.app.name),
                );
                a.exited = Some((now, how));
            }
        }
    }
    let apps_alive = apps::alive(apps);
    let oom_end = cg.oom_kills().unwrap_or(oom_base);
    let pressure = cg
        .pressure_counters()
        .since(&counters_before, started.elapsed());
    let end = lock(shared).t();
    {
        let mut s = lock(shared);
        s.mark("stage_end", None, None, stage.name.clone());
        #[derive(Serialize)]
        struct StageEnd<'a> {
            index: usize,
            name: &'a str,
            t: f64,
            oom_kills: u64,
            requested_bytes: Option<u64>,
            charged_bytes: Option<u64>,
            pressure: &'a Pressure,
        }
        s.json(
            "stage_end",
            &StageEnd {
                index: i,
                name: &stage.name,
                t: end,
                oom_kills: oom_end - oom_base,
                requested_bytes: requested,
                charged_bytes: summary.as_ref().map(|x| x.charged_bytes),
                pressure: &pressure,
            },
        );
        let (host_used, host_total) = s.host_peak.get(i).copied().unwrap_or((0, 0));
        let peak_usage = s
            .samples
            .iter()
            .filter(|x| x.t >= start && x.t <= before_settle)
            .map(|x| x.usage_bytes)
            .max()
            .unwrap_or(0);
        if let (Some(sum), Some(req)) = (&summary, requested) {
            if stage.by_size() && limit.is_none_or(|l| req < l) {
                let dev = (sum.charged_bytes as f64 - req as f64) / req as f64 * 100.0;
                s.say(&format!(
                    "   charged  {} in cgroup {} for {} requested ({dev:+.1}%); peak usage {} of {}",
                    human(sum.charged_bytes),
                    cg.path(),
                    human(req),
                    human(peak_usage),
                    limit.map_or("no limit".into(), human),
                ));
            } else {
                s.say(&format!(
                    "   usage    peaked at {} of {}; the workers held up to {}",
                    human(peak_usage),
                    limit.map_or("no limit".into(), human),
                    human(sum.charged_bytes),
                ));
            }
            s.say(&format!(
                "   `free`   would have said: {} used of {} — the host's /proc/meminfo, not this cgroup",
                human(host_used),
                human(host_total)
            ));
            let kills = oom_end - oom_base;
            if kills > 0 || sum.respawns > 0 {
                s.say(&format!(
                    "   OOM      {kills} kill(s) in this stage; {} worker(s) killed, {} respawned",
                    sum.worker_kills, sum.respawns
                ));
            }
        }
        s.say(&format!("   pressure {}", pressure.describe(cg.version)));
    }
    Ok(StageRun {
        index: i,
        start,
        end,
        oom_base,
        oom_end,
        summary,
        requested,
        apps_alive,
        pressure,
    })
}

/// An event from the injector's agent, put on the run's clock.
fn on_agent(sh: &Mutex<Shared>, ev: &AgentEvent) {
    let mut s = lock(sh);
    let t = s.t();
    match ev {
        AgentEvent::WorkerStarted(w) => {
            s.roles.insert(w.pid, "worker".into());
            if w.respawn {
                s.say(&format!(
                    "{t:>8.2}s  respawn   pid {:<7} worker {}",
                    w.pid, w.worker
                ));
            }
            s.mark(
                "worker_started",
                Some(w.pid),
                Some("worker".into()),
                format!(
                    "worker {}{}",
                    w.pid,
                    if w.respawn { " (respawn)" } else { "" }
                ),
            );
        }
        AgentEvent::WorkerKilled(k) => s.mark(
            "worker_killed",
            Some(k.pid),
            Some("worker".into()),
            format!("worker {}", k.pid),
        ),
        AgentEvent::TargetReached(r) => {
            s.say(&format!(
                "{t:>8.2}s  target reached in {:.2} s: {} requested, {} charged so far",
                r.seconds,
                human(r.requested_bytes),
                human(r.charged_bytes)
            ));
            s.mark(
                "target_reached",
                None,
                None,
                format!("target reached ({})", human(r.requested_bytes)),
            );
        }
        // Expected when nothing is left to kill: the charge fails instead.
        AgentEvent::WorkerError(e) => log::info!("{t:.2}s worker {}: {}", e.pid, e.message),
        AgentEvent::TargetOpened(_) | AgentEvent::Sample(_) | AgentEvent::Summary(_) => {}
    }
    let timeline = matches!(
        ev,
        AgentEvent::WorkerStarted(_) | AgentEvent::WorkerKilled(_) | AgentEvent::TargetReached(_)
    );
    if timeline && s.output == OutputFormat::Json {
        let _ = timed_json_line(&mut std::io::stdout().lock(), ev, t);
    }
}

/// A tracer event (already filtered to the target by the tracer).
fn on_event(sh: &Mutex<Shared>, ev: &crate::trace::Event) {
    let mut s = lock(sh);
    match &ev.kind {
        EventKind::Victim(v) => {
            let t = s.t_of(ev.ts);
            let role = role_of(&s.roles, v.pid);
            let seen = VictimSeen {
                t,
                pid: v.pid,
                comm: v.comm.clone(),
                role: role.clone(),
                oom_score_adj: v.oom_score_adj,
                anon_rss_kb: v.anon_rss_kb,
                trigger_pid: v.trigger.pid,
                trigger_comm: v.trigger.comm.clone(),
                stage: s.stage,
                from_kmsg: false,
            };
            s.say(&format!(
                "{t:>8.2}s  OOM kill  pid {:<7} {:<10} adj {:>5}  anon {:>9}  (charge by pid {})",
                v.pid,
                role_label(&role),
                v.oom_score_adj.map_or("?".into(), |a| a.to_string()),
                v.anon_rss_kb.map_or("?".into(), |k| human(k * 1024)),
                v.trigger.pid,
            ));
            s.json("oom_victim", &seen);
            let label = match role.strip_prefix("app:") {
                Some(name) => format!("{name} {}", v.pid),
                None => format!("{role} {}", v.pid),
            };
            let stage = s.stage;
            s.marks.push(Mark {
                t,
                kind: "oom_kill".into(),
                pid: Some(v.pid),
                role: Some(role),
                label,
                stage,
            });
            s.victims.push(seen);
        }
        EventKind::Reclaim(r) => {
            s.reclaimed_pages += r.nr_reclaimed;
            s.reclaim_passes += 1;
        }
        _ => {}
    }
}

/// A finished OOM episode (kernel log + events): kept when it is about this target.
fn on_episode(sh: &Mutex<Shared>, ep: TraceEpisode, cg_path: &str) {
    let mut s = lock(sh);
    let ours = ep.victims.iter().any(|v| s.roles.contains_key(&v.pid))
        || ep.domain.memcg.as_deref() == Some(cg_path);
    if !ours {
        return;
    }
    for v in &ep.victims {
        if s.victims.iter().any(|x| x.pid == v.pid)
            || !(s.roles.contains_key(&v.pid) || ep.domain.memcg.as_deref() == Some(cg_path))
        {
            continue;
        }
        // The kernel log's clock (local_clock, since boot) is CLOCK_MONOTONIC to within
        // milliseconds on these machines.
        let t = ep.kmsg_ts.map_or_else(|| s.t(), |k| k - s.t0 as f64 / 1e9);
        let role = role_of(&s.roles, v.pid);
        s.say(&format!(
            "{t:>8.2}s  OOM kill  pid {:<7} {:<10} adj {:>5}  anon {:>9}  (from the kernel log)",
            v.pid,
            role_label(&role),
            v.oom_score_adj.map_or("?".into(), |a| a.to_string()),
            v.anon_rss_kb.map_or("?".into(), |k| human(k * 1024)),
        ));
        let label = match role.strip_prefix("app:") {
            Some(name) => format!("{name} {}", v.pid),
            None => format!("{role} {}", v.pid),
        };
        s.marks.push(Mark {
            t,
            kind: "oom_kill".into(),
            pid: Some(v.pid),
            role: Some(role.clone()),
            label,
            stage: None,
        });
        s.victims.push(VictimSeen {
            t,
            pid: v.pid,
            comm: v.comm.clone(),
            role,
            oom_score_adj: v.oom_score_adj,
            anon_rss_kb: v.anon_rss_kb,
            trigger_pid: ep.trigger.pid.map_or(0, |p| p as u32),
            trigger_comm: ep.trigger.comm.clone().unwrap_or_default(),
            stage: None,
            from_kmsg: true,
        });
    }
    let victim = ep.selected().or_else(|| ep.victims.first().map(|v| v.pid));
    let stage = victim
        .and_then(|p| s.victims.iter().rev().find(|v| v.pid == p))
        .and_then(|v| v.stage)
        .or(s.stage);
    // The first episode of a stage is printed with its whole table; later ones in one line.
    if let Some(rk) = &ep.selection {
        let idx = stage.unwrap_or(0);
        let first = s.printed_tables.get(idx).is_some_and(|n| *n == 0);
        if let Some(n) = s.printed_tables.get_mut(idx) {
            *n += 1;
        }
        let conv = convert_candidates(&ep, &s.roles);
        if first && s.output == OutputFormat::Human {
            s.say(&format!(
                "          the OOM killer's candidates (badness = rss + swap + page tables in pages + adj × {}; from the kernel log):",
                rk.totalpages / 1000
            ));
            s.say("            rank  pid       role         adj    rss         badness");
            for c in &conv {
                s.say(&format!(
                    "            {:<5} {:<9} {:<12} {:>5}  {:>10}  {:>9}{}",
                    c.rank.map_or("–".into(), |r| r.to_string()),
                    c.pid,
                    role_label(&c.role),
                    c.oom_score_adj,
                    human(c.rss_kb * 1024),
                    c.badness.map_or("never".into(), |b| b.to_string()),
                    if c.chosen { "  ← killed" } else { "" }
                ));
            }
        }
        if let Some(d) = &rk.disagreement {
            s.say(&format!("          note: {d}"));
        }
    }
    s.json("oom_episode", &ep);
    s.episodes.push((ep, stage));
}

fn convert_candidates(ep: &TraceEpisode, roles: &HashMap<i32, String>) -> Vec<Candidate> {
    let Some(rk) = &ep.selection else {
        return Vec::new();
    };
    rk.candidates
        .iter()
        .map(|c| Candidate {
            pid: c.pid,
            name: c.name.clone(),
            role: role_of(roles, c.pid),
            rss_kb: c.rss_pages.unwrap_or(0) * 4,
            swap_kb: c.swapents.unwrap_or(0) * 4,
            pgtables_kb: c.pgtables_bytes.unwrap_or(0) / 1024,
            oom_score_adj: c.oom_score_adj.unwrap_or(0),
            badness: c.points,
            rank: c.rank,
            chosen: c.chosen,
        })
        .collect()
}

/// The pages reclaimed in the target per second, on v2 also from `memory.stat` (pgsteal).
fn pgsteal(cg: &MemCgroup) -> Option<u64> {
    if cg.version != Version::V2 {
        return None;
    }
    cg.stat().ok()?.get("pgsteal").copied()
}

fn rss_bytes(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(crate::sys::page_size()))
}

fn sample_loop(sh: &Mutex<Shared>, cg: &MemCgroup, on: &AtomicBool) {
    let oom_base = cg.oom_kills().unwrap_or(0);
    let mut last: Option<(f64, u64, Option<u64>, u64)> = None;
    let mut next = Instant::now();
    while on.load(Ordering::SeqCst) {
        let snap = cg.snapshot().ok();
        let workers: Vec<i32> = {
            let s = lock(sh);
            s.roles
                .iter()
                .filter(|(_, r)| *r == "worker")
                .map(|(p, _)| *p)
                .collect()
        };
        let procs: Vec<i32> = cg.procs().unwrap_or_default();
        let injected: u64 = workers
            .iter()
            .filter(|p| procs.contains(p))
            .map(|p| rss_bytes(*p))
            .sum();
        let steal = pgsteal(cg);
        let host = host_memory();
        let mut s = lock(sh);
        let t = s.t();
        let reclaimed = s.reclaimed_pages;
        let passes = s.reclaim_passes;
        let pass_rate = match last {
            Some((lt, _, _, lp)) if t > lt => Some(passes.saturating_sub(lp) as f64 / (t - lt)),
            _ => Some(0.0),
        };
        let rate = match last {
            Some((lt, lr, ls, _)) if t > lt => {
                let traced = (reclaimed.saturating_sub(lr)) as f64 / (t - lt);
                let stat = match (steal, ls) {
                    (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / (t - lt)),
                    _ => None,
                };
                Some(stat.map_or(traced, |x| x.max(traced)))
            }
            _ => Some(0.0),
        };
        last = Some((t, reclaimed, steal, passes));
        if let Some(snap) = snap {
            s.samples.push(CgroupSample {
                t,
                usage_bytes: snap.usage_bytes,
                working_set_bytes: snap.working_set_bytes,
                injected_bytes: injected,
                limit_bytes: snap.limit_bytes,
                oom_kills: snap.oom_kills.saturating_sub(oom_base),
                reclaim_pages_per_s: rate,
                reclaim_passes_per_s: pass_rate,
            });
        }
        if let Some(i) = s.stage {
            if let Some(h) = s.host_peak.get_mut(i) {
                if host.0 > h.0 {
                    *h = host;
                }
            }
        }
        if let Some((pb, total)) = &s.progress {
            pb.set_position(injected.min(*total));
        }
        drop(s);
        next += SAMPLE_EVERY;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn build_report(
    exp: &Experiment,
    cg: &MemCgroup,
    shared: &Mutex<Shared>,
    runs: &[StageRun],
    apps_alive_at_end: &[(String, bool)],
    lost: u64,
    oom_kills_total: u64,
) -> RunReport {
    let mut s = lock(shared);
    // Victims known from the kernel log only get their stage from their time.
    let span = |t: f64| {
        runs.iter()
            .find(|r| t >= r.start && t <= r.end)
            .map(|r| r.index)
    };
    for i in 0..s.victims.len() {
        if s.victims[i].stage.is_none() {
            let t = s.victims[i].t;
            s.victims[i].stage = span(t);
        }
    }
    for m in &mut s.marks {
        if m.kind == "oom_kill" && m.stage.is_none() {
            m.stage = span(m.t);
        }
    }
    s.victims.sort_by(|a, b| a.t.total_cmp(&b.t));
    s.marks.sort_by(|a, b| a.t.total_cmp(&b.t));
    let s = s;
    let oom_base = runs.first().map_or(oom_kills_total, |r| r.oom_base);
    let mut stages = Vec::new();
    let mut verdicts: Vec<Verdict> = Vec::new();
    for r in runs {
        let st = &exp.stages[r.index];
        let in_stage = |t: f64| t >= r.start && t <= r.end;
        let samples: Vec<&CgroupSample> = s.samples.iter().filter(|x| in_stage(x.t)).collect();
        let (host_used, host_total) = s.host_peak.get(r.index).copied().unwrap_or((0, 0));
        let victims: Vec<String> = s
            .victims
            .iter()
            .filter(|v| v.stage == Some(r.index))
            .map(|v| v.role.clone())
            .collect();
        let peak_ws = samples
            .iter()
            .map(|x| x.working_set_bytes)
            .max()
            .unwrap_or(0);
        let charged = match (&r.summary, r.requested) {
            (Some(sum), Some(req)) if st.by_size() => vec![(req, sum.charged_bytes)],
            _ => Vec::new(),
        };
        stages.push(StageReport {
            index: r.index,
            name: st.name.clone(),
            start: r.start,
            end: r.end,
            requested_bytes: r.requested,
            workers: st.inject.as_ref().map(|i| i.workers),
            oom_score_adj: st
                .inject
                .as_ref()
                .and_then(|i| i.oom_score_adj)
                .map(Adj::resolve),
            charged_bytes: r.summary.as_ref().map(|x| x.charged_bytes),
            seconds_to_target: r.summary.as_ref().and_then(|x| x.seconds_to_target),
            peak_usage_bytes: samples.iter().map(|x| x.usage_bytes).max().unwrap_or(0),
            peak_working_set_bytes: peak_ws,
            oom_kills: r.oom_end.saturating_sub(r.oom_base),
            respawns: r.summary.as_ref().map_or(0, |x| x.respawns),
            host_used_bytes: host_used,
            host_total_bytes: host_total,
            pressure: Some(r.pressure.clone()),
        });
        if !st.expect.is_empty() {
            let obs = Observed {
                scope: format!("stage {}", r.index + 1),
                oom_kills: r.oom_end.saturating_sub(r.oom_base),
                victims,
                charged,
                peak_working_set: peak_ws,
                apps_alive: r.apps_alive.clone(),
            };
            verdicts.extend(evaluate(&st.expect, &obs));
        }
    }
    if !exp.expect.is_empty() {
        let obs = Observed {
            scope: "run".into(),
            oom_kills: oom_kills_total.saturating_sub(oom_base),
            victims: s.victims.iter().map(|v| v.role.clone()).collect(),
            charged: stages
                .iter()
                .zip(&exp.stages)
                .filter(|(_, st)| st.by_size())
                .filter_map(|(r, _)| Some((r.requested_bytes?, r.charged_bytes?)))
                .collect(),
            peak_working_set: s
                .samples
                .iter()
                .map(|x| x.working_set_bytes)
                .max()
                .unwrap_or(0),
            apps_alive: apps_alive_at_end.to_vec(),
        };
        verdicts.extend(evaluate(&exp.expect, &obs));
    }

    let mut episodes: Vec<EpisodeReport> = Vec::new();
    for (ep, stage) in &s.episodes {
        let Some(pid) = ep.selected().or_else(|| ep.victims.first().map(|v| v.pid)) else {
            continue;
        };
        let seen = s.victims.iter().rev().find(|v| v.pid == pid);
        let t = seen
            .map(|v| v.t)
            .or_else(|| ep.event_ts.map(|e| e - s.t0 as f64 / 1e9));
        let Some(t) = t else { continue };
        let ev = ep.victims.iter().find(|v| v.pid == pid);
        let role = role_of(&s.roles, pid);
        let candidates = convert_candidates(ep, &s.roles);
        episodes.push(EpisodeReport {
            t,
            stage: *stage,
            victim_pid: pid,
            victim_comm: ev
                .and_then(|v| v.comm.clone())
                .or_else(|| seen.and_then(|v| v.comm.clone()))
                .unwrap_or_else(|| "?".into()),
            victim_role: role.clone(),
            victim_adj: ev
                .and_then(|v| v.oom_score_adj)
                .or(seen.and_then(|v| v.oom_score_adj)),
            victim_anon_rss_kb: ev
                .and_then(|v| v.anon_rss_kb)
                .or(seen.and_then(|v| v.anon_rss_kb)),
            trigger_pid: seen
                .map(|v| v.trigger_pid)
                .or(ep.trigger.pid.map(|p| p as u32)),
            trigger_comm: seen
                .map(|v| v.trigger_comm.clone())
                .or(ep.trigger.comm.clone()),
            constraint: ep.constraint.clone(),
            why: why(
                &candidates,
                ep.selection.as_ref().map_or(0, |r| r.totalpages),
                &role,
            ),
            disagreement: ep.selection.as_ref().and_then(|r| r.disagreement.clone()),
            candidates,
        });
    }
    episodes.sort_by(|a, b| a.t.total_cmp(&b.t));

    let passed = verdicts.iter().filter(|v| v.passed).count();
    let worker_kills = s.victims.iter().filter(|v| v.role == "worker").count() as u64;
    let app_kills = s
        .victims
        .iter()
        .filter(|v| v.role.starts_with("app:"))
        .count() as u64;
    RunReport {
        experiment: exp.name.clone(),
        description: exp.description.clone(),
        source: exp.source.clone(),
        kernel: kernel_release(),
        cgroup_version: cg.version,
        cgroup: cg.path(),
        clock: "CLOCK_MONOTONIC".into(),
        t0_ns: s.t0,
        limit_bytes: s.samples.iter().find_map(|x| x.limit_bytes),
        summary: RunSummary {
            duration_s: s.samples.last().map_or(0.0, |x| x.t),
            oom_kills: oom_kills_total.saturating_sub(oom_base),
            traced_victims: s.victims.len() as u64,
            victims_from_kmsg: s.victims.iter().filter(|v| v.from_kmsg).count() as u64,
            lost_events: lost,
            worker_kills,
            app_kills,
            respawns: stages.iter().map(|x| x.respawns).sum(),
            peak_usage_bytes: s.samples.iter().map(|x| x.usage_bytes).max().unwrap_or(0),
            peak_working_set_bytes: s
                .samples
                .iter()
                .map(|x| x.working_set_bytes)
                .max()
                .unwrap_or(0),
            expectations_passed: passed,
            expectations_failed: verdicts.len() - passed,
        },
        stages,
        samples: s.samples.clone(),
        marks: s.marks.clone(),
        episodes,
        expectations: verdicts,
        conclusion: exp.conclusion.clone(),
    }
}

/// Why the kernel chose this victim, from the ranked table.
fn why(candidates: &[Candidate], totalpages: u64, role: &str) -> String {
    let Some(chosen) = candidates.iter().find(|c| c.chosen) else {
        return format!(
            "the kernel log had no candidate table for this kill (ratelimited, or the victim was already exiting); the victim was the {}",
            role_label(role)
        );
    };
    let unit = totalpages / 1000;
    let pages = |c: &Candidate| (c.rss_kb + c.swap_kb) / 4 + c.pgtables_kb / 4;
    let mut text = format!(
        "the {} had the highest badness: {} = {} pages of memory + adj {} × {unit} (the limit's pages / 1000)",
        role_label(&chosen.role),
        chosen.badness.map_or("?".into(), |b| b.to_string()),
        pages(chosen),
        chosen.oom_score_adj,
    );
    let others: Vec<&Candidate> = candidates.iter().filter(|c| !c.chosen).collect();
    if let Some(next) = others.iter().find(|c| c.badness.is_some()) {
        text.push_str(&format!(
            "; the next, the {} (pid {}, adj {}), had {}",
            role_label(&next.role),
            next.pid,
            next.oom_score_adj,
            next.badness.map_or("?".into(), |b| b.to_string())
        ));
    }
    let protected = others.iter().filter(|c| c.badness.is_none()).count();
    if protected > 0 {
        text.push_str(&format!(
            "; {protected} candidate(s) at adj -1000 could never be chosen"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(
        pid: i32,
        role: &str,
        rss_mib: u64,
        adj: i32,
        badness: Option<i64>,
        chosen: bool,
    ) -> Candidate {
        Candidate {
            pid,
            name: "oomlab".into(),
            role: role.into(),
            rss_kb: rss_mib * 1024,
            swap_kb: 0,
            pgtables_kb: 0,
            oom_score_adj: adj,
            badness,
            rank: None,
            chosen,
        }
    }

    #[test]
    fn why_names_the_winner_and_the_runner_up() {
        // The seed story's stage 3: the app at 988 against workers at 0, limit 500 MiB.
        let c = vec![
            cand(10, "app:node", 45, 988, Some(138_054), true),
            cand(11, "worker", 128, 0, Some(33_071), false),
            cand(12, "worker", 100, -1000, None, false),
        ];
        let w = why(&c, 128_000, "app:node");
        assert!(
            w.starts_with("the app node had the highest badness: 138054 = 11520 pages"),
            "{w}"
        );
        assert!(w.contains("adj 988 × 128"), "{w}");
        assert!(
            w.contains("the next, the worker (pid 11, adj 0), had 33071"),
            "{w}"
        );
        assert!(
            w.contains("1 candidate(s) at adj -1000 could never be chosen"),
            "{w}"
        );
        let none = why(&[], 0, "worker");
        assert!(none.contains("no candidate table"), "{none}");
    }

    #[test]
    fn roles() {
        let mut r = HashMap::new();
        r.insert(5, "app:node".to_string());
        r.insert(6, "worker".to_string());
        assert_eq!(role_of(&r, 5), "app:node");
        assert_eq!(role_of(&r, 7), "other");
        assert_eq!(role_label("app:node"), "app node");
        assert_eq!(role_label("worker"), "worker");
    }
}
