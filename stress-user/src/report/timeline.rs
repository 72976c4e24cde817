//! The record of one `oomlab run`: cgroup samples, injector and kernel events on one clock
//! (CLOCK_MONOTONIC, seconds since the run started), OOM episodes with their candidate tables,
//! and the expectations' verdicts. `report.json` is this, serialized; the plot and the
//! Markdown report are drawn from it.

use serde::{Deserialize, Serialize};

/// One reading of the target cgroup (and of the injector's workers), every ~100 ms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
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
pub struct Episode {
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
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
    pub samples: Vec<Sample>,
    pub marks: Vec<Mark>,
    pub episodes: Vec<Episode>,
    pub expectations: Vec<Verdict>,
    pub summary: Summary,
    pub conclusion: Option<String>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.expectations.iter().all(|v| v.passed)
    }

    /// The end of the timeline in seconds.
    pub fn end(&self) -> f64 {
        let s = self.samples.last().map_or(0.0, |s| s.t);
        let m = self.marks.iter().map(|m| m.t).fold(0.0, f64::max);
        s.max(m).max(self.stages.last().map_or(0.0, |s| s.end))
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A small report as a real run makes it, for the renderers' tests.
    use super::*;

    const MIB: u64 = 1 << 20;

    pub fn report() -> RunReport {
        let limit = 500 * MIB;
        let mut samples = Vec::new();
        for i in 0..120 {
            let t = f64::from(i) * 0.1;
            // Two saw teeth after 4 s.
            let inj = if t < 4.0 {
                (200.0 * MIB as f64 * (t / 4.0).min(1.0)) as u64
            } else {
                ((t - 4.0) % 4.0 / 4.0 * 460.0 * MIB as f64) as u64
            };
            samples.push(Sample {
                t,
                usage_bytes: 40 * MIB + inj,
                working_set_bytes: 38 * MIB + inj,
                injected_bytes: inj,
                limit_bytes: Some(limit),
                oom_kills: if t >= 8.0 { 2 } else { u64::from(t >= 7.9) },
                reclaim_pages_per_s: Some(if t > 7.5 { 5000.0 } else { 0.0 }),
                reclaim_passes_per_s: Some(if t > 7.5 { 40.0 } else { 0.0 }),
            });
        }
        let candidates = vec![
            Candidate {
                pid: 443_160,
                name: "oomlab".into(),
                role: "worker".into(),
                rss_kb: 152_704,
                swap_kb: 0,
                pgtables_kb: 400,
                oom_score_adj: 1000,
                badness: Some(166_276),
                rank: Some(1),
                chosen: true,
            },
            Candidate {
                pid: 441_060,
                name: "oomlab".into(),
                role: "app:node".into(),
                rss_kb: 41_000,
                swap_kb: 0,
                pgtables_kb: 120,
                oom_score_adj: 988,
                badness: Some(136_724),
                rank: Some(2),
                chosen: false,
            },
        ];
        RunReport {
            experiment: "seed-story".into(),
            description: Some("fixture".into()),
            source: "built-in demo".into(),
            kernel: "6.18.0".into(),
            cgroup_version: crate::cgroup::Version::V1,
            cgroup: "/oomlab/run-1".into(),
            clock: "CLOCK_MONOTONIC".into(),
            t0_ns: 1,
            limit_bytes: Some(limit),
            stages: vec![
                StageReport {
                    index: 0,
                    name: "4 workers, 200 MiB in total".into(),
                    start: 0.0,
                    end: 4.0,
                    requested_bytes: Some(200 * MIB),
                    workers: Some(4),
                    oom_score_adj: None,
                    charged_bytes: Some(201 * MIB),
                    seconds_to_target: Some(0.4),
                    peak_usage_bytes: 240 * MIB,
                    peak_working_set_bytes: 238 * MIB,
                    oom_kills: 0,
                    respawns: 0,
                    host_used_bytes: 3 << 30,
                    host_total_bytes: 24 << 30,
                    pressure: None,
                },
                StageReport {
                    index: 1,
                    name: "push to 3,000 MiB".into(),
                    start: 4.0,
                    end: 12.0,
                    requested_bytes: Some(3000 * MIB),
                    workers: Some(4),
                    oom_score_adj: Some(1000),
                    charged_bytes: Some(460 * MIB),
                    seconds_to_target: None,
                    peak_usage_bytes: 500 * MIB,
                    peak_working_set_bytes: 498 * MIB,
                    oom_kills: 2,
                    respawns: 2,
                    host_used_bytes: 3 << 30,
                    host_total_bytes: 24 << 30,
                    pressure: Some(crate::cgroup::Pressure {
                        events: [("failcnt".to_owned(), 7), ("oom_kill".to_owned(), 2)].into(),
                        psi: Some(crate::cgroup::pressure::PsiShare {
                            scope: crate::cgroup::PsiScope::Node,
                            some_pct: 12.5,
                            full_pct: 4.0,
                        }),
                    }),
                },
            ],
            samples,
            marks: vec![
                Mark {
                    t: 7.9,
                    kind: "oom_kill".into(),
                    pid: Some(443_160),
                    role: Some("worker".into()),
                    label: "worker 443160".into(),
                    stage: Some(1),
                },
                Mark {
                    t: 11.9,
                    kind: "oom_kill".into(),
                    pid: Some(441_060),
                    role: Some("app:node".into()),
                    label: "node 441060".into(),
                    stage: Some(1),
                },
            ],
            episodes: vec![Episode {
                t: 7.9,
                stage: Some(1),
                victim_pid: 443_160,
                victim_comm: "oomlab".into(),
                victim_role: "worker".into(),
                victim_adj: Some(1000),
                victim_anon_rss_kb: Some(152_704),
                trigger_pid: Some(443_161),
                trigger_comm: Some("oomlab".into()),
                constraint: Some("memcg".into()),
                candidates,
                why: "highest badness".into(),
                disagreement: None,
            }],
            expectations: vec![
                Verdict {
                    scope: "4 workers, 200 MiB in total".into(),
                    key: "charged_within".into(),
                    expected: "2%".into(),
                    observed: "201.0 MiB for 200.0 MiB (+0.5%)".into(),
                    passed: true,
                    line: 30,
                },
                Verdict {
                    scope: "push to 3,000 MiB".into(),
                    key: "victim".into(),
                    expected: "worker".into(),
                    observed: "an app was killed".into(),
                    passed: false,
                    line: 40,
                },
            ],
            summary: Summary {
                duration_s: 12.0,
                oom_kills: 2,
                traced_victims: 2,
                victims_from_kmsg: 0,
                lost_events: 0,
                worker_kills: 1,
                app_kills: 1,
                respawns: 2,
                peak_usage_bytes: 500 * MIB,
                peak_working_set_bytes: 498 * MIB,
                expectations_passed: 1,
                expectations_failed: 1,
            },
            conclusion: Some("The worker died first.".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
