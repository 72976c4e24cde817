//! What one guest's run came to: each test's outcome read from libtest's output and exit code,
//! printed per kernel and kept in target/vm/<kernel>/results.json.

use std::{fmt, fs, path::Path};

use anyhow::Result;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Skipped(r) => write!(f, "skipped: {r}"),
            Outcome::Failed(r) => write!(f, "FAILED: {r}"),
        }
    }
}

pub(super) struct TestResult {
    pub(super) group: String,
    pub(super) name: String,
    pub(super) outcome: Outcome,
    pub(super) secs: f64,
    pub(super) output: String,
}

impl TestResult {
    /// A test the guest never reported on, failed with the reason the run ended.
    pub(super) fn unreported(group: &str, name: &str, reason: String) -> Self {
        TestResult {
            group: group.into(),
            name: name.into(),
            outcome: Outcome::Failed(reason),
            secs: 0.0,
            output: String::new(),
        }
    }
}

pub(super) struct VmRun {
    /// Empty when the guest never reached /init.
    pub(super) kernel_release: String,
    pub(super) results: Vec<TestResult>,
}

impl VmRun {
    pub(super) fn failed(&self) -> impl Iterator<Item = &TestResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
    }
}

/// What libtest's output and exit code say about one test run alone with `--exact`.
pub(super) fn classify(rc: i32, output: &str, timeout: u64) -> Outcome {
    if rc == 128 + libc::SIGKILL {
        return Outcome::Failed(format!(
            "killed by SIGKILL after at most {timeout} s (the guest's per-test deadline, or the OOM killer took the test itself)"
        ));
    }
    if rc != 0 {
        let mut lines = output.lines();
        while let Some(l) = lines.next() {
            if let Some(at) = l.find("panicked at ") {
                let place = l[at + "panicked at ".len()..].trim_end_matches(':');
                let msg = lines.next().unwrap_or_default();
                return Outcome::Failed(format!("{msg} (at {place})"));
            }
        }
        return Outcome::Failed(format!("exit code {rc}"));
    }
    let summary = output.lines().rev().find(|l| l.starts_with("test result:"));
    match summary {
        Some(s) if s.contains(" 0 passed") && s.contains(" 1 ignored") => {
            return Outcome::Skipped("#[ignore]".into());
        }
        Some(s) if s.contains(" 0 passed") => {
            return Outcome::Failed(format!("no test ran: {s}"));
        }
        None => return Outcome::Failed("no libtest summary in the output".into()),
        _ => {}
    }
    match output.lines().find_map(|l| l.split_once("skipped: ")) {
        Some((_, reason)) => Outcome::Skipped(reason.trim().to_string()),
        None => Outcome::Passed,
    }
}

pub(super) fn print_results(series: &str, run: &VmRun) {
    println!("\n=== kernel {series} ({}) ===", run.kernel_release);
    let (mut p, mut s, mut f) = (0, 0, 0);
    for r in &run.results {
        match r.outcome {
            Outcome::Passed => p += 1,
            Outcome::Skipped(_) => s += 1,
            Outcome::Failed(_) => f += 1,
        }
        println!(
            "  {:<60} {} ({:.1} s)",
            format!("{}::{}", r.group, r.name),
            r.outcome,
            r.secs
        );
    }
    for r in run.failed() {
        println!(
            "\n--- output of {}::{} on {series} ---\n{}",
            r.group,
            r.name,
            r.output.trim_end()
        );
    }
    println!("kernel {series}: {p} passed, {s} skipped, {f} failed");
}

/// How one guest's run ended, for results.json.
pub(super) struct RunSummary<'a> {
    pub(super) series: &'a str,
    pub(super) guest_memory_mib: u32,
    pub(super) seconds: f64,
    pub(super) ended: &'a str,
}

/// Writes `out`/results.json: the run's summary and one entry per test.
pub(super) fn write_results_json(out: &Path, summary: &RunSummary<'_>, run: &VmRun) -> Result<()> {
    let json = json!({
        "kernel_series": summary.series,
        "kernel_release": run.kernel_release,
        "guest_memory_mib": summary.guest_memory_mib,
        "seconds": summary.seconds,
        "ended": summary.ended,
        "tests": run.results.iter().map(|r| {
            let (outcome, reason) = match &r.outcome {
                Outcome::Passed => ("passed", None),
                Outcome::Skipped(why) => ("skipped", Some(why)),
                Outcome::Failed(why) => ("failed", Some(why)),
            };
            json!({"binary": r.group, "test": r.name, "outcome": outcome, "reason": reason, "seconds": r.secs})
        }).collect::<Vec<_>>(),
    });
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_libtest_runs() {
        let ok = "running 1 test\ntest x ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(classify(0, ok, 10), Outcome::Passed);
        let skipped = "running 1 test\ntest x ... skipped: needs cgroup v2 memory controller\nok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            classify(0, skipped, 10),
            Outcome::Skipped("needs cgroup v2 memory controller".into())
        );
        let ignored = "running 1 test\ntest x ... ignored\n\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            classify(0, ignored, 10),
            Outcome::Skipped("#[ignore]".into())
        );
        let none = "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n";
        assert!(matches!(classify(0, none, 10), Outcome::Failed(_)));
        let panic = "running 1 test\ntest x ... \nthread 'x' panicked at tests/e2e.rs:40:5:\nthe child should be OOM-killed\nnote: …\nFAILED\n";
        assert_eq!(
            classify(101, panic, 10),
            Outcome::Failed("the child should be OOM-killed (at tests/e2e.rs:40:5)".into())
        );
        assert!(matches!(classify(137, "", 10), Outcome::Failed(r) if r.contains("SIGKILL")));
    }
}
