//! The tracer's sinks: one aligned human line per OOM/adj/cgroup event, reclaim folded into a
//! per-cgroup summary every few seconds (count, pages, p50/p99 latency), and the JSON-lines
//! counterparts (`reclaim_summary`).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde::Serialize;

use crate::trace::{
    event::{CgroupOp, ContainerNames, ReaperStep, Reclaim},
    Event, EventKind, ReclaimTotal,
};

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// What the runtimes say of a victim's container, for the human lines: `container NAME (ID)
/// pod NS/NAME image IMAGE via RUNTIME`, and for a victim that was not the container's init the
/// warning that the kubelet will not report it; empty outside containers.
pub fn container_tags(c: &ContainerNames, id: Option<&str>) -> String {
    let mut tags = String::new();
    let short = id.map(|id| &id[..id.len().min(12)]);
    match (&c.container_name, short) {
        (Some(name), Some(id)) => tags.push_str(&format!(" container {name} ({id})")),
        (Some(name), None) => tags.push_str(&format!(" container {name}")),
        (None, Some(id)) => tags.push_str(&format!(" container {id}")),
        (None, None) => {}
    }
    if let (Some(ns), Some(pod)) = (&c.namespace, &c.pod) {
        tags.push_str(&format!(" pod {ns}/{pod}"));
    }
    if let Some(image) = &c.image {
        tags.push_str(&format!(" image {image}"));
    }
    if let Some(rt) = c.runtime {
        tags.push_str(&format!(" via {rt}"));
    }
    match c.container_init {
        Some(true) => tags.push_str(" [container init: the runtime reports this kill (OOMKilled)]"),
        Some(false) => {
            tags.push_str(" [not the container's init: the kubelet will not report this one]")
        }
        None => {}
    }
    if let Some(why) = &c.names_missing {
        tags.push_str(&format!(" [names missing: {why}]"));
    }
    tags
}

/// One human line for `ev`; `None` for the events that only feed the reclaim summary.
pub fn human_line(ev: &Event) -> Option<String> {
    let ts = ev.ts.as_secs_f64();
    let line = match &ev.kind {
        EventKind::Victim(v) => {
            let c = &v.context;
            let mut tags = String::new();
            if c.container.pod.is_none() {
                if let Some(pod) = &c.pod_uid {
                    tags.push_str(&format!(" pod {pod}"));
                }
            }
            tags.push_str(&container_tags(&c.container, c.container_id.as_deref()));
            if c.oomlab_worker {
                tags.push_str(" [oomlab worker]");
            }
            format!(
                "{ts:>14.6}  OOM-KILL  pid {:<8} {:<16} adj {:>5}  anon {:>8} KiB  file {:>6} KiB  cgroup {}  trigger {} ({}){tags}",
                v.pid,
                super::episode::shown(v.comm.as_deref()),
                opt(v.oom_score_adj),
                opt(v.anon_rss_kb),
                opt(v.file_rss_kb),
                c.cgroup.as_deref().unwrap_or("?"),
                v.trigger.pid,
                v.trigger.comm,
            )
        }
        EventKind::Marked(v) => format!(
            "{ts:>14.6}  OOM-MARK  pid {:<8} {:<16} adj {:>5}  cgroup {}  trigger {} ({})  [already exiting: marked for the reserves and the reaper, not killed]",
            v.pid,
            super::episode::shown(v.comm.as_deref()),
            opt(v.oom_score_adj),
            v.context.cgroup.as_deref().unwrap_or("?"),
            v.trigger.pid,
            v.trigger.comm,
        ),
        EventKind::AdjUpdate(a) => format!(
            "{ts:>14.6}  ADJ       pid {:<8} {:<16} adj {:>5}  written by {} ({})",
            a.pid, a.comm, a.oom_score_adj, a.writer.pid, a.writer.comm
        ),
        EventKind::OomKillHook(h) => format!(
            "{ts:>14.6}  OOM       {} oom_kill_process in {} ({})",
            h.hook, h.task.pid, h.task.comm
        ),
        EventKind::Reaper(r) => format!(
            "{ts:>14.6}  REAPER    pid {:<8} {}",
            r.pid,
            match r.step {
                ReaperStep::Wake => "queued for the oom_reaper",
                ReaperStep::Start => "reaping started",
                ReaperStep::Finish => "reaping finished",
                ReaperStep::Skip => "reaping skipped",
            }
        ),
        EventKind::ReclaimRetry(r) => format!(
            "{ts:>14.6}  RETRY     node {} zone {} order {}  reclaimable {} available {} min_wmark {} loops {} wmark_ok {}  in {} ({})",
            r.node,
            r.zone_idx,
            r.order,
            r.reclaimable,
            r.available,
            r.min_wmark,
            r.no_progress_loops,
            r.wmark_check,
            r.task.pid,
            r.task.comm
        ),
        EventKind::CompactRetry(c) => format!(
            "{ts:>14.6}  COMPACT   order {} priority {} result {} retries {}/{} retry {}  in {} ({})",
            c.order, c.priority, c.result, c.retries, c.max_retries, c.retry, c.task.pid, c.task.comm
        ),
        EventKind::Cgroup(c) => {
            let what = match c.op {
                CgroupOp::Mkdir => "mkdir ",
                CgroupOp::Rmdir => "rmdir ",
                CgroupOp::Attach => "attach",
            };
            let moved = match (c.pid, &c.comm) {
                (Some(pid), Some(comm)) => format!("  pid {pid} ({comm})"),
                _ => String::new(),
            };
            format!(
                "{ts:>14.6}  CGROUP    {what} {:<40} id {:<8} root {}{moved}  by {} ({})",
                c.path, c.id, c.root, c.task.pid, c.task.comm
            )
        }
        EventKind::Reclaim(_) | EventKind::KswapdWake(_) => return None,
    };
    Some(line)
}

