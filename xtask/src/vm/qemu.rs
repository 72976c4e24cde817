//! Booting one guest in QEMU (TCG, one vCPU) and following its serial console: the `@@OOMLAB-VM`
//! marker lines /init prints, each test's output between them, and the deadlines that end a
//! silent guest. What the console said becomes the run's results and doctor output.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::results::{classify, write_results_json, Outcome, RunSummary, TestResult, VmRun};

/// Every line the guest means for the host starts with this.
const MARK: &str = "@@OOMLAB-VM ";
/// 1 GiB, one vCPU: the recipe checked on these machines; emulated memory is slow, so the tests
/// keep their VM sizes to tens of MiB.
const GUEST_MEM_MIB: u32 = 1024;
/// The guest's /tmp and /var/tmp (sparse on the host).
const SCRATCH_DISK_BYTES: u64 = 1 << 30;
/// Time for the kernel to boot and /init to reach the first test.
const BOOT_GRACE: Duration = Duration::from_secs(120);

/// One kernel's guest: what it boots, what it runs, where its artefacts go.
pub(super) struct Guest<'a> {
    pub(super) series: &'a str,
    pub(super) image: &'a Path,
    pub(super) initrd: &'a Path,
    /// target/vm/<series>: console.log, doctor.json, results.json, the scratch disk.
    pub(super) dir: PathBuf,
    /// (binary, test) of every planned test, so that one the guest never reached still counts.
    pub(super) expected: &'a [(String, String)],
    pub(super) test_timeout: u64,
    /// More kernel arguments (`psi=0 oomlab.only=TEST` for the PSI-off boot); empty for the
    /// matrix's own boot.
    pub(super) extra_cmdline: &'a str,
}

impl Guest<'_> {
    /// How the host names this boot: the series, and its extra arguments when it has any.
    pub(super) fn label(&self) -> String {
        match self.extra_cmdline.split_whitespace().next() {
            Some(first) => format!("{} {first}", self.series),
            None => self.series.to_string(),
        }
    }
}

impl Guest<'_> {
    /// Boots the guest and runs the plan in it.
    pub(super) fn boot(&self) -> Result<VmRun> {
        let run = self.boot_once()?;
        if !run.kernel_release.is_empty() {
            return Ok(run);
        }
        // Under a loaded host TCG can trip the kernel's early timer checks; a guest that never
        // reached /init is retried once, with the first console kept.
        eprintln!(
            "xtask vm-test: [{}] the guest never reached /init; booting it again",
            self.series
        );
        let _ = fs::rename(
            self.dir.join("console.log"),
            self.dir.join("console-first-boot.log"),
        );
        self.boot_once()
    }

    fn boot_once(&self) -> Result<VmRun> {
        let out = &self.dir;
        fs::create_dir_all(out)?;
        let tag = format!("[{}]", self.label());
        let disk = scratch_disk(out)?;
        eprintln!("xtask vm-test: {tag} booting {}", self.image.display());
        let mut child = self.spawn(&disk)?;
        let rx = console_lines(&mut child)?;
        let mut log = fs::File::create(out.join("console.log"))?;
        let mut console = Console::new(tag, self.test_timeout);
        let killed = console.follow(&rx, &mut child, &mut log)?;
        let status = child.wait()?;
        let ended = console.settle(killed, status, self.expected);
        console.save(out, self.series, &ended)
    }

    fn spawn(&self, disk: &Path) -> Result<Child> {
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-cpu",
                "max",
                "-smp",
                "1",
                "-nographic",
                "-no-reboot",
            ])
            .args(["-m", &GUEST_MEM_MIB.to_string()])
            .arg("-kernel")
            .arg(self.image)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=scratch,format=raw",
                disk.display()
            ))
            .args(["-device", "nvme,serial=oomlab-scratch,drive=scratch"])
            .args([
                "-append",
                // no_timer_check: the IO-APIC timer check fails on TCG when the host is busy.
                // log_buf_len: an OOM storm test compares pids with /dev/kmsg; the default buffer
                // wraps before it is read.
                &format!(
                    "console=ttyS0 panic=-1 quiet loglevel=3 no_timer_check log_buf_len=8M oomlab.kernel={} {}",
                    self.series, self.extra_cmdline
                ),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")
    }
}

/// A fresh, sparse ext4 image per guest for /tmp and /var/tmp (each guest gets its own: they run
/// side by side).
fn scratch_disk(out: &Path) -> Result<PathBuf> {
    let disk = out.join("scratch-disk.img");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)?.set_len(SCRATCH_DISK_BYTES)?;
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "oomlab-scratch"])
        .arg(&disk)
        .status()
        .context("starting mkfs.ext4 (apt-get install e2fsprogs)")?;
    if !status.success() {
        bail!("mkfs.ext4 {} failed: {status}", disk.display());
    }
    Ok(disk)
}

