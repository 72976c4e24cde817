//! Sinks: where typed events and summaries go — aligned human lines or JSON lines. Sinks only
//! consume; they never reach back into the tracer or the injector.

use std::io::{self, Write};

use serde::Serialize;

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
