//! `oomlab explain` on kernel logs saved from real OOM kills, compared with what `oomlab trace`
//! reported live for the same kills; and its answers to bad input. Only the last test needs root.
//!
//! `tests/data/explain/6.18*/` were captured on the build host (6.18, cgroup v1) while `oomlab
//! trace --output json` ran (`trace.json`): `kmsg.txt` is `dd if=/dev/kmsg iflag=nonblock`,
//! `dmesg.txt` and `dmesg-T.txt` are `dmesg` and `dmesg -T`, cut to the same records. journald
//! does not run there, so the `journalctl -k` renderings (short, short-monotonic, short-iso,
//! json) and rsyslog's `kern.log` were written from `kmsg.txt` by `make-journal-formats.py`,
//! as those tools print kernel records. `tests/data/explain/{5.10,6.1,6.12}/` come from the VM
//! matrix (Debian's cloud kernels, cgroup v2): `two_live_kills_and_their_saved_log_agree` ran
//! there under `cargo xtask vm-test --test explain --save-captures`, which saved its `kmsg.txt`,
//! `trace.json` and `boot-epoch.txt` from the console; the guests have busybox, not util-linux,
//! so `make-journal-formats.py` also wrote their `dmesg` and `dmesg -T` renderings. The older
//! `/dev/kmsg` dumps in `tests/data/kmsg/` are read as saved logs too. Root tests kill apps here
//! and compare with the live tracer on every kernel, and read the live ring buffer (`oomlab
//! explain` with no argument).

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::{cgroup, lines::is_type, trace::TraceChild};
use serde_json::Value;

/// `tests/data/REL`, found without `..`: the VM matrix's guest has the workspace's
/// `tests/data` at its host path, but no `stress-user/` to step back out of.
fn data(rel: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("tests/data")
        .join(rel)
}

fn explain(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oomlab"))
        .arg("explain")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oomlab explain");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("oomlab explain")
}

/// `oomlab explain --output json` on a file: its `log` line and its episodes.
fn explain_json(path: &Path) -> (Value, Vec<Value>) {
    let out = explain(
        &["--output", "json", path.to_str().expect("utf-8 path")],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}: {stderr}", path.display());
    let mut lines = std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")));
    let log = lines.next().expect("a log line");
    assert_eq!(log["type"], "log");
    let eps: Vec<Value> = lines.collect();
    assert!(eps.iter().all(|e| e["type"] == "oom_episode"), "{eps:#?}");
    (log, eps)
}

/// What must agree between the live tracer and a saved log: the domain, the victims as the
/// kernel logged them, and the ranked candidate table.
fn essence(ep: &Value) -> Value {
    let victims: Vec<Value> = ep["victims"]
        .as_array()
        .expect("victims")
        .iter()
        .map(|v| {
            serde_json::json!({
                "pid": v["pid"], "comm": v["comm"], "oom_score_adj": v["oom_score_adj"],
                "anon_rss_kb": v["anon_rss_kb"], "file_rss_kb": v["file_rss_kb"],
                "selected": v["selected"], "logged": v["logged"],
            })
        })
        .collect();
    serde_json::json!({
        "domain": ep["domain"], "constraint": ep["constraint"],
        "trigger": { "pid": ep["trigger"]["pid"], "comm": ep["trigger"]["comm"],
                     "gfp_mask": ep["trigger"]["gfp_mask"] },
        "victims": victims, "kill_lines": ep["kill_lines"], "selection": ep["selection"],
        "kmsg": ep["kmsg"],
    })
}

fn live_episodes(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("trace.json")).expect("trace.json");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json line"))
        .filter(|v| v["type"] == "oom_episode")
        .collect()
}

/// Every saved rendering of a capture, with the format `explain` must detect.
const RENDERINGS: [(&str, &str); 8] = [
    ("kmsg.txt", "kmsg-dump"),
    ("dmesg.txt", "dmesg"),
    ("dmesg-T.txt", "dmesg-ctime"),
    ("journal-short.txt", "short"),
    ("journal-short-monotonic.txt", "short-monotonic"),
    ("journal-short-iso.txt", "short-iso"),
    ("journal.json", "json"),
    ("kern.log", "short"),
];

fn captures() -> Vec<PathBuf> {
    [
        "explain/5.10",
        "explain/6.1",
        "explain/6.12",
        "explain/6.18",
        "explain/6.18-hostile",
    ]
    .iter()
    .map(|d| data(d))
    .filter(|d| d.join("trace.json").exists())
    .collect()
}

