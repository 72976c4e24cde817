//! The record of one `oomlab run`: cgroup samples, injector and kernel events on one clock
//! (CLOCK_MONOTONIC, seconds since the run started), OOM episodes with their candidate tables,
//! and the expectations' verdicts. `report.json` is this, serialized; the plot and the
//! Markdown report are drawn from it.

use serde::{Deserialize, Serialize};

/// One reading of the target cgroup (and of the injector's workers), every ~100 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CgroupSample {
    /// Seconds since the run started.
    pub t: f64,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    /// Resident memory of the injector's live workers (what oomlab holds at this moment).
    pub injected_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// The cgroup's oom_kill counter since the run started.
    pub oom_kills: u64,
    /// Pages reclaimed per second in the target since the last sample, when known (the tracer's
    /// memcg reclaim events, or v2 `memory.stat` pgsteal).
    pub reclaim_pages_per_s: Option<f64>,
    /// Reclaim passes per second in the target (the kernel trying, whatever it got back).
    #[serde(default)]
    pub reclaim_passes_per_s: Option<f64>,
    /// PSI some / full over the last second, percent of wall time (the target's on v2, the
    /// node's on v1), from the kernel's `total=` counters.
    #[serde(default)]
    pub psi_some_pct: Option<f64>,
    #[serde(default)]
    pub psi_full_pct: Option<f64>,
}

/// Something that happened at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub t: f64,
    /// `stage_start`, `stage_end`, `app_started`, `app_exited`, `worker_started`,
    /// `worker_killed`, `target_reached`, `oom_kill`, `adj_update`.
    pub kind: String,
    pub pid: Option<i32>,
    /// `worker`, `app:<name>` or `other`.
    pub role: Option<String>,
    /// A short human label ("worker 443160", "node").
    pub label: String,
    /// The stage it happened in (index), if any.
    pub stage: Option<usize>,
}

/// A process the OOM killer considered, as the kernel printed it (`dump_tasks`), ranked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub pid: i32,
    pub name: String,
    pub role: String,
    pub rss_kb: u64,
    pub swap_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    /// The kernel's badness (pages, adj scaled by the domain's total pages); `None` for a task
    /// that can never be chosen (adj -1000) or could not be scored.
    pub badness: Option<i64>,
    /// 1 = the one oomlab's ranking says the kernel picks.
    pub rank: Option<usize>,
    /// The kernel killed this one.
    pub chosen: bool,
}

/// One OOM kill with its context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeReport {
    pub t: f64,
    pub stage: Option<usize>,
    pub victim_pid: i32,
    pub victim_comm: String,
    /// `worker`, `app:<name>` or `other`.
    pub victim_role: String,
    pub victim_adj: Option<i32>,
    pub victim_anon_rss_kb: Option<u64>,
    /// The task that ran into the limit.
    pub trigger_pid: Option<u32>,
    pub trigger_comm: Option<String>,
    /// `memcg` or `global`, when the kernel log said.
    pub constraint: Option<String>,
    /// The candidate table (empty when the kernel log was not available).
    pub candidates: Vec<Candidate>,
    /// Why this victim, in words.
    pub why: String,
    /// Set when oomlab's own ranking picks someone else than the kernel did.
    pub disagreement: Option<String>,
}

/// One expectation and whether it held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// `run` or the stage's name.
    pub scope: String,
    /// The key as in the file (`victim`, `max_oom_kills`, …).
    pub key: String,
    /// What was expected, in the file's words.
    pub expected: String,
    /// What happened.
    pub observed: String,
    pub passed: bool,
    /// Line in the experiment file.
    pub line: usize,
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub index: usize,
    pub name: String,
    pub start: f64,
    pub end: f64,
    /// What the stage asked the injector for (bytes), if it injected.
    pub requested_bytes: Option<u64>,
    pub workers: Option<usize>,
    pub oom_score_adj: Option<i32>,
    /// Peak usage increase during the stage (the injector's own measure).
    pub charged_bytes: Option<u64>,
    pub seconds_to_target: Option<f64>,
    pub peak_usage_bytes: u64,
    pub peak_working_set_bytes: u64,
    pub oom_kills: u64,
    pub respawns: u64,
    /// What `free` would have shown as used at the stage's peak (host /proc/meminfo): the
    /// number the blog was misled by.
    pub host_used_bytes: u64,
    pub host_total_bytes: u64,
    /// The cgroup's limit events and PSI during the stage (from its start to its end).
    #[serde(default)]
    pub pressure: Option<crate::cgroup::Pressure>,
    /// The PSI level the stage held (`inject = { pressure = ... }`).
    #[serde(default)]
    pub pressure_target: Option<crate::inject::pressure::Level>,
}

