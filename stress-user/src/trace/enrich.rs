//! User-space half of enrichment and filtering, run on each event as it leaves the ring buffer:
//! the victim's cgroup (read from /proc while the victim still exists), kubelet pod/container,
//! oomlab's own workers; and the target filter's upkeep (new cgroups under the target join the
//! kernel's sets) and the filtering the kernel cannot do (victims by their own cgroup).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};

use super::event::{CgroupOp, Event, EventKind, VictimContext};
use crate::cgroup::{self, kube, Version};

/// The memory cgroup of a process, relative to the controller's mount (`/a/b`), from
/// `/proc/PID/cgroup`; `None` once the process is gone.
pub fn cgroup_of_pid(pid: u32, version: Version) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup::cgroup_of(&text, version)
}

/// True when `pid` is an `oomlab inject` worker: a child of an `oomlab inject` process running
/// the same executable (workers are that binary re-executed as `oomlab __worker`).
///
/// The victim's own /proc/PID/cmdline would say `__worker` directly, but reading it takes the
/// victim's mmap lock, which its exit is holding: tens of milliseconds of delay on the event.
/// `stat`, `exe` and the parent's cmdline do not touch the dying mm.
pub fn is_oomlab_worker(pid: u32) -> bool {
    let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parent_of_stat(&s))
    else {
        return false;
    };
    let exe = |p: u32| fs::read_link(format!("/proc/{p}/exe")).ok();
    let same_exe = matches!((exe(pid), exe(ppid)), (Some(a), Some(b)) if a == b);
    same_exe
        && fs::read(format!("/proc/{ppid}/cmdline"))
            .map(|raw| cmdline_is_injector(&raw))
            .unwrap_or(false)
}

