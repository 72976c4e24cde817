//! The run's sampler: a thread that reads the target cgroup's counters, the memory the workers
//! hold and the reclaim rate every 100 ms, and hands each reading to the collector (which also
//! moves the ramp's progress bar and keeps each stage's peak host memory).

use std::{
    collections::VecDeque,
    fs,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::collector::{lock, Collector, Shared};
use crate::{
    cgroup::{MemCgroup, MemSnapshot, PsiTotals, Version},
    inject::plan::NodeMemory,
    report::timeline::CgroupSample,
};

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The sampler thread; [`Sampler::stop`] ends it.
pub(super) struct Sampler {
    on: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sampler {
    pub(super) fn start(shared: &Shared, cg: &MemCgroup) -> Sampler {
        let on = Arc::new(AtomicBool::new(true));
        let thread = {
            let (sh, cg, on) = (shared.clone(), cg.clone(), on.clone());
            thread::spawn(move || sample_loop(&sh, &cg, &on))
        };
        Sampler { on, thread }
    }

    pub(super) fn stop(self) {
        self.on.store(false, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

/// Host memory as `free` reports it (procps-ng 4: used = total − available), in bytes.
fn host_memory() -> (u64, u64) {
    NodeMemory::read().map_or((0, 0), |m| (m.total.saturating_sub(m.available), m.total))
}

/// The pages reclaimed in the target per second, on v2 also from `memory.stat` (pgsteal).
fn pgsteal(cg: &MemCgroup) -> Option<u64> {
    if cg.version != Version::V2 {
        return None;
    }
    cg.stat().ok()?.get("pgsteal").copied()
}

fn rss_bytes(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages.saturating_mul(crate::sys::page_size()))
}

/// One reading, taken outside the collector's lock.
struct Reading {
    snap: Option<MemSnapshot>,
    /// PSI some / full over the last second.
    psi: Option<(f64, f64)>,
    injected: u64,
    steal: Option<u64>,
    host: (u64, u64),
}

impl Reading {
    fn take(sh: &Shared, cg: &MemCgroup) -> Reading {
        let snap = cg.snapshot().ok();
        let workers: Vec<i32> = lock(sh)
            .roles
            .iter()
            .filter(|(_, r)| *r == "worker")
            .map(|(p, _)| *p)
            .collect();
        let procs: Vec<i32> = cg.procs().unwrap_or_default();
        let injected = workers
            .iter()
            .filter(|p| procs.contains(p))
            .map(|p| rss_bytes(*p))
            .sum();
        Reading {
            snap,
            psi: None,
            injected,
            steal: pgsteal(cg),
            host: host_memory(),
        }
    }
}

/// The counters of the previous reading, for rates.
#[derive(Clone, Copy)]
struct Last {
    t: f64,
    reclaimed: u64,
    steal: Option<u64>,
    passes: u64,
}

/// Reclaim (pages/s, the larger of the traced and the `pgsteal` rate) and passes per second
/// since the last reading; 0 for the first.
fn rates(last: Option<Last>, now: Last) -> (Option<f64>, Option<f64>) {
    let Some(l) = last.filter(|l| now.t > l.t) else {
        return (Some(0.0), Some(0.0));
    };
    let dt = now.t - l.t;
    let traced = now.reclaimed.saturating_sub(l.reclaimed) as f64 / dt;
    let stat = match (now.steal, l.steal) {
        (Some(a), Some(b)) => Some(a.saturating_sub(b) as f64 / dt),
        _ => None,
    };
    let passes = now.passes.saturating_sub(l.passes) as f64 / dt;
    (Some(stat.map_or(traced, |x| x.max(traced))), Some(passes))
}

impl Collector {
    /// Adds a reading to the timeline, the stage's host peak and the ramp's progress bar.
    fn add_reading(&mut self, r: &Reading, last: &mut Option<Last>, oom_base: u64) {
        let now = Last {
            t: self.t(),
            reclaimed: self.reclaimed_pages,
            steal: r.steal,
            passes: self.reclaim_passes,
        };
        let (rate, pass_rate) = rates(*last, now);
        *last = Some(now);
        if let Some(snap) = r.snap {
            self.samples.push(CgroupSample {
                t: now.t,
                usage_bytes: snap.usage_bytes,
                working_set_bytes: snap.working_set_bytes,
                injected_bytes: r.injected,
                limit_bytes: snap.limit_bytes,
                oom_kills: snap.oom_kills.saturating_sub(oom_base),
                reclaim_pages_per_s: rate,
                reclaim_passes_per_s: pass_rate,
                psi_some_pct: r.psi.map(|p| p.0),
                psi_full_pct: r.psi.map(|p| p.1),
            });
        }
        if let Some(i) = self.stage {
            if let Some(h) = self.host_peak.get_mut(i) {
                if r.host.0 > h.0 {
                    *h = r.host;
                }
            }
        }
        if let Some((pb, total)) = &self.progress {
            pb.set_position(r.injected.min(*total));
        }
    }
}

fn sample_loop(sh: &Shared, cg: &MemCgroup, on: &AtomicBool) {
    let oom_base = cg.oom_kills().unwrap_or(0);
    let mut last = None;
    let mut next = Instant::now();
    // PSI totals of the last second's readings, to plot a share that is not 100 ms of noise.
    let mut psi_hist: VecDeque<(Instant, PsiTotals)> = VecDeque::new();
    while on.load(Ordering::SeqCst) {
        let mut reading = Reading::take(sh, cg);
        if let Some(now) = cg.pressure_counters().psi {
            let t = Instant::now();
            psi_hist.push_back((t, now));
            while psi_hist.len() > 2 && t.duration_since(psi_hist[1].0) >= Duration::from_secs(1) {
                psi_hist.pop_front();
            }
            if let Some(&(t0, then)) = psi_hist.front() {
                let wall = t.duration_since(t0).as_micros() as f64;
                if wall > 0.0 {
                    let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 / wall * 100.0;
                    reading.psi = Some((
                        pct(now.some_us, then.some_us),
                        pct(now.full_us, then.full_us),
                    ));
                }
            }
        }
        lock(sh).add_reading(&reading, &mut last, oom_base);
        next += SAMPLE_EVERY;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_the_larger_reclaim_measure() {
        let a = Last {
            t: 1.0,
            reclaimed: 100,
            steal: Some(1000),
            passes: 2,
        };
        assert_eq!(rates(None, a), (Some(0.0), Some(0.0)));
        let b = Last {
            t: 1.5,
            reclaimed: 200,
            steal: Some(1300),
            passes: 4,
        };
        assert_eq!(rates(Some(a), b), (Some(600.0), Some(4.0)));
        let c = Last { steal: None, ..b };
        assert_eq!(rates(Some(a), c), (Some(200.0), Some(4.0)));
    }
}
