//! `cargo xtask bench <name>`: figures printed as ratios against a peer tool measured in the
//! same run (never timed assertions in tests).

mod cgroup;
mod inject;
mod overhead;
mod pressure;
mod scale;
mod serve;
mod trace;
mod traced;

use anyhow::Result;
pub(crate) use inject::{raw_populate, RAW_POPULATE};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Bench {
    /// Time to charge 2 GiB / 8 GiB vs stress-ng and a raw MAP_POPULATE; CPU holding; accuracy.
    Inject,
    /// Time to ready, RSS, overhead, OOM-storm recall and latency vs bpftrace.
    Trace,
    /// In-kernel ns/event (BPF stats) and wall overhead under five workloads vs bpftrace.
    Overhead,
    /// 5,000 cgroups, 1,000/min churn (OOMLAB_SCALE_MINUTES), trace --cgroup of 3,000 processes.
    Scale,
    /// `inject --pressure` at 5/10/20/40 % some, node PSI on the host and the target's own in
    /// the v2 guests (OOMLAB_BENCH_PRESSURE=host|vm): settling, error, CPU, vs stress-ng
    /// --vm-keep at the same usage.
    Pressure,
    /// `oomlab serve` soak (OOMLAB_SOAK_SECS, default 600): RSS growth, recall, SIGTERM time.
    Serve,
}

pub(crate) fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Inject => inject::run(),
        Bench::Trace => trace::run(),
        Bench::Pressure => pressure::run(),
        Bench::Serve => serve::run(),
        Bench::Overhead => overhead::run(),
        Bench::Scale => scale::run(),
    }
}

/// The middle of the samples (the mean of the two middle ones for an even count); NaN for none.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
