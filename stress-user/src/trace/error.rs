//! What can go wrong between finding tracefs and reading the ring buffer, each with what the
//! user can do about it.

use std::io;

use super::format::FormatError;
use crate::cgroup::CgroupError;

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
