//! The victim's role comes from the kernel's event: `oomlab trace` beside a separate `oomlab
//! inject --on-oom respawn` reports every killed worker as `oomlab_worker: true` and the app
//! killed beside them as `false` — even when the worker is gone before `/proc` could be read;
//! inside `oomlab run`, the kernel's set of the run's own workers decides, so an app that takes
//! the workers' name is still the app.

mod common;

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use common::{
    cgroup,
    guard::{Reap, TempPath},
    inject::Injector,
    lines::of_type,
    trace::TraceChild,
};
use serde_json::Value;
use stress_user::sys::WORKER_COMM;

/// Worker kills the test wants to see at least.
const WORKER_KILLS: usize = 30;

#[test]
fn every_worker_victim_is_a_worker_and_the_app_is_not() {
    if !common::need_root("every_worker_victim_is_a_worker_and_the_app_is_not") {
        return;
    }
    if common::skip_in_vm(
        "every_worker_victim_is_a_worker_and_the_app_is_not",
        "≥ 30 OOM kills take minutes under TCG",
    ) {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "roles", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let trace = TraceChild::start(&["--cgroup", &path, "--events", "oom"]);
    // The app goes first: adj 1000 makes it the kernel's first pick.
    let app = Reap(
        common::app(&path, "4MiB")
            .args(["--oom-score-adj", "1000"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run oomlab app"),
    );
    let app_pid = i64::from(app.0.id());
    assert!(
        common::wait_until(Duration::from_secs(10), || cg
            .procs()
            .is_ok_and(|p| p.iter().any(|q| i64::from(*q) == app_pid))),
        "the app joined {path}"
    );
    let mut inj = Injector::start(&[
        "--cgroup",
        &path,
        "--size",
        "160MiB",
        "--workers",
        "8",
        "--on-oom",
        "respawn",
        "--allow-oom",
        "--duration",
        "10s",
    ]);
    let (_, summary) = inj.finish_within(Duration::from_secs(60));
    let workers: BTreeSet<i64> = inj.worker_pids().into_iter().map(i64::from).collect();
    let lines = trace.stop();
    let victims = of_type(&lines, "oom_victim");
    let mut worker_kills = 0;
    let mut app_seen = false;
    for v in &victims {
        let pid = v["pid"].as_i64().expect("pid");
        if pid == app_pid {
            assert_eq!(v["oomlab_worker"], false, "the app is no worker: {v}");
            app_seen = true;
        } else {
            assert!(
                workers.contains(&pid),
                "a victim is the app or a worker: {v}"
            );
            assert_eq!(v["oomlab_worker"], true, "a worker victim: {v}");
            worker_kills += 1;
        }
    }
    eprintln!("{worker_kills} worker victims; injector summary {summary}");
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(
        victims.len() as u64,
        kills,
        "one oom_victim per kernel kill"
    );
    assert!(app_seen, "the app was killed and reported: {victims:#?}");
    assert!(
        worker_kills >= WORKER_KILLS,
        "at least {WORKER_KILLS} worker kills: {worker_kills}"
    );
    drop(app);
    drop(scratch);
}

/// Inside `oomlab run` the role comes from the kernel's set of the run's own workers: an app that
/// names itself `oomlab-worker` (as any process may) is still the app, and every worker victim
/// is one of the workers the run started. The kernel's `oom_kill` count is the oracle for the
/// number of victims.
#[test]
fn inside_run_an_app_named_like_a_worker_is_not_one() {
    let test = "inside_run_an_app_named_like_a_worker_is_not_one";
    if !common::need_root(test) {
        return;
    }
    let dir = TempPath::dir("roles-run");
    let file = dir.path().join("impostor.toml");
    let report = dir.path().join("report");
    // Sizes in the file are divided by 8 in the VMs (OOMLAB_VM=1); the app's argv is not, so
    // it stays small enough for the VMs' 8 MiB limit.
    std::fs::write(
        &file,
        format!(
            r#"name = "impostor"
[target]
scratch = true
memory_limit = "64MiB"

[[apps]]
name = "impostor"
command = ["{oomlab}", "app", "--size", "2MiB", "--comm", "{WORKER_COMM}", "--duration", "60s"]
oom_score_adj = 1000

[[stages]]
name = "push past the limit"
inject = {{ size = "96MiB", workers = 2, on_oom = "respawn" }}
# Long enough for the emulated VMs, where the workers charge slowly on a loaded host.
hold = "8s"
"#,
            oomlab = common::OOMLAB,
        ),
    )
    .expect("write the experiment");
    let out = common::oomlab()
        .args(["run", file.to_str().expect("utf-8"), "--output", "json"])
        .args(["--report", report.to_str().expect("utf-8")])
        .output()
        .expect("run oomlab run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = format!(
        "{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let pids_of = |ty: &str| -> BTreeSet<i64> {
        of_type(&lines, ty)
            .iter()
            .filter_map(|v| v["pid"].as_i64())
            .collect()
    };
    let app_pid = *pids_of("app_started")
        .iter()
        .next()
        .unwrap_or_else(|| panic!("no app_started line: {log}"));
    let workers = pids_of("worker_started");
    let victims = of_type(&lines, "oom_victim");
    let mut app_seen = false;
    for v in &victims {
        let pid = v["pid"].as_i64().expect("pid");
        if pid == app_pid {
            assert_eq!(v["role"], "app:impostor", "the impostor is the app: {v}");
            assert_eq!(v["comm"], WORKER_COMM, "it did take the workers' name: {v}");
            app_seen = true;
        } else {
            assert!(
                workers.contains(&pid),
                "a victim is the app or a worker: {v}\n{log}"
            );
            assert_eq!(v["role"], "worker", "a worker victim: {v}");
        }
    }
    assert!(app_seen, "the impostor (adj 1000) was killed: {log}");
    // Each worker's role came from the kernel's own-worker set, not the fallback.
    assert!(
        !log.contains("killed before the kernel knew it"),
        "a worker victim was missing from the kernel's set: {log}"
    );
    assert!(victims.len() >= 2, "workers were killed too: {log}");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(report.join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    assert_eq!(
        json["summary"]["oom_kills"].as_u64(),
        Some(victims.len() as u64),
        "one oom_victim per kill the kernel counted: {log}"
    );
}