/// The reclaim of one cgroup over one summary interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReclaimRow {
    pub cgroup: String,
    /// Passes and pages seen as events in this interval.
    pub count: u64,
    pub nr_reclaimed: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Since the tracer started, from the kernel's own map (counts even what was dropped).
    pub total_count: u64,
    pub total_nr_reclaimed: u64,
}

/// Folds reclaim events into per-cgroup rows.
#[derive(Debug, Default)]
pub struct ReclaimSummary {
    /// cgroup → latencies (ns) and pages of the current interval.
    interval: BTreeMap<String, (Vec<u64>, u64)>,
    /// Kernel map key → cgroup, learnt from events.
    key_path: HashMap<u64, String>,
    kswapd_wakes: u64,
}

/// The `p`-th percentile (0..=100) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl ReclaimSummary {
    /// `key` is what the kernel keyed this pass's totals with (tgid on v1, cgroup id on v2).
    pub fn add(&mut self, r: &Reclaim, key: u64) {
        let cgroup = r
            .cgroup
            .clone()
            .unwrap_or_else(|| format!("(pid {} gone)", r.task.tgid));
        self.key_path.insert(key, cgroup.clone());
        let e = self.interval.entry(cgroup).or_default();
        e.0.push(r.latency_ns);
        e.1 += r.nr_reclaimed;
    }

    pub fn add_kswapd_wake(&mut self) {
        self.kswapd_wakes += 1;
    }

    /// kswapd wake-ups in the interval just taken.
    pub fn kswapd_wakes(&self) -> u64 {
        self.kswapd_wakes
    }

    /// Ends the interval: one row per cgroup that reclaimed in it. `totals` are the kernel's;
    /// `resolve` names a key no event has named (all its events dropped).
    pub fn take(
        &mut self,
        totals: &[ReclaimTotal],
        mut resolve: impl FnMut(u64) -> Option<String>,
    ) -> Vec<ReclaimRow> {
        let mut cum: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for t in totals {
            let path = match self.key_path.get(&t.key) {
                Some(p) => p.clone(),
                None => match resolve(t.key) {
                    Some(p) => {
                        self.key_path.insert(t.key, p.clone());
                        p
                    }
                    None => format!("(key {})", t.key),
                },
            };
            let e = cum.entry(path).or_default();
            e.0 += t.count;
            e.1 += t.nr_reclaimed;
        }
        let interval = std::mem::take(&mut self.interval);
        self.kswapd_wakes = 0;
        interval
            .into_iter()
            .map(|(cgroup, (mut lat, pages))| {
                lat.sort_unstable();
                let us = |ns: u64| Duration::from_nanos(ns).as_secs_f64() * 1e6;
                let (total_count, total_nr_reclaimed) = cum.get(&cgroup).copied().unwrap_or((0, 0));
                ReclaimRow {
                    count: lat.len() as u64,
                    nr_reclaimed: pages,
                    p50_us: us(percentile(&lat, 50.0)),
                    p99_us: us(percentile(&lat, 99.0)),
                    max_us: us(lat.last().copied().unwrap_or(0)),
                    total_count,
                    total_nr_reclaimed,
                    cgroup,
                }
            })
            .collect()
    }
}

