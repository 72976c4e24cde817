//! Memory cgroups: where the memory controller lives (v1, v2 or hybrid), reading a cgroup's own
//! counters — the numbers that matter, not `free`'s — and scratch cgroups oomlab owns.

pub mod kube;
pub mod oom_group;
pub mod pressure;
mod scratch;
pub mod target;
#[cfg(test)]
pub(crate) mod temp_tree;

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Component, Path, PathBuf},
};

pub use pressure::{psi_state, Pressure, PressureCounters, PsiScope, PsiState, PsiTotals};
pub use scratch::{
    find_leftovers, remove_leftover, Leftover, Owner, Ownership, ScratchCgroup, GRACE, RECORD_DIR,
};

/// Default mount points, used when `/proc/self/mountinfo` cannot be read.
const PROC_MOUNTINFO: &str = "/proc/self/mountinfo";

/// The parent under which oomlab creates its scratch cgroups; nothing else is ever created.
pub const OWNED_PARENT: &str = "oomlab";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no memory cgroup controller found: neither a cgroup v1 `memory` mount nor a cgroup v2 mount listing `memory` in cgroup.controllers (see /proc/self/mountinfo)")]
    NoMemoryController,
    #[error("cgroup {path} does not exist under {mount}")]
    NotFound { path: String, mount: String },
    #[error("cgroup path {path:?} leaves the memory controller's mount {mount} (`..` or a symlink); give a path below it")]
    Escapes { path: String, mount: String },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {file}: {source}")]
    Write {
        file: String,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {file}: {text:?}")]
    Parse { file: String, text: String },
    #[error("cannot create cgroup {path}: {reason}")]
    Create { path: String, reason: String },
    #[error(
        "cgroup {path} already exists; choose another name or remove it with `oomlab cleanup`"
    )]
    Exists { path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

/// How the node mounts cgroups as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only v1 hierarchies.
    V1,
    /// Only the unified v2 hierarchy.
    V2,
    /// v1 controllers plus a v2 mount (systemd's "hybrid"): controllers bound to v1 are not
    /// available in v2.
    Hybrid,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::V1 => "v1",
            Mode::V2 => "v2",
            Mode::Hybrid => "hybrid",
        })
    }
}

/// Where cgroups are mounted on this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hierarchy {
    pub mode: Mode,
    /// The v2 mount, if any.
    pub unified: Option<PathBuf>,
    /// The memory controller: its version and mount point.
    pub memory_version: Version,
    pub memory_mount: PathBuf,
}

