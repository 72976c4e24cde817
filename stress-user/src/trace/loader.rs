//! Loads the embedded eBPF object with this kernel's tracepoint layouts, attaches the programs
//! and turns the ring buffer into a stream of typed [`Event`]s on a channel.

use std::{
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{FEntry, KProbe, Program, TracePoint},
    Ebpf, EbpfLoader,
};
use stress_common::{self as common, stat, Config, ReclaimStats};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

use super::{
    enrich::{Enricher, TargetState},
    event::Event,
    format::{Format, FormatError},
};
use crate::{
    cgroup::{target::descendants, CgroupError, Hierarchy, MemCgroup, Version},
    sys::monotonic,
};

/// The eBPF object built by build.rs from `stress-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stress"));

/// Where aya and oomlab look for tracefs, in order.
const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0}; mount it with `mount -t tracefs nodev /sys/kernel/tracing` (needs root)")]
    Tracefs(nix::Error),
    #[error("tracepoint {group}:{event} is not available on this kernel ({path} missing)")]
    MissingTracepoint {
        group: String,
        event: String,
        path: String,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "loading the eBPF object failed: {0} (run `oomlab doctor` to see what this kernel allows)"
    )]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0} is missing from the embedded object (build mismatch)")]
    NoProgram(&'static str),
    #[error("cannot load/attach {what}: {source}")]
    Attach {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("ring buffer size {bytes} bytes: it must be a power of two between one page ({page} bytes) and 1 GiB, e.g. 1MiB or 4MiB")]
    RingSize { bytes: u64, page: u64 },
    #[error("ring buffer polling: {0}")]
    Io(#[from] io::Error),
    #[error("listing the target's cgroups: {0}")]
    Target(CgroupError),
    #[error("the memory controller has no hierarchy line in /proc/cgroups; cannot filter cgroup v1 events by target")]
    NoHierarchyId,
}

/// Tracefs location, and whether oomlab had to mount it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tracefs {
    pub path: PathBuf,
    pub mounted_by_oomlab: bool,
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when nothing is mounted (these machines
/// boot without it).
pub fn ensure_tracefs() -> Result<Tracefs, TraceError> {
    for p in TRACEFS_PATHS {
        if Path::new(p).join("events").is_dir() {
            return Ok(Tracefs {
                path: p.into(),
                mounted_by_oomlab: false,
            });
        }
    }
    let target = Path::new(TRACEFS_PATHS[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(TraceError::Tracefs)?;
    Ok(Tracefs {
        path: target.into(),
        mounted_by_oomlab: true,
    })
}

/// Which `--events` class a tracepoint serves; programs of classes not asked for are not
/// attached at all (no overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventClass {
    /// Victims, the reaper, the allocator's retry decisions.
    Oom,
    /// `oom_score_adj` writes.
    Adj,
    /// memcg/direct reclaim, kswapd.
    Reclaim,
    /// cgroup mkdir/rmdir/attach (also attached whenever a target filter is set: moves into the
    /// target grow the filter).
    Cgroup,
    /// fork/exit, only to keep the v1 pid filter in step.
    Filter,
}

/// The `--events` selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet {
    pub oom: bool,
    pub adj: bool,
    pub reclaim: bool,
    pub cgroup: bool,
}

impl Default for EventSet {
    fn default() -> Self {
        EventSet::ALL
    }
}

impl EventSet {
    pub const ALL: EventSet = EventSet {
        oom: true,
        adj: true,
        reclaim: true,
        cgroup: true,
    };

    /// `oom,adj,reclaim,cgroup` (any subset, any order).
    pub fn parse(text: &str) -> Result<EventSet, String> {
        let mut set = EventSet {
            oom: false,
            adj: false,
            reclaim: false,
            cgroup: false,
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "oom" => set.oom = true,
                "adj" => set.adj = true,
                "reclaim" => set.reclaim = true,
                "cgroup" => set.cgroup = true,
                "all" => set = EventSet::ALL,
                other => {
                    return Err(format!(
                        "unknown event class {other:?}: use oom, adj, reclaim, cgroup (comma-separated)"
                    ))
                }
            }
        }
        if set
            == (EventSet {
                oom: false,
                adj: false,
                reclaim: false,
                cgroup: false,
            })
        {
            return Err("no event class given: use oom, adj, reclaim, cgroup".into());
        }
        Ok(set)
    }

    pub fn wants(&self, class: EventClass) -> bool {
        match class {
            EventClass::Oom => self.oom,
            EventClass::Adj => self.adj,
            EventClass::Reclaim => self.reclaim,
            EventClass::Cgroup => self.cgroup,
            EventClass::Filter => false,
        }
    }
}

/// One tracepoint oomlab uses: where it lives and which eBPF program serves it.
#[derive(Debug, Clone, Copy)]
pub struct TracepointSpec {
    pub group: &'static str,
    pub event: &'static str,
    pub program: &'static str,
    /// oomlab cannot trace OOMs without it.
    pub required: bool,
    pub class: EventClass,
}

const fn tp(
    group: &'static str,
    event: &'static str,
    program: &'static str,
    class: EventClass,
) -> TracepointSpec {
    TracepointSpec {
        group,
        event,
        program,
        required: false,
        class,
    }
}

/// Every tracepoint oomlab attaches, in attach order (`doctor` loads and attaches each one to
/// prove the verifier accepts it here).
pub const TRACEPOINTS: &[TracepointSpec] = &[
    TracepointSpec {
        group: "oom",
        event: "mark_victim",
        program: "mark_victim",
        required: true,
        class: EventClass::Oom,
    },
    tp(
        "oom",
        "oom_score_adj_update",
        "oom_score_adj_update",
        EventClass::Adj,
    ),
    tp(
        "oom",
        "reclaim_retry_zone",
        "reclaim_retry_zone",
        EventClass::Oom,
    ),
    tp("oom", "compact_retry", "compact_retry", EventClass::Oom),
    tp("oom", "wake_reaper", "wake_reaper", EventClass::Oom),
    tp(
        "oom",
        "start_task_reaping",
        "start_task_reaping",
        EventClass::Oom,
    ),
    tp(
        "oom",
        "finish_task_reaping",
        "finish_task_reaping",
        EventClass::Oom,
    ),
    tp(
        "oom",
        "skip_task_reaping",
        "skip_task_reaping",
        EventClass::Oom,
    ),
    tp(
        "vmscan",
        "mm_vmscan_memcg_reclaim_begin",
        "memcg_reclaim_begin",
        EventClass::Reclaim,
    ),
    tp(
        "vmscan",
        "mm_vmscan_memcg_reclaim_end",
        "memcg_reclaim_end",
        EventClass::Reclaim,
    ),
    tp(
        "vmscan",
        "mm_vmscan_direct_reclaim_begin",
        "direct_reclaim_begin",
        EventClass::Reclaim,
    ),
    tp(
        "vmscan",
        "mm_vmscan_direct_reclaim_end",
        "direct_reclaim_end",
        EventClass::Reclaim,
    ),
    tp(
        "vmscan",
        "mm_vmscan_kswapd_wake",
        "kswapd_wake",
        EventClass::Reclaim,
    ),
    tp("cgroup", "cgroup_mkdir", "cgroup_mkdir", EventClass::Cgroup),
    tp("cgroup", "cgroup_rmdir", "cgroup_rmdir", EventClass::Cgroup),
    tp(
        "cgroup",
        "cgroup_attach_task",
        "cgroup_attach_task",
        EventClass::Cgroup,
    ),
    tp(
        "sched",
        "sched_process_fork",
        "sched_process_fork",
        EventClass::Filter,
    ),
    tp(
        "sched",
        "sched_process_exit",
        "sched_process_exit",
        EventClass::Filter,
    ),
];

/// Every tracepoint oomlab uses or will use when the kernel has it, for `doctor`.
pub const USED_TRACEPOINTS: &[(&str, &str)] = &[
    ("oom", "mark_victim"),
    ("oom", "oom_score_adj_update"),
    ("oom", "reclaim_retry_zone"),
    ("oom", "compact_retry"),
    ("oom", "wake_reaper"),
    ("oom", "start_task_reaping"),
    ("oom", "finish_task_reaping"),
    ("oom", "skip_task_reaping"),
    ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
    ("vmscan", "mm_vmscan_memcg_reclaim_end"),
    ("vmscan", "mm_vmscan_direct_reclaim_begin"),
    ("vmscan", "mm_vmscan_direct_reclaim_end"),
    ("vmscan", "mm_vmscan_kswapd_wake"),
    ("cgroup", "cgroup_mkdir"),
    ("cgroup", "cgroup_rmdir"),
    ("cgroup", "cgroup_attach_task"),
    ("sched", "sched_process_fork"),
    ("sched", "sched_process_exit"),
];

/// Tracepoints that reuse another one's layout in `Config` (the first of each pair is the one
/// read): their fields must sit at the same offsets, or the program would read garbage.
/// `(group, event)`.
pub type TracepointName = (&'static str, &'static str);

pub const SHARED_LAYOUTS: &[(TracepointName, TracepointName)] = &[
    (
        ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
        ("vmscan", "mm_vmscan_direct_reclaim_begin"),
    ),
    (
        ("vmscan", "mm_vmscan_memcg_reclaim_end"),
        ("vmscan", "mm_vmscan_direct_reclaim_end"),
    ),
    (("oom", "wake_reaper"), ("oom", "start_task_reaping")),
    (("oom", "wake_reaper"), ("oom", "finish_task_reaping")),
    (("oom", "wake_reaper"), ("oom", "skip_task_reaping")),
    (("cgroup", "cgroup_mkdir"), ("cgroup", "cgroup_rmdir")),
];

pub fn format_path(tracefs: &Path, group: &str, event: &str) -> PathBuf {
    tracefs
        .join("events")
        .join(group)
        .join(event)
        .join("format")
}

/// Reads a tracepoint's format; `Ok(None)` when this kernel does not have the tracepoint.
pub fn read_format(
    tracefs: &Path,
    group: &str,
    event: &str,
) -> Result<Option<Format>, FormatError> {
    let path = format_path(tracefs, group, event);
    if !path.exists() {
        return Ok(None);
    }
    Format::read(&path).map(Some)
}

/// Builds the eBPF config from the running kernel's `format` files (filter fields zero).
pub fn build_config(tracefs: &Path) -> Result<Config, FormatError> {
    let mut cfg = Config::zeroed();
    macro_rules! fill {
        ($($slot:ident: $layout:ident),+ $(,)?) => {$(
            if let Some(f) = read_format(tracefs, common::$layout::GROUP, common::$layout::EVENT)? {
                cfg.$slot = f.layout(common::$layout::FIELDS);
            }
        )+};
    }
    fill!(
        mark_victim: mark_victim,
        adj_update: adj_update,
        reclaim_begin: reclaim_begin,
        reclaim_end: reclaim_end,
        retry_zone: retry_zone,
        compact_retry: compact_retry,
        reaper: reaper,
        kswapd_wake: kswapd_wake,
        cgroup_dir: cgroup_dir,
        cgroup_attach: cgroup_attach,
        process_fork: process_fork,
        process_exit: process_exit,
    );
    // Direct reclaim is read with the memcg layout: on a kernel without memcg reclaim events use
    // the direct ones' instead.
    if !cfg.reclaim_begin[common::reclaim_begin::ORDER].is_present() {
        if let Some(f) = read_format(tracefs, "vmscan", "mm_vmscan_direct_reclaim_begin")? {
            cfg.reclaim_begin = f.layout(common::reclaim_begin::FIELDS);
        }
        if let Some(f) = read_format(tracefs, "vmscan", "mm_vmscan_direct_reclaim_end")? {
            cfg.reclaim_end = f.layout(common::reclaim_end::FIELDS);
        }
    }
    Ok(cfg)
}

/// The tracepoints whose layout differs from the one they share in `Config` on this kernel
/// (see [`SHARED_LAYOUTS`]); the tracer leaves them unattached rather than read wrong offsets.
pub fn layout_mismatches(tracefs: &Path) -> Result<Vec<TracepointName>, FormatError> {
    let mut out = Vec::new();
    for ((g1, e1), (g2, e2)) in SHARED_LAYOUTS {
        let (Some(a), Some(b)) = (read_format(tracefs, g1, e1)?, read_format(tracefs, g2, e2)?)
        else {
            continue;
        };
        if !same_layout(&a, &b) {
            out.push((*g2, *e2));
        }
    }
    Ok(out)
}

/// Same names at the same offsets and sizes.
pub fn same_layout(a: &Format, b: &Format) -> bool {
    let key = |f: &Format| {
        f.fields
            .iter()
            .map(|d| (d.name.clone(), d.offset, d.size))
            .collect::<Vec<_>>()
    };
    key(a) == key(b)
}

/// The memory controller's hierarchy id from `/proc/cgroups` (0 on a v2-only node).
pub fn memory_hierarchy_id() -> Option<i32> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    parse_hierarchy_id(&text, "memory")
}

