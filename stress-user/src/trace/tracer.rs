//! The running tracer: loads the object with this kernel's layouts and the target's filter,
//! attaches the programs, starts the ring-buffer reader, and detaches everything when dropped.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    Ebpf,
};
use stress_common::{stat, Config, ReclaimStats};
use tokio::{io::unix::AsyncFd, task::JoinHandle};

use super::{
    attach::{
        attach_tracepoints, load_with_ring, try_hooks, unload, HookResult, DEFAULT_RING_BYTES,
    },
    catalogue::EventSet,
    config::{build_config, set_filter, set_reclaim_key, ReclaimKey},
    enrich::{Enricher, TargetState, VictimLedger},
    error::TraceError,
    reader::{self, Events},
    tracefs::{ensure_tracefs, Tracefs},
};
use crate::cgroup::{target::CgroupNode, Hierarchy, MemCgroup, Version};

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
    /// This process starts workers and tells the kernel their pids ([`Tracer::own_workers`]):
    /// a victim's `oomlab_worker` then comes from that set, not from its comm.
    pub own_workers: bool,
    /// Container names for victims (see `runtime::cache`); `None`: cgroup naming only.
    pub names: Option<crate::runtime::cache::Names>,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            hooks: true,
            events: EventSet::ALL,
            target: None,
            ring_bytes: DEFAULT_RING_BYTES,
            own_workers: false,
            names: None,
        }
    }
}

/// A running tracer. Dropping it detaches every program.
pub struct Tracer {
    bpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    reclaim: Option<PerCpuHashMap<MapData, u64, ReclaimStats>>,
    /// Tells the reader thread to end (it notices within a poll timeout, 100 ms).
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
    own_workers: Option<OwnWorkers>,
    ledger: VictimLedger,
}

/// The kernel's set of this oomlab's own workers (`OWN_WORKERS`), which `oom:mark_victim` looks
/// a victim up in: a worker's pid goes in as soon as it is started, and the kernel drops it when
/// the worker exits.
#[derive(Clone)]
pub struct OwnWorkers(Arc<Mutex<aya::maps::HashMap<MapData, u32, u8>>>);

impl OwnWorkers {
    pub fn add(&self, pid: i32) {
        let Ok(pid) = u32::try_from(pid) else {
            return;
        };
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = map.insert(pid, 1, 0) {
            log::warn!("OWN_WORKERS: cannot add worker {pid}: {e}; its kill is told by its comm");
        }
    }
}

/// Counters kept in the kernel, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub produced: u64,
    pub lost: u64,
    /// Of `lost`, OOM events (victims, reaper steps, kill hooks), which have a ring of their own.
    pub lost_oom: u64,
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

/// Takes one map out of the object, as the type `conv` makes of it.
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
        let t0 = Instant::now();
        let tracefs = ensure_tracefs()?;
        let mut cfg = build_config(&tracefs.path)?;
        let memory_version = Hierarchy::detect().ok().map(|h| h.memory_version);
        let reclaim_key = set_reclaim_key(&mut cfg, memory_version);
        let nodes = match &opts.target {
            Some(target) => set_filter(&mut cfg, target)?,
            None => Vec::new(),
        };
        let mut bpf = load_with_ring(&cfg, opts.ring_bytes)?;
        log::debug!("formats read and object loaded after {:?}", t0.elapsed());
        let logger = forward_logs(&mut bpf);

        // The target's cgroups go in before anything is attached, so the first move into the
        // target is already caught by cgroup_attach_task.
        let mut target_state = match &opts.target {
            Some(target) => Some(target_state(&mut bpf, &cfg, target, &nodes)?),
            None => None,
        };
        let attached =
            attach_tracepoints(&mut bpf, &tracefs.path, opts.events, opts.target.is_some())?;
        // Processes now: anything that moves or forks from here on is caught by the kernel;
        // two passes close the gap of a fork during the first one.
        if let Some(st) = target_state.as_mut() {
            let mut known = HashSet::new();
            for _ in 0..2 {
                for n in &nodes {
                    st.add_procs_except(&n.cgroup.path(), &mut known);
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
        let ring = take(&mut bpf, "EVENTS", RingBuf::try_from)?;
        let oom_ring = take(&mut bpf, "OOM_EVENTS", RingBuf::try_from)?;
        let own_workers = if opts.own_workers {
            let map = take(&mut bpf, "OWN_WORKERS", aya::maps::HashMap::try_from)?;
            Some(OwnWorkers(Arc::new(Mutex::new(map))))
        } else {
            None
        };
        let mut enricher = Enricher::new(memory_version, target_state, opts.names.clone());
        if own_workers.is_some() {
            enricher = enricher.with_own_workers();
        }
        if attached.iter().any(|a| a == "cgroup:cgroup_attach_task") {
            enricher = enricher.with_moves_seen();
        }
        if attached.iter().any(|a| a == "signal:signal_generate") {
            enricher = enricher.with_kills_seen();
        }
        let named = take(&mut bpf, "NAMED_TGIDS", aya::maps::HashMap::try_from)?;
        enricher = enricher.with_named(named);
        let ledger = enricher.ledger();
        let (stop, events) = reader::spawn(ring, oom_ring, enricher)?;
        let tracer = Tracer {
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
            own_workers,
            ledger,
        };
        Ok((tracer, events))
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

    /// Every victim the kernel delivered, before the target filter (for
    /// [`Episodes::use_victims`](super::episode::Episodes::use_victims)).
    pub fn victim_ledger(&self) -> VictimLedger {
        self.ledger.clone()
    }

    /// The kernel's own-worker set, with [`TraceOptions::own_workers`].
    pub fn own_workers(&self) -> Option<OwnWorkers> {
        self.own_workers.clone()
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

/// Forwards the programs' log messages to `log`. The logger owns the AYA_LOGS map; it must live
/// (and be driven) as long as programs that log are loaded.
fn forward_logs(bpf: &mut Ebpf) -> Option<JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init(bpf) {
        Ok(logger) => logger,
        Err(e) => {
            log::debug!("no eBPF logger: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd and keeps it open while registered.
    match unsafe { AsyncFd::register(logger) } {
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
    }
}

/// The filter maps, with the target's cgroups in them.
fn target_state(
    bpf: &mut Ebpf,
    cfg: &Config,
    target: &MemCgroup,
    nodes: &[CgroupNode],
) -> Result<TargetState, TraceError> {
    let cgroups = take(bpf, "FILTER_CGROUP_SET", aya::maps::HashMap::try_from)?;
    // Pids are tracked on v2 too: the cgroup id of `current` cannot tell whether the task an adj
    // write changes is in the target.
    let pids = Some(take(bpf, "FILTER_PID_SET", aya::maps::HashMap::try_from)?);
    let mut st = TargetState {
        path: target.path(),
        mount: target.mount.clone(),
        root: cfg.filter_root,
        cgroups,
        pids,
    };
    for n in nodes {
        st.cgroups
            .insert(n.id, 1, 0)
            .map_err(|e| TraceError::Map("FILTER_CGROUP_SET", e))?;
    }
    Ok(st)
}
