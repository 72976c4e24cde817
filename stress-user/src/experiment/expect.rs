//! Checking expectations against what a run observed: each one gives a verdict that says what
//! was expected and what happened, so a failure explains itself.

use super::spec::{Expectations, VictimRole};
use crate::{report::timeline::Verdict, size::human};

/// What happened in one scope (a stage, or the whole run).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub scope: String,
    /// The kernel's oom_kill counter, increase over the scope.
    pub oom_kills: u64,
    /// Role of each traced victim, in order: `worker`, `app:<name>` or `other`.
    pub victims: Vec<String>,
    /// (requested, charged) for each injection by size in the scope.
    pub charged: Vec<(u64, u64)>,
    pub peak_working_set: u64,
    /// (app name, alive at the end of the scope).
    pub apps_alive: Vec<(String, bool)>,
    /// PSI some / full over the scope, percent of wall time: after the level was first
    /// reached (within ±20 %) where the stage held one, else over the whole scope; `None`
    /// where the kernel has no PSI here.
    pub psi: Option<ObservedPsi>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ObservedPsi {
    pub some_pct: Option<f64>,
    pub full_pct: Option<f64>,
    /// The stage held a level but never came within ±20 % of it.
    pub never_reached: bool,
    /// The node's PSI (v1), not the target's.
    pub node: bool,
}

fn count_roles(victims: &[String]) -> String {
    if victims.is_empty() {
        return "no victim".into();
    }
    let workers = victims.iter().filter(|v| *v == "worker").count();
    let mut parts = Vec::new();
    if workers > 0 {
        parts.push(format!(
            "{workers} worker{}",
            if workers == 1 { "" } else { "s" }
        ));
    }
    let mut apps: Vec<&str> = victims
        .iter()
        .filter_map(|v| v.strip_prefix("app:"))
        .collect();
    apps.sort_unstable();
    apps.dedup();
    for a in apps {
        let n = victims
            .iter()
            .filter(|v| v.strip_prefix("app:") == Some(a))
            .count();
        parts.push(format!(
            "app {a}{}",
            if n > 1 {
                format!(" ×{n}")
            } else {
                String::new()
            }
        ));
    }
    let other = victims.iter().filter(|v| *v == "other").count();
    if other > 0 {
        parts.push(format!(
            "{other} other process{}",
            if other == 1 { "" } else { "es" }
        ));
    }
    format!("killed: {}", parts.join(", "))
}

fn psi_within((level, tol): (f64, f64), got: Option<(Option<f64>, &ObservedPsi)>) -> Outcome {
    let expected = format!("PSI {level}% ± {tol} points");
    match got {
        None => Outcome {
            expected,
            observed: "no PSI in this kernel".into(),
            passed: false,
        },
        Some((_, p)) if p.never_reached => Outcome {
            expected,
            observed: "the level was never reached (never within ±20 % of the target) in the stage"
                .into(),
            passed: false,
        },
        Some((None, _)) => Outcome {
            expected,
            observed: "no PSI reading for the stage".into(),
            passed: false,
        },
        Some((Some(v), p)) => Outcome {
            expected,
            observed: format!(
                "{v:.1} %{}",
                if p.node { " (node PSI: cgroup v1)" } else { "" }
            ),
            passed: (v - level).abs() <= tol,
        },
    }
}

/// What one expectation asked for, what happened, and whether that meets it.
struct Outcome {
    expected: String,
    observed: String,
    passed: bool,
}

/// The verdict of every expectation in `e` against `o`.
pub fn evaluate(e: &Expectations, o: &Observed) -> Vec<Verdict> {
    let outcomes = [
        ("victim", e.victim.as_ref().map(|role| victim(role, o))),
        (
            "max_oom_kills",
            e.max_oom_kills.map(|max| max_oom_kills(max, o)),
        ),
        (
            "min_oom_kills",
            e.min_oom_kills.map(|min| min_oom_kills(min, o)),
        ),
        (
            "charged_within",
            e.charged_within
                .map(|tol| charged_within(tol, e.charged_allowance, o)),
        ),
        (
            "working_set_below",
            e.working_set_below.map(|below| working_set_below(below, o)),
        ),
        (
            "app_survives",
            e.app_survives.map(|want| app_survives(want, o)),
        ),
        (
            "psi_some_within",
            e.psi_some_within
                .map(|w| psi_within(w, o.psi.as_ref().map(|p| (p.some_pct, p)))),
        ),
        (
            "psi_full_within",
            e.psi_full_within
                .map(|w| psi_within(w, o.psi.as_ref().map(|p| (p.full_pct, p)))),
        ),
    ];
    outcomes
        .into_iter()
        .filter_map(|(key, outcome)| {
            outcome.map(|c| Verdict {
                scope: o.scope.clone(),
                key: key.into(),
                expected: c.expected,
                observed: c.observed,
                passed: c.passed,
                line: e.line,
            })
        })
        .collect()
}

