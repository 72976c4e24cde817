//! Types shared by oomlab's eBPF programs (`stress-ebpf`) and its user-space side (`stress-user`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding, so the kernel side can
//! write it into the ring buffers and user space can read it back byte for byte. Tracepoint field
//! offsets are never compiled in: user space reads them from the running kernel's `format` files
//! and hands them over in [`Config`] before the programs are loaded.
#![cfg_attr(not(test), no_std)]

/// Where one tracepoint field lives in the raw record. `size == 0` means this kernel's layout
/// does not have the field (e.g. `oom:mark_victim` before 6.9 has only `pid`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
    /// 1 when the field is a `__data_loc` (dynamic string): the u32 at `offset` holds the
    /// string's offset (low 16 bits) and length (high 16 bits).
    pub data_loc: u16,
    pub signed: u16,
}

impl Field {
    pub const ABSENT: Field = Field {
        offset: 0,
        size: 0,
        data_loc: 0,
        signed: 0,
    };

    pub const fn is_present(&self) -> bool {
        self.size != 0
    }
}

/// Declares, per tracepoint, the fields oomlab reads and their index in the layout array.
/// User space walks `FIELDS` to fill the array from the `format` file; the eBPF side indexes
/// it with the constants.
macro_rules! tracepoint_layout {
    ($(#[$doc:meta])* $module:ident, $group:literal, $event:literal, [$($idx:ident = $name:literal),+ $(,)?]) => {
        $(#[$doc])*
        pub mod $module {
            pub const GROUP: &str = $group;
            pub const EVENT: &str = $event;
            pub const FIELDS: &[&str] = &[$($name),+];
            pub const N: usize = FIELDS.len();
            tracepoint_layout!(@idx 0usize, $($idx)+);
        }
    };
    (@idx $n:expr, $first:ident $($rest:ident)*) => {
        pub const $first: usize = $n;
        tracepoint_layout!(@idx $n + 1usize, $($rest)*);
    };
    (@idx $n:expr,) => {};
}

tracepoint_layout!(
    /// `oom:mark_victim`: the task the OOM killer has chosen.
    mark_victim, "oom", "mark_victim", [
        PID = "pid", COMM = "comm", TOTAL_VM = "total_vm", ANON_RSS = "anon_rss",
        FILE_RSS = "file_rss", SHMEM_RSS = "shmem_rss", UID = "uid", PGTABLES = "pgtables",
        OOM_SCORE_ADJ = "oom_score_adj",
    ]
);
tracepoint_layout!(
    /// `oom:oom_score_adj_update`: a write to /proc/PID/oom_score_adj (the writer is `current`).
    adj_update, "oom", "oom_score_adj_update", [PID = "pid", COMM = "comm", OOM_SCORE_ADJ = "oom_score_adj"]
);
tracepoint_layout!(
    /// `vmscan:mm_vmscan_{memcg,direct}_reclaim_begin`.
    reclaim_begin, "vmscan", "mm_vmscan_memcg_reclaim_begin", [ORDER = "order", GFP_FLAGS = "gfp_flags"]
);
tracepoint_layout!(
    /// `vmscan:mm_vmscan_{memcg,direct}_reclaim_end`.
    reclaim_end, "vmscan", "mm_vmscan_memcg_reclaim_end", [NR_RECLAIMED = "nr_reclaimed"]
);
tracepoint_layout!(
    /// `oom:reclaim_retry_zone`: the allocator deciding whether reclaim is still worth retrying.
    retry_zone, "oom", "reclaim_retry_zone", [
        NODE = "node", ZONE_IDX = "zone_idx", ORDER = "order", RECLAIMABLE = "reclaimable",
        AVAILABLE = "available", MIN_WMARK = "min_wmark", NO_PROGRESS_LOOPS = "no_progress_loops",
        WMARK_CHECK = "wmark_check",
    ]
);
tracepoint_layout!(
    /// `oom:compact_retry` (absent on kernels without compaction).
    compact_retry, "oom", "compact_retry", [
        ORDER = "order", PRIORITY = "priority", RESULT = "result", RETRIES = "retries",
        MAX_RETRIES = "max_retries", RET = "ret",
    ]
);
tracepoint_layout!(
    /// `oom:wake_reaper`, `oom:start_task_reaping`, `oom:finish_task_reaping`, `oom:skip_task_reaping`.
    reaper, "oom", "wake_reaper", [PID = "pid"]
);
tracepoint_layout!(
    /// `vmscan:mm_vmscan_kswapd_wake`.
    kswapd_wake, "vmscan", "mm_vmscan_kswapd_wake", [NID = "nid", ZID = "zid", ORDER = "order"]
);
tracepoint_layout!(
    /// `cgroup:cgroup_mkdir` / `cgroup_rmdir`.
    cgroup_dir, "cgroup", "cgroup_mkdir", [ROOT = "root", LEVEL = "level", ID = "id", PATH = "path"]
);
tracepoint_layout!(
    /// `cgroup:cgroup_attach_task`: a task moved into a cgroup.
    cgroup_attach, "cgroup", "cgroup_attach_task", [
        DST_ROOT = "dst_root", DST_LEVEL = "dst_level", DST_ID = "dst_id", PID = "pid",
        DST_PATH = "dst_path", COMM = "comm",
    ]
);
tracepoint_layout!(
    /// `sched:sched_process_fork`: only used to grow the target's pid set to children.
    process_fork, "sched", "sched_process_fork", [PARENT_PID = "parent_pid", CHILD_PID = "child_pid"]
);
tracepoint_layout!(
    /// `sched:sched_process_exit`: only used to shrink the target's pid set.
    process_exit, "sched", "sched_process_exit", [PID = "pid"]
);
tracepoint_layout!(
    /// `signal:signal_generate`: only SIGKILLs are looked at. The OOM killer sends the victim
    /// SIGKILL just before it marks it (`__oom_kill_process`); a `mark_victim` without one is
    /// the kernel marking a task that was exiting already, without a kill.
    signal_generate, "signal", "signal_generate", [SIG = "sig", PID = "pid"]
);

/// Everything the eBPF programs need from user space, set as a read-only global at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub mark_victim: [Field; mark_victim::N],
    pub adj_update: [Field; adj_update::N],
    pub reclaim_begin: [Field; reclaim_begin::N],
    pub reclaim_end: [Field; reclaim_end::N],
    pub retry_zone: [Field; retry_zone::N],
    pub compact_retry: [Field; compact_retry::N],
    pub reaper: [Field; reaper::N],
    pub kswapd_wake: [Field; kswapd_wake::N],
    pub cgroup_dir: [Field; cgroup_dir::N],
    pub cgroup_attach: [Field; cgroup_attach::N],
    pub process_fork: [Field; process_fork::N],
    pub process_exit: [Field; process_exit::N],
    pub signal_generate: [Field; signal_generate::N],
    /// One of the `FILTER_*` constants.
    pub filter_mode: u32,
    /// The hierarchy id (`root` in the `cgroup:*` tracepoints, column 2 of /proc/cgroups) of the
    /// memory controller: on v1 every hierarchy numbers its cgroups on its own, so an id only
    /// means something together with its root.
    pub filter_root: i32,
    /// One of the `RECLAIM_KEY_*` constants: how `RECLAIM_STATS` is keyed.
    pub reclaim_key: u32,
    /// `emit::submit` looks at how much of `EVENTS` waits unread when this CPU's count of
    /// records ANDed with this mask is zero (one record in `mask + 1`), not at every record: the
    /// look costs two helper calls. User space sets it from the ring's size and the CPU count
    /// ([`wake_check_mask`]); 0 looks at every record.
    pub wake_check_mask: u32,
    /// Not read by the programs: with [`FILTER_CGROUP_V2`] they look the current task's cgroup
    /// up in the `FILTER_CGROUP_SET` map, which holds the target and every descendant. Zero.
    pub filter_cgroup_id: u64,
    /// Bytes waiting in `EVENTS` that wake the reader at once (an eighth of the ring); 0: the
    /// programs ask the ring for its size.
    pub wake_bytes: u64,
}

/// The largest record in `EVENTS` is a cgroup record (a 256-byte path and a header) of about
/// this many bytes with the ring's own 8-byte header.
pub const MAX_EVENTS_RECORD: u64 = 384;

/// [`Config::wake_check_mask`] for a ring of `ring_bytes` on `cpus` CPUs: between two looks
/// every CPU adds at most `mask` records, and all of them together at most a sixteenth of the
/// ring (half the wake level) even if every record were the largest kind; at most 63, so a
/// reader behind is still woken after 64 records of one CPU. A power of two minus one.
pub const fn wake_check_mask(ring_bytes: u64, cpus: u64) -> u32 {
    let cpus = if cpus == 0 { 1 } else { cpus };
    let per_cpu = ring_bytes / 16 / cpus / MAX_EVENTS_RECORD;
    let mut n = 1u64;
    while n * 2 <= per_cpu && n < 64 {
        n *= 2;
    }
    (n - 1) as u32
}

/// No filtering: node-wide.
pub const FILTER_NONE: u32 = 0;
/// Keep events of tasks whose tgid is in the `FILTER_PID_SET` map (seeded by user space, kept up
/// to date by `cgroup_attach_task` and the `sched` fork/exit hooks), used on cgroup v1.
pub const FILTER_PIDS: u32 = 1;
/// Keep events of tasks whose cgroup v2 id is in the `FILTER_CGROUP_SET` map (the target and its
/// descendants), used on cgroup v2.
pub const FILTER_CGROUP_V2: u32 = 2;

/// `RECLAIM_STATS` keyed by the reclaiming task's cgroup v2 id (the memory cgroup on v2).
pub const RECLAIM_KEY_CGROUP: u32 = 0;
/// Keyed by the reclaiming task's tgid: on v1 the memory cgroup is not reachable from a
/// helper, so user space maps tgid → memory cgroup through /proc.
pub const RECLAIM_KEY_TGID: u32 = 1;

impl Config {
    pub const fn zeroed() -> Self {
        Config {
            mark_victim: [Field::ABSENT; mark_victim::N],
            adj_update: [Field::ABSENT; adj_update::N],
            reclaim_begin: [Field::ABSENT; reclaim_begin::N],
            reclaim_end: [Field::ABSENT; reclaim_end::N],
            retry_zone: [Field::ABSENT; retry_zone::N],
            compact_retry: [Field::ABSENT; compact_retry::N],
            reaper: [Field::ABSENT; reaper::N],
            kswapd_wake: [Field::ABSENT; kswapd_wake::N],
            cgroup_dir: [Field::ABSENT; cgroup_dir::N],
            cgroup_attach: [Field::ABSENT; cgroup_attach::N],
            process_fork: [Field::ABSENT; process_fork::N],
            process_exit: [Field::ABSENT; process_exit::N],
            signal_generate: [Field::ABSENT; signal_generate::N],
            filter_mode: FILTER_NONE,
            filter_root: 0,
            reclaim_key: RECLAIM_KEY_CGROUP,
            wake_check_mask: 0,
            filter_cgroup_id: 0,
            wake_bytes: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Fixed numeric kinds of the events in the ring buffers; the first field of every event.
pub mod kind {
    pub const MARK_VICTIM: u32 = 1;
    pub const ADJ_UPDATE: u32 = 2;
    pub const RECLAIM: u32 = 3;
    pub const RETRY_ZONE: u32 = 4;
    pub const COMPACT_RETRY: u32 = 5;
    pub const REAPER: u32 = 6;
    pub const KSWAPD_WAKE: u32 = 7;
    pub const CGROUP: u32 = 8;
    pub const OOM_KILL_PROCESS: u32 = 9;
}

pub const COMM_LEN: usize = 16;
/// Long enough for kubelet paths (`/kubepods.slice/kubepods-burstable.slice/…/cri-containerd-<64 hex>.scope`).
pub const PATH_LEN: usize = 256;

/// Common head of every event: what and when, and the task that was running (`current`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// cgroup v2 id of `current` (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Bits of [`MarkVictim::present`]: which optional fields this kernel's layout delivered.
pub mod victim_fields {
    pub const COMM: u32 = 1 << 0;
    pub const RSS: u32 = 1 << 1;
    pub const UID: u32 = 1 << 2;
    pub const PGTABLES: u32 = 1 << 3;
    pub const OOM_SCORE_ADJ: u32 = 1 << 4;
    /// The victim's pid is in the target's pid set (it lived in the target when it was chosen).
    pub const IN_FILTER: u32 = 1 << 5;
    /// The victim's pid is in `OWN_WORKERS`: the oomlab that loaded the tracer started it as one
    /// of its workers (its comm is no proof: any process may take the workers' name).
    pub const OWN_WORKER: u32 = 1 << 6;
    /// The task that marked the victim had just sent it SIGKILL (`signal:signal_generate`): the
    /// OOM killer killed it. Unset while `signal_generate` is attached: the kernel marked a task
    /// that was exiting already (`task_will_free_mem`), and killed nothing.
    pub const KILL_SENT: u32 = 1 << 7;
}

/// Longest time between the OOM killer's SIGKILL and its `mark_victim` of the same task (the two
/// are a few instructions apart in `__oom_kill_process`; this only bounds a stale record).
pub const KILL_TO_MARK_NS: u64 = 10_000_000;

/// `oom:mark_victim`. Sizes are in KiB as the tracepoint reports them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MarkVictim {
    pub hdr: EventHeader,
    pub pid: i32,
    pub uid: u32,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub pgtables_kb: u64,
    pub oom_score_adj: i32,
    pub present: u32,
    pub comm: [u8; COMM_LEN],
}

/// `oom:oom_score_adj_update`; the writer is the header's task.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AdjUpdate {
    pub hdr: EventHeader,
    pub pid: i32,
    pub oom_score_adj: i32,
    pub comm: [u8; COMM_LEN],
}

/// Which reclaim a [`Reclaim`] event describes.
pub mod reclaim_kind {
    pub const MEMCG: u32 = 1;
    pub const DIRECT: u32 = 2;
}

/// One reclaim pass, paired begin/end in the kernel: the header is the end's.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Reclaim {
    pub hdr: EventHeader,
    pub reclaim_kind: u32,
    pub order: i32,
    pub gfp_flags: u64,
    pub nr_reclaimed: u64,
    pub latency_ns: u64,
}

/// Reclaim totals per cgroup (per tgid on v1, see [`Config::reclaim_key`]), aggregated in the
/// kernel in the per-CPU map `RECLAIM_STATS`, so a summary survives ring-buffer drops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ReclaimStats {
    pub count: u64,
    pub nr_reclaimed: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

/// `oom:reclaim_retry_zone`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RetryZone {
    pub hdr: EventHeader,
    pub node: i32,
    pub zone_idx: i32,
    pub order: i32,
    pub no_progress_loops: i32,
    pub reclaimable: u64,
    pub available: u64,
    pub min_wmark: u64,
    pub wmark_check: i32,
    pub _pad: u32,
}

