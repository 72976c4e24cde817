//! Experiments: a file (or the built-in demo) that sets up a target, starts apps in it, injects
//! in stages while the tracer watches, and checks expectations at the end — one process, one
//! clock, so kernel events and injector samples line up.

mod apps;
mod collector;
pub mod expect;
mod report_build;
pub mod runner;
mod sampler;
pub mod spec;
mod stage_plan;
mod target;
mod trace_feed;

pub use spec::{parse, Experiment, SpecError};

/// The built-in demo: the seed story as a file, so `oomlab run` and `oomlab run
/// examples/seed-story.toml` are the same experiment.
pub const DEMO: &str = include_str!("../../../examples/seed-story.toml");
