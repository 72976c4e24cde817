//! `oomlab run` stopped by SIGINT or SIGQUIT at each phase — 10 ms after its start, while the
//! tracer loads, while an app starts, in a watch-only stage, in an inject stage, in the middle
//! of an OOM storm — ends within 2 s (the bound issue #14 states) with the interrupted exit
//! code, leaves no process and no scratch cgroup behind, and reports what ran: the stage cut
//! short, the stages skipped, no conclusion. Also: an app in an existing cgroup that leaves 50
//! orphaned grandchildren behind has all of them killed at the run's end, and nothing else.

mod common;

use std::{
    fs,
    path::Path,
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{cgroup, guard::TempPath, lines::Lines};
use nix::sys::signal::Signal;
use serde_json::Value;
use stress_user::cgroup::OWNED_PARENT;

/// The bound issue #14 sets from the signal to the process's exit.
const EXIT_BOUND: Duration = Duration::from_secs(2);
/// The same in the VM matrix, whose emulated CPU (QEMU TCG, one vCPU) runs the BPF loader and
/// the detach's RCU waits several times slower: measured 3.3 s there for a signal while the
/// tracer loads (loading is not interruptible), 1.0-1.5 s for the others.
const EXIT_BOUND_VM: Duration = Duration::from_secs(6);

fn exit_bound() -> Duration {
    if common::in_vm() {
        EXIT_BOUND_VM
    } else {
        EXIT_BOUND
    }
}
const INTERRUPTED: i32 = 130;

/// A run with every phase: an app started by command (it gets 300 ms to start), a watch-only
/// stage, an inject stage and an OOM storm. `tag` makes the app's command line unique.
fn experiment(tag: &str) -> String {
    format!(
        r#"name = "signals"
conclusion = "Stage 3 showed the storm."
[target]
scratch = true
memory_limit = "128MiB"

[[apps]]
name = "slow"
command = ["sleep", "{tag}"]

[[stages]]
name = "watch"
hold = "1500ms"
[stages.expect]
app_survives = true

[[stages]]
name = "inject"
inject = {{ size = "32MiB" }}
hold = "1500ms"

[[stages]]
name = "storm"
inject = {{ size = "512MiB", workers = 2, oom_score_adj = 1000, on_oom = "respawn" }}
hold = "10s"
[stages.expect]
min_oom_kills = 1
"#
    )
}

/// Where the signal goes.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Start,
    Tracer,
    Apps,
    Watch,
    Inject,
    Storm,
}

/// True once the process catches SIGINT and SIGQUIT (its `SigCgt` mask).
fn handles_stop_signals(pid: u32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    let bit = |sig: Signal| 1u64 << (sig as i32 - 1);
    caught & bit(Signal::SIGINT) != 0 && caught & bit(Signal::SIGQUIT) != 0
}

/// True once the process holds a BPF program: the tracer is loading.
fn loading_bpf(pid: u32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| fs::read_link(e.path()).ok())
        .any(|l| l.to_string_lossy().contains("bpf-prog"))
}