pub fn human_reclaim_line(ts: Duration, row: &ReclaimRow) -> String {
    format!(
        "{:>14.6}  RECLAIM   {:<40} {:>6} passes {:>9} pages  p50 {:>9.1} us  p99 {:>9.1} us  (since start: {} passes, {} pages)",
        ts.as_secs_f64(),
        row.cgroup,
        row.count,
        row.nr_reclaimed,
        row.p50_us,
        row.p99_us,
        row.total_count,
        row.total_nr_reclaimed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::{ReclaimKind, Task};

    #[test]
    fn container_tags_name_the_victim_and_the_kubelets_blind_spot() {
        let mut c = ContainerNames {
            runtime: Some("containerd"),
            container_name: Some("app".into()),
            pod: Some("web-0".into()),
            namespace: Some("shop".into()),
            image: Some("busybox".into()),
            container_init: Some(false),
            names_missing: None,
        };
        assert_eq!(
            container_tags(&c, Some("3f1e9a7c5b2d4e6f8a0b")),
            " container app (3f1e9a7c5b2d) pod shop/web-0 image busybox via containerd [not the container's init: the kubelet will not report this one]"
        );
        c.container_init = Some(true);
        assert!(container_tags(&c, None)
            .ends_with("[container init: the runtime reports this kill (OOMKilled)]"));
        let missing = ContainerNames {
            runtime: Some("docker"),
            names_missing: Some("Docker socket /x did not answer".into()),
            ..ContainerNames::default()
        };
        assert_eq!(
            container_tags(&missing, Some("abc")),
            " container abc via docker [names missing: Docker socket /x did not answer]"
        );
        assert_eq!(container_tags(&ContainerNames::default(), None), "");
    }

    fn reclaim(cgroup: &str, tgid: u32, ns: u64, pages: u64) -> Reclaim {
        Reclaim {
            reclaim: ReclaimKind::Memcg,
            order: 0,
            gfp_flags: 0,
            nr_reclaimed: pages,
            latency_ns: ns,
            task: Task {
                tgid,
                pid: tgid,
                comm: "dd".into(),
                cgroup_id: 1,
            },
            cgroup: Some(cgroup.into()),
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn summary_per_cgroup_with_kernel_totals() {
        let mut s = ReclaimSummary::default();
        for i in 1..=10 {
            s.add(&reclaim("/a", 10, i * 1000, 32), 10);
        }
        s.add(&reclaim("/b", 20, 5000, 1), 20);
        let totals = [
            ReclaimTotal {
                key: 10,
                count: 12,
                nr_reclaimed: 400,
                total_ns: 0,
                max_ns: 0,
            },
            // Never seen as an event: resolved by the callback.
            ReclaimTotal {
                key: 30,
                count: 3,
                nr_reclaimed: 9,
                total_ns: 0,
                max_ns: 0,
            },
        ];
        let rows = s.take(&totals, |k| (k == 30).then(|| "/c".into()));
        assert_eq!(rows.len(), 2);
        let a = &rows[0];
        assert_eq!(
            (a.cgroup.as_str(), a.count, a.nr_reclaimed),
            ("/a", 10, 320)
        );
        assert_eq!((a.p50_us, a.p99_us, a.max_us), (5.0, 10.0, 10.0));
        assert_eq!((a.total_count, a.total_nr_reclaimed), (12, 400));
        assert_eq!(rows[1].cgroup, "/b");
        assert!(s.take(&[], |_| None).is_empty(), "interval reset");
        let line = human_reclaim_line(Duration::from_secs(1), a);
        assert!(
            line.contains("RECLAIM") && line.contains("/a") && line.contains("320 pages"),
            "{line}"
        );
    }
}
