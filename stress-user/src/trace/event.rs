//! Typed events decoded from the ring buffer's raw records (the kernel → user-space half of the
//! one-way flow: ring buffer → decoder → `Event` → channel → sinks).

use std::{mem::size_of, time::Duration};

use serde::Serialize;
use stress_common::{self as common, cgroup_op, kind, reaper_step, reclaim_kind, victim_fields};

use super::catalogue::EventClass;

/// The task that was running when the kernel event fired (`current`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id of the task (on a v1 memory controller this is the unified-hierarchy id).
    pub cgroup_id: u64,
}

/// `oom:mark_victim`: the task the OOM killer chose. Fields the running kernel's layout lacks
/// are `None` (before 6.9 only `pid` exists); user space then reads comm and oom_score_adj from
/// /proc on arrival, while the victim still exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Victim {
    pub pid: i32,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// The task that triggered the OOM (it is often not the victim).
    pub trigger: Task,
    /// The kernel found the victim's pid in the v1 pid filter: it was in the target.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_filter: bool,
    /// The kernel found the victim's pid in this oomlab's own-worker set (`OWN_WORKERS`, filled
    /// by `oomlab run` as it starts its workers).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own_worker: bool,
    /// The task that marked it had just sent it SIGKILL (`signal:signal_generate`). Read by the
    /// enricher, which makes a victim without it an [`EventKind::Marked`] when that tracepoint is
    /// attached.
    #[serde(skip)]
    pub kill_sent: bool,
    /// Filled in by user space as the event arrives (see `trace::enrich`).
    #[serde(flatten)]
    pub context: VictimContext,
}

/// What user space learns about a victim the moment its event arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VictimContext {
    /// The victim's memory cgroup, relative to the controller's mount.
    pub cgroup: Option<String>,
    /// Where `cgroup` came from: `cache` (read from /proc earlier, for the task's reclaim
    /// records, and not moved since), `attach` (the last `cgroup_attach_task` seen for the pid),
    /// `proc` (/proc/PID/cgroup, read on arrival when neither is known), `runtime` (a
    /// container runtime named the victim as its container's init) or `kmsg` (the kernel log's
    /// `task_memcg=`, filled in later by the episode grouping).
    pub cgroup_source: Option<&'static str>,
    /// From kubelet naming of `cgroup`.
    pub pod_uid: Option<String>,
    pub container_id: Option<String>,
    /// One of `oomlab inject`'s own workers (`oomlab __worker`).
    pub oomlab_worker: bool,
    /// The container the victim ran in, as its runtime names it (see `runtime::cache`); boxed
    /// to keep `EventKind` small.
    #[serde(flatten)]
    pub container: Box<ContainerNames>,
}

/// A victim's container as the runtimes describe it; every field `None` outside containers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerNames {
    /// `containerd` or `docker` (the daemon answered), `cgroup` (a kubelet cgroup name only),
    /// or the runtime a cgroup name shows when no daemon knew it (`podman`, `crio`, `docker`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    /// Docker's name, or the CRI container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The pod's name and namespace (CRI labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whether the victim was the container's init (main) process. The kubelet reports only
    /// those (`OOMKilled`); any other victim it never shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_init: Option<bool>,
    /// Why names are missing for a victim in what looks like a container (a runtime that did
    /// not answer, or a container it does not know yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names_missing: Option<String>,
}

/// `oom:oom_score_adj_update`: `writer` set `pid`'s adj.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjUpdate {
    pub pid: i32,
    pub comm: String,
    pub oom_score_adj: i32,
    pub writer: Task,
}

/// kprobe/fentry on `oom_kill_process`, where the kernel allows those hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomKillHook {
    pub hook: &'static str,
    pub task: Task,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimKind {
    /// A memory cgroup over its limit (`mm_vmscan_memcg_reclaim_*`).
    Memcg,
    /// The page allocator short of free pages (`mm_vmscan_direct_reclaim_*`).
    Direct,
}

/// One reclaim pass (begin and end paired in the kernel, per task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reclaim {
    pub reclaim: ReclaimKind,
    pub order: i32,
    pub gfp_flags: u64,
    pub nr_reclaimed: u64,
    pub latency_ns: u64,
    /// The task that reclaimed (it was allocating).
    pub task: Task,
    /// Its memory cgroup (read from /proc on arrival, cached per process).
    pub cgroup: Option<String>,
}

