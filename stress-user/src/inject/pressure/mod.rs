//! `oomlab inject --pressure`: hold a chosen memory-stall level (PSI) in the target rather than
//! a byte count. A squeeze worker holds anonymous memory so that only a small room is left
//! under the target's limit, a cycler worker reads a clean page-cache set larger than that room
//! at a pace, and a controller steers the pace on the kernel's cumulative `total=` stall
//! counter. Kept here: the request (`some=10%`), its checks, and the modules doing the work.

pub mod control;
pub mod cycler;
pub mod hold;

use std::{fmt, time::Duration};

use serde::Serialize;

use crate::cgroup::{psi_state, PsiState, Version};

/// Which PSI line to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PsiKind {
    /// Some task in the target stalled on memory.
    Some,
    /// Every non-idle task in the target stalled at once.
    Full,
}

impl PsiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PsiKind::Some => "some",
            PsiKind::Full => "full",
        }
    }
}

/// A level as `--pressure` gives it: `some=10%`, `full=5%`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Level {
    pub kind: PsiKind,
    /// Percent of wall time, 0 < pct < 100.
    pub pct: f64,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}%", self.kind.as_str(), self.pct)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PressureError {
    #[error("--pressure {0:?}: expected KIND=N% with KIND `some` or `full`, e.g. some=10%")]
    Syntax(String),
    #[error("--pressure {text:?}: unknown kind {kind:?}; only `some` and `full` are PSI lines")]
    UnknownKind { text: String, kind: String },
    #[error("--pressure {0:?}: the level must be above 0 % and below 100 % of wall time")]
    OutOfRange(String),
    #[error("--pressure and --{0} both say what to hold; give one of them")]
    WithSize(&'static str),
    #[error("--pressure on cgroup v1: v1 has no per-cgroup PSI, so only the whole node's /proc/pressure/memory can be held; pass --node-pressure to hold that (every line says so)")]
    V1NeedsNode,
    #[error("--pressure: {0}; `oomlab doctor` shows the PSI state")]
    PsiOff(String),
    #[error("--pressure: {cgroup} has no memory limit; the stall would come from the node's global reclaim, which is not this cgroup's pressure and hurts every process on the node; set a limit (or use --new NAME --limit SIZE), or pass --node-pressure to hold the node's level")]
    NoLimit { cgroup: String },
    #[error("--pressure needs a target with a memory limit even with --node-pressure: the room under that limit is what oomlab squeezes ({cgroup} has none)")]
    NodeNoLimit { cgroup: String },
    #[error("--pressure-window must be at least 1 s")]
    Window,
}

/// `some=10%` (the `%` is optional).
pub fn parse_level(text: &str) -> Result<Level, PressureError> {
    let t = text.trim();
    let (kind, value) = t
        .split_once('=')
        .ok_or_else(|| PressureError::Syntax(text.into()))?;
    let kind = match kind.trim() {
        "some" => PsiKind::Some,
        "full" => PsiKind::Full,
        k => {
            return Err(PressureError::UnknownKind {
                text: text.into(),
                kind: k.into(),
            })
        }
    };
    let v = value.trim();
    let v = v.strip_suffix('%').unwrap_or(v).trim();
    let pct: f64 = v.parse().map_err(|_| PressureError::Syntax(text.into()))?;
    if !pct.is_finite() || pct <= 0.0 || pct >= 100.0 {
        return Err(PressureError::OutOfRange(text.into()));
    }
    Ok(Level { kind, pct })
}

/// A checked `--pressure` request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureGoal {
    pub level: Level,
    pub window: Duration,
    /// Hold `/proc/pressure/memory` (the node) rather than the target's own `memory.pressure`.
    pub node: bool,
    /// No margin, no back-off on `oom` events.
    pub allow_oom: bool,
}

/// The checks that need only the hierarchy and the kernel (the limit is checked with the
/// target): v1 without `--node-pressure`, PSI off, a window under a second.
pub fn check(version: Version, node: bool, window: Duration) -> Result<(), PressureError> {
    if window < Duration::from_secs(1) {
        return Err(PressureError::Window);
    }
    if version == Version::V1 && !node {
        return Err(PressureError::V1NeedsNode);
    }
    match psi_state() {
        PsiState::On => Ok(()),
        off => Err(PressureError::PsiOff(off.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(
            parse_level("some=10%"),
            Ok(Level {
                kind: PsiKind::Some,
                pct: 10.0
            })
        );
        assert_eq!(
            parse_level(" full = 2.5 "),
            Ok(Level {
                kind: PsiKind::Full,
                pct: 2.5
            })
        );
        assert!(matches!(parse_level("10%"), Err(PressureError::Syntax(_))));
        assert!(matches!(
            parse_level("some=x"),
            Err(PressureError::Syntax(_))
        ));
        assert!(matches!(
            parse_level("avg10=5%"),
            Err(PressureError::UnknownKind { .. })
        ));
        for bad in ["some=0%", "some=100%", "some=-3%", "full=150", "some=NaN"] {
            assert!(
                matches!(
                    parse_level(bad),
                    Err(PressureError::OutOfRange(_) | PressureError::Syntax(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_level("some=10%").map(|l| l.to_string()),
            Ok("some=10%".into())
        );
    }
}
