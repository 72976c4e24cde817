//! Who the OOM killer would pick now: the `oom_score` / `oom_score_adj` of every process in a
//! target (a cgroup and its descendants, or the node), highest first — and the `oom_score_adj`
//! timeline per process, from the tracer's `oom_score_adj_update` events.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

use crate::{
    sys::{page_size, MemInfo},
    trace::{badness, event::AdjUpdate, kmsg::TaskRow},
};

/// One `oom_score_adj` write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdjChange {
    /// Kernel time (CLOCK_MONOTONIC seconds).
    pub ts: f64,
    pub oom_score_adj: i32,
    pub writer_pid: u32,
    pub writer_comm: String,
}

/// `oom_score_adj` changes per process, oldest first. Bounded: a process keeps its last
/// `PER_PID` changes and at most `PIDS` processes are remembered (oldest pids dropped first).
#[derive(Debug, Clone, Default)]
pub struct AdjTimeline {
    by_pid: BTreeMap<i32, Vec<AdjChange>>,
    order: std::collections::VecDeque<i32>,
}

impl AdjTimeline {
    const PER_PID: usize = 32;
    const PIDS: usize = 16_384;

    pub fn record(&mut self, ts: Duration, u: &AdjUpdate) {
        let entry = self.by_pid.entry(u.pid).or_insert_with(|| {
            self.order.push_back(u.pid);
            Vec::new()
        });
        if entry.len() == Self::PER_PID {
            entry.remove(0);
        }
        entry.push(AdjChange {
            ts: ts.as_secs_f64(),
            oom_score_adj: u.oom_score_adj,
            writer_pid: u.writer.pid,
            writer_comm: u.writer.comm.clone(),
        });
        while self.order.len() > Self::PIDS {
            if let Some(old) = self.order.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }

    /// Keeps the pids `keep` accepts (the others exited: their changes go with them).
    pub fn retain(&mut self, mut keep: impl FnMut(i32) -> bool) {
        self.by_pid.retain(|pid, _| keep(*pid));
        let by_pid = &self.by_pid;
        self.order.retain(|pid| by_pid.contains_key(pid));
    }

    pub fn history(&self, pid: i32) -> &[AdjChange] {
        self.by_pid.get(&pid).map_or(&[], Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }
}

/// One process on the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub pid: i32,
    pub comm: String,
    /// `/proc/PID/oom_score`: `(1000 + badness × 1000 / totalpages) × 2 / 3` with the node's
    /// RAM + swap as totalpages — coarse inside a small cgroup, where most tasks tie.
    pub oom_score: i64,
    pub oom_score_adj: i32,
    pub rss_kb: u64,
    pub swap_kb: u64,
    pub pgtables_kb: u64,
    /// `oom_badness` in pages with the target's limit as totalpages (the node's RAM + swap
    /// node-wide): what decides the victim when this target runs out. `None` for adj −1000.
    pub points: Option<i64>,
    /// The memory cgroup it was found in (relative to the controller's mount); None node-wide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreboardError {
    #[error("cannot list the processes of {dir}: {source}")]
    Procs {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// Reads one process; `None` when it exited meanwhile (or is a kernel thread without an mm).
pub fn entry(proc_root: &Path, pid: i32) -> Option<Entry> {
    let dir = proc_root.join(pid.to_string());
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
    let status = read("status")?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    // Kernel threads have no VmRSS line: they are never OOM candidates.
    let rss_kb = kb("VmRSS:")?;
    Some(Entry {
        pid,
        comm: read("comm")?.trim_end().to_string(),
        oom_score: read("oom_score")?.trim().parse().ok()?,
        oom_score_adj: read("oom_score_adj")?.trim().parse().ok()?,
        rss_kb,
        swap_kb: kb("VmSwap:").unwrap_or(0),
        pgtables_kb: kb("VmPTE:").unwrap_or(0),
        points: None,
        cgroup: None,
    })
}

/// Every process of the cgroup at `dir` and its descendants (`cgroup.procs` of each), with the
/// cgroup path relative to `mount`. Highest `oom_score` first; ties by rss, then pid.
pub fn for_cgroup(
    proc_root: &Path,
    mount: &Path,
    dir: &Path,
    totalpages: u64,
) -> Result<Vec<Entry>, ScoreboardError> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let procs = match fs::read_to_string(d.join("cgroup.procs")) {
            Ok(p) => p,
            // A descendant removed while we walk is fine; the target itself must be readable.
            Err(e) if !first && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ScoreboardError::Procs {
                    dir: d.display().to_string(),
                    source: e,
                })
            }
        };
        first = false;
        let rel = d
            .strip_prefix(mount)
            .map(|r| format!("/{}", r.display()))
            .unwrap_or_else(|_| d.display().to_string());
        for pid in procs.lines().filter_map(|l| l.trim().parse().ok()) {
            if let Some(mut e) = entry(proc_root, pid) {
                e.cgroup = Some(rel.clone());
                out.push(e);
            }
        }
        if let Ok(children) = fs::read_dir(&d) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(c.path());
                }
            }
        }
    }
    score_and_sort(&mut out, totalpages);
    Ok(out)
}

