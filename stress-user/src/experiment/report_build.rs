//! Builds the run's report model from what the collector gathered and what each stage ended
//! with: the stages' totals, the expectations' verdicts, each OOM episode with its candidates
//! and the reason its victim was chosen, and the run's summary.

use super::{
    collector::{candidates, role_of, Collector},
    expect::{evaluate, Observed},
    spec::{Experiment, Stage},
};
use crate::{
    cgroup::{MemCgroup, Pressure},
    inject::event,
    report::{
        run_live::role_label,
        timeline::{
            Candidate, CgroupSample, EpisodeReport, Interruption, RunReport, RunSummary,
            SkippedStage, StageReport, Verdict,
        },
    },
    stop::Cause,
    trace::episode::Episode,
};

/// What the main thread learned running one stage.
pub(super) struct StageRun {
    pub(super) index: usize,
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) oom_base: u64,
    pub(super) oom_end: u64,
    pub(super) summary: Option<event::Summary>,
    pub(super) requested: Option<u64>,
    pub(super) apps_alive: Vec<(String, bool)>,
    pub(super) pressure: Pressure,
    /// A stop request came before the stage's end: it was cut short.
    pub(super) interrupted: bool,
}

/// How the run ended, beside what the collector and the stages gathered.
pub(super) struct RunEnd {
    pub(super) apps_alive: Vec<(String, bool)>,
    pub(super) lost: u64,
    pub(super) oom_kills_total: u64,
    /// Why the run stopped before its end, if it did.
    pub(super) stop: Option<Cause>,
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "?".into())
}

pub(super) fn build(
    exp: &Experiment,
    cg: &MemCgroup,
    c: &mut Collector,
    runs: &[StageRun],
    end: &RunEnd,
) -> RunReport {
    place_on_stages(c, runs);
    let c = &*c;
    let oom_base = runs.first().map_or(end.oom_kills_total, |r| r.oom_base);
    let oom_kills = end.oom_kills_total.saturating_sub(oom_base);
    let mut stages = Vec::new();
    let mut verdicts: Vec<Verdict> = Vec::new();
    // Expectations whose scope did not run to its end are not evaluated: a verdict on half a
    // stage (or on the run without its last stages) would be a guess.
    let mut not_evaluated = 0;
    for r in runs {
        let (stage, v) = stage_report(&exp.stages[r.index], r, c);
        stages.push(stage);
        if r.interrupted {
            not_evaluated += v.len();
        } else {
            verdicts.extend(v);
        }
    }
    let interrupted = end.stop.map(|cause| interruption(exp, c, runs, cause));
    if let Some(i) = &interrupted {
        not_evaluated += i
            .skipped
            .iter()
            .map(|s| evaluate(&exp.stages[s.index].expect, &Observed::default()).len())
            .sum::<usize>();
        not_evaluated += evaluate(&exp.expect, &Observed::default()).len();
    }
    if !exp.expect.is_empty() && interrupted.is_none() {
        let obs = Observed {
            scope: "run".into(),
            oom_kills,
            victims: c.victims.iter().map(|v| v.role.clone()).collect(),
            charged: stages
                .iter()
                .zip(&exp.stages)
                .filter(|(_, st)| st.by_size())
                .filter_map(|(r, _)| Some((r.requested_bytes?, r.charged_bytes?)))
                .collect(),
            peak_working_set: peak(&c.samples, |x| x.working_set_bytes),
            apps_alive: end.apps_alive.clone(),
            psi: None,
        };
        verdicts.extend(evaluate(&exp.expect, &obs));
    }
    let mut episodes: Vec<EpisodeReport> = c
        .episodes
        .iter()
        .filter_map(|(ep, stage)| episode_report(ep, *stage, c))
        .collect();
    episodes.sort_by(|a, b| a.t.total_cmp(&b.t));
    RunReport {
        experiment: exp.name.clone(),
        description: exp.description.clone(),
        source: exp.source.clone(),
        kernel: kernel_release(),
        cgroup_version: cg.version,
        cgroup: cg.path(),
        clock: "CLOCK_MONOTONIC".into(),
        t0_ns: c.t0,
        limit_bytes: c.samples.iter().find_map(|x| x.limit_bytes),
        summary: RunSummary {
            expectations_not_evaluated: not_evaluated,
            ..summary(c, &stages, &verdicts, oom_kills, end.lost)
        },
        stages,
        samples: c.samples.clone(),
        marks: c.marks.clone(),
        episodes,
        expectations: verdicts,
        // The conclusion tells what every stage showed: not when some did not run.
        conclusion: exp.conclusion.clone().filter(|_| interrupted.is_none()),
        interrupted,
    }
}

/// Why and where the run stopped, and the stages it never started.
fn interruption(exp: &Experiment, c: &Collector, runs: &[StageRun], cause: Cause) -> Interruption {
    let (t, during, stage) = c
        .interrupted
        .clone()
        .unwrap_or_else(|| (c.t(), c.phase.clone(), c.stage));
    Interruption {
        cause: cause.name(),
        t,
        during,
        stage: stage.filter(|s| runs.iter().any(|r| r.index == *s && r.interrupted)),
        skipped: exp
            .stages
            .iter()
            .enumerate()
            .filter(|(i, _)| !runs.iter().any(|r| r.index == *i))
            .map(|(index, st)| SkippedStage {
                index,
                name: st.name.clone(),
            })
            .collect(),
    }
}

fn peak<'a>(
    samples: impl IntoIterator<Item = &'a CgroupSample>,
    f: fn(&CgroupSample) -> u64,
) -> u64 {
    samples.into_iter().map(f).max().unwrap_or(0)
}

