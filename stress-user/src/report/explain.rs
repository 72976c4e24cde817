//! `oomlab explain`'s output: each episode as `oomlab trace` prints it, followed by the pods its
//! cgroups name and the verdict line; or one JSON line per episode with the same fields as
//! trace's `oom_episode` plus `pods` and `verdict`.

use std::io::{self, Write};

use serde::Serialize;

use super::{
    episode::{self, shown, PAD},
    json_line, OutputFormat,
};
use crate::explain::{Explained, LogFormat};

/// What was read, before the episodes.
#[derive(Debug, Serialize)]
pub struct LogSummary<'a> {
    pub source: &'a str,
    pub format: LogFormat,
    pub lines: usize,
    pub episodes: usize,
}

pub fn summary(s: &LogSummary<'_>, fmt: OutputFormat, out: &mut impl Write) -> io::Result<()> {
    match fmt {
        OutputFormat::Json => json_line(out, "log", s),
        OutputFormat::Human => writeln!(
            out,
            "{}: {} lines ({}), {} OOM episode(s)",
            s.source, s.lines, s.format, s.episodes
        ),
    }
}

pub fn explained(ex: &Explained, fmt: OutputFormat, out: &mut impl Write) -> io::Result<()> {
    match fmt {
        OutputFormat::Json => json_line(out, "oom_episode", ex),
        OutputFormat::Human => human(ex, out),
    }
}

fn human(ex: &Explained, out: &mut impl Write) -> io::Result<()> {
    episode::render_human(&ex.episode, out)?;
    for p in &ex.pods {
        writeln!(
            out,
            "{PAD}pod {} ({:?}) container {}  cgroup {}",
            p.kube.pod_uid,
            p.kube.qos,
            p.kube.container_id.as_deref().unwrap_or("-"),
            shown(Some(&p.cgroup))
        )?;
    }
    writeln!(out, "{PAD}verdict: {}", ex.verdict)?;
    out.flush()
}
