//! What the agent reports while it runs: a typed stream of [`AgentEvent`]s, each handed to the
//! caller's callback the moment it happens. `oomlab inject` prints them (as JSON lines or human
//! lines, `report::inject`); `oomlab run` puts them on its timeline.

use serde::Serialize;

use super::{
    alloc::Kind,
    pressure::{control::Scored, Level},
    spawn::Birth,
};
use crate::cgroup::{Pressure, PsiScope, Version};

/// One thing the agent did or saw. Serializes as the record alone (no tag): the JSON sink puts
/// the line's `type` in front of it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum AgentEvent {
    /// The target is in place (a `--new` cgroup has just been created); nothing started yet.
    /// It has no JSON line: the JSON lines name the cgroup in their `summary`.
    #[serde(skip_serializing)]
    TargetOpened(TargetOpened),
    /// A worker process exists and waits, before it joins the target or execs: its pid, for a
    /// caller that must know it before the OOM killer can pick it (`oomlab run` puts it in the
    /// kernel's own-worker set). No JSON line: `worker_started` follows once it has exec'd.
    #[serde(skip_serializing)]
    WorkerBorn(WorkerBorn),
    /// A worker is inside the target, first or as a respawn.
    WorkerStarted(WorkerStarted),
    /// A worker ended: killed (by the OOM killer, most often) or exited.
    WorkerKilled(WorkerKilled),
    /// The workers hold the goal (or the working set is at it) for the first time.
    TargetReached(TargetReached),
    /// The target's counters, once a second.
    Sample(Sample),
    /// A worker could not allocate (or shrink); it holds what it has.
    WorkerError(WorkerError),
    /// The end of the run.
    Summary(Summary),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOpened {
    pub cgroup: String,
    pub version: Version,
    /// The limit when the run began.
    pub limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerBorn {
    pub worker: usize,
    pub pid: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStarted {
    pub worker: usize,
    pub pid: i32,
    /// `clone3` (created inside the target, v2) or `join` (joined it before exec).
    pub born: Birth,
    pub respawn: bool,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerKilled {
    pub worker: usize,
    pub pid: i32,
    /// The signal that ended it (`SIGKILL` for the OOM killer), if a signal did.
    pub signal: Option<String>,
    pub exit_code: Option<i32>,
    /// The target's oom_kill counter went up when it died.
    pub oom_kill: bool,
    pub held_bytes: u64,
    pub elapsed_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReached {
    pub seconds: f64,
    pub requested_bytes: u64,
    pub charged_bytes: u64,
    /// With a working-set goal: the working set when it was reached (the human line says it;
    /// the JSON record does not carry it).
    #[serde(skip)]
    pub working_set_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub requested_bytes: u64,
    pub charged_bytes: u64,
    pub held_bytes: u64,
    pub working_set_bytes: u64,
    pub usage_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub workers_alive: usize,
    pub workers: usize,
    pub oom_kills: u64,
    /// `--pressure`: the level over the window and what the controller holds.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pressure_hold: Option<PressureSample>,
}

/// What a `--pressure` run adds to its samples.
#[derive(Debug, Clone, Serialize)]
pub struct PressureSample {
    /// The level asked for, e.g. `some=10%`.
    pub pressure_target: Level,
    /// Whose PSI: the target's own (`cgroup`) or the node's (`node`, --node-pressure).
    pub psi_scope: PsiScope,
    /// PSI some / full over the last `psi_window_s` seconds, percent of wall time, from the
    /// kernel's `total=` counters.
    pub psi_some_pct: f64,
    pub psi_full_pct: f64,
    pub psi_window_s: f64,
    /// The held kind over the last second alone (what the controller steered on).
    pub psi_last_second_pct: f64,
    /// Anonymous memory the squeeze worker holds.
    pub squeeze_bytes: u64,
    /// Room left under the limit for page cache.
    pub room_bytes: u64,
    /// The page-cache set the cycler reads round.
    pub cycle_set_bytes: u64,
    /// Its pace, pages a second: asked, and made over the last second (a starved CPU holds it
    /// below what was asked).
    pub cycle_pages_per_s: u64,
    pub cycle_pages_made_per_s: u64,
    /// CPU of the agent and its workers over the last second, percent of one CPU.
    pub oomlab_cpu_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerError {
    pub worker: usize,
    pub pid: i32,
    pub message: String,
}

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cgroup: String,
    pub kind: Kind,
    pub workers: usize,
    pub requested_bytes: u64,
    /// The cgroup's usage at the end minus its usage before the run: what was held
    /// (--working-set: the working set at the end).
    pub charged_bytes: u64,
    /// The peak of that difference during the run (a fill may overshoot for a moment).
    pub peak_bytes: u64,
    /// charged / requested.
    pub accuracy: f64,
    pub seconds_to_target: Option<f64>,
    pub worker_kills: u64,
    pub respawns: u64,
    /// The target's oom_kill counter, increase during the run.
    pub oom_kills: u64,
    /// The target's limit events (v2 memory.events, v1 failcnt) and PSI during the run.
    pub pressure: Pressure,
    pub duration_s: f64,
    /// `--pressure`: how the level was held.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pressure_hold: Option<PressureSummary>,
    /// `duration`, `signal`, `worker_died` (--on-oom stop) or `no_workers_left`.
    pub stopped_by: &'static str,
    pub exit_code: i32,
}

/// What a `--pressure` run adds to its summary.
#[derive(Debug, Clone, Serialize)]
pub struct PressureSummary {
    pub pressure_target: Level,
    pub psi_scope: PsiScope,
    #[serde(flatten)]
    pub score: Scored,
    /// Times the controller backed off because `memory.events` `oom` moved.
    pub backoffs: u64,
    /// CPU the agent and its workers used, seconds and percent of one CPU over the run.
    pub oomlab_cpu_s: f64,
    pub oomlab_cpu_pct: f64,
}
