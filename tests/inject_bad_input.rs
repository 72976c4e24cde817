//! Bad input to `oomlab inject`: a clear message naming the problem and what to do, exit 2, and
//! nothing created — no cgroup under `oomlab/` or `oomlab-test/`, no process in the target.

mod common;

use std::{collections::BTreeSet, os::unix::process::CommandExt, process::Command};

use common::{
    cgroup::{self, TEST_PARENT},
    inject::MIB,
};
use stress_user::cgroup::{Hierarchy, MemCgroup, ScratchCgroup, OWNED_PARENT};

/// Every cgroup directory under the two parents oomlab and its tests create in.
fn cgroups(hier: &Hierarchy) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for parent in [OWNED_PARENT, TEST_PARENT] {
        if let Ok(rd) = std::fs::read_dir(hier.memory_mount.join(parent)) {
            for e in rd.filter_map(Result::ok) {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.insert(format!("{parent}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    out
}

/// Runs `cmd`, expects exit 2 and every `needles` in stderr, and that nothing was created.
fn refused(hier: &Hierarchy, target: &MemCgroup, mut cmd: Command, needles: &[&str]) {
    let before = cgroups(hier);
    let out = cmd.output().expect("run oomlab inject");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{cmd:?}: want exit 2, stderr: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "{cmd:?}: stderr should mention {n:?}: {err}"
        );
    }
    assert_eq!(cgroups(hier), before, "{cmd:?} created a cgroup");
    assert!(
        target.procs().expect("procs").is_empty(),
        "{cmd:?} left a process in the target"
    );
}

fn inject(args: &[&str]) -> Command {
    let mut c = common::oomlab();
    c.arg("inject").args(args).args(["--duration", "1s"]);
    c
}

/// Drops CAP_SYS_RESOURCE from `cmd`'s bounding set before exec, so the new image never has it.
fn drop_cap_sys_resource(cmd: &mut Command) {
    let cap = caps::Capability::CAP_SYS_RESOURCE.index();
    let cap_sys_resource = libc::c_ulong::from(cap);
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap_sys_resource, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Each row: the arguments, and what stderr must say about them. `lim` and `unl` are test
/// cgroups with and without a limit; `taken` names a cgroup under `oomlab/` that exists, `over`
/// one that does not.
fn cases<'a>(
    lim: &'a str,
    unl: &'a str,
    taken: &'a str,
    over: &'a str,
) -> Vec<(Vec<&'a str>, &'static [&'static str])> {
    // 10 MiB into the limited cgroup, and `more`.
    let lim_10mib = |more: &[&'a str]| [&["--cgroup", lim, "--size", "10MiB"][..], more].concat();
    vec![
        (
            vec!["--cgroup", lim, "--size", "0"],
            &["\"0\" is zero", "positive"],
        ),
        (vec!["--cgroup", lim, "--size", "-5MiB"], &["\"-5MiB\""]),
        (
            vec!["--cgroup", lim, "--size", "lots"],
            &["invalid size \"lots\"", "200MiB"],
        ),
        (
            vec!["--cgroup", unl, "--size", "50%"],
            &["no memory limit", "absolute size"],
        ),
        (
            lim_10mib(&["--oom-score-adj", "1001"]),
            &["1001", "--oom-score-adj"],
        ),
        (lim_10mib(&["--oom-score-adj", "-1001"]), &["-1001"]),
        (
            vec!["--new", taken, "--limit", "100MiB", "--size", "10MiB"],
            &["already exists", "oomlab cleanup"],
        ),
        (
            vec!["--cgroup", lim, "--size", "200MiB"],
            &["will OOM", "--allow-oom"],
        ),
        (
            vec!["--new", over, "--limit", "100MiB", "--size", "101MiB"],
            &["will OOM"],
        ),
        (
            vec!["--cgroup", unl, "--size", "100TiB"],
            &["MemAvailable", "5%", "--force"],
        ),
        (
            vec!["--cgroup", "/oomlab-test/does-not-exist", "--size", "10MiB"],
            &["does not exist"],
        ),
        (
            vec!["--cgroup", "../..", "--size", "10MiB"],
            &["leaves the memory controller's mount"],
        ),
        (
            vec!["--cgroup", "/", "--size", "10MiB"],
            &["refusing", "--force"],
        ),
        (vec!["--size", "10MiB"], &["no target"]),
        (lim_10mib(&["--working-set", "10MiB"]), &["--working-set"]),
        (
            lim_10mib(&["--kind", "file", "--file-dir", "/dev/shm"]),
            &["tmpfs", "--file-dir"],
        ),
        (
            lim_10mib(&["--redirty", "0s"]),
            &["--redirty must be above zero"],
        ),
    ]
}

#[test]
fn every_bad_input_is_refused_before_anything_is_created() {
    if !common::need_root("every_bad_input_is_refused_before_anything_is_created") {
        return;
    }
    let hier = cgroup::hierarchy();
    let limited = cgroup::scratch(&hier, "bad-limited", Some(100 * MIB));
    let unlimited = cgroup::scratch(&hier, "bad-unlimited", None);
    let lim = limited.cgroup().path();
    let unl = unlimited.cgroup().path();
    let t = limited.cgroup();
    let taken = ScratchCgroup::create(&hier, OWNED_PARENT, &common::unique("taken"), None)
        .expect("a cgroup under oomlab/ whose name is taken");
    let taken_name = common::unique("taken");

    let over_name = common::unique("over");
    for (args, needles) in &cases(&lim, &unl, &taken_name, &over_name) {
        refused(&hier, t, inject(args), needles);
    }

    // Not root.
    let mut nobody = inject(&["--cgroup", &lim, "--size", "10MiB"]);
    nobody.uid(65534).gid(65534);
    refused(&hier, t, nobody, &["must run as root", "euid is 65534"]);

    // Root without CAP_SYS_RESOURCE cannot lower oom_score_adj.
    let mut no_cap = inject(&[
        "--cgroup",
        &lim,
        "--size",
        "10MiB",
        "--oom-score-adj",
        "-500",
    ]);
    drop_cap_sys_resource(&mut no_cap);
    refused(
        &hier,
        t,
        no_cap,
        &["CAP_SYS_RESOURCE", "--oom-score-adj -500"],
    );

    drop(taken);
}

/// `--pressure` refusals: with a byte goal, a level out of range, an unknown PSI line, v1
/// without `--node-pressure`, and (v2) a target without a limit unless the node's level is
/// asked for. PSI itself is on in every kernel we test on (`psi=0` cannot be set at run time),
/// so its refusal is covered by `cgroup::pressure`'s unit test of the reasons.
#[test]
fn bad_pressure_input_is_refused_before_anything_is_created() {
    if !common::need_root("bad_pressure_input_is_refused_before_anything_is_created") {
        return;
    }
    let hier = cgroup::hierarchy();
    let limited = cgroup::scratch(&hier, "badp-limited", Some(100 * MIB));
    let unlimited = cgroup::scratch(&hier, "badp-unlimited", None);
    let lim = limited.cgroup().path();
    let unl = unlimited.cgroup().path();
    let t = limited.cgroup();
    let node = hier.memory_version == stress_user::cgroup::Version::V1;
    // On v1 every case needs --node-pressure to get past the v1 check to the one it tests.
    let p = |level: &'static str| -> Vec<&'static str> {
        let mut v = vec!["--pressure", level];
        if node {
            v.push("--node-pressure");
        }
        v
    };
    let with = |extra: &[&str], target: &str| -> Vec<String> {
        [&["--cgroup", target][..], extra]
            .concat()
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let mut cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            with(&[&p("some=10%")[..], &["--size", "10MiB"]].concat(), &lim),
            &["--size", "cannot be used with"],
        ),
        (
            with(
                &[&p("some=10%")[..], &["--working-set", "10MiB"]].concat(),
                &lim,
            ),
            &["--working-set", "cannot be used with"],
        ),
        (with(&p("some=0%"), &lim), &["above 0 %", "below 100 %"]),
        (with(&p("full=100%"), &lim), &["below 100 %"]),
        (with(&p("some=-5%"), &lim), &["above 0 %"]),
        (
            with(&p("avg10=5%"), &lim),
            &["unknown kind \"avg10\"", "`some` and `full`"],
        ),
        (with(&p("10%"), &lim), &["expected KIND=N%"]),
    ];
    if node {
        cases.push((
            with(&["--pressure", "some=10%"], &lim),
            &["v1 has no per-cgroup PSI", "--node-pressure"],
        ));
        cases.push((
            with(&p("some=10%"), &unl),
            &["needs a target with a memory limit"],
        ));
    } else {
        cases.push((
            with(&["--pressure", "some=10%"], &unl),
            &["has no memory limit", "global reclaim", "--node-pressure"],
        ));
    }
    for (args, needles) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&hier, t, inject(&args), needles);
    }
}

/// Where the kernel has PSI off (`cargo xtask vm-test` boots each kernel once more with `psi=0`
/// for this test alone): `--pressure` is refused with the reason and a pointer to `doctor`,
/// nothing is created, and `doctor` reports the same state.
#[test]
fn pressure_is_refused_where_psi_is_off() {
    let test = "pressure_is_refused_where_psi_is_off";
    if !common::need_root(test) {
        return;
    }
    let state = stress_user::cgroup::psi_state();
    if state == stress_user::cgroup::PsiState::On {
        eprintln!(
            "skipped: {test}: PSI is on in this kernel (the VM matrix boots each kernel with psi=0 for this test)"
        );
        return;
    }
    let psi0 = std::fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|a| a == "psi=0");
    let hier = cgroup::hierarchy();
    let limited = cgroup::scratch(&hier, "psi-off", Some(100 * MIB));
    let t = limited.cgroup();
    let path = t.path();
    let mut args = vec!["--cgroup", path.as_str(), "--pressure", "some=10%"];
    if hier.memory_version == stress_user::cgroup::Version::V1 {
        args.push("--node-pressure");
    }
    let mut needles = vec!["oomlab doctor"];
    if psi0 {
        needles.push("psi=0");
    }
    refused(&hier, t, inject(&args), &needles);
    // The node-level refusal too: no /proc/pressure to hold.
    let args = [
        "--cgroup",
        path.as_str(),
        "--pressure",
        "some=10%",
        "--node-pressure",
    ];
    refused(&hier, t, inject(&args), &needles);

    let out = common::oomlab()
        .args(["doctor", "--output", "json"])
        .output()
        .expect("oomlab doctor");
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor's JSON");
    assert_eq!(doctor["psi"], false, "doctor: {doctor}");
    let reason = &doctor["psi_state"];
    if psi0 {
        assert_eq!(reason, "disabled_by_cmdline", "doctor: {doctor}");
    } else {
        assert_ne!(reason, "on", "doctor: {doctor}");
    }
}
