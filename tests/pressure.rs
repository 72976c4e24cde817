//! `oomlab inject --pressure`: the stall level it holds, checked against the kernel's own PSI
//! counters (read here, not oomlab's reading): the target's `memory.pressure` on cgroup v2 (the
//! VM matrix), the node's `/proc/pressure/memory` with `--node-pressure` on v1 (the host). No
//! OOM kill, and everything released at the end.

mod common;

use std::{fs, process::Child, time::Duration};

use common::{cgroup, guard::Reap, inject::Injector, wait_until};
use stress_user::cgroup::{pressure::parse_psi, MemCgroup, PsiScope, Version};

/// Seconds the controller gets to settle before the kernel's counter is read (the issue's
/// bound).
const SETTLE: Duration = Duration::from_secs(10);

/// (monotonic µs, some µs, full µs) of a PSI file.
fn psi_now(text: &str) -> (u64, u64, u64) {
    let t = parse_psi(text, PsiScope::Cgroup).expect("a PSI file");
    let now = stress_user::sys::monotonic().as_micros() as u64;
    (now, t.some_us, t.full_us)
}

fn share(a: (u64, u64, u64), b: (u64, u64, u64), full: bool) -> f64 {
    let wall = (b.0 - a.0) as f64;
    let stall = if full { b.2 - a.2 } else { b.1 - a.1 } as f64;
    stall / wall * 100.0
}

