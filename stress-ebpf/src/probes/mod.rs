//! One module per kernel subsystem, as kunai lays out its probes.
mod hooks;
mod oom;
