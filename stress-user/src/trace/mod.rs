//! The tracer: loads the eBPF programs with this kernel's tracepoint layouts, attaches them and
//! turns the ring buffer into typed, enriched events filtered to the target.

pub mod badness;
pub mod btf;
pub mod enrich;
pub mod episode;
pub mod event;
pub mod format;
pub mod kmsg;
mod loader;
pub mod pump;
pub mod scoreboard;
#[cfg(test)]
mod testing;

pub use event::{Event, EventKind};
pub use loader::{
    attach_tracepoint, build_config, ensure_tracefs, format_path, layout_mismatches, load,
    load_with_ring, memory_hierarchy_id, parse_hierarchy_id, read_format, ring_bytes, same_layout,
    try_fentry, try_hooks, try_kprobe, EventClass, EventSet, Events, HookResult, ReclaimKey,
    ReclaimTotal, Stats, TraceError, TraceOptions, Tracefs, TracepointSpec, Tracer,
    DEFAULT_RING_BYTES, EBPF_OBJECT, SHARED_LAYOUTS, TRACEPOINTS, USED_TRACEPOINTS,
};
