//! The run's sinks: what `oomlab run` prints when it ends — the summary, what an interruption
//! cut short, each expectation's verdict, where the report went and the conclusion — as aligned
//! lines or JSON lines.

use std::{
    io::{self, Write},
    path::Path,
};

use super::{
    json_line,
    timeline::{Interruption, RunReport, RunSummary},
};
use crate::size::human;

/// One `expectation` line per verdict, an `interrupted` line if the run was stopped, then the
/// `summary`.
pub fn write_json(out: &mut impl Write, r: &RunReport) -> io::Result<()> {
    for v in &r.expectations {
        json_line(out, "expectation", v)?;
    }
    if let Some(i) = &r.interrupted {
        json_line(out, "interrupted", i)?;
    }
    json_line(out, "summary", &r.summary)
}

/// The summary, the verdicts, where the report went and the conclusion, as aligned lines; for
/// an interrupted run, what was cut short and skipped instead of the conclusion.
pub fn write_human(out: &mut impl Write, r: &RunReport, dir: Option<&Path>) -> io::Result<()> {
    let s = &r.summary;
    writeln!(out)?;
    writeln!(out, "== summary")?;
    writeln!(
        out,
        "   {:.1} s; OOM kills {} (kernel counter), {} seen ({} worker, {} app{}), {} lost; {} respawn(s); peak usage {}",
        s.duration_s,
        s.oom_kills,
        s.traced_victims,
        s.worker_kills,
        s.app_kills,
        if s.victims_from_kmsg > 0 {
            format!("; {} from the kernel log only", s.victims_from_kmsg)
        } else {
            String::new()
        },
        s.lost_events,
        s.respawns,
        human(s.peak_usage_bytes)
    )?;
    if let Some(i) = &r.interrupted {
        writeln!(out, "== interrupted")?;
        for line in interrupted_lines(r, i) {
            writeln!(out, "   {line}")?;
        }
    }
    if !r.expectations.is_empty() || s.expectations_not_evaluated > 0 {
        writeln!(out, "== expectations")?;
        for v in &r.expectations {
            writeln!(
                out,
                "   {:<8} {}  {:<32} {}",
                v.scope,
                if v.passed { "pass" } else { "FAIL" },
                format!("{} = {}", v.key, v.expected),
                v.observed,
            )?;
        }
        writeln!(out, "   {}", expectations_count(s))?;
    }
    if let Some(d) = dir {
        writeln!(
            out,
            "== report: {0}/report.md, {0}/report.json, {0}/timeline.svg",
            d.display()
        )?;
    }
    if let Some(c) = &r.conclusion {
        writeln!(out, "== conclusion")?;
        for line in c.trim().lines() {
            writeln!(out, "   {line}")?;
        }
    }
    Ok(())
}

/// `3 passed, 0 failed`, or for an interrupted run what it could not judge.
pub fn expectations_count(s: &RunSummary) -> String {
    let mut text = format!(
        "{} passed, {} failed",
        s.expectations_passed, s.expectations_failed
    );
    if s.expectations_not_evaluated > 0 {
        text = format!(
            "{text} of those evaluated; {} not evaluated (the run was interrupted)",
            s.expectations_not_evaluated
        );
    }
    text
}

/// What stopped the run, the stage it cut short and the stages it skipped.
pub fn interrupted_lines(r: &RunReport, i: &Interruption) -> Vec<String> {
    let name = |index: usize| {
        r.stages
            .iter()
            .find(|s| s.index == index)
            .map_or(String::new(), |s| s.name.clone())
    };
    let mut lines = vec![format!(
        "by {} at {:.2} s, during {}",
        i.cause, i.t, i.during
    )];
    if let Some(st) = i.stage {
        lines.push(format!("cut short: stage {} ({})", st + 1, name(st)));
    }
    for st in &i.skipped {
        lines.push(format!("skipped: stage {} ({})", st.index + 1, st.name));
    }
    lines.push("no conclusion: the experiment did not run to its end".into());
    lines
}

#[cfg(test)]
mod tests {
    use super::{super::fixture, *};

    #[test]
    fn json_is_the_verdicts_then_the_summary() {
        let mut out = Vec::new();
        write_json(&mut out, &fixture::report()).expect("writes to a Vec");
        let types: Vec<String> = String::from_utf8(out)
            .expect("UTF-8")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("one object a line");
                v["type"].as_str().expect("a type").to_owned()
            })
            .collect();
        assert_eq!(types, ["expectation", "expectation", "summary"]);
    }

    fn interrupted() -> RunReport {
        let mut r = fixture::report();
        r.conclusion = None;
        r.stages.truncate(1);
        r.expectations.retain(|v| v.scope != "stage 2");
        r.summary.expectations_not_evaluated = 2;
        r.interrupted = Some(Interruption {
            cause: "SIGINT".into(),
            t: 3.25,
            during: "stage 1".into(),
            stage: Some(0),
            skipped: vec![super::super::timeline::SkippedStage {
                index: 1,
                name: "push".into(),
            }],
        });
        r
    }

    #[test]
    fn an_interrupted_run_says_what_it_skipped_and_concludes_nothing() {
        let r = interrupted();
        assert!(!r.passed(), "an interrupted run never passes");
        let mut out = Vec::new();
        write_human(&mut out, &r, None).expect("writes to a Vec");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.contains("== interrupted\n   by SIGINT at 3.25 s, during stage 1"),
            "{text}"
        );
        assert!(text.contains("cut short: stage 1 ("), "{text}");
        assert!(text.contains("skipped: stage 2 (push)"), "{text}");
        assert!(
            text.contains("2 not evaluated (the run was interrupted)"),
            "{text}"
        );
        assert!(!text.contains("== conclusion"), "{text}");
        let mut json = Vec::new();
        write_json(&mut json, &r).expect("writes to a Vec");
        let json = String::from_utf8(json).expect("UTF-8");
        assert!(json.contains(r#""type":"interrupted""#), "{json}");
    }
}