/// Runs `--pressure level` for `secs` in `cg` (with `extra` flags), and returns the kernel's
/// share of wall time after settling, read from `psi_file`.
fn held(cg: &MemCgroup, level: &str, secs: u64, extra: &[&str], psi_file: &str, full: bool) -> f64 {
    let path = cg.path();
    let dur = format!("{secs}s");
    let mut args = vec![
        "--cgroup",
        path.as_str(),
        "--pressure",
        level,
        "--duration",
        dur.as_str(),
    ];
    args.extend_from_slice(extra);
    let mut inj = Injector::start(&args);
    // Settled: SETTLE seconds after the first sample.
    inj.wait_for("sample", Duration::from_secs(15));
    std::thread::sleep(SETTLE);
    let a = psi_now(&fs::read_to_string(psi_file).expect("PSI file"));
    let (status, summary) = inj.finish_within(Duration::from_secs(secs + 30));
    let b = psi_now(&fs::read_to_string(psi_file).expect("PSI file"));
    // How the controller moved, second by second (the console log of a VM run keeps it).
    for s in inj.all("sample") {
        let h = s;
        eprintln!(
            "  {:5.1}s 1s {:5.1} % window {:5.1} %  squeeze {:5.1} MiB room {:4.1} MiB set {:4.1} MiB pace {:5} made {:5} cpu {:4.1} %",
            s["elapsed_s"].as_f64().unwrap_or(0.0),
            h["psi_last_second_pct"].as_f64().unwrap_or(0.0),
            h[if full { "psi_full_pct" } else { "psi_some_pct" }].as_f64().unwrap_or(0.0),
            h["squeeze_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            h["room_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            h["cycle_set_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            h["cycle_pages_per_s"].as_u64().unwrap_or(0),
            h["cycle_pages_made_per_s"].as_u64().unwrap_or(0),
            h["oomlab_cpu_pct"].as_f64().unwrap_or(0.0),
        );
    }
    assert!(status.success(), "oomlab inject failed: {summary}");
    assert_eq!(summary["oom_kills"], 0, "an OOM kill: {summary}");
    assert_eq!(cg.oom_kills().expect("oom_kill counter"), 0);
    eprintln!(
        "{level}: kernel {:.1} % over {:.0} s; oomlab said {summary}",
        share(a, b, full),
        (b.0 - a.0) as f64 / 1e6
    );
    share(a, b, full)
}

fn app(cg: &MemCgroup, size: &str) -> Reap {
    let child: Child = common::app(&cg.path(), size)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("oomlab app");
    let reap = Reap(child);
    assert!(
        wait_until(Duration::from_secs(10), || cg.usage().unwrap_or(0)
            > 8 << 20),
        "the app did not allocate"
    );
    reap
}

/// Only the app is left in the cgroup, and the squeeze is gone.
fn released(cg: &MemCgroup, app_pid: u32) {
    assert!(
        wait_until(Duration::from_secs(10), || cg
            .procs()
            .is_ok_and(|p| p == vec![app_pid as i32])),
        "workers left in {}: {:?}",
        cg.path(),
        cg.procs()
    );
}

/// A v2 scratch cgroup with a limit, or `None` (and why) where this is not v2.
fn v2_scratch(test: &str, name: &str) -> Option<stress_user::cgroup::ScratchCgroup> {
    if !common::need_root(test) {
        return None;
    }
    let hier = cgroup::hierarchy();
    if hier.memory_version != Version::V2 {
        eprintln!("skipped: {test}: per-cgroup PSI needs cgroup v2 (the VM matrix runs this)");
        return None;
    }
    Some(cgroup::scratch(&hier, name, Some(96 << 20)))
}

fn v2_holds_some(test: &str, pct: f64) {
    let Some(scratch) = v2_scratch(test, &format!("psi-some{pct}")) else {
        return;
    };
    let cg = scratch.cgroup();
    let app = app(cg, "16MiB");
    let level = format!("some={pct}%");
    let psi = cg.dir().join("memory.pressure").display().to_string();
    let got = held(cg, &level, 30, &[], &psi, false);
    assert!(
        (got - pct).abs() <= 4.0,
        "kernel some {got:.1} %, want {pct} ± 4"
    );
    released(cg, app.0.id());
}

#[test]
fn v2_holds_some_10_percent_in_the_target() {
    let test = "v2_holds_some_10_percent_in_the_target";
    // One guest at a time it held 9.9 / 11.0 / 11.1 % on 5.10 / 6.1 / 6.12; with the matrix's
    // two TCG guests sharing the host's 2 cores, 5.10 measured 25.4 %. Until the controller
    // copes with a starved CPU: `cargo xtask vm-test --kernel K --test pressure`, one kernel.
    v2_holds_some(test, 10.0);
}

#[test]
fn v2_holds_some_30_percent_in_the_target() {
    v2_holds_some("v2_holds_some_30_percent_in_the_target", 30.0);
}

/// The app's own cgroup below the target (v2 charges it to the target, the nearest cgroup with
/// the memory controller, while its PSI is its own): removed after the app is gone.
struct AppChild(std::path::PathBuf);

impl Drop for AppChild {
    fn drop(&mut self) {
        for _ in 0..100 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `full=5%` with an app that allocates all the time (`--latency`): the target's `full` is
/// held, and the app's own cgroup shows that the app is one of the tasks stalled.
#[test]
fn v2_holds_full_5_percent_with_the_app_stalled() {
    let test = "v2_holds_full_5_percent_with_the_app_stalled";
    let Some(scratch) = v2_scratch(test, "psi-full") else {
        return;
    };
    let cg = scratch.cgroup();
    let child = AppChild(cg.dir().join("app"));
    fs::create_dir(&child.0).expect("the app's child cgroup");
    let child_path = format!("{}/app", cg.path());
    let app_proc: Child = common::app(&child_path, "16MiB")
        .args(["--latency", "--duration", "60s"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("oomlab app");
    let app_reap = Reap(app_proc);
    assert!(
        wait_until(Duration::from_secs(10), || cg.usage().unwrap_or(0)
            > 8 << 20),
        "the app did not allocate"
    );
    let app_psi = child.0.join("memory.pressure");
    let before = psi_now(&fs::read_to_string(&app_psi).expect("the app's memory.pressure"));
    let psi = cg.dir().join("memory.pressure").display().to_string();
    let got = held(cg, "full=5%", 30, &[], &psi, true);
    let after = psi_now(&fs::read_to_string(&app_psi).expect("the app's memory.pressure"));
    let app_some = share(before, after, false);
    eprintln!("the app's own some: {app_some:.2} %");
    assert!(
        (got - 5.0).abs() <= 4.0,
        "kernel full {got:.1} %, want 5 ± 4"
    );
    assert!(
        app_some > 0.1,
        "the app was not stalled: its own some {app_some:.2} %"
    );
    drop(app_reap);
    drop(child);
}

#[test]
fn v1_node_pressure_holds_some_5_percent_of_the_node() {
    if !common::need_root("v1_node_pressure_holds_some_5_percent_of_the_node") {
        return;
    }
    let hier = cgroup::hierarchy();
    if hier.memory_version != Version::V1 {
        eprintln!("skipped: --node-pressure on v1 is the host's case");
        return;
    }
    let scratch = cgroup::scratch(&hier, "psi-node", Some(256 << 20));
    let cg = scratch.cgroup();
    let app = app(cg, "32MiB");
    let got = held(
        cg,
        "some=5%",
        20,
        &["--node-pressure"],
        "/proc/pressure/memory",
        false,
    );
    assert!((got - 5.0).abs() <= 4.0, "node some {got:.1} %, want 5 ± 4");
    released(cg, app.0.id());
}

/// An experiment stage holding a level passes `psi_some_within` when the kernel's stall is
/// there, and fails, naming the reason, when the level cannot be reached in the stage's time
/// (2 s: the squeeze alone takes longer). Host only: the v2 case above covers the VM matrix,
/// and CI time there is scarce.
#[test]
fn experiment_psi_expectation_passes_and_fails_when_it_should() {
    if !common::need_root("experiment_psi_expectation_passes_and_fails_when_it_should")
        || common::skip_in_vm(
            "experiment_psi_expectation_passes_and_fails_when_it_should",
            "its 17 s of held pressure would cost every kernel's CI time; v2 is covered above",
        )
    {
        return;
    }
    let toml = r#"
name = "psi-expect"
[target]
scratch = true
memory_limit = "256MiB"
[[apps]]
name = "service"
size = "32MiB"
[[stages]]
name = "held"
inject = { pressure = "some=8%" }
hold = "15s"
[stages.expect]
psi_some_within = "8%±5"
[[stages]]
name = "too short"
inject = { pressure = "some=40%" }
hold = "2s"
[stages.expect]
psi_some_within = "40%±5"
"#;
    let dir = common::guard::TempPath::dir("psi-expect");
    let file = dir.path().join("psi.toml");
    fs::write(&file, toml).expect("write the experiment");
    let report = dir.path().join("report");
    let out = common::oomlab()
        .args(["run", file.to_str().expect("utf-8"), "--report"])
        .arg(&report)
        .output()
        .expect("oomlab run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one expectation must fail: {text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(report.join("report.json")).expect("report"))
            .expect("report.json");
    let verdicts = json["expectations"].as_array().expect("expectations");
    let of = |stage: &str| {
        verdicts
            .iter()
            .find(|v| v["scope"] == stage && v["key"] == "psi_some_within")
            .unwrap_or_else(|| panic!("no psi verdict for {stage}: {json:#}"))
    };
    assert_eq!(of("stage 1")["passed"], true, "{text}");
    let short = of("stage 2");
    assert_eq!(short["passed"], false, "{text}");
    assert!(
        short["observed"]
            .as_str()
            .is_some_and(|o| o.contains("never reached")),
        "the failure says why: {short}"
    );
}
