//! Scratch memory cgroups that oomlab creates under a parent it owns and removes when done,
//! killing only the processes inside them (which oomlab put there) as a whole: `cgroup.kill` on
//! v2, a freeze-and-kill loop through the v1 freezer, pidfds where neither is there. Each one
//! under `oomlab/` has an owner record, written before the cgroup exists, so a cleanup can tell a
//! leftover (its owner is gone) from one in use without racing its creation.

use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant, SystemTime},
};

use cgroups_rs::{hierarchies::V1, Cgroup};

use super::{CgroupError, Hierarchy, MemCgroup, Version, OWNED_PARENT};
use crate::process::{self, PidFd};

/// Where the v1 freezer hierarchy is mounted on every distribution that has one.
const FREEZER_MOUNT: &str = "/sys/fs/cgroup/freezer";
/// How long removing a scratch cgroup may take (killed tasks exiting, a freezer settling).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

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
        if !self.cgroup.exists() {
            return Ok(());
        }
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let fail = |value: &str, source: io::Error| CgroupError::Write {
            file: self.cgroup.dir().display().to_string(),
            value: value.into(),
            source,
        };
        match self.cgroup.version {
            // Linux ≥ 5.14: the kernel kills the whole cgroup at once, forks in flight included.
            Version::V2 if self.cgroup.dir().join("cgroup.kill").exists() => {
                fs::write(self.cgroup.dir().join("cgroup.kill"), "1")
                    .map_err(|e| fail("cgroup.kill", e))?;
            }
            Version::V1 if Path::new(FREEZER_MOUNT).join("cgroup.procs").exists() => {
                if let Err(e) = freeze_and_kill(&self.cgroup, Path::new(FREEZER_MOUNT), deadline) {
                    log::info!(
                        "freezing {} failed ({e}); killing its processes one by one",
                        self.cgroup.path()
                    );
                }
            }
            _ => {}
        }
        loop {
            // What is still there (nothing after cgroup.kill or the freezer, unless they
            // failed) is killed through pidfds.
            kill_members(&self.cgroup);
            match fs::remove_dir(self.cgroup.dir()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(fail("rmdir", e)),
                // EBUSY while killed tasks are still exiting.
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// SIGKILLs each process of the cgroup through a pidfd, checked after opening to still be a
/// member (so a pid reused since `cgroup.procs` was read is never hit).
fn kill_members(cg: &MemCgroup) {
    for pid in cg.procs().unwrap_or_default() {
        let Ok(fd) = PidFd::open(pid) else { continue };
        if cg.procs().is_ok_and(|now| now.contains(&pid)) {
            let _ = fd.kill();
        }
    }
}

/// cgroup v1: moves every process of `cg` into a freezer cgroup of the same name (what they
/// fork from then on is born there too), freezes it so nothing can fork or escape, kills them
/// all, thaws it so the kills land, and removes it. Round after round until `cg` is empty.
fn freeze_and_kill(cg: &MemCgroup, freezer_mount: &Path, deadline: Instant) -> io::Result<()> {
    let dir = freezer_mount.join(&cg.rel);
    fs::create_dir_all(&dir)?;
    let result = (|| {
        let state = dir.join("freezer.state");
        loop {
            let members = cg.procs().unwrap_or_default();
            if members.is_empty() || Instant::now() > deadline {
                return Ok(());
            }
            for pid in &members {
                // A pid that exited meanwhile fails with ESRCH; a reused one is not in `cg`
                // and is checked below before it is signalled.
                let _ = fs::write(dir.join("cgroup.procs"), pid.to_string());
            }
            fs::write(&state, "FROZEN")?;
            while fs::read_to_string(&state)?.trim() != "FROZEN" && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            let frozen = read_procs(&dir.join("cgroup.procs"));
            for pid in frozen {
                // Only members of the scratch cgroup went in; a frozen process cannot exit, so
                // its pid cannot be reused between these two reads.
                if cg.procs().is_ok_and(|m| m.contains(&pid)) {
                    if let Ok(fd) = PidFd::open(pid) {
                        let _ = fd.kill();
                    }
                }
            }
            fs::write(&state, "THAWED")?;
            thread::sleep(Duration::from_millis(2));
        }
    })();
    // Empty once the killed tasks have exited; a few tries, then it is left to the next run.
    for _ in 0..250 {
        match fs::remove_dir(&dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                thread::sleep(Duration::from_millis(4));
            }
            _ => break,
        }
    }
    result
}

fn read_procs(file: &Path) -> Vec<i32> {
    fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
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
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && i + 1 < parts.len() => {}
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

/// A cleanup leaves alone every scratch cgroup whose record (or, without one, the cgroup itself)
/// is younger than this: whatever made it may still be setting it up.
pub const GRACE: Duration = Duration::from_secs(1);

/// Where owned scratch cgroups live and where their owner records go: `oomlab/` and
/// [`RECORD_DIR`] for oomlab itself, other places in tests.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// The parent cgroup, relative to the memory controller's mount.
    pub parent: String,
    pub record_dir: PathBuf,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            parent: OWNED_PARENT.into(),
            record_dir: PathBuf::from(RECORD_DIR),
        }
    }
}

