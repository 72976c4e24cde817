//! containerd as target and oracle (#13): a container started by the test's own containerd
//! with a 128 MiB limit and the kubelet's three CRI labels is found by id prefix and by name;
//! `inject` charges it exactly, as its cgroup and `ctr task metrics` both show; the victims of
//! three over-limit `ctr task exec` processes that `trace` reports are exactly containerd's
//! `/tasks/oom` events and the cgroup's `oom_kill`, each named from the labels and marked as not
//! the container's init. Bad input (a missing or refusing socket, unknown names, a stopped
//! container) exits 2 and creates nothing.

mod common;

use std::{
    fs,
    os::unix::net::UnixListener,
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use common::{
    guard::TempPath,
    need_root, oomlab,
    runtime::{have_runtimes, rootfs, Containerd, LineLog},
    trace::TraceChild,
    wait_until,
};

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 128 * MIB;
const LABELS: [(&str, &str); 4] = [
    ("io.kubernetes.pod.name", "web-0"),
    ("io.kubernetes.pod.namespace", "shop"),
    ("io.kubernetes.container.name", "app"),
    (
        "io.kubernetes.pod.uid",
        "5d0c8e38-0e7a-4c7e-9b7e-2b1f0c3a9d41",
    ),
];

fn memcg(rel: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/'))
}

fn read_u64(path: &Path) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .expect("a number")
}