/// The OOM killer's first pick in the scope: what happens once pressure comes. Later kills
/// (after the first victim freed its memory) are listed but do not decide.
fn victim(role: &VictimRole, o: &Observed) -> Outcome {
    let victims = count_roles(&o.victims);
    let first = o.victims.first().map(String::as_str);
    let passed = match role {
        VictimRole::None => o.oom_kills == 0 && o.victims.is_empty(),
        VictimRole::Worker => first == Some("worker"),
        VictimRole::App => first.is_some_and(|v| v.starts_with("app:")),
        VictimRole::Named(n) => first.and_then(|v| v.strip_prefix("app:")) == Some(n.as_str()),
    };
    let mut why = match first {
        Some(f) => format!(
            "first victim: {}; {} OOM kill(s), {victims}",
            f.strip_prefix("app:")
                .map_or(f.to_string(), |a| format!("app {a}")),
            o.oom_kills
        ),
        None => format!("{} OOM kill(s); {victims}", o.oom_kills),
    };
    if o.oom_kills > o.victims.len() as u64 {
        why.push_str(&format!(
            " ({} kill(s) the tracer did not see)",
            o.oom_kills - o.victims.len() as u64
        ));
    }
    Outcome {
        expected: role.to_string(),
        observed: why,
        passed,
    }
}

fn max_oom_kills(max: u64, o: &Observed) -> Outcome {
    Outcome {
        expected: max.to_string(),
        observed: format!("{} OOM kill(s) (kernel counter)", o.oom_kills),
        passed: o.oom_kills <= max,
    }
}

fn min_oom_kills(min: u64, o: &Observed) -> Outcome {
    Outcome {
        expected: min.to_string(),
        observed: format!("{} OOM kill(s) (kernel counter)", o.oom_kills),
        passed: o.oom_kills >= min,
    }
}

/// The injection whose charge strays furthest from its request decides.
fn charged_within(tol: f64, allowance: u64, o: &Observed) -> Outcome {
    let mut worst: Option<(u64, u64, f64)> = None;
    for &(req, got) in &o.charged {
        let dev = if req == 0 {
            1.0
        } else {
            (got as f64 - req as f64) / req as f64
        };
        if worst.is_none_or(|w| dev.abs() > w.2.abs()) {
            worst = Some((req, got, dev));
        }
    }
    let (observed, passed) = match worst {
        Some((req, got, dev)) => (
            format!(
                "charged {} for {} requested ({:+.1}%)",
                human(got),
                human(req),
                dev * 100.0
            ),
            (got as f64 - req as f64).abs() <= tol * req as f64 + allowance as f64,
        ),
        None => ("no injection by size ran to measure".into(), false),
    };
    let expected = if allowance > 0 {
        format!(
            "{}% + {} (the workers' own cost; OOMLAB_VM scales sizes, not processes)",
            tol * 100.0,
            human(allowance)
        )
    } else {
        format!("{}%", tol * 100.0)
    };
    Outcome {
        expected,
        observed,
        passed,
    }
}

fn working_set_below(below: u64, o: &Observed) -> Outcome {
    Outcome {
        expected: human(below),
        observed: format!("peak working set {}", human(o.peak_working_set)),
        passed: o.peak_working_set < below,
    }
}

