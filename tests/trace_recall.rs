//! Recall of `oomlab trace --cgroup`: every OOM kill the kernel counts in a scratch cgroup is
//! reported — same number as `memory.oom_control` oom_kill, same pids as `/dev/kmsg` "Killed
//! process" lines, none lost — with the victim's comm and adj, and nothing from other cgroups.
//! `oom_score_adj` writes are reported with their writer, inside or outside the target.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::ExitStatusExt,
    process::{Child, Stdio},
    time::Duration,
};

use common::{
    cgroup,
    kmsg::{killed_pid, Kmsg},
    lines::of_type,
    trace::TraceChild,
};
use stress_user::cgroup::MemCgroup;

const KILLS: usize = 60;

/// `oomlab app` holding 1 MiB in `cg` for `duration`, a process whose adj the tests rewrite.
fn spawn_holder(cg: &MemCgroup, duration: &str) -> Child {
    common::app(&cg.path(), "1MiB")
        .args(["--duration", duration])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the holder")
}

/// Waits until the kernel lists `pid` in `cg` (a new process may still be on its way in).
fn wait_joined(cg: &MemCgroup, pid: i32) {
    let joined = || cg.procs().expect("procs").contains(&pid);
    assert!(
        common::wait_until(Duration::from_secs(10), joined),
        "holder never joined the cgroup"
    );
}