/// Who made a scratch cgroup: its pid and start time (an identity no pid reuse repeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub pid: i32,
    pub started: u64,
}

impl Owner {
    /// This process.
    pub fn me() -> Option<Owner> {
        let pid = std::process::id() as i32;
        Some(Owner {
            pid,
            started: process::start_time(pid)?,
        })
    }

    /// A record's text: `<pid> <start time>`.
    pub fn parse(record: &str) -> Option<Owner> {
        let mut it = record.split_whitespace();
        let owner = Owner {
            pid: it.next()?.parse().ok()?,
            started: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(owner)
    }

    fn text(self) -> String {
        format!("{} {}\n", self.pid, self.started)
    }

    /// Still running: a pidfd on the pid, the same start time (a start time of 0, as an older
    /// oomlab wrote when it could not read its own, is not alive).
    pub fn is_alive(self) -> bool {
        process::is_alive(self.pid, self.started)
    }
}

/// Whether a cgroup may be treated as a leftover: its owner is provably gone, and neither its
/// record nor (without a record) the cgroup is younger than [`GRACE`].
fn is_leftover(
    owner: Option<Owner>,
    has_record: bool,
    age: Duration,
    procs: usize,
    unowned: bool,
) -> bool {
    if age < GRACE {
        return false;
    }
    match owner {
        Some(o) => !o.is_alive(),
        // A record that does not parse (or says start time 0) names no live owner either.
        None if has_record => true,
        None => unowned && procs == 0,
    }
}

fn age_of(path: &Path) -> Option<Duration> {
    let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
    Some(
        SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default(),
    )
}

impl Ownership {
    fn record_path(&self, name: &str) -> PathBuf {
        self.record_dir.join(name)
    }

    /// Writes this process's record for `name`, before the cgroup exists: a cleanup then never
    /// sees the cgroup without its live owner. A record of a dead owner is replaced; one of a
    /// live owner means the name is taken.
    fn claim(&self, hier: &Hierarchy, name: &str) -> Result<PathBuf, CgroupError> {
        let record = self.record_path(name);
        let fail = |source: io::Error| CgroupError::Write {
            file: record.display().to_string(),
            value: "owner record".into(),
            source,
        };
        let me =
            Owner::me().ok_or_else(|| fail(io::Error::other("cannot read /proc/self/stat")))?;
        fs::create_dir_all(&self.record_dir).map_err(fail)?;
        for _ in 0..2 {
            match fs::File::options()
                .write(true)
                .create_new(true)
                .open(&record)
            {
                Ok(mut f) => {
                    f.write_all(me.text().as_bytes()).map_err(fail)?;
                    return Ok(record);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let text = fs::read_to_string(&record).unwrap_or_default();
                    if Owner::parse(&text).is_some_and(Owner::is_alive) {
                        return Err(CgroupError::Exists {
                            path: hier.cgroup(format!("{}/{name}", self.parent)).path(),
                        });
                    }
                    // A dead owner's record: the next `create_new` is ours.
                    let _ = fs::remove_file(&record);
                }
                Err(e) => return Err(fail(e)),
            }
        }
        Err(fail(io::Error::from(io::ErrorKind::AlreadyExists)))
    }

    /// Creates `<parent>/<name>` owned by this process: the record first, then the cgroup. If
    /// this process dies without cleaning up, the next run (or `oomlab cleanup`) removes it.
    pub fn create(
        &self,
        hier: &Hierarchy,
        name: &str,
        limit: Option<u64>,
    ) -> Result<ScratchCgroup, CgroupError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            // Checked by `ScratchCgroup::create` too, but before a record is named after it.
            return ScratchCgroup::create(hier, &self.parent, name, limit);
        }
        let record = self.claim(hier, name)?;
        match ScratchCgroup::create(hier, &self.parent, name, limit) {
            Ok(mut scratch) => {
                scratch.record = Some(record);
                Ok(scratch)
            }
            Err(e) => {
                let _ = fs::remove_file(&record);
                Err(e)
            }
        }
    }

    /// Scratch cgroups under the parent whose recorded owner is provably gone. With `unowned`,
    /// also those without a record (made by something else, or by an older oomlab) that hold no
    /// process. Never listed: one whose owner is alive, and one whose record (or, without a
    /// record, the cgroup) is younger than [`GRACE`].
    pub fn find_leftovers(&self, hier: &Hierarchy, unowned: bool) -> Vec<Leftover> {
        let parent = hier.memory_mount.join(&self.parent);
        let Ok(entries) = fs::read_dir(&parent) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let cgroup = hier.cgroup(format!("{}/{name}", self.parent));
            let procs = cgroup.procs().map_or(0, |p| p.len());
            let record = self.record_path(&name);
            let text = fs::read_to_string(&record).ok();
            let owner = text.as_deref().and_then(Owner::parse);
            let age = match &text {
                Some(_) => age_of(&record),
                None => age_of(&cgroup.dir()),
            };
            // Gone meanwhile (removed by its owner): nothing to do.
            let Some(age) = age else { continue };
            if is_leftover(owner, text.is_some(), age, procs, unowned) {
                out.push(Leftover {
                    cgroup,
                    owner: owner.map(|o| o.pid),
                    procs,
                    record: text.is_some().then_some(record),
                });
            }
        }
        out
    }
}

