//! `oomlab cleanup`: removes scratch cgroups under `oomlab/` that a killed agent left behind.

use crate::{
    cgroup::{find_leftovers, remove_leftover, Hierarchy, OWNED_PARENT},
    cli::exit,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
}

pub(super) fn run(args: &Args) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("oomlab cleanup: must run as root (it removes cgroups under /{OWNED_PARENT})");
        return Ok(exit::USAGE);
    }
    let hier = Hierarchy::detect()?;
    // Scratch cgroups without an owner record are removed only when empty: nothing running
    // there can be hurt.
    let leftovers = find_leftovers(&hier, true);
    if leftovers.is_empty() {
        println!("no leftover scratch cgroups under /{OWNED_PARENT}");
        return Ok(exit::OK);
    }
    let mut failed = false;
    for l in &leftovers {
        let owner = l
            .owner
            .map_or("no owner record".into(), |p| format!("agent {p} is gone"));
        if args.dry_run {
            println!(
                "would remove {} ({owner}, {} processes)",
                l.cgroup.path(),
                l.procs
            );
            continue;
        }
        match remove_leftover(l) {
            Ok(()) => println!(
                "removed {} ({owner}, killed {} processes)",
                l.cgroup.path(),
                l.procs
            ),
            Err(e) => {
                failed = true;
                eprintln!("oomlab cleanup: could not remove {}: {e}", l.cgroup.path());
            }
        }
    }
    Ok(if failed { exit::FAILED } else { exit::OK })
}