fn app_survives(want: bool, o: &Observed) -> Outcome {
    let dead: Vec<&str> = o
        .apps_alive
        .iter()
        .filter(|a| !a.1)
        .map(|a| a.0.as_str())
        .collect();
    let observed = if dead.is_empty() {
        "every app is alive".to_string()
    } else {
        format!("dead: {}", dead.join(", "))
    };
    // `false` means the apps did not all make it (at least one died).
    let passed = if want {
        dead.is_empty()
    } else {
        !dead.is_empty()
    };
    Outcome {
        expected: want.to_string(),
        observed,
        passed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn obs() -> Observed {
        Observed {
            scope: "stage 2".into(),
            oom_kills: 3,
            victims: vec!["worker".into(); 3],
            charged: vec![(200 * MIB, 202 * MIB)],
            peak_working_set: 300 * MIB,
            apps_alive: vec![("node".into(), true)],
            psi: None,
        }
    }

    #[test]
    fn psi_within_passes_fails_and_says_why() {
        let e = Expectations {
            psi_some_within: Some((10.0, 3.0)),
            ..Default::default()
        };
        let with = |some: Option<f64>, never_reached: bool| Observed {
            psi: Some(ObservedPsi {
                some_pct: some,
                full_pct: Some(1.0),
                never_reached,
                node: false,
            }),
            ..obs()
        };
        let v = one(&e, &with(Some(11.5), false));
        assert!(v.passed, "{v:?}");
        assert_eq!(v.observed, "11.5 %");
        assert!(!one(&e, &with(Some(14.0), false)).passed);
        let v = one(&e, &with(Some(9.0), true));
        assert!(!v.passed && v.observed.contains("never reached"), "{v:?}");
        let v = one(&e, &obs());
        assert!(!v.passed && v.observed.contains("no PSI"), "{v:?}");
        let full = Expectations {
            psi_full_within: Some((2.0, 1.5)),
            ..Default::default()
        };
        assert!(one(&full, &with(Some(30.0), false)).passed);
    }

    fn one(e: &Expectations, o: &Observed) -> Verdict {
        let mut v = evaluate(e, o);
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    #[test]
    fn victim_is_the_first_pick() {
        let o = obs();
        let worker = Expectations {
            victim: Some(VictimRole::Worker),
            ..Default::default()
        };
        assert!(one(&worker, &o).passed);
        // The app died after three workers: the first pick was still a worker.
        let mut mixed = o.clone();
        mixed.victims.push("app:node".into());
        mixed.oom_kills = 4;
        let v = one(&worker, &mixed);
        assert!(v.passed);
        assert!(v.observed.contains("3 workers, app node"), "{}", v.observed);
        let app = Expectations {
            victim: Some(VictimRole::Named("node".into())),
            ..Default::default()
        };
        let v = one(&app, &o);
        assert!(!v.passed);
        assert!(
            v.observed.starts_with("first victim: worker"),
            "{}",
            v.observed
        );
        let mut app_first = o.clone();
        app_first.victims.insert(0, "app:node".into());
        assert!(one(&app, &app_first).passed);
        let any_app = Expectations {
            victim: Some(VictimRole::App),
            ..Default::default()
        };
        assert!(one(&any_app, &app_first).passed);
        assert!(!one(&any_app, &o).passed);
        let none = Expectations {
            victim: Some(VictimRole::None),
            ..Default::default()
        };
        assert!(!one(&none, &o).passed);
        assert!(one(&none, &Observed::default()).passed);
    }

    #[test]
    fn untraced_kills_are_named() {
        let mut o = obs();
        o.oom_kills = 5;
        let v = one(
            &Expectations {
                victim: Some(VictimRole::Worker),
                ..Default::default()
            },
            &o,
        );
        assert!(
            v.observed.contains("2 kill(s) the tracer did not see"),
            "{}",
            v.observed
        );
        let silent = Observed {
            oom_kills: 1,
            ..Default::default()
        };
        let v = one(
            &Expectations {
                victim: Some(VictimRole::Worker),
                ..Default::default()
            },
            &silent,
        );
        assert!(!v.passed, "a kill nobody saw proves nothing");
    }

    #[test]
    fn counts_and_sizes() {
        let o = obs();
        let e = Expectations {
            max_oom_kills: Some(2),
            min_oom_kills: Some(1),
            charged_within: Some(0.02),
            working_set_below: Some(300 * MIB),
            app_survives: Some(true),
            line: 7,
            ..Default::default()
        };
        let v = evaluate(&e, &o);
        let get = |k: &str| v.iter().find(|x| x.key == k).expect(k);
        assert!(!get("max_oom_kills").passed);
        assert!(get("min_oom_kills").passed);
        assert!(get("charged_within").passed, "{:?}", get("charged_within"));
        assert!(get("charged_within").observed.contains("+1.0%"));
        assert!(!get("working_set_below").passed, "equal is not below");
        assert!(get("app_survives").passed);
        assert!(v.iter().all(|x| x.line == 7 && x.scope == "stage 2"));
        let mut off = o.clone();
        off.charged = vec![(200 * MIB, 51 * MIB)];
        let v = evaluate(
            &Expectations {
                charged_within: Some(0.02),
                ..Default::default()
            },
            &off,
        );
        assert!(!v[0].passed);
        assert!(v[0].observed.contains("-74.5%"), "{}", v[0].observed);
        // With the VM allowance, a few MiB of process cost on a small size still pass.
        let mut small = o.clone();
        small.charged = vec![(25 * MIB, 27 * MIB)];
        let strict = Expectations {
            charged_within: Some(0.02),
            ..Default::default()
        };
        assert!(!evaluate(&strict, &small)[0].passed);
        let vm = Expectations {
            charged_allowance: 4 * MIB,
            ..strict
        };
        let v = evaluate(&vm, &small);
        assert!(v[0].passed, "{v:?}");
        assert!(v[0].expected.contains("OOMLAB_VM"));
    }

    #[test]
    fn app_survives_false_wants_a_death() {
        let mut o = obs();
        let e = Expectations {
            app_survives: Some(false),
            ..Default::default()
        };
        assert!(!one(&e, &o).passed);
        o.apps_alive[0].1 = false;
        let v = one(&e, &o);
        assert!(v.passed);
        assert_eq!(v.observed, "dead: node");
    }
}