impl ScratchCgroup {
    /// Creates `oomlab/<name>` owned by this process (see [`Ownership::create`]).
    pub fn create_owned(
        hier: &Hierarchy,
        name: &str,
        limit: Option<u64>,
    ) -> Result<Self, CgroupError> {
        Ownership::default().create(hier, name, limit)
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
    /// Its owner record, removed with it.
    pub record: Option<PathBuf>,
}

/// Scratch cgroups under `oomlab/` whose recorded owner is gone (see
/// [`Ownership::find_leftovers`]).
pub fn find_leftovers(hier: &Hierarchy, unowned: bool) -> Vec<Leftover> {
    Ownership::default().find_leftovers(hier, unowned)
}

/// Kills what is left inside a leftover (only oomlab workers end up there) and removes it and
/// its record.
pub fn remove_leftover(leftover: &Leftover) -> Result<(), CgroupError> {
    let scratch = ScratchCgroup {
        cgroup: leftover.cgroup.clone(),
        keep: true,
        record: None,
    };
    scratch.remove()?;
    if let Some(r) = &leftover.record {
        let _ = fs::remove_file(r);
    }
    Ok(())
}

#[cfg(test)]
mod ownership_tests {
    use super::*;

    #[test]
    fn records_parse_strictly() {
        assert_eq!(
            Owner::parse("4242 98765\n"),
            Some(Owner {
                pid: 4242,
                started: 98765
            })
        );
        assert_eq!(Owner::parse("4242"), None);
        assert_eq!(Owner::parse("4242 x"), None);
        assert_eq!(Owner::parse("4242 1 2"), None);
        assert_eq!(Owner::parse(""), None);
        let me = Owner::me().expect("own identity");
        assert_eq!(Owner::parse(&me.text()), Some(me));
    }

    #[test]
    fn liveness_needs_the_same_start_time() {
        let me = Owner::me().expect("own identity");
        assert!(me.is_alive());
        // The pid reused by another process: another start time.
        assert!(!Owner {
            started: me.started + 1,
            ..me
        }
        .is_alive());
        // What older versions wrote when they could not read their start time.
        assert!(!Owner { started: 0, ..me }.is_alive());
    }

    #[test]
    fn leftovers_need_a_gone_owner_and_an_old_record() {
        let old = GRACE * 3;
        let me = Owner::me().expect("own identity");
        let dead = Owner { started: 0, ..me };
        // Owner alive: never, however old.
        assert!(!is_leftover(Some(me), true, old, 0, true));
        // Owner gone, record old: yes; record fresh: not yet.
        assert!(is_leftover(Some(dead), true, old, 3, false));
        assert!(!is_leftover(Some(dead), true, GRACE / 2, 0, true));
        // A record that names nobody.
        assert!(is_leftover(None, true, old, 0, false));
        // No record: only with `unowned`, only empty, only old.
        assert!(!is_leftover(None, false, old, 0, false));
        assert!(is_leftover(None, false, old, 0, true));
        assert!(!is_leftover(None, false, old, 1, true));
        assert!(!is_leftover(None, false, GRACE / 2, 0, true));
    }

    #[test]
    fn a_live_owner_keeps_its_name_and_a_dead_ones_record_is_replaced() {
        let dir = std::env::temp_dir().join(format!("oomlab-records-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let own = Ownership {
            parent: "oomlab-test".into(),
            record_dir: dir.clone(),
        };
        let hier = Hierarchy {
            mode: super::super::Mode::V1,
            unified: None,
            memory_version: Version::V1,
            memory_mount: dir.join("mount"),
        };
        let me = Owner::me().expect("own identity");
        fs::create_dir_all(&dir).expect("record dir");
        // A dead owner's record is taken over.
        fs::write(dir.join("a"), "1 0\n").expect("stale record");
        let rec = own.claim(&hier, "a").expect("claimed over a dead owner");
        assert_eq!(
            Owner::parse(&fs::read_to_string(&rec).expect("record")),
            Some(me)
        );
        // A live owner's is not.
        let err = own.claim(&hier, "a").expect_err("taken by a live owner");
        assert!(matches!(err, CgroupError::Exists { .. }), "{err}");
        fs::remove_dir_all(&dir).expect("fixture removed");
    }
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