impl Hierarchy {
    pub fn detect() -> Result<Self, CgroupError> {
        let text = fs::read_to_string(PROC_MOUNTINFO).map_err(|source| CgroupError::Read {
            file: PROC_MOUNTINFO.into(),
            source,
        })?;
        Self::from_mountinfo(&text, |mount| {
            fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// `controllers` reads a v2 mount's `cgroup.controllers` (a parameter so tests need no root).
    pub fn from_mountinfo(
        text: &str,
        controllers: impl Fn(&Path) -> String,
    ) -> Result<Self, CgroupError> {
        let mut v1_memory = None;
        let mut any_v1 = false;
        let mut unified = None;
        for line in text.lines() {
            // 36 25 0:31 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut right = right.split_whitespace();
            let fstype = right.next().unwrap_or_default();
            let _source = right.next();
            let super_opts = right.next().unwrap_or_default();
            let Some(mount_point) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape_mount(mount_point));
            match fstype {
                "cgroup" => {
                    any_v1 = true;
                    if super_opts.split(',').any(|o| o == "memory") {
                        v1_memory = Some(mount_point);
                    }
                }
                "cgroup2" if unified.is_none() => unified = Some(mount_point),
                _ => {}
            }
        }
        let mode = match (any_v1, unified.is_some()) {
            (true, true) => Mode::Hybrid,
            (true, false) => Mode::V1,
            _ => Mode::V2,
        };
        if let Some(mount) = v1_memory {
            return Ok(Hierarchy {
                mode,
                unified,
                memory_version: Version::V1,
                memory_mount: mount,
            });
        }
        if let Some(mount) = &unified {
            if controllers(mount).split_whitespace().any(|c| c == "memory") {
                return Ok(Hierarchy {
                    mode,
                    unified: unified.clone(),
                    memory_version: Version::V2,
                    memory_mount: mount.clone(),
                });
            }
        }
        Err(CgroupError::NoMemoryController)
    }

    /// Resolves a user-given path — relative to the memory mount (`/kubepods/burstable/pod…`) or
    /// absolute under it — refusing anything that escapes the mount.
    pub fn resolve(&self, path: &str) -> Result<MemCgroup, CgroupError> {
        let mount = &self.memory_mount;
        let escapes = || CgroupError::Escapes {
            path: path.into(),
            mount: mount.display().to_string(),
        };
        let given = Path::new(path);
        let rel = given.strip_prefix(mount).unwrap_or(given);
        if rel.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(escapes());
        }
        let rel: PathBuf = rel
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let dir = mount.join(&rel);
        if !dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: format!("/{}", rel.display()),
                mount: mount.display().to_string(),
            });
        }
        // A symlink inside the path could point anywhere: compare canonical forms.
        let real = dir.canonicalize().map_err(|_| escapes())?;
        let real_mount = mount.canonicalize().map_err(|_| escapes())?;
        if !real.starts_with(&real_mount) || real != real_mount.join(&rel) {
            return Err(escapes());
        }
        Ok(self.cgroup(&rel))
    }

    /// The memory cgroup of a process, from `/proc/PID/cgroup`.
    pub fn of_pid(&self, pid: i32) -> Result<MemCgroup, CgroupError> {
        let file = format!("/proc/{pid}/cgroup");
        let text = fs::read_to_string(&file).map_err(|source| CgroupError::Read {
            file: file.clone(),
            source,
        })?;
        let rel = cgroup_of(&text, self.memory_version).ok_or(CgroupError::Parse {
            file,
            text: text.clone(),
        })?;
        self.resolve(&rel)
    }

    /// A handle on `rel` (relative to the memory mount), without checking it exists.
    pub fn cgroup(&self, rel: impl AsRef<Path>) -> MemCgroup {
        let rel = rel.as_ref();
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        MemCgroup {
            version: self.memory_version,
            mount: self.memory_mount.clone(),
            rel: rel.to_path_buf(),
        }
    }
}

/// mountinfo escapes spaces and a few other bytes as `\040`-style octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(Ok(v)) = s.get(i + 1..i + 4).map(|o| u8::from_str_radix(o, 8)) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// The memory cgroup path (relative to the controller's mount) in a `/proc/PID/cgroup` text.
pub fn cgroup_of(proc_cgroup: &str, version: Version) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let wanted = match version {
            Version::V1 => controllers.split(',').any(|c| c == "memory"),
            Version::V2 => id == "0" && controllers.is_empty(),
        };
        wanted.then(|| path.to_string())
    })
}

/// The memory cgroup of a process, relative to the controller's mount (`/a/b`), from
/// `/proc/PID/cgroup`; `None` once the process is gone, or while it exits on cgroup v1.
///
/// v1's `/proc/PID/cgroup` names `/` for every hierarchy once a task is exiting
/// (`proc_cgroup_show` prints the path only without `PF_EXITING`), so an OOM victim read a
/// moment after its SIGKILL would be taken for a task of the root cgroup. A v1 `/` is kept
/// only when the task's own flags say it is not exiting.
pub fn cgroup_of_pid(pid: u32, version: Version) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup_of(&text, version)?;
    if version == Version::V1 && path == "/" && !alive_not_exiting(pid) {
        return None;
    }
    Some(path)
}

