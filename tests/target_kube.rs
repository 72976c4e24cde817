//! Target resolution against real cgroups: a kubelet-style hierarchy (cgroupfs and systemd
//! drivers) built under `oomlab-test/<unique>/` on this node's memory controller, found by the
//! same search `--pod`/`--container` use, with a real process inside a container cgroup; the
//! refusal of protected and escaping paths; descendants' ids checked against the kernel's own
//! (`name_to_handle_at` returns the kernfs id of a cgroup directory).

mod common;

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::symlink},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use common::{
    cgroup::{self, TEST_PARENT},
    guard::Reap,
};
use stress_user::cgroup::{
    kube::{self, Driver, Qos},
    target::{self, TargetArgs, TargetError},
    CgroupError, Hierarchy, MemCgroup,
};

/// `oomlab-test/<unique>`; dropping it removes every cgroup below it, deepest first.
struct Tree {
    hier: Hierarchy,
    top: MemCgroup,
}

impl Tree {
    fn new(name: &str) -> Tree {
        let hier = cgroup::hierarchy();
        let top = hier.cgroup(format!("{TEST_PARENT}/{}", common::unique(name)));
        assert!(!top.exists(), "{} is left from an earlier run", top.path());
        fs::create_dir_all(top.dir()).expect("create the test's top cgroup");
        Tree { hier, top }
    }

    /// Creates the cgroup `rel` below the top (parents included) and returns its path from the
    /// mount, as `--cgroup` and the error messages give it.
    fn mkdir(&self, rel: &str) -> String {
        let cg = self.hier.cgroup(self.top.rel.join(rel));
        fs::create_dir_all(cg.dir()).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.path()));
        cg.path()
    }

    fn path(&self, rel: &str) -> String {
        self.hier.cgroup(self.top.rel.join(rel)).path()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let Ok(all) = target::descendants(&self.top) else {
            return;
        };
        for node in all.iter().rev() {
            if let Err(e) = fs::remove_dir(node.cgroup.dir()) {
                eprintln!("cleanup: rmdir {}: {e}", node.cgroup.path());
            }
        }
    }
}

/// Pod UIDs and container ids nobody else on the node has: pid and time in them.
fn ids() -> (Vec<String>, Vec<String>) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let pid = std::process::id();
    let uids = (0..5)
        .map(|i| {
            format!(
                "{pid:08x}-{i:04x}-4abc-8def-{:012x}",
                nanos & 0xffff_ffff_ffff
            )
        })
        .collect();
    let cids = (0..5)
        .map(|i| format!("{i:x}{pid:08x}{nanos:032x}{:023x}", 0))
        .map(|s| s[..64].to_string())
        .collect();
    (uids, cids)
}

fn under(uid: &str) -> String {
    uid.replace('-', "_")
}

fn pod(uid: &str) -> TargetArgs {
    TargetArgs {
        pod: Some(uid.into()),
        ..TargetArgs::default()
    }
}

fn container(id: &str) -> TargetArgs {
    TargetArgs {
        container: Some(id.into()),
        ..TargetArgs::default()
    }
}