/// `#subsys_name hierarchy num_cgroups enabled` → the hierarchy of `controller`.
pub fn parse_hierarchy_id(proc_cgroups: &str, controller: &str) -> Option<i32> {
    proc_cgroups.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == controller).then_some(())?;
        parts.next()?.parse().ok()
    })
}

/// Loads the embedded object with `cfg` as its `CONFIG` global. Nothing is attached yet.
///
/// Without the kernel's BTF: the programs read tracepoint fields at offsets from `format` files
/// and need no CO-RE relocation, and parsing `/sys/kernel/btf/vmlinux` would cost most of the
/// start-up time and memory (only the optional fentry hook needs it, and loads it itself).
pub fn load(cfg: &Config) -> Result<Ebpf, TraceError> {
    load_with_ring(cfg, DEFAULT_RING_BYTES)
}

/// The kernel→user ring buffer for library users and `oomlab serve`: a daemon on a busy node
/// favours never dropping over 6 MiB of RSS (its pages are mapped twice into the process).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Checks a ring buffer size: the kernel wants a power of two and a whole number of pages.
pub fn ring_bytes(bytes: u64) -> Result<u32, TraceError> {
    let page = crate::sys::page_size();
    // A power of two no smaller than the (power-of-two) page is a whole number of pages.
    if bytes < page || bytes > 1 << 30 || !bytes.is_power_of_two() {
        return Err(TraceError::RingSize { bytes, page });
    }
    Ok(bytes as u32)
}

