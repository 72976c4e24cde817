//! Victim selection as the kernel does it (`mm/oom_kill.c`: `oom_badness`, `oom_evaluate_task`),
//! recomputed from the `dump_tasks` table, so a report can say why the victim was chosen and
//! flag when the kernel chose someone else.

use serde::Serialize;

use crate::{
    sys::page_size,
    trace::kmsg::{MemCounter, TaskRow},
};

/// `OOM_SCORE_ADJ_MIN`: a task with this adj is never chosen.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;

/// `oom_badness`: `rss + swapents + pgtables_bytes / PAGE_SIZE` (pages), plus
/// `adj * (totalpages / 1000)` — the kernel divides `totalpages` first, in integers. `None`
/// (the kernel's `LONG_MIN`) for adj −1000: never chosen. A row without `rss` cannot be scored.
pub fn badness(row: &TaskRow, totalpages: u64) -> Option<i64> {
    let adj = i64::from(row.oom_score_adj.unwrap_or(0));
    if adj == i64::from(OOM_SCORE_ADJ_MIN) {
        return None;
    }
    let pages = row
        .rss?
        .saturating_add(row.swapents.unwrap_or(0))
        .saturating_add(row.pgtables_bytes.unwrap_or(0) / page_size());
    let pages = i64::try_from(pages).ok()?;
    let per_unit = i64::try_from(totalpages / 1000).ok()?;
    Some(pages.saturating_add(adj.saturating_mul(per_unit)))
}

/// Pages in `kb` kilobytes, saturating: the figures come from the kernel log.
pub(crate) fn kb_to_pages(kb: u64) -> u64 {
    kb.saturating_mul(1024) / page_size()
}

/// `totalpages` for a memcg OOM: `mem_cgroup_get_max` — the limit plus the swap the cgroup may
/// still use (bounded by the node's swap). `counters` are the report's `memory:`,
/// `memory+swap:` (v1) or `swap:` (v2) lines.
pub fn memcg_totalpages(counters: &[MemCounter], total_swap_pages: u64) -> Option<u64> {
    let limit = kb_to_pages(counters.iter().find(|c| c.name == "memory")?.limit_kb);
    let swap = if let Some(memsw) = counters.iter().find(|c| c.name == "memory+swap") {
        kb_to_pages(memsw.limit_kb).saturating_sub(limit)
    } else if let Some(sw) = counters.iter().find(|c| c.name == "swap") {
        kb_to_pages(sw.limit_kb)
    } else {
        0
    };
    Some(limit.saturating_add(swap.min(total_swap_pages)))
}

/// `totalpages` for a global OOM: `totalram_pages() + total_swap_pages` (`show_mem`'s
/// `pages RAM` minus `pages reserved` is the managed RAM).
pub fn global_totalpages(ram_pages: u64, reserved_pages: u64, total_swap_pages: u64) -> u64 {
    ram_pages
        .saturating_sub(reserved_pages)
        .saturating_add(total_swap_pages)
}

/// One candidate of the kernel's table with its recomputed badness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub pid: i32,
    pub name: String,
    pub rss_pages: Option<u64>,
    pub swapents: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// `None`: never chosen (adj −1000) or not scorable (no rss column).
    pub points: Option<i64>,
    /// 1 = the one oomlab predicts the kernel picks.
    pub rank: Option<usize>,
    /// The kernel killed this one (`Killed process` / `oom-kill: pid=`).
    pub chosen: bool,
}

/// The ranked candidate table of one OOM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranking {
    pub totalpages: u64,
    /// Highest badness first; unscored candidates last, in table order.
    pub candidates: Vec<Candidate>,
    pub predicted_pid: Option<i32>,
    pub kernel_pid: Option<i32>,
    /// Set when the kernel's choice is not oomlab's first: says by how many points, since the
    /// table is printed after selection and rss may have moved in between.
    pub disagreement: Option<String>,
}

impl Ranking {
    pub fn agrees(&self) -> Option<bool> {
        match (self.predicted_pid, self.kernel_pid) {
            (Some(p), Some(k)) => Some(p == k),
            _ => None,
        }
    }
}