/// `PF_EXITING` in include/linux/sched.h.
const PF_EXITING: u64 = 0x4;

/// The task exists and has not begun to exit (flags, the 9th field of `/proc/PID/stat`).
fn alive_not_exiting(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_flags(&s))
        .is_some_and(|f| f & PF_EXITING == 0)
}

/// The flags field of a `/proc/PID/stat` line; the comm before it may hold spaces and `)`.
fn stat_flags(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(6)?.parse().ok()
}

/// One memory cgroup, v1 or v2, with the counters the kernel keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemCgroup {
    pub version: Version,
    pub mount: PathBuf,
    /// Relative to `mount`; empty for the root.
    pub rel: PathBuf,
}

/// A consistent-enough read of a cgroup's memory numbers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemSnapshot {
    pub usage_bytes: u64,
    /// usage − inactive_file: what the kubelet evicts on.
    pub working_set_bytes: u64,
    pub inactive_file_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub oom_kills: u64,
}

/// v1 reports "no limit" as PAGE_COUNTER_MAX pages; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

impl MemCgroup {
    pub fn dir(&self) -> PathBuf {
        self.mount.join(&self.rel)
    }

    /// `/a/b` form, as the kernel prints cgroup paths.
    pub fn path(&self) -> String {
        format!("/{}", self.rel.display())
    }

    pub fn exists(&self) -> bool {
        self.dir().is_dir()
    }

    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir().join(file);
        fs::read_to_string(&path).map_err(|source| CgroupError::Read {
            file: path.display().to_string(),
            source,
        })
    }

    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir().join(file);
        fs::write(&path, value).map_err(|source| CgroupError::Write {
            file: path.display().to_string(),
            value: value.into(),
            source,
        })
    }

    fn read_u64(&self, file: &str) -> Result<u64, CgroupError> {
        let text = self.read(file)?;
        text.trim().parse().map_err(|_| CgroupError::Parse {
            file: self.dir().join(file).display().to_string(),
            text,
        })
    }

    /// Bytes charged to the cgroup (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub fn usage(&self) -> Result<u64, CgroupError> {
        match self.version {
            Version::V1 => self.read_u64("memory.usage_in_bytes"),
            Version::V2 => self.read_u64("memory.current"),
        }
    }

    /// The hard limit, `None` when unlimited (v1 `memory.limit_in_bytes`, v2 `memory.max`).
    pub fn limit(&self) -> Result<Option<u64>, CgroupError> {
        match self.version {
            Version::V1 => {
                Ok(Some(self.read_u64("memory.limit_in_bytes")?).filter(|&l| l < V1_UNLIMITED))
            }
            Version::V2 => {
                let text = self.read("memory.max")?;
                if text.trim() == "max" {
                    Ok(None)
                } else {
                    text.trim()
                        .parse()
                        .map(Some)
                        .map_err(|_| CgroupError::Parse {
                            file: self.dir().join("memory.max").display().to_string(),
                            text,
                        })
                }
            }
        }
    }

    /// `memory.stat` as key → value.
    pub fn stat(&self) -> Result<BTreeMap<String, u64>, CgroupError> {
        Ok(parse_flat_keyed(&self.read("memory.stat")?))
    }

    /// Inactive page cache, hierarchical on v1 (`total_inactive_file`, what the kubelet uses).
    pub fn inactive_file(&self) -> Result<u64, CgroupError> {
        let stat = self.stat()?;
        let key = match self.version {
            Version::V1 => "total_inactive_file",
            Version::V2 => "inactive_file",
        };
        Ok(stat.get(key).copied().unwrap_or(0))
    }

    /// OOM kills in this cgroup (v1 `memory.oom_control`, v2 `memory.events` `oom_kill`).
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        Ok(parse_flat_keyed(&self.read(file)?)
            .get("oom_kill")
            .copied()
            .unwrap_or(0))
    }

    pub fn snapshot(&self) -> Result<MemSnapshot, CgroupError> {
        let usage_bytes = self.usage()?;
        let inactive_file_bytes = self.inactive_file()?;
        Ok(MemSnapshot {
            usage_bytes,
            working_set_bytes: usage_bytes.saturating_sub(inactive_file_bytes),
            inactive_file_bytes,
            limit_bytes: self.limit()?,
            oom_kills: self.oom_kills()?,
        })
    }

    /// Processes (tgids) directly in this cgroup.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Moves a process into this cgroup (0 = the calling process).
    pub fn add_proc(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }
}

