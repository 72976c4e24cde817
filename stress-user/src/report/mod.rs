//! Sinks: where typed events and summaries go — aligned human lines or JSON lines — and a run's
//! report (`report.json`, `report.md`, `timeline.svg`). Sinks only consume; they never reach
//! back into the tracer or the injector.

pub mod episode;
pub mod explain;
pub mod files;
#[cfg(test)]
mod fixture;
pub mod inject;
pub mod markdown;
pub mod plot;
pub mod run;
pub mod run_live;
pub mod timeline;
pub mod trace;

use std::io::{self, Write};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// `{"type": kind, …the value's own fields}`, written straight from serde (no intermediate
/// `serde_json::Value`: a flood of events costs no map per line).
#[derive(Serialize)]
struct Tagged<'a, T: ?Sized> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    value: &'a T,
}

/// One JSON object per line with a `"type"` tag first, then the object's own fields. `value`
/// must serialize as a struct or map without a `type` field of its own.
pub fn json_line<T: Serialize + ?Sized>(
    out: &mut impl Write,
    kind: &str,
    value: &T,
) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &Tagged { kind, value }).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The JSON line `type` of a trace event, from the event's own serde tag (`"event"`), so a kind
/// added to [`crate::trace::EventKind`] gets a type without another table to keep in step.
pub fn event_type(tag: &str) -> &str {
    match tag {
        "victim" => "oom_victim",
        "marked" => "oom_marked",
        "adj_update" => "oom_score_adj",
        "reaper" => "oom_reaper",
        other => other,
    }
}

/// One trace event as a JSON line — what `oomlab trace --output json` prints and `oomlab serve`
/// streams on `/events`.
pub fn event_json_line(out: &mut impl Write, ev: &crate::trace::Event) -> io::Result<()> {
    json_line(out, event_type(ev.kind.tag()), ev)
}
