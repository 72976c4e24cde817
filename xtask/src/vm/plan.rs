//! What the guests run: stress-user's integration test binaries, built by cargo with the oomlab
//! binary they call, and the libtest names listed from each, one planned test per line of
//! /vm/plan.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::workspace_root;

pub(super) struct TestBin {
    /// The `[[test]]` name, e.g. `e2e_mark_victim`.
    pub(super) name: String,
    pub(super) path: PathBuf,
}

pub(super) struct Built {
    pub(super) tests: Vec<TestBin>,
    pub(super) oomlab: PathBuf,
}

/// One test a guest runs alone with `--exact`.
pub(super) struct PlannedTest {
    /// The test binary's `[[test]]` name.
    pub(super) group: String,
    pub(super) bin: PathBuf,
    pub(super) test: String,
}

/// Builds every integration test of stress-user (and with them the oomlab binary whose absolute
/// path they carry in `CARGO_BIN_EXE_oomlab`) and reads the paths from cargo's JSON messages.
pub(super) fn build_tests(release: bool) -> Result<Built> {
    let mut args = vec![
        "test",
        "--package",
        "stress-user",
        "--test",
        "*",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ];
    if release {
        args.push("--release");
    }
    eprintln!("xtask vm-test: $ cargo {}", args.join(" "));
    let output = Command::new("cargo")
        .args(&args)
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !output.status.success() {
        bail!("building the integration tests failed: {}", output.status);
    }
    parse_artifacts(&String::from_utf8_lossy(&output.stdout))
}

fn parse_artifacts(json_lines: &str) -> Result<Built> {
    let mut tests = Vec::new();
    let mut oomlab = None;
    for line in json_lines.lines() {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let name = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if kinds.iter().any(|k| k == "test") {
            tests.push(TestBin {
                name,
                path: exe.into(),
            });
        } else if kinds.iter().any(|k| k == "bin") && name == "oomlab" {
            oomlab = Some(PathBuf::from(exe));
        }
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Built {
        tests,
        oomlab: oomlab.context("cargo built no `oomlab` binary alongside the tests")?,
    })
}

/// Every test of the binaries named in `wanted` (all binaries when it is empty).
pub(super) fn plan(built: &Built, wanted: &[String]) -> Result<Vec<PlannedTest>> {
    let mut plan = Vec::new();
    for bin in &built.tests {
        if !wanted.is_empty() && !wanted.contains(&bin.name) {
            continue;
        }
        let ignored = list_tests(&bin.path, true)?;
        for test in list_tests(&bin.path, false)? {
            // `#[ignore]`d tests are benchmarks' guest halves (`cargo xtask bench pressure`
            // runs them with `ignored_test`), not part of the matrix.
            if ignored.contains(&test) {
                continue;
            }
            plan.push(PlannedTest {
                group: bin.name.clone(),
                bin: bin.path.clone(),
                test,
            });
        }
    }
    for want in wanted {
        if !built.tests.iter().any(|b| &b.name == want) {
            bail!("no integration test binary named {want} (see stress-user/Cargo.toml [[test]])");
        }
    }
    if plan.is_empty() {
        bail!("no integration tests to run");
    }
    Ok(plan)
}

/// One `#[ignore]`d test of the binary `group`, alone: what a benchmark runs in the guests.
pub(super) fn ignored_test(built: &Built, group: &str, test: &str) -> Result<Vec<PlannedTest>> {
    let bin = built
        .tests
        .iter()
        .find(|b| b.name == group)
        .with_context(|| format!("no integration test binary named {group}"))?;
    if !list_tests(&bin.path, true)?.iter().any(|t| t == test) {
        bail!("{group} has no #[ignore]d test named {test}");
    }
    Ok(vec![PlannedTest {
        group: group.into(),
        bin: bin.path.clone(),
        test: test.into(),
    }])
}

/// The test names in a libtest binary (`--list --format terse` prints `name: test`); with
/// `ignored`, only the `#[ignore]`d ones.
fn list_tests(bin: &Path, ignored: bool) -> Result<Vec<String>> {
    let mut cmd = Command::new(bin);
    cmd.args(["--list", "--format", "terse"]);
    if ignored {
        cmd.arg("--ignored");
    }
    let out = cmd
        .output()
        .with_context(|| format!("listing the tests of {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list failed: {}", bin.display(), out.status);
    }
    Ok(parse_test_list(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_test_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_test_lists() {
        assert_eq!(
            parse_test_list("a::b: test\nc: test\nbench_x: benchmark\n"),
            ["a::b", "c"]
        );
    }
}
