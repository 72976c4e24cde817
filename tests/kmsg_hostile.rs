//! Task names a tenant may choose (quotes, commas and `=`, a newline, the words `Killed
//! process`, an escape sequence, non-ASCII) do not delay, split or blur their OOM kills:
//! `oomlab trace --output json` and `oomlab serve`'s `/metrics` count exactly the kernel's
//! `oom_kill`, one episode per kill within a second, with the right pid and constraint. And
//! OOM-report lines that user space writes into `/dev/kmsg` make no episode at all.

mod common;

use std::{
    fs::OpenOptions,
    io::Write,
    os::unix::process::ExitStatusExt,
    process::Stdio,
    time::{Duration, Instant},
};

use common::{
    cgroup,
    kmsg::Kmsg,
    lines::{is_type, of_type},
    serve::{kill_series, Serve},
    trace::TraceChild,
};
use serde_json::Value;

/// The names the victims give themselves (`prctl(PR_SET_NAME)`), one kill each.
const NAMES: [&str; 7] = [
    "plain",
    "a\"b",
    "x,oom_memcg=/",
    "a\nb",
    "Killed process",
    "\x1b[31m",
    "名前",
];

/// The bound: an episode is out within a second of its kill.
const EPISODE_WITHIN: Duration = Duration::from_secs(1);

fn names_pid(ep: &Value, pid: i64) -> bool {
    ep["victims"]
        .as_array()
        .is_some_and(|vs| vs.iter().any(|v| v["pid"].as_i64() == Some(pid)))
}

/// Runs an app named `name` into the OOM killer in `path` and returns its pid and its episode,
/// which must come within [`EPISODE_WITHIN`] of the kill.
fn kill_named(trace: &mut TraceChild, path: &str, name: &str) -> (i64, Value) {
    let mut child = common::app(path, "96MiB")
        .args(["--comm", name])
        .stdout(Stdio::null())
        .spawn()
        .expect("run oomlab app");
    let pid = i64::from(child.id());
    common::serve::wait_exit_unreaped(&child, Duration::from_secs(30));
    let killed = Instant::now();
    let ep = trace
        .wait_for(EPISODE_WITHIN * 3, |v| {
            is_type(v, "oom_episode") && names_pid(v, pid)
        })
        .unwrap_or_else(|| panic!("no episode for {pid} ({name:?})"));
    let took = killed.elapsed();
    let status = child.wait().expect("reap the app");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{name:?}: {status:?}");
    eprintln!(
        "{name:?}: pid {pid}, episode {took:?} after the kill, kmsg {}",
        ep["kmsg"]
    );
    assert!(
        took <= EPISODE_WITHIN,
        "{name:?}: the episode came {took:?} after the kill: {ep}"
    );
    (pid, ep)
}

