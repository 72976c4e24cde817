//! Checking a request before anything is created: every refusal names the problem and what to
//! do, and nothing (cgroup, worker, file) exists until the whole request has passed.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    alloc::{self, AllocOptions, Kind},
    control::Pace,
    pressure::{self, PressureError, PressureGoal},
};
use crate::{
    cgroup::{oom_group, target::TargetError, CgroupError, Hierarchy, MemCgroup, OWNED_PARENT},
    size::{human, SizeError, SizeSpec},
    sys::MemInfo,
};

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Pressure(#[from] PressureError),
    #[error("no target given: use one of --cgroup, --pid, --pod, --container, or --new NAME --limit SIZE")]
    NoTarget,
    #[error("give one of --size, --working-set or --pressure")]
    NoGoal,
    #[error("oomlab inject must run as root (euid is {euid}): it writes the target's cgroup.procs and sets oom_score_adj; run it with sudo")]
    NotRoot { euid: u32 },
    #[error("{what} needs the {cap} capability, which this process does not have; run as full root or grant {cap}")]
    MissingCap { cap: &'static str, what: String },
    #[error("--new {name:?} is not a valid cgroup name: use one path component without `/`, `.` or `..`")]
    BadName { name: String },
    #[error("cgroup /{OWNED_PARENT}/{name} already exists; choose another --new name, or remove leftovers with `oomlab cleanup`")]
    NameExists { name: String },
    #[error("{size} plus the {ws} the target already uses is over its limit of {limit}: this will OOM the target; pass --allow-oom if that is what you want")]
    WouldOom {
        size: String,
        ws: String,
        limit: String,
    },
    #[error("{size} is more than the node can spare: MemAvailable is {avail} and oomlab keeps 5% of RAM ({reserve}) in reserve, since a node-wide OOM hurts every process on it; use a smaller size or pass --force")]
    NodeMemory {
        size: String,
        avail: String,
        reserve: String,
    },
    #[error("--kind file needs a directory on a real filesystem, but {dir} is on tmpfs/ramfs (that is shmem, use --kind shmem); pick another with --file-dir")]
    FileDirInMemory { dir: String },
    #[error("--file-dir {dir}: {reason}")]
    FileDir { dir: String, reason: String },
    #[error("{what} must be above zero")]
    ZeroDuration { what: &'static str },
    #[error("cannot read {file}: {reason}")]
    Host { file: &'static str, reason: String },
    #[error("{0}; pass --allow-group-kill (allow_group_kill = true in an experiment) if that is what you want")]
    GroupKill(String),
}

/// How much to hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// This many bytes in total across the workers.
    Size(u64),
    /// Keep the target's working set at this level.
    WorkingSet(u64),
    /// Hold a PSI level (`inject::pressure`); no byte count.
    Pressure(PressureGoal),
}

impl Goal {
    /// The bytes asked for (0 for a pressure level).
    pub fn bytes(self) -> u64 {
        match self {
            Goal::Size(b) | Goal::WorkingSet(b) => b,
            Goal::Pressure(_) => 0,
        }
    }
}

/// What happens when a worker dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOom {
    /// Stop the run, release everything, exit 3.
    #[default]
    Stop,
    /// Start a new worker in its place, with backoff; respawns are counted.
    Respawn,
    /// Carry on with the survivors.
    Continue,
}

/// The target: an existing cgroup, or a scratch one to create.
#[derive(Debug, Clone)]
pub enum Where {
    Existing(MemCgroup),
    New { name: String, limit: u64 },
}

/// A request as the command line gives it (sizes not yet resolved against the target).
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Option<MemCgroup>,
    pub new: Option<(String, SizeSpec)>,
    pub size: Option<SizeSpec>,
    pub working_set: Option<SizeSpec>,
    /// `--pressure` with its window and `--node-pressure`.
    pub pressure: Option<PressureGoal>,
    pub workers: usize,
    pub pace: Pace,
    pub kind: Kind,
    pub alloc: AllocOptions,
    pub redirty: Option<Duration>,
    pub duration: Option<Duration>,
    pub oom_score_adj: Option<i32>,
    pub on_oom: OnOom,
    pub allow_oom: bool,
    /// Start workers where `memory.oom.group` makes their first OOM kill the whole group.
    pub allow_group_kill: bool,
    pub force: bool,
    pub file_dir: PathBuf,
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Where,
    pub goal: Goal,
    pub workers: usize,
    pub pace: Pace,
    pub kind: Kind,
    pub alloc: AllocOptions,
    pub redirty: Option<Duration>,
    pub duration: Option<Duration>,
    pub oom_score_adj: Option<i32>,
    pub on_oom: OnOom,
    pub file_dir: PathBuf,
}

/// Node memory from /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemory {
    pub total: u64,
    pub available: u64,
}

