//! cgroup v2 only: a `memory.oom.group` episode that kills several tasks, each one reported by
//! oomlab's tracer and counted by the kernel, and per-cgroup PSI (`memory.pressure`) under
//! `memory.high` throttling. The host has memory on v1, so these run in the VM matrix
//! (`cargo xtask vm-test`); sizes are tens of MiB because emulated memory is slow.

mod common;

use std::{
    collections::BTreeSet,
    os::unix::process::ExitStatusExt,
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{cgroup, kmsg::Kmsg, tracer};
use stress_user::{
    cgroup::{parse_flat_keyed, MemCgroup},
    trace::EventKind,
};

fn app(cg: &MemCgroup, size: &str, duration: &str) -> Child {
    common::app(&cg.path(), size)
        .args(["--duration", duration])
        .stdout(Stdio::null())
        .spawn()
        .expect("start oomlab app")
}

fn wait_with_deadline(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for oomlab app") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oomlab app {} still running after {within:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn events(cg: &MemCgroup) -> std::collections::BTreeMap<String, u64> {
    parse_flat_keyed(&cg.read("memory.events").expect("memory.events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_group_kills_every_task_and_each_is_traced() {
    let test = "oom_group_kills_every_task_and_each_is_traced";
    let Some(hier) = cgroup::v2_hierarchy(test) else {
        return;
    };
    let (_tracer, mut rx) = tracer::start(false);
    let scratch = cgroup::scratch(&hier, "v2-group", Some(48 << 20));
    let cg = scratch.cgroup().clone();
    cg.write("memory.oom.group", "1")
        .expect("set memory.oom.group");
    let before = events(&cg);
    let mut kmsg = Kmsg::open_at_end();

    // Two quiet holders of 8 MiB, then one that asks for more than is left: the OOM killer
    // picks one task, and memory.oom.group takes the whole cgroup with it.
    let mut holders: Vec<Child> = (0..2).map(|_| app(&cg, "8MiB", "120s")).collect();
    let charged = || cg.usage().expect("memory.current") >= 16 << 20;
    assert!(
        common::wait_until(Duration::from_secs(60), charged),
        "holders did not charge 16 MiB: {:?}",
        cg.snapshot()
    );
    let mut big = app(&cg, "64MiB", "120s");
    let mut pids: BTreeSet<i32> = holders.iter().map(|c| c.id() as i32).collect();
    pids.insert(big.id() as i32);
    for child in holders.iter_mut().chain(std::iter::once(&mut big)) {
        let status = wait_with_deadline(child, Duration::from_secs(60));
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "every task of an oom.group cgroup is killed; pid {} ended {status:?}",
            child.id()
        );
    }

    // The kernel kills the chosen victim, then every task of the group: the victim again if
    // it still has its mm. memory.events and the kernel log count every kill (3 or 4 here), but
    // mark_victim fires once per task (TIF_MEMDIE is set only once). oomlab must report each of
    // our three tasks exactly once, and the kernel's two counts must agree with each other.
    let after = events(&cg);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let kills = delta("oom_kill");
    assert!(
        (3..=4).contains(&kills),
        "memory.events oom_kill should count the three tasks (and maybe the victim twice): {after:?}"
    );
    eprintln!("oom.group episode: memory.events counted {kills} kills for 3 tasks");
    if after.contains_key("oom_group_kill") {
        assert_eq!(delta("oom_group_kill"), 1, "one group kill: {after:?}");
    }

    let ours = |kind: EventKind| match kind {
        EventKind::Victim(v) if pids.contains(&v.pid) => Some(v.pid),
        _ => None,
    };
    let mut traced: Vec<i32> = Vec::new();
    tracer::first(&mut rx, Duration::from_secs(10), |kind| {
        traced.extend(ours(kind));
        (traced.len() >= pids.len()).then_some(())
    })
    .await;
    // Late duplicates would show here.
    tracer::during(&mut rx, Duration::from_millis(500), |kind| {
        traced.extend(ours(kind));
    })
    .await;
    assert_eq!(
        traced.len(),
        pids.len(),
        "one mark_victim per task of the group (memory.events counted {kills} kills): {traced:?}"
    );
    assert_eq!(
        traced.iter().copied().collect::<BTreeSet<_>>(),
        pids,
        "every task of the group is reported"
    );

    let group_line = format!(
        "Tasks in {} are going to be killed due to memory.oom.group set",
        cg.path()
    );
    let mut seen: Vec<String> = Vec::new();
    let killed_lines = |seen: &[String]| {
        seen.iter()
            .filter(|m| {
                pids.iter()
                    .any(|p| m.contains(&format!("Killed process {p} ")))
            })
            .count() as u64
    };
    common::wait_until(Duration::from_secs(5), || {
        seen.extend(kmsg.drain());
        seen.iter().any(|m| m.contains(&group_line)) && killed_lines(&seen) >= kills
    });
    assert!(
        seen.iter().any(|m| m.contains(&group_line)),
        "/dev/kmsg has no {group_line:?}"
    );
    assert_eq!(
        killed_lines(&seen),
        kills,
        "/dev/kmsg 'Killed process' lines for {pids:?}"
    );
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}

/// `some`/`full` totals (µs) of a PSI file.
fn psi_totals(text: &str) -> (u64, u64) {
    let total = |kind: &str| {
        text.lines()
            .find(|l| l.starts_with(kind))
            .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix("total=")))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} total in {text:?}"))
    };
    (total("some"), total("full"))
}

#[test]
fn memory_high_throttling_shows_in_the_cgroups_pressure() {
    let test = "memory_high_throttling_shows_in_the_cgroups_pressure";
    let Some(hier) = cgroup::v2_hierarchy(test) else {
        return;
    };
    let scratch = cgroup::scratch(&hier, "v2-psi", Some(64 << 20));
    let cg = scratch.cgroup().clone();
    // Without swap nothing anonymous can be reclaimed: going over memory.high means reclaim
    // that fails and a throttling sleep, both accounted as memory stall of this cgroup.
    cg.write("memory.high", &(16u64 << 20).to_string())
        .expect("set memory.high");
    let (some_before, _) = psi_totals(&cg.read("memory.pressure").expect("memory.pressure"));
    let high_before = events(&cg).get("high").copied().unwrap_or(0);

    let mut child = app(&cg, "24MiB", "1s");
    let status = wait_with_deadline(&mut child, Duration::from_secs(90));
    assert!(
        status.success(),
        "24 MiB fits under memory.max (64 MiB); memory.high only throttles: {status:?}"
    );

    let high = events(&cg).get("high").copied().unwrap_or(0) - high_before;
    let (some_after, full_after) =
        psi_totals(&cg.read("memory.pressure").expect("memory.pressure"));
    assert!(
        high > 0,
        "memory.events high should count the breach of 16 MiB"
    );
    assert!(
        some_after > some_before,
        "memory.pressure some total should grow under memory.high throttling: {some_before} -> {some_after} µs (full {full_after})"
    );
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}

#[test]
fn psi_totals_parse() {
    let text = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=56\n";
    assert_eq!(psi_totals(text), (1234, 56));
}