/// Loads the object with an `EVENTS` ring buffer of `ring_bytes` (see [`ring_bytes`]).
pub fn load_with_ring(cfg: &Config, ring_bytes: u32) -> Result<Ebpf, TraceError> {
    Ok(EbpfLoader::new()
        .btf(None)
        .map_max_entries("EVENTS", ring_bytes)
        .override_global("CONFIG", cfg, true)
        .load(EBPF_OBJECT)?)
}

/// The outcome of trying one of the optional hooks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookResult {
    pub hook: &'static str,
    pub attached: bool,
    /// The exact error when it did not attach.
    pub error: Option<String>,
}

/// Tries kprobe on `oom_kill_process`: load and attach for real.
pub fn try_kprobe(bpf: &mut Ebpf) -> HookResult {
    let result = (|| -> Result<(), String> {
        let prog: &mut KProbe = bpf
            .program_mut("kprobe_oom_kill_process")
            .ok_or("program missing from the object")?
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        prog.load().map_err(|e| format!("load: {e:?}"))?;
        prog.attach("oom_kill_process", 0)
            .map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    })();
    HookResult {
        hook: "kprobe:oom_kill_process",
        attached: result.is_ok(),
        error: result.err(),
    }
}

/// Tries fentry on `oom_kill_process` (needs BTF and the BPF trampoline). The function's BTF id
/// is found by streaming the kernel's BTF (`trace::btf`), not by parsing all of it.
pub fn try_fentry(bpf: &mut Ebpf) -> HookResult {
    let result = (|| -> Result<(), String> {
        let id = super::btf::func_id(Path::new(super::btf::VMLINUX), "oom_kill_process")
            .map_err(|e| format!("BTF: {e}"))?;
        let prog: &mut FEntry = bpf
            .program_mut("fentry_oom_kill_process")
            .ok_or("program missing from the object")?
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        prog.load_with_btf_id(id)
            .map_err(|e| format!("load: {e:?}"))?;
        prog.attach().map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    })();
    HookResult {
        hook: "fentry:oom_kill_process",
        attached: result.is_ok(),
        error: result.err(),
    }
}