impl NodeMemory {
    pub fn read() -> Result<Self, InjectError> {
        let m = MemInfo::read().map_err(|e| InjectError::Host {
            file: "/proc/meminfo",
            reason: e.to_string(),
        })?;
        Self::from_meminfo(m).ok_or(InjectError::Host {
            file: "/proc/meminfo",
            reason: "no MemTotal/MemAvailable lines".into(),
        })
    }

    pub fn from_meminfo(m: MemInfo) -> Option<Self> {
        Some(NodeMemory {
            total: m.total_kb?.saturating_mul(1024),
            available: m.available_kb?.saturating_mul(1024),
        })
    }

    /// What may be injected without risking a node-wide OOM: MemAvailable minus 5% of RAM.
    pub fn spare(&self) -> u64 {
        self.available.saturating_sub(self.total / 20)
    }
}

/// Capabilities in the effective set.
fn has_cap(cap: caps::Capability) -> bool {
    caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false)
}

fn self_oom_score_adj() -> i32 {
    fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The lowest adj oomlab may give a process: -1000 with CAP_SYS_RESOURCE, else its own (an adj
/// may only be lowered with that capability).
pub(crate) fn lowest_oom_score_adj() -> i32 {
    if has_cap(caps::Capability::CAP_SYS_RESOURCE) {
        -1000
    } else {
        self_oom_score_adj()
    }
}

/// Checks the request against the node and the target; creates nothing.
pub fn check(hier: &Hierarchy, req: &Request, node: NodeMemory) -> Result<Plan, InjectError> {
    check_privileges(req)?;
    check_durations(req)?;
    if let Some(p) = req.pressure {
        if req.size.is_some() {
            return Err(PressureError::WithSize("size").into());
        }
        if req.working_set.is_some() {
            return Err(PressureError::WithSize("working-set").into());
        }
        pressure::check(hier.memory_version, p.node, p.window)?;
    }
    let (target, limit, ws_now) = resolve_target(hier, req, node)?;
    check_group_kill(req, &target)?;
    let goal = match (&req.size, &req.working_set, req.pressure) {
        (Some(s), None, None) => Goal::Size(s.resolve(limit)?),
        (None, Some(w), None) => Goal::WorkingSet(w.resolve(limit)?),
        (None, None, Some(p)) => Goal::Pressure(p),
        _ => return Err(InjectError::NoGoal),
    };
    match (goal, limit) {
        (Goal::Pressure(p), None) => {
            let cgroup = match &target {
                Where::Existing(cg) => cg.path(),
                Where::New { name, .. } => name.clone(),
            };
            return Err(if p.node {
                PressureError::NodeNoLimit { cgroup }
            } else {
                PressureError::NoLimit { cgroup }
            }
            .into());
        }
        // The squeeze may hold up to the limit: that must fit in what the node can spare.
        (Goal::Pressure(_), Some(l)) => check_room(req, node, Goal::WorkingSet(l), Some(l), 0)?,
        _ => check_room(req, node, goal, limit, ws_now)?,
    }
    if req.alloc.mlock && !has_cap(caps::Capability::CAP_IPC_LOCK) {
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
            .unwrap_or((0, 0));
        if goal.bytes() / req.workers.max(1) as u64 > soft {
            return Err(InjectError::MissingCap {
                cap: "CAP_IPC_LOCK",
                what: format!("--mlock of more than RLIMIT_MEMLOCK ({})", human(soft)),
            });
        }
    }
    if req.kind == Kind::File {
        check_file_dir(&req.file_dir, goal.bytes())?;
    }
    if let (Goal::Pressure(_), Some(l)) = (goal, limit) {
        // The cycler's page-cache set, at most half the limit.
        check_file_dir(&req.file_dir, l / 2)?;
    }
    Ok(Plan {
        target,
        goal,
        workers: req.workers.max(1),
        pace: req.pace,
        kind: req.kind,
        alloc: req.alloc,
        redirty: req.redirty,
        duration: req.duration,
        oom_score_adj: req.oom_score_adj,
        on_oom: req.on_oom,
        file_dir: req.file_dir.clone(),
    })
}

/// Root, and CAP_SYS_RESOURCE for an adj below oomlab's own.
fn check_privileges(req: &Request) -> Result<(), InjectError> {
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(InjectError::NotRoot { euid });
    }
    if let Some(adj) = req.oom_score_adj {
        if adj < self_oom_score_adj() && !has_cap(caps::Capability::CAP_SYS_RESOURCE) {
            return Err(InjectError::MissingCap {
                cap: "CAP_SYS_RESOURCE",
                what: format!("--oom-score-adj {adj} (lower than oomlab's own)"),
            });
        }
    }
    Ok(())
}

fn check_durations(req: &Request) -> Result<(), InjectError> {
    if req.redirty.is_some_and(|d| d.is_zero()) {
        return Err(InjectError::ZeroDuration { what: "--redirty" });
    }
    if req.duration.is_some_and(|d| d.is_zero()) {
        return Err(InjectError::ZeroDuration { what: "--duration" });
    }
    if let Pace::Ramp(d) = req.pace {
        if d.is_zero() {
            return Err(InjectError::ZeroDuration { what: "--ramp" });
        }
    }
    Ok(())
}

/// The target, its limit, and the working set already in it (none in a cgroup yet to create).
fn resolve_target(
    hier: &Hierarchy,
    req: &Request,
    node: NodeMemory,
) -> Result<(Where, Option<u64>, u64), InjectError> {
    match (&req.target, &req.new) {
        (Some(cg), None) => {
            let snap = cg.snapshot()?;
            Ok((
                Where::Existing(cg.clone()),
                snap.limit_bytes,
                snap.working_set_bytes,
            ))
        }
        (None, Some((name, limit))) => {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(InjectError::BadName { name: name.clone() });
            }
            if hier.cgroup(format!("{OWNED_PARENT}/{name}")).exists() {
                return Err(InjectError::NameExists { name: name.clone() });
            }
            let limit = limit.resolve(Some(node.total))?;
            Ok((
                Where::New {
                    name: name.clone(),
                    limit,
                },
                Some(limit),
                0,
            ))
        }
        _ => Err(InjectError::NoTarget),
    }
}

