//! Loads the embedded eBPF object with this kernel's tracepoint layouts, attaches the programs
//! and turns the ring buffer into a stream of typed [`Event`]s on a channel.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, KProbe, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use stress_common::{self as common, stat, Config};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

use super::{
    event::Event,
    format::{Format, FormatError},
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
    #[error("ring buffer polling: {0}")]
    Io(#[from] io::Error),
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

/// One tracepoint oomlab uses: where it lives and which eBPF program serves it.
#[derive(Debug, Clone, Copy)]
pub struct TracepointSpec {
    pub group: &'static str,
    pub event: &'static str,
    pub program: &'static str,
    /// oomlab cannot trace OOMs without it.
    pub required: bool,
}

/// Every tracepoint oomlab attaches, in attach order.
pub const TRACEPOINTS: &[TracepointSpec] = &[
    TracepointSpec {
        group: "oom",
        event: "mark_victim",
        program: "mark_victim",
        required: true,
    },
    TracepointSpec {
        group: "oom",
        event: "oom_score_adj_update",
        program: "oom_score_adj_update",
        required: false,
    },
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

/// Builds the eBPF config from the running kernel's `format` files.
pub fn build_config(tracefs: &Path) -> Result<Config, FormatError> {
    let mut cfg = Config::zeroed();
    if let Some(f) = read_format(
        tracefs,
        common::mark_victim::GROUP,
        common::mark_victim::EVENT,
    )? {
        cfg.mark_victim = f.layout(common::mark_victim::FIELDS);
    }
    if let Some(f) = read_format(
        tracefs,
        common::adj_update::GROUP,
        common::adj_update::EVENT,
    )? {
        cfg.adj_update = f.layout(common::adj_update::FIELDS);
    }
    Ok(cfg)
}

/// Loads the embedded object with `cfg` as its `CONFIG` global. Nothing is attached yet.
pub fn load(cfg: &Config) -> Result<Ebpf, TraceError> {
    Ok(EbpfLoader::new()
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

/// Tries fentry on `oom_kill_process` (needs BTF and the BPF trampoline).
pub fn try_fentry(bpf: &mut Ebpf) -> HookResult {
    let result = (|| -> Result<(), String> {
        let btf = Btf::from_sys_fs().map_err(|e| format!("BTF: {e:?}"))?;
        let prog: &mut FEntry = bpf
            .program_mut("fentry_oom_kill_process")
            .ok_or("program missing from the object")?
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        prog.load("oom_kill_process", &btf)
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

/// What to attach.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Also try kprobe/fentry on `oom_kill_process` (silently skipped where refused).
    pub hooks: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { hooks: true }
    }
}

/// A running tracer. Dropping it detaches every program.
pub struct Tracer {
    bpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    reader: JoinHandle<()>,
    logger: Option<JoinHandle<()>>,
    pub tracefs: Tracefs,
    pub hooks: Vec<HookResult>,
}

/// Counters kept in the kernel, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub produced: u64,
    pub lost: u64,
}

impl Tracer {
    /// Loads, attaches and starts reading; events arrive on the returned channel. Must run
    /// inside a tokio runtime.
    pub fn start(
        opts: &TraceOptions,
    ) -> Result<(Tracer, mpsc::UnboundedReceiver<Event>), TraceError> {
        let tracefs = ensure_tracefs()?;
        let cfg = build_config(&tracefs.path)?;
        let mut bpf = load(&cfg)?;

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

        for spec in TRACEPOINTS {
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
        }

        let mut hooks = Vec::new();
        if opts.hooks {
            let fentry = try_fentry(&mut bpf);
            // kprobe only when fentry failed: both on one function would double every event.
            let fentry_ok = fentry.attached;
            hooks.push(fentry);
            if !fentry_ok {
                hooks.push(try_kprobe(&mut bpf));
            }
            for h in &hooks {
                match &h.error {
                    None => log::info!("{} attached", h.hook),
                    Some(e) => log::info!("{} unavailable: {e}", h.hook),
                }
            }
        }

        let stats_map = bpf.take_map("STATS").ok_or(TraceError::Map(
            "STATS",
            aya::maps::MapError::InvalidName {
                name: "STATS".into(),
            },
        ))?;
        let stats = PerCpuArray::try_from(stats_map).map_err(|e| TraceError::Map("STATS", e))?;
        let events_map = bpf.take_map("EVENTS").ok_or(TraceError::Map(
            "EVENTS",
            aya::maps::MapError::InvalidName {
                name: "EVENTS".into(),
            },
        ))?;
        let ring = RingBuf::try_from(events_map).map_err(|e| TraceError::Map("EVENTS", e))?;
        // SAFETY: the RingBuf owns the map fd and is moved into the AsyncFd, which never outlives it.
        let mut fd =
            unsafe { AsyncFd::register(ring) }.map_err(|e| TraceError::Io(e.into_parts().1))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    break;
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match Event::decode(&item) {
                        Ok(ev) => {
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                        Err(e) => log::warn!("dropping undecodable event: {e}"),
                    }
                }
                guard.clear_ready();
            }
        });
        Ok((
            Tracer {
                bpf,
                stats,
                reader,
                logger,
                tracefs,
                hooks,
            },
            rx,
        ))
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
        }
    }

    /// The loaded object, for filters that user space keeps up to date.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.bpf
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(l) = &self.logger {
            l.abort();
        }
    }
}
