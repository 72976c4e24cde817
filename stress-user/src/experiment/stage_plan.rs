//! A stage's injection as the injector's request: its amount, workers, pace and kind, held for
//! the stage's time, checked against the host and the target before anything starts.

use std::{path::Path, time::Duration};

use super::{
    runner::RunError,
    spec::{Amount, Inject, Stage},
};
use crate::{
    cgroup::{Hierarchy, MemCgroup, Version},
    inject::{
        alloc::AllocOptions,
        control::Pace,
        plan::{self, NodeMemory, Plan, Request},
        pressure::PressureGoal,
    },
};

/// The injector's plan for a stage, checked against the host and the target.
pub(super) fn plan_stage(
    i: usize,
    stage: &Stage,
    inj: &Inject,
    adj: Option<i32>,
    hier: &Hierarchy,
    cg: &MemCgroup,
    file_dir: &Path,
) -> Result<Plan, RunError> {
    let (size, working_set, pressure) = match inj.amount {
        Amount::Size(s) => (Some(s), None, None),
        Amount::WorkingSet(w) => (None, Some(w), None),
        // On v1 only the node's PSI exists: the experiment holds that (its report says so).
        Amount::Pressure(level) => (
            None,
            None,
            Some(PressureGoal {
                level,
                window: Duration::from_secs(10),
                node: hier.memory_version == Version::V1,
                allow_oom: false,
            }),
        ),
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
        pressure,
        workers: inj.workers,
        pace: inj.pace,
        kind: inj.kind,
        alloc: AllocOptions::default(),
        redirty: None,
        duration: Some(ramp + stage.hold),
        oom_score_adj: adj,
        on_oom: inj.on_oom,
        // The file says what it wants; going over the limit is the point of many experiments.
        allow_oom: true,
        // The runner refused a group-kill target before anything started, unless allowed.
        allow_group_kill: true,
        force: false,
        file_dir: file_dir.to_path_buf(),
    };
    let node = NodeMemory::read().map_err(|e| RunError::Failed(e.to_string()))?;
    plan::check(hier, &req, node)
        .map_err(|e| RunError::Input(format!("stage {} (line {}): {e}", i + 1, stage.line)))
}
