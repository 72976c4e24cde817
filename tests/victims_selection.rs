//! Victim selection on the real kernel: three `oomlab app` processes of different sizes and
//! `oom_score_adj` share a 32 MiB cgroup, a fourth pushes it over. `oomlab trace --output json`
//! must report an `oom_episode` naming the kernel's victim (checked against `/dev/kmsg` and the
//! cgroup's `oom_kill` counter) with oomlab's badness ranking putting that pid first — and the
//! victim is chosen by its adj, not by being the largest.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::ExitStatusExt,
    process::Stdio,
    time::Duration,
};

use common::{
    cgroup,
    guard::Reap,
    kmsg::{killed_pid, Kmsg},
    lines::{spawn_json, Lines},
};
use serde_json::Value;

/// Loading and verifying the eBPF programs takes seconds under TCG emulation in the VM matrix
/// (two guests sharing two cores); this is a deadline, not a speed check.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts `oomlab app` in `cg` and waits until it holds its memory.
fn app(cg: &str, size: &str, adj: i32, duration: &str) -> Reap {
    let mut child = common::app(cg, size)
        .args(["--oom-score-adj", &adj.to_string()])
        .args(["--duration", duration])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn oomlab app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read app's first line");
    assert!(
        line.contains("holding"),
        "oomlab app {size} adj {adj} did not start: {line:?}"
    );
    Reap(child)
}

fn pid(c: &Reap) -> i64 {
    i64::from(c.0.id())
}

/// `oomlab trace` of the OOM events in the cgroup `path`, its JSON lines read on a thread, once
/// it is ready.
fn trace(path: &str) -> (Reap, Lines) {
    let (child, mut rx) = spawn_json(
        common::oomlab().arg("trace").args([
            "--output",
            "json",
            "--events",
            "oom",
            "--cgroup",
            path,
            "--duration",
            "600s",
        ]),
        "oomlab trace",
    );
    wait_for(&mut rx, "ready line", READY_TIMEOUT, |v| {
        v["type"] == "ready"
    });
    (child, rx)
}

/// The next line of the trace that `f` accepts.
fn wait_for(rx: &mut Lines, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    rx.next_where(timeout, f)
        .unwrap_or_else(|e| panic!("no {what} from oomlab trace within {timeout:?}: {e}"))
}

/// The next `oom_episode` of the trace with `pid` among its victims, within 15 s.
fn episode_of(rx: &mut Lines, what: &str, pid: i64) -> Value {
    wait_for(rx, what, Duration::from_secs(15), |v| {
        v["type"] == "oom_episode"
            && v["victims"]
                .as_array()
                .is_some_and(|vs| vs.iter().any(|x| x["pid"].as_i64() == Some(pid)))
    })
}

/// `oomlab trace --scoreboard` of the cgroup `path` lists exactly `ours`, `fav` (adj 500) first
/// with the kernel's own oom_score.
fn check_scoreboard(path: &str, ours: [i64; 3], fav: i64) {
    let out = common::oomlab()
        .args([
            "trace",
            "--scoreboard",
            "--output",
            "json",
            "--cgroup",
            path,
        ])
        .output()
        .expect("run oomlab trace --scoreboard");
    assert!(out.status.success(), "scoreboard failed: {out:?}");
    let board: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(board["type"], "scoreboard");
    let procs = board["processes"].as_array().expect("processes");
    let listed: Vec<i64> = procs
        .iter()
        .map(|p| p["pid"].as_i64().expect("pid"))
        .collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let mut expected = ours.to_vec();
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "scoreboard lists exactly the cgroup's processes"
    );
    assert_eq!(listed[0], fav, "highest oom_score first: {board}");
    assert_eq!(procs[0]["oom_score_adj"], 500);
    // Its oom_score is the kernel's own, read back from /proc.
    let kernel_score: i64 = std::fs::read_to_string(format!("/proc/{fav}/oom_score"))
        .expect("oom_score")
        .trim()
        .parse()
        .expect("number");
    let shown = procs[0]["oom_score"].as_i64().expect("oom_score");
    assert!(
        (shown - kernel_score).abs() <= 5,
        "scoreboard {shown} vs /proc {kernel_score}"
    );
}

