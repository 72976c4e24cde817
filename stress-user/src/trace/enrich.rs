//! User-space half of enrichment and filtering, run on each event as it leaves the ring buffer:
//! the victim's cgroup (read from /proc while the victim still exists), kubelet pod/container,
//! oomlab's own workers; and the target filter's upkeep (new cgroups under the target join the
//! kernel's sets) and the filtering the kernel cannot do (victims by their own cgroup).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};

use super::event::{CgroupOp, ContainerNames, Event, EventKind, Victim, VictimContext};
pub use crate::cgroup::cgroup_of_pid;
use crate::{
    cgroup::{kube, Version},
    runtime::{
        cache::{Lookup, Names},
        naming,
    },
    sys::WORKER_COMM,
};

/// Whether a victim is an oomlab worker, from what the kernel says of it: its comm in the
/// `mark_victim` event (6.9+ kernels carry it), else `/proc/PID/comm` read now (older kernels;
/// a task's comm stays readable while it exits, unlike the cmdline or the parent's `/proc`,
/// which raced the victim's exit).
///
/// Any process may name itself [`WORKER_COMM`]: a tracer in another process can only know that
/// the victim called itself a worker. `oomlab run`, which starts both, asks the kernel's pid set
/// of its own workers instead (see `Tracer::own_workers`).
pub fn is_oomlab_worker(pid: u32, event_comm: Option<&str>) -> bool {
    match event_comm {
        Some(comm) => comm == WORKER_COMM,
        None => fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end_matches('\n') == WORKER_COMM),
    }
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
/// `known` is what the tracer already learnt without /proc — the victim's cgroup read earlier
/// (`cache`) or the last `cgroup_attach_task` seen for the pid (`attach`) — and is used first:
/// every /proc/PID file of a victim waits for the task_lock the OOM killer holds while it prints
/// `Killed process` to the console, milliseconds on a busy node (p99 10 ms in `bench trace`).
/// Otherwise /proc is read; a victim already in `do_exit` shows `/` there on v1: that answer
/// is not trusted, and `moved_to` (the last move seen, whoever had the pid then) is used instead.
pub fn victim_context(
    pid: u32,
    comm: Option<&str>,
    version: Option<Version>,
    known: Option<(&str, &'static str)>,
    moved_to: Option<&str>,
) -> VictimContext {
    let from_proc = || {
        version
            .and_then(|v| cgroup_of_pid(pid, v))
            .filter(|p| p != "/")
    };
    let (cgroup, source) = match known {
        Some((cg, source)) => (Some(cg.to_string()), Some(source)),
        None => match (from_proc(), moved_to) {
            (Some(p), _) => (Some(p), Some("proc")),
            (None, Some(m)) => (Some(m.to_string()), Some("attach")),
            (None, None) => (None, None),
        },
    };
    let kube = cgroup.as_deref().and_then(kube::parse_path);
    VictimContext {
        cgroup_source: source,
        pod_uid: kube.as_ref().map(|k| k.pod_uid.clone()),
        container_id: kube.and_then(|k| k.container_id),
        cgroup,
        oomlab_worker: is_oomlab_worker(pid, comm),
        container: Box::default(),
    }
}

/// Names the victim's container from the runtimes' table (a read of what the refresh thread
/// last found: it never waits on a runtime). Where the table has no entry but the cgroup
/// looks like a container's, or a runtime did not answer, `names_missing` says why.
/// The most a victim in a cgroup the name table does not know waits for a pending refresh
/// (the table is rebuilt about 100 ms after a cgroup is made).
const NAMES_CATCH_UP: Duration = Duration::from_millis(300);

pub fn attribute(names: &Names, pid: u32, ctx: &mut VictimContext) {
    if ctx.cgroup.is_none() {
        // Gone before /proc could say where it was: a container's init is still known by pid.
        if let Some(c) = names.lookup_init(pid) {
            ctx.cgroup.clone_from(&c.cgroup);
            ctx.cgroup_source = Some("runtime");
        }
    }
    let Some(cg) = ctx.cgroup.as_deref() else {
        return;
    };
    let named = container_of(names, pid, cg, NAMES_CATCH_UP);
    *ctx.container = named.names;
    if let Some(id) = named.id {
        ctx.container_id.get_or_insert(id);
    }
    if ctx.pod_uid.is_none() {
        ctx.pod_uid = named.pod_uid;
    }
}

/// A victim's container as the name table knows it.
#[derive(Debug, Default)]
pub struct Named {
    pub names: ContainerNames,
    pub id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Names the container `cg` belongs to; a table that does not know it yet is waited for up to
/// `catch_up` when a refresh is pending.
pub fn container_of(names: &Names, pid: u32, cg: &str, catch_up: Duration) -> Named {
    let mut found = names.lookup(cg);
    if matches!(found, Lookup::Missing(_)) && !catch_up.is_zero() && names.caught_up(catch_up) {
        found = names.lookup(cg);
    }
    match found {
        Lookup::Found(c) => Named {
            names: ContainerNames {
                runtime: Some(c.runtime.as_str()),
                container_name: c.name.clone(),
                pod: c.pod.as_ref().map(|p| p.name.clone()),
                namespace: c.pod.as_ref().map(|p| p.namespace.clone()),
                image: c.image.clone(),
                container_init: c.init_pid.map(|init| init == pid),
                names_missing: None,
            },
            id: Some(c.id.clone()),
            pod_uid: c.pod_uid.clone(),
        },
        Lookup::Missing(why) => {
            let mut named = Named::default();
            // Known by its cgroup's name only (podman, CRI-O, Docker without a daemon asked).
            if let Some((runtime, id)) = naming::runtime_id(cg) {
                named.names.runtime = Some(runtime);
                named.id = Some(id);
            }
            let looks_like_one = named.id.is_some()
                || kube::parse_path(cg).is_some_and(|k| k.container_id.is_some());
            if looks_like_one || why != "no runtime knows this cgroup" {
                named.names.names_missing = Some(why);
            }
            named
        }
    }
}

/// What a kernel whose `oom:mark_victim` has only the pid leaves out, read from /proc while the
/// victim still exists: its comm and oom_score_adj (neither read waits on the dying mm).
fn fill_from_proc(v: &mut Victim) {
    let pid = v.pid;
    let read = |file: &str| fs::read_to_string(format!("/proc/{pid}/{file}")).ok();
    if v.comm.is_none() {
        v.comm = read("comm").map(|c| c.trim_end().to_string());
    }
    if v.oom_score_adj.is_none() {
        v.oom_score_adj = read("oom_score_adj").and_then(|a| a.trim().parse().ok());
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
        self.add_procs_except(rel, &mut HashSet::new());
    }

    /// Like [`TargetState::add_procs`], skipping the pids in `known` and adding the new ones to
    /// it: a second pass over a large subtree (3,000 processes) costs one map update per process
    /// that appeared since the first, not one per process.
    pub fn add_procs_except(&mut self, rel: &str, known: &mut HashSet<u32>) {
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
            if !known.insert(pid) {
                continue;
            }
            if let Err(e) = pids.insert(pid, 1, 0) {
                log::warn!("target filter: cannot add pid {pid}: {e}");
            }
        }
    }
}

/// Every victim pid the kernel's `oom:mark_victim` delivered lately, whether the target filter
/// kept it or not: the episode builder believes a `Killed process` line only when one names it,
/// and a victim the filter drops (outside the target, or on v2 gone before its cgroup could be
/// read) is still a kill the kernel made. Each entry says whether the filter kept the event: a
/// kept one is on its way to the builder (in a channel behind the kernel log's, on a starved
/// reader), and its report waits for it rather than close without it. Shared by the reader
/// thread and the episode builder.
#[derive(Debug, Clone, Default)]
pub struct VictimLedger(Arc<Mutex<VecDeque<(Instant, i32, bool)>>>);

impl VictimLedger {
    /// Longer than any wait of a report for its events.
    const KEEP: Duration = Duration::from_secs(10);
    const MAX: usize = 4096;

    /// `kept`: the target filter passed the event on (it will reach the episode builder).
    pub fn record(&self, pid: i32, now: Instant, kept: bool) {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        while q
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= Self::KEEP || q.len() >= Self::MAX)
        {
            q.pop_front();
        }
        q.push_back((now, pid, kept));
    }

    /// Whether a `mark_victim` named `pid` lately, kept or not.
    pub fn contains(&self, pid: i32) -> bool {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().any(|(_, p, _)| *p == pid)
    }

    /// Whether the filter dropped `pid`'s `mark_victim`: its event will never come.
    pub fn dropped(&self, pid: i32) -> bool {
        let q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().any(|(_, p, kept)| *p == pid && !kept)
    }
}

