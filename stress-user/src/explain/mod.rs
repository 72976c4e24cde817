//! `oomlab explain`: OOM episodes from a kernel log saved after the fact (`dmesg`, `journalctl
//! -k`, syslog, a `/dev/kmsg` dump) or from this node's ring buffer, with the live tracer's
//! parsers, episode builder and `oom_badness` ranking — no eBPF, no root for a file.

mod assemble;
mod format;
mod line;
mod records;
mod source;
mod time;
mod verdict;

use std::io;

pub use self::{
    assemble::{episodes, Explained, Node, PodCgroup},
    format::{detect, LogFormat},
    line::{escape, Line},
    records::records,
    source::{text, Source},
    time::{parse_since, this_year, Stamp},
    verdict::verdict,
};

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("cannot read {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} is not a text log: {what} at byte offset {offset}")]
    Binary {
        name: String,
        offset: usize,
        what: &'static str,
    },
    #[error(
        "cannot read the kernel ring buffer /dev/kmsg ({0}): it needs root or CAP_SYSLOG \
         (and kernel.dmesg_restrict may forbid it); or explain a saved log: oomlab explain FILE"
    )]
    RingBuffer(#[source] io::Error),
    #[error(
        "--since: this {format} log is stamped {}; give --since {}",
        if *boot { "in seconds since boot" } else { "with the wall clock" },
        if *boot { "in seconds (5425.4)" } else { "as a UTC time (2026-12-01 23:24:00)" }
    )]
    SinceClock { format: LogFormat, boot: bool },
}

/// What a log holds.
#[derive(Debug)]
pub struct Explanation {
    /// `None`: no line is in a format oomlab knows (dmesg, dmesg -T, journalctl -k in short,
    /// short-monotonic, short-iso or json, syslog, a `/dev/kmsg` dump).
    pub format: Option<LogFormat>,
    /// Lines read (for "no OOM report in N lines").
    pub lines: usize,
    pub episodes: Vec<Explained>,
}

/// Detects the format of `text` and explains the OOMs in it.
pub fn explain(text: &str, since: Option<Stamp>, node: Node) -> Result<Explanation, ExplainError> {
    let year = this_year();
    let lines = text.lines().count();
    let Some(format) = detect(text, year) else {
        return Ok(Explanation {
            format: None,
            lines,
            episodes: Vec::new(),
        });
    };
    let recs = records(text, format, year, since)?;
    Ok(Explanation {
        format: Some(format),
        lines,
        episodes: episodes(&recs, node),
    })
}
