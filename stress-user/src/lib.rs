//! oomlab: injects memory pressure inside a target cgroup and traces the kernel's reaction
//! (OOM victims, `oom_score_adj`, reclaim, cgroup lifecycle) with eBPF tracepoints.

pub mod cgroup;
pub mod cli;
pub mod doctor;
pub mod experiment;
pub mod explain;
pub mod inject;
pub mod process;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod size;
pub mod stop;
pub mod sys;
pub mod trace;
