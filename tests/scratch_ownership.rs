//! Scratch ownership without races: a cleanup racing the creation of fresh scratch cgroups
//! never removes one (the owner record is written before the cgroup exists), while it does
//! remove a leftover whose owner is provably gone — and only once its record is older than the
//! grace period.

mod common;

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use common::{cgroup, guard::TempPath};
use stress_user::cgroup::{remove_leftover, Ownership, ScratchCgroup, GRACE};

#[test]
fn cleanup_racing_creation_removes_only_leftovers() {
    if !common::need_root("cleanup_racing_creation_removes_only_leftovers") {
        return;
    }
    let hier = cgroup::hierarchy();
    // A parent of this test's own, so that the cleanup under test sees nobody else's cgroups.
    let parent = cgroup::scratch(&hier, "owned", None);
    let records = TempPath::dir("records");
    let own = Arc::new(Ownership {
        parent: parent.cgroup().rel.display().to_string(),
        record_dir: records.path().to_path_buf(),
    });

    // A leftover: its owner (a process that has exited) is gone, its record is old.
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("true runs");
    let dead_pid = dead.id();
    dead.wait().expect("reaped");
    let leftover = ScratchCgroup::create(&hier, &own.parent, "leftover", None).expect("leftover");
    let old = SystemTime::now() - GRACE * 5;
    let write_record = |name: &str, text: &str, when: SystemTime| {
        let path = records.path().join(name);
        fs::write(&path, text).expect("record");
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(when))
            .expect("record mtime");
    };
    write_record("leftover", &format!("{dead_pid} 12345\n"), old);
    // The same, but its record is fresh: inside the grace period it is left alone.
    let young = ScratchCgroup::create(&hier, &own.parent, "young", None).expect("young");
    let written = Instant::now();
    write_record("young", &format!("{dead_pid} 12345\n"), SystemTime::now());
    let listed: Vec<String> = own
        .find_leftovers(&hier, true)
        .iter()
        .map(|l| l.cgroup.rel.display().to_string())
        .collect();
    if written.elapsed() < GRACE {
        assert!(
            !listed.iter().any(|l| l.ends_with("/young")),
            "a record inside the grace period was acted on: {listed:?}"
        );
    } else {
        eprintln!("the grace check is skipped: listing took longer than {GRACE:?}");
    }
    assert!(
        listed.iter().any(|l| l.ends_with("/leftover")),
        "the dead owner's old leftover is not listed: {listed:?}"
    );
    // Past the grace period it is a leftover like any other; out of the race below.
    drop(young);

    // The race: one thread creates and drops owned cgroups as fast as it can; the other runs
    // the cleanup (with `unowned`, the most eager kind) in a loop meanwhile.
    let done = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let (own, hier, done) = (Arc::clone(&own), hier.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut removed = Vec::new();
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) || rounds == 0 {
                for l in own.find_leftovers(&hier, true) {
                    if remove_leftover(&l).is_ok() {
                        removed.push(l.cgroup.rel.display().to_string());
                    }
                }
                rounds += 1;
            }
            (removed, rounds)
        })
    };
    let mut created = 0;
    // Fewer in the emulated VMs, where each mkdir/rmdir is slow.
    let creations = if common::in_vm() { 100 } else { 300 };
    for i in 0..creations {
        let name = format!("fresh-{i}");
        let s = own
            .create(&hier, &name, Some(64 << 20))
            .expect("create owned");
        // Set up as a run would, while the cleaner looks.
        s.cgroup()
            .write("memory.limit_in_bytes", &(32u64 << 20).to_string())
            .or_else(|_| s.cgroup().write("memory.max", &(32u64 << 20).to_string()))
            .unwrap_or_else(|e| panic!("{name} removed under its owner: {e}"));
        assert!(s.cgroup().exists(), "{name} removed under its owner");
        created += 1;
    }
    done.store(true, Ordering::SeqCst);
    let (removed, rounds) = cleaner.join().expect("cleaner thread");
    eprintln!("{created} created, {rounds} cleanup rounds, removed {removed:?}");
    assert!(
        removed.iter().all(|r| !r.contains("/fresh-")),
        "a fresh owned cgroup was removed: {removed:?}"
    );
    assert!(
        rounds > 10,
        "the cleanup barely ran ({rounds} rounds): no race tested"
    );
    assert!(
        !leftover.cgroup().exists(),
        "the dead owner's leftover stayed"
    );
    assert!(
        !records.path().join("leftover").exists(),
        "its record stayed"
    );
    drop(leftover);
}

/// Processes whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| {
            fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .count()
}

/// A scratch cgroup whose process forks without pause is removed whole: `cgroup.kill` on v2,
/// the freezer loop on v1 (killing by pid from `cgroup.procs` chases the forks).
#[test]
fn a_fork_storm_in_a_scratch_cgroup_is_removed_whole() {
    if !common::need_root("a_fork_storm_in_a_scratch_cgroup_is_removed_whole") {
        return;
    }
    use std::io::Write as _;
    let hier = cgroup::hierarchy();
    let scratch = cgroup::scratch(&hier, "storm", None);
    let tag = format!("3500.{}", std::process::id());
    // It waits for a line before forking, so that it has joined the cgroup first.
    let mut sh = std::process::Command::new("sh")
        .args(["-c", &format!("read x; while true; do sleep {tag} & done")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sh starts");
    scratch
        .cgroup()
        .add_proc(sh.id() as i32)
        .expect("sh joins the scratch cgroup");
    writeln!(sh.stdin.take().expect("piped"), "go").expect("start forking");
    assert!(
        common::wait_until(Duration::from_secs(10), || processes_with(&tag) >= 50),
        "the storm did not start"
    );
    let started = Instant::now();
    scratch.remove().expect("removed despite the forks");
    eprintln!(
        "{} ({}): removed in {} ms",
        scratch.cgroup().path(),
        scratch.cgroup().version,
        started.elapsed().as_millis()
    );
    let _ = sh.wait();
    assert!(!scratch.cgroup().exists(), "still there");
    assert!(
        common::wait_until(Duration::from_secs(2), || processes_with(&tag) == 0),
        "{} of the storm's processes survived",
        processes_with(&tag)
    );
}
