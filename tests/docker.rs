//! Docker as target and oracle (#13): the test's own dockerd runs `docker run -d --memory 128m`
//! of a busybox image made by `docker import` (nothing pulled); `inject` finds the container by
//! its name; when its main process blows the limit, oomlab's victim is the pid `docker inspect`
//! gave and Docker's own records agree: `State.OOMKilled=true` and one `docker events --filter
//! event=oom` line per kill oomlab saw.

mod common;

use std::{fs, path::Path, process::Stdio, time::Duration};

use common::{
    guard::TempPath,
    need_root, oomlab,
    runtime::{have_runtimes, rootfs, Dockerd, LineLog},
    trace::TraceChild,
    wait_until,
};

const MIB: u64 = 1 << 20;

fn usage(id: &str) -> u64 {
    let path = Path::new("/sys/fs/cgroup/memory/docker")
        .join(id)
        .join("memory.usage_in_bytes");
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn docker_main_process_oom_named_and_counted() {
    if !need_root("docker_main_process_oom_named_and_counted")
        || !have_runtimes(
            "docker_main_process_oom_named_and_counted",
            &["dockerd", "/usr/bin/docker", "containerd", "runc"],
        )
    {
        return;
    }
    let tmp = TempPath::dir("dkr");
    let root = rootfs(tmp.path());
    let mut d = Dockerd::start(tmp.path());
    let sock = d.socket.display().to_string();
    d.import(&root, "oomlab-busybox:test");
    let name = common::unique("oomlab-box");
    // The main process waits for the go file, then becomes dd with a 200 MiB buffer.
    let id = d.run(&[
        "--name",
        &name,
        "--memory",
        "128m",
        "--memory-swap",
        "128m",
        "oomlab-busybox:test",
        "/bin/sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.1; done; exec dd if=/dev/zero of=/dev/null bs=200M count=1",
    ]);

    // inject by name: 32 MiB land in the container's cgroup.
    let base = usage(&id);
    let mut inj = oomlab()
        .args(["inject", "--docker-socket", &sock, "--container", &name])
        .args(["--size", "32MiB", "--duration", "3s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start oomlab inject");
    let charged = wait_until(Duration::from_secs(10), || usage(&id) >= base + 31 * MIB);
    let status = inj.wait().expect("wait for inject");
    assert!(charged && status.success(), "inject by name: {status}");

    let pid: u64 = d
        .docker(&["inspect", "-f", "{{.State.Pid}}", &id])
        .parse()
        .expect("State.Pid");
    let events = LineLog::start(d.docker_spawn(&["events", "--filter", "event=oom"]));
    let trace = TraceChild::start(&[
        "--docker-socket",
        &sock,
        "--container",
        &name,
        "--events",
        "oom",
    ]);
    d.docker(&["exec", &id, "/bin/sh", "-c", ": > /tmp/go"]);
    let exited = wait_until(Duration::from_secs(15), || {
        d.docker(&["inspect", "-f", "{{.State.Running}}", &id]) == "false"
    });
    assert!(exited, "the main process was not killed");
    let oom = events.wait_count(&[&id], 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let lines = trace.stop();
    let victims: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "oom_victim").collect();
    let oom_killed = d.docker(&["inspect", "-f", "{{.State.OOMKilled}}", &id]);
    eprintln!(
        "kills: oomlab {}, docker events oom {}, State.OOMKilled {oom_killed} (pid {pid})",
        victims.len(),
        oom.len()
    );
    assert_eq!(oom_killed, "true");
    assert_eq!(oom.len(), 1, "docker events: {oom:?}");
    assert_eq!(victims.len(), oom.len(), "oomlab's victims: {victims:#?}");
    let v = victims[0];
    assert_eq!(v["pid"], pid, "{v}");
    assert_eq!(v["runtime"], "docker", "{v}");
    assert_eq!(v["container_id"], id.as_str(), "{v}");
    assert_eq!(v["container_name"], name.as_str(), "{v}");
    assert_eq!(v["image"], "oomlab-busybox:test", "{v}");
    assert_eq!(v["container_init"], true, "{v}");

    // The killed container has exited: a target no more, and oomlab says so (exit 2).
    let out = oomlab()
        .args(["inject", "--docker-socket", &sock, "--container", &name])
        .args(["--size", "1MiB", "--duration", "1s"])
        .stdin(Stdio::null())
        .output()
        .expect("run oomlab inject");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not running (stopped)"), "{err}");
}
