//! A closed stdout ends `oomlab inject` and `oomlab run` in order, as `| head -1` closes it:
//! the exit code says so (141), and no worker, app or scratch cgroup is left behind. (With
//! SIGPIPE at its default the agent died on its second line and left `oomlab/<name>`.)

mod common;

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{cgroup, guard::TempPath, inject::alive};
use stress_user::cgroup::OWNED_PARENT;

const STDOUT_CLOSED: i32 = 141;

/// Reads one line of the child's stdout and closes it, as `head -1` does.
fn head_1(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("a first line");
    line
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running {timeout:?} after its stdout was closed");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn inject_into_head_1_ends_and_leaves_nothing() {
    if !common::need_root("inject_into_head_1_ends_and_leaves_nothing") {
        return;
    }
    let name = common::unique("pipe");
    let mut child = common::oomlab()
        .args([
            "inject", "--new", &name, "--limit", "256MiB", "--size", "128MiB",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("oomlab inject starts");
    let first = head_1(&mut child);
    // `worker 0 started: pid N in /oomlab/<name>`
    let worker: i32 = first
        .split("pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no worker pid in {first:?}"));
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(STDOUT_CLOSED), "{status}");
    let cg = cgroup::hierarchy().cgroup(format!("{OWNED_PARENT}/{name}"));
    assert!(!cg.exists(), "{} left behind", cg.path());
    assert!(!alive(worker), "worker {worker} survived");
}

#[test]
fn run_into_head_1_ends_and_leaves_nothing() {
    if !common::need_root("run_into_head_1_ends_and_leaves_nothing") {
        return;
    }
    let dir = TempPath::dir("pipes");
    let toml = dir.path().join("pipe.toml");
    let tag = format!("3400.{}", std::process::id());
    fs::write(
        &toml,
        format!(
            r#"name = "pipe"
[target]
scratch = true
memory_limit = "128MiB"

[[apps]]
name = "idle"
command = ["sleep", "{tag}"]

[[stages]]
name = "inject"
inject = {{ size = "32MiB" }}
hold = "20s"
"#
        ),
    )
    .expect("write the experiment");
    let started = Instant::now();
    let mut child = common::oomlab()
        .arg("run")
        .arg(&toml)
        .stdout(Stdio::piped())
        .spawn()
        .expect("oomlab run starts");
    let pid = child.id();
    let first = head_1(&mut child);
    assert!(first.starts_with("oomlab run pipe"), "{first:?}");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(STDOUT_CLOSED), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the 20 s stage ran on with nobody reading"
    );
    let cg = cgroup::hierarchy().cgroup(format!("{OWNED_PARENT}/run-{pid}"));
    assert!(!cg.exists(), "{} left behind", cg.path());
    let app_alive = fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .any(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
        });
    assert!(!app_alive, "the app survived");
}