/// `oom:reclaim_retry_zone`: the allocator weighing another reclaim round for one zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReclaimRetry {
    pub node: i32,
    pub zone_idx: i32,
    pub order: i32,
    pub reclaimable: u64,
    pub available: u64,
    pub min_wmark: u64,
    pub no_progress_loops: i32,
    pub wmark_check: bool,
    pub task: Task,
}

/// `oom:compact_retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompactRetry {
    pub order: i32,
    pub priority: i32,
    pub result: i32,
    pub retries: i32,
    pub max_retries: i32,
    pub retry: bool,
    pub task: Task,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReaperStep {
    /// `oom:wake_reaper`: the victim queued for the OOM reaper.
    Wake,
    /// `start_task_reaping` / `finish_task_reaping`: the reaper freeing the victim's memory.
    Start,
    Finish,
    /// `skip_task_reaping`: nothing to reap (already gone, or mm shared).
    Skip,
}

/// The OOM reaper acting on a victim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaper {
    pub step: ReaperStep,
    pub pid: i32,
    pub task: Task,
}

/// `vmscan:mm_vmscan_kswapd_wake`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KswapdWake {
    pub nid: i32,
    pub zid: i32,
    pub order: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupOp {
    Mkdir,
    Rmdir,
    Attach,
}

/// `cgroup:cgroup_mkdir` / `cgroup_rmdir` / `cgroup_attach_task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupChange {
    pub op: CgroupOp,
    /// The hierarchy id (v1 has one per mounted controller set; v2 is 0).
    pub root: i32,
    pub level: i32,
    /// The cgroup's id in that hierarchy (its directory's inode number).
    pub id: u64,
    /// Relative to the hierarchy's mount.
    pub path: String,
    /// The moved task (attach only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The task that made the change.
    pub task: Task,
}

/// The serde tag (`"event"`) names the variant; `report::event_type` turns it into the JSON
/// line's `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// `oom:mark_victim` after the OOM killer's SIGKILL: a kill.
    Victim(Victim),
    /// `oom:mark_victim` with no SIGKILL before it: the kernel marked a task that was exiting
    /// already (`task_will_free_mem` in `out_of_memory` or `oom_kill_process`: a thread of a
    /// killed process charging again, or a chosen task that is on its way out) so it may use the
    /// reserves and be reaped. Nothing was killed, and the kernel counted no `oom_kill`.
    Marked(Victim),
    AdjUpdate(AdjUpdate),
    OomKillHook(OomKillHook),
    Reclaim(Reclaim),
    ReclaimRetry(ReclaimRetry),
    CompactRetry(CompactRetry),
    Reaper(Reaper),
    KswapdWake(KswapdWake),
    Cgroup(CgroupChange),
}

impl EventKind {
    /// The `--events` class of this kind.
    pub fn class(&self) -> EventClass {
        match self {
            EventKind::Victim(_)
            | EventKind::Marked(_)
            | EventKind::OomKillHook(_)
            | EventKind::Reaper(_)
            | EventKind::ReclaimRetry(_)
            | EventKind::CompactRetry(_) => EventClass::Oom,
            EventKind::AdjUpdate(_) => EventClass::Adj,
            EventKind::Reclaim(_) | EventKind::KswapdWake(_) => EventClass::Reclaim,
            EventKind::Cgroup(_) => EventClass::Cgroup,
        }
    }

    /// The serde tag (`"event"`) of this kind, without serializing it.
    pub fn tag(&self) -> &'static str {
        match self {
            EventKind::Victim(_) => "victim",
            EventKind::Marked(_) => "marked",
            EventKind::AdjUpdate(_) => "adj_update",
            EventKind::OomKillHook(_) => "oom_kill_hook",
            EventKind::Reclaim(_) => "reclaim",
            EventKind::ReclaimRetry(_) => "reclaim_retry",
            EventKind::CompactRetry(_) => "compact_retry",
            EventKind::Reaper(_) => "reaper",
            EventKind::KswapdWake(_) => "kswapd_wake",
            EventKind::Cgroup(_) => "cgroup",
        }
    }
}

