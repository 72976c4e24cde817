//! How often a cgroup hit its limits and how long its tasks stalled on memory: the cgroup's own
//! event counters and PSI, read at two moments and compared. `free` and `top` show neither.

use std::{collections::BTreeMap, fs, time::Duration};

use serde::{Deserialize, Serialize};

use super::{parse_flat_keyed, MemCgroup, Version};

/// The node-wide PSI file, for v1 cgroups (cgroup v1 has no per-cgroup PSI).
const NODE_PSI: &str = "/proc/pressure/memory";

/// Counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PressureCounters {
    /// v2 `memory.events` (`low`, `high`, `max`, `oom`, `oom_kill`, `oom_group_kill`); v1
    /// `failcnt` (times usage hit the limit) and `memory.oom_control`'s `oom_kill`.
    pub events: BTreeMap<String, u64>,
    pub psi: Option<PsiTotals>,
}

/// PSI `some`/`full` totals, in microseconds since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PsiTotals {
    pub scope: PsiScope,
    pub some_us: u64,
    pub full_us: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiScope {
    /// The cgroup's own `memory.pressure` (v2).
    #[default]
    Cgroup,
    /// `/proc/pressure/memory`: the whole node, where the cgroup has no PSI of its own (v1).
    Node,
}

/// What happened between two readings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    /// Increase of each event counter; counters that did not move are left out.
    pub events: BTreeMap<String, u64>,
    pub psi: Option<PsiShare>,
}

/// Share of the wall time some / all tasks stalled on memory (PSI), in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PsiShare {
    pub scope: PsiScope,
    pub some_pct: f64,
    pub full_pct: f64,
}

impl MemCgroup {
    /// The cgroup's limit events and PSI totals now; what cannot be read is left out.
    pub fn pressure_counters(&self) -> PressureCounters {
        let events = match self.version {
            Version::V2 => self
                .read("memory.events")
                .map(|t| parse_flat_keyed(&t))
                .unwrap_or_default(),
            Version::V1 => {
                let mut e = BTreeMap::new();
                if let Ok(n) = self.read_u64("memory.failcnt") {
                    e.insert("failcnt".to_owned(), n);
                }
                if let Ok(n) = self.oom_kills() {
                    e.insert("oom_kill".to_owned(), n);
                }
                e
            }
        };
        let psi = match self.version {
            Version::V2 => self
                .read("memory.pressure")
                .ok()
                .and_then(|t| parse_psi(&t, PsiScope::Cgroup)),
            Version::V1 => fs::read_to_string(NODE_PSI)
                .ok()
                .and_then(|t| parse_psi(&t, PsiScope::Node)),
        };
        PressureCounters { events, psi }
    }
}

impl PressureCounters {
    /// The change from `before` to `self`, over `wall` of wall time.
    pub fn since(&self, before: &PressureCounters, wall: Duration) -> Pressure {
        let events = self
            .events
            .iter()
            .filter_map(|(k, &now)| {
                let d = now.saturating_sub(before.events.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        let wall_us = wall.as_micros() as f64;
        let psi = match (self.psi, before.psi) {
            (Some(now), Some(then)) if now.scope == then.scope && wall_us > 0.0 => {
                let pct =
                    |a: u64, b: u64| (a.saturating_sub(b) as f64 / wall_us * 100.0).min(100.0);
                Some(PsiShare {
                    scope: now.scope,
                    some_pct: pct(now.some_us, then.some_us),
                    full_pct: pct(now.full_us, then.full_us),
                })
            }
            _ => None,
        };
        Pressure { events, psi }
    }
}

impl Pressure {
    /// One line for people: `memory.events: max +56, oom +3; PSI (this cgroup) some 12.3 %,
    /// full 8.1 % of the time`.
    pub fn describe(&self, version: Version) -> String {
        let list: Vec<String> = self
            .events
            .iter()
            .map(|(k, v)| match (version, k.as_str()) {
                (Version::V1, "failcnt") => format!("memory.failcnt +{v}"),
                _ => format!("{k} +{v}"),
            })
            .collect();
        let events = match (version, list.is_empty()) {
            (Version::V2, true) => "memory.events: nothing".to_owned(),
            (Version::V2, false) => format!("memory.events: {}", list.join(", ")),
            (Version::V1, true) => "no limit hits (memory.failcnt)".to_owned(),
            (Version::V1, false) => list.join(", "),
        };
        match self.psi {
            Some(p) => format!(
                "{events}; PSI ({}) some {:.1} %, full {:.1} % of the time",
                match p.scope {
                    PsiScope::Cgroup => "this cgroup",
                    PsiScope::Node => "whole node: v1 has no per-cgroup PSI",
                },
                p.some_pct,
                p.full_pct
            ),
            None => format!("{events}; no PSI here"),
        }
    }
}

/// Whether this kernel accounts PSI, and if not, why (so the user knows what to change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PsiState {
    On,
    /// Built in but switched off with `psi=0` on the kernel command line.
    DisabledByCmdline,
    /// Built with `CONFIG_PSI_DEFAULT_DISABLED=y` and not switched on with `psi=1`.
    DefaultDisabled,
    /// No `/proc/pressure` at all: the kernel was built without `CONFIG_PSI`.
    NotBuilt,
}

impl std::fmt::Display for PsiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PsiState::On => "PSI is on",
            PsiState::DisabledByCmdline => {
                "PSI is disabled by `psi=0` on the kernel command line (boot without it, or with psi=1)"
            }
            PsiState::DefaultDisabled => {
                "PSI is off by default in this kernel (CONFIG_PSI_DEFAULT_DISABLED=y): boot with psi=1"
            }
            PsiState::NotBuilt => {
                "this kernel has no PSI (built without CONFIG_PSI: no /proc/pressure/memory)"
            }
        })
    }
}