/// The ppid in a `/proc/PID/stat` line (`pid (comm) state ppid …`; comm may hold spaces and
/// parentheses, so split after the last `)`).
pub fn parent_of_stat(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The NUL-separated argv of `/proc/PID/cmdline` of `oomlab inject …` (the subcommand, not the
/// program name: the binary can be renamed).
pub fn cmdline_is_injector(raw: &[u8]) -> bool {
    raw.split(|&b| b == 0).nth(1) == Some(b"inject")
}

/// `oomlab __worker …`, for callers that can afford to read the process's own cmdline.
pub fn cmdline_is_worker(raw: &[u8]) -> bool {
    raw.split(|&b| b == 0).skip(1).any(|arg| arg == b"__worker")
}

/// `top` itself or below it.
pub fn path_under(path: &str, top: &str) -> bool {
    let top = top.trim_end_matches('/');
    top.is_empty()
        || path == top
        || (path.starts_with(top) && path.as_bytes().get(top.len()) == Some(&b'/'))
}

/// The victim's context: cgroup, kubelet ids, worker or not. `cgroup` is `None` when the victim
/// is already gone; the kernel log's `task_memcg=` can fill it in later.
///
/// A victim already in `do_exit` shows `/` in /proc/PID/cgroup on v1: that answer is not
/// trusted; `moved_to` (the last `cgroup_attach_task` seen for the pid) is used instead.
pub fn victim_context(pid: u32, version: Option<Version>, moved_to: Option<&str>) -> VictimContext {
    let from_proc = version
        .and_then(|v| cgroup_of_pid(pid, v))
        .filter(|p| p != "/");
    let (cgroup, source) = match (from_proc, moved_to) {
        (Some(p), _) => (Some(p), Some("proc")),
        (None, Some(m)) => (Some(m.to_string()), Some("attach")),
        (None, None) => (None, None),
    };
    let kube = cgroup.as_deref().and_then(kube::parse_path);
    VictimContext {
        cgroup_source: source,
        pod_uid: kube.as_ref().map(|k| k.pod_uid.clone()),
        container_id: kube.and_then(|k| k.container_id),
        cgroup,
        oomlab_worker: is_oomlab_worker(pid),
    }
}

/// The kernel filter maps user space keeps in step, and what they describe.
pub struct TargetState {
    /// The target's path relative to the memory controller's mount.
    pub path: String,
    pub mount: std::path::PathBuf,
    /// The memory controller's hierarchy id (`root` in the `cgroup:*` events).
    pub root: i32,
    pub cgroups: BpfHashMap<MapData, u64, u8>,
    /// The target's pids (both versions: an adj write's target task is not `current`).
    pub pids: Option<BpfHashMap<MapData, u32, u8>>,
}

impl TargetState {
    /// Adds a cgroup of the subtree; on v1 its processes too (those that moved in before the
    /// kernel knew the cgroup belongs to the target).
    pub fn add_cgroup(&mut self, id: u64, rel: &str) {
        if let Err(e) = self.cgroups.insert(id, 1, 0) {
            log::warn!("target filter: cannot add cgroup {rel} (id {id}): {e}");
        }
        self.add_procs(rel);
    }

    pub fn add_procs(&mut self, rel: &str) {
        let Some(pids) = self.pids.as_mut() else {
            return;
        };
        let file = self
            .mount
            .join(rel.trim_start_matches('/'))
            .join("cgroup.procs");
        let Ok(text) = fs::read_to_string(&file) else {
            return;
        };
        for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if let Err(e) = pids.insert(pid, 1, 0) {
                log::warn!("target filter: cannot add pid {pid}: {e}");
            }
        }
    }
}

/// Per-tracer state of the enrichment step.
pub struct Enricher {
    version: Option<Version>,
    target: Option<TargetState>,
    /// tgid → memory cgroup, so a reclaim-heavy task costs one /proc read, not one per event.
    tgid_cgroup: HashMap<u32, Option<String>>,
    /// pid → the memory cgroup it last moved into (`cgroup_attach_task`), for victims whose
    /// /proc entry no longer tells.
    moved: HashMap<u32, String>,
    /// The memory controller's hierarchy id, to keep only its attach events in `moved`.
    memory_root: Option<i32>,
    /// Victims reported recently (for the reaper events, which the kernel does not filter).
    victims: VecDeque<i32>,
    victim_set: HashSet<i32>,
    /// When `tgid_cgroup` and `moved` were last cleared of processes that exited.
    last_sweep: Instant,
}

/// Hard cap of the per-pid tables (a fork storm between two sweeps).
const TGID_CACHE_MAX: usize = 8192;
const RECENT_VICTIMS: usize = 1024;
/// How often at most the per-pid tables drop the pids that no longer exist: a node starts
/// processes all day, and a daemon that keeps every dead one grows without end.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Whether a process with this pid exists now.
pub fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Enricher {
    pub fn new(version: Option<Version>, target: Option<TargetState>) -> Self {
        Enricher {
            version,
            target,
            tgid_cgroup: HashMap::new(),
            moved: HashMap::new(),
            memory_root: super::memory_hierarchy_id(),
            victims: VecDeque::new(),
            victim_set: HashSet::new(),
            last_sweep: Instant::now(),
        }
    }

    fn cgroup_of_tgid(&mut self, tgid: u32) -> Option<String> {
        let version = self.version?;
        if let Some(cg) = self.tgid_cgroup.get(&tgid) {
            return cg.clone();
        }
        self.make_room();
        if self.tgid_cgroup.len() > TGID_CACHE_MAX {
            self.tgid_cgroup.clear();
        }
        let cg = cgroup_of_pid(tgid, version);
        self.tgid_cgroup.insert(tgid, cg.clone());
        cg
    }

    /// Before a table grows: drops the pids that exited, every [`SWEEP_EVERY`] at most.
    fn make_room(&mut self) {
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            self.forget_dead(pid_alive);
        }
    }

    /// Drops what is kept for pids `alive` says are gone. A victim's attach record goes too:
    /// it is read when `mark_victim` arrives, while the victim still exists.
    fn forget_dead(&mut self, alive: impl Fn(u32) -> bool) {
        self.tgid_cgroup.retain(|pid, _| alive(*pid));
        self.moved.retain(|pid, _| alive(*pid));
        // A table that emptied gives its memory back instead of keeping its largest size.
        if self.tgid_cgroup.len() < self.tgid_cgroup.capacity() / 4 {
            self.tgid_cgroup.shrink_to_fit();
        }
        if self.moved.len() < self.moved.capacity() / 4 {
            self.moved.shrink_to_fit();
        }
    }

    fn remember_victim(&mut self, pid: i32) {
        if self.victim_set.insert(pid) {
            self.victims.push_back(pid);
            if self.victims.len() > RECENT_VICTIMS {
                if let Some(old) = self.victims.pop_front() {
                    self.victim_set.remove(&old);
                }
            }
        }
    }

    /// Enriches `ev` in place; `false` when it falls outside the target and is dropped.
    pub fn process(&mut self, ev: &mut Event) -> bool {
        match &mut ev.kind {
            EventKind::Victim(v) => {
                let moved = self.moved.get(&(v.pid as u32)).map(String::as_str);
                v.context = victim_context(v.pid as u32, self.version, moved);
                let keep = match (&self.target, &v.context.cgroup) {
                    (None, _) => true,
                    _ if v.in_filter => true,
                    (Some(t), Some(cg)) => path_under(cg, &t.path),
                    // Gone before we could look, and not in the v1 pid set: on v2 we cannot
                    // tell, so it is not reported under a target.
                    (Some(_), None) => false,
                };
                if keep {
                    self.remember_victim(v.pid);
                }
                keep
            }
            EventKind::Reaper(r) => self.target.is_none() || self.victim_set.contains(&r.pid),
            EventKind::Reclaim(r) => {
                r.cgroup = self.cgroup_of_tgid(r.task.tgid);
                true
            }
            EventKind::Cgroup(c) => {
                if let (CgroupOp::Attach, Some(pid)) = (c.op, c.pid) {
                    if Some(c.root) == self.memory_root {
                        // A task that moved is in another memory cgroup now (node-wide too).
                        self.tgid_cgroup.remove(&(pid as u32));
                        if !self.moved.contains_key(&(pid as u32)) {
                            self.make_room();
                            if self.moved.len() > TGID_CACHE_MAX {
                                self.moved.clear();
                            }
                        }
                        self.moved.insert(pid as u32, c.path.clone());
                    }
                }
                let Some(t) = self.target.as_mut() else {
                    return true;
                };
                if c.root != t.root {
                    return false;
                }
                let under = path_under(&c.path, &t.path);
                match c.op {
                    CgroupOp::Mkdir if under => t.add_cgroup(c.id, &c.path.clone()),
                    CgroupOp::Rmdir if under => {
                        let _ = t.cgroups.remove(&c.id);
                    }
                    CgroupOp::Attach => {
                        if let Some(pid) = c.pid {
                            self.tgid_cgroup.remove(&(pid as u32));
                        }
                    }
                    _ => {}
                }
                // Attach events passed the kernel because the task moved in or out of the
                // target; both are the target's business.
                under || c.op == CgroupOp::Attach
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_target() {
        assert!(path_under("/a/b", "/a"));
        assert!(path_under("/a", "/a"));
        assert!(path_under("/a", "/a/"));
        assert!(!path_under("/ab", "/a"));
        assert!(!path_under("/", "/a"));
        assert!(path_under("/anything", "/"));
    }

    #[test]
    fn injector_and_parent() {
        assert!(cmdline_is_injector(
            b"/usr/bin/oomlab\0inject\0--cgroup\0/x\0"
        ));
        assert!(!cmdline_is_injector(b"oomlab\0trace\0inject\0"));
        assert_eq!(parent_of_stat("42 (a (b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_of_stat("garbage"), None);
        let me = std::process::id();
        let stat = fs::read_to_string(format!("/proc/{me}/stat")).expect("own stat");
        assert_eq!(
            parent_of_stat(&stat),
            Some(std::os::unix::process::parent_id())
        );
        assert!(!is_oomlab_worker(me), "the test runner is no worker");
    }

    #[test]
    fn workers_by_argv_not_by_name() {
        assert!(cmdline_is_worker(
            b"/usr/bin/oomlab\0__worker\0--size\x001MiB\0"
        ));
        assert!(cmdline_is_worker(b"renamed\0__worker\0"));
        assert!(!cmdline_is_worker(b"__worker\0"));
        assert!(!cmdline_is_worker(b"oomlab\0app\0--size\0__workerx\0"));
        assert!(!cmdline_is_worker(b""));
    }

    fn attach(pid: u32, path: &str, root: i32) -> Event {
        Event {
            ts: Duration::ZERO,
            read_at: Duration::ZERO,
            cpu: 0,
            kind: EventKind::Cgroup(super::super::event::CgroupChange {
                op: CgroupOp::Attach,
                root,
                level: 1,
                id: 7,
                path: path.into(),
                pid: Some(i32::try_from(pid).expect("pid fits")),
                comm: Some("sh".into()),
                task: super::super::event::Task {
                    tgid: 1,
                    pid: 1,
                    comm: "systemd".into(),
                    cgroup_id: 1,
                },
            }),
        }
    }

    #[test]
    fn state_of_exited_pids_is_dropped() {
        let me = std::process::id();
        // Above pid_max (4194304 at most): no process has it.
        let gone = i32::MAX as u32 - 1;
        assert!(pid_alive(me) && !pid_alive(gone));
        let mut e = Enricher::new(Some(Version::V1), None);
        e.memory_root = Some(4);
        for pid in [me, gone] {
            e.tgid_cgroup.insert(pid, Some("/cached".into()));
            assert!(e.process(&mut attach(pid, "/moved", 4)));
            // Moving drops the cached cgroup of the old place, node-wide too.
            assert!(!e.tgid_cgroup.contains_key(&pid));
            e.tgid_cgroup.insert(pid, Some("/cached".into()));
        }
        // No sweep before SWEEP_EVERY has passed.
        assert_eq!((e.tgid_cgroup.len(), e.moved.len()), (2, 2));
        // The next new pid after SWEEP_EVERY sweeps: the gone pid's records leave.
        e.last_sweep = Instant::now()
            .checked_sub(SWEEP_EVERY)
            .expect("monotonic clock past 10 s");
        let parent = std::os::unix::process::parent_id();
        assert!(e.process(&mut attach(parent, "/other", 4)));
        let mut moved: Vec<u32> = e.moved.keys().copied().collect();
        moved.sort_unstable();
        let mut want = vec![me, parent];
        want.sort_unstable();
        assert_eq!(moved, want);
        assert_eq!(e.tgid_cgroup.keys().copied().collect::<Vec<_>>(), [me]);
        // Attach events of other hierarchies are not the memory cgroup's moves.
        assert!(e.process(&mut attach(gone, "/cpu", 2)));
        assert!(!e.moved.contains_key(&gone));
    }

    #[test]
    fn own_process_context() {
        let me = std::process::id();
        let ctx = victim_context(me, Some(Version::V1), None);
        assert!(!ctx.oomlab_worker);
        // Not asserting the cgroup: a unit test may run where no v1 memory controller exists.
        assert_eq!(ctx.cgroup.is_some(), ctx.cgroup_source == Some("proc"));
        // A pid that does not exist: only the attach record can tell.
        let gone = victim_context(u32::MAX - 1, Some(Version::V1), Some("/x/y"));
        assert_eq!(
            (gone.cgroup.as_deref(), gone.cgroup_source),
            (Some("/x/y"), Some("attach"))
        );
        assert_eq!(
            victim_context(u32::MAX - 1, Some(Version::V1), None).cgroup,
            None
        );
    }
}
