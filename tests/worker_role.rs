//! The victim's role comes from the kernel's event: `oomlab trace` beside a separate `oomlab
//! inject --on-oom respawn` reports every killed worker as `oomlab_worker: true` and the app
//! killed beside them as `false` — even when the worker is gone before `/proc` could be read.

mod common;

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use common::{cgroup, guard::Reap, inject::Injector, lines::of_type, trace::TraceChild};

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