/// The guest's serial console and QEMU's own stderr, line by line on one channel.
fn console_lines(child: &mut Child) -> Result<mpsc::Receiver<String>> {
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    thread::spawn(move || forward_lines(stdout, &tx));
    thread::spawn(move || {
        // QEMU's own complaints, marked so they are not mistaken for guest output.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("qemu: {line}"));
        }
    });
    Ok(rx)
}

/// Serial output arrives with `\r\n` and, under a panic, possibly invalid UTF-8.
fn forward_lines(stdout: impl Read, tx: &mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if tx
                    .send(line.trim_end_matches(['\r', '\n']).to_string())
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Marker lines from the guest; anything else on the console is output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker<'a> {
    Boot(&'a str),
    SetupError(&'a str),
    DoctorBegin,
    DoctorEnd,
    TestBegin(&'a str, &'a str),
    TestLeftover(&'a str),
    TestEnd(&'a str, &'a str, i32),
    Done,
    Other,
}

fn parse_marker(line: &str) -> Option<Marker<'_>> {
    let rest = &line[line.find(MARK)? + MARK.len()..];
    let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut parts = args.split(' ');
    Some(match word {
        "boot" => Marker::Boot(args),
        "setup-error" => Marker::SetupError(args),
        "doctor-begin" => Marker::DoctorBegin,
        "doctor-end" => Marker::DoctorEnd,
        "test-begin" => Marker::TestBegin(parts.next()?, parts.next()?),
        "test-leftover" => Marker::TestLeftover(args),
        "test-end" => Marker::TestEnd(parts.next()?, parts.next()?, parts.next()?.parse().ok()?),
        "done" => Marker::Done,
        _ => Marker::Other,
    })
}

/// A test the guest has begun and not yet ended.
struct Running {
    group: String,
    name: String,
    began: Instant,
    output: String,
}

/// What the console has said so far. Each step of the plan moves the deadline on, so only a
/// guest that goes silent for longer than one test may take is killed.
struct Console {
    tag: String,
    test_timeout: u64,
    per_test: Duration,
    started: Instant,
    deadline: Instant,
    kernel_release: String,
    /// The doctor's lines while between doctor-begin and doctor-end.
    doctor: Option<Vec<String>>,
    doctor_json: String,
    current: Option<Running>,
    results: Vec<TestResult>,
    setup_errors: Vec<String>,
    done: bool,
    panic_line: Option<String>,
}

impl Console {
    fn new(tag: String, test_timeout: u64) -> Self {
        let started = Instant::now();
        Console {
            tag,
            test_timeout,
            per_test: Duration::from_secs(test_timeout) + Duration::from_secs(30),
            started,
            deadline: started + BOOT_GRACE,
            kernel_release: String::new(),
            doctor: None,
            doctor_json: String::new(),
            current: None,
            results: Vec::new(),
            setup_errors: Vec::new(),
            done: false,
            panic_line: None,
        }
    }

    /// Reads the console into `log` until QEMU exits, or until the guest is silent past its
    /// deadline: then QEMU is killed and the reason returned.
    fn follow(
        &mut self,
        rx: &mpsc::Receiver<String>,
        child: &mut Child,
        log: &mut fs::File,
    ) -> Result<Option<String>> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                let what = self
                    .current
                    .as_ref()
                    .map(|r| format!("during {}::{}", r.group, r.name))
                    .unwrap_or_else(|| "before the first test".into());
                let _ = child.kill();
                return Ok(Some(format!(
                    "the guest was silent past its deadline {what}; killed"
                )));
            }
            let line = match rx.recv_timeout(self.deadline - now) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
            };
            writeln!(log, "{line}")?;
            if let Some(at) = line.find("Kernel panic") {
                self.panic_line = Some(line[at..].trim().to_string());
            }
            match parse_marker(&line) {
                None => self.output(line),
                Some(marker) => self.marker(marker),
            }
        }
    }

    fn output(&mut self, line: String) {
        if let Some(d) = self.doctor.as_mut() {
            d.push(line);
        } else if let Some(r) = self.current.as_mut() {
            r.output.push_str(&line);
            r.output.push('\n');
        }
    }

    fn marker(&mut self, marker: Marker<'_>) {
        let tag = &self.tag;
        match marker {
            Marker::Boot(rest) => {
                self.kernel_release = rest.split(' ').next().unwrap_or_default().to_string();
                eprintln!(
                    "xtask vm-test: {tag} booted {rest} in {:.1} s",
                    self.started.elapsed().as_secs_f64()
                );
                self.deadline = Instant::now() + self.per_test;
            }
            Marker::SetupError(e) => {
                eprintln!("xtask vm-test: {tag} guest setup error: {e}");
                self.setup_errors.push(e.to_string());
            }
            Marker::DoctorBegin => self.doctor = Some(Vec::new()),
            Marker::DoctorEnd => {
                self.doctor_json = self.doctor.take().unwrap_or_default().join("\n");
                self.deadline = Instant::now() + self.per_test;
            }
            Marker::TestBegin(g, n) => {
                eprintln!("xtask vm-test: {tag} {g}::{n} …");
                self.current = Some(Running {
                    group: g.into(),
                    name: n.into(),
                    began: Instant::now(),
                    output: String::new(),
                });
                self.deadline = Instant::now() + self.per_test;
            }
            Marker::TestLeftover(rest) => {
                if let Some(r) = self.current.as_mut() {
                    r.output
                        .push_str(&format!("[vm-test] cgroups left behind: {rest}\n"));
                }
            }
            Marker::TestEnd(g, n, rc) => {
                self.end_test(g, n, rc);
                self.deadline = Instant::now() + self.per_test;
            }
            Marker::Done => {
                self.done = true;
                self.deadline = Instant::now() + Duration::from_secs(30);
            }
            Marker::Other => {}
        }
    }

    fn end_test(&mut self, g: &str, n: &str, rc: i32) {
        let Running { began, output, .. } = self
            .current
            .take()
            .filter(|r| r.group == g && r.name == n)
            .unwrap_or_else(|| Running {
                group: g.into(),
                name: n.into(),
                began: Instant::now(),
                output: String::new(),
            });
        let mut outcome = classify(rc, &output, self.test_timeout);
        if outcome == Outcome::Passed && output.contains("[vm-test] cgroups left behind") {
            outcome = Outcome::Failed("passed but left cgroups behind".into());
        }
        let secs = began.elapsed().as_secs_f64();
        eprintln!(
            "xtask vm-test: {} {g}::{n} {outcome} ({secs:.1} s)",
            self.tag
        );
        self.results.push(TestResult {
            group: g.into(),
            name: n.into(),
            outcome,
            secs,
            output,
        });
    }

    /// Once QEMU has exited: a test that never reported is a failure with the reason the run
    /// ended, and so are the guest's setup errors. Returns how the run ended.
    fn settle(
        &mut self,
        mut killed: Option<String>,
        status: ExitStatus,
        expected: &[(String, String)],
    ) -> String {
        if !self.done && killed.is_none() {
            killed = Some(match self.panic_line.take() {
                Some(p) => format!("the guest kernel panicked: {p}"),
                None => format!("the guest stopped before finishing the plan (qemu {status})"),
            });
        }
        let reason = killed
            .clone()
            .unwrap_or_else(|| "the guest never ran it".into());
        if let Some(r) = self.current.take() {
            self.results.push(TestResult {
                group: r.group,
                name: r.name,
                outcome: Outcome::Failed(reason.clone()),
                secs: r.began.elapsed().as_secs_f64(),
                output: r.output,
            });
        }
        for (g, n) in expected {
            if !self.results.iter().any(|r| &r.group == g && &r.name == n) {
                self.results
                    .push(TestResult::unreported(g, n, reason.clone()));
            }
        }
        if !self.setup_errors.is_empty() {
            let errors = self.setup_errors.join("; ");
            self.results
                .push(TestResult::unreported("vm", "guest_setup", errors));
        }
        killed.unwrap_or_else(|| "guest finished the plan".into())
    }

    /// Writes doctor.json (when the doctor printed JSON) and results.json into `out`.
    fn save(self, out: &Path, series: &str, ended: &str) -> Result<VmRun> {
        let doctor_json = &self.doctor_json;
        if !doctor_json.is_empty() {
            match serde_json::from_str::<Value>(doctor_json) {
                Ok(v) => fs::write(out.join("doctor.json"), serde_json::to_string_pretty(&v)?)?,
                Err(e) => eprintln!(
                    "xtask vm-test: {} oomlab doctor printed no JSON ({e}): {doctor_json}",
                    self.tag
                ),
            }
        }
        let summary = RunSummary {
            series,
            guest_memory_mib: GUEST_MEM_MIB,
            seconds: self.started.elapsed().as_secs_f64(),
            ended,
        };
        let run = VmRun {
            kernel_release: self.kernel_release,
            results: self.results,
        };
        write_results_json(out, &summary, &run)?;
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        assert_eq!(
            parse_marker("@@OOMLAB-VM test-end e2e_mark_victim mark_victim_reports 0"),
            Some(Marker::TestEnd("e2e_mark_victim", "mark_victim_reports", 0))
        );
        assert_eq!(
            parse_marker("junk@@OOMLAB-VM test-begin g a::b"),
            Some(Marker::TestBegin("g", "a::b"))
        );
        assert_eq!(
            parse_marker("@@OOMLAB-VM boot 6.1.0-56-cloud-amd64 x"),
            Some(Marker::Boot("6.1.0-56-cloud-amd64 x"))
        );
        assert_eq!(parse_marker("test x ... ok"), None);
    }
}