/// An existing target where the first worker OOM would be a group kill needs
/// --allow-group-kill. A --new cgroup is made by oomlab with a limit of its own, so it is its own
/// OOM domain and has `memory.oom.group=0`.
fn check_group_kill(req: &Request, target: &Where) -> Result<(), InjectError> {
    match target {
        Where::Existing(cg) => refuse_group_kill(cg, req.allow_group_kill),
        Where::New { .. } => Ok(()),
    }
}

/// Refuses `cg` when a worker's OOM there would kill a whole `memory.oom.group` (see
/// [`oom_group::find`]), unless `allowed`.
pub fn refuse_group_kill(cg: &MemCgroup, allowed: bool) -> Result<(), InjectError> {
    match oom_group::find(cg)? {
        Some(g) if !allowed => Err(InjectError::GroupKill(g.describe())),
        _ => Ok(()),
    }
}

/// The goal fits under the target's limit (or --allow-oom) and in what the node can spare (or
/// --force).
fn check_room(
    req: &Request,
    node: NodeMemory,
    goal: Goal,
    limit: Option<u64>,
    ws_now: u64,
) -> Result<(), InjectError> {
    if let Some(limit) = limit {
        let over = match goal {
            Goal::Size(b) => b.saturating_add(ws_now) > limit,
            Goal::WorkingSet(b) => b > limit,
            Goal::Pressure(_) => false,
        };
        if over && !req.allow_oom {
            return Err(InjectError::WouldOom {
                size: human(goal.bytes()),
                ws: human(if matches!(goal, Goal::Size(_)) {
                    ws_now
                } else {
                    0
                }),
                limit: human(limit),
            });
        }
    }
    // What the injector itself could add to the node: never more than the goal, nor (with a
    // limit and --allow-oom) more than the limit lets through.
    let node_need = limit.map_or(goal.bytes(), |l| goal.bytes().min(l));
    if node_need > node.spare() && !req.force {
        return Err(InjectError::NodeMemory {
            size: human(goal.bytes()),
            avail: human(node.available),
            reserve: human(node.total / 20),
        });
    }
    Ok(())
}

fn check_file_dir(dir: &Path, bytes: u64) -> Result<(), InjectError> {
    let fail = |reason: String| InjectError::FileDir {
        dir: dir.display().to_string(),
        reason,
    };
    if !dir.is_dir() {
        return Err(fail("not a directory".into()));
    }
    if alloc::is_memory_fs(dir).map_err(|e| fail(e.to_string()))? {
        return Err(InjectError::FileDirInMemory {
            dir: dir.display().to_string(),
        });
    }
    let free = alloc::fs_available(dir).map_err(|e| fail(e.to_string()))?;
    if free < bytes + bytes / 20 {
        return Err(fail(format!(
            "only {} free, the file needs {}",
            human(free),
            human(bytes)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        let m = NodeMemory::from_meminfo(MemInfo::parse(text)).expect("parses");
        assert_eq!(m.total, 24_000_000 * 1024);
        assert_eq!(m.available, 20_000_000 * 1024);
        assert_eq!(m.spare(), (20_000_000 - 1_200_000) * 1024);
        assert_eq!(
            NodeMemory::from_meminfo(MemInfo::parse("MemTotal: 5 kB\n")),
            None
        );
    }

    #[test]
    fn tmpfs_is_refused_for_file() {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && alloc::is_memory_fs(shm).unwrap_or(false) {
            assert!(matches!(
                check_file_dir(shm, 1 << 20),
                Err(InjectError::FileDirInMemory { .. })
            ));
        }
        assert!(matches!(
            check_file_dir(Path::new("/nonexistent-oomlab"), 1),
            Err(InjectError::FileDir { .. })
        ));
    }
}