/// Runs `oomlab app` allocating 48 MiB in `cg` (with `adj` when given), which the test's small
/// limit must OOM-kill; returns its pid.
fn oom_victim(cg: &MemCgroup, adj: Option<i32>) -> i32 {
    let mut cmd = common::app(&cg.path(), "48MiB");
    if let Some(adj) = adj {
        cmd.args(["--oom-score-adj", &adj.to_string()]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a victim");
    let pid = child.id() as i32;
    let status = child.wait_with_output().expect("wait").status;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "victim {pid} (adj {adj:?}) should be OOM-killed, got {status:?}"
    );
    pid
}

#[test]
fn every_oom_kill_in_the_target_is_reported_once() {
    if !common::need_root("every_oom_kill_in_the_target_is_reported_once") {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "recall", Some(24 << 20));
    let cg = scratch.cgroup().clone();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let mut kmsg = Kmsg::open_at_end();
    // `cgroup` too: without it the attach events are used by the filter but never printed.
    let mut tracer = TraceChild::start(&["--cgroup", &cg.path(), "--events", "oom,adj,cgroup"]);

    // A long-lived process in the target whose adj the test (outside the target) changes.
    let mut holder = spawn_holder(&cg, "60s");
    let holder_pid = holder.id() as i32;
    // `oomlab app --cgroup` writes its own pid into cgroup.procs, which fires
    // cgroup:cgroup_attach_task on every kernel (v1 and v2): the move must be reported.
    let moved = tracer
        .wait_for(Duration::from_secs(10), |v| {
            v["type"] == "cgroup" && v["op"] == "attach" && v["pid"] == holder_pid
        })
        .unwrap_or_else(|| panic!("no cgroup attach event for the holder {holder_pid}"));
    assert_eq!(
        moved["path"],
        cg.path(),
        "attach of the holder names the target: {moved}"
    );
    // The holder may still be on its way into the cgroup: wait until the kernel says it is.
    wait_joined(&cg, holder_pid);
    std::fs::write(format!("/proc/{holder_pid}/oom_score_adj"), "123").expect("write adj");
    let me = i64::from(std::process::id());
    let adj = tracer
        .wait_for(Duration::from_secs(5), |v| {
            v["type"] == "oom_score_adj" && v["pid"] == holder_pid && v["oom_score_adj"] == 123
        })
        .expect("the adj write from outside the target is reported");
    assert_eq!(
        adj["writer"]["tgid"], me,
        "writer is this test process: {adj}"
    );

    // KILLS processes, one after the other, each allocating past the limit with its own adj.
    let mut expected_adj = BTreeMap::new();
    for i in 0..KILLS {
        let adj = (i as i32 * 17) % 1000;
        let pid = oom_victim(&cg, Some(adj));
        expected_adj.insert(pid, adj);
    }

    let _ = holder.kill();
    let _ = holder.wait();
    let kills = (cg.oom_kills().expect("oom_kill counter") - kills_before) as usize;

    // The kernel log names every victim; others' OOMs on the node are told apart by pid.
    let ours: BTreeSet<i32> = expected_adj.keys().copied().collect();
    let mut kmsg_pids = BTreeSet::new();
    common::wait_until(Duration::from_secs(10), || {
        for line in kmsg.drain() {
            if let Some(pid) = killed_pid(&line).filter(|p| ours.contains(p)) {
                kmsg_pids.insert(pid);
            }
        }
        kmsg_pids.len() >= kills
    });

    // Victim events reach the tracer within milliseconds; give it a moment, then stop it.
    tracer.wait_for(Duration::from_secs(3), |v| {
        v["type"] == "oom_victim" && v["pid"] == *expected_adj.keys().last().expect("pids")
    });
    let lines = tracer.stop();
    let victims = of_type(&lines, "oom_victim");
    let lost = of_type(&lines, "lost");
    assert_eq!(lost[0]["lost"], 0, "no event may be lost: {}", lost[0]);

    let reported: Vec<i32> = victims
        .iter()
        .map(|v| v["pid"].as_i64().expect("pid") as i32)
        .collect();
    let reported_set: BTreeSet<i32> = reported.iter().copied().collect();
    assert_eq!(
        kills, KILLS,
        "the kernel counted one kill per victim process"
    );
    assert_eq!(
        reported.len(),
        kills,
        "oomlab reports exactly as many victims as memory.oom_control oom_kill went up"
    );
    assert_eq!(
        reported_set.len(),
        reported.len(),
        "no victim reported twice"
    );
    assert_eq!(reported_set, kmsg_pids, "same pids as the kernel log");
    assert_eq!(
        reported_set, ours,
        "only our processes, none from other cgroups"
    );
    let details = common::victim_details();
    if !details {
        eprintln!(
            "skipped: each victim's comm and adj: this kernel's oom:mark_victim has only pid (pids, cgroups and counts were checked)"
        );
    }
    for v in victims {
        let pid = v["pid"].as_i64().expect("pid") as i32;
        if details {
            assert_eq!(v["comm"], "oomlab", "victim comm: {v}");
            assert_eq!(v["oom_score_adj"], expected_adj[&pid], "victim adj: {v}");
        }
        assert_eq!(v["cgroup"], cg.path(), "victim cgroup: {v}");
        assert_eq!(v["oomlab_worker"], false, "{v}");
        assert!(v["ts"].as_f64().is_some_and(|t| t > 0.0), "timestamp: {v}");
    }
    // Each victim set its own adj on the way in: reported with itself as the writer.
    for (pid, adj) in &expected_adj {
        let found = of_type(&lines, "oom_score_adj")
            .into_iter()
            .any(|a| a["pid"] == *pid && a["oom_score_adj"] == *adj && a["writer"]["tgid"] == *pid);
        assert!(found || *adj == 0, "adj {adj} of pid {pid} with its writer");
    }
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}

/// OOM events have a ring of their own: an adj flood that overflows the (here one-page) event
/// ring loses adj events — counted — but not one OOM kill.
#[test]
fn a_flood_that_overflows_the_event_ring_loses_no_oom_kill() {
    if !common::need_root("a_flood_that_overflows_the_event_ring_loses_no_oom_kill") {
        return;
    }
    const VICTIMS: usize = 10;
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "flood", Some(24 << 20));
    let cg = scratch.cgroup().clone();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let mut kmsg = Kmsg::open_at_end();
    let mut tracer = TraceChild::start(&[
        "--cgroup",
        &cg.path(),
        "--events",
        "oom,adj",
        "--ring-buffer",
        "4KiB",
    ]);
    // The flood: this test (outside the target) rewrites the adj of a process inside it; such
    // writes are traced.
    let mut holder = spawn_holder(&cg, "120s");
    let holder_pid = holder.id() as i32;
    wait_joined(&cg, holder_pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{holder_pid}/oom_score_adj"))
                .expect("open the holder's oom_score_adj");
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || writes < 50_000 {
                f.rewind().expect("rewind");
                f.write_all(if writes.is_multiple_of(2) {
                    b"200"
                } else {
                    b"201"
                })
                .expect("write adj");
                writes += 1;
            }
            writes
        })
    };
    let mut victims = BTreeSet::new();
    for _ in 0..VICTIMS {
        let pid = oom_victim(&cg, None);
        victims.insert(pid);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = flood.join().expect("flood thread");
    let _ = holder.kill();
    let _ = holder.wait();
    let kills = (cg.oom_kills().expect("oom_kill counter") - kills_before) as usize;
    assert_eq!(kills, VICTIMS, "one kill per victim");
    let logged: BTreeSet<i32> = kmsg
        .collect("Killed process ", usize::MAX, Duration::from_secs(2))
        .iter()
        .filter_map(|l| killed_pid(l))
        .filter(|p| victims.contains(p))
        .collect();

    // The victims' events were never at risk in the kernel, but behind the flood they can reach
    // a slow reader late (the TCG guests parse the flood's JSON at a few hundred lines a second):
    // wait for each before ending the trace.
    for pid in &victims {
        tracer.wait_for(Duration::from_secs(120), |v| {
            v["type"] == "oom_victim" && v["pid"] == *pid
        });
    }
    let lines = tracer.stop();
    let lost = &of_type(&lines, "lost")[0];
    assert!(
        lost["lost"].as_u64().is_some_and(|l| l > 0),
        "{writes} adj writes did not overflow a 4 KiB ring, so this test proved nothing: {lost}"
    );
    assert_eq!(lost["lost_oom"], 0, "OOM events were lost: {lost}");
    let reported: BTreeSet<i32> = of_type(&lines, "oom_victim")
        .iter()
        .map(|v| v["pid"].as_i64().expect("pid") as i32)
        .collect();
    assert_eq!(reported, victims, "every victim reported despite {lost}");
    assert_eq!(logged, victims, "and they are the kernel's");
    drop(scratch);
}