/// The `kills - 1` kills after the first: each hit one of `others` (the test's processes) and
/// has an episode of its own. Returns their `/dev/kmsg` lines.
fn later_kills_are_reported(
    kmsg: &mut Kmsg,
    rx: &mut Lines,
    kills: u64,
    others: [i64; 3],
) -> Vec<String> {
    let later = kmsg.collect(
        "Killed process ",
        (kills - 1) as usize,
        Duration::from_secs(5),
    );
    assert_eq!(
        later.len() as u64,
        kills - 1,
        "oom_kill counter moved by {kills}, /dev/kmsg has {} later kill(s): {later:#?}",
        later.len()
    );
    for line in &later {
        let victim = i64::from(killed_pid(line).unwrap_or_else(|| panic!("no pid in {line:?}")));
        assert!(
            others.contains(&victim),
            "a later kill hit {victim}, which is not one of the test's processes: {line}"
        );
        episode_of(rx, "oom_episode for the later kill", victim);
    }
    later
}

/// The kernel's first kill after the pusher started (from `kmsg`) is `fav`, and `episode`
/// names it as its one victim, seen in the log and by mark_victim.
fn check_first_kill(kmsg: &mut Kmsg, episode: &Value, fav: i64) {
    let kernel_line = kmsg
        .collect("Killed process ", 1, Duration::from_secs(5))
        .pop()
        .unwrap_or_else(|| panic!("/dev/kmsg has no 'Killed process' line; episode: {episode:#}"));
    assert!(
        kernel_line.contains(&format!("Killed process {fav} ")),
        "the kernel's first victim is not the adj-500 app {fav}: {kernel_line}"
    );
    assert!(kernel_line.contains("oom_score_adj:500"), "{kernel_line}");

    let victims = episode["victims"].as_array().expect("victims");
    assert_eq!(victims.len(), 1, "one victim: {episode:#}");
    assert_eq!(victims[0]["pid"].as_i64(), Some(fav), "{episode:#}");
    assert_eq!(victims[0]["selected"], true);
    assert_eq!(victims[0]["logged"], true);
    assert_eq!(
        victims[0]["traced"], true,
        "mark_victim matched the report: {episode:#}"
    );
}

/// The episode's candidate table agrees with the kernel: `fav` chosen and ranked first among
/// `ours` and the pusher, though `large` holds more, with the kernel's badness.
fn check_selection(episode: &Value, ours: [i64; 3], fav: i64, large: i64) {
    assert_eq!(episode["constraint"], "CONSTRAINT_MEMCG");
    assert_eq!(episode["domain"]["scope"], "memcg");

    let sel = &episode["selection"];
    assert_eq!(sel["totalpages"], 8192, "32 MiB limit, no swap: {sel:#}");
    assert_eq!(sel["kernel_pid"].as_i64(), Some(fav));
    assert_eq!(sel["predicted_pid"].as_i64(), Some(fav), "{sel:#}");
    assert!(sel["disagreement"].is_null(), "{sel:#}");
    let cands = sel["candidates"].as_array().expect("candidates");
    assert_eq!(cands[0]["pid"].as_i64(), Some(fav));
    assert_eq!(cands[0]["chosen"], true);
    assert_eq!(cands[0]["rank"], 1);
    let table: Vec<i64> = cands
        .iter()
        .map(|c| c["pid"].as_i64().expect("pid"))
        .collect();
    for p in ours {
        assert!(table.contains(&p), "candidate table lacks {p}: {table:?}");
    }
    assert_eq!(table.len(), 4, "our three plus the pusher: {table:?}");
    // The scenario is meaningful only if the victim was not simply the largest.
    let rss = |p: i64| {
        cands
            .iter()
            .find(|c| c["pid"].as_i64() == Some(p))
            .and_then(|c| c["rss_pages"].as_i64())
            .expect("rss")
    };
    assert!(rss(large) > rss(fav), "{sel:#}");
    // Badness by hand from the table, as the kernel computes it.
    let c0 = &cands[0];
    let by_hand = c0["rss_pages"].as_i64().expect("rss")
        + c0["swapents"].as_i64().expect("swap")
        + c0["pgtables_bytes"].as_i64().expect("pgtables") / 4096
        + 500 * (8192 / 1000);
    assert_eq!(c0["points"].as_i64(), Some(by_hand));
}

