//! `oomlab trace`: kernel events as they happen — OOM victims, `oom_score_adj` writes, reclaim
//! (summarised per cgroup), cgroup lifecycle — node-wide or for one target and its descendants.

use std::{
    io::{BufWriter, Write},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
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

/// Where trace lines go: one lock for the consumer's sink and the reader thread's first writer
/// of OOM events ([`crate::trace::Events::write_oom_first`]), so lines never interleave.
type Out<W> = Arc<Mutex<W>>;

fn lock<W>(out: &Out<W>) -> MutexGuard<'_, W> {
    out.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How an event becomes its line — the same on the consumer and on the reader thread.
#[derive(Clone, Copy)]
struct Lines {
    fmt: OutputFormat,
    events: EventSet,
    write_stamps: bool,
}

impl Lines {
    /// Writes `ev`'s line, if it has one; false when its class was not asked for (cgroup events
    /// are attached for a target filter even when not asked for).
    fn write(&self, out: &mut impl Write, ev: &Event) -> std::io::Result<bool> {
        if !self.events.wants(ev.kind.class()) {
            return Ok(false);
        }
        match self.fmt {
            OutputFormat::Json => {
                if self.write_stamps {
                    let mut v = serde_json::to_value(ev).map_err(std::io::Error::other)?;
                    v["wts"] = monotonic().as_secs_f64().into();
                    v["rts"] = ev.read_at.as_secs_f64().into();
                    v["ets"] = ev.enriched_at.as_secs_f64().into();
                    json_line(out, report::event_type(ev.kind.tag()), &v)?;
                } else {
                    event_json_line(out, ev)?;
                }
            }
            OutputFormat::Human => {
                if let Some(line) = human_line(ev) {
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
            }
        }
        Ok(true)
    }
}

struct Sink<W: Write> {
    out: Out<W>,
    lines: Lines,
    summary: ReclaimSummary,
    reclaim_key: ReclaimKey,
}

impl<W: Write> Sink<W> {
    fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        if !self.lines.events.wants(ev.kind.class()) {
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
        if ev.written {
            return Ok(());
        }
        self.lines.write(&mut *lock(&self.out), ev).map(drop)
    }

    fn summary(&mut self, tracer: &Tracer) -> std::io::Result<()> {
        if !self.lines.events.reclaim {
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
        // Locked only now: the rows read /proc, and a victim's line must not wait for that.
        let mut out = lock(&self.out);
        for row in &rows {
            match self.lines.fmt {
                OutputFormat::Json => json_line(
                    &mut *out,
                    "reclaim_summary",
                    &ReclaimSummaryLine {
                        ts: now.as_secs_f64(),
                        row,
                    },
                )?,
                OutputFormat::Human => writeln!(out, "{}", human_reclaim_line(now, row))?,
            }
        }
        out.flush()
    }

    fn episode(&mut self, ep: &Episode) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        match self.lines.fmt {
            OutputFormat::Json => json_line(&mut *out, "oom_episode", ep),
            OutputFormat::Human => report::episode::render_human(ep, &mut *out),
        }
    }

    fn lost(&mut self, stats: Stats) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        let ts = monotonic().as_secs_f64();
        match self.lines.fmt {
            OutputFormat::Json => json_line(
                &mut *out,
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
                    out,
                    "{ts:>14.6}  END       {} events from the kernel, {} lost (ring buffer full), {} of them OOM events",
                    stats.produced, stats.lost, stats.lost_oom
                )?;
                out.flush()
            }
        }
    }
}

impl<W: Write> Sink<W> {
    /// `ready`: what is traced and where. Every tracepoint is attached by then.
    fn ready(&mut self, tracer: &Tracer, target: Option<&str>) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        match self.lines.fmt {
            OutputFormat::Json => json_line(
                &mut *out,
                "ready",
                &Ready {
                    ts: monotonic().as_secs_f64(),
                    tracefs: tracer.tracefs.path.display().to_string(),
                    target: target.map(str::to_owned),
                    events: class_names(&self.lines.events),
                    attached: &tracer.attached,
                },
            ),
            OutputFormat::Human => {
                let scope = match target {
                    Some(p) => format!("{p} and its descendants"),
                    None => "node-wide".into(),
                };
                writeln!(
                    out,
                    "ready: tracing {} {scope} ({} tracepoints attached)",
                    class_names(&self.lines.events).join(","),
                    tracer.attached.len()
                )?;
                out.flush()
            }
        }
    }

    /// Which optional hooks attached.
    fn hooks(&mut self, hooks: &[crate::trace::HookResult]) -> std::io::Result<()> {
        let mut out = lock(&self.out);
        match self.lines.fmt {
            OutputFormat::Json => json_line(
                &mut *out,
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
                    writeln!(out, "hook: {} {state}", h.hook)?;
                }
                out.flush()
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
        out: Arc::new(Mutex::new(BufWriter::new(std::io::stdout()))),
        lines: Lines {
            fmt: args.output,
            events: args.events,
            write_stamps: args.write_stamps,
        },
        summary: ReclaimSummary::default(),
        reclaim_key: tracer.reclaim_key,
    };
    sink.ready(&tracer, target_path.as_deref())?;
    if args.events.oom && !args.no_hooks {
        sink.hooks(tracer.try_hooks())?;
    }
    // After `ready` and the hooks line, a victim's line is written by the reader thread the
    // moment it is read (see `write_oom_first`); the consumer still gets it for its episode.
    if args.events.oom {
        let (out, lines) = (sink.out.clone(), sink.lines);
        rx.write_oom_first(Box::new(move |ev| lines.write(&mut *lock(&out), ev)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::testing::adj;

    fn sink(events: &str) -> Sink<Vec<u8>> {
        Sink {
            out: Arc::new(Mutex::new(Vec::new())),
            lines: Lines {
                fmt: OutputFormat::Json,
                events: EventSet::parse(events).expect("classes"),
                write_stamps: false,
            },
            summary: ReclaimSummary::default(),
            reclaim_key: ReclaimKey::Tgid,
        }
    }

    fn written(sink: &Sink<Vec<u8>>) -> Vec<serde_json::Value> {
        let out = lock(&sink.out);
        std::str::from_utf8(&out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn a_line_the_reader_wrote_is_not_written_again() {
        let mut sink = sink("adj");
        // What the reader thread's first writer does with its copy of the lines and the lock.
        let (out, lines) = (sink.out.clone(), sink.lines);
        let mut first = adj(41);
        assert!(lines.write(&mut *lock(&out), &first).expect("write"));
        first.written = true;
        sink.event(&first).expect("event");
        sink.event(&adj(42)).expect("event");
        let pids: Vec<_> = written(&sink).iter().map(|v| v["pid"].clone()).collect();
        assert_eq!(pids, [41, 42], "each line once, in the order written");
    }

    #[test]
    fn lines_skip_a_class_not_asked_for() {
        let sink = sink("oom");
        assert!(!sink
            .lines
            .write(&mut *lock(&sink.out), &adj(1))
            .expect("write"));
        assert!(written(&sink).is_empty());
    }
}
