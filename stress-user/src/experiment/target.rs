//! Where a run happens: the checks before it (root, the host's cgroup hierarchy, scratch cgroups
//! a dead oomlab left), and its target cgroup — a scratch one made for the run, or an existing
//! cgroup, pod, container or process.

use super::{
    runner::RunError,
    spec::{Experiment, Target},
};
use crate::cgroup::{
    find_leftovers, remove_leftover,
    target::{self, TargetArgs},
    Hierarchy, MemCgroup, ScratchCgroup,
};

/// Root, the host's cgroup hierarchy, and no scratch cgroup left by a dead oomlab.
pub(super) fn preflight(exp: &Experiment) -> Result<Hierarchy, RunError> {
    let hier = Hierarchy::detect().map_err(|e| RunError::Input(e.to_string()))?;
    exp.check_host(hier.memory_version)?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(RunError::Input(format!(
            "oomlab run must run as root (euid is {euid}): it creates cgroups, loads eBPF programs and reads /dev/kmsg; run it with sudo"
        )));
    }
    for l in find_leftovers(&hier, false) {
        if remove_leftover(&l).is_ok() {
            eprintln!(
                "oomlab run: removed leftover scratch cgroup {} (its oomlab is gone)",
                l.cgroup.path()
            );
        }
    }
    Ok(hier)
}

/// The target cgroup for the run, and the scratch guard that removes it.
pub(super) fn open_target(
    exp: &Experiment,
    hier: &Hierarchy,
) -> Result<(MemCgroup, Option<ScratchCgroup>), RunError> {
    match &exp.target {
        Target::Scratch {
            limit,
            memory_high,
            oom_group,
        } => {
            let name = format!("run-{}", std::process::id());
            let scratch = ScratchCgroup::create_owned(hier, &name, *limit)?;
            let cg = scratch.cgroup().clone();
            if let Some(h) = memory_high {
                cg.write("memory.high", &h.value.to_string())?;
            }
            if let Some(g) = oom_group {
                cg.write("memory.oom.group", if g.value { "1" } else { "0" })?;
            }
            Ok((cg, Some(scratch)))
        }
        other => {
            let args = match other {
                Target::Cgroup(p) => TargetArgs {
                    cgroup: Some(p.clone()),
                    ..Default::default()
                },
                Target::Pod(p) => TargetArgs {
                    pod: Some(p.clone()),
                    ..Default::default()
                },
                Target::Container(c) => TargetArgs {
                    container: Some(c.clone()),
                    ..Default::default()
                },
                Target::Pid(p) => TargetArgs {
                    pid: Some(*p),
                    ..Default::default()
                },
                Target::Scratch { .. } => unreachable!("matched above"),
            };
            let runtimes = crate::runtime::Runtimes::new(&exp.runtime, Some(hier));
            let cg = target::resolve_with(hier, &args, Some(&runtimes))
                .map_err(|e| RunError::Input(e.to_string()))?;
            target::check_writable(&cg, false).map_err(|e| RunError::Input(e.to_string()))?;
            Ok((cg, None))
        }
    }
}
