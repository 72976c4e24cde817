//! `oomlab trace`: kernel events as they happen — OOM victims, `oom_score_adj` writes, reclaim
//! (summarised per cgroup), cgroup lifecycle — node-wide or for one target and its descendants.

use std::{
    io::{BufWriter, Write},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{Instant, Interval},
};

use crate::{
    cgroup::{
        target::{self, TargetArgs},
        Hierarchy, MemCgroup,
    },
    cli::exit,
    report::{
        self, event_json_line, json_line,
        trace::{human_line, human_reclaim_line, ReclaimSummary},
        OutputFormat,
    },
    runtime::{cache::Names, RuntimeArgs, Runtimes},
    sys::monotonic,
    trace::{
        enrich::cgroup_of_pid,
        episode::{Episode, Episodes},
        pump::{drive, sleep_until, Consumer, Pump},
        Event, EventKind, EventSet, ReclaimKey, Stats, TraceOptions, Tracer,
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Event classes: any of oom, adj, reclaim, cgroup, comma-separated.
    #[arg(long, default_value = "oom,adj,reclaim,cgroup", value_parser = EventSet::parse)]
    events: EventSet,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// How often the per-cgroup reclaim summary is printed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    summary_interval: Duration,
    /// Do not try the optional kprobe/fentry hooks on `oom_kill_process` (tried right after
    /// `ready`; kernels that refuse them say why in the `hooks` line).
    #[arg(long)]
    no_hooks: bool,
    /// Size of the kernel→user ring buffer (a power of two, ≥ one page). Its pages are mapped
    /// twice into oomlab, so it counts double in RSS; when it overflows the kernel drops events
    /// and oomlab reports how many (`lost`). 1 MiB holds ~13 000 adj or ~7 000 OOM events.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_ring)]
    ring_buffer: u32,
    /// JSON only: add `wts`, CLOCK_MONOTONIC seconds when the line was written, and `rts`, when
    /// the event was read from the ring buffer (to measure kernel-to-output latency against `ts`).
    #[arg(long, hide = true)]
    write_stamps: bool,
    /// Print the current oom_score and oom_score_adj of every process in the target (or on the
    /// node), highest first, and exit without tracing.
    #[arg(long)]
    scoreboard: bool,
}

fn parse_ring(text: &str) -> Result<u32, String> {
    let bytes = crate::size::SizeSpec::parse(text)
        .and_then(|s| s.resolve(None))
        .map_err(|e| e.to_string())?;
    crate::trace::ring_bytes(bytes).map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct Scoreboard<'a> {
    ts: f64,
    target: Option<String>,
    processes: &'a [crate::trace::scoreboard::Entry],
}

#[derive(Serialize)]
struct Ready<'a> {
    ts: f64,
    tracefs: String,
    target: Option<String>,
    events: Vec<&'static str>,
    attached: &'a [String],
}

#[derive(Serialize)]
struct Hooks<'a> {
    ts: f64,
    hooks: &'a [crate::trace::HookResult],
}

#[derive(Serialize)]
struct Lost {
    ts: f64,
    produced: u64,
    lost: u64,
    /// Of `lost`, OOM events (their ring is separate, so only an OOM storm itself can fill it).
    lost_oom: u64,
}

/// A `reclaim_summary` JSON line: the reclaim folded since the last one.
#[derive(Serialize)]
struct ReclaimSummaryLine<'a> {
    ts: f64,
    #[serde(flatten)]
    row: &'a report::trace::ReclaimRow,
}