#[test]
fn every_format_gives_the_live_tracers_victims_and_candidates() {
    let dirs = captures();
    assert!(!dirs.is_empty(), "no captures under tests/data/explain");
    for dir in dirs {
        let live: Vec<Value> = live_episodes(&dir).iter().map(essence).collect();
        assert!(live.len() >= 2, "{}: {live:#?}", dir.display());
        for (file, format) in RENDERINGS {
            let path = dir.join(file);
            let (log, eps) = explain_json(&path);
            assert_eq!(log["format"], format, "{}", path.display());
            let saved: Vec<Value> = eps.iter().map(essence).collect();
            assert_eq!(saved, live, "{}", path.display());
            for e in &eps {
                let v = e["verdict"].as_str().expect("verdict");
                assert!(v.contains("highest badness"), "{}: {v}", path.display());
            }
        }
    }
}

/// A kmsg dump written as `dmesg` prints it.
fn as_dmesg(kmsg: &str) -> String {
    kmsg.lines()
        .filter_map(|l| {
            let (head, msg) = l.split_once(';')?;
            let us: u64 = head.split(',').nth(2)?.parse().ok()?;
            Some(format!(
                "[{:5}.{:06}] {msg}\n",
                us / 1_000_000,
                us % 1_000_000
            ))
        })
        .collect()
}