#[test]
fn episode_names_the_kernels_victim_and_ranks_it_first() {
    if !common::need_root("episode_names_the_kernels_victim_and_ranks_it_first") {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "victims", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();

    let (_trace, mut rx) = trace(&path);
    // The kernel prints its full OOM report at most 10 times per 5 s node-wide, and the tests
    // before this one (a 60-kill storm) use that up: let the window pass, so the first attempt
    // gets its table. A retry in the same cgroup has been seen to cost a second kill.
    std::thread::sleep(Duration::from_secs(6));
    const ATTEMPTS: usize = 4;
    for attempt in 1..=ATTEMPTS {
        // 10 MiB with adj 500 outscores 12 MiB with adj 0 by ~3600 pages (500 × 8192/1000 − 512)
        // — a margin no binary/library rss noise can close. Negative adj needs CAP_SYS_RESOURCE,
        // which the test machines' root lacks, so the "protected" one is simply adj 0. The three
        // hold 24 MiB plus ~1.2 MiB each of their own, which fits 32 MiB; the 8 MiB pusher
        // overflows it. Once the victim is gone 22 MiB (+ overheads) remain: the ~6 MiB of headroom
        // is what keeps the pusher from needing a second kill while the victim's pages are still
        // being uncharged (with 4 + 10 + 10 MiB held, usage 30.6 of 32 MiB, that race cost a
        // second kill in 2 of 5 runs on 6.18).
        let small = app(&path, "2MiB", 0, "60s");
        let favoured = app(&path, "10MiB", 500, "60s");
        let large = app(&path, "12MiB", 0, "60s");
        let ours = [pid(&small), pid(&favoured), pid(&large)];
        let fav = pid(&favoured);

        // The scoreboard sees the three, the adj-500 one first.
        check_scoreboard(&path, ours, fav);

        let kills_before = cg.oom_kills().expect("oom_kill counter");
        let mut kmsg = Kmsg::open_at_end();

        let mut pusher = common::app(&path, "8MiB")
            .args(["--duration", "1s"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the pushing oomlab app");
        let pusher_pid = i64::from(pusher.id());
        let pushed = pusher.wait().expect("wait for the pusher");
        assert!(
            pushed.success(),
            "the pusher should survive (adj 500 outranks it): {pushed:?}"
        );

        let episode = episode_of(&mut rx, "oom_episode for our cgroup", fav);
        // The first kill after the pusher started is the kernel's pick; it must be the adj-500 app.
        check_first_kill(&mut kmsg, &episode, fav);
        let mut favoured = favoured;
        let status = favoured.0.wait().expect("wait for the victim");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "the adj-500 app was OOM-killed"
        );
        // The pusher has exited, so nothing allocates in the cgroup any more: the counter is final.
        let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
        assert!(kills >= 1, "the cgroup's oom_kill counter did not move");
        // One kill is what the sizes aim for, but the kernel can kill again: the pusher's next
        // charge fails while the victim's pages are still being uncharged (seen in ~2 of 10 runs
        // on 6.18 with 6 MiB of headroom, ~5 ms after the first kill, and on the 6.12 guest).
        // Such a kill is legitimate kernel behaviour, so instead of a count the test demands that
        // oomlab reports every one of them, each with the victim /dev/kmsg names.
        if kills > 1 {
            let others = [pid(&small), pid(&large), pusher_pid];
            let later = later_kills_are_reported(&mut kmsg, &mut rx, kills, others);
            eprintln!(
                "note: attempt {attempt}: {kills} OOM kills, each reported; later: {later:#?}"
            );
        }
        if episode["selection"].is_null() {
            // The report (header, table, oom-kill: line) is ratelimited node-wide, 10 per 5 s:
            // other OOMs on this node may have used it up. Only `Killed process` was logged.
            eprintln!("attempt {attempt}: the kernel ratelimited its OOM report; retrying in 6 s");
            drop((small, large));
            std::thread::sleep(Duration::from_secs(6));
            continue;
        }
        check_selection(&episode, ours, fav, pid(&large));

        drop((small, large));
        drop(scratch);
        assert!(!cg.exists(), "scratch cgroup removed");
        return;
    }
    panic!("the kernel ratelimited its OOM report in all {ATTEMPTS} attempts");
}

/// Back-to-back OOMs: the kernel ratelimits its report (10 per 5 s, node-wide) but always logs
/// `Killed process`; every kill must still be exactly one episode, with one victim seen both in
/// the log and by `mark_victim`, and every episode that has a table must agree with the kernel.
#[test]
fn every_kill_of_a_storm_is_one_episode() {
    if !common::need_root("every_kill_of_a_storm_is_one_episode") {
        return;
    }
    const KILLS: usize = 20;
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "victims-storm", Some(32 << 20));
    let cg = scratch.cgroup().clone();
    let path = cg.path();
    let kills_before = cg.oom_kills().expect("oom_kill counter");
    let (trace, mut rx) = trace(&path);
    let mut pids = Vec::new();
    for _ in 0..KILLS {
        let child = common::app(&path, "48MiB")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn oomlab app");
        let mut child = Reap(child);
        pids.push(pid(&child));
        let status = child.0.wait().expect("wait for app");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "48 MiB in 32 MiB must be OOM-killed"
        );
    }
    let kills = cg.oom_kills().expect("oom_kill counter") - kills_before;
    assert_eq!(
        kills, KILLS as u64,
        "the kernel's counter: one kill per app"
    );
    // Wait until the tracer has delivered every mark_victim (under TCG the ring buffer can lag
    // the kernel log), so ending the trace does not cut an episode off from its event.
    let mut episodes = Vec::new();
    let mut victim_lines = 0;
    while victim_lines < KILLS {
        let v = wait_for(&mut rx, "oom_victim line", Duration::from_secs(60), |v| {
            v["type"] == "oom_episode" || v["type"] == "oom_victim"
        });
        if v["type"] == "oom_victim" {
            victim_lines += 1;
        } else {
            episodes.push(v);
        }
    }
    // SIGTERM ends the trace cleanly, at once: the last victim's `Killed process` line may not
    // have reached the trace's /dev/kmsg reader yet, so this checks that oomlab drains the ring
    // buffers and /dev/kmsg before it flushes the open episodes and prints the final `lost` line.
    // SAFETY: kill(2) on the trace process this test started.
    assert_eq!(unsafe { libc::kill(trace.0.id() as i32, libc::SIGTERM) }, 0);
    loop {
        let v = wait_for(&mut rx, "end of trace", Duration::from_secs(20), |v| {
            v["type"] == "oom_episode" || v["type"] == "lost"
        });
        if v["type"] == "lost" {
            assert_eq!(v["lost"], 0, "events lost: {v}");
            break;
        }
        episodes.push(v);
    }
    assert_eq!(
        episodes.len(),
        KILLS,
        "one episode per kill: {:#?}",
        episodes.iter().map(|e| &e["victims"]).collect::<Vec<_>>()
    );
    let mut seen = Vec::new();
    let mut with_table = 0;
    for e in &episodes {
        let victims = e["victims"].as_array().expect("victims");
        assert_eq!(victims.len(), 1, "{e:#}");
        let v = &victims[0];
        assert!(
            v["logged"] == true && v["traced"] == true && v["selected"] == true,
            "{e:#}"
        );
        seen.push(v["pid"].as_i64().expect("pid"));
        if !e["selection"].is_null() {
            with_table += 1;
            assert_eq!(
                e["selection"]["predicted_pid"], e["selection"]["kernel_pid"],
                "{e:#}"
            );
        }
    }
    seen.sort_unstable();
    pids.sort_unstable();
    assert_eq!(
        seen, pids,
        "the episodes' victims are the apps this test ran"
    );
    eprintln!(
        "{with_table} of {KILLS} episodes had the kernel's candidate table (the rest ratelimited)"
    );
    drop(trace);
    drop(scratch);
    assert!(!cg.exists(), "scratch cgroup removed");
}
