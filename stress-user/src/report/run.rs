//! The run's sinks: what `oomlab run` prints when it ends — the summary, each expectation's
//! verdict, where the report went and the conclusion — as aligned lines or JSON lines.

use std::{
    io::{self, Write},
    path::Path,
};

use super::{json_line, timeline::RunReport};
use crate::size::human;

/// One `expectation` line per verdict, then the `summary`.
pub fn write_json(out: &mut impl Write, r: &RunReport) -> io::Result<()> {
    for v in &r.expectations {
        json_line(out, "expectation", v)?;
    }
    json_line(out, "summary", &r.summary)
}

/// The summary, the verdicts, where the report went and the conclusion, as aligned lines.
pub fn print_human(r: &RunReport, dir: Option<&Path>) {
    let s = &r.summary;
    println!();
    println!("== summary");
    println!(
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
    );
    if !r.expectations.is_empty() {
        println!("== expectations");
        for v in &r.expectations {
            println!(
                "   {:<8} {}  {:<32} {}",
                v.scope,
                if v.passed { "pass" } else { "FAIL" },
                format!("{} = {}", v.key, v.expected),
                v.observed,
            );
        }
        println!(
            "   {} passed, {} failed",
            s.expectations_passed, s.expectations_failed
        );
    }
    if let Some(d) = dir {
        println!(
            "== report: {0}/report.md, {0}/report.json, {0}/timeline.svg",
            d.display()
        );
    }
    if let Some(c) = &r.conclusion {
        println!("== conclusion");
        for line in c.trim().lines() {
            println!("   {line}");
        }
    }
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
}
