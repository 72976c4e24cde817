//! Workers live and die with the agent: SIGKILL the agent mid-injection ten times and no worker
//! survives it by more than a second, the memory goes back, and the scratch cgroups it left are
//! removed by the next run and by `oomlab cleanup`. Also: the working-set feedback loop, and
//! workers asleep (about 0% CPU) while they hold.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    cgroup::{self, usage},
    inject::{alive, mib, Injector, MIB},
};
use nix::sys::signal::Signal;
use stress_user::cgroup::{MemCgroup, OWNED_PARENT};

#[test]
fn agent_sigkilled_ten_times_leaves_nothing_running() {
    if !common::need_root("agent_sigkilled_ten_times_leaves_nothing_running") {
        return;
    }
    let hier = cgroup::hierarchy();
    let scratch = cgroup::scratch(&hier, "sigkill", Some(1024 * MIB));
    let existing = scratch.cgroup().clone();
    let mut previous_leftover: Option<MemCgroup> = None;
    for round in 0..10 {
        // Even rounds: an existing cgroup (usage must return to its baseline). Odd rounds: a
        // --new scratch cgroup, which the killed agent cannot remove.
        let new_name = format!("{}-{round}", common::unique("killed"));
        let (cg, args): (MemCgroup, Vec<String>) = if round % 2 == 0 {
            (existing.clone(), vec!["--cgroup".into(), existing.path()])
        } else {
            (
                hier.cgroup(format!("{OWNED_PARENT}/{new_name}")),
                vec![
                    "--new".into(),
                    new_name.clone(),
                    "--limit".into(),
                    "1GiB".into(),
                ],
            )
        };
        let base = if round % 2 == 0 { usage(&cg) } else { 0 };
        let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (size, rate) = (mib(400).to_string(), format!("{}/s", mib(400)));
        argv.extend(["--size", &size, "--workers", "2", "--rate", &rate]);
        let mut inj = Injector::start(&argv);
        inj.wait_for("worker_started", Duration::from_secs(10));
        inj.wait_for("worker_started", Duration::from_secs(10));
        // The next run has started: the scratch cgroup the previous killed agent left is gone.
        if let Some(prev) = previous_leftover.take() {
            assert!(
                !prev.exists(),
                "round {round}: leftover {} not removed by the next run",
                prev.path()
            );
        }
        assert!(
            common::wait_until(Duration::from_secs(5), || usage(&cg) > base + mib(50)),
            "round {round}: injection did not start"
        );
        let workers = inj.worker_pids();
        common::signal(inj.pid(), Signal::SIGKILL);
        let _ = inj.child.0.wait();
        std::thread::sleep(Duration::from_secs(1));
        for pid in &workers {
            assert!(
                !alive(*pid),
                "round {round}: worker {pid} outlived the agent by 1 s"
            );
        }
        let now = usage(&cg);
        assert!(
            now <= base + mib(20),
            "round {round}: {} MiB still charged to {} 1 s after the agent died (baseline {} MiB)",
            now / MIB,
            cg.path(),
            base / MIB
        );
        if round % 2 == 1 {
            assert!(
                cg.exists(),
                "a SIGKILLed agent cannot remove its scratch cgroup"
            );
            previous_leftover = Some(cg);
        }
    }
    let last = previous_leftover.expect("round 9 left a scratch cgroup");
    let out = common::oomlab()
        .arg("cleanup")
        .output()
        .expect("oomlab cleanup");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cleanup: {text}");
    assert!(
        text.contains(&format!("removed {}", last.path())),
        "cleanup output: {text}"
    );
    assert!(!last.exists(), "cleanup removed {}", last.path());
}

/// Working set = usage − inactive_file, what the kubelet evicts on.
fn working_set(cg: &MemCgroup) -> u64 {
    cg.snapshot().expect("snapshot").working_set_bytes
}