/// Per-tracer state of the enrichment step.
pub struct Enricher {
    version: Option<Version>,
    target: Option<TargetState>,
    /// tgid → memory cgroup, so a reclaim-heavy task costs one /proc read, not one per event.
    tgid_cgroup: HashMap<u32, Cached>,
    /// The kernel's `NAMED_TGIDS`: the tgids of `tgid_cgroup` with a cgroup, whose records the
    /// kernel may then batch (they can be named after the task is gone).
    named: Option<BpfHashMap<MapData, u32, u8>>,
    /// pid → the memory cgroup it last moved into (`cgroup_attach_task`), for victims whose
    /// /proc entry no longer tells.
    moved: HashMap<u32, Moved>,
    /// The memory controller's hierarchy id, to keep only its attach events in `moved`.
    memory_root: Option<i32>,
    /// `cgroup_attach_task` is attached, so every move reaches `moved` and forgets the task's
    /// entry in `tgid_cgroup`: only then do victims take their cgroup from those tables.
    sees_moves: bool,
    /// `signal_generate` is attached: a victim without `kill_sent` was not killed.
    sees_kills: bool,
    /// Victims reported recently (for the reaper events, which the kernel does not filter).
    victims: VecDeque<i32>,
    victim_set: HashSet<i32>,
    /// When `tgid_cgroup` and `moved` were last cleared of processes that exited.
    last_sweep: Instant,
    /// This process fills the kernel's own-worker set: a victim is a worker when the kernel
    /// found it there, whatever its comm.
    own_workers: bool,
    ledger: VictimLedger,
    /// The runtimes' names for victims' containers, when the command asked for them.
    names: Option<Names>,
}

