//! Scratch memory cgroups that oomlab creates under a parent it owns and removes when done,
//! killing only the processes inside them (which oomlab put there).

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use cgroups_rs::{hierarchies::V1, Cgroup};
use nix::{sys::signal, unistd::Pid};

use super::{CgroupError, Hierarchy, MemCgroup, Version, OWNED_PARENT};

/// A cgroup made for one run. Dropping it kills what is left inside and removes it.
#[derive(Debug)]
pub struct ScratchCgroup {
    cgroup: MemCgroup,
    keep: bool,
    /// The owner record of a cgroup under `oomlab/` (see `create_owned`), removed with it.
    record: Option<PathBuf>,
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
        match hier.memory_version {
            Version::V1 => {
                let controllers = Some(vec!["memory".to_string()]);
                Cgroup::new_with_specified_controllers(Box::new(V1::new()), &rel, controllers)
                    .map_err(|e| invalid(&e.to_string()))?;
            }
            // By hand: cgroups-rs ignores a failure to enable the controller in the parents
            // (the child then silently has no memory.* files) and only works at /sys/fs/cgroup.
            Version::V2 => create_v2(&hier.memory_mount, &rel).map_err(|e| invalid(&e))?,
        }
        let scratch = ScratchCgroup {
            cgroup,
            keep: false,
            record: None,
        };
        if let Some(limit) = limit {
            let file = match hier.memory_version {
                Version::V1 => "memory.limit_in_bytes",
                Version::V2 => "memory.max",
            };
            scratch
                .cgroup
                .write(file, &limit.to_string())
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
            match fs::remove_dir(self.cgroup.dir()) {
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

/// Creates `rel` below a cgroup v2 mount, enabling the memory controller on the way down: a v2
/// cgroup only has `memory.*` files when its parent lists `memory` in `cgroup.subtree_control`.
/// Existing ancestors are kept; the last component must be new.
fn create_v2(mount: &Path, rel: &str) -> Result<(), String> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut dir = mount.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        enable_memory_v2(&dir)?;
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && i + 1 < parts.len() => {}
            Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
        }
    }
    Ok(())
}

/// Adds `memory` to a v2 cgroup's `cgroup.subtree_control` unless it is already there.
fn enable_memory_v2(dir: &Path) -> Result<(), String> {
    let file = dir.join("cgroup.subtree_control");
    let current =
        fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if subtree_has_memory(&current) {
        return Ok(());
    }
    fs::write(&file, "+memory").map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EBUSY) => " (cgroup v2 refuses while processes sit directly in that cgroup; move them to a child)",
            Some(libc::ENOENT) => " (the memory controller is not available there: see its cgroup.controllers)",
            _ => "",
        };
        format!("cannot enable the memory controller in {}: {e}{hint}", file.display())
    })
}

fn subtree_has_memory(subtree_control: &str) -> bool {
    subtree_control.split_whitespace().any(|c| c == "memory")
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        if !self.keep {
            match self.remove() {
                Ok(()) => {
                    if let Some(r) = &self.record {
                        let _ = fs::remove_file(r);
                    }
                }
                Err(e) => log::warn!("leaving scratch cgroup behind: {e}"),
            }
        }
    }
}

/// Where oomlab notes which process owns each scratch cgroup under `oomlab/`, so the next run can
/// tell a leftover (its owner is gone: killed before it could clean up) from one in use.
pub const RECORD_DIR: &str = "/run/oomlab/scratch";

/// A process identity that survives pid reuse: pid plus its start time (field 22 of stat).
fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn record_path(name: &str) -> PathBuf {
    Path::new(RECORD_DIR).join(name)
}

impl ScratchCgroup {
    /// Creates `oomlab/<name>` and records this process as its owner, so that if it dies
    /// without cleaning up, the next run (or `oomlab cleanup`) removes the cgroup.
    pub fn create_owned(
        hier: &Hierarchy,
        name: &str,
        limit: Option<u64>,
    ) -> Result<Self, CgroupError> {
        let mut scratch = ScratchCgroup::create(hier, OWNED_PARENT, name, limit)?;
        let pid = std::process::id() as i32;
        let record = record_path(name);
        let text = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
        fs::create_dir_all(RECORD_DIR)
            .and_then(|()| fs::write(&record, text))
            .map_err(|source| CgroupError::Write {
                file: record.display().to_string(),
                value: "owner record".into(),
                source,
            })?;
        scratch.record = Some(record);
        Ok(scratch)
    }
}