/// fentry, else kprobe, on `oom_kill_process`: both on one function would double every event.
pub fn try_hooks(bpf: &mut Ebpf) -> Vec<HookResult> {
    let fentry = try_fentry(bpf);
    let fentry_ok = fentry.attached;
    let mut hooks = vec![fentry];
    if !fentry_ok {
        hooks.push(try_kprobe(bpf));
    }
    for h in &hooks {
        match &h.error {
            None => log::info!("{} attached", h.hook),
            Some(e) => log::info!("{} unavailable: {e}", h.hook),
        }
    }
    hooks
}

/// Loads and attaches one tracepoint program.
pub fn attach_tracepoint(bpf: &mut Ebpf, spec: &TracepointSpec) -> Result<(), TraceError> {
    let what = || format!("tracepoint {}:{}", spec.group, spec.event);
    let prog: &mut TracePoint = bpf
        .program_mut(spec.program)
        .ok_or(TraceError::NoProgram(spec.program))?
        .try_into()
        .map_err(|source| TraceError::Attach {
            what: what(),
            source,
        })?;
    prog.load().map_err(|source| TraceError::Attach {
        what: what(),
        source,
    })?;
    prog.attach(spec.group, spec.event)
        .map_err(|source| TraceError::Attach {
            what: what(),
            source,
        })?;
    Ok(())
}

/// What to attach, and where to look.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Also try kprobe/fentry on `oom_kill_process` (silently skipped where refused).
    pub hooks: bool,
    pub events: EventSet,
    /// Only this cgroup and its descendants (node-wide when `None`).
    pub target: Option<MemCgroup>,
    /// Size of the kernel→user ring buffer (checked by [`ring_bytes`]); a full buffer drops
    /// events in the kernel, counted and reported as `lost`.
    pub ring_bytes: u32,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            hooks: true,
            events: EventSet::ALL,
            target: None,
            ring_bytes: DEFAULT_RING_BYTES,
        }
    }
}

/// Decoded events queued between the ring buffer reader and the consumer.
const CHANNEL_EVENTS: usize = 4096;
/// OOM events (from `OOM_EVENTS`) queued in their own lane, which the consumer empties first.
const OOM_CHANNEL_EVENTS: usize = 1024;

/// The tracer's events, in two lanes: OOM events (victims, reaper steps, kill hooks) and the
/// rest. A consumer that falls behind a flood of adj or reclaim events still gets each OOM event
/// next, not after the thousands queued before it; within a lane the order is the kernel's.
pub struct Events {
    oom: mpsc::Receiver<Event>,
    rest: mpsc::Receiver<Event>,
}

impl Events {
    /// Events fed by hand, for the consumers' tests.
    #[cfg(test)]
    pub(crate) fn from_lanes(oom: mpsc::Receiver<Event>, rest: mpsc::Receiver<Event>) -> Events {
        Events { oom, rest }
    }

    /// The next event, OOM events first; `None` once the reader has ended. Cancel-safe, for
    /// `tokio::select!`.
    pub async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            Some(ev) = self.oom.recv() => Some(ev),
            Some(ev) = self.rest.recv() => Some(ev),
            else => None,
        }
    }

    /// Appends up to `limit` events that are ready (OOM events first), waiting for one if none
    /// is; 0 once the reader has ended. Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        let before = buf.len();
        while buf.len() - before < limit {
            match self.oom.try_recv() {
                Ok(ev) => buf.push(ev),
                Err(_) => break,
            }
        }
        if buf.len() == before {
            match self.recv().await {
                Some(ev) => buf.push(ev),
                None => return 0,
            }
        }
        while buf.len() - before < limit {
            match self.rest.try_recv() {
                Ok(ev) => buf.push(ev),
                Err(_) => break,
            }
        }
        buf.len() - before
    }
}