fn class_names(set: &EventSet) -> Vec<&'static str> {
    [
        (set.oom, "oom"),
        (set.adj, "adj"),
        (set.reclaim, "reclaim"),
        (set.cgroup, "cgroup"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect()
}

pub(super) fn run(args: Args) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

struct Sink<W: Write> {
    out: W,
    fmt: OutputFormat,
    events: EventSet,
    write_stamps: bool,
    summary: ReclaimSummary,
    reclaim_key: ReclaimKey,
}

impl<W: Write> Sink<W> {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        // Cgroup events are attached for a target filter even when not asked for.
        if !self.events.wants(ev.kind.class()) {
            return Ok(());
        }
        match &ev.kind {
            EventKind::Reclaim(r) => {
                let key = match self.reclaim_key {
                    ReclaimKey::Tgid => u64::from(r.task.tgid),
                    ReclaimKey::CgroupId => r.task.cgroup_id,
                };
                self.summary.add(r, key);
            }
            EventKind::KswapdWake(_) => self.summary.add_kswapd_wake(),
            _ => {}
        }
        match self.fmt {
            OutputFormat::Json => {
                if self.write_stamps {
                    let mut v = serde_json::to_value(ev).map_err(std::io::Error::other)?;
                    v["wts"] = monotonic().as_secs_f64().into();
                    v["rts"] = ev.read_at.as_secs_f64().into();
                    v["ets"] = ev.enriched_at.as_secs_f64().into();
                    json_line(&mut self.out, report::event_type(ev.kind.tag()), &v)
                } else {
                    event_json_line(&mut self.out, ev)
                }
            }
            OutputFormat::Human => match human_line(ev) {
                Some(line) => {
                    writeln!(self.out, "{line}")?;
                    self.out.flush()
                }
                None => Ok(()),
            },
        }
    }

    fn summary(&mut self, tracer: &Tracer) -> std::io::Result<()> {
        if !self.events.reclaim {
            return Ok(());
        }
        let totals = tracer.reclaim_totals();
        let key = self.reclaim_key;
        let rows = self.summary.take(&totals, |k| match key {
            ReclaimKey::Tgid => u32::try_from(k)
                .ok()
                .and_then(|tgid| cgroup_of_pid(tgid, tracer.memory_version?)),
            ReclaimKey::CgroupId => None,
        });
        let now = monotonic();
        for row in &rows {
            match self.fmt {
                OutputFormat::Json => json_line(
                    &mut self.out,
                    "reclaim_summary",
                    &ReclaimSummaryLine {
                        ts: now.as_secs_f64(),
                        row,
                    },
                )?,
                OutputFormat::Human => writeln!(self.out, "{}", human_reclaim_line(now, row))?,
            }
        }
        self.out.flush()
    }

    fn episode(&mut self, ep: &Episode) -> std::io::Result<()> {
        match self.fmt {
            OutputFormat::Json => json_line(&mut self.out, "oom_episode", ep),
            OutputFormat::Human => report::episode::render_human(ep, &mut self.out),
        }
    }

    fn lost(&mut self, stats: Stats) -> std::io::Result<()> {
        let ts = monotonic().as_secs_f64();
        match self.fmt {
            OutputFormat::Json => json_line(
                &mut self.out,
                "lost",
                &Lost {
                    ts,
                    produced: stats.produced,
                    lost: stats.lost,
                    lost_oom: stats.lost_oom,
                },
            ),
            OutputFormat::Human => {
                writeln!(
                    self.out,
                    "{ts:>14.6}  END       {} events from the kernel, {} lost (ring buffer full), {} of them OOM events",
                    stats.produced, stats.lost, stats.lost_oom
                )?;
                self.out.flush()
            }
        }
    }
}

impl<W: Write> Sink<W> {
    /// `ready`: what is traced and where. Every tracepoint is attached by then.
    fn ready(&mut self, tracer: &Tracer, target: Option<&str>) -> std::io::Result<()> {
        match self.fmt {
            OutputFormat::Json => json_line(
                &mut self.out,
                "ready",
                &Ready {
                    ts: monotonic().as_secs_f64(),
                    tracefs: tracer.tracefs.path.display().to_string(),
                    target: target.map(str::to_owned),
                    events: class_names(&self.events),
                    attached: &tracer.attached,
                },
            ),
            OutputFormat::Human => {
                let scope = match target {
                    Some(p) => format!("{p} and its descendants"),
                    None => "node-wide".into(),
                };
                writeln!(
                    self.out,
                    "ready: tracing {} {scope} ({} tracepoints attached)",
                    class_names(&self.events).join(","),
                    tracer.attached.len()
                )?;
                self.out.flush()
            }
        }
    }

    /// Which optional hooks attached.
    fn hooks(&mut self, hooks: &[crate::trace::HookResult]) -> std::io::Result<()> {
        match self.fmt {
            OutputFormat::Json => json_line(
                &mut self.out,
                "hooks",
                &Hooks {
                    ts: monotonic().as_secs_f64(),
                    hooks,
                },
            ),
            OutputFormat::Human => {
                for h in hooks {
                    let state = if h.attached {
                        "attached"
                    } else {
                        "unavailable"
                    };
                    writeln!(self.out, "hook: {} {state}", h.hook)?;
                }
                self.out.flush()
            }
        }
    }
}

/// The trace loop's consumer: the sink, the reclaim summary's timer and what ends the trace
/// (the deadline, Ctrl-C, SIGTERM).
struct Live<'a, W: Write> {
    sink: Sink<W>,
    tracer: &'a Tracer,
    tick: Interval,
    deadline: Option<Instant>,
    sigint: Signal,
    sigterm: Signal,
}

enum Wake {
    Summary,
    Stop,
}

