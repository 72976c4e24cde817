//! OOM episodes: one OOM's kernel-log report (trigger, domain, constraint, candidate table, every
//! `Killed process`, the reaper) and its tracepoint events (`mark_victim`, reaper steps) grouped
//! under one id, with the kernel's choice checked against oomlab's badness ranking.
//!
//! This file is the model; [`EpisodeBuilder`] groups lines and events into episodes, and
//! [`Episodes`] feeds it from `/dev/kmsg` and the tracer while oomlab runs.

mod builder;
mod live;

use serde::Serialize;

pub use self::{
    builder::{EpisodeBuilder, ADJ_PRUNE_EVERY, QUIET, STALE, VICTIM_GRACE},
    live::Episodes,
};
use crate::trace::{
    badness::Ranking,
    kmsg::{MemCounter, Scope},
    scoreboard::AdjChange,
};

/// The OOM domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Domain {
    /// `memcg` or `global`; `None` when neither the log nor the constraint said.
    pub scope: Option<Scope>,
    /// The memcg whose limit was hit (`oom_memcg=`), for a memcg OOM.
    pub memcg: Option<String>,
}

/// The task whose allocation invoked the OOM killer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Trigger {
    pub pid: Option<i32>,
    pub comm: Option<String>,
    pub gfp_mask: Option<String>,
    pub order: Option<i32>,
    pub oom_score_adj: Option<i32>,
    /// From the `mark_victim` event's current task.
    pub cgroup_id: Option<u64>,
}

/// One killed task of the episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeVictim {
    pub pid: i32,
    pub comm: Option<String>,
    pub oom_score_adj: Option<i32>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    /// The one `select_bad_process` chose (the others died with it in a group kill).
    pub selected: bool,
    /// Seen in the kernel log (`Killed process`).
    pub logged: bool,
    /// Seen by the `oom:mark_victim` tracepoint.
    pub traced: bool,
    /// Its memory cgroup (`task_memcg=` for the selected one, or the tracer's enrichment).
    pub cgroup: Option<String>,
    /// Its `oom_score_adj` changes seen during this trace, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adj_history: Vec<AdjChange>,
    /// Its container, pod and whether it was the container's init (from the traced event).
    #[serde(flatten)]
    pub container: super::event::ContainerNames,
}

/// The OOM reaper's work on a victim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaperNote {
    pub pid: i32,
    /// `wake`, `start`, `finish`, `skip` (tracepoints) or `reaped` (kernel log).
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_rss_kb: Option<u64>,
}

/// How much of the kernel's OOM report the episode is built from. The `mark_victim`
/// tracepoint says that a kill happened; the report only adds to it, and may be ratelimited,
/// late, cut or unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KmsgState {
    /// The report's header and its `Killed process` line.
    Complete,
    /// Part of a report: no header (the kernel ratelimited the dump) or no kill line within
    /// the wait for it.
    Truncated,
    /// No report: the episode comes from the tracepoints alone.
    Missing,
}

/// One OOM, as complete as the kernel's log and tracepoints allow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Episode {
    pub id: u64,
    /// Kernel time of the episode: the `mark_victim` event's, else the report's printk time.
    pub ts: f64,
    /// printk time of the report's first line, seconds since boot (None: tracepoint only).
    pub kmsg_ts: Option<f64>,
    /// Kernel time of the first `mark_victim` event (CLOCK_MONOTONIC seconds).
    pub event_ts: Option<f64>,
    pub trigger: Trigger,
    pub domain: Domain,
    pub constraint: Option<String>,
    /// The memory counters of the OOM memcg (`memory:`, `swap:`…).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory: Vec<MemCounter>,
    pub victims: Vec<EpisodeVictim>,
    /// `memory.oom.group`: the cgroup whose tasks were all killed.
    pub group_kill: Option<String>,
    /// `Killed process` lines (a group kill logs the selected victim twice, and the cgroup's
    /// `oom_kill` counter counts both).
    pub kill_lines: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reaper: Vec<ReaperNote>,
    /// The candidate table with oomlab's ranking (None when the kernel printed no table:
    /// `vm.oom_dump_tasks=0`, ratelimited, or no report at all).
    pub selection: Option<Ranking>,
    /// What the kernel log contributed.
    pub kmsg: KmsgState,
}

impl Episode {
    /// The pid the kernel selected.
    pub fn selected(&self) -> Option<i32> {
        self.victims.iter().find(|v| v.selected).map(|v| v.pid)
    }

    /// Whether the episode concerns `target` (a cgroup path relative to the controller's
    /// mount) or its descendants: a victim the (target-filtered) tracer saw, the OOM domain,
    /// or a victim's cgroup.
    pub fn in_target(&self, target: &str) -> bool {
        let t = target.trim_matches('/');
        let inside = |p: &str| {
            let p = p.trim_matches('/');
            t.is_empty() || p == t || p.strip_prefix(t).is_some_and(|r| r.starts_with('/'))
        };
        self.victims.iter().any(|v| v.traced)
            || self.domain.memcg.as_deref().is_some_and(inside)
            || self
                .victims
                .iter()
                .any(|v| v.cgroup.as_deref().is_some_and(inside))
    }
}