/// One kernel event with its kernel timestamp (CLOCK_MONOTONIC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(serialize_with = "ser_ts")]
    pub ts: Duration,
    /// CLOCK_MONOTONIC when user space took it from the ring buffer (zero until then); with `ts`
    /// it splits the event's latency into the kernel's part and oomlab's.
    #[serde(skip)]
    pub read_at: Duration,
    /// CLOCK_MONOTONIC when enrichment (the /proc reads, the name lookup) was done.
    #[serde(skip)]
    pub enriched_at: Duration,
    /// Its line was already written on the reader thread ([`super::Events::write_oom_first`]);
    /// a sink that writes lines does not write it again.
    #[serde(skip)]
    pub written: bool,
    pub cpu: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn ser_ts<S: serde::Serializer>(ts: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ts.as_secs_f64())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes is too short for event kind {kind} ({need} bytes)")]
    Short { kind: u32, len: usize, need: usize },
    #[error("unknown event kind {0} (user space and eBPF object out of step?)")]
    UnknownKind(u32),
}

/// A NUL-terminated kernel string (comm, cgroup path).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: the length is checked above; T is a plain repr(C) integer-only type from
    // stress-common, valid for any bit pattern, and read_unaligned has no alignment demands.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn task(h: &common::EventHeader) -> Task {
    Task {
        tgid: h.tgid,
        pid: h.pid,
        comm: cstr(&h.comm),
        cgroup_id: h.cgroup_id,
    }
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
        let k: u32 = read(buf, 0)?;
        let (hdr, kind) = match k {
            kind::MARK_VICTIM => victim(read(buf, k)?),
            kind::ADJ_UPDATE => adj_update(read(buf, k)?),
            kind::OOM_KILL_PROCESS => oom_kill_hook(read(buf, k)?),
            kind::RECLAIM => reclaim(read(buf, k)?),
            kind::RETRY_ZONE => reclaim_retry(read(buf, k)?),
            kind::COMPACT_RETRY => compact_retry(read(buf, k)?),
            kind::REAPER => reaper(read(buf, k)?),
            kind::KSWAPD_WAKE => kswapd_wake(read(buf, k)?),
            kind::CGROUP => cgroup(read(buf, k)?),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok(Event {
            ts: Duration::from_nanos(hdr.ts_ns),
            read_at: Duration::ZERO,
            enriched_at: Duration::ZERO,
            written: false,
            cpu: hdr.cpu,
            kind,
        })
    }
}

// One decoder per record kind: the record's header, and the typed event it carries.

fn victim(e: common::MarkVictim) -> (common::EventHeader, EventKind) {
    let has = |bit| e.present & bit != 0;
    let rss = |v| has(victim_fields::RSS).then_some(v);
    let v = Victim {
        pid: e.pid,
        comm: has(victim_fields::COMM).then(|| cstr(&e.comm)),
        uid: has(victim_fields::UID).then_some(e.uid),
        total_vm_kb: rss(e.total_vm_kb),
        anon_rss_kb: rss(e.anon_rss_kb),
        file_rss_kb: rss(e.file_rss_kb),
        shmem_rss_kb: rss(e.shmem_rss_kb),
        pgtables_kb: has(victim_fields::PGTABLES).then_some(e.pgtables_kb),
        oom_score_adj: has(victim_fields::OOM_SCORE_ADJ).then_some(e.oom_score_adj),
        trigger: task(&e.hdr),
        in_filter: has(victim_fields::IN_FILTER),
        own_worker: has(victim_fields::OWN_WORKER),
        kill_sent: has(victim_fields::KILL_SENT),
        context: VictimContext::default(),
    };
    (e.hdr, EventKind::Victim(v))
}

fn adj_update(e: common::AdjUpdate) -> (common::EventHeader, EventKind) {
    let a = AdjUpdate {
        pid: e.pid,
        comm: cstr(&e.comm),
        oom_score_adj: e.oom_score_adj,
        writer: task(&e.hdr),
    };
    (e.hdr, EventKind::AdjUpdate(a))
}

fn oom_kill_hook(e: common::OomKillProcess) -> (common::EventHeader, EventKind) {
    let h = OomKillHook {
        hook: if e.hook == 1 { "fentry" } else { "kprobe" },
        task: task(&e.hdr),
    };
    (e.hdr, EventKind::OomKillHook(h))
}

fn reclaim(e: common::Reclaim) -> (common::EventHeader, EventKind) {
    let r = Reclaim {
        reclaim: if e.reclaim_kind == reclaim_kind::DIRECT {
            ReclaimKind::Direct
        } else {
            ReclaimKind::Memcg
        },
        order: e.order,
        gfp_flags: e.gfp_flags,
        nr_reclaimed: e.nr_reclaimed,
        latency_ns: e.latency_ns,
        task: task(&e.hdr),
        cgroup: None,
    };
    (e.hdr, EventKind::Reclaim(r))
}