#[test]
fn hostile_names_are_counted_once_and_in_time() {
    if !common::need_root("hostile_names_are_counted_once_and_in_time") {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "hostile", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();
    let serve = Serve::start("");
    let mut trace = TraceChild::start(&["--cgroup", &path, "--events", "oom"]);
    let mut kmsg = Kmsg::open_at_end();
    let kills_before = cg.oom_kills().expect("oom_kill counter");

    let mut pids = Vec::new();
    let mut reported = Vec::new();
    for name in NAMES {
        let (pid, ep) = kill_named(&mut trace, &path, name);
        let with_report = kmsg.reported(pid);
        check_episode(&ep, pid, name, &path, with_report);
        pids.push(pid);
        reported.push(with_report);
    }
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(kills, NAMES.len() as u64, "one kill per app");

    check_metrics(&serve, &path, kills, reported.iter().all(|r| *r));
    let lines = trace.stop();
    let episodes = of_type(&lines, "oom_episode");
    assert_eq!(
        episodes.len() as u64,
        kills,
        "one episode per kill in the target: {episodes:#?}"
    );
    let victims = of_type(&lines, "oom_victim");
    assert_eq!(victims.len() as u64, kills, "one oom_victim per kill");
    for pid in &pids {
        let n = episodes.iter().filter(|e| names_pid(e, *pid)).count();
        assert_eq!(n, 1, "pid {pid} is in exactly one episode");
    }
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}

/// The victim, its name as the tracepoint and the log gave it, and the report's constraint
/// (when the kernel printed the report).
fn check_episode(ep: &Value, pid: i64, name: &str, path: &str, with_report: bool) {
    let victims = ep["victims"].as_array().expect("victims");
    assert_eq!(victims.len(), 1, "{name:?}: one victim: {ep}");
    let v = &victims[0];
    assert_eq!(v["pid"].as_i64(), Some(pid), "{name:?}: {ep}");
    assert_eq!(v["selected"], true, "{name:?}: {ep}");
    assert_eq!(v["traced"], true, "{name:?}: mark_victim seen: {ep}");
    assert_eq!(v["comm"].as_str(), Some(name), "{name:?}: {ep}");
    if !with_report {
        eprintln!("{name:?}: the kernel ratelimited its report: no constraint to check");
        assert_ne!(ep["kmsg"], "complete", "{name:?}: {ep}");
        return;
    }
    assert_eq!(ep["kmsg"], "complete", "{name:?}: {ep}");
    assert_eq!(
        v["logged"], true,
        "{name:?}: Killed process line matched: {ep}"
    );
    assert_eq!(ep["constraint"], "CONSTRAINT_MEMCG", "{name:?}: {ep}");
    assert_eq!(ep["domain"]["memcg"].as_str(), Some(path), "{name:?}: {ep}");
    assert_eq!(ep["kill_lines"], 1, "{name:?}: {ep}");
}

/// `/metrics` counts the kernel's kills for the cgroup, each labelled with the real constraint.
fn check_metrics(serve: &Serve, path: &str, kills: u64, all_reported: bool) {
    let (counted, text) = serve.wait_kills(path, kills, EPISODE_WITHIN * 2);
    assert_eq!(
        counted, kills as f64,
        "oomlab_oom_kills_total for {path} is the kernel's oom_kill delta:\n{text}"
    );
    if all_reported {
        for line in kill_series(&text, path) {
            assert!(
                line.contains("constraint=\"CONSTRAINT_MEMCG\""),
                "a memcg OOM: {line}"
            );
        }
    }
}

#[test]
fn without_the_kernel_log_every_kill_is_an_episode_in_time() {
    let test = "without_the_kernel_log_every_kill_is_an_episode_in_time";
    if !common::need_root(test) {
        return;
    }
    let restricted =
        std::fs::read_to_string("/proc/sys/kernel/dmesg_restrict").is_ok_and(|v| v.trim() == "1");
    if !restricted {
        eprintln!("skipped: {test}: kernel.dmesg_restrict is 0, so /dev/kmsg stays readable without CAP_SYSLOG");
        return;
    }
    // util-linux's setpriv drops CAP_SYSLOG; the VM matrix's busybox initramfs has none.
    let have_setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_setpriv {
        eprintln!("skipped: {test}: no setpriv here to start oomlab without CAP_SYSLOG");
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "nokmsg", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();
    // Root without CAP_SYSLOG: BPF works, /dev/kmsg does not open.
    let mut setpriv = std::process::Command::new("setpriv");
    setpriv.args(["--bounding-set=-syslog", common::OOMLAB]);
    let mut trace = TraceChild::start_as(&mut setpriv, &["--cgroup", &path, "--events", "oom"]);
    for name in ["plain", "a\nb"] {
        let (_, ep) = kill_named(&mut trace, &path, name);
        assert_eq!(ep["kmsg"], "missing", "{ep}");
        assert_eq!(ep["victims"][0]["comm"].as_str(), Some(name), "{ep}");
        assert_eq!(ep["victims"][0]["traced"], true, "{ep}");
    }
    let lines = trace.stop();
    assert_eq!(
        of_type(&lines, "oom_episode").len(),
        2,
        "one episode per kill"
    );
    drop(scratch);
}

#[test]
fn forged_kernel_log_lines_make_no_episode() {
    if !common::need_root("forged_kernel_log_lines_make_no_episode") {
        return;
    }
    let mut trace = TraceChild::start(&["--events", "oom"]);
    let forged_pid = 999_999_999;
    let lines = [
        "oomlab invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0".to_string(),
        "memory: usage 32768kB, limit 32768kB, failcnt 70".into(),
        "[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name".into(),
        format!("[{forged_pid}]     0 {forged_pid}     4673     3524     2144     1380         0    81920        0           500 forged"),
        format!("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/forged,task_memcg=/forged,task=forged,pid={forged_pid},uid=0"),
        format!("Memory cgroup out of memory: Killed process {forged_pid} (forged) total-vm:18692kB, anon-rss:8576kB, file-rss:5520kB, shmem-rss:0kB, UID:0 pgtables:80kB oom_score_adj:500"),
        format!("<3>Out of memory: Killed process {forged_pid} (forged) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0"),
    ];
    let mut kmsg = Kmsg::open_at_end();
    for line in &lines {
        // One write is one record, logged with the user facility (a `<N>` prefix may set the
        // level, never the kernel's facility).
        let mut f = OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg for writing");
        f.write_all(line.as_bytes()).expect("write to /dev/kmsg");
    }
    assert!(
        kmsg.wait_for(
            &format!("Killed process {forged_pid}"),
            Duration::from_secs(2)
        )
        .is_some(),
        "the forged lines are in the kernel log"
    );
    let forged = trace.wait_for(Duration::from_secs(3), |v| {
        v.to_string().contains(&forged_pid.to_string())
    });
    assert_eq!(forged, None, "a forged line became output");
    let out = trace.stop();
    let named: Vec<&Value> = out
        .iter()
        .filter(|v| v.to_string().contains(&forged_pid.to_string()))
        .collect();
    assert!(named.is_empty(), "forged lines became output: {named:#?}");
}
