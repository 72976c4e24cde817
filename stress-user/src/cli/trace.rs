//! `oomlab trace`: kernel events as they happen.

use std::{io::Write, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

use crate::{
    cli::exit,
    report::{json_line, OutputFormat},
    trace::{Event, EventKind, TraceOptions, Tracer},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

#[derive(Serialize)]
struct Ready<'a> {
    tracefs: String,
    hooks: &'a [crate::trace::HookResult],
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<i32> {
    let (tracer, mut rx) = Tracer::start(&TraceOptions::default())?;
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => json_line(
            &mut out,
            "ready",
            &Ready {
                tracefs: tracer.tracefs.path.display().to_string(),
                hooks: &tracer.hooks,
            },
        )?,
        OutputFormat::Human => {
            writeln!(
                out,
                "ready: tracing OOM kills and oom_score_adj updates node-wide"
            )?;
            out.flush()?;
        }
    }
    let deadline = args.duration.map(|d| Instant::now() + d);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => emit(&mut out, args.output, &ev)?,
                None => break,
            },
            _ = sleep => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    let stats = tracer.stats();
    if stats.lost > 0 {
        eprintln!(
            "oomlab trace: {} events lost (ring buffer full)",
            stats.lost
        );
    }
    if args.output == OutputFormat::Json {
        json_line(&mut out, "lost", &stats)?;
    }
    Ok(exit::OK)
}

fn emit(out: &mut impl Write, fmt: OutputFormat, ev: &Event) -> std::io::Result<()> {
    match fmt {
        OutputFormat::Json => {
            let kind = match ev.kind {
                EventKind::Victim(_) => "oom_victim",
                EventKind::AdjUpdate(_) => "oom_score_adj",
                EventKind::OomKillHook(_) => "oom_kill_hook",
            };
            json_line(out, kind, ev)
        }
        OutputFormat::Human => {
            let ts = ev.ts.as_secs_f64();
            match &ev.kind {
                EventKind::Victim(v) => writeln!(
                    out,
                    "{ts:>14.6}  OOM-KILL  pid {:<8} {:<16} adj {:>5}  anon {:>8} KiB  file {:>6} KiB  trigger {} ({})",
                    v.pid,
                    v.comm.as_deref().unwrap_or("?"),
                    v.oom_score_adj.map_or("?".into(), |a| a.to_string()),
                    v.anon_rss_kb.map_or("?".into(), |a| a.to_string()),
                    v.file_rss_kb.map_or("?".into(), |a| a.to_string()),
                    v.trigger.pid,
                    v.trigger.comm,
                )?,
                EventKind::AdjUpdate(a) => writeln!(
                    out,
                    "{ts:>14.6}  ADJ       pid {:<8} {:<16} adj {:>5}  written by {} ({})",
                    a.pid, a.comm, a.oom_score_adj, a.writer.pid, a.writer.comm
                )?,
                EventKind::OomKillHook(h) => writeln!(
                    out,
                    "{ts:>14.6}  OOM       {} oom_kill_process in {} ({})",
                    h.hook, h.task.pid, h.task.comm
                )?,
            }
            out.flush()
        }
    }
}