fn reclaim_retry(e: common::RetryZone) -> (common::EventHeader, EventKind) {
    let r = ReclaimRetry {
        node: e.node,
        zone_idx: e.zone_idx,
        order: e.order,
        reclaimable: e.reclaimable,
        available: e.available,
        min_wmark: e.min_wmark,
        no_progress_loops: e.no_progress_loops,
        wmark_check: e.wmark_check != 0,
        task: task(&e.hdr),
    };
    (e.hdr, EventKind::ReclaimRetry(r))
}

fn compact_retry(e: common::CompactRetry) -> (common::EventHeader, EventKind) {
    let c = CompactRetry {
        order: e.order,
        priority: e.priority,
        result: e.result,
        retries: e.retries,
        max_retries: e.max_retries,
        retry: e.ret != 0,
        task: task(&e.hdr),
    };
    (e.hdr, EventKind::CompactRetry(c))
}

fn reaper(e: common::Reaper) -> (common::EventHeader, EventKind) {
    let step = match e.step {
        reaper_step::WAKE => ReaperStep::Wake,
        reaper_step::START => ReaperStep::Start,
        reaper_step::FINISH => ReaperStep::Finish,
        _ => ReaperStep::Skip,
    };
    let r = Reaper {
        step,
        pid: e.pid,
        task: task(&e.hdr),
    };
    (e.hdr, EventKind::Reaper(r))
}

fn kswapd_wake(e: common::KswapdWake) -> (common::EventHeader, EventKind) {
    let k = KswapdWake {
        nid: e.nid,
        zid: e.zid,
        order: e.order,
    };
    (e.hdr, EventKind::KswapdWake(k))
}

