//! What `oomlab run` prints while it runs: the stage headers and totals, app starts and exits,
//! kills and the OOM killer's candidate table as human lines, and the JSON lines (`ready`,
//! `app_started`, `stage_start`, `stage_end`) beside them.

use serde::Serialize;

use super::timeline::Candidate;
use crate::{
    cgroup::{Pressure, Version},
    experiment::spec::{Adj, Amount, App, AppKind, Stage},
    inject::{alloc::Kind, event, plan::OnOom},
    size::human,
};

/// `worker`, `app node` or `other`: a role as people read it.
pub fn role_label(role: &str) -> String {
    match role.strip_prefix("app:") {
        Some(name) => format!("app {name}"),
        None => role.to_string(),
    }
}

/// The `ready` JSON line: the tracer is attached and the clock starts.
#[derive(Serialize)]
pub struct Ready<'a> {
    pub experiment: &'a str,
    pub cgroup: String,
    pub cgroup_version: String,
    pub limit_bytes: Option<u64>,
    pub tracepoints: &'a [String],
    pub clock: &'static str,
    pub t0_ns: u64,
}

#[derive(Serialize)]
pub struct AppStarted<'a> {
    pub name: &'a str,
    pub pid: i32,
    pub oom_score_adj: Option<i32>,
    pub t: f64,
}

#[derive(Serialize)]
pub struct StageStart<'a> {
    pub index: usize,
    pub name: &'a str,
    pub t: f64,
}

#[derive(Serialize)]
pub struct StageEnd<'a> {
    pub index: usize,
    pub name: &'a str,
    pub t: f64,
    pub oom_kills: u64,
    pub requested_bytes: Option<u64>,
    pub charged_bytes: Option<u64>,
    pub pressure: &'a Pressure,
}

/// The three lines before the first stage: the experiment, its target, the tracer.
pub fn ready_lines(
    ready: &Ready<'_>,
    description: Option<&str>,
    scratch: bool,
    version: Version,
    kmsg_ok: bool,
) -> [String; 3] {
    [
        format!(
            "oomlab run {}{}",
            ready.experiment,
            description.map_or(String::new(), |d| format!(": {d}"))
        ),
        format!(
            "target   {} cgroup {} ({}), limit {}",
            if scratch { "scratch" } else { "existing" },
            ready.cgroup,
            version,
            ready.limit_bytes.map_or("none".into(), human)
        ),
        format!(
            "tracer   ready: {} tracepoints attached{}",
            ready.tracepoints.len(),
            if kmsg_ok {
                ", kernel log open for the OOM killer's candidate tables"
            } else {
                ""
            }
        ),
    ]
}

/// An app that holds its memory and runs.
pub fn app_line(app: &App, pid: i32, usage: Option<u64>) -> String {
    let what = match &app.kind {
        AppKind::Builtin { size } => format!("oomlab app holding {}", human(*size)),
        AppKind::Command(argv) => format!("`{}`", argv.join(" ")),
    };
    format!(
        "app      {}: pid {pid}, {what}{} — usage now {}",
        app.name,
        app.oom_score_adj
            .map_or(String::new(), |a| format!(", oom_score_adj {a}")),
        usage.map_or("?".into(), human)
    )
}

pub fn app_exited_line(t: f64, name: &str, pid: i32, how: &str) -> String {
    format!("{t:>8.2}s  app {name} (pid {pid}) {how}")
}

/// `== stage 2/3: name (inject 300M, 2 workers, hold 5s)`; `adj` is the workers' resolved adj.
/// The line printed when the run notices a stop request (a signal, a closed stdout).
pub fn interrupted_line(t: f64, cause: &str, during: &str) -> String {
    format!(
        "{t:>8.2}s  interrupted by {cause} during {during}: stopping; what did not run is skipped"
    )
}

pub fn stage_header(i: usize, n: usize, stage: &Stage, adj: Option<i32>) -> String {
    let what = match &stage.inject {
        Some(inj) => format!(
            "inject {}{}, {} worker{}{}{}, hold {}",
            match inj.amount {
                Amount::Size(s) => s.to_string(),
                Amount::WorkingSet(s) => format!("working set {s}"),
                Amount::Pressure(l) => format!("pressure {l}"),
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
                OnOom::Stop => String::new(),
                OnOom::Respawn => ", killed workers respawn".into(),
                OnOom::Continue => ", killed workers are not replaced".into(),
            },
            humantime::format_duration(stage.hold)
        ),
        None => format!("watch for {}", humantime::format_duration(stage.hold)),
    };
    format!("== stage {}/{n}: {} ({what})", i + 1, stage.name)
}

