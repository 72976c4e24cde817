//! A stage's injection as the injector's request: its amount, workers, pace and kind, held for
//! the stage's time, checked against the host and the target before anything starts.

use std::{path::Path, time::Duration};

use super::{
    runner::RunError,
    spec::{Amount, Inject, Stage},
};
use crate::{
    cgroup::{Hierarchy, MemCgroup},
    inject::{
        alloc::AllocOptions,
        control::Pace,
        plan::{self, NodeMemory, Plan, Request},
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
        pressure: None,
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
        force: false,
        file_dir: file_dir.to_path_buf(),
    };
    let node = NodeMemory::read().map_err(|e| RunError::Failed(e.to_string()))?;
    plan::check(hier, &req, node)
        .map_err(|e| RunError::Input(format!("stage {} (line {}): {e}", i + 1, stage.line)))
}
