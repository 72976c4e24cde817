//! Where tracefs is (mounting it when these machines booted without it), and the `format` file
//! of each tracepoint in it.

use std::path::{Path, PathBuf};

use super::{
    error::TraceError,
    format::{Format, FormatError},
};

/// Where aya and oomlab look for tracefs, in order.
const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Tracefs location, and whether oomlab had to mount it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Tracefs {
    pub path: PathBuf,
    pub mounted_by_oomlab: bool,
}

/// Finds tracefs, mounting it at `/sys/kernel/tracing` when nothing is mounted (these machines
/// boot without it).
pub fn ensure_tracefs() -> Result<Tracefs, TraceError> {
    for p in TRACEFS_PATHS {
        if Path::new(p).join("events").is_dir() {
            return Ok(Tracefs {
                path: p.into(),
                mounted_by_oomlab: false,
            });
        }
    }
    let target = Path::new(TRACEFS_PATHS[0]);
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(TraceError::Tracefs)?;
    Ok(Tracefs {
        path: target.into(),
        mounted_by_oomlab: true,
    })
}

pub fn format_path(tracefs: &Path, group: &str, event: &str) -> PathBuf {
    tracefs
        .join("events")
        .join(group)
        .join(event)
        .join("format")
}

/// Reads a tracepoint's format; `Ok(None)` when this kernel does not have the tracepoint.
pub fn read_format(
    tracefs: &Path,
    group: &str,
    event: &str,
) -> Result<Option<Format>, FormatError> {
    let path = format_path(tracefs, group, event);
    if !path.exists() {
        return Ok(None);
    }
    Format::read(&path).map(Some)
}