#[test]
fn working_set_is_held_while_the_app_grows_and_shrinks() {
    if !common::need_root("working_set_is_held_while_the_app_grows_and_shrinks") {
        return;
    }
    let hier = cgroup::hierarchy();
    let scratch = cgroup::scratch(&hier, "wset", Some(600 * MIB));
    let cg = scratch.cgroup().clone();
    let mut app = common::app(&cg.path(), "20MiB")
        .args(["--grow", "50MiB"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start oomlab app");
    let mut app_out = BufReader::new(app.stdout.take().expect("piped")).lines();
    let first = app_out.next().expect("app line").expect("utf-8");
    assert!(first.contains("holding"), "{first}");
    let goal = 200 * MIB;
    let mut inj = Injector::start(&[
        "--cgroup",
        &cg.path(),
        "--working-set",
        "200MiB",
        "--workers",
        "2",
    ]);
    inj.wait_for("target_reached", Duration::from_secs(10));
    let near = |cg: &MemCgroup| working_set(cg).abs_diff(goal) <= goal / 20;
    assert!(
        common::wait_until(Duration::from_secs(2), || near(&cg)),
        "ws {} MiB",
        working_set(&cg) / MIB
    );
    let held_before = inj.wait_for("sample", Duration::from_secs(2))["held_bytes"]
        .as_u64()
        .expect("held");

    common::signal(app.id() as i32, Signal::SIGUSR1);
    let grew = app_out.next().expect("app line").expect("utf-8");
    assert!(grew.contains("grew by 50.0 MiB"), "{grew}");
    let t = Instant::now();
    assert!(
        common::wait_until(Duration::from_secs(1), || near(&cg)),
        "the injector did not back off within 1 s: ws {} MiB",
        working_set(&cg) / MIB
    );
    eprintln!("backed off in {:?}", t.elapsed());
    // The amount settles within a few samples (the guests under TCG are slower than the 1 s the
    // host needs): the held bytes must come to rest 50 MiB lower.
    let held_grown = settled_held(&mut inj, |held| {
        held_before.saturating_sub(held).abs_diff(50 * MIB) <= 5 * MIB
    });
    let gave_back = held_before.saturating_sub(held_grown);
    assert!(
        gave_back.abs_diff(50 * MIB) <= 5 * MIB,
        "the app took 50 MiB, the injector gave back {} MiB",
        gave_back / MIB
    );

    common::signal(app.id() as i32, Signal::SIGUSR2);
    let shrank = app_out.next().expect("app line").expect("utf-8");
    assert!(shrank.contains("shrank"), "{shrank}");
    assert!(
        common::wait_until(Duration::from_secs(1), || near(&cg)
            && working_set(&cg) > goal - goal / 20),
        "the injector did not grow back within 1 s: ws {} MiB",
        working_set(&cg) / MIB
    );
    let held_after = settled_held(&mut inj, |held| held.abs_diff(held_before) <= 5 * MIB);
    assert!(
        held_after.abs_diff(held_before) <= 5 * MIB,
        "grew back to {} MiB, held {} MiB before",
        held_after / MIB,
        held_before / MIB
    );
    let (status, _) = inj.terminate();
    assert!(status.success());
    let _ = app.kill();
    let _ = app.wait();
}

/// `held_bytes` of the first `sample` (within 10 s) that satisfies `ok`, else of the last one.
fn settled_held(inj: &mut Injector, ok: impl Fn(u64) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = inj.wait_for("sample", Duration::from_secs(2))["held_bytes"]
            .as_u64()
            .expect("held");
        if ok(held) || Instant::now() >= deadline {
            return held;
        }
    }
}

/// Clock ticks of user + system time a process has used (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn workers_sleep_while_holding() {
    if !common::need_root("workers_sleep_while_holding") {
        return;
    }
    let hier = cgroup::hierarchy();
    let scratch = cgroup::scratch(&hier, "idle", Some(1024 * MIB));
    let cg = scratch.cgroup().clone();
    let size = mib(256).to_string();
    let mut inj = Injector::start(&["--cgroup", &cg.path(), "--size", &size, "--workers", "2"]);
    inj.wait_for("target_reached", Duration::from_secs(10));
    let pids = inj.worker_pids();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let agent_before = cpu_ticks(inj.pid());
    std::thread::sleep(Duration::from_secs(3));
    for (p, b) in pids.iter().zip(before) {
        let used = cpu_ticks(*p) - b;
        // 3 s at 100 Hz is 300 ticks; 1% of a core is 3.
        assert!(
            used <= 3,
            "worker {p} used {used} ticks in 3 s while holding"
        );
    }
    let agent_used = cpu_ticks(inj.pid()) - agent_before;
    assert!(
        agent_used <= 9,
        "the agent used {agent_used} ticks in 3 s (its 50 ms loop)"
    );
    let (status, _) = inj.terminate();
    assert!(status.success());
}