/// Ranks the table as `select_bad_process` would: highest points wins and, on a tie, the task
/// met later in the scan (`oom_evaluate_task` replaces on `points >= chosen_points`); the scan
/// order is the table's order.
pub fn rank(rows: &[TaskRow], totalpages: u64, kernel_pid: Option<i32>) -> Ranking {
    let mut scored: Vec<(usize, Candidate)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                i,
                Candidate {
                    pid: r.pid,
                    name: r.name.clone(),
                    rss_pages: r.rss,
                    swapents: r.swapents,
                    pgtables_bytes: r.pgtables_bytes,
                    oom_score_adj: r.oom_score_adj,
                    points: badness(r, totalpages),
                    rank: None,
                    chosen: Some(r.pid) == kernel_pid,
                },
            )
        })
        .collect();
    scored.sort_by(|(ia, a), (ib, b)| match (a.points, b.points) {
        (Some(pa), Some(pb)) => pb.cmp(&pa).then(ib.cmp(ia)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => ia.cmp(ib),
    });
    let mut candidates: Vec<Candidate> = scored.into_iter().map(|(_, c)| c).collect();
    for (i, c) in candidates
        .iter_mut()
        .filter(|c| c.points.is_some())
        .enumerate()
    {
        c.rank = Some(i + 1);
    }
    let predicted_pid = candidates
        .first()
        .filter(|c| c.points.is_some())
        .map(|c| c.pid);
    let disagreement = match (predicted_pid, kernel_pid) {
        (Some(p), Some(k)) if p != k => {
            let pts = |pid| {
                candidates
                    .iter()
                    .find(|c| c.pid == pid)
                    .and_then(|c| c.points)
            };
            Some(match (pts(p), pts(k)) {
                (Some(pp), Some(kp)) => format!(
                    "kernel killed {k} ({kp} points) but {p} scores higher ({pp} points, +{}): rss changed between selection and the table, or a hidden rule applied (MMF_OOM_SKIP, vfork, oom origin)",
                    pp - kp
                ),
                (Some(pp), None) if candidates.iter().any(|c| c.pid == k) => format!(
                    "kernel killed {k}, which oomlab scores as never chosen; oomlab predicted {p} ({pp} points)"
                ),
                _ => format!("kernel killed {k}, which is not in the candidate table; oomlab predicted {p}"),
            })
        }
        _ => None,
    };
    Ranking {
        totalpages,
        candidates,
        predicted_pid,
        kernel_pid,
        disagreement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{
        kmsg::{parse_dump, OomLine, OomParser},
        testing::kmsg_fixture,
    };

    fn row(pid: i32, rss: u64, pgtables_bytes: u64, swapents: u64, adj: i32) -> TaskRow {
        TaskRow {
            pid,
            rss: Some(rss),
            pgtables_bytes: Some(pgtables_bytes),
            swapents: Some(swapents),
            oom_score_adj: Some(adj),
            name: format!("t{pid}"),
            ..TaskRow::default()
        }
    }

    #[test]
    fn badness_by_hand() {
        // 1000 rss + 24 swap + 81920/4096 = 20 → 1044; adj 500 × (8192/1000 = 8) = 4000.
        assert_eq!(badness(&row(1, 1000, 81920, 24, 500), 8192), Some(5044));
        // The integer division comes first: 999 pages → 0 per adj unit.
        assert_eq!(badness(&row(1, 10, 0, 0, 1000), 999), Some(10));
        // Negative adj can push points below zero; still a candidate.
        assert_eq!(badness(&row(1, 100, 4095, 0, -500), 8192), Some(100 - 4000));
        assert_eq!(badness(&row(1, 1 << 20, 0, 0, -1000), 8192), None);
        let no_rss = TaskRow {
            rss: None,
            ..row(1, 0, 0, 0, 0)
        };
        assert_eq!(badness(&no_rss, 8192), None);
    }

    #[test]
    fn ranking_ties_go_to_the_later_task_and_adj_min_is_last() {
        let rows = [
            row(10, 500, 0, 0, 0),
            row(11, 9000, 0, 0, -1000),
            row(12, 500, 0, 0, 0),
            row(13, 100, 0, 0, 0),
        ];
        let r = rank(&rows, 8192, Some(12));
        let order: Vec<i32> = r.candidates.iter().map(|c| c.pid).collect();
        assert_eq!(order, [12, 10, 13, 11]);
        assert_eq!(r.candidates[3].rank, None);
        assert_eq!(
            (r.predicted_pid, r.agrees(), r.disagreement.as_deref()),
            (Some(12), Some(true), None)
        );
        assert!(r.candidates[0].chosen);
    }

    #[test]
    fn disagreement_is_flagged_with_the_margin() {
        let rows = [row(1, 3000, 0, 0, 0), row(2, 2990, 0, 0, 0)];
        let r = rank(&rows, 8192, Some(2));
        assert_eq!(r.agrees(), Some(false));
        let d = r.disagreement.expect("flagged");
        assert!(
            d.contains("kernel killed 2 (2990 points)") && d.contains("+10"),
            "{d}"
        );
        let r = rank(&rows, 8192, Some(77));
        assert!(r
            .disagreement
            .expect("flagged")
            .contains("not in the candidate table"));
    }

    #[test]
    fn totalpages_memcg_and_global() {
        let c = |name: &str, limit_kb| MemCounter {
            name: name.into(),
            usage_kb: 0,
            limit_kb,
            failcnt: 0,
        };
        // v1 without swap limit, node without swap: just the limit.
        let v1 = [c("memory", 32768), c("memory+swap", 9_007_199_254_740_988)];
        assert_eq!(memcg_totalpages(&v1, 0), Some(8192));
        // …with 1000 swap pages on the node: bounded by the node's swap.
        assert_eq!(memcg_totalpages(&v1, 1000), Some(9192));
        // v2 with memory.swap.max = 4 MiB.
        assert_eq!(
            memcg_totalpages(&[c("memory", 32768), c("swap", 4096)], 1 << 20),
            Some(9216)
        );
        assert_eq!(memcg_totalpages(&[c("swap", 4096)], 0), None);
        assert_eq!(global_totalpages(262_014, 6_000, 0), 256_014);
    }

    /// Each fixture is a real OOM: oomlab's ranking must put the kernel's victim first — and the
    /// victim is not the largest process (adj 500 outweighs size).
    #[test]
    fn fixtures_rank_the_kernels_victim_first() {
        for (name, victim, largest) in [
            ("6.18-host-memcg.txt", 19495, 19496),
            ("6.12-debian-memcg.txt", 139, 140),
            ("6.1-debian-memcg.txt", 88, 89),
        ] {
            let text = kmsg_fixture(name);
            let mut p = OomParser::new();
            let (mut rows, mut counters, mut killed) = (Vec::new(), Vec::new(), None);
            for rec in parse_dump(&text) {
                match p.parse(rec.line()) {
                    Some(OomLine::Task(t)) => rows.push(t),
                    Some(OomLine::Memory(m)) => counters.push(m),
                    Some(OomLine::Killed(k)) => killed = Some(k.pid),
                    _ => {}
                }
            }
            let total = memcg_totalpages(&counters, 0).expect("memory: line");
            assert_eq!(total, 8192, "{name}");
            let r = rank(&rows, total, killed);
            assert_eq!(r.kernel_pid, Some(victim), "{name}");
            assert_eq!(r.predicted_pid, Some(victim), "{name}: {r:#?}");
            assert_eq!(r.disagreement, None, "{name}");
            let biggest = rows.iter().max_by_key(|r| r.rss).expect("rows");
            assert_eq!(
                biggest.pid, largest,
                "{name}: the victim is not simply the largest"
            );
        }
        // 6.18 by hand: 3524 rss + 81920/4096 = 20 → 3544, + 500 × 8 = 7544.
        let text = kmsg_fixture("6.18-host-memcg.txt");
        let mut p = OomParser::new();
        let rows: Vec<TaskRow> = parse_dump(&text)
            .iter()
            .filter_map(|r| match p.parse(&r.message) {
                Some(OomLine::Task(t)) => Some(t),
                _ => None,
            })
            .collect();
        let r = rank(&rows, 8192, Some(19495));
        let points: Vec<(i32, Option<i64>)> =
            r.candidates.iter().map(|c| (c.pid, c.points)).collect();
        assert_eq!(
            points,
            [
                (19495, Some(7544)),
                (19496, Some(4122)),
                (19655, Some(3559)),
                (19494, Some(3099))
            ]
        );
    }
}