/// How long the reader waits before it tries the full lane of other events again (the OOM
/// lane is served in between).
const FULL_LANE_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Forwards every record waiting in the OOM ring to the OOM lane; false once the consumer is
/// gone.
fn pump_oom(
    oom_ring: &mut RingBuf<MapData>,
    decode: &mut impl FnMut(&[u8]) -> Option<Event>,
    tx_oom: &mpsc::Sender<Event>,
) -> bool {
    while let Some(item) = oom_ring.next() {
        if let Some(ev) = decode(&item) {
            drop(item);
            if tx_oom.blocking_send(ev).is_err() {
                return false;
            }
        }
    }
    true
}

/// How long the reader thread waits in poll(2) before checking whether to stop.
const READER_POLL_MS: i32 = 100;

/// Records of `EVENTS` read between two looks at `OOM_EVENTS`.
const READER_BATCH: usize = 256;

/// A running tracer. Dropping it detaches every program.
pub struct Tracer {
    bpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    reclaim: Option<PerCpuHashMap<MapData, u64, ReclaimStats>>,
    /// Tells the reader thread to end (it notices within READER_POLL_MS).
    stop: Arc<AtomicBool>,
    logger: Option<JoinHandle<()>>,
    pub tracefs: Tracefs,
    pub hooks: Vec<HookResult>,
    /// The tracepoints attached, `group:event`.
    pub attached: Vec<String>,
    /// How `reclaim_totals` keys are to be read.
    pub reclaim_key: ReclaimKey,
    /// The memory controller's version, when one was found.
    pub memory_version: Option<Version>,
}

/// Counters kept in the kernel, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub produced: u64,
    pub lost: u64,
    /// Of `lost`, OOM events (victims, reaper steps, kill hooks), which have a ring of their own.
    pub lost_oom: u64,
}

/// What the keys of the kernel's reclaim totals are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimKey {
    /// cgroup v2 id of the reclaiming task (its memory cgroup on a v2 node).
    CgroupId,
    /// tgid of the reclaiming task (v1: the memory cgroup is not reachable from eBPF helpers).
    Tgid,
}

/// Reclaim totals the kernel kept for one key since the tracer started (summed over CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReclaimTotal {
    pub key: u64,
    pub count: u64,
    pub nr_reclaimed: u64,
    pub total_ns: u64,
    pub max_ns: u64,
}

