//! One module per kernel subsystem, as kunai lays out its probes.
mod cgroup;
mod hooks;
mod oom;
mod reclaim;