fn oom_kills(rel: &str) -> u64 {
    fs::read_to_string(memcg(rel).join("memory.oom_control"))
        .expect("memory.oom_control")
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `memory.usage_in_bytes` as `ctr task metrics` prints it (containerd's own reading).
fn ctr_usage(ctd: &Containerd, id: &str) -> u64 {
    ctd.ctr(&["task", "metrics", id])
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_in_bytes"))
        .and_then(|v| v.trim().parse().ok())
        .expect("memory.usage_in_bytes in ctr task metrics")
}

fn inject(args: &[&str]) -> Output {
    oomlab()
        .arg("inject")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run oomlab inject")
}

/// Exit 2 with every `needles` in stderr, and nothing created in the container's cgroup.
fn refused(ctd: &Containerd, id: &str, args: &[&str], needles: &[&str]) {
    let before = fs::read_to_string(memcg(&ctd.cgroup(id)).join("cgroup.procs")).expect("procs");
    let out = inject(&[args, &["--size", "64MiB", "--duration", "2s"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {n:?} missing in: {err}");
    }
    let after = fs::read_to_string(memcg(&ctd.cgroup(id)).join("cgroup.procs")).expect("procs");
    assert_eq!(before, after, "{args:?} started something in the container");
    let children = fs::read_dir(memcg(&ctd.cgroup(id)))
        .expect("container cgroup")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .count();
    assert_eq!(children, 0, "{args:?} created a cgroup");
    eprintln!("refused as expected: {}", err.trim());
}

#[test]
fn containerd_targets_names_and_oom_oracle() {
    if !need_root("containerd_targets_names_and_oom_oracle")
        || !have_runtimes(
            "containerd_targets_names_and_oom_oracle",
            &["containerd", "ctr", "runc"],
        )
    {
        return;
    }
    let tmp = TempPath::dir("ctd");
    let root = rootfs(tmp.path());
    let mut ctd = Containerd::start(tmp.path());
    let sock = ctd.socket.display().to_string();
    // A hex id like the kubelet's, unique to this run.
    let id = format!("{:0>64x}", u64::from(std::process::id()) << 20 | 0xc0ffee);
    ctd.run(&id, &root, LIMIT, &LABELS, &["/bin/sleep", "600"]);
    let cg = ctd.cgroup(&id);
    assert_eq!(read_u64(&memcg(&cg).join("memory.limit_in_bytes")), LIMIT);

    // Bad input: exit 2, naming what is wrong, nothing created.
    let missing = tmp.path().join("missing.sock");
    refused(
        &ctd,
        &id,
        &[
            "--containerd-socket",
            &missing.display().to_string(),
            "--container",
            "app",
        ],
        &[&missing.display().to_string(), "--containerd-socket"],
    );
    let dead = tmp.path().join("refusing.sock");
    drop(UnixListener::bind(&dead).expect("bind a socket nobody serves"));
    refused(
        &ctd,
        &id,
        &[
            "--containerd-socket",
            &dead.display().to_string(),
            "--container",
            "app",
        ],
        &[&dead.display().to_string(), "--containerd-socket"],
    );
    refused(
        &ctd,
        &id,
        &["--containerd-socket", &sock, "--container", "apq"],
        &["container apq not found", "nearest: app"],
    );
    refused(
        &ctd,
        &id,
        &["--containerd-socket", &sock, "--pod", "shop/web-1"],
        &["pod shop/web-1 not found", "nearest: shop/web-0"],
    );
    let stopped = common::unique("stopped");
    ctd.run(&stopped, &root, LIMIT, &[], &["/bin/sleep", "600"]);
    ctd.stop_task(&stopped);
    refused(
        &ctd,
        &id,
        &["--containerd-socket", &sock, "--container", &stopped],
        &["is not running (stopped)"],
    );

    // inject by a 12-character id prefix: 64 MiB charged, by the cgroup and by containerd.
    let base = read_u64(&memcg(&cg).join("memory.usage_in_bytes"));
    let mut child = oomlab()
        .args([
            "inject",
            "--containerd-socket",
            &sock,
            "--container",
            &id[..12],
        ])
        .args(["--size", "64MiB", "--duration", "6s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start oomlab inject");
    let usage = || read_u64(&memcg(&cg).join("memory.usage_in_bytes")) - base;
    let reached = wait_until(Duration::from_secs(10), || usage() >= 63 * MIB);
    std::thread::sleep(Duration::from_millis(300));
    let (by_cgroup, by_ctr) = (usage(), ctr_usage(&ctd, &id) - base);
    let status = child.wait().expect("wait for inject");
    assert!(status.success(), "inject exited with {status}");
    for (what, got) in [
        ("memory.usage_in_bytes", by_cgroup),
        ("ctr task metrics", by_ctr),
    ] {
        let err = (got as f64 - (64 * MIB) as f64).abs() / (64 * MIB) as f64;
        eprintln!(
            "charged per {what}: {got} bytes ({:.2} % off 64 MiB)",
            err * 100.0
        );
        assert!(
            reached && err <= 0.02,
            "{what}: charged {got}, want 64 MiB ±2 %"
        );
    }

    // trace by name while three execs blow the limit.
    let events = LineLog::start(ctd.ctr_spawn(&["events"]));
    let trace = TraceChild::start(&[
        "--containerd-socket",
        &sock,
        "--container",
        "app",
        "--events",
        "oom",
    ]);
    let kills_before = oom_kills(&cg);
    for i in 0..3 {
        let exec = format!("blow-{i}");
        let out = ctd.ctr_raw(&[
            "task",
            "exec",
            "--exec-id",
            &exec,
            &id,
            "/bin/dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=200M",
            "count=1",
        ]);
        assert_eq!(
            out.status.code(),
            Some(137),
            "exec {i} should be OOM-killed"
        );
    }
    let oom_events = events.wait_count(&["/tasks/oom", &id], 3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let lines = trace.stop();
    let victims: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "oom_victim").collect();
    let kernel = oom_kills(&cg) - kills_before;
    eprintln!(
        "kills: oomlab {}, containerd /tasks/oom {}, cgroup oom_kill {kernel}",
        victims.len(),
        oom_events.len()
    );
    assert_eq!(kernel, 3, "the cgroup's own count");
    assert_eq!(
        oom_events.len(),
        3,
        "containerd's /tasks/oom: {oom_events:?}"
    );
    assert_eq!(victims.len(), 3, "oomlab's victims: {victims:#?}");
    let init: u64 = ctd
        .ctr(&["task", "list"])
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the container's init pid");
    for v in victims {
        assert_eq!(v["runtime"], "containerd", "{v}");
        assert_eq!(v["container_id"], id.as_str(), "{v}");
        assert_eq!(v["container_name"], "app", "{v}");
        assert_eq!(v["pod"], "web-0", "{v}");
        assert_eq!(v["namespace"], "shop", "{v}");
        assert_eq!(v["pod_uid"], LABELS[3].1, "{v}");
        assert_eq!(v["container_init"], false, "{v}");
        assert_ne!(v["pid"], init, "{v}");
        assert!(v.get("names_missing").is_none(), "{v}");
    }

    // An experiment's target.container goes through the runtimes, and its victims are named.
    let exp = tmp.path().join("exp.toml");
    fs::write(
        &exp,
        format!(
            "name = \"container\"\n[target]\ncontainer = \"app\"\ncontainerd_socket = \"{sock}\"\n\
             [[stages]]\nname = \"over the limit\"\n\
             inject = {{ size = \"200MiB\", workers = 1, on_oom = \"stop\" }}\nhold = \"1s\"\n\
             [stages.expect]\nmin_oom_kills = 1\n"
        ),
    )
    .expect("write the experiment");
    let run = oomlab()
        .args(["run", "--output", "json"])
        .arg(&exp)
        .stdin(Stdio::null())
        .output()
        .expect("run oomlab run");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "oomlab run: {out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.contains(&cg),
        "the run's target is the container's cgroup: {out}"
    );
    assert!(
        out.contains("\"pod\":\"web-0\"") && out.contains("\"container_init\":false"),
        "the run's victims are named: {out}"
    );

    // A runtime that stops answering holds no kill back: with containerd SIGSTOPped, a kill in
    // its container is reported at once, named from what the runtime said before.
    let trace = TraceChild::start(&[
        "--containerd-socket",
        &sock,
        "--container",
        &id,
        "--events",
        "oom",
    ]);
    let kills_before = oom_kills(&cg);
    let paused = ctd.pause();
    let app = common::app(&cg, "200MiB")
        .args(["--duration", "20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run oomlab app");
    assert!(!app.success(), "oomlab app should be OOM-killed");
    let killed = wait_until(Duration::from_secs(5), || oom_kills(&cg) > kills_before);
    std::thread::sleep(Duration::from_millis(500));
    let lines = trace.stop();
    drop(paused);
    let victims: Vec<&serde_json::Value> =
        lines.iter().filter(|v| v["type"] == "oom_victim").collect();
    eprintln!(
        "containerd stopped: oomlab {} victim(s), cgroup oom_kill +{}",
        victims.len(),
        oom_kills(&cg) - kills_before
    );
    assert!(killed);
    assert_eq!(
        victims.len() as u64,
        oom_kills(&cg) - kills_before,
        "{victims:#?}"
    );
    for v in victims {
        assert_eq!(v["pod"], "web-0", "named from the table: {v}");
        assert_eq!(v["container_init"], false, "{v}");
    }
}
