//! `cargo xtask bench serve`: the daemon's soak. `oomlab serve` runs for OOMLAB_SOAK_SECS
//! (default 600) under a steady load — an OOM kill every second in a scratch cgroup, a stream
//! of oom_score_adj writes, file-cache churn in a small cgroup (reclaim), a scrape of /metrics
//! every second, one /events reader and one /events client that never reads. Printed: RSS after
//! warm-up and at the end (target: growth < 5 %), kills counted vs the kernel's counter, events
//! lost, and how long SIGTERM takes to exit (target: < 1 s).

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::cgroup::BenchCgroup;
use crate::{run as sh, target_dir};

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn metric_sum(text: &str, family: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(needle))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

struct Daemon(Child);

impl Daemon {
    /// `oomlab serve` on `port`, once it answers /healthz; returns how long that took.
    fn start(oomlab: &Path, port: u16) -> Result<(Daemon, Duration)> {
        let daemon = Daemon(
            Command::new(oomlab)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .stdin(Stdio::null())
                .spawn()
                .context("starting oomlab serve")?,
        );
        let start = Instant::now();
        while get(port, "/healthz").is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!("oomlab serve did not answer within 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok((daemon, start.elapsed()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn run() -> Result<()> {
    let secs: u64 = std::env::var("OOMLAB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench serve needs root (eBPF, cgroups, OOM kills)");
    }
    sh(
        "cargo",
        &[
            "build",
            "--release",
            "--package",
            "stress-user",
            "--bin",
            "oomlab",
        ],
    )?;
    let oomlab = target_dir().join("release/oomlab");

    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port();
    let (mut daemon, ready) = Daemon::start(&oomlab, port)?;
    let pid = daemon.0.id();

    let me = std::process::id();
    let oom = BenchCgroup::create("serve", &format!("soak-oom-{me}"), 32 << 20)?;
    let cache = BenchCgroup::create("serve", &format!("soak-cache-{me}"), 64 << 20)?;
    let kills_before = oom.oom_kills();
    let load = Load::start(&oomlab, &oom, &cache, port)?;
    let soak = soak(&mut daemon, port, secs)?;
    let (adj_writes, streamed) = load.stop();
    thread::sleep(Duration::from_millis(500));
    let kills = oom.oom_kills() - kills_before;
    let counted = Counted::scrape(port, &oom, &cache)?;

    let t = Instant::now();
    // SAFETY: kill has no memory preconditions; pid is our child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = daemon.0.wait()?;
    let exit_time = t.elapsed();

    Figures {
        secs,
        ready,
        soak,
        kills,
        counted,
        adj_writes,
        streamed,
        status,
        exit_time,
    }
    .print();
    Ok(())
}

/// The steady load on the daemon, each part on its own thread until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    adj_writes: Arc<AtomicU64>,
    streamed: Arc<AtomicU64>,
    stalled: TcpStream,
    churn_file: PathBuf,
}

impl Load {
    fn start(oomlab: &Path, oom: &BenchCgroup, cache: &BenchCgroup, port: u16) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        threads.push(oom_kills(&stop, oomlab, oom.rel()));
        let adj_writes = Arc::new(AtomicU64::new(0));
        threads.push(adj_score_writes(&stop, &adj_writes));
        let churn_file =
            std::env::temp_dir().join(format!("oomlab-soak-{}.dat", std::process::id()));
        threads.push(cache_churn(&stop, cache.procs_file(), churn_file.clone()));
        let streamed = Arc::new(AtomicU64::new(0));
        threads.push(events_reader(&stop, &streamed, port)?);
        let mut stalled = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        write!(stalled, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n")?;
        Ok(Load {
            stop,
            threads,
            adj_writes,
            streamed,
            stalled,
            churn_file,
        })
    }

    /// Ends every part of the load; returns the adj writes made and the /events lines read.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        drop(self.stalled);
        let _ = fs::remove_file(&self.churn_file);
        (
            self.adj_writes.load(Ordering::Relaxed),
            self.streamed.load(Ordering::Relaxed),
        )
    }
}

/// OOM kills: one `oomlab app` over the limit every second.
fn oom_kills(stop: &Arc<AtomicBool>, oomlab: &Path, cg: String) -> JoinHandle<()> {
    let (stop, oomlab) = (stop.clone(), oomlab.to_path_buf());
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let _ = Command::new(&oomlab)
                .args(["app", "--size", "64MiB", "--cgroup", &cg])
                .stdout(Stdio::null())
                .status();
            thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
        }
    })
}

/// oom_score_adj writes: ~200 events a second.
fn adj_score_writes(stop: &Arc<AtomicBool>, n: &Arc<AtomicU64>) -> JoinHandle<()> {
    let (stop, n) = (stop.clone(), n.clone());
    thread::spawn(move || {
        let mut v = 0;
        while !stop.load(Ordering::Relaxed) {
            v = (v + 1) % 100;
            if fs::write("/proc/self/oom_score_adj", v.to_string()).is_ok() {
                n.fetch_add(1, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = fs::write("/proc/self/oom_score_adj", "0");
    })
}

/// File-cache churn over a 64 MiB limit: memcg reclaim.
fn cache_churn(stop: &Arc<AtomicBool>, procs: PathBuf, file: PathBuf) -> JoinHandle<()> {
    let stop = stop.clone();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let script = format!(
                "echo $$ > {} && exec dd if=/dev/zero of={} bs=1M count=256 status=none",
                procs.display(),
                file.display()
            );
            let _ = Command::new("sh").args(["-c", &script]).status();
            thread::sleep(Duration::from_millis(500));
        }
    })
}

