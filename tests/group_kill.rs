//! cgroup v2 only: `memory.oom.group` on a cgroup tree laid out as the kubelet lays it out on v2
//! (`kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//! cri-containerd-<id>.scope`, the container with `memory.oom.group=1` as Kubernetes ≥ 1.28
//! sets it). `oomlab inject` and `oomlab run` refuse such a container without
//! `--allow-group-kill`, creating nothing; with it, a worker's OOM kills the whole container and
//! `oomlab trace` reports the one group kill with every task it took, and `oomlab serve` counts
//! it, as the kernel counts them (`memory.events` `oom_group_kill` from 5.17; the kernel log's
//! group line on older kernels).
//! The host has memory on v1, so these run in the VM matrix (`cargo xtask vm-test`).

mod common;

use std::{
    collections::BTreeSet,
    fs,
    os::unix::process::ExitStatusExt,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    cgroup::TEST_PARENT, guard::TempPath, inject::Injector, kmsg::Kmsg, lines::of_type,
    serve::Serve, trace::TraceChild,
};
use serde_json::Value;
use stress_user::cgroup::{oom_group, parse_flat_keyed, Hierarchy, MemCgroup, ScratchCgroup};

const MIB: u64 = 1 << 20;
const POD_UID: &str = "1b4e28ba_2fa1_11d2_883f_0016d3cca427";
const CONTAINER_ID: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// The kubelet's v2 tree under this test's own parent, removed leaf first on drop.
struct KubeTree {
    levels: Vec<ScratchCgroup>,
}

impl KubeTree {
    /// `oomlab-test/<name>-<pid>/kubepods.slice/…/cri-containerd-<id>.scope`, with the limits
    /// the kubelet would give a burstable pod of one container limited to `container_limit`.
    fn new(hier: &Hierarchy, name: &str, container_limit: u64) -> KubeTree {
        let base = common::unique(name);
        let names = [
            ("kubepods.slice".to_string(), Some(256 * MIB)),
            ("kubepods-burstable.slice".to_string(), None),
            (
                format!("kubepods-burstable-pod{POD_UID}.slice"),
                Some(container_limit),
            ),
            (
                format!("cri-containerd-{CONTAINER_ID}.scope"),
                Some(container_limit),
            ),
        ];
        let mut levels = vec![ScratchCgroup::create(hier, TEST_PARENT, &base, None)
            .unwrap_or_else(|e| panic!("creating {TEST_PARENT}/{base}: {e}"))];
        for (n, limit) in names {
            let parent = levels
                .last()
                .map(|l| l.cgroup().rel.display().to_string())
                .unwrap_or_default();
            let level = ScratchCgroup::create(hier, &parent, &n, limit)
                .unwrap_or_else(|e| panic!("creating {parent}/{n}: {e}"));
            levels.push(level);
        }
        let tree = KubeTree { levels };
        tree.container()
            .write("memory.oom.group", "1")
            .expect("set memory.oom.group on the container, as the kubelet does");
        tree
    }

    fn container(&self) -> &MemCgroup {
        self.levels.last().expect("levels").cgroup()
    }

    /// Every directory of the tree, to show that a refusal created nothing in it.
    fn listing(&self) -> BTreeSet<String> {
        fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    out.insert(e.path().display().to_string());
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.levels[0].cgroup().dir(), &mut out);
        out
    }
}

impl Drop for KubeTree {
    fn drop(&mut self) {
        while let Some(level) = self.levels.pop() {
            drop(level);
        }
    }
}

/// The refusal names the group, what the first OOM does there, and the way out.
fn assert_refusal(o: &Output, ctr: &MemCgroup) {
    assert_eq!(o.status.code(), Some(2), "{}", common::output_text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        format!("{} has memory.oom.group=1", ctr.path()),
        format!("the first worker OOM kills every process in {}", ctr.path()),
        "--allow-group-kill".to_string(),
    ] {
        assert!(
            err.contains(&needle),
            "no {needle:?} in\n{}",
            common::output_text(o)
        );
    }
}