/// The scoreboard of a target cgroup (and descendants), or of the node when `None`.
pub fn for_target(
    target: Option<&crate::cgroup::MemCgroup>,
) -> Result<Vec<Entry>, ScoreboardError> {
    let proc_root = Path::new("/proc");
    let node = node_totalpages();
    match target {
        // The target's own limit; an ancestor's lower limit or swap are not looked at.
        Some(cg) => {
            let limit = cg.limit().ok().flatten().map(|b| b / page_size());
            for_cgroup(proc_root, &cg.mount, &cg.dir(), limit.unwrap_or(node))
        }
        None => for_node(proc_root, node),
    }
}

/// Every user process on the node.
pub fn for_node(proc_root: &Path, totalpages: u64) -> Result<Vec<Entry>, ScoreboardError> {
    let dir = fs::read_dir(proc_root).map_err(|e| ScoreboardError::Procs {
        dir: proc_root.display().to_string(),
        source: e,
    })?;
    let mut out: Vec<Entry> = dir
        .flatten()
        .filter_map(|d| d.file_name().to_str()?.parse().ok())
        .filter_map(|pid| entry(proc_root, pid))
        .collect();
    score_and_sort(&mut out, totalpages);
    Ok(out)
}

/// Fills `points` (the kernel's `oom_badness` for `totalpages`) and sorts: highest `oom_score`
/// first, ties (common in a small cgroup) broken by `points`, then pid.
fn score_and_sort(entries: &mut [Entry], totalpages: u64) {
    let page_kb = page_size() / 1024;
    for e in entries.iter_mut() {
        let row = TaskRow {
            pid: e.pid,
            rss: Some(e.rss_kb / page_kb),
            swapents: Some(e.swap_kb / page_kb),
            pgtables_bytes: Some(e.pgtables_kb * 1024),
            oom_score_adj: Some(e.oom_score_adj),
            ..TaskRow::default()
        };
        e.points = badness::badness(&row, totalpages);
    }
    entries.sort_by(|a, b| {
        b.oom_score
            .cmp(&a.oom_score)
            .then(b.points.cmp(&a.points))
            .then(a.pid.cmp(&b.pid))
    });
}

/// The node's RAM + swap in pages (`totalram_pages() + total_swap_pages`).
pub fn node_totalpages() -> u64 {
    let m = MemInfo::read().unwrap_or_default();
    (m.total_kb.unwrap_or(0) + m.swap_total_kb.unwrap_or(0)) / (page_size() / 1024)
}