/// A reader of /events, counting the event lines it gets.
fn events_reader(stop: &Arc<AtomicBool>, n: &Arc<AtomicU64>, port: u16) -> Result<JoinHandle<()>> {
    let (stop, n) = (stop.clone(), n.clone());
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    Ok(thread::spawn(move || {
        let mut w = s.try_clone().expect("clone the socket");
        let _ = write!(w, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut r = BufReader::new(s);
        let mut line = String::new();
        while !stop.load(Ordering::Relaxed) {
            line.clear();
            if let Ok(k) = r.read_line(&mut line) {
                if k > 0 && line.starts_with('{') {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }))
}

/// The daemon's RSS over the soak.
struct Soak {
    warm_at: Duration,
    rss_warm: u64,
    rss_max: u64,
    rss_end: u64,
    samples: Vec<String>,
    scrapes: u64,
    slow_scrape: Duration,
}

/// Scrape every second; RSS after a tenth of the run (warm) and at the end.
fn soak(daemon: &mut Daemon, port: u16, secs: u64) -> Result<Soak> {
    let pid = daemon.0.id();
    let warm_at = Duration::from_secs((secs / 10).max(5));
    let (mut rss_warm, mut rss_max, mut scrapes, mut slow_scrape) = (0, 0, 0u64, Duration::ZERO);
    let mut samples = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        get(port, "/metrics").context("scrape /metrics")?;
        slow_scrape = slow_scrape.max(t.elapsed());
        scrapes += 1;
        let rss = rss_kib(pid);
        rss_max = rss_max.max(rss);
        if rss_warm == 0 && t0.elapsed() >= warm_at {
            rss_warm = rss;
        }
        // The trajectory, ten points over the run: a leak climbs, a burst steps once.
        if scrapes % (secs / 10).max(1) == 0 {
            samples.push(format!("{}s:{}", t0.elapsed().as_secs(), rss));
        }
        if let Some(status) = daemon.0.try_wait()? {
            bail!("oomlab serve died during the soak: {status}");
        }
        thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
    Ok(Soak {
        warm_at,
        rss_warm,
        rss_max,
        rss_end: rss_kib(pid),
        samples,
        scrapes,
        slow_scrape,
    })
}

/// What the daemon's /metrics counted once the load has stopped.
struct Counted {
    kills: f64,
    lost: f64,
    skipped: f64,
    adj: f64,
    reclaim: f64,
}

impl Counted {
    fn scrape(port: u16, oom: &BenchCgroup, cache: &BenchCgroup) -> Result<Counted> {
        let text = get(port, "/metrics")?;
        Ok(Counted {
            kills: metric_sum(
                &text,
                "oomlab_oom_kills_total{",
                &format!("cgroup=\"{}\"", oom.rel()),
            ),
            lost: metric_sum(&text, "oomlab_events_lost_total", ""),
            skipped: metric_sum(&text, "oomlab_events_stream_skipped_total", ""),
            adj: metric_sum(&text, "oomlab_oom_score_adj_updates_total", ""),
            reclaim: metric_sum(
                &text,
                "oomlab_memcg_reclaim_seconds_count{",
                &format!("cgroup=\"{}\"", cache.rel()),
            ),
        })
    }
}

/// Everything the soak printed at its end.
struct Figures {
    secs: u64,
    ready: Duration,
    soak: Soak,
    /// The kernel's oom_kill counter of the scratch cgroup.
    kills: u64,
    counted: Counted,
    adj_writes: u64,
    streamed: u64,
    status: ExitStatus,
    exit_time: Duration,
}

impl Figures {
    fn print(&self) {
        let (soak, counted) = (&self.soak, &self.counted);
        let (rss_warm, rss_end) = (soak.rss_warm, soak.rss_end);
        let growth = (rss_end as f64 - rss_warm as f64) / rss_warm.max(1) as f64 * 100.0;
        println!(
            "\n=== bench serve: {} s soak, kernel {} ===",
            self.secs,
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
        println!(
            "ready (port answering, programs attached) {:>8.0} ms",
            self.ready.as_secs_f64() * 1e3
        );
        println!(
            "RSS after warm-up ({:>3} s)          {rss_warm:>8} KiB",
            soak.warm_at.as_secs()
        );
        println!(
            "RSS at the end                      {rss_end:>8} KiB   (max {} KiB)",
            soak.rss_max
        );
        println!(
            "RSS samples (KiB)                   {}",
            soak.samples.join(" ")
        );
        println!("RSS growth warm → end               {growth:>8.2} %   (target < 5 %)");
        println!(
            "OOM kills: kernel {}, /metrics {}   recall {:.1} %",
            self.kills,
            counted.kills,
            counted.kills / self.kills.max(1) as f64 * 100.0
        );
        println!(
            "adj writes by the load {}, counted by oomlab {} (node-wide, includes others)",
            self.adj_writes, counted.adj
        );
        println!(
            "reclaim passes counted for the churn cgroup {}",
            counted.reclaim
        );
        println!("events lost (ring buffer) {}, skipped for the stalled /events client {}, lines read by the live client {}", counted.lost, counted.skipped, self.streamed);
        println!(
            "scrapes {}, slowest {:.1} ms",
            soak.scrapes,
            soak.slow_scrape.as_secs_f64() * 1e3
        );
        println!(
            "SIGTERM → exit {:.0} ms ({}) (target < 1000 ms)",
            self.exit_time.as_secs_f64() * 1e3,
            self.status
        );
    }
}