/// `key value` lines (memory.stat, memory.events, memory.oom_control).
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_flags_after_a_hostile_comm() {
        // A comm of spaces and parentheses; flags are the 9th field.
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0";
        assert_eq!(stat_flags(stat), Some(4_194_560));
        assert_eq!(stat_flags("4242 (x) R 1"), None, "cut short");
        assert_eq!(stat_flags("garbage"), None);
        let me = fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(stat_flags(&me).map(|f| f & PF_EXITING), Some(0));
        assert!(alive_not_exiting(std::process::id()));
        assert!(!alive_not_exiting(u32::MAX - 1), "no such task");
    }

    #[test]
    fn an_exiting_task_is_in_no_v1_cgroup() {
        let mine = fs::read_to_string("/proc/self/cgroup").unwrap();
        if cgroup_of(&mine, Version::V1).is_none() {
            eprintln!("skipped: no v1 memory hierarchy here");
            return;
        }
        // A zombie (exited, not reaped): v1's /proc/PID/cgroup says `/` for it.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let stat = format!("/proc/{pid}/stat");
        let zombie = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            fs::read_to_string(&stat).is_ok_and(|s| s.rsplit_once(") Z").is_some())
        });
        assert!(zombie, "the child exited");
        let raw = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(cgroup_of(&raw, Version::V1).as_deref(), Some("/"), "{raw}");
        assert_eq!(cgroup_of_pid(pid, Version::V1), None, "not the root cgroup");
        let mut child = child;
        child.wait().unwrap();
    }

    const HOST_MOUNTINFO: &str = "\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:23 / /sys/fs/cgroup rw,relatime shared:8 - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
29 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
35 25 0:33 / /sys/fs/cgroup/unified rw,relatime shared:18 - cgroup2 cgroup2 rw
";

    const V2_MOUNTINFO: &str =
        "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn host_is_hybrid_with_memory_on_v1() {
        let h = Hierarchy::from_mountinfo(HOST_MOUNTINFO, |_| String::new()).expect("memory");
        assert_eq!(h.mode, Mode::Hybrid);
        assert_eq!(h.memory_version, Version::V1);
        assert_eq!(h.memory_mount, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h.unified, Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn pure_v2_needs_memory_in_controllers() {
        let h = Hierarchy::from_mountinfo(V2_MOUNTINFO, |_| "cpuset cpu io memory pids\n".into())
            .expect("memory");
        assert_eq!((h.mode, h.memory_version), (Mode::V2, Version::V2));
        assert!(matches!(
            Hierarchy::from_mountinfo(V2_MOUNTINFO, |_| "cpu io\n".into()),
            Err(CgroupError::NoMemoryController)
        ));
    }

    #[test]
    fn proc_cgroup_picks_the_memory_line() {
        let text = "12:pids:/user.slice\n5:memory:/kubepods/burstable/podabc/123\n0::/init.scope\n";
        assert_eq!(
            cgroup_of(text, Version::V1).as_deref(),
            Some("/kubepods/burstable/podabc/123")
        );
        assert_eq!(cgroup_of(text, Version::V2).as_deref(), Some("/init.scope"));
        assert_eq!(cgroup_of("3:cpu:/x\n", Version::V1), None);
    }

    #[test]
    fn flat_keyed_files() {
        let m = parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        assert_eq!(m.get("oom_kill"), Some(&3));
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }
}