/// What a stage ended with, for its closing lines.
pub struct StageTotals<'a> {
    pub summary: Option<&'a event::Summary>,
    pub requested: Option<u64>,
    /// The stage asked for a size (not a working set).
    pub sized: bool,
    pub limit: Option<u64>,
    pub cgroup: &'a str,
    pub version: Version,
    pub peak_usage: u64,
    /// The host's peak (used, total) as `free` reports it.
    pub host: (u64, u64),
    pub oom_kills: u64,
    pub pressure: &'a Pressure,
}

/// The lines under a stage: what was charged, what `free` would say, the kills, the pressure.
pub fn stage_end_lines(s: &StageTotals<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    if let (Some(sum), Some(req)) = (s.summary, s.requested) {
        if s.sized && s.limit.is_none_or(|l| req < l) {
            let dev = (sum.charged_bytes as f64 - req as f64) / req as f64 * 100.0;
            lines.push(format!(
                "   charged  {} in cgroup {} for {} requested ({dev:+.1}%); peak usage {} of {}",
                human(sum.charged_bytes),
                s.cgroup,
                human(req),
                human(s.peak_usage),
                s.limit.map_or("no limit".into(), human),
            ));
        } else {
            lines.push(format!(
                "   usage    peaked at {} of {}; the workers held up to {}",
                human(s.peak_usage),
                s.limit.map_or("no limit".into(), human),
                human(sum.charged_bytes),
            ));
        }
        lines.push(format!(
            "   `free`   would have said: {} used of {} — the host's /proc/meminfo, not this cgroup",
            human(s.host.0),
            human(s.host.1)
        ));
        if s.oom_kills > 0 || sum.respawns > 0 {
            lines.push(format!(
                "   OOM      {} kill(s) in this stage; {} worker(s) killed, {} respawned",
                s.oom_kills, sum.worker_kills, sum.respawns
            ));
        }
    }
    lines.push(format!("   pressure {}", s.pressure.describe(s.version)));
    lines
}

pub fn respawn_line(t: f64, pid: i32, worker: usize) -> String {
    format!("{t:>8.2}s  respawn   pid {pid:<7} worker {worker}")
}

pub fn target_reached_line(t: f64, r: &event::TargetReached) -> String {
    format!(
        "{t:>8.2}s  target reached in {:.2} s: {} requested, {} charged so far",
        r.seconds,
        human(r.requested_bytes),
        human(r.charged_bytes)
    )
}

/// An OOM kill as it is seen; `source` says from where ("charge by pid 42", "from the kernel
/// log").
pub fn kill_line(
    t: f64,
    pid: i32,
    role: &str,
    adj: Option<i32>,
    anon_rss_kb: Option<u64>,
    source: &str,
) -> String {
    format!(
        "{t:>8.2}s  OOM kill  pid {:<7} {:<10} adj {:>5}  anon {:>9}  ({source})",
        pid,
        role_label(role),
        adj.map_or("?".into(), |a| a.to_string()),
        anon_rss_kb.map_or("?".into(), |k| human(k * 1024)),
    )
}

/// A `mark_victim` without a kill, aligned with the kill lines.
pub fn mark_line(t: f64, pid: i32, role: &str) -> String {
    format!(
        "{t:>8.2}s  OOM mark  pid {:<7} {:<10} already exiting: marked for the reserves, not killed",
        pid,
        role_label(role),
    )
}

/// The OOM killer's candidates with their roles, the victim marked — a stage's first episode.
pub fn candidate_table(totalpages: u64, candidates: &[Candidate]) -> Vec<String> {
    let mut lines = vec![
        format!(
            "          the OOM killer's candidates (badness = rss + swap + page tables in pages + adj × {}; from the kernel log):",
            totalpages / 1000
        ),
        "            rank  pid       role         adj    rss         badness".to_string(),
    ];
    lines.extend(candidates.iter().map(|c| {
        format!(
            "            {:<5} {:<9} {:<12} {:>5}  {:>10}  {:>9}{}",
            c.rank.map_or("–".into(), |r| r.to_string()),
            c.pid,
            role_label(&c.role),
            c.oom_score_adj,
            human(c.rss_kb * 1024),
            c.badness.map_or("never".into(), |b| b.to_string()),
            if c.chosen { "  ← killed" } else { "" }
        )
    }));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_as_people_say_them() {
        assert_eq!(role_label("app:node"), "app node");
        assert_eq!(role_label("worker"), "worker");
    }

    #[test]
    fn kill_lines_align_and_name_their_source() {
        let l = kill_line(1.5, 42, "app:node", Some(988), None, "from the kernel log");
        assert_eq!(
            l,
            "    1.50s  OOM kill  pid 42      app node   adj   988  anon         ?  (from the kernel log)"
        );
    }
}