/// A tgid's memory cgroup as read from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    cgroup: Option<String>,
    /// `/proc/PID`'s inode when it was read ([`proc_ino`]).
    ino: Option<u64>,
    /// Found gone at a sweep: kept until the next one, for its records still batched in the
    /// ring (the kernel stopped waking user space for them once it was named).
    dead: bool,
}

/// The memory cgroup a pid last moved into.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Moved {
    path: String,
    /// `/proc/PID`'s inode at the move ([`proc_ino`]).
    ino: Option<u64>,
}

/// The inode of `/proc/PID`: the same number means the same process, as proc gives every new
/// pid directory a new inode and a reused pid a new directory. A stat of that directory does
/// not wait for the victim's task_lock, as reading any file under it does (the lock is taken
/// for files only, to name their owner). A number that changed because the inode was evicted
/// only costs a /proc read.
fn proc_ino(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.ino())
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
    pub fn new(
        version: Option<Version>,
        target: Option<TargetState>,
        names: Option<Names>,
    ) -> Self {
        Enricher {
            version,
            target,
            tgid_cgroup: HashMap::new(),
            named: None,
            moved: HashMap::new(),
            memory_root: super::memory_hierarchy_id(),
            sees_moves: false,
            sees_kills: false,
            victims: VecDeque::new(),
            victim_set: HashSet::new(),
            last_sweep: Instant::now(),
            own_workers: false,
            ledger: VictimLedger::default(),
            names,
        }
    }

    /// Every victim seen, before the target filter.
    pub fn ledger(&self) -> VictimLedger {
        self.ledger.clone()
    }

    /// Keeps the kernel's set of named tgids (`NAMED_TGIDS`) in step with the cgroup cache.
    pub fn with_named(mut self, map: BpfHashMap<MapData, u32, u8>) -> Self {
        self.named = Some(map);
        self
    }

    /// Forgets `tgid`'s cgroup here and in the kernel: its next record wakes the reader and is
    /// named from /proc again.
    fn unname(&mut self, tgid: u32) {
        if self.tgid_cgroup.remove(&tgid).is_some() {
            if let Some(m) = self.named.as_mut() {
                let _ = m.remove(&tgid);
            }
        }
    }

    /// The OOM killer's SIGKILLs are traced (`signal:signal_generate` attached): a
    /// `mark_victim` without one is a mark of a task that was exiting already, not a kill.
    pub fn with_kills_seen(mut self) -> Self {
        self.sees_kills = true;
        self
    }

    /// Every move between cgroups is traced (`cgroup_attach_task` attached): a victim's cgroup
    /// known from the cache or its last move is used without a /proc read.
    pub fn with_moves_seen(mut self) -> Self {
        self.sees_moves = true;
        self
    }

    /// Victims' roles from the kernel's own-worker set rather than their comm.
    pub fn with_own_workers(mut self) -> Self {
        self.own_workers = true;
        self
    }

    fn cgroup_of_tgid(&mut self, tgid: u32) -> Option<String> {
        let version = self.version?;
        if let Some(c) = self.tgid_cgroup.get(&tgid) {
            return c.cgroup.clone();
        }
        self.make_room();
        if self.tgid_cgroup.len() > TGID_CACHE_MAX {
            if let Some(m) = self.named.as_mut() {
                for t in self.tgid_cgroup.keys() {
                    let _ = m.remove(t);
                }
            }
            self.tgid_cgroup.clear();
        }
        // A move the tracer saw says where the process is without a /proc read, and stays
        // right while it exits (v1's /proc names no cgroup then), if it is the same process.
        let ino = proc_ino(tgid);
        let moved = self
            .moved
            .get(&tgid)
            .filter(|m| ino.is_some() && m.ino == ino)
            .map(|m| m.path.clone());
        let cg = moved.or_else(|| cgroup_of_pid(tgid, version));
        if cg.is_some() {
            if let Some(m) = self.named.as_mut() {
                // Full (an LRU never is) or failed: the kernel keeps waking for this tgid.
                let _ = m.insert(tgid, 1, 0);
            }
        }
        self.tgid_cgroup.insert(
            tgid,
            Cached {
                cgroup: cg.clone(),
                ino: cg.as_ref().and(ino),
                dead: false,
            },
        );
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
        let mut gone = Vec::new();
        for (pid, c) in &mut self.tgid_cgroup {
            if !alive(*pid) {
                if c.dead {
                    gone.push(*pid);
                } else {
                    c.dead = true;
                }
            }
        }
        for pid in gone {
            self.unname(pid);
        }
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
                // First: the victim's /proc entry goes when its parent reaps it.
                fill_from_proc(v);
                let pid = v.pid as u32;
                // Known already, of this very process (not an earlier one with its pid): a
                // cached cgroup was read after the last move (a move forgets it).
                let moved = self.moved.get(&pid);
                let cached = self
                    .tgid_cgroup
                    .get(&pid)
                    .filter(|c| !c.dead && c.cgroup.is_some());
                // One stat, and only when there is an entry to check it against.
                let ino = if self.sees_moves && (cached.is_some() || moved.is_some()) {
                    proc_ino(pid)
                } else {
                    None
                };
                let this = |i: Option<u64>| i.is_some() && i == ino;
                let known = cached
                    .filter(|c| this(c.ino))
                    .and_then(|c| c.cgroup.as_deref())
                    .map(|c| (c, "cache"))
                    .or_else(|| {
                        moved
                            .filter(|m| this(m.ino))
                            .map(|m| (m.path.as_str(), "attach"))
                    });
                v.context = victim_context(
                    pid,
                    v.comm.as_deref(),
                    self.version,
                    known,
                    moved.map(|m| m.path.as_str()),
                );
                if self.own_workers {
                    v.context.oomlab_worker = v.own_worker;
                }
                if let Some(names) = &self.names {
                    attribute(names, v.pid as u32, &mut v.context);
                }
                let keep = match (&self.target, &v.context.cgroup) {
                    (None, _) => true,
                    _ if v.in_filter => true,
                    // One of our workers, born in the target (by clone3 on v2 it is in no pid
                    // set) and maybe gone before its cgroup could be read: the kernel says so.
                    _ if self.own_workers && v.own_worker => true,
                    (Some(t), Some(cg)) => path_under(cg, &t.path),
                    // Gone before we could look, and not in the v1 pid set: on v2 we cannot
                    // tell, so it is not reported under a target.
                    (Some(_), None) => false,
                };
                // No SIGKILL before the mark: not a kill (see `EventKind::Marked`). It has no
                // report in the kernel log for the builder to wait on.
                if self.sees_kills && !v.kill_sent {
                    if keep {
                        self.remember_victim(v.pid);
                        let marked = v.clone();
                        ev.kind = EventKind::Marked(marked);
                    }
                    return keep;
                }
                self.ledger.record(v.pid, Instant::now(), keep);
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
                if matches!(c.op, CgroupOp::Mkdir | CgroupOp::Rmdir)
                    && Some(c.root) == self.memory_root
                {
                    if let Some(names) = &self.names {
                        names.changed();
                    }
                }
                if let (CgroupOp::Attach, Some(pid)) = (c.op, c.pid) {
                    if Some(c.root) == self.memory_root {
                        // A task that moved is in another memory cgroup now (node-wide too).
                        self.unname(pid as u32);
                        if !self.moved.contains_key(&(pid as u32)) {
                            self.make_room();
                            if self.moved.len() > TGID_CACHE_MAX {
                                self.moved.clear();
                            }
                        }
                        let moved = Moved {
                            path: c.path.clone(),
                            ino: proc_ino(pid as u32),
                        };
                        self.moved.insert(pid as u32, moved);
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
                            self.unname(pid as u32);
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
    fn workers_by_the_kernels_comm() {
        let me = std::process::id();
        assert!(is_oomlab_worker(me, Some(WORKER_COMM)));
        assert!(!is_oomlab_worker(me, Some("oomlab")));
        assert!(!is_oomlab_worker(me, None), "the test runner is no worker");
        assert!(
            !is_oomlab_worker(u32::MAX - 1, None),
            "gone: not known as one"
        );
    }

    fn attach(pid: u32, path: &str, root: i32) -> Event {
        Event {
            ts: Duration::ZERO,
            read_at: Duration::ZERO,
            enriched_at: Duration::ZERO,
            written: false,
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
        let mut e = Enricher::new(Some(Version::V1), None, None);
        e.memory_root = Some(4);
        let cached = || Cached {
            cgroup: Some("/cached".into()),
            ino: None,
            dead: false,
        };
        for pid in [me, gone] {
            e.tgid_cgroup.insert(pid, cached());
            assert!(e.process(&mut attach(pid, "/moved", 4)));
            // Moving drops the cached cgroup of the old place, node-wide too.
            assert!(!e.tgid_cgroup.contains_key(&pid));
            e.tgid_cgroup.insert(pid, cached());
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
        // The gone pid's cgroup stays one sweep longer, for its records still in the ring.
        assert_eq!(e.tgid_cgroup.len(), 2);
        assert!(e.tgid_cgroup[&gone].dead && !e.tgid_cgroup[&me].dead);
        e.forget_dead(pid_alive);
        assert_eq!(e.tgid_cgroup.keys().copied().collect::<Vec<_>>(), [me]);
        // Attach events of other hierarchies are not the memory cgroup's moves.
        assert!(e.process(&mut attach(gone, "/cpu", 2)));
        assert!(!e.moved.contains_key(&gone));
    }

    fn victim(pid: i32, comm: &str, own_worker: bool) -> Event {
        Event {
            ts: Duration::ZERO,
            read_at: Duration::ZERO,
            enriched_at: Duration::ZERO,
            written: false,
            cpu: 0,
            kind: EventKind::Victim(Victim {
                pid,
                comm: Some(comm.into()),
                uid: None,
                total_vm_kb: None,
                anon_rss_kb: None,
                file_rss_kb: None,
                shmem_rss_kb: None,
                pgtables_kb: None,
                oom_score_adj: Some(0),
                trigger: super::super::event::Task {
                    tgid: 1,
                    pid: 1,
                    comm: "x".into(),
                    cgroup_id: 1,
                },
                in_filter: false,
                own_worker,
                kill_sent: true,
                context: VictimContext::default(),
            }),
        }
    }

    fn is_worker(e: &mut Enricher, mut ev: Event) -> bool {
        assert!(e.process(&mut ev));
        match ev.kind {
            EventKind::Victim(v) => v.context.oomlab_worker,
            _ => unreachable!("a victim"),
        }
    }

    fn context(e: &mut Enricher, pid: i32) -> VictimContext {
        let mut ev = victim(pid, "app", false);
        assert!(e.process(&mut ev));
        match ev.kind {
            EventKind::Victim(v) => v.context,
            _ => unreachable!("a victim"),
        }
    }

    #[test]
    fn a_mark_without_a_sigkill_is_no_kill_when_sigkills_are_traced() {
        let unkilled = || {
            let mut ev = victim(4242, "app", false);
            if let EventKind::Victim(v) = &mut ev.kind {
                v.kill_sent = false;
            }
            ev
        };
        // Without signal_generate every mark is a kill, as before.
        let mut blind = Enricher::new(Some(Version::V1), None, None);
        let mut ev = unkilled();
        assert!(blind.process(&mut ev));
        assert!(matches!(ev.kind, EventKind::Victim(_)));
        let mut e = Enricher::new(Some(Version::V1), None, None).with_kills_seen();
        let mut ev = unkilled();
        assert!(e.process(&mut ev));
        assert!(matches!(&ev.kind, EventKind::Marked(v) if v.pid == 4242));
        assert!(!e.ledger().contains(4242), "no kernel report to wait for");
        let mut ev = victim(4243, "app", false);
        assert!(e.process(&mut ev));
        assert!(
            matches!(ev.kind, EventKind::Victim(_)),
            "SIGKILL seen: a kill"
        );
        assert!(e.ledger().contains(4243));
    }

    #[test]
    fn a_records_first_cgroup_is_its_traced_move() {
        let me = std::process::id();
        let mut e = Enricher::new(Some(Version::V1), None, None).with_moves_seen();
        e.memory_root = Some(4);
        assert!(e.process(&mut attach(me, "/moved-here", 4)));
        assert_eq!(e.cgroup_of_tgid(me).as_deref(), Some("/moved-here"));
        // A move of an earlier process with this pid says nothing: /proc does.
        let mut e = Enricher::new(Some(Version::V1), None, None).with_moves_seen();
        e.memory_root = Some(4);
        assert!(e.process(&mut attach(me, "/moved-here", 4)));
        e.moved.get_mut(&me).expect("moved").ino = Some(1);
        assert_eq!(e.cgroup_of_tgid(me), cgroup_of_pid(me, Version::V1));
    }

    #[test]
    fn victims_take_what_the_tracer_knows_before_proc() {
        let me = std::process::id();
        let mine = cgroup_of_pid(me, Version::V1);
        let cached = Cached {
            cgroup: Some("/cached".into()),
            ino: proc_ino(me),
            dead: false,
        };
        assert!(cached.ino.is_some());
        // Moves not traced: the cache may predate one, so /proc decides.
        let mut blind = Enricher::new(Some(Version::V1), None, None);
        blind.tgid_cgroup.insert(me, cached.clone());
        let ctx = context(&mut blind, me as i32);
        assert_eq!(ctx.cgroup, mine.clone().filter(|c| c != "/"));
        assert_ne!(ctx.cgroup_source, Some("cache"));
        // Moves traced: the cache first (read after the last move), then the last move.
        let mut e = Enricher::new(Some(Version::V1), None, None).with_moves_seen();
        e.memory_root = Some(4);
        e.tgid_cgroup.insert(me, cached);
        let ctx = context(&mut e, me as i32);
        assert_eq!(
            (ctx.cgroup.as_deref(), ctx.cgroup_source),
            (Some("/cached"), Some("cache"))
        );
        assert!(e.process(&mut attach(me, "/moved", 4)));
        let ctx = context(&mut e, me as i32);
        assert_eq!(
            (ctx.cgroup.as_deref(), ctx.cgroup_source),
            (Some("/moved"), Some("attach"))
        );
        // Of an earlier process with this pid (another /proc inode): /proc decides, and the
        // move is only the answer when /proc has none.
        e.tgid_cgroup.insert(
            me,
            Cached {
                cgroup: Some("/cached".into()),
                ino: Some(1),
                dead: false,
            },
        );
        e.moved.get_mut(&me).expect("moved").ino = Some(1);
        let ctx = context(&mut e, me as i32);
        assert_eq!(
            ctx.cgroup,
            mine.filter(|c| c != "/").or(Some("/moved".into()))
        );
        assert!(matches!(ctx.cgroup_source, Some("proc" | "attach")));
        // A dead entry kept for batched records is not trusted for a victim either.
        let gone = i32::MAX as u32 - 1;
        e.tgid_cgroup.insert(
            gone,
            Cached {
                cgroup: Some("/old".into()),
                ino: None,
                dead: true,
            },
        );
        assert_eq!(context(&mut e, gone as i32).cgroup, None);
    }

    #[test]
    fn own_workers_come_from_the_kernel_set_not_the_comm() {
        let gone = i32::MAX - 1;
        let mut by_comm = Enricher::new(Some(Version::V1), None, None);
        assert!(is_worker(&mut by_comm, victim(gone, WORKER_COMM, false)));
        let mut by_set = Enricher::new(Some(Version::V1), None, None).with_own_workers();
        assert!(
            !is_worker(&mut by_set, victim(gone, WORKER_COMM, false)),
            "an app that took the workers' name"
        );
        assert!(is_worker(&mut by_set, victim(gone - 1, "renamed", true)));
        // Every victim is in the ledger, whatever became of its event.
        let ledger = by_set.ledger();
        assert!(ledger.contains(gone) && ledger.contains(gone - 1) && !ledger.contains(7));
    }

    #[test]
    fn victims_named_from_the_table() {
        use crate::runtime::{Container, Fixed, RuntimeKind, Runtimes};
        let names = Names::once(&Runtimes::from_resolvers(vec![Box::new(Fixed(vec![
            Container {
                runtime: RuntimeKind::Docker,
                runtime_namespace: None,
                id: "abc".into(),
                name: Some("web".into()),
                pod: None,
                pod_uid: None,
                image: Some("nginx:1".into()),
                init_pid: Some(42),
                running: true,
                cgroup: Some("/docker/abc".into()),
                sandbox: false,
            },
        ]))]));
        let ctx = |pid: u32, cgroup: &str| {
            let mut c = VictimContext {
                cgroup: Some(cgroup.into()),
                ..VictimContext::default()
            };
            attribute(&names, pid, &mut c);
            c
        };
        let init = ctx(42, "/docker/abc");
        assert_eq!(init.container_id.as_deref(), Some("abc"));
        assert_eq!(
            (
                init.container.runtime,
                init.container.container_name.as_deref()
            ),
            (Some("docker"), Some("web"))
        );
        assert_eq!(init.container.image.as_deref(), Some("nginx:1"));
        assert_eq!(init.container.container_init, Some(true));
        assert_eq!(
            ctx(7, "/docker/abc/sub").container.container_init,
            Some(false)
        );
        // A Docker-looking cgroup nobody knows: its id from the name, and why names are missing.
        let id = "3f1e9a7c5b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";
        let unknown = ctx(7, &format!("/docker/{id}"));
        assert_eq!(unknown.container_id.as_deref(), Some(id));
        assert_eq!(
            unknown.container.names_missing.as_deref(),
            Some("no runtime knows this cgroup")
        );
        // Outside containers: nothing added.
        assert_eq!(ctx(7, "/user.slice").container, Box::default());
    }

    #[test]
    fn own_process_context() {
        let me = std::process::id();
        let ctx = victim_context(me, None, Some(Version::V1), None, None);
        assert!(!ctx.oomlab_worker);
        // Not asserting the cgroup: a unit test may run where no v1 memory controller exists.
        assert_eq!(ctx.cgroup.is_some(), ctx.cgroup_source == Some("proc"));
        // A pid that does not exist: only the attach record can tell.
        let gone = victim_context(u32::MAX - 1, None, Some(Version::V1), None, Some("/x/y"));
        assert_eq!(
            (gone.cgroup.as_deref(), gone.cgroup_source),
            (Some("/x/y"), Some("attach"))
        );
        assert_eq!(
            victim_context(u32::MAX - 1, None, Some(Version::V1), None, None).cgroup,
            None
        );
    }
}
