//! One module per kernel subsystem, as kunai lays out its probes, and one for the optional
//! hooks on `oom_kill_process`.
mod cgroup;
mod hooks;
mod oom;
mod reclaim;
