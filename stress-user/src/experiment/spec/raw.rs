//! The experiment file as written: serde structs that refuse unknown keys and keep each value's
//! span, so a check can point at the line a value came from.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) name: Option<String>,
    pub(super) description: Option<String>,
    pub(super) target: Spanned<RawTarget>,
    #[serde(default)]
    pub(super) apps: Vec<Spanned<RawApp>>,
    #[serde(default)]
    pub(super) stages: Vec<Spanned<RawStage>>,
    pub(super) expect: Option<Spanned<RawExpect>>,
    /// Printed at the end of a run, in plain words.
    pub(super) conclusion: Option<String>,
    /// Run where `memory.oom.group` makes a worker's OOM kill a whole group.
    pub(super) allow_group_kill: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) scratch: Option<Spanned<bool>>,
    pub(super) cgroup: Option<Spanned<String>>,
    pub(super) pod: Option<Spanned<String>>,
    pub(super) container: Option<Spanned<String>>,
    pub(super) pid: Option<Spanned<i32>>,
    pub(super) memory_limit: Option<Spanned<String>>,
    pub(super) memory_high: Option<Spanned<String>>,
    pub(super) oom_group: Option<Spanned<bool>>,
    /// Runtime sockets for `container`/`pod` names (as `--containerd-socket`/`--docker-socket`).
    pub(super) containerd_socket: Option<String>,
    pub(super) docker_socket: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Option<String>,
    /// A command line (argv), started inside the target.
    pub(super) command: Option<Spanned<Vec<String>>>,
    /// The built-in `oomlab app`: hold this much.
    pub(super) size: Option<Spanned<String>>,
    pub(super) oom_score_adj: Option<Spanned<i32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) name: Option<String>,
    pub(super) inject: Option<Spanned<RawInject>>,
    pub(super) hold: Option<Spanned<String>>,
    /// Watch for this long after the injection is released.
    pub(super) settle: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInject {
    pub(super) size: Option<Spanned<String>>,
    pub(super) working_set: Option<Spanned<String>>,
    /// A PSI level to hold, `some=10%` (`oomlab inject --pressure`).
    pub(super) pressure: Option<Spanned<String>>,
    pub(super) workers: Option<Spanned<u32>>,
    pub(super) ramp: Option<Spanned<String>>,
    pub(super) rate: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) oom_score_adj: Option<Spanned<RawAdj>>,
    pub(super) on_oom: Option<Spanned<String>>,
}

/// A number, or `"lowest"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAdj {
    Value(i32),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpect {
    pub(super) victim: Option<Spanned<String>>,
    pub(super) max_oom_kills: Option<Spanned<u64>>,
    pub(super) min_oom_kills: Option<Spanned<u64>>,
    pub(super) charged_within: Option<Spanned<String>>,
    pub(super) working_set_below: Option<Spanned<String>>,
    pub(super) app_survives: Option<Spanned<bool>>,
    /// `"10%±3"`: the stage's PSI some (or full) within 3 points of 10 %.
    pub(super) psi_some_within: Option<Spanned<String>>,
    pub(super) psi_full_within: Option<Spanned<String>>,
}