fn owned_scratch() -> BTreeSet<String> {
    let hier = common::cgroup::hierarchy();
    fs::read_dir(hier.memory_mount.join("oomlab"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_kubelet_container_with_oom_group_is_refused_without_the_flag() {
    let test = "a_kubelet_container_with_oom_group_is_refused_without_the_flag";
    let Some(hier) = common::cgroup::v2_hierarchy(test) else {
        return;
    };
    let tree = KubeTree::new(&hier, "gk-refuse", 32 * MIB);
    let ctr = tree.container().clone();
    let found = oom_group::find(&ctr)
        .expect("read memory.oom.group")
        .expect("the container is a group");
    assert_eq!(
        found.group, ctr,
        "the container is its own group and domain"
    );
    let (before, scratch_before) = (tree.listing(), owned_scratch());
    let path = ctr.path();

    let inject = common::oomlab()
        .args([
            "inject",
            "--cgroup",
            &path,
            "--size",
            "4MiB",
            "--duration",
            "2s",
        ])
        .output()
        .expect("start oomlab inject");
    assert_refusal(&inject, &ctr);

    let dir = TempPath::dir("group-kill-run");
    let file = dir.path().join("into-a-container.toml");
    fs::write(
        &file,
        format!(
            "name = \"into-a-container\"\n[target]\ncgroup = \"{path}\"\n\n[[stages]]\nname = \"push\"\ninject = {{ size = \"4MiB\" }}\nhold = \"1s\"\n"
        ),
    )
    .expect("write the experiment");
    let run = common::oomlab()
        .args(["run", file.to_str().expect("utf-8"), "--output", "json"])
        .output()
        .expect("start oomlab run");
    assert_refusal(&run, &ctr);
    assert!(
        !String::from_utf8_lossy(&run.stdout).contains("\"ready\""),
        "a refused run never gets ready: {}",
        common::output_text(&run)
    );

    assert_eq!(
        ctr.procs().expect("cgroup.procs"),
        Vec::<i32>::new(),
        "no worker started"
    );
    assert_eq!(tree.listing(), before, "no cgroup created in the tree");
    assert_eq!(owned_scratch(), scratch_before, "no scratch cgroup created");
}

fn app(cg: &MemCgroup, size: &str) -> Child {
    common::app(&cg.path(), size)
        .args(["--duration", "120s"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start oomlab app")
}

fn wait_killed(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for oomlab app") {
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "the group kill takes the container's app {} too: {status:?}",
                child.id()
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "app {} survived the container's OOM by {within:?}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events(cg: &MemCgroup) -> std::collections::BTreeMap<String, u64> {
    parse_flat_keyed(&cg.read("memory.events").expect("memory.events"))
}

#[test]
fn with_the_flag_a_worker_oom_is_one_group_kill_and_trace_reports_it() {
    let test = "with_the_flag_a_worker_oom_is_one_group_kill_and_trace_reports_it";
    let Some(hier) = common::cgroup::v2_hierarchy(test) else {
        return;
    };
    let tree = KubeTree::new(&hier, "gk-kill", 48 * MIB);
    let ctr = tree.container().clone();
    let path = ctr.path();
    let before = events(&ctr);
    let mut kmsg = Kmsg::open_at_end();
    let trace = TraceChild::start(&["--cgroup", &path]);
    let mut serve = Serve::start("");

    // The container's own processes: two apps holding 8 MiB.
    let mut apps: Vec<Child> = (0..2).map(|_| app(&ctr, "8MiB")).collect();
    assert!(
        common::wait_until(Duration::from_secs(60), || ctr.usage().unwrap_or(0)
            >= 16 * MIB),
        "the apps did not charge 16 MiB: {:?}",
        ctr.snapshot()
    );
    let app_pids: BTreeSet<i32> = apps.iter().map(|c| c.id() as i32).collect();
    let mut inj = Injector::start(&[
        "--cgroup",
        &path,
        "--size",
        "64MiB",
        "--allow-oom",
        "--allow-group-kill",
        "--duration",
        "60s",
    ]);
    let (status, summary) = inj.finish_within(Duration::from_secs(90));
    assert_eq!(
        status.code(),
        Some(3),
        "the worker was OOM-killed: {summary}"
    );
    let workers: BTreeSet<i32> = inj.worker_pids().into_iter().collect();
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    for a in &mut apps {
        wait_killed(a, Duration::from_secs(30));
    }
    let killed: BTreeSet<i32> = app_pids.union(&workers).copied().collect();

    let mut trace = trace;
    let group_episode = |v: &Value| v["type"] == "oom_episode" && v["group_kill"] == path.as_str();
    assert!(
        trace
            .wait_for(Duration::from_secs(15), group_episode)
            .is_some(),
        "oomlab trace reported no group kill of {path}"
    );
    let lines = trace.stop();
    let episodes = of_type(&lines, "oom_episode");
    let groups: Vec<&&Value> = episodes.iter().filter(|e| group_episode(e)).collect();
    let traced: BTreeSet<i32> = groups
        .iter()
        .flat_map(|e| e["victims"].as_array().into_iter().flatten())
        .filter(|v| v["traced"] == true)
        .filter_map(|v| v["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert_eq!(
        traced, killed,
        "the group kill's episode has every task the kernel killed (mark_victim fires once per task): {groups:?}"
    );

    // The kernel's count of group kills, where it keeps one (5.17+); before, its log line.
    let after = events(&ctr);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let group_line = format!("Tasks in {path} are going to be killed due to memory.oom.group set");
    let mut seen: Vec<String> = Vec::new();
    common::wait_until(Duration::from_secs(5), || {
        seen.extend(kmsg.drain());
        seen.iter().any(|m| m.contains(&group_line))
    });
    let logged = seen.iter().filter(|m| m.contains(&group_line)).count() as u64;
    // serve counts node-wide: in the VMs nothing else on the node OOMs.
    let served = || serve.metric("oomlab_oom_group_kills_total");
    common::wait_until(Duration::from_secs(10), || served() >= 1.0);
    assert_eq!(
        served(),
        groups.len() as f64,
        "oomlab serve's oomlab_oom_group_kills_total = trace's group kills"
    );
    serve.stop();
    match oom_group::group_kills(&ctr).expect("memory.events") {
        Some(_) => {
            assert_eq!(
                groups.len() as u64,
                delta("oom_group_kill"),
                "oomlab's group kills = memory.events oom_group_kill: {after:?}"
            );
            eprintln!(
                "group kill: memory.events oom_group_kill +{}, oom_kill +{}; oomlab {} group episode(s), {} victims",
                delta("oom_group_kill"),
                delta("oom_kill"),
                groups.len(),
                traced.len()
            );
        }
        None => {
            eprintln!(
                "this kernel has no memory.events oom_group_kill (5.17 added it): compared with the kernel log's {logged} group line(s) instead"
            );
            assert_eq!(
                groups.len() as u64,
                logged,
                "group lines in /dev/kmsg: {seen:?}"
            );
        }
    }
    assert_eq!(groups.len(), 1, "one group kill: {groups:?}");
    assert_eq!(logged, 1, "one group line in /dev/kmsg");
    drop(tree);
}
