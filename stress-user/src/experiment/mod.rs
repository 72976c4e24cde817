//! Experiments: a file (or the built-in demo) that sets up a target, starts apps in it, injects
//! in stages while the tracer watches, and checks expectations at the end — one process, one
//! clock, so kernel events and injector samples line up.

mod apps;
pub mod expect;
pub mod runner;
pub mod spec;

pub use spec::{parse, Experiment, SpecError};

/// The built-in demo: the seed story as a file, so `oomlab run` and `oomlab run
/// examples/seed-story.toml` are the same experiment.
pub const DEMO: &str = include_str!("../../../examples/seed-story.toml");