/// `oom:compact_retry`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CompactRetry {
    pub hdr: EventHeader,
    pub order: i32,
    pub priority: i32,
    pub result: i32,
    pub retries: i32,
    pub max_retries: i32,
    pub ret: i32,
}

/// Which reaper step a [`Reaper`] event is.
pub mod reaper_step {
    pub const WAKE: u32 = 1;
    pub const START: u32 = 2;
    pub const FINISH: u32 = 3;
    pub const SKIP: u32 = 4;
}

/// `oom:wake_reaper` / `start_task_reaping` / `finish_task_reaping` / `skip_task_reaping`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Reaper {
    pub hdr: EventHeader,
    pub step: u32,
    pub pid: i32,
}

/// `vmscan:mm_vmscan_kswapd_wake`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KswapdWake {
    pub hdr: EventHeader,
    pub nid: i32,
    pub zid: i32,
    pub order: i32,
    pub _pad: u32,
}

/// Which lifecycle step a [`CgroupEvent`] is.
pub mod cgroup_op {
    pub const MKDIR: u32 = 1;
    pub const RMDIR: u32 = 2;
    pub const ATTACH: u32 = 3;
}

/// `cgroup:cgroup_mkdir` / `cgroup_rmdir` / `cgroup_attach_task`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    pub hdr: EventHeader,
    pub op: u32,
    pub root: i32,
    pub level: i32,
    /// The moved task (attach only).
    pub pid: i32,
    pub id: u64,
    pub comm: [u8; COMM_LEN],
    pub path: [u8; PATH_LEN],
}