/// The whole run in counts: what `oomlab run` prints at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub duration_s: f64,
    /// From the kernel's own counter.
    pub oom_kills: u64,
    /// Victims seen in this target: by the tracer, or by the kernel log where the tracer's
    /// event did not arrive.
    pub traced_victims: u64,
    /// Of those, the ones only the kernel log named.
    #[serde(default)]
    pub victims_from_kmsg: u64,
    /// Events the kernel could not hand over (ring buffer full).
    pub lost_events: u64,
    pub worker_kills: u64,
    pub app_kills: u64,
    pub respawns: u64,
    pub peak_usage_bytes: u64,
    pub peak_working_set_bytes: u64,
    pub expectations_passed: usize,
    pub expectations_failed: usize,
    /// Expectations not evaluated because their scope did not run to its end (an interrupted
    /// run: its cut-short and skipped stages, and the run's own).
    #[serde(default)]
    pub expectations_not_evaluated: usize,
}

/// Why and where a run stopped before its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interruption {
    /// `SIGINT`, `SIGTERM`, `SIGHUP`, `SIGQUIT`, or `stdout closed`.
    pub cause: String,
    /// When the run noticed it, seconds on the run's clock.
    pub t: f64,
    /// What the run was doing then: `starting`, `loading the tracer`, `starting app NAME`,
    /// `stage N`.
    pub during: String,
    /// The stage it cut short (0-based), if one was running.
    pub stage: Option<usize>,
    /// The stages that never ran.
    pub skipped: Vec<SkippedStage>,
}

/// A stage an interrupted run did not start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedStage {
    pub index: usize,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub experiment: String,
    pub description: Option<String>,
    pub source: String,
    pub kernel: String,
    pub cgroup_version: crate::cgroup::Version,
    pub cgroup: String,
    /// Always `CLOCK_MONOTONIC`: the kernel's event timestamps (bpf_ktime_get_ns) and the
    /// samples share it; `t` values are seconds since `t0_ns`.
    pub clock: String,
    pub t0_ns: u64,
    pub limit_bytes: Option<u64>,
    pub stages: Vec<StageReport>,
    pub samples: Vec<CgroupSample>,
    pub marks: Vec<Mark>,
    pub episodes: Vec<EpisodeReport>,
    pub expectations: Vec<Verdict>,
    pub summary: RunSummary,
    /// The experiment's conclusion; `None` for an interrupted run (it speaks of stages that did
    /// not all run).
    pub conclusion: Option<String>,
    /// Set when the run stopped before its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<Interruption>,
}

impl RunReport {
    /// Every expectation was evaluated and held.
    pub fn passed(&self) -> bool {
        self.interrupted.is_none() && self.expectations.iter().all(|v| v.passed)
    }

    /// The end of the timeline in seconds.
    pub fn end(&self) -> f64 {
        let s = self.samples.last().map_or(0.0, |s| s.t);
        let m = self.marks.iter().map(|m| m.t).fold(0.0, f64::max);
        s.max(m).max(self.stages.last().map_or(0.0, |s| s.end))
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fixture, *};

    #[test]
    fn round_trips_through_json() {
        let r = fixture::report();
        let text = serde_json::to_string(&r).expect("serializes");
        let back: RunReport = serde_json::from_str(&text).expect("parses back");
        // Floats may move in the last digit; everything else comes back as it was.
        assert_eq!(back.samples.len(), r.samples.len());
        assert_eq!(
            (&back.episodes, &back.expectations, &back.stages),
            (&r.episodes, &r.expectations, &r.stages)
        );
        assert!(!r.passed());
        assert!((r.end() - 12.0).abs() < 1e-9);
    }
}
