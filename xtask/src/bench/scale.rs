//! `cargo xtask bench scale` (issue #16, item 4): oomlab at a real node's size.
//!
//! (a) `oomlab serve` beside 5,000 live memory cgroups with 2,000 processes in them: RSS, and
//!     the latency of 200 `/metrics` scrapes (p50/p99), beside `curl`-free plain HTTP/1.1.
//! (b) 1,000 cgroups made, entered, left and removed per minute for OOMLAB_SCALE_MINUTES
//!     (default 10): RSS each minute (target ≤ 32 MiB and flat ±5 %), scrape p99 each minute
//!     (target ≤ 50 ms), and whether `/metrics` still names any removed cgroup.
//! (c) `oomlab trace --cgroup` of a subtree holding 3,000 processes: time to `ready` (median of
//!     five; target ≤ 0.1 s), beside the same trace of an empty cgroup.
//! Everything lives under `oomlab-test/scale-<pid>/` on the v1 memory controller and is removed
//! at the end; only processes this bench started are killed. Figures are printed, never asserted.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    median,
    traced::{kernel_release, percentile, rss_mib, Traced},
};
use crate::{run as sh, target_dir};

const MEMCG: &str = "/sys/fs/cgroup/memory";
const LIVE_CGROUPS: usize = 5_000;
const LIVE_PROCS: usize = 2_000;
const CHURN_PER_MINUTE: usize = 1_000;
const SUBTREE_PROCS: usize = 3_000;

/// The bench's own subtree and the processes it started; removed (and killed) on drop.
struct Tree {
    root: PathBuf,
    dirs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Tree {
    fn create() -> Result<Tree> {
        if !Path::new(MEMCG).join("memory.limit_in_bytes").exists() {
            bail!("bench scale needs the cgroup v1 memory controller at {MEMCG}");
        }
        let root = Path::new(MEMCG)
            .join("oomlab-test")
            .join(format!("scale-{}", std::process::id()));
        fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
        Ok(Tree {
            root,
            dirs: Vec::new(),
            children: Vec::new(),
        })
    }

    fn mkdir(&mut self, rel: &str) -> Result<PathBuf> {
        let dir = self.root.join(rel);
        fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        self.dirs.push(dir.clone());
        Ok(dir)
    }

    /// A `sleep` that moved itself into `dir` before exec.
    fn park(&mut self, dir: &Path) -> Result<()> {
        let child = park_in(dir)?;
        self.children.push(child);
        Ok(())
    }

    fn rel(&self, dir: &Path) -> String {
        format!("/{}", dir.strip_prefix(MEMCG).unwrap_or(dir).display())
    }
}

fn park_in(dir: &Path) -> Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec sleep 3600",
            dir.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .context("starting a parked sleep")
}

impl Drop for Tree {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
        if fs::remove_dir(&self.root).is_err() {
            eprintln!("bench scale: could not remove {}", self.root.display());
        }
    }
}

/// One `GET /metrics`: (milliseconds, body).
fn scrape(port: u16) -> Result<(f64, String)> {
    let t = Instant::now();
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok((t.elapsed().as_secs_f64() * 1e3, out))
}

