//! A `mark_victim` is not always a kill. When the task the OOM killer picks is on its way out
//! already, `oom_kill_process` only marks it (`task_will_free_mem`: the reserves and the OOM
//! reaper, no SIGKILL, no `Killed process` line, no `oom_kill`). Here a 64 MiB app with adj 1000
//! is SIGKILLed while the cgroup v1 freezer holds it with its memory; a second app then charges
//! the cgroup past its limit. The kernel's own counter (`oom_kill` unchanged) and log (no
//! `Killed process` for it) say nothing was killed: `oomlab trace` must report an `oom_marked`
//! for the frozen app and no `oom_victim` or episode, and `oomlab serve` must count a mark and no
//! kill.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use common::{
    cgroup,
    guard::Reap,
    kmsg::{killed_pid, Kmsg},
    lines::{is_type, of_type},
    serve::Serve,
    trace::TraceChild,
};
use nix::sys::signal::Signal;
use stress_user::cgroup::Version;

const FREEZER: &str = "/sys/fs/cgroup/freezer";

/// A v1 freezer cgroup `oomlab-test/<name>-<pid>`: thawed and removed on drop (after the
/// processes in it were killed, so they can exit).
struct Freezer {
    dir: PathBuf,
    made_parent: bool,
}

impl Freezer {
    fn create(name: &str) -> Freezer {
        let parent = PathBuf::from(FREEZER).join(cgroup::TEST_PARENT);
        let made_parent = !parent.exists();
        fs::create_dir_all(&parent).expect("freezer test parent");
        let dir = parent.join(common::unique(name));
        fs::create_dir(&dir).expect("freezer test cgroup");
        Freezer { dir, made_parent }
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join the freezer");
    }

    fn set(&self, state: &str) {
        fs::write(self.dir.join("freezer.state"), state).expect("freezer.state");
    }

    fn frozen(&self) -> bool {
        fs::read_to_string(self.dir.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("freezer.state"), "THAWED");
        common::wait_until(Duration::from_secs(10), || {
            fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()
        });
        if self.made_parent {
            let _ = fs::remove_dir(self.dir.parent().expect("parent"));
        }
    }
}

/// Starts `oomlab app` in `cg` and waits until it holds its memory.
fn app(cg: &str, size: &str, adj: i32) -> Reap {
    let mut child = common::app(cg, size)
        .args(["--oom-score-adj", &adj.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oomlab app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read app's first line");
    assert!(line.contains("holding"), "oomlab app {size}: {line:?}");
    Reap(child)
}

#[test]
fn a_victim_already_exiting_is_marked_not_killed() {
    let test = "a_victim_already_exiting_is_marked_not_killed";
    if !common::need_root(test) {
        return;
    }
    let hier = cgroup::hierarchy();
    // The v1 freezer's root has `tasks`; a v2 mount has no such directory.
    if hier.memory_version != Version::V1 || !PathBuf::from(FREEZER).join("tasks").exists() {
        eprintln!("skipped: {test} holds a SIGKILLed task with the cgroup v1 freezer (v2's lets SIGKILL through); memory is on v1 and the freezer mounted at {FREEZER} only on the host");
        return;
    }
    let scratch = cgroup::scratch(&hier, "marks", Some(96 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();
    let serve = Serve::start("");
    let mut trace = TraceChild::start(&["--cgroup", &path, "--events", "oom"]);
    let mut kmsg = Kmsg::open_at_end();
    let kills_before = cg.oom_kills().expect("oom_kill counter");

    let mut held = app(&path, "64MiB", 1000);
    let held_pid = held.0.id();
    let freezer = Freezer::create("marks");
    freezer.add(held_pid);
    freezer.set("FROZEN");
    assert!(
        common::wait_until(Duration::from_secs(10), || freezer.frozen()),
        "the app froze"
    );
    // Dying from here on (SIGNAL_GROUP_EXIT), but frozen with its 64 MiB.
    common::signal(held_pid as i32, Signal::SIGKILL);

    // 64 MiB more in a 96 MiB cgroup: the OOM killer picks the frozen app (adj 1000), finds it
    // exiting, marks it, and its reaper frees the memory; nothing is killed.
    let second = app(&path, "64MiB", 0);
    let marked = trace
        .wait_for(Duration::from_secs(10), |v| {
            is_type(v, "oom_marked") && v["pid"].as_i64() == Some(i64::from(held_pid))
        })
        .unwrap_or_else(|| panic!("no oom_marked for the frozen app {held_pid}"));
    assert_eq!(marked["cgroup"].as_str(), Some(path.as_str()), "{marked}");

    // The oracle: the kernel killed nothing and logged no kill of it.
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(kills, 0, "the kernel counted no oom_kill");
    std::thread::sleep(Duration::from_millis(500));
    let logged: Vec<String> = kmsg
        .drain()
        .into_iter()
        .filter(|l| killed_pid(l) == Some(held_pid as i32))
        .collect();
    assert!(logged.is_empty(), "no Killed process line: {logged:?}");

    drop(freezer);
    let status = held.0.wait().expect("reap the frozen app");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    drop(second);

    let marks = serve.metric("oomlab_oom_marks_without_kill_total");
    assert!(marks >= 1.0, "serve counted the mark: {marks}");
    let (_, text) = serve.get("/metrics");
    let series: Vec<&str> = common::serve::kill_series(&text, &path);
    assert!(
        series.is_empty(),
        "serve counted no kill in {path}: {series:?}"
    );

    let lines = trace.stop();
    let victims: Vec<_> = of_type(&lines, "oom_victim")
        .into_iter()
        .filter(|v| v["pid"].as_i64() == Some(i64::from(held_pid)))
        .collect();
    assert!(victims.is_empty(), "a mark is no oom_victim: {victims:?}");
    let episodes = of_type(&lines, "oom_episode");
    assert!(episodes.is_empty(), "no kill, no episode: {episodes:?}");
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}
