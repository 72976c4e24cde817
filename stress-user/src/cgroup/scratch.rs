//! Scratch memory cgroups that oomlab creates under a parent it owns and removes when done,
//! killing only the processes inside them (which oomlab put there).

use std::{
    thread,
    time::{Duration, Instant},
};

use cgroups_rs::{
    hierarchies::{V1, V2},
    memory::MemController,
    Cgroup,
};
use nix::{sys::signal, unistd::Pid};

use super::{CgroupError, Hierarchy, MemCgroup, Version};

/// A cgroup made for one run. Dropping it kills what is left inside and removes it.
#[derive(Debug)]
pub struct ScratchCgroup {
    cgroup: MemCgroup,
    keep: bool,
}

impl ScratchCgroup {
    /// Creates `<mount>/<parent>/<name>` with an optional hard limit. `parent` is a folder oomlab
    /// owns (`oomlab`, or `oomlab-test` in tests); it is created when missing and left in place.
    pub fn create(
        hier: &Hierarchy,
        parent: &str,
        name: &str,
        limit: Option<u64>,
    ) -> Result<Self, CgroupError> {
        let rel = format!("{parent}/{name}");
        let invalid = |reason: &str| CgroupError::Create {
            path: rel.clone(),
            reason: reason.into(),
        };
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(invalid("the name must be one path component, without `/`"));
        }
        let cgroup = hier.cgroup(&rel);
        if cgroup.exists() {
            return Err(CgroupError::Exists {
                path: cgroup.path(),
            });
        }
        let controllers = Some(vec!["memory".to_string()]);
        let created = match hier.memory_version {
            Version::V1 => Cgroup::new_with_specified_controllers(Box::new(V1::new()), &rel, controllers),
            Version::V2 if hier.memory_mount == std::path::Path::new(cgroups_rs::hierarchies::UNIFIED_MOUNTPOINT) => {
                Cgroup::new_with_specified_controllers(Box::new(V2::new()), &rel, controllers)
            }
            Version::V2 => {
                return Err(invalid("cgroup v2 is mounted outside /sys/fs/cgroup; oomlab creates scratch cgroups only there"));
            }
        }
        .map_err(|e| invalid(&e.to_string()))?;
        let scratch = ScratchCgroup {
            cgroup,
            keep: false,
        };
        if let Some(limit) = limit {
            let mem: &MemController = created
                .controller_of()
                .ok_or_else(|| invalid("the memory controller is not attached"))?;
            mem.set_limit(i64::try_from(limit).unwrap_or(i64::MAX))
                .map_err(|e| invalid(&format!("setting the limit to {limit} bytes: {e}")))?;
        }
        Ok(scratch)
    }

    pub fn cgroup(&self) -> &MemCgroup {
        &self.cgroup
    }

    /// Leaves the cgroup in place when dropped (for `--keep`-style debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Kills every process inside (all of them were put there by oomlab) and removes the cgroup.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.cgroup.procs().unwrap_or_default();
            for pid in &procs {
                let _ = signal::kill(Pid::from_raw(*pid), signal::Signal::SIGKILL);
            }
            match std::fs::remove_dir(self.cgroup.dir()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(CgroupError::Write {
                        file: self.cgroup.dir().display().to_string(),
                        value: "rmdir".into(),
                        source: e,
                    });
                }
                // EBUSY while killed tasks are still exiting.
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = self.remove() {
                log::warn!("leaving scratch cgroup behind: {e}");
            }
        }
    }
}
