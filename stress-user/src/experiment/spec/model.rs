//! The checked experiment: what the runner consumes. Every value here has passed the checks,
//! sizes are in bytes (scaled for `OOMLAB_VM`) and defaults are filled in.

use std::{fmt, time::Duration};

use crate::{
    inject::{alloc::Kind, control::Pace, plan::OnOom},
    size::SizeSpec,
};

/// Where the experiment runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A cgroup made for the run under `oomlab/`, removed at the end.
    Scratch {
        limit: Option<u64>,
        /// v2 `memory.high`.
        memory_high: Option<Located<u64>>,
        /// v2 `memory.oom.group`.
        oom_group: Option<Located<bool>>,
    },
    Cgroup(String),
    Pod(String),
    Container(String),
    Pid(i32),
}

/// A value with the line it came from, for errors found only at run time (e.g. the cgroup
/// version).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppKind {
    Command(Vec<String>),
    /// `oomlab app --size N`.
    Builtin {
        size: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub name: String,
    pub kind: AppKind,
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    Size(SizeSpec),
    WorkingSet(SizeSpec),
    /// Hold a PSI level (`inject = { pressure = "some=10%" }`).
    Pressure(crate::inject::pressure::Level),
}

/// The workers' `oom_score_adj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adj {
    Value(i32),
    /// -1000 where oomlab holds CAP_SYS_RESOURCE (needed to lower an adj), otherwise its own
    /// adj: the lowest the host lets it give.
    Lowest,
}

impl Adj {
    /// The adj the workers get on this host.
    pub fn resolve(self) -> i32 {
        match self {
            Adj::Value(v) => v,
            Adj::Lowest => crate::inject::plan::lowest_oom_score_adj(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inject {
    pub amount: Amount,
    pub workers: usize,
    pub pace: Pace,
    pub kind: Kind,
    pub oom_score_adj: Option<Adj>,
    pub on_oom: OnOom,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub name: String,
    pub line: usize,
    pub inject: Option<Inject>,
    /// How long the injection is held once reached (or, without inject, how long to watch).
    pub hold: Duration,
    pub settle: Duration,
    pub expect: Expectations,
}

impl Stage {
    /// It injects a size (not a working set): what was charged can be held against it.
    pub fn by_size(&self) -> bool {
        self.inject
            .as_ref()
            .is_some_and(|i| matches!(i.amount, Amount::Size(_)))
    }
}

/// Who the OOM killer must pick first in the scope (`None`: nobody is killed). Later kills,
/// after the first victim's memory is freed, do not decide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VictimRole {
    Worker,
    /// Any of the experiment's apps.
    App,
    None,
    /// The app with this name.
    Named(String),
}

impl fmt::Display for VictimRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VictimRole::Worker => "worker",
            VictimRole::App => "app",
            VictimRole::None => "none",
            VictimRole::Named(n) => n,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    pub victim: Option<VictimRole>,
    pub max_oom_kills: Option<u64>,
    pub min_oom_kills: Option<u64>,
    /// Fraction: 0.02 for "2%".
    pub charged_within: Option<f64>,
    pub working_set_below: Option<u64>,
    pub app_survives: Option<bool>,
    /// (level, tolerance) in percent of wall time: `"10%±3"` is (10, 3).
    pub psi_some_within: Option<(f64, f64)>,
    pub psi_full_within: Option<(f64, f64)>,
    /// Bytes `charged_within` also allows: with `OOMLAB_VM` sizes are scaled down but each
    /// worker process's own cost (binary, stack, page tables, ~1 MiB) is not.
    pub charged_allowance: u64,
    /// Line of the table, for reports.
    pub line: usize,
}

impl Expectations {
    pub fn is_empty(&self) -> bool {
        self.victim.is_none()
            && self.max_oom_kills.is_none()
            && self.min_oom_kills.is_none()
            && self.charged_within.is_none()
            && self.working_set_below.is_none()
            && self.app_survives.is_none()
            && self.psi_some_within.is_none()
            && self.psi_full_within.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub description: Option<String>,
    pub target: Target,
    pub apps: Vec<App>,
    pub stages: Vec<Stage>,
    /// Over the whole run.
    pub expect: Expectations,
    pub conclusion: Option<String>,
    /// Where it came from (a path, or `built-in demo`).
    pub source: String,
    /// `allow_group_kill = true`: an existing target may have `memory.oom.group` set (a scratch
    /// target's own `oom_group` needs no such consent: the file sets it).
    pub allow_group_kill: bool,
    /// `[target]` `containerd_socket`/`docker_socket`: who names `container` and `pod`.
    pub runtime: crate::runtime::RuntimeArgs,
}

impl Experiment {
    /// Needs cgroup v2 (for tests and the kernel matrix).
    pub fn needs_v2(&self) -> bool {
        matches!(&self.target, Target::Scratch { memory_high, oom_group, .. } if memory_high.is_some() || oom_group.is_some())
    }
}
