//! A small report as a real run makes it — two stages, a worker killed then an app, one
//! expectation failed — for the renderers' tests.

use super::timeline::{
    Candidate, CgroupSample, EpisodeReport, Mark, RunReport, RunSummary, StageReport, Verdict,
};
use crate::cgroup::{pressure::PsiShare, Pressure, PsiScope, Version};

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 500 * MIB;

pub(crate) fn report() -> RunReport {
    RunReport {
        experiment: "seed-story".into(),
        description: Some("fixture".into()),
        source: "built-in demo".into(),
        kernel: "6.18.0".into(),
        cgroup_version: Version::V1,
        cgroup: "/oomlab/run-1".into(),
        clock: "CLOCK_MONOTONIC".into(),
        t0_ns: 1,
        limit_bytes: Some(LIMIT),
        stages: stages(),
        samples: samples(),
        marks: marks(),
        episodes: vec![episode()],
        expectations: verdicts(),
        summary: summary(),
        conclusion: Some("The worker died first.".into()),
        interrupted: None,
    }
}

/// 12 s at 100 ms: a ramp to 200 MiB, then two saw teeth up to the limit after 4 s.
fn samples() -> Vec<CgroupSample> {
    (0..120)
        .map(|i| {
            let t = f64::from(i) * 0.1;
            let inj = if t < 4.0 {
                (200.0 * MIB as f64 * (t / 4.0).min(1.0)) as u64
            } else {
                ((t - 4.0) % 4.0 / 4.0 * 460.0 * MIB as f64) as u64
            };
            CgroupSample {
                t,
                usage_bytes: 40 * MIB + inj,
                working_set_bytes: 38 * MIB + inj,
                injected_bytes: inj,
                limit_bytes: Some(LIMIT),
                oom_kills: if t >= 8.0 { 2 } else { u64::from(t >= 7.9) },
                reclaim_pages_per_s: Some(if t > 7.5 { 5000.0 } else { 0.0 }),
                reclaim_passes_per_s: Some(if t > 7.5 { 40.0 } else { 0.0 }),
                psi_some_pct: Some(if t > 6.0 { 12.0 } else { 1.0 }),
                psi_full_pct: Some(if t > 6.0 { 4.0 } else { 0.5 }),
            }
        })
        .collect()
}

fn stages() -> Vec<StageReport> {
    vec![
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
            pressure_target: None,
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
            pressure: Some(Pressure {
                events: [("failcnt".to_owned(), 7), ("oom_kill".to_owned(), 2)].into(),
                psi: Some(PsiShare {
                    scope: PsiScope::Node,
                    some_pct: 12.5,
                    full_pct: 4.0,
                }),
            }),
            pressure_target: Some(crate::inject::pressure::Level {
                kind: crate::inject::pressure::PsiKind::Some,
                pct: 10.0,
            }),
        },
    ]
}

fn marks() -> Vec<Mark> {
    vec![
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
    ]
}

/// The worker's kill, with the kernel's table: the worker first, the app second.
fn episode() -> EpisodeReport {
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
    EpisodeReport {
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
    }
}

fn verdicts() -> Vec<Verdict> {
    vec![
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
    ]
}

fn summary() -> RunSummary {
    RunSummary {
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
        expectations_not_evaluated: 0,
    }
}
