//! End-to-end proof of the foundation: the embedded eBPF object, loaded with offsets read from
//! this kernel's `format` files, reports a real memcg OOM kill with the victim's pid and adj,
//! in agreement with the cgroup's `oom_kill` counter and the kernel log.

mod common;

use std::{os::unix::process::ExitStatusExt, time::Duration};

use common::{cgroup, kmsg::Kmsg, tracer};
use stress_user::trace::EventKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_victim_reports_the_killed_child() {
    if !common::need_root("mark_victim_reports_the_killed_child") {
        return;
    }
    let (_tracer, mut rx) = tracer::start(false);
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "e2e", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let mut kmsg = Kmsg::open_at_end();

    let status = common::app(&cg.path(), "64MiB")
        .args(["--oom-score-adj", "500"])
        .status()
        .expect("run oomlab app");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child should be OOM-killed at 32 MiB, got {status:?}"
    );

    // The child's pid is only known through the kernel: find the victim event, then check it
    // against the kernel log and the counter. Where the tracepoint carries only the pid, the
    // kernel log alone says it was this child (comm and adj below).
    let details = common::victim_details();
    let victim = tracer::first(&mut rx, Duration::from_secs(5), |kind| match kind {
        EventKind::Victim(v)
            if !details
                || (v.comm.as_deref() == Some("oomlab") && v.oom_score_adj == Some(500)) =>
        {
            Some(v)
        }
        _ => None,
    })
    .await
    .expect("a mark_victim event within 5 s");

    let killed = kmsg
        .wait_for(
            &format!("Killed process {} ", victim.pid),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("/dev/kmsg has no 'Killed process {}' line", victim.pid));
    assert!(killed.contains("(oomlab)"), "kmsg: {killed}");
    assert!(
        killed.contains("oom_score_adj:500"),
        "kernel log should carry adj 500: {killed}"
    );
    if details {
        assert!(
            victim.anon_rss_kb.unwrap_or(0) > 16 << 10,
            "victim rss: {victim:?}"
        );
    } else {
        eprintln!(
            "skipped: the victim event's rss: this kernel's oom:mark_victim has only pid (the pid, the kernel log's comm and adj, and the counter were checked)"
        );
    }
    assert_eq!(
        cg.oom_kills().expect("oom_kill counter"),
        kills_before + 1,
        "the cgroup's oom_kill counter should go up by exactly one"
    );
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}
