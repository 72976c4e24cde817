//! `oomlab app`: allocates and holds memory like a small service, so experiments and tests have
//! a real "application" in a cgroup with a chosen `oom_score_adj`.

use std::{fs, io::Write as _, thread, time::Duration};

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
    /// On SIGUSR1 allocate this much more, on SIGUSR2 free it again (an app whose working set
    /// changes, for `oomlab inject --working-set`).
    #[arg(long, value_name = "SIZE")]
    grow: Option<SizeSpec>,
    /// Rename itself (`prctl(PR_SET_NAME)`) before allocating: tests give the app the names a
    /// tenant could choose (newlines, commas, escapes) to check the tracer against them.
    #[arg(long, hide = true)]
    comm: Option<String>,
    /// Every 100 ms allocate and touch 1 MiB more (then free it), and print once a second how
    /// long that took (mean and worst): what an app feels when memory is tight (`inject
    /// --pressure`).
    #[arg(long, conflicts_with = "grow")]
    latency: bool,
}

/// A line on stdout, flushed (whoever started the app waits for it). SIGPIPE is ignored: a
/// closed stdout is an error that ends the app quietly with exit 141 (see `cli::run`).
fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

static GROW: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_grow_signal(sig: libc::c_int) {
    GROW.store(sig, std::sync::atomic::Ordering::SeqCst);
}

/// Holds `extra` bytes more while SIGUSR1 was the last signal, frees them on SIGUSR2.
fn hold_with_grow(extra: u64, duration: Option<Duration>) -> anyhow::Result<()> {
    let end = duration.map(|d| std::time::Instant::now() + d);
    let mut grown: Option<Region> = None;
    while end.is_none_or(|e| std::time::Instant::now() < e) {
        match GROW.swap(0, std::sync::atomic::Ordering::SeqCst) {
            libc::SIGUSR1 if grown.is_none() => {
                let len = usize::try_from(extra).context("size does not fit in memory")?;
                grown = Some(Region::anon(len, AllocOptions::default())?);
                say(&format!(
                    "app {} grew by {}",
                    std::process::id(),
                    human(extra)
                ))?;
            }
            libc::SIGUSR2 if grown.is_some() => {
                grown = None;
                say(&format!(
                    "app {} shrank by {}",
                    std::process::id(),
                    human(extra)
                ))?;
            }
            _ => {}
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The latency probe: 1 MiB allocated and touched every 100 ms, timed, one line a second
/// (`app PID latency mean 0.41 ms max 0.90 ms (1 MiB alloc+touch x10)`).
fn report_latency(duration: Option<Duration>) -> anyhow::Result<()> {
    let end = duration.map(|d| std::time::Instant::now() + d);
    let mut times: Vec<f64> = Vec::new();
    let mut next_report = std::time::Instant::now() + Duration::from_secs(1);
    while end.is_none_or(|e| std::time::Instant::now() < e) {
        let t0 = std::time::Instant::now();
        let probe = Region::anon(1 << 20, AllocOptions::default()).context("latency probe")?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        drop(probe);
        if std::time::Instant::now() >= next_report && !times.is_empty() {
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let max = times.iter().copied().fold(0.0, f64::max);
            println!(
                "app {} latency mean {mean:.2} ms max {max:.2} ms (1 MiB alloc+touch x{})",
                std::process::id(),
                times.len()
            );
            times.clear();
            next_report += Duration::from_secs(1);
        }
        thread::sleep(Duration::from_millis(100).saturating_sub(t0.elapsed()));
    }
    Ok(())
}

pub(super) fn run(args: &Args) -> anyhow::Result<i32> {
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
    if let Some(comm) = &args.comm {
        crate::sys::set_comm(comm).context("setting the comm")?;
    }
    if let Some(adj) = args.oom_score_adj {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .context("setting /proc/self/oom_score_adj")?;
    }
    if args.grow.is_some() {
        // Before "holding" is printed: a caller may signal as soon as it reads that line.
        for sig in [libc::SIGUSR1, libc::SIGUSR2] {
            // SAFETY: the handler only stores to an atomic.
            unsafe { libc::signal(sig, on_grow_signal as *const () as libc::sighandler_t) };
        }
    }
    let region = Region::anon(
        usize::try_from(bytes).context("size does not fit in memory")?,
        AllocOptions::default(),
    )
    .with_context(|| format!("allocating {}", human(bytes)))?;
    say(&format!(
        "app {} holding {}",
        std::process::id(),
        human(region.len() as u64)
    ))?;
    if let Some(grow) = args.grow {
        let extra = match grow.resolve(None) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("oomlab app: --grow: {e}");
                return Ok(exit::USAGE);
            }
        };
        hold_with_grow(extra, args.duration)?;
        drop(region);
        return Ok(exit::OK);
    }
    if args.latency {
        report_latency(args.duration)?;
        drop(region);
        return Ok(exit::OK);
    }
    match args.duration {
        Some(d) => thread::sleep(d),
        None => loop {
            thread::sleep(Duration::from_secs(3600));
        },
    }
    drop(region);
    Ok(exit::OK)
}