impl<W: Write> Consumer for Live<'_, W> {
    type Error = std::io::Error;
    type Wake = Wake;

    async fn wait(&mut self, stopping: bool) -> Wake {
        tokio::select! {
            _ = self.tick.tick(), if !stopping => Wake::Summary,
            _ = sleep_until(self.deadline), if !stopping => Wake::Stop,
            _ = self.sigint.recv(), if !stopping => Wake::Stop,
            _ = self.sigterm.recv(), if !stopping => Wake::Stop,
            else => std::future::pending().await,
        }
    }

    async fn woke(&mut self, wake: Wake, pump: &mut Pump) -> std::io::Result<()> {
        match wake {
            Wake::Summary => self.sink.summary(self.tracer),
            Wake::Stop => {
                pump.stop();
                Ok(())
            }
        }
    }

    fn events(&mut self, batch: &[Event]) -> std::io::Result<()> {
        batch.iter().try_for_each(|ev| self.sink.event(ev))
    }

    fn episode(&mut self, ep: Episode) -> std::io::Result<()> {
        self.sink.episode(&ep)
    }
}

/// The `--cgroup`/`--pod`… target, if any; `Err` with the exit code when it does not resolve.
fn resolve_target(
    args: &TargetArgs,
    runtimes: &Runtimes,
    hier: &Hierarchy,
) -> anyhow::Result<Result<Option<MemCgroup>, i32>> {
    if args.is_empty() {
        return Ok(match runtimes.check_explicit(Some(hier.memory_version)) {
            Ok(()) => Ok(None),
            Err(e) => {
                eprintln!("oomlab trace: {e}");
                Err(exit::USAGE)
            }
        });
    }
    Ok(match target::resolve_with(hier, args, Some(runtimes)) {
        Ok(cg) => Ok(Some(cg)),
        Err(e) => {
            eprintln!("oomlab trace: {e}");
            Err(exit::USAGE)
        }
    })
}

/// `--scoreboard`: the processes' current scores, no tracing.
fn print_scoreboard(output: OutputFormat, target: Option<&MemCgroup>) -> anyhow::Result<i32> {
    let board = crate::trace::scoreboard::for_target(target)?;
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json => json_line(
            &mut out,
            "scoreboard",
            &Scoreboard {
                ts: monotonic().as_secs_f64(),
                target: target.map(|t| t.path()),
                processes: &board,
            },
        )?,
        OutputFormat::Human => crate::trace::scoreboard::render(&board, &mut out)?,
    }
    Ok(exit::OK)
}

async fn run_async(args: Args) -> anyhow::Result<i32> {
    let hier = Hierarchy::detect()?;
    let runtimes = Runtimes::new(&args.runtime, Some(&hier));
    let target = match resolve_target(&args.target, &runtimes, &hier)? {
        Ok(target) => target,
        Err(code) => return Ok(code),
    };
    if args.scoreboard {
        return print_scoreboard(args.output, target.as_ref());
    }
    let target_path = target.as_ref().map(|t| t.path());
    // Opened before the tracer attaches, so no OOM report after `ready` is missed.
    let episodes = args
        .events
        .oom
        .then(|| Episodes::start(target_path.clone()));
    // The optional hooks are tried right after `ready`: on kernels that refuse them finding out
    // costs a parse of the kernel's BTF, which `ready` need not wait for — every tracepoint is
    // attached by then.
    let opts = TraceOptions {
        hooks: false,
        events: args.events,
        target,
        ring_bytes: args.ring_buffer,
        // A separate trace starts no workers: roles come from the comm.
        own_workers: false,
        names: args
            .events
            .oom
            // Not waited for: `ready` does not wait on the runtimes or the node's cgroups; a
            // victim that comes before the first table waits for it (up to 300 ms).
            .then(|| Names::spawn(runtimes, Some(hier.memory_version))),
    };
    let (mut tracer, rx) = Tracer::start(&opts)?;
    let episodes = episodes.map(|mut e| {
        e.use_victims(tracer.victim_ledger());
        e.use_names(opts.names.clone());
        e
    });
    let mut sink = Sink {
        out: BufWriter::new(std::io::stdout().lock()),
        fmt: args.output,
        events: args.events,
        write_stamps: args.write_stamps,
        summary: ReclaimSummary::default(),
        reclaim_key: tracer.reclaim_key,
    };
    sink.ready(&tracer, target_path.as_deref())?;
    if args.events.oom && !args.no_hooks {
        sink.hooks(tracer.try_hooks())?;
    }
    let mut tick = tokio::time::interval(args.summary_interval);
    tick.tick().await;
    let mut live = Live {
        sink,
        tracer: &tracer,
        tick,
        deadline: args.duration.map(|d| Instant::now() + d),
        sigint: signal(SignalKind::interrupt())?,
        sigterm: signal(SignalKind::terminate())?,
    };
    // At the end (deadline, Ctrl-C, SIGTERM) the pump drains what the kernel produced before
    // it and closes the open episodes; then the last summary and the drop count follow.
    drive(&mut Pump::new(rx, episodes), &mut live).await?;
    let mut sink = live.sink;
    sink.summary(&tracer)?;
    let stats = tracer.stats();
    if stats.lost > 0 {
        eprintln!(
            "oomlab trace: {} events lost (ring buffer full)",
            stats.lost
        );
    }
    sink.lost(stats)?;
    Ok(exit::OK)
}
