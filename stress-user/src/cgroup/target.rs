//! Which cgroup a command works on: `--cgroup PATH`, `--pid N`, `--pod UID` or `--container ID`,
//! resolved against the node's memory controller.

use super::{CgroupError, Hierarchy, MemCgroup};

/// Target selection shared by `inject` and `trace` (at most one of them).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// A cgroup path relative to the memory controller's mount (`/kubepods/burstable/pod…/…`)
    /// or absolute under it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// The memory cgroup of this process.
    #[arg(long)]
    pub pid: Option<i32>,
    /// A pod by UID (kubelet naming, cgroupfs or systemd driver).
    #[arg(long)]
    pub pod: Option<String>,
    /// A container by id or unique id prefix (kubelet naming, cgroupfs or systemd driver).
    #[arg(long)]
    pub container: Option<String>,
}

impl TargetArgs {
    pub fn is_empty(&self) -> bool {
        self.cgroup.is_none()
            && self.pid.is_none()
            && self.pod.is_none()
            && self.container.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("no target given: use one of --cgroup, --pid, --pod, --container")]
    None,
    #[error("{0}")]
    Unsupported(String),
}

/// Resolves the target to a memory cgroup that exists.
pub fn resolve(hier: &Hierarchy, args: &TargetArgs) -> Result<MemCgroup, TargetError> {
    if let Some(path) = &args.cgroup {
        return Ok(hier.resolve(path)?);
    }
    if let Some(pid) = args.pid {
        return Ok(hier.of_pid(pid)?);
    }
    if args.pod.is_some() || args.container.is_some() {
        return Err(TargetError::Unsupported(
            "--pod/--container resolution is not implemented yet".into(),
        ));
    }
    Err(TargetError::None)
}