/// kprobe/fentry on `oom_kill_process`: only where the kernel allows those hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomKillProcess {
    pub hdr: EventHeader,
    /// 1 = fentry, 2 = kprobe.
    pub hook: u32,
    pub _pad: u32,
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Events written to either ring buffer.
    pub const PRODUCED: u32 = 0;
    /// Events lost because their ring buffer was full.
    pub const DROPPED: u32 = 1;
    /// Of those, OOM events (victims, reaper, kill hooks) lost because their own ring was full.
    pub const OOM_DROPPED: u32 = 2;
    pub const N: u32 = 3;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type here is repr(C), Copy, made of integers only, with no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ReclaimStats {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    // The eBPF side and user space must agree byte for byte; sizes that are multiples of 8 keep
    // events aligned in the ring buffers and prove there is no trailing padding.
    #[test]
    fn layouts_have_no_padding() {
        assert_eq!(size_of::<Field>(), 8);
        assert_eq!(size_of::<EventHeader>(), 48);
        assert_eq!(size_of::<MarkVictim>(), 48 + 8 + 40 + 8 + 16);
        assert_eq!(size_of::<AdjUpdate>(), 48 + 8 + 16);
        assert_eq!(size_of::<Reclaim>(), 48 + 8 + 24);
        assert_eq!(size_of::<CgroupEvent>(), 48 + 16 + 8 + COMM_LEN + PATH_LEN);
        assert_eq!(size_of::<Config>() % 8, 0);
        assert_eq!(size_of::<ReclaimStats>(), 32);
        assert_eq!(size_of::<RetryZone>(), 48 + 16 + 24 + 8);
        assert_eq!(size_of::<CompactRetry>(), 48 + 24);
        assert_eq!(size_of::<Reaper>(), 48 + 8);
        assert_eq!(size_of::<KswapdWake>(), 48 + 16);
        // Config: the layout arrays (8 bytes per field) then 4 u32 + 2 u64.
        let fields = mark_victim::N
            + adj_update::N
            + reclaim_begin::N
            + reclaim_end::N
            + retry_zone::N
            + compact_retry::N
            + reaper::N
            + kswapd_wake::N
            + cgroup_dir::N
            + cgroup_attach::N
            + process_fork::N
            + process_exit::N
            + signal_generate::N;
        assert_eq!(size_of::<Config>(), fields * 8 + 16 + 16);
    }

    #[test]
    fn wake_check_mask_bounds_the_unlooked_backlog() {
        // The largest record, with the ring's own 8-byte header, fits the assumed size.
        assert!(size_of::<CgroupEvent>() as u64 + 8 <= MAX_EVENTS_RECORD);
        // The default 4 MiB ring on 2 CPUs: a look every 64 records (the cap).
        assert_eq!(wake_check_mask(4 << 20, 2), 63);
        // 256 CPUs: 4 MiB / 16 / 256 / 384 = 2.67 records each -> every 2nd record.
        assert_eq!(wake_check_mask(4 << 20, 256), 1);
        // A tiny ring, or no CPU count: every record.
        assert_eq!(wake_check_mask(4096, 2), 0);
        assert_eq!(wake_check_mask(4 << 20, 0), 63);
        for (ring, cpus) in [
            (1u64 << 16, 1u64),
            (4 << 20, 8),
            (4 << 20, 96),
            (64 << 20, 1024),
        ] {
            let m = u64::from(wake_check_mask(ring, cpus));
            assert!((m + 1).is_power_of_two());
            assert!(
                m == 0 || (m + 1) * cpus * MAX_EVENTS_RECORD <= ring / 16,
                "{ring} {cpus}"
            );
        }
    }

    #[test]
    fn layout_indexes_follow_field_names() {
        assert_eq!(
            mark_victim::FIELDS[mark_victim::OOM_SCORE_ADJ],
            "oom_score_adj"
        );
        assert_eq!(mark_victim::N, 9);
        assert_eq!(cgroup_attach::FIELDS[cgroup_attach::COMM], "comm");
    }
}