/// The kernel's id for a cgroup directory, from its file handle (FILEID_KERNFS: the 64-bit id).
fn kernfs_id(dir: &std::path::Path) -> u64 {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let path = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in path");
    let mut handle = Handle {
        bytes: 8,
        kind: 0,
        id: 0,
    };
    let mut mount_id = 0;
    // SAFETY: `handle` is a `file_handle` header followed by room for the 8 bytes it declares.
    let rc = unsafe {
        libc::name_to_handle_at(
            libc::AT_FDCWD,
            path.as_ptr(),
            (&raw mut handle).cast(),
            &mut mount_id,
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at {}: {}",
        dir.display(),
        std::io::Error::last_os_error()
    );
    handle.id
}

/// `--container` finds `want` by the full id `cid` and by its 12-character prefix, with the
/// QoS class, cgroup driver and runtime of its path.
fn check_container(
    h: &Hierarchy,
    cid: &str,
    want: &str,
    (qos, driver, runtime): (Qos, Driver, Option<&str>),
) {
    for given in [cid, &cid[..12]] {
        let (cg, r) = target::resolve_container(h, given)
            .unwrap_or_else(|e| panic!("--container {given}: {e}"));
        assert_eq!(cg.path(), want, "--container {given}");
        assert_eq!(
            (
                r.qos,
                r.driver,
                r.runtime.as_deref(),
                r.container_id.as_deref()
            ),
            (qos, driver, runtime, Some(cid)),
            "{want}"
        );
    }
    assert_eq!(
        target::resolve(h, &container(cid)).expect("resolve").path(),
        want
    );
}

/// A process moved into the container `cid` (pod `uid`, cgroup `scope_path`): `--pid` finds
/// that cgroup, and the path the kernel gives for it names the pod and container.
fn real_process_in_the_scope(h: &Hierarchy, uid: &str, cid: &str, scope_path: &str) {
    // Reaped on drop, so its cgroup can go.
    let child = Reap(
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep"),
    );
    let pid = i32::try_from(child.0.id()).expect("pid fits i32");
    let scope = target::resolve_container(h, cid)
        .expect("containerd scope")
        .0;
    scope.add_proc(pid).expect("move sleep into the scope");
    assert_eq!(
        target::resolve_pid(h, pid).expect("--pid").path(),
        scope_path
    );
    let proc_cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("proc cgroup");
    let kernel_path = stress_user::cgroup::cgroup_of(&proc_cgroup, h.memory_version)
        .expect("a memory line in /proc/PID/cgroup");
    let r = kube::parse_path(&kernel_path).expect("kubelet naming in the victim's path");
    assert_eq!(r.pod_uid, uid);
    assert_eq!(r.container_id.as_deref(), Some(cid));
    assert_eq!(r.runtime.as_deref(), Some("cri-containerd"));
    assert_eq!(r.qos, Qos::BestEffort);
    drop(child);
}

/// The kubelet's own levels of the tree `t` are refused without `--force`; the cgroups in
/// `writable` (pods and containers) are not.
fn check_protected(t: &Tree, writable: [&str; 3]) {
    let h = &t.hier;
    for rel in [
        "kubepods",
        "kubepods/burstable",
        "kubepods/besteffort",
        "kubepods.slice",
        "kubepods.slice/kubepods-besteffort.slice",
        "kubepods.slice/kubepods-burstable.slice",
    ] {
        let cg = h.resolve(&t.path(rel)).expect("exists");
        let err = target::check_writable(&cg, false).expect_err(rel);
        assert!(matches!(err, TargetError::Protected { .. }), "{rel}: {err}");
        assert!(err.to_string().contains("--force"), "{err}");
        target::check_writable(&cg, true).expect("--force");
    }
    for path in writable {
        target::check_writable(&h.resolve(path).expect("exists"), false).expect(path);
    }
}

#[test]
fn pods_and_containers_in_both_drivers() {
    if !common::need_root("pods_and_containers_in_both_drivers") {
        return;
    }
    let t = Tree::new("target-kube");
    let h = &t.hier;
    let (u, c) = ids();
    // cgroupfs driver: burstable, guaranteed, CRI-O's prefixed name.
    let fs_burstable = t.mkdir(&format!("kubepods/burstable/pod{}/{}", u[0], c[0]));
    let fs_guaranteed = t.mkdir(&format!("kubepods/pod{}/crio-{}", u[1], c[1]));
    t.mkdir("kubepods/besteffort");
    // systemd driver: besteffort with containerd, guaranteed with docker.
    let sd_pod = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
        under(&u[2])
    );
    let sd_besteffort = t.mkdir(&format!("{sd_pod}/cri-containerd-{}.scope", c[2]));
    let sd_guaranteed = t.mkdir(&format!(
        "kubepods.slice/kubepods-pod{}.slice/docker-{}.scope",
        under(&u[3]),
        c[3]
    ));
    t.mkdir("kubepods.slice/kubepods-burstable.slice");

    // Pods: by UID with dashes and with underscores, through the node-wide search.
    for (uid, want) in [
        (&u[0], t.path(&format!("kubepods/burstable/pod{}", u[0]))),
        (&u[1], t.path(&format!("kubepods/pod{}", u[1]))),
        (&u[2], t.path(&sd_pod)),
    ] {
        for given in [uid.clone(), under(uid)] {
            let cg =
                target::resolve(h, &pod(&given)).unwrap_or_else(|e| panic!("--pod {given}: {e}"));
            assert_eq!(cg.path(), want, "--pod {given}");
        }
    }

    // Containers: full ids and 12-character prefixes, each driver and runtime.
    for (cid, want, qos, driver, runtime) in [
        (&c[0], &fs_burstable, Qos::Burstable, Driver::Cgroupfs, None),
        (
            &c[1],
            &fs_guaranteed,
            Qos::Guaranteed,
            Driver::Cgroupfs,
            Some("crio"),
        ),
        (
            &c[2],
            &sd_besteffort,
            Qos::BestEffort,
            Driver::Systemd,
            Some("cri-containerd"),
        ),
        (
            &c[3],
            &sd_guaranteed,
            Qos::Guaranteed,
            Driver::Systemd,
            Some("docker"),
        ),
    ] {
        check_container(h, cid, want, (qos, driver, runtime));
    }

    // A real process in the containerd scope: --pid finds the same cgroup, and the path the
    // kernel gives for it (what the tracer reads for a victim) names the pod and container.
    real_process_in_the_scope(h, &u[2], &c[2], &sd_besteffort);

    // Protected levels of the test's kubelet trees; pods and containers are fine.
    check_protected(&t, [&fs_burstable, &sd_besteffort, &t.path(&sd_pod)]);

    // Descendants of the systemd tree, with the kernel's ids.
    let root = h.resolve(&t.path("kubepods.slice")).expect("exists");
    let all = target::descendants(&root).expect("descendants");
    let mut paths: Vec<String> = all.iter().map(|n| n.cgroup.path()).collect();
    paths.sort();
    let mut want = vec![
        t.path("kubepods.slice"),
        t.path("kubepods.slice/kubepods-besteffort.slice"),
        t.path("kubepods.slice/kubepods-burstable.slice"),
        t.path(&format!(
            "kubepods.slice/kubepods-pod{}.slice",
            under(&u[3])
        )),
        t.path(&sd_pod),
        sd_besteffort.clone(),
        sd_guaranteed.clone(),
    ];
    want.sort();
    assert_eq!(paths, want);
    for n in &all {
        assert_eq!(n.id, kernfs_id(&n.cgroup.dir()), "{}", n.cgroup.path());
    }
}

