//! The richer hooks on `oom_kill_process` (fentry, else kprobe): they attach on the VM kernels
//! (Debian 6.1 and 6.12), and fire once per OOM kill, as the cgroup's own counter says. The
//! host kernel has no kprobes and refuses fentry, so there the test says so and skips; inside
//! `cargo xtask vm-test` (OOMLAB_VM=1) a refusal is a failure.

mod common;

use std::{collections::BTreeMap, os::unix::process::ExitStatusExt, time::Duration};

use common::cgroup;
use stress_user::trace::EventKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_process_hooks_attach_and_fire_once_per_kill() {
    let test = "oom_kill_process_hooks_attach_and_fire_once_per_kill";
    if !common::need_root(test) {
        return;
    }
    let in_vm = common::in_vm();
    let (tracer, mut rx) = common::tracer::start(true);
    let attached: Vec<&str> = tracer
        .hooks
        .iter()
        .filter(|h| h.attached)
        .map(|h| h.hook)
        .collect();
    if attached.is_empty() {
        let why: Vec<String> = tracer
            .hooks
            .iter()
            .map(|h| format!("{}: {}", h.hook, h.error.as_deref().unwrap_or("not tried")))
            .collect();
        assert!(
            !in_vm,
            "the VM kernels have kprobes and fentry; no hook on oom_kill_process attached: {why:?}"
        );
        eprintln!(
            "skipped: {test} needs kprobe or fentry on oom_kill_process, refused by this kernel ({})",
            why.join("; ")
        );
        return;
    }

    let scratch = cgroup::scratch(&cgroup::hierarchy(), "v2-hooks", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let mut child = common::app(&cg.path(), "64MiB")
        .spawn()
        .expect("run oomlab app");
    let pid = child.id();
    let status = child.wait().expect("wait for oomlab app");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child should be OOM-killed at 32 MiB, got {status:?}"
    );
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(kills, 1, "one OOM kill in the cgroup");

    // Every attached hook reports the kill of our child, once; a short quiet period after the
    // first report catches duplicates.
    let ours = |kind: EventKind| match kind {
        EventKind::OomKillHook(h) if h.task.tgid == pid => Some(h.hook),
        _ => None,
    };
    let mut per_hook: BTreeMap<&str, u64> = BTreeMap::new();
    let first = common::tracer::first(&mut rx, Duration::from_secs(10), ours)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no oom_kill_process hook event for pid {pid} within 10 s (attached: {attached:?})"
            )
        });
    *per_hook.entry(first).or_default() += 1;
    common::tracer::during(&mut rx, Duration::from_secs(2), |kind| {
        if let Some(hook) = ours(kind) {
            *per_hook.entry(hook).or_default() += 1;
        }
    })
    .await;
    // HookResult names the attach point (`fentry:oom_kill_process`), events the kind (`fentry`).
    for hook in &attached {
        let kind = hook.split(':').next().unwrap_or(hook);
        assert_eq!(
            per_hook.get(kind).copied().unwrap_or(0),
            kills,
            "{hook} should report each of the cgroup's {kills} OOM kill(s) once: {per_hook:?}"
        );
    }
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}