fn cgroup(e: common::CgroupEvent) -> (common::EventHeader, EventKind) {
    let op = match e.op {
        cgroup_op::MKDIR => CgroupOp::Mkdir,
        cgroup_op::RMDIR => CgroupOp::Rmdir,
        _ => CgroupOp::Attach,
    };
    let attach = op == CgroupOp::Attach;
    let c = CgroupChange {
        op,
        root: e.root,
        level: e.level,
        id: e.id,
        path: cstr(&e.path),
        pid: attach.then_some(e.pid),
        comm: attach.then(|| cstr(&e.comm)),
        task: task(&e.hdr),
    };
    (e.hdr, EventKind::Cgroup(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32) -> common::EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        common::EventHeader {
            kind,
            cpu: 1,
            ts_ns: 1_500_000_000,
            cgroup_id: 42,
            tgid: 10,
            pid: 11,
            comm,
        }
    }

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) plain value for the test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn victim_with_full_layout() {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"hog");
        let raw = common::MarkVictim {
            hdr: header(kind::MARK_VICTIM),
            pid: 4242,
            uid: 0,
            total_vm_kb: 100,
            anon_rss_kb: 65536,
            file_rss_kb: 4,
            shmem_rss_kb: 0,
            pgtables_kb: 140,
            oom_score_adj: 500,
            present: victim_fields::COMM
                | victim_fields::RSS
                | victim_fields::UID
                | victim_fields::PGTABLES
                | victim_fields::OOM_SCORE_ADJ,
            comm,
        };
        let ev = Event::decode(&bytes(&raw)).expect("decodes");
        assert_eq!(ev.ts, Duration::from_millis(1500));
        let EventKind::Victim(v) = ev.kind else {
            panic!("not a victim: {ev:?}")
        };
        assert_eq!(
            (v.pid, v.oom_score_adj, v.comm.as_deref()),
            (4242, Some(500), Some("hog"))
        );
        assert_eq!(v.anon_rss_kb, Some(65536));
        assert_eq!(v.trigger.comm, "bash");
    }

    #[test]
    fn victim_on_pre_6_9_layout_has_only_pid() {
        let raw = common::MarkVictim {
            hdr: header(kind::MARK_VICTIM),
            pid: 7,
            uid: 0,
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            oom_score_adj: 0,
            present: 0,
            comm: [0; 16],
        };
        let EventKind::Victim(v) = Event::decode(&bytes(&raw)).expect("decodes").kind else {
            panic!("not a victim")
        };
        assert_eq!(v.pid, 7);
        assert_eq!((v.comm, v.oom_score_adj, v.anon_rss_kb), (None, None, None));
    }

    #[test]
    fn reclaim_reaper_and_cgroup_records() {
        let raw = common::Reclaim {
            hdr: header(kind::RECLAIM),
            reclaim_kind: reclaim_kind::MEMCG,
            order: 0,
            gfp_flags: 0xcc0,
            nr_reclaimed: 32,
            latency_ns: 12_345,
        };
        let EventKind::Reclaim(r) = Event::decode(&bytes(&raw)).expect("decodes").kind else {
            panic!("not reclaim")
        };
        assert_eq!(
            (r.reclaim, r.nr_reclaimed, r.latency_ns, r.task.pid),
            (ReclaimKind::Memcg, 32, 12_345, 11)
        );

        let raw = common::Reaper {
            hdr: header(kind::REAPER),
            step: reaper_step::FINISH,
            pid: 77,
        };
        let ev = Event::decode(&bytes(&raw)).expect("decodes");
        assert!(matches!(
            ev.kind,
            EventKind::Reaper(Reaper {
                step: ReaperStep::Finish,
                pid: 77,
                ..
            })
        ));

        let mut path = [0u8; common::PATH_LEN];
        path[..9].copy_from_slice(b"/test/a-1");
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"app");
        let raw = common::CgroupEvent {
            hdr: header(kind::CGROUP),
            op: cgroup_op::ATTACH,
            root: 5,
            level: 2,
            pid: 99,
            id: 1234,
            comm,
            path,
        };
        let EventKind::Cgroup(c) = Event::decode(&bytes(&raw)).expect("decodes").kind else {
            panic!("not cgroup")
        };
        assert_eq!(c.op, CgroupOp::Attach);
        assert_eq!(
            (c.path.as_str(), c.pid, c.comm.as_deref()),
            ("/test/a-1", Some(99), Some("app"))
        );
        let raw = common::CgroupEvent {
            op: cgroup_op::MKDIR,
            ..raw
        };
        let EventKind::Cgroup(c) = Event::decode(&bytes(&raw)).expect("decodes").kind else {
            panic!("not cgroup")
        };
        assert_eq!((c.op, c.pid, c.comm), (CgroupOp::Mkdir, None, None));
    }

    #[test]
    fn json_shape_of_a_victim() {
        let raw = common::MarkVictim {
            hdr: header(kind::MARK_VICTIM),
            pid: 5,
            uid: 0,
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            oom_score_adj: 0,
            present: victim_fields::IN_FILTER | victim_fields::OWN_WORKER,
            comm: [0; 16],
        };
        let ev = Event::decode(&bytes(&raw)).expect("decodes");
        let v = serde_json::to_value(&ev).expect("serialises");
        assert_eq!(v["event"], "victim");
        assert_eq!(v["ts"], 1.5);
        assert_eq!(v["pid"], 5);
        assert_eq!(v["in_filter"], true);
        assert_eq!(v["own_worker"], true);
        assert_eq!(
            v["oomlab_worker"], false,
            "user space decides from own_worker or the comm"
        );
        assert!(v["cgroup"].is_null());
    }

    #[test]
    fn every_kind_knows_its_serde_tag() {
        let mut seen = std::collections::BTreeSet::new();
        for k in 1..=kind::OOM_KILL_PROCESS {
            // Any record long enough decodes; the values do not matter here.
            let mut raw = bytes(&header(k));
            raw.resize(2048, 0);
            let ev = Event::decode(&raw).unwrap_or_else(|e| panic!("kind {k}: {e}"));
            let v = serde_json::to_value(&ev.kind).expect("serialises");
            assert_eq!(v["event"], ev.kind.tag(), "kind {k}");
            seen.insert(ev.kind.tag());
        }
        assert_eq!(seen.len(), 9, "one kind per EventKind variant: {seen:?}");
        // And a JSON line has the type first, then the event's own fields.
        let mut out = Vec::new();
        let mut raw = bytes(&header(kind::ADJ_UPDATE));
        raw.resize(2048, 0);
        crate::report::event_json_line(&mut out, &Event::decode(&raw).expect("decodes"))
            .expect("writes");
        let line = String::from_utf8(out).expect("utf-8");
        assert!(
            line.starts_with(r#"{"type":"oom_score_adj","ts":1.5,"cpu":1,"event":"adj_update","#),
            "{line}"
        );
        assert!(line.ends_with("}\n"), "{line}");
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let raw = bytes(&header(kind::MARK_VICTIM));
        assert!(matches!(
            Event::decode(&raw),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(
            Event::decode(&bytes(&header(999))),
            Err(DecodeError::UnknownKind(999))
        );
        assert!(Event::decode(&[1, 0]).is_err());
    }
}
