//! `cargo xtask bench <name>`: figures printed as ratios against a peer tool measured in the
//! same run (never timed assertions in tests).

mod inject;
mod trace;

use anyhow::Result;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Bench {
    /// Time to charge 2 GiB / 8 GiB vs stress-ng; CPU while holding; accuracy.
    Inject,
    /// Time to ready, RSS, overhead, OOM-storm recall and latency vs bpftrace.
    Trace,
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Inject => inject::run(),
        Bench::Trace => trace::run(),
    }
}
