//! `oomlab app`: allocates and holds memory like a small service, so experiments and tests have
//! a real "application" in a cgroup with a chosen `oom_score_adj`.

use std::{fs, thread, time::Duration};

use anyhow::Context as _;

use crate::{
    cgroup::Hierarchy,
    cli::exit,
    inject::alloc::{AllocOptions, Region},
    size::{human, SizeSpec},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Memory to allocate and hold (e.g. 40MiB).
    #[arg(long)]
    size: SizeSpec,
    /// oom_score_adj to set on itself before allocating (−1000…1000).
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    oom_score_adj: Option<i32>,
    /// Join this memory cgroup (relative to the controller's mount) before allocating.
    #[arg(long)]
    cgroup: Option<String>,
    /// Hold for this long, then exit (default: until killed).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let bytes = match args.size.resolve(None) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("oomlab app: {e}");
            return Ok(exit::USAGE);
        }
    };
    if let Some(path) = &args.cgroup {
        let cg = Hierarchy::detect()?.resolve(path)?;
        cg.add_proc(0)
            .with_context(|| format!("joining {}", cg.path()))?;
    }
    if let Some(adj) = args.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .context("setting /proc/self/oom_score_adj")?;
    }
    let region = Region::anon(
        usize::try_from(bytes).context("size does not fit in memory")?,
        AllocOptions::default(),
    )
    .with_context(|| format!("allocating {}", human(bytes)))?;
    println!(
        "app {} holding {}",
        std::process::id(),
        human(region.len() as u64)
    );
    match args.duration {
        Some(d) => thread::sleep(d),
        None => loop {
            thread::sleep(Duration::from_secs(3600));
        },
    }
    drop(region);
    Ok(exit::OK)
}