#[test]
fn ambiguous_and_missing_targets() {
    if !common::need_root("ambiguous_and_missing_targets") {
        return;
    }
    let t = Tree::new("target-ambig");
    let h = &t.hier;
    let (u, c) = ids();
    // Two containers, one per driver, whose ids share their first 20 characters.
    let a = format!("{}0{}", &c[4][..20], &c[4][21..]);
    let b = format!("{}1{}", &c[4][..20], &c[4][21..]);
    let pa = t.mkdir(&format!("kubepods/besteffort/pod{}/{a}", u[4]));
    let pb = t.mkdir(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{b}.scope",
        under(&u[4])
    ));
    let err = target::resolve(h, &container(&c[4][..20])).expect_err("two matches");
    let msg = err.to_string();
    assert!(msg.contains(&pa) && msg.contains(&pb), "{msg}");
    assert!(
        matches!(err, TargetError::Ambiguous { ref matches, .. } if matches.len() == 2),
        "{msg}"
    );
    // One more character decides.
    assert_eq!(
        target::resolve(h, &container(&b[..21]))
            .expect("unique")
            .path(),
        pb
    );
    // The same pod UID in both trees is ambiguous too.
    let err = target::resolve(h, &pod(&u[4])).expect_err("two trees");
    assert!(err.to_string().contains(&t.path("kubepods.slice")), "{err}");

    let missing = format!("{:x}", std::process::id()) + "ffffffffffffffffffff";
    let msg = target::resolve(h, &container(&missing))
        .expect_err("missing")
        .to_string();
    assert!(
        msg.contains(&format!("container {missing} not found")),
        "{msg}"
    );
    assert!(
        msg.contains(&t.path("kubepods")),
        "names the roots searched: {msg}"
    );
    assert!(msg.contains(&h.memory_mount.display().to_string()), "{msg}");
    let msg = target::resolve(h, &pod(&missing))
        .expect_err("missing")
        .to_string();
    assert!(msg.contains(&t.path("kubepods.slice")), "{msg}");
}

#[test]
fn paths_that_leave_the_mount_or_do_not_exist() {
    if !common::need_root("paths_that_leave_the_mount_or_do_not_exist") {
        return;
    }
    let t = Tree::new("target-escape");
    let h = &t.hier;
    let mount = h.memory_mount.display().to_string();
    let given = |p: String| {
        target::resolve(
            h,
            &TargetArgs {
                cgroup: Some(p),
                ..TargetArgs::default()
            },
        )
    };
    for p in [
        format!("{}/../..", t.top.path()),
        format!("{mount}/../cpu"),
        "..".to_string(),
    ] {
        let err = given(p.clone()).expect_err(&p);
        assert!(
            matches!(err, TargetError::Cgroup(CgroupError::Escapes { .. })),
            "{p}: {err}"
        );
        assert!(err.to_string().contains(&mount), "{err}");
    }
    // cgroupfs has no symlinks; if a kernel ever allows one, resolve must still refuse it.
    let link = t.top.dir().join("link");
    match symlink("/tmp", &link) {
        Err(e) => eprintln!("cgroupfs refuses symlinks ({e}); the symlink case is a unit test"),
        Ok(()) => {
            let err = given(format!("{}/link", t.top.path())).expect_err("symlink");
            let _ = fs::remove_file(&link);
            assert!(
                matches!(err, TargetError::Cgroup(CgroupError::Escapes { .. })),
                "{err}"
            );
        }
    }
    let nope = format!("{}/does-not-exist", t.top.path());
    let err = given(nope.clone()).expect_err("missing");
    assert_eq!(
        err.to_string(),
        format!("cgroup {nope} does not exist under {mount}")
    );
    // Absolute under the mount works, and the root is refused without --force.
    let abs = format!("{mount}{}", t.top.path());
    assert_eq!(given(abs).expect("absolute").path(), t.top.path());
    let root = given("/".into()).expect("the root exists");
    let msg = target::check_writable(&root, false)
        .expect_err("root")
        .to_string();
    assert!(
        msg.contains("root cgroup") && msg.contains("--force"),
        "{msg}"
    );
}