/// Victims and kills known from the kernel log only get their stage from their time; then
/// both go in time order.
fn place_on_stages(c: &mut Collector, runs: &[StageRun]) {
    let span = |t: f64| {
        runs.iter()
            .find(|r| t >= r.start && t <= r.end)
            .map(|r| r.index)
    };
    for v in &mut c.victims {
        if v.stage.is_none() {
            v.stage = span(v.t);
        }
    }
    for m in &mut c.marks {
        if m.kind == "oom_kill" && m.stage.is_none() {
            m.stage = span(m.t);
        }
    }
    c.victims.sort_by(|a, b| a.t.total_cmp(&b.t));
    c.marks.sort_by(|a, b| a.t.total_cmp(&b.t));
}

/// A stage's totals and the verdicts of its own expectations.
fn stage_report(st: &Stage, r: &StageRun, c: &Collector) -> (StageReport, Vec<Verdict>) {
    let samples: Vec<&CgroupSample> = c
        .samples
        .iter()
        .filter(|x| x.t >= r.start && x.t <= r.end)
        .collect();
    let (host_used, host_total) = c.host_peak.get(r.index).copied().unwrap_or((0, 0));
    let peak_ws = peak(samples.iter().copied(), |x| x.working_set_bytes);
    let report = StageReport {
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
            .map(|a| a.resolve()),
        charged_bytes: r.summary.as_ref().map(|x| x.charged_bytes),
        seconds_to_target: r.summary.as_ref().and_then(|x| x.seconds_to_target),
        peak_usage_bytes: peak(samples.iter().copied(), |x| x.usage_bytes),
        peak_working_set_bytes: peak_ws,
        oom_kills: r.oom_end.saturating_sub(r.oom_base),
        respawns: r.summary.as_ref().map_or(0, |x| x.respawns),
        host_used_bytes: host_used,
        host_total_bytes: host_total,
        pressure: Some(r.pressure.clone()),
        pressure_target: r
            .summary
            .as_ref()
            .and_then(|x| x.pressure_hold.as_ref())
            .map(|h| h.pressure_target),
    };
    if st.expect.is_empty() {
        return (report, Vec::new());
    }
    let charged = match (&r.summary, r.requested) {
        (Some(sum), Some(req)) if st.by_size() => vec![(req, sum.charged_bytes)],
        _ => Vec::new(),
    };
    let obs = Observed {
        scope: format!("stage {}", r.index + 1),
        oom_kills: r.oom_end.saturating_sub(r.oom_base),
        victims: c
            .victims
            .iter()
            .filter(|v| v.stage == Some(r.index))
            .map(|v| v.role.clone())
            .collect(),
        charged,
        peak_working_set: peak_ws,
        apps_alive: r.apps_alive.clone(),
        psi: observed_psi(r),
    };
    (report, evaluate(&st.expect, &obs))
}

/// An episode with a victim on the run's clock; `None` when it has neither.
fn episode_report(ep: &Episode, stage: Option<usize>, c: &Collector) -> Option<EpisodeReport> {
    let pid = ep
        .selected()
        .or_else(|| ep.victims.first().map(|v| v.pid))?;
    let seen = c.victims.iter().rev().find(|v| v.pid == pid);
    let t = seen
        .map(|v| v.t)
        .or_else(|| ep.event_ts.map(|e| e - c.t0 as f64 / 1e9))?;
    let ev = ep.victims.iter().find(|v| v.pid == pid);
    let role = role_of(&c.roles, pid);
    let candidates = candidates(ep, &c.roles);
    Some(EpisodeReport {
        t,
        stage,
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
    })
}

fn summary(
    c: &Collector,
    stages: &[StageReport],
    verdicts: &[Verdict],
    oom_kills: u64,
    lost: u64,
) -> RunSummary {
    let passed = verdicts.iter().filter(|v| v.passed).count();
    let count = |f: fn(&str) -> bool| c.victims.iter().filter(|v| f(&v.role)).count() as u64;
    RunSummary {
        duration_s: c.samples.last().map_or(0.0, |x| x.t),
        oom_kills,
        traced_victims: c.victims.len() as u64,
        victims_from_kmsg: c.victims.iter().filter(|v| v.from_kmsg).count() as u64,
        lost_events: lost,
        worker_kills: count(|r| r == "worker"),
        app_kills: count(|r| r.starts_with("app:")),
        respawns: stages.iter().map(|x| x.respawns).sum(),
        peak_usage_bytes: peak(&c.samples, |x| x.usage_bytes),
        peak_working_set_bytes: peak(&c.samples, |x| x.working_set_bytes),
        expectations_passed: passed,
        expectations_failed: verdicts.len() - passed,
        expectations_not_evaluated: 0,
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

/// The stage's PSI for its expectations: oomlab's score after the level was first reached
/// (from the kernel's `total=` counters) for the kind it held, the stage's counters otherwise.
fn observed_psi(r: &StageRun) -> Option<super::expect::ObservedPsi> {
    let whole = r.pressure.psi?;
    let mut o = super::expect::ObservedPsi {
        some_pct: Some(whole.some_pct),
        full_pct: Some(whole.full_pct),
        never_reached: false,
        node: whole.scope == crate::cgroup::PsiScope::Node,
    };
    if let Some(h) = r.summary.as_ref().and_then(|s| s.pressure_hold.as_ref()) {
        o.never_reached = h.score.seconds_to_pressure.is_none();
        let held = match h.pressure_target.kind {
            crate::inject::pressure::PsiKind::Some => &mut o.some_pct,
            crate::inject::pressure::PsiKind::Full => &mut o.full_pct,
        };
        *held = h.score.pressure_mean;
    }
    Some(o)
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
}