fn take<T>(
    bpf: &mut Ebpf,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, TraceError> {
    let map = bpf.take_map(name).ok_or(TraceError::Map(
        name,
        aya::maps::MapError::InvalidName { name: name.into() },
    ))?;
    conv(map).map_err(|e| TraceError::Map(name, e))
}

impl Tracer {
    /// Loads, attaches and starts reading; events arrive on the returned channel, enriched and
    /// filtered to the target. Must run inside a tokio runtime.
    pub fn start(opts: &TraceOptions) -> Result<(Tracer, Events), TraceError> {
        let t0 = std::time::Instant::now();
        let tracefs = ensure_tracefs()?;
        let mut cfg = build_config(&tracefs.path)?;
        let hierarchy = Hierarchy::detect().ok();
        let memory_version = hierarchy.as_ref().map(|h| h.memory_version);
        let reclaim_key = if memory_version == Some(Version::V1) {
            cfg.reclaim_key = common::RECLAIM_KEY_TGID;
            ReclaimKey::Tgid
        } else {
            ReclaimKey::CgroupId
        };
        let mut nodes = Vec::new();
        if let Some(target) = &opts.target {
            nodes = descendants(target).map_err(TraceError::Target)?;
            cfg.filter_root = if target.version == Version::V2 {
                0
            } else {
                memory_hierarchy_id().ok_or(TraceError::NoHierarchyId)?
            };
            cfg.filter_mode = match target.version {
                Version::V1 => common::FILTER_PIDS,
                Version::V2 => common::FILTER_CGROUP_V2,
            };
        }
        let mut bpf = load_with_ring(&cfg, opts.ring_bytes)?;
        log::debug!("formats read and object loaded after {:?}", t0.elapsed());

        // The logger owns the AYA_LOGS map; it must live (and be driven) as long as programs
        // that log are loaded.
        let logger = match aya_log::EbpfLogger::init(&mut bpf) {
            // SAFETY: the logger owns its ring-buffer fd and keeps it open while registered.
            Ok(logger) => match unsafe { AsyncFd::register(logger) } {
                Ok(mut fd) => Some(tokio::spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                })),
                Err(e) => {
                    log::warn!("eBPF log forwarding disabled: {e}");
                    None
                }
            },
            Err(e) => {
                log::debug!("no eBPF logger: {e}");
                None
            }
        };

        // The target's cgroups go in before anything is attached, so the first move into the
        // target is already caught by cgroup_attach_task.
        let mut target_state = None;
        if let Some(target) = &opts.target {
            let cgroups = take(&mut bpf, "FILTER_CGROUP_SET", aya::maps::HashMap::try_from)?;
            // Pids are tracked on v2 too: the cgroup id of `current` cannot tell whether the
            // task an adj write changes is in the target.
            let pids = Some(take(
                &mut bpf,
                "FILTER_PID_SET",
                aya::maps::HashMap::try_from,
            )?);
            let mut st = TargetState {
                path: target.path(),
                mount: target.mount.clone(),
                root: cfg.filter_root,
                cgroups,
                pids,
            };
            for n in &nodes {
                st.cgroups
                    .insert(n.id, 1, 0)
                    .map_err(|e| TraceError::Map("FILTER_CGROUP_SET", e))?;
            }
            target_state = Some(st);
        }

        let skip = layout_mismatches(&tracefs.path)?;
        let mut attached = Vec::new();
        for spec in TRACEPOINTS {
            let wanted = opts.events.wants(spec.class)
                || (opts.target.is_some() && spec.class == EventClass::Cgroup)
                || (spec.class == EventClass::Filter && opts.target.is_some());
            if !wanted && !spec.required {
                continue;
            }
            if skip.contains(&(spec.group, spec.event)) {
                log::warn!(
                    "tracepoint {}:{} has a layout that differs from its sibling on this kernel; not attached",
                    spec.group,
                    spec.event
                );
                continue;
            }
            if read_format(&tracefs.path, spec.group, spec.event)?.is_none() {
                if spec.required {
                    return Err(TraceError::MissingTracepoint {
                        group: spec.group.into(),
                        event: spec.event.into(),
                        path: format_path(&tracefs.path, spec.group, spec.event)
                            .display()
                            .to_string(),
                    });
                }
                log::info!(
                    "tracepoint {}:{} not on this kernel; skipped",
                    spec.group,
                    spec.event
                );
                continue;
            }
            attach_tracepoint(&mut bpf, spec)?;
            attached.push(format!("{}:{}", spec.group, spec.event));
        }

        // Processes now: anything that moves or forks from here on is caught by the kernel;
        // two passes close the gap of a fork during the first one.
        if let Some(st) = target_state.as_mut() {
            for _ in 0..2 {
                for n in &nodes {
                    st.add_procs(&n.cgroup.path());
                }
            }
        }

        log::debug!(
            "{} tracepoints attached after {:?}",
            attached.len(),
            t0.elapsed()
        );
        let mut hooks = Vec::new();
        if opts.hooks && opts.events.oom {
            hooks = try_hooks(&mut bpf);
        }
        log::debug!("optional hooks tried after {:?}", t0.elapsed());
        let stats = take(&mut bpf, "STATS", PerCpuArray::try_from)?;
        let reclaim = if opts.events.reclaim {
            Some(take(&mut bpf, "RECLAIM_STATS", PerCpuHashMap::try_from)?)
        } else {
            None
        };
        let mut ring = take(&mut bpf, "EVENTS", RingBuf::try_from)?;
        let mut oom_ring = take(&mut bpf, "OOM_EVENTS", RingBuf::try_from)?;
        // Bounded: a consumer that falls behind (a slow stdout pipe, a stalled client) makes the
        // reader wait, the ring buffers fill and the kernel count the drops as `lost` — memory
        // stays bounded instead of queueing events here without limit.
        let (tx, rest) = mpsc::channel(CHANNEL_EVENTS);
        let (tx_oom, oom) = mpsc::channel(OOM_CHANNEL_EVENTS);
        let mut enricher = Enricher::new(memory_version, target_state);
        // The reader is an OS thread, not a tokio task: enrichment reads /proc/PID of victims,
        // and the kernel holds a victim's task_lock while it prints `Killed process` to the
        // console (milliseconds on a serial console); on a runtime worker those waits can hold
        // up the consumer's task too.
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("oomlab-ring".into())
            .spawn(move || {
                // Decodes and enriches one record; `None` when it is undecodable or outside the
                // target.
                let mut decode = |item: &[u8]| -> Option<Event> {
                    match Event::decode(item) {
                        Ok(mut ev) => {
                            ev.read_at = monotonic();
                            if log::log_enabled!(log::Level::Trace) {
                                log::trace!(
                                    "event {:?} read {:?} after the kernel stamped it",
                                    std::mem::discriminant(&ev.kind),
                                    ev.read_at.saturating_sub(ev.ts)
                                );
                            }
                            enricher.process(&mut ev).then_some(ev)
                        }
                        Err(e) => {
                            log::warn!("dropping undecodable event: {e}");
                            None
                        }
                    }
                };
                loop {
                    // OOM events first, and again between batches of the others and while the
                    // other lane is full, so neither a flood in `EVENTS` nor a consumer behind
                    // it delays a victim.
                    let mut busy = false;
                    if !pump_oom(&mut oom_ring, &mut decode, &tx_oom) {
                        return;
                    }
                    for _ in 0..READER_BATCH {
                        let Some(item) = ring.next() else { break };
                        busy = true;
                        let Some(mut ev) = decode(&item) else {
                            continue;
                        };
                        drop(item);
                        loop {
                            match tx.try_send(ev) {
                                Ok(()) => break,
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                                Err(mpsc::error::TrySendError::Full(back)) => {
                                    ev = back;
                                    if !pump_oom(&mut oom_ring, &mut decode, &tx_oom) {
                                        return;
                                    }
                                    std::thread::sleep(FULL_LANE_WAIT);
                                }
                            }
                        }
                    }
                    if busy {
                        continue;
                    }
                    if stopping.load(Ordering::Relaxed) || tx.is_closed() {
                        return;
                    }
                    let mut pfds =
                        [ring.as_raw_fd(), oom_ring.as_raw_fd()].map(|fd| libc::pollfd {
                            fd,
                            events: libc::POLLIN,
                            revents: 0,
                        });
                    // SAFETY: two valid pollfds; the rings' fds stay open while they live. The
                    // timeout bounds how long a stop request waits; EINTR simply loops.
                    if unsafe { libc::poll(pfds.as_mut_ptr(), 2, READER_POLL_MS) } < 0
                        && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
                    {
                        log::warn!("ring buffer poll: {}", io::Error::last_os_error());
                        return;
                    }
                }
            })
            .map_err(TraceError::Io)?;
        Ok((
            Tracer {
                bpf,
                stats,
                reclaim,
                stop,
                logger,
                tracefs,
                hooks,
                attached,
                reclaim_key,
                memory_version,
            },
            Events { oom, rest },
        ))
    }

    /// Tries the optional kprobe/fentry hooks now (for callers that started with `hooks: false`
    /// to be ready sooner: finding `oom_kill_process` for fentry parses the kernel's BTF). The
    /// results are also kept in `self.hooks`.
    pub fn try_hooks(&mut self) -> &[HookResult] {
        if self.hooks.is_empty() {
            self.hooks = try_hooks(&mut self.bpf);
        }
        &self.hooks
    }

    /// The kernel's reclaim totals per key since start (empty without the reclaim class).
    pub fn reclaim_totals(&self) -> Vec<ReclaimTotal> {
        let Some(map) = &self.reclaim else {
            return Vec::new();
        };
        map.iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| {
                let mut t = ReclaimTotal {
                    key,
                    count: 0,
                    nr_reclaimed: 0,
                    total_ns: 0,
                    max_ns: 0,
                };
                for s in per_cpu.iter() {
                    t.count += s.count;
                    t.nr_reclaimed += s.nr_reclaimed;
                    t.total_ns += s.total_ns;
                    t.max_ns = t.max_ns.max(s.max_ns);
                }
                t
            })
            .collect()
    }

    /// Events produced and lost (ring buffer full) so far.
    pub fn stats(&self) -> Stats {
        let sum = |i: u32| {
            self.stats
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        Stats {
            produced: sum(stat::PRODUCED),
            lost: sum(stat::DROPPED),
            lost_oom: sum(stat::OOM_DROPPED),
        }
    }

    /// The loaded object, for filters that user space keeps up to date.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = &self.logger {
            l.abort();
        }
        // Each detach waits in the kernel for RCU grace periods (about 75 ms per tracepoint on
        // 6.18): one after the other, 16 programs took 1.2 s, most of `serve`'s SIGTERM time.
        // Detached side by side, they wait for the same grace periods.
        std::thread::scope(|s| {
            for (name, program) in self.bpf.programs_mut() {
                let spawned = std::thread::Builder::new()
                    .name("oomlab-detach".into())
                    .spawn_scoped(s, || unload(name, program));
                if let Err(e) = spawned {
                    log::debug!("detaching {name} on this thread: {e}");
                }
            }
        });
        // What a failed spawn left attached goes now, one by one.
        for (name, program) in self.bpf.programs_mut() {
            unload(name, program);
        }
    }
}