/// Waits until the run is in `phase`; false when it never got there.
fn reach(phase: Phase, child: &Child, lines: &mut Lines) -> bool {
    let long = Duration::from_secs(20);
    let stage = |lines: &mut Lines, i: u64| {
        lines
            .wait_for(long, |v| {
                common::lines::is_type(v, "stage_start") && v["index"] == i
            })
            .is_some()
    };
    match phase {
        // 10 ms after the start, and not before the process's own first instructions: a
        // signal that comes while the kernel still execs it or the dynamic loader runs (tens of
        // ms in the emulated VMs) gets the default action, which no program can change.
        Phase::Start => {
            let spawned = Instant::now();
            let ready = common::wait_until(long, || handles_stop_signals(child.id()));
            thread::sleep(Duration::from_millis(10).saturating_sub(spawned.elapsed()));
            ready
        }
        Phase::Tracer => {
            let deadline = Instant::now() + long;
            while Instant::now() < deadline {
                if loading_bpf(child.id()) {
                    return true;
                }
                thread::sleep(Duration::from_millis(1));
            }
            false
        }
        Phase::Apps => lines
            .wait_for(long, |v| common::lines::is_type(v, "ready"))
            .is_some(),
        Phase::Watch => {
            let ok = stage(lines, 0);
            thread::sleep(Duration::from_millis(200));
            ok
        }
        Phase::Inject => {
            stage(lines, 1)
                && lines
                    .wait_for(long, |v| common::lines::is_type(v, "worker_started"))
                    .is_some()
        }
        Phase::Storm => {
            stage(lines, 2)
                && lines
                    .wait_for(long, |v| {
                        common::lines::is_type(v, "oom_victim")
                            || common::lines::is_type(v, "worker_killed")
                    })
                    .is_some()
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// One run, one signal in one phase; every check of the issue on it.
fn interrupt(phase: Phase, sig: Signal, n: usize) {
    let what = format!("{phase:?}/{sig}");
    let dir = TempPath::dir(&format!("signals-{n}"));
    // Unique to this run: the app's command line, found in /proc afterwards if it survived.
    let tag = format!("3000.{}{n:02}", std::process::id());
    let toml = dir.path().join("signals.toml");
    fs::write(&toml, experiment(&tag)).expect("write the experiment");
    let report_dir = dir.path().join("report");
    let mut child = common::oomlab()
        .arg("run")
        .arg(&toml)
        .args(["--output", "json", "--report"])
        .arg(&report_dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("oomlab run starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = Lines::json(stdout, "oomlab run");
    let reached = reach(phase, &child, &mut lines);
    if !reached {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{what}: the run never reached the phase; lines: {:?}",
            lines.seen
        );
    }
    common::signal(child.id() as i32, sig);
    let sent = Instant::now();
    let status = wait_exit(&mut child, exit_bound() + Duration::from_secs(10));
    let took = sent.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: still running 12 s after the signal");
    };
    lines.rest(Duration::from_millis(500));
    eprintln!(
        "{what}: exit {status} {} ms after the signal",
        took.as_millis()
    );
    assert!(
        took <= exit_bound(),
        "{what}: took {took:?} to exit (bound {:?})",
        exit_bound()
    );
    assert_eq!(status.code(), Some(INTERRUPTED), "{what}: {status}");

    // Nothing left: the scratch cgroup is gone, and with it every worker; the app too.
    let hier = cgroup::hierarchy();
    let scratch = hier.cgroup(format!("{OWNED_PARENT}/run-{}", child.id()));
    assert!(!scratch.exists(), "{what}: {} left behind", scratch.path());
    let workers: Vec<i64> = common::lines::of_type(&lines.seen, "worker_started")
        .iter()
        .filter_map(|w| w["pid"].as_i64())
        .collect();
    for pid in &workers {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || !fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .contains("__worker"),
            "{what}: worker {pid} survived"
        );
    }
    assert!(processes_with(&tag).is_empty(), "{what}: the app survived");

    // The report says what ran and what did not, and concludes nothing.
    let text = fs::read_to_string(report_dir.join("report.json")).expect("report.json written");
    let report: Value = serde_json::from_str(&text).expect("report.json parses");
    let int = &report["interrupted"];
    assert_eq!(int["cause"], sig.as_str(), "{what}: {int}");
    assert!(
        report["conclusion"].is_null(),
        "{what}: a conclusion was drawn"
    );
    let skipped: Vec<&str> = int["skipped"]
        .as_array()
        .expect("skipped stages")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    let (cut, expect_skipped): (Option<u64>, &[&str]) = match phase {
        Phase::Start | Phase::Tracer | Phase::Apps => (None, &["watch", "inject", "storm"]),
        Phase::Watch => (Some(0), &["inject", "storm"]),
        Phase::Inject => (Some(1), &["storm"]),
        Phase::Storm => (Some(2), &[]),
    };
    assert_eq!(skipped, expect_skipped, "{what}: {int}");
    assert_eq!(int["stage"].as_u64(), cut, "{what}: {int}");
    let during = int["during"].as_str().unwrap_or_default();
    let expect_during: &[&str] = match phase {
        Phase::Start => &["starting", "loading the tracer"],
        Phase::Tracer => &["loading the tracer"],
        Phase::Apps => &["starting app slow"],
        Phase::Watch => &["stage 1"],
        Phase::Inject => &["stage 2"],
        Phase::Storm => &["stage 3"],
    };
    assert!(expect_during.contains(&during), "{what}: during {during:?}");
    // No verdict on a scope that did not run to its end; the summary says how many.
    let scopes: Vec<&str> = report["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .filter_map(|v| v["scope"].as_str())
        .collect();
    assert!(
        !scopes.contains(&"stage 3"),
        "{what}: stage 3 judged: {scopes:?}"
    );
    assert!(
        report["summary"]["expectations_not_evaluated"].as_u64() > Some(0),
        "{what}: {}",
        report["summary"]
    );
    let md = fs::read_to_string(report_dir.join("report.md")).expect("report.md written");
    assert!(md.contains("## Interrupted"), "{what}: report.md");
    assert!(
        !md.contains("showed the storm"),
        "{what}: report.md concludes"
    );
    assert!(
        common::lines::of_type(&lines.seen, "interrupted").len() == 1,
        "{what}: no `interrupted` line on stdout"
    );
}

#[test]
fn every_phase_stops_within_two_seconds_on_sigint_and_sigquit() {
    if !common::need_root("every_phase_stops_within_two_seconds_on_sigint_and_sigquit") {
        return;
    }
    // The VM matrix (there for cgroup v2's `cgroup.kill`, within its ~60 s a kernel, ~7 s a
    // run under emulation) runs both signals in the OOM storm and one each at the start and in
    // the inject stage; the host runs every phase with both.
    let all = [Signal::SIGINT, Signal::SIGQUIT];
    let runs: Vec<(Phase, Signal)> = if common::in_vm() {
        vec![
            (Phase::Start, Signal::SIGINT),
            (Phase::Inject, Signal::SIGQUIT),
            (Phase::Storm, Signal::SIGINT),
            (Phase::Storm, Signal::SIGQUIT),
        ]
    } else {
        [
            Phase::Start,
            Phase::Tracer,
            Phase::Apps,
            Phase::Watch,
            Phase::Inject,
            Phase::Storm,
        ]
        .into_iter()
        .flat_map(|p| all.map(|s| (p, s)))
        .collect()
    };
    for (n, (phase, sig)) in runs.into_iter().enumerate() {
        interrupt(phase, sig, n);
    }
}

#[test]
fn an_apps_fifty_orphaned_grandchildren_are_all_killed() {
    if !common::need_root("an_apps_fifty_orphaned_grandchildren_are_all_killed") {
        return;
    }
    let hier = cgroup::hierarchy();
    let target = cgroup::scratch(&hier, "forks", None);
    let cg = target.cgroup().clone();
    // A process of the target's own that oomlab did not start: it must survive the run.
    let bystander_arg = format!("3100.{}", std::process::id());
    let mut bystander = common::guard::Reap(
        std::process::Command::new("sleep")
            .arg(&bystander_arg)
            .spawn()
            .expect("sleep starts"),
    );
    cg.add_proc(bystander.0.id() as i32)
        .expect("bystander joins");
    // Each `( … &)` subshell exits at once: its sleep is an orphan, re-parented away from
    // the app, the way a daemonizing service leaves its workers.
    let orphan_arg = format!("3200.{}", std::process::id());
    let app_arg = format!("3300.{}", std::process::id());
    let script =
        format!("for i in $(seq 50); do (sleep {orphan_arg} &); done; exec sleep {app_arg}");
    let dir = TempPath::dir("forks");
    let toml = dir.path().join("forks.toml");
    fs::write(
        &toml,
        format!(
            r#"name = "forks"
[target]
cgroup = "{}"

[[apps]]
name = "forker"
command = ["sh", "-c", "{script}"]

[[stages]]
name = "watch"
hold = "{hold}"
"#,
            cg.path(),
            hold = if common::in_vm() { "8s" } else { "2s" },
        ),
    )
    .expect("write the experiment");
    let mut child = common::oomlab()
        .arg("run")
        .arg(&toml)
        .args(["--output", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oomlab run starts");
    let mut lines = Lines::json(child.stdout.take().expect("piped"), "oomlab run");
    assert!(
        lines
            .wait_for(Duration::from_secs(20), |v| common::lines::is_type(
                v,
                "stage_start"
            ))
            .is_some(),
        "the stage never started: {:?}",
        lines.seen
    );
    // The shell forks them while the stage runs (slowly in the emulated VMs).
    let all_forked = common::wait_until(Duration::from_secs(8), || {
        processes_with(&orphan_arg).len() == 50
    });
    let during = processes_with(&orphan_arg).len();
    let status = wait_exit(&mut child, Duration::from_secs(30)).expect("the run ends");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        all_forked,
        "the app's 50 grandchildren ran during the stage ({during} seen)"
    );
    assert!(
        common::wait_until(Duration::from_secs(1), || processes_with(&orphan_arg)
            .is_empty()),
        "grandchildren outlived the run: {:?}",
        processes_with(&orphan_arg)
    );
    assert!(
        processes_with(&app_arg).is_empty(),
        "the app outlived the run"
    );
    // The kernel's list of the target's processes: only the bystander is left.
    let procs = cg.procs().expect("cgroup.procs");
    assert_eq!(
        procs,
        vec![bystander.0.id() as i32],
        "left in {}",
        cg.path()
    );
    assert!(
        bystander.0.try_wait().expect("try_wait").is_none(),
        "the bystander was killed"
    );
}