/// The aligned human table.
pub fn render(entries: &[Entry], out: &mut impl io::Write) -> io::Result<()> {
    writeln!(
        out,
        "{:>8} {:>9} {:>6} {:>9} {:>10}  {:<16} cgroup",
        "pid", "oom_score", "adj", "points", "rss_kib", "comm"
    )?;
    for e in entries {
        writeln!(
            out,
            "{:>8} {:>9} {:>6} {:>9} {:>10}  {:<16} {}",
            e.pid,
            e.oom_score,
            e.oom_score_adj,
            e.points.map_or("never".into(), |p| p.to_string()),
            e.rss_kb,
            e.comm,
            e.cgroup.as_deref().unwrap_or("-")
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::event::Task;

    fn fake_proc(root: &Path, pid: i32, comm: &str, score: i64, adj: i32, rss: Option<u64>) {
        let d = root.join(pid.to_string());
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("comm"), format!("{comm}\n")).expect("comm");
        fs::write(d.join("oom_score"), format!("{score}\n")).expect("score");
        fs::write(d.join("oom_score_adj"), format!("{adj}\n")).expect("adj");
        let rss = rss.map_or(String::new(), |r| {
            format!("VmRSS:\t  {r} kB\nVmPTE:\t      8 kB\nVmSwap:\t       4 kB\n")
        });
        fs::write(
            d.join("status"),
            format!("Name:\t{comm}\n{rss}Threads:\t1\n"),
        )
        .expect("status");
    }

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("oomlab-scoreboard-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn cgroup_and_descendants_highest_first() {
        let root = tmp("cg");
        let proc_root = root.join("proc");
        let mount = root.join("memory");
        let cg = mount.join("lab");
        fs::create_dir_all(cg.join("child")).expect("cgroups");
        fs::write(cg.join("cgroup.procs"), "10\n11\n14\n99\n").expect("procs");
        fs::write(cg.join("child/cgroup.procs"), "12\n").expect("procs");
        fake_proc(&proc_root, 10, "small", 1010, 0, Some(4000));
        fake_proc(&proc_root, 11, "favoured", 1900, 900, Some(2000));
        fake_proc(&proc_root, 12, "protected", 500, -500, Some(9000));
        fake_proc(&proc_root, 13, "elsewhere", 2000, 1000, Some(1));
        // Same oom_score as 10 (node-scale rounding) but larger: its points break the tie.
        fake_proc(&proc_root, 14, "bigger", 1010, 0, Some(8000));
        // 99 exited between cgroup.procs and /proc: skipped.
        let board = for_cgroup(&proc_root, &mount, &cg, 8192).expect("scoreboard");
        let got: Vec<(i32, i64, Option<&str>)> = board
            .iter()
            .map(|e| (e.pid, e.oom_score, e.cgroup.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (11, 1900, Some("/lab")),
                (14, 1010, Some("/lab")),
                (10, 1010, Some("/lab")),
                (12, 500, Some("/lab/child"))
            ]
        );
        let mut text = Vec::new();
        render(&board, &mut text).expect("render");
        let text = String::from_utf8(text).expect("utf8");
        assert!(
            text.lines().nth(1).expect("row").contains("favoured"),
            "{text}"
        );
        assert!(for_cgroup(&proc_root, &mount, &mount.join("missing"), 8192).is_err());
        // Points by hand: 2000 kB = 500 pages + 4 kB swap = 1 + 8 kB PTEs = 2, + 900 × 8.
        let points: Vec<(i32, Option<i64>)> = board.iter().map(|e| (e.pid, e.points)).collect();
        assert_eq!(
            points,
            [
                (11, Some(7703)),
                (14, Some(2003)),
                (10, Some(1003)),
                (12, Some(-1747))
            ]
        );
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn node_wide_skips_kernel_threads() {
        let root = tmp("node");
        fake_proc(&root, 1, "init", 1000, 0, Some(10));
        fake_proc(&root, 2, "kthreadd", 0, 0, None);
        fs::create_dir_all(root.join("self")).expect("self");
        let board = for_node(&root, 1 << 20).expect("scoreboard");
        assert_eq!(board.iter().map(|e| e.pid).collect::<Vec<_>>(), [1]);
        fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn live_proc_self_is_readable() {
        let me = entry(
            Path::new("/proc"),
            i32::try_from(std::process::id()).expect("pid"),
        )
        .expect("/proc/self");
        assert!(
            me.rss_kb > 0 && (0..=2000).contains(&me.oom_score),
            "{me:?}"
        );
    }

    #[test]
    fn timeline_keeps_order_and_bounds() {
        let mut t = AdjTimeline::default();
        let writer = Task {
            tgid: 1,
            pid: 1,
            comm: "kubelet".into(),
            cgroup_id: 0,
        };
        for (i, adj) in [0, 500, -998].into_iter().enumerate() {
            t.record(
                Duration::from_secs(i as u64),
                &AdjUpdate {
                    pid: 7,
                    comm: "app".into(),
                    oom_score_adj: adj,
                    writer: writer.clone(),
                },
            );
        }
        let h: Vec<i32> = t.history(7).iter().map(|c| c.oom_score_adj).collect();
        assert_eq!(h, [0, 500, -998]);
        assert_eq!(t.history(7)[2].writer_comm, "kubelet");
        assert!(t.history(8).is_empty());
        for i in 0..100 {
            t.record(
                Duration::from_secs(i),
                &AdjUpdate {
                    pid: 7,
                    comm: "app".into(),
                    oom_score_adj: i32::try_from(i).expect("small"),
                    writer: writer.clone(),
                },
            );
        }
        assert_eq!(t.history(7).len(), AdjTimeline::PER_PID);
        assert_eq!(t.history(7).last().map(|c| c.oom_score_adj), Some(99));
        let adj8 = AdjUpdate {
            pid: 8,
            comm: "other".into(),
            oom_score_adj: 1,
            writer,
        };
        t.record(Duration::ZERO, &adj8);
        t.retain(|pid| pid != 7);
        assert!(t.history(7).is_empty());
        assert_eq!((t.len(), t.order.len()), (1, 1));
        // A pid that comes back starts a new history.
        t.record(
            Duration::ZERO,
            &AdjUpdate {
                pid: 7,
                ..adj8.clone()
            },
        );
        assert_eq!((t.history(7).len(), t.order.len()), (1, 2));
    }
}
