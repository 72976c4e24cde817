//! `oomlab explain`: the OOM episodes of a saved kernel log (or of this node's ring buffer),
//! as `oomlab trace` would have reported them — no eBPF, and no root for a file.

use std::{io::Write, path::PathBuf};

use crate::{
    cli::exit,
    explain::{self, Node, Source, Stamp},
    report::{
        explain::{explained, summary, LogSummary},
        OutputFormat,
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A saved kernel log (dmesg, dmesg -T, journalctl -k in short, short-monotonic, short-iso
    /// or json, kern.log, a /dev/kmsg dump); `-` reads standard input; none reads this node's
    /// kernel ring buffer (root or CAP_SYSLOG).
    file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    /// Only lines from this time on, on the log's own clock: seconds since boot (5425.4) or a
    /// UTC time (2026-12-01 23:24:00).
    #[arg(long, value_parser = explain::parse_since)]
    since: Option<Stamp>,
}

pub(super) fn run(a: &Args) -> anyhow::Result<i32> {
    let source = Source::from_arg(a.file.clone());
    let name = source.name();
    // A saved log does not say its node's swap; the live ring buffer is this node's.
    let node = match source {
        Source::RingBuffer => Node::this_node(),
        Source::File(_) | Source::Stdin => Node::default(),
    };
    let found = source
        .read()
        .and_then(|text| explain::explain(&text, a.since, node));
    let ex = match found {
        Ok(ex) => ex,
        Err(e) => {
            eprintln!("oomlab explain: {e}");
            return Ok(exit::USAGE);
        }
    };
    let Some(format) = ex.format.filter(|_| !ex.episodes.is_empty()) else {
        let why = if ex.format.is_none() {
            " (no line is dmesg, dmesg -T, journalctl -k short, short-monotonic, short-iso or \
             json, syslog or a /dev/kmsg dump)"
        } else {
            ""
        };
        eprintln!(
            "oomlab explain: no OOM report in {} lines of {name}{why}",
            ex.lines
        );
        return Ok(exit::FAILED);
    };
    let mut out = std::io::stdout().lock();
    let s = LogSummary {
        source: &name,
        format,
        lines: ex.lines,
        episodes: ex.episodes.len(),
    };
    summary(&s, a.output, &mut out)?;
    for e in &ex.episodes {
        explained(e, a.output, &mut out)?;
    }
    out.flush()?;
    Ok(exit::OK)
}
