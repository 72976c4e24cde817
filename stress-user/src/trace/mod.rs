//! The tracer: loads the eBPF programs with this kernel's tracepoint layouts, attaches them and
//! turns the ring buffer into typed, enriched events filtered to the target.

mod attach;
pub mod badness;
pub mod btf;
mod catalogue;
mod config;
pub mod enrich;
pub mod episode;
mod error;
pub mod event;
pub mod format;
pub mod kmsg;
pub mod pump;
mod reader;
pub mod scoreboard;
#[cfg(test)]
pub(crate) mod testing;
mod tracefs;
mod tracer;

pub use attach::{
    attach_tracepoint, load, load_with_ring, ring_bytes, try_fentry, try_hooks, try_kprobe,
    HookResult, DEFAULT_RING_BYTES, EBPF_OBJECT,
};
pub use catalogue::{
    EventClass, EventSet, TracepointName, TracepointSpec, SHARED_LAYOUTS, TRACEPOINTS,
};
pub use config::{
    build_config, layout_mismatches, memory_hierarchy_id, parse_hierarchy_id, same_layout,
    ReclaimKey,
};
pub use error::TraceError;
pub use event::{Event, EventKind};
pub use reader::{Events, FirstWriter};
pub use tracefs::{ensure_tracefs, format_path, read_format, Tracefs};
pub use tracer::{OwnWorkers, ReclaimTotal, Stats, TraceOptions, Tracer};