fn scrape_p99(port: u16, n: usize) -> Result<(f64, f64, usize)> {
    let mut ms = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let (t, body) = scrape(port)?;
        ms.push(t);
        size = body.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 50.0), percentile(&ms, 99.0), size))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_serve(bin: &Path, port: u16) -> Result<Serve> {
    let serve = Serve(
        Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting oomlab serve")?,
    );
    let start = Instant::now();
    while scrape(port).is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("oomlab serve did not answer within 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(serve)
}

pub(super) fn run() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench scale needs root (eBPF, cgroups)");
    }
    let minutes: u64 = std::env::var("OOMLAB_SCALE_MINUTES")
        .ok()
        .map(|v| {
            v.parse()
                .context("OOMLAB_SCALE_MINUTES must be a whole number")
        })
        .transpose()?
        .unwrap_or(10);
    sh("cargo", &["build", "--release", "-p", "stress-user"])?;
    let bin = target_dir().join("release").join("oomlab");
    let mut tree = Tree::create()?;
    let mut report = Vec::new();

    eprintln!("bench scale: {LIVE_CGROUPS} cgroups, {LIVE_PROCS} processes");
    let t = Instant::now();
    let mut live = Vec::with_capacity(LIVE_CGROUPS);
    for i in 0..LIVE_CGROUPS {
        // Two levels, as pods hold containers.
        if i % 100 == 0 {
            tree.mkdir(&format!("pod{}", i / 100))?;
        }
        live.push(tree.mkdir(&format!("pod{}/c{i}", i / 100))?);
    }
    for dir in live.iter().take(LIVE_PROCS) {
        tree.park(dir)?;
    }
    report.push(format!(
        "setup: {LIVE_CGROUPS} cgroups and {LIVE_PROCS} processes in {:.1} s",
        t.elapsed().as_secs_f64()
    ));

    let port = free_port()?;
    let serve = start_serve(&bin, port)?;
    thread::sleep(Duration::from_secs(5));
    let (p50, p99, size) = scrape_p99(port, 200)?;
    let rss0 = rss_mib(serve.0.id());
    report.push(format!(
        "(a) serve beside {LIVE_CGROUPS} live cgroups: RSS {rss0:.1} MiB (target ≤ 32), /metrics p50 {p50:.1} ms, p99 {p99:.1} ms over 200 scrapes (target ≤ 50), {size} bytes"
    ));

    let mut rss = vec![rss0];
    let mut worst_p99: f64 = p99;
    let mut churned = 0usize;
    for minute in 0..minutes {
        let started = Instant::now();
        for k in 0..CHURN_PER_MINUTE {
            let dir = tree.root.join(format!("churn-{minute}-{k}"));
            fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            let mut child = park_in(&dir)?;
            // Entered: wait until the sleep is in the cgroup, then leave by dying.
            let deadline = Instant::now() + Duration::from_secs(2);
            while fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .trim()
                .is_empty()
                && Instant::now() < deadline
            {
                thread::sleep(Duration::from_millis(1));
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut removed = false;
            for _ in 0..100 {
                if fs::remove_dir(&dir).is_ok() {
                    removed = true;
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            if !removed {
                bail!("could not remove {}", dir.display());
            }
            churned += 1;
            // Paced over the minute.
            let due = Duration::from_secs(60) * (k as u32 + 1) / CHURN_PER_MINUTE as u32;
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                thread::sleep(wait);
            }
        }
        let (_, p99, _) = scrape_p99(port, 50)?;
        worst_p99 = worst_p99.max(p99);
        let r = rss_mib(serve.0.id());
        rss.push(r);
        eprintln!(
            "bench scale: minute {}: RSS {r:.1} MiB, scrape p99 {p99:.1} ms",
            minute + 1
        );
    }
    let (_, body) = scrape(port)?;
    let stale = body.lines().filter(|l| l.contains("churn-")).count();
    if minutes > 0 {
        let first = rss[1];
        let last = rss[rss.len() - 1];
        report.push(format!(
            "(b) {churned} cgroups churned over {minutes} min: RSS {first:.1} → {last:.1} MiB after the first minute ({:+.1} %, target ±5 %), max {:.1} MiB; worst scrape p99 {worst_p99:.1} ms; /metrics lines naming a removed cgroup: {stale}",
            (last / first - 1.0) * 100.0,
            rss.iter().copied().fold(f64::MIN, f64::max)
        ));
    }
    drop(serve);

    eprintln!("bench scale: a subtree with {SUBTREE_PROCS} processes");
    let big = tree.mkdir("big")?;
    for i in 0..SUBTREE_PROCS {
        if i % 100 == 0 {
            tree.mkdir(&format!("big/p{}", i / 100))?;
        }
        let dir = big.join(format!("p{}", i / 100));
        tree.park(&dir)?;
    }
    let empty = tree.mkdir("empty")?;
    let (mut full, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (dir, out) in [(&big, &mut full), (&empty, &mut bare)] {
            let t = Instant::now();
            let tr = Traced::start(&format!(
                "{} trace --no-hooks --cgroup {}",
                bin.display(),
                tree.rel(dir)
            ))?;
            out.push(tr.until("ready", t)?);
            tr.stop();
        }
    }
    let (f, b) = (median(&mut full), median(&mut bare));
    report.push(format!(
        "(c) trace --cgroup of a subtree with {SUBTREE_PROCS} processes: ready in {f:.3} s (median of 5; target ≤ 0.1 s); of an empty cgroup {b:.3} s"
    ));
    drop(tree);

    println!("\nbench scale summary ({}):", kernel_release());
    for l in &report {
        println!("  {l}");
    }
    Ok(())
}
