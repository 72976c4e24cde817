//! Sinks: where typed events and summaries go — aligned human lines or JSON lines. Sinks only
//! consume; they never reach back into the tracer or the injector.

pub mod markdown;
pub mod plot;
pub mod timeline;

use std::io::{self, Write};

use serde::Serialize;

pub mod trace;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Human,
    Json,
}

/// One JSON object per line with a `"type"` tag and the object's own fields.
pub fn json_line<T: Serialize>(out: &mut impl Write, kind: &str, value: &T) -> io::Result<()> {
    let mut v = serde_json::to_value(value).map_err(io::Error::other)?;
    if let serde_json::Value::Object(map) = &mut v {
        map.insert("type".into(), kind.into());
    }
    serde_json::to_writer(&mut *out, &v).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The JSON line `type` of a trace event, from the event's own serde tag (`"event"`), so a kind
/// added to [`crate::trace::EventKind`] gets a type without another table to keep in step.
pub fn event_type(tag: &str) -> &str {
    match tag {
        "victim" => "oom_victim",
        "adj_update" => "oom_score_adj",
        "reaper" => "oom_reaper",
        other => other,
    }
}

/// One trace event as a JSON line — what `oomlab trace --output json` prints and `oomlab serve`
/// streams on `/events`.
pub fn event_json_line(out: &mut impl Write, ev: &crate::trace::Event) -> io::Result<()> {
    let v = serde_json::to_value(ev).map_err(io::Error::other)?;
    let tag = v.get("event").and_then(|t| t.as_str()).unwrap_or("event");
    let kind = event_type(tag).to_owned();
    json_line(out, &kind, &v)
}