/// Detaches and unloads one program; one that was never loaded is left as it is.
fn unload(name: &str, program: &mut Program) {
    let result = match program {
        Program::TracePoint(p) if p.fd().is_ok() => p.unload(),
        Program::KProbe(p) if p.fd().is_ok() => p.unload(),
        Program::FEntry(p) if p.fd().is_ok() => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = result {
        log::debug!("unloading {name}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::testing::{adj, format_fixture as fixture, pids};

    /// The programs read direct reclaim with the memcg layout and the three reaping events with
    /// wake_reaper's: true on every kernel we have formats of.
    #[test]
    fn shared_layouts_agree_on_every_fixture_kernel() {
        for kernel in ["6.1-debian", "6.12-debian", "6.18-host"] {
            for ((g1, e1), (g2, e2)) in SHARED_LAYOUTS {
                let a = fixture(kernel, g1, e1).unwrap_or_else(|| panic!("{kernel}: {g1}:{e1}"));
                let b = fixture(kernel, g2, e2).unwrap_or_else(|| panic!("{kernel}: {g2}:{e2}"));
                assert!(same_layout(&a, &b), "{kernel}: {e1} vs {e2}");
            }
        }
        let a = fixture("6.18-host", "oom", "wake_reaper").expect("fixture");
        let b = fixture("6.18-host", "oom", "mark_victim").expect("fixture");
        assert!(!same_layout(&a, &b), "different events differ");
    }

    /// Every layout oomlab declares resolves fully on the host kernel, at the offsets its
    /// format file gives (the ones the probes read).
    #[test]
    fn every_layout_is_complete_on_6_18() {
        fn check<const N: usize>(group: &str, event: &str, names: &[&str]) -> [common::Field; N] {
            let f = fixture("6.18-host", group, event).expect("fixture");
            let l: [common::Field; N] = f.layout(names);
            for (i, field) in l.iter().enumerate() {
                assert!(field.is_present(), "{event}: {} missing", names[i]);
            }
            l
        }
        let rb: [_; common::reclaim_begin::N] = check(
            "vmscan",
            "mm_vmscan_memcg_reclaim_begin",
            common::reclaim_begin::FIELDS,
        );
        assert_eq!(
            (
                rb[common::reclaim_begin::ORDER].offset,
                rb[common::reclaim_begin::GFP_FLAGS].offset
            ),
            (8, 16)
        );
        let re: [_; common::reclaim_end::N] = check(
            "vmscan",
            "mm_vmscan_memcg_reclaim_end",
            common::reclaim_end::FIELDS,
        );
        assert_eq!(re[0].offset, 8);
        let rz: [_; common::retry_zone::N] =
            check("oom", "reclaim_retry_zone", common::retry_zone::FIELDS);
        assert_eq!(rz[common::retry_zone::WMARK_CHECK].size, 1);
        let _: [_; common::compact_retry::N] =
            check("oom", "compact_retry", common::compact_retry::FIELDS);
        let _: [_; common::reaper::N] = check("oom", "wake_reaper", common::reaper::FIELDS);
        let _: [_; common::kswapd_wake::N] = check(
            "vmscan",
            "mm_vmscan_kswapd_wake",
            common::kswapd_wake::FIELDS,
        );
        let cd: [_; common::cgroup_dir::N] =
            check("cgroup", "cgroup_mkdir", common::cgroup_dir::FIELDS);
        assert_eq!(cd[common::cgroup_dir::PATH].data_loc, 1);
        let ca: [_; common::cgroup_attach::N] = check(
            "cgroup",
            "cgroup_attach_task",
            common::cgroup_attach::FIELDS,
        );
        assert_eq!(
            (
                ca[common::cgroup_attach::PID].offset,
                ca[common::cgroup_attach::DST_ID].offset
            ),
            (24, 16)
        );
    }

    #[test]
    fn hierarchy_id_from_proc_cgroups() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\nmemory\t4\t120\t1\npids\t0\t1\t1\n";
        assert_eq!(parse_hierarchy_id(text, "memory"), Some(4));
        assert_eq!(parse_hierarchy_id(text, "pids"), Some(0));
        assert_eq!(parse_hierarchy_id(text, "hugetlb"), None);
    }

    #[tokio::test]
    async fn the_oom_lane_goes_first_and_both_keep_their_order() {
        let (tx_oom, oom) = mpsc::channel(8);
        let (tx, rest) = mpsc::channel(8);
        let mut events = Events { oom, rest };
        for p in [1, 2, 3] {
            tx.send(adj(p)).await.expect("send");
        }
        for p in [100, 101] {
            tx_oom.send(adj(p)).await.expect("send");
        }
        let first = events.recv().await.expect("an event");
        assert_eq!(pids(&[first]), [100]);
        let mut buf = Vec::new();
        assert_eq!(events.recv_many(&mut buf, 3).await, 3);
        assert_eq!(pids(&buf), [101, 1, 2]);
        drop((tx, tx_oom));
        assert_eq!(pids(&[events.recv().await.expect("the last one")]), [3]);
        assert!(events.recv().await.is_none(), "both lanes closed and empty");
        assert_eq!(events.recv_many(&mut buf, 3).await, 0);
    }

    #[test]
    fn ring_sizes_are_powers_of_two_in_whole_pages() {
        assert_eq!(ring_bytes(1 << 20).expect("1 MiB"), 1 << 20);
        assert_eq!(ring_bytes(4096).expect("one page"), 4096);
        for bad in [0, 2048, 3 << 20, (1 << 20) + 4096, 2 << 30] {
            let err = ring_bytes(bad).expect_err("refused").to_string();
            assert!(err.contains("power of two"), "{bad}: {err}");
        }
    }

    #[test]
    fn event_classes_parse() {
        let s = EventSet::parse("oom,reclaim").expect("parses");
        assert!(s.oom && s.reclaim && !s.adj && !s.cgroup);
        assert_eq!(EventSet::parse("all"), Ok(EventSet::ALL));
        assert!(EventSet::parse("oom,bogus").unwrap_err().contains("bogus"));
        assert!(EventSet::parse("").is_err());
        assert!(TRACEPOINTS.iter().filter(|t| t.required).count() == 1);
    }
}