#[test]
fn older_kernels_reports_as_saved_logs() {
    for (name, picks) in [
        ("6.1-debian-memcg.txt", vec![88]),
        ("6.12-debian-memcg.txt", vec![139]),
        ("6.12-debian-memcg-group.txt", vec![137]),
        ("6.12-debian-global.txt", vec![138]),
    ] {
        let path = data(&format!("kmsg/{name}"));
        let dump = std::fs::read_to_string(&path).expect("fixture");
        let (_, eps) = explain_json(&path);
        let dir = tempdir();
        let dmesg = dir.join(name);
        std::fs::write(&dmesg, as_dmesg(&dump)).expect("write");
        let (log, from_dmesg) = explain_json(&dmesg);
        assert_eq!(log["format"], "dmesg");
        for e in [&eps, &from_dmesg] {
            let got: Vec<i64> = e
                .iter()
                .filter_map(|e| e["selection"]["kernel_pid"].as_i64())
                .collect();
            assert_eq!(got, picks, "{name}: {e:#?}");
        }
        assert_eq!(
            eps.iter().map(essence).collect::<Vec<_>>(),
            from_dmesg.iter().map(essence).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("oomlab-explain-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = tempdir().join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn dmesg_capture() -> String {
    std::fs::read_to_string(data("explain/6.18/dmesg.txt")).expect("dmesg.txt")
}

#[test]
fn interleaved_lines_and_standard_input() {
    let mut text = String::new();
    for (i, l) in dmesg_capture().lines().enumerate() {
        text.push_str(l);
        text.push('\n');
        let ts = l.get(1..13).unwrap_or(" 5425.000000");
        // Other subsystems print between the report's lines, even inside the task table.
        text.push_str(&format!("[{ts}] usb 1-{i}: new high-speed USB device\n"));
        text.push_str(&format!("[{ts}] [drm] frame {i}\n"));
    }
    let out = explain(&["--output", "json", "-"], Some(text.as_bytes()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eps: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let live: Vec<Value> = live_episodes(&data("explain/6.18"))
        .iter()
        .map(essence)
        .collect();
    assert_eq!(eps.iter().map(essence).collect::<Vec<_>>(), live);
}

#[test]
fn truncated_and_rate_limited_reports() {
    let text = dmesg_capture();
    let lines: Vec<&str> = text.lines().collect();
    let second = lines
        .iter()
        .rposition(|l| l.contains("invoked oom-killer"))
        .expect("second report");
    let kill = lines
        .iter()
        .rposition(|l| l.contains("Killed process"))
        .expect("second kill");
    // The log ends before the second report's kill line.
    let cut = write_temp("cut.txt", lines[..kill].join("\n").as_bytes());
    let (_, eps) = explain_json(&cut);
    assert_eq!(eps.len(), 2, "{eps:#?}");
    assert_eq!(eps[1]["kmsg"], "truncated");
    assert!(eps[1]["verdict"]
        .as_str()
        .expect("verdict")
        .contains("truncated"));
    // Rate-limited: the kernel printed only the second kill line.
    let mut limited: Vec<&str> = lines[..second].to_vec();
    limited.push(lines[kill]);
    let path = write_temp("ratelimited.txt", limited.join("\n").as_bytes());
    let (_, eps) = explain_json(&path);
    assert_eq!(eps.len(), 2, "{eps:#?}");
    assert_eq!(eps[1]["victims"][0]["pid"], 29761, "{eps:#?}");
    assert_eq!(eps[1]["selection"], Value::Null);
    let v = eps[1]["verdict"].as_str().expect("verdict");
    assert!(v.starts_with("truncated (only the kill line"), "{v}");
    let human = explain(&[path.to_str().expect("path")], None);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("verdict: truncated"), "{human}");
}

#[test]
fn lines_user_space_wrote_are_not_believed() {
    // The first report as journald keeps a `/dev/kmsg` write by user space: facility 1.
    let json = std::fs::read_to_string(data("explain/6.18/journal.json")).expect("json");
    let forged = json.replace(r#""SYSLOG_FACILITY":"0""#, r#""SYSLOG_FACILITY":"1""#);
    let out = explain(&["-"], Some(forged.as_bytes()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // In a syslog file only the `kernel` tag is the kernel.
    let syslog = std::fs::read_to_string(data("explain/6.18/journal-short.txt")).expect("short");
    let forged = syslog.replace(" kernel: ", " evil[42]: ");
    let out = explain(&["-"], Some(forged.as_bytes()));
    assert_eq!(out.status.code(), Some(1));
    // Inside a report, a kill line for another pid than the summary's is not the report's.
    let text = dmesg_capture();
    let lines: Vec<&str> = text.lines().collect();
    let kill = lines
        .iter()
        .position(|l| l.contains("Killed process"))
        .expect("kill");
    let mut forged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    forged.insert(
        kill,
        "[ 5425.403600] Memory cgroup out of memory: Killed process 1 (init) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0".into(),
    );
    let path = write_temp("forged-kill.txt", forged.join("\n").as_bytes());
    let (_, eps) = explain_json(&path);
    let pids: Vec<&Value> = eps.iter().map(|e| &e["victims"][0]["pid"]).collect();
    assert!(pids.iter().all(|p| **p != 1), "{eps:#?}");
}

#[test]
fn bad_input() {
    let out = explain(&["/nonexistent/kern.log"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/kern.log"), "{err}");

    let quiet = write_temp(
        "quiet.txt",
        b"[    1.000000] Linux version 6.18\n[    1.100000] usb 1-1: hi\n",
    );
    let out = explain(&[quiet.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no OOM report in 2 lines"), "{err}");

    let mut nul = dmesg_capture().into_bytes();
    nul.truncate(1000);
    nul.extend_from_slice(b"\0\0\x7fELF");
    let path = write_temp("nul.bin", &nul);
    let out = explain(&[path.to_str().expect("path")], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("byte offset 1000"), "{err}");

    let mut junk = b"[    1.000000] ok\n".to_vec();
    junk.extend((0..4096u32).map(|i| u8::try_from(i * 7919 % 251).unwrap_or(0) | 0x80));
    let out = explain(&["-"], Some(&junk));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid UTF-8 at byte offset 18"), "{err}");
}

#[test]
fn the_live_ring_buffer_gives_the_traces_episode() {
    if !common::need_root("the_live_ring_buffer_gives_the_traces_episode") {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "explain", Some(32 << 20));
    let path = scratch.cgroup().path();
    let mut trace = TraceChild::start(&["--cgroup", &path, "--events", "oom"]);
    let status = common::app(&path, "96MiB")
        .args(["--comm", "explain-hog"])
        .stdout(Stdio::null())
        .status()
        .expect("run oomlab app");
    assert!(!status.success(), "the app must be OOM-killed: {status:?}");
    let live = trace
        .wait_for(std::time::Duration::from_secs(10), |v| {
            is_type(v, "oom_episode") && v["victims"][0]["comm"] == "explain-hog"
        })
        .expect("the trace's episode");
    let pid = live["victims"][0]["pid"].clone();
    trace.stop();
    let out = explain(&["--output", "json"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"));
    assert_eq!(
        lines.next().map(|l| l["format"].clone()),
        Some("kmsg-dump".into())
    );
    let saved = lines
        .find(|e| e["victims"][0]["pid"] == pid)
        .unwrap_or_else(|| panic!("no episode of {pid} in the ring buffer: {text}"));
    assert_eq!(essence(&saved), essence(&live));
}

/// The line prefix of a capture written to stderr in the VM matrix (or with
/// `OOMLAB_SAVE_CAPTURE=1`): `@@oomlab-capture FILE|LINE`. `cargo xtask vm-test
/// --save-captures` writes those lines to `tests/data/explain/<kernel>/FILE`.
const CAPTURE_MARK: &str = "@@oomlab-capture ";

/// Writes `text` to stderr past the test harness's capture (the VM's console), a line at a time.
fn print_capture(file: &str, text: &str) {
    let mut err = std::io::stderr().lock();
    for line in text.lines() {
        let _ = writeln!(err, "{CAPTURE_MARK}{file}|{line}");
    }
}

/// CLOCK_REALTIME − CLOCK_BOOTTIME in seconds: what turns a kmsg timestamp into wall time.
fn boot_epoch() -> f64 {
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    };
    now(libc::CLOCK_REALTIME) - now(libc::CLOCK_BOOTTIME)
}

/// Two real kills with `oomlab trace` running, then `oomlab explain` on the kernel's own
/// records of them, as `/dev/kmsg` gives them and as `dmesg` prints them: the same episodes —
/// victims, domain, constraint, candidate tables — on every kernel of the matrix. In the VMs the
/// capture goes to the console too, which is how `tests/data/explain/<kernel>/` is made.
#[test]
fn two_live_kills_and_their_saved_log_agree() {
    let test = "two_live_kills_and_their_saved_log_agree";
    if !common::need_root(test) {
        return;
    }
    let scratch = cgroup::scratch(&cgroup::hierarchy(), "explain-capture", Some(32 << 20));
    let path = scratch.cgroup().path();
    let mut kmsg = common::kmsg::Kmsg::open_at_end();
    let mut trace = TraceChild::start(&["--cgroup", &path, "--events", "oom,adj"]);
    // A bystander holds 4 MiB through both kills, so each candidate table has two rows.
    let mut bystander = common::guard::Reap(
        common::app(&path, "4MiB")
            .args(["--comm", "steady-cache"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the bystander"),
    );
    assert!(
        common::wait_until(std::time::Duration::from_secs(30), || {
            scratch.cgroup().usage().unwrap_or(0) >= 4 << 20
        }),
        "the bystander did not charge 4 MiB"
    );
    for (comm, adj) in [("leaky-cache", "0"), ("batch-job", "300")] {
        let status = common::app(&path, "96MiB")
            .args(["--comm", comm, "--oom-score-adj", adj])
            .stdout(Stdio::null())
            .status()
            .expect("run oomlab app");
        assert!(!status.success(), "{comm} must be OOM-killed: {status:?}");
        trace
            .wait_for(std::time::Duration::from_secs(10), |v| {
                is_type(v, "oom_episode") && v["victims"][0]["comm"] == comm
            })
            .unwrap_or_else(|| panic!("the trace's episode of {comm}"));
    }
    let _ = bystander.0.kill();
    let _ = bystander.0.wait();
    let lines = trace.stop();
    let live: Vec<Value> = lines
        .iter()
        .filter(|v| is_type(v, "oom_episode"))
        .map(essence)
        .collect();
    assert_eq!(live.len(), 2, "{lines:#?}");

    let records = kmsg.records();
    let dir = tempdir();
    let raw = dir.join("capture-kmsg.txt");
    std::fs::write(&raw, &records).expect("write the kmsg capture");
    let dmesg = dir.join("capture-dmesg.txt");
    std::fs::write(&dmesg, as_dmesg(&records)).expect("write the dmesg rendering");
    for (file, format) in [(&raw, "kmsg-dump"), (&dmesg, "dmesg")] {
        let (log, eps) = explain_json(file);
        assert_eq!(log["format"], format, "{}", file.display());
        let saved: Vec<Value> = eps
            .iter()
            .filter(|e| e["domain"]["memcg"] == path.as_str())
            .map(essence)
            .collect();
        assert_eq!(saved, live, "{format}: {records}");
    }

    if common::in_vm() || std::env::var_os("OOMLAB_SAVE_CAPTURE").is_some() {
        print_capture("kmsg.txt", &records);
        let trace_json: String = lines.iter().map(|v| format!("{v}\n")).collect();
        print_capture("trace.json", &trace_json);
        print_capture("boot-epoch.txt", &format!("{:.6}", boot_epoch()));
    }
}