/// This kernel's PSI state.
pub fn psi_state() -> PsiState {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let config = fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
    classify_psi(fs::metadata(NODE_PSI).is_ok(), &cmdline, &config)
}

/// The state from what the kernel shows: `/proc/pressure/memory` exists only when PSI is on;
/// otherwise the command line and (when readable) the kernel's config say why.
pub fn classify_psi(proc_file: bool, cmdline: &str, config: &str) -> PsiState {
    if proc_file {
        return PsiState::On;
    }
    let psi_arg = cmdline
        .split_whitespace()
        .filter_map(|a| a.strip_prefix("psi="))
        .next_back();
    if psi_arg.is_some_and(|v| matches!(v, "0" | "n" | "N" | "off" | "false")) {
        return PsiState::DisabledByCmdline;
    }
    if config
        .lines()
        .any(|l| l.trim() == "CONFIG_PSI_DEFAULT_DISABLED=y")
    {
        return PsiState::DefaultDisabled;
    }
    PsiState::NotBuilt
}

/// The `some` and `full` totals of a PSI file (`some avg10=… total=N`). Kernels before 5.13
/// had no `full` line for the node's CPU file; memory always has both, but a missing `full`
/// reads as 0 rather than failing.
pub fn parse_psi(text: &str, scope: PsiScope) -> Option<PsiTotals> {
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(kind))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
            .and_then(|t| t.parse::<u64>().ok())
    };
    Some(PsiTotals {
        scope,
        some_us: total("some")?,
        full_us: total("full").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PSI: &str = "some avg10=1.50 avg60=0.40 avg300=0.10 total=1250000\nfull avg10=0.80 avg60=0.20 avg300=0.05 total=500000\n";

    #[test]
    fn psi_states() {
        assert_eq!(classify_psi(true, "psi=0", ""), PsiState::On);
        assert_eq!(
            classify_psi(false, "BOOT_IMAGE=/vmlinuz ro psi=0 quiet", ""),
            PsiState::DisabledByCmdline
        );
        assert_eq!(
            classify_psi(false, "ro", "CONFIG_PSI=y\nCONFIG_PSI_DEFAULT_DISABLED=y\n"),
            PsiState::DefaultDisabled
        );
        assert_eq!(classify_psi(false, "ro", ""), PsiState::NotBuilt);
    }

    #[test]
    fn psi_totals_parse() {
        let p = parse_psi(PSI, PsiScope::Cgroup).expect("parses");
        assert_eq!((p.some_us, p.full_us), (1_250_000, 500_000));
        assert_eq!(parse_psi("garbage\n", PsiScope::Node), None);
        let only_some = parse_psi(
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
            PsiScope::Node,
        );
        assert_eq!(only_some.map(|p| (p.some_us, p.full_us)), Some((7, 0)));
    }

    #[test]
    fn differences_over_a_stage() {
        let before = PressureCounters {
            events: [("max", 10), ("oom", 1), ("high", 0)]
                .map(|(k, v)| (k.to_owned(), v))
                .into(),
            psi: Some(PsiTotals {
                scope: PsiScope::Cgroup,
                some_us: 1_000_000,
                full_us: 400_000,
            }),
        };
        let after = PressureCounters {
            events: [("max", 66), ("oom", 4), ("high", 0), ("oom_kill", 3)]
                .map(|(k, v)| (k.to_owned(), v))
                .into(),
            psi: Some(PsiTotals {
                scope: PsiScope::Cgroup,
                some_us: 1_500_000,
                full_us: 600_000,
            }),
        };
        let d = after.since(&before, Duration::from_secs(2));
        assert_eq!(
            d.events,
            [("max", 56), ("oom", 3), ("oom_kill", 3)]
                .map(|(k, v)| (k.to_owned(), v))
                .into()
        );
        let psi = d.psi.expect("psi");
        assert!((psi.some_pct - 25.0).abs() < 1e-9 && (psi.full_pct - 10.0).abs() < 1e-9);
        assert_eq!(
            d.describe(Version::V2),
            "memory.events: max +56, oom +3, oom_kill +3; PSI (this cgroup) some 25.0 %, full 10.0 % of the time"
        );
        // A counter that went backwards (a cgroup recreated) is no event; no PSI, no share.
        let reset = PressureCounters {
            events: [("max", 1)].map(|(k, v)| (k.to_owned(), v)).into(),
            psi: None,
        };
        let d = reset.since(&before, Duration::from_secs(1));
        assert!(d.events.is_empty() && d.psi.is_none());
        assert_eq!(
            d.describe(Version::V1),
            "no limit hits (memory.failcnt); no PSI here"
        );
    }
}
