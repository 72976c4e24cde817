//! The tracer: loads the eBPF programs with this kernel's tracepoint layouts, attaches them and
//! turns the ring buffer into typed events.

pub mod event;
pub mod format;
mod loader;

pub use event::{Event, EventKind};
pub use loader::{
    attach_tracepoint, build_config, ensure_tracefs, format_path, load, read_format, try_fentry,
    try_kprobe, HookResult, Stats, TraceError, TraceOptions, Tracefs, TracepointSpec, Tracer,
    EBPF_OBJECT, TRACEPOINTS, USED_TRACEPOINTS,
};
