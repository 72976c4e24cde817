//! `oomlab serve` against the real kernel: after real OOM kills in a scratch cgroup, `/metrics`
//! counts exactly the kernel's `oom_kill` delta for that cgroup, and `/events` carries the very
//! same victim lines as `oomlab trace --output json` running beside it; a kill right before
//! SIGTERM still reaches `/events`, which then ends cleanly.

mod common;

use std::{os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use common::{
    cgroup,
    guard::Reap,
    kmsg::Kmsg,
    lines::{is_type, Lines},
    serve::{kill_series, Serve},
};
use nix::sys::signal::Signal;

const KILLS: usize = 3;

/// `/metrics` counts `kills` OOM kills for the cgroup `path`, labelled with the victim's comm
/// and the episode's constraint (`all_reported`: the kernel printed a report for each kill).
fn check_kill_counters(serve: &Serve, path: &str, kills: u64, all_reported: bool) {
    // Counters follow the events within moments; wait (bounded) until they settle.
    let counted = serve.wait_kills(path, kills, Duration::from_secs(10));
    assert_eq!(
        counted.0, kills as f64,
        "oomlab_oom_kills_total for {path} must equal the kernel's oom_kill delta; /metrics:\n{}",
        counted.1
    );
    assert!(
        counted.1.contains(&format!(
            "oomlab_oom_kills_total{{cgroup=\"{path}\",namespace=\"\",pod=\"\",container=\"\",comm=\"oomlab\"",
        )),
        "victim series carries comm and empty pod labels outside kubelet trees:\n{}",
        counted.1
    );

    // The constraint comes from the kernel's report of each episode: a memcg OOM is
    // CONSTRAINT_MEMCG, and "unknown" only when the kernel's log shows it ratelimited a report.
    let wanted = if all_reported {
        "constraint=\"CONSTRAINT_MEMCG\""
    } else {
        eprintln!("the kernel ratelimited an OOM report (no oom-kill: line): constraint unknown");
        "constraint=\"unknown\""
    };
    assert!(
        kill_series(&counted.1, path)
            .iter()
            .all(|l| l.contains("constraint=\"CONSTRAINT_MEMCG\"") || l.contains(wanted)),
        "a memcg OOM is labelled CONSTRAINT_MEMCG:\n{}",
        counted.1
    );
    assert!(
        counted.1.contains("oomlab_oom_episodes_total "),
        "{}",
        counted.1
    );
}

/// `/events` and `oomlab trace --output json` carry the same `oom_victim` line for `pid`,
/// killed in the cgroup `path`.
fn same_victim_line(events: &mut Lines, traced: &mut Lines, pid: i64, path: &str) {
    let is_victim = |v: &serde_json::Value| {
        is_type(v, "oom_victim") && v.get("pid").and_then(|p| p.as_i64()) == Some(pid)
    };
    let from_serve = events
        .wait_for(Duration::from_secs(10), is_victim)
        .unwrap_or_else(|| panic!("/events has no oom_victim for pid {pid}"));
    let from_trace = traced
        .wait_for(Duration::from_secs(10), is_victim)
        .unwrap_or_else(|| panic!("oomlab trace has no oom_victim for pid {pid}"));
    // Each tracer instance runs its own copy of the program, which stamps the event with
    // its own bpf_ktime_get_ns(): the same kernel event, microseconds apart.
    let ts = |v: &serde_json::Value| v["ts"].as_f64().expect("ts is a number");
    assert!(
        (ts(&from_serve) - ts(&from_trace)).abs() < 0.05,
        "the same event: {from_serve} vs {from_trace}"
    );
    // How each instance learnt the victim's cgroup (its /proc read, or the attach event it
    // saw) depends on which won the race with the victim's exit; the cgroup itself must
    // agree.
    let (mut a, mut b) = (from_serve.clone(), from_trace.clone());
    for v in [&mut a, &mut b] {
        v["ts"] = serde_json::Value::Null;
        v["cgroup_source"] = serde_json::Value::Null;
    }
    assert_eq!(a["cgroup"], path, "victim's cgroup: {from_serve}");
    assert_eq!(
        a, b,
        "/events and `trace --output json` must carry the same line"
    );
    assert_eq!(from_serve["oom_score_adj"], 300, "{from_serve}");
}

/// One more kill in the cgroup `path`, and SIGTERM to the daemon as soon as the victim is
/// dead: its lines still reach `/events`, which then ends.
fn last_kill_reaches_events(serve: &mut Serve, events: &mut Lines, path: &str) {
    let mut last = common::app(path, "64MiB")
        .stdout(Stdio::null())
        .spawn()
        .expect("run oomlab app");
    common::serve::wait_exit_unreaped(&last, Duration::from_secs(30));
    let took = serve.stop();
    let status = last.wait().expect("reap the last app");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    eprintln!("SIGTERM right after the last kill: exit in {took:?}");
    assert!(
        events.wait_end(Duration::from_secs(5)),
        "/events ends when the daemon exits"
    );
    let pid = i64::from(last.id());
    let has = |ty: &str| {
        events.seen.iter().any(|v| {
            is_type(v, ty)
                && (v["pid"].as_i64() == Some(pid)
                    || v["victims"]
                        .as_array()
                        .is_some_and(|vs| vs.iter().any(|x| x["pid"].as_i64() == Some(pid))))
        })
    };
    assert!(has("oom_victim"), "the last victim {pid} reached /events");
    assert!(
        has("oom_episode"),
        "the last episode (victim {pid}) reached /events"
    );
}

#[test]
fn metrics_and_events_match_the_kernel_and_trace() {
    if !common::need_root("metrics_and_events_match_the_kernel_and_trace") {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "serve", Some(32 << 20));
    let cg = scratch.cgroup().clone();

    let mut serve = Serve::start("");
    let mut events = common::serve::events(serve.port);
    events
        .wait_for(Duration::from_secs(5), |v| is_type(v, "ready"))
        .expect("/events starts with a ready line");

    let mut trace = Reap(
        common::oomlab()
            .args(["trace", "--output", "json"])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start oomlab trace"),
    );
    let mut traced = Lines::objects(trace.0.stdout.take().expect("trace stdout"));
    traced
        .wait_for(Duration::from_secs(20), |v| is_type(v, "ready"))
        .expect("oomlab trace prints ready");

    let mut kmsg = Kmsg::open_at_end();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let mut victims = Vec::new();
    for _ in 0..KILLS {
        let child = common::app(&cg.path(), "64MiB")
            .args(["--oom-score-adj", "300"])
            .stdout(Stdio::null())
            .spawn()
            .expect("run oomlab app");
        common::serve::wait_exit_unreaped(&child, Duration::from_secs(30));
        victims.push(child);
    }
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(
        kills, KILLS as u64,
        "each 64 MiB app in a 32 MiB cgroup is OOM-killed once"
    );

    let all_reported = victims.iter().all(|c| kmsg.reported(i64::from(c.id())));
    check_kill_counters(&serve, &cg.path(), kills, all_reported);

    for child in &victims {
        same_victim_line(&mut events, &mut traced, i64::from(child.id()), &cg.path());
    }
    for mut child in victims {
        let status = child.wait().expect("reap the app");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }
    common::signal(trace.0.id() as i32, Signal::SIGTERM);
    let _ = trace.0.wait();

    // One more kill, and SIGTERM as soon as the victim is dead: the daemon reads what the
    // kernel produced before the stop, and /events carries those lines and then ends (the
    // stream is finished, not cut).
    last_kill_reaches_events(&mut serve, &mut events, &cg.path());
    drop(serve);
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}