/// A scratch cgroup under `oomlab/` whose owner is gone.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub cgroup: MemCgroup,
    /// The agent that created it (from its record), `None` when there is no record.
    pub owner: Option<i32>,
    /// Processes still inside.
    pub procs: usize,
}

/// Scratch cgroups under `oomlab/` whose recorded owner is no longer running. With `unowned`,
/// also those without a record (made by something else, or by an older oomlab) that hold no
/// process. Cgroups whose owner is alive are never listed.
pub fn find_leftovers(hier: &Hierarchy, unowned: bool) -> Vec<Leftover> {
    let parent = hier.memory_mount.join(OWNED_PARENT);
    let Ok(entries) = fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let cgroup = hier.cgroup(format!("{OWNED_PARENT}/{name}"));
        let procs = cgroup.procs().map_or(0, |p| p.len());
        let record = fs::read_to_string(record_path(&name)).ok();
        let owner = record.as_deref().and_then(|r| {
            let mut it = r.split_whitespace();
            Some((
                it.next()?.parse::<i32>().ok()?,
                it.next()?.parse::<u64>().ok()?,
            ))
        });
        match owner {
            Some((pid, started)) => {
                let alive = start_time(pid).is_some_and(|s| s == started || started == 0);
                if !alive {
                    out.push(Leftover {
                        cgroup,
                        owner: Some(pid),
                        procs,
                    });
                }
            }
            None if unowned && procs == 0 => out.push(Leftover {
                cgroup,
                owner: None,
                procs,
            }),
            None => {}
        }
    }
    out
}

/// Kills what is left inside a leftover (only oomlab workers end up there) and removes it and
/// its record.
pub fn remove_leftover(leftover: &Leftover) -> Result<(), CgroupError> {
    let name = leftover
        .cgroup
        .rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = ScratchCgroup {
        cgroup: leftover.cgroup.clone(),
        keep: true,
        record: None,
    };
    scratch.remove()?;
    let _ = fs::remove_file(record_path(&name));
    Ok(())
}

#[cfg(test)]
mod v2_tests {
    use std::{fs, path::PathBuf};

    use super::*;

    /// A directory shaped like a v2 mount: cgroupfs creates `cgroup.subtree_control` in every
    /// new cgroup, so the fixture pre-creates the one of the existing `oomlab-test` parent.
    fn fixture(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("oomlab-v2-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("oomlab-test")).expect("fixture dirs");
        fs::write(root.join("cgroup.subtree_control"), "cpu io\n").expect("root file");
        fs::write(
            root.join("oomlab-test/cgroup.subtree_control"),
            "cpu memory\n",
        )
        .expect("parent file");
        root
    }

    #[test]
    fn v2_creation_enables_memory_only_where_missing() {
        let root = fixture("create");
        create_v2(&root, "oomlab-test/x-1").expect("created");
        assert!(root.join("oomlab-test/x-1").is_dir());
        // The root lacked memory and got a `+memory` write; the parent already had it.
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).expect("root"),
            "+memory"
        );
        assert_eq!(
            fs::read_to_string(root.join("oomlab-test/cgroup.subtree_control")).expect("parent"),
            "cpu memory\n"
        );
        // The leaf must be new; a missing subtree_control (not a cgroup) is reported.
        let again = create_v2(&root, "oomlab-test/x-1").expect_err("exists");
        assert!(again.contains("mkdir"), "{again}");
        let nested = create_v2(&root, "oomlab-test/x-1/y").expect_err("x-1 is no cgroupfs dir");
        assert!(nested.contains("x-1/cgroup.subtree_control"), "{nested}");
        fs::remove_dir_all(&root).expect("fixture removed");
    }

    #[test]
    fn subtree_control_parsing() {
        assert!(subtree_has_memory("cpuset cpu io memory pids\n"));
        assert!(subtree_has_memory("memory\n"));
        assert!(!subtree_has_memory("cpu memoryx io\n"));
        assert!(!subtree_has_memory(""));
    }
}
