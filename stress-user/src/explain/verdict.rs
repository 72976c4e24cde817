//! One sentence per episode on why the kernel killed whom it killed: the victim's rank by
//! `oom_badness`, who would have outscored it but for a negative `oom_score_adj`, and what the
//! log did not say (a truncated or rate-limited report).

use crate::{
    report::episode::shown,
    sys::page_size,
    trace::{
        badness::{Candidate, Ranking},
        episode::{Episode, KmsgState},
    },
};

/// Pages a candidate holds (`oom_badness` before the adj term).
fn held(c: &Candidate) -> Option<i64> {
    let pages = c
        .rss_pages?
        .saturating_add(c.swapents.unwrap_or(0))
        .saturating_add(c.pgtables_bytes.unwrap_or(0) / page_size());
    i64::try_from(pages).ok()
}

/// Candidates a negative adj kept below the victim (or out of the running).
fn protected(sel: &Ranking, victim: &Candidate) -> Vec<String> {
    let Some(victim_points) = victim.points else {
        return Vec::new();
    };
    sel.candidates
        .iter()
        .filter(|c| c.pid != victim.pid && c.oom_score_adj.is_some_and(|a| a < 0))
        .filter_map(|c| {
            let adj = c.oom_score_adj?;
            // With adj 0 it would have outscored the victim.
            let more = held(c).is_some_and(|h| h > victim_points);
            match c.points {
                None => Some(format!(
                    "{} ({}) is exempt (adj {adj})",
                    shown(Some(&c.name)),
                    c.pid
                )),
                Some(_) if more => Some(format!(
                    "{} ({}) was protected by adj {adj}",
                    shown(Some(&c.name)),
                    c.pid
                )),
                Some(_) => None,
            }
        })
        .collect()
}

fn ranked(sel: &Ranking, pid: i32, name: &str) -> String {
    let Some(victim) = sel.candidates.iter().find(|c| c.pid == pid) else {
        return format!("killed {name} ({pid}), which is not in the candidate table");
    };
    match (sel.agrees(), &sel.disagreement) {
        (Some(false), Some(d)) => format!("killed {name} ({pid}), not oomlab's pick: {d}"),
        (Some(true), _) => {
            let points = victim.points.map_or("?".into(), |p| p.to_string());
            let mut s = format!("killed {name} ({pid}): highest badness ({points} points)");
            let why = protected(sel, victim);
            if why.is_empty() {
                if let Some(next) = sel.candidates.iter().find(|c| c.pid != pid) {
                    let pts = next.points.map_or("never".into(), |p| p.to_string());
                    s.push_str(&format!(
                        "; next {} ({}) at {pts}",
                        shown(Some(&next.name)),
                        next.pid
                    ));
                }
            } else {
                s.push_str("; ");
                s.push_str(&why.join(", "));
            }
            s
        }
        _ => format!("killed {name} ({pid}); the table ranks no candidate"),
    }
}

/// The verdict line of one episode.
pub fn verdict(ep: &Episode) -> String {
    let victim = ep.victims.iter().find(|v| v.selected);
    let mut s = match (victim, &ep.selection) {
        (None, _) => "no kill line: the report is truncated before `Killed process`".to_string(),
        (Some(v), None) => format!(
            "killed {} ({}); no candidate table in the log (rate-limited report, or vm.oom_dump_tasks=0)",
            shown(v.comm.as_deref()),
            v.pid
        ),
        (Some(v), Some(sel)) => ranked(sel, v.pid, &shown(v.comm.as_deref())),
    };
    if let Some(g) = &ep.group_kill {
        s.push_str(&format!(
            "; memory.oom.group took {} task(s) of {g}",
            ep.victims.len()
        ));
    }
    match ep.kmsg {
        KmsgState::Truncated if victim.is_some() && ep.trigger.gfp_mask.is_none() => {
            format!("truncated (only the kill line: a rate-limited report, or the log starts inside it): {s}")
        }
        KmsgState::Truncated if victim.is_some() => format!("truncated: {s}"),
        KmsgState::Truncated | KmsgState::Complete | KmsgState::Missing => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{badness::rank, kmsg::TaskRow};

    fn row(pid: i32, rss: u64, adj: i32, name: &str) -> TaskRow {
        TaskRow {
            pid,
            rss: Some(rss),
            oom_score_adj: Some(adj),
            name: name.into(),
            ..TaskRow::default()
        }
    }

    #[test]
    fn a_negative_adj_is_named_as_the_reason() {
        let rows = [
            row(1, 1000, 0, "cache"),
            row(2, 5000, -997, "db"),
            row(3, 9000, -1000, "kubelet"),
            row(4, 10, 0, "pause"),
        ];
        let sel = rank(&rows, 8192, Some(1));
        assert_eq!(
            ranked(&sel, 1, "cache"),
            "killed cache (1): highest badness (1000 points); db (2) was protected by adj -997, \
             kubelet (3) is exempt (adj -1000)"
        );
        let sel = rank(&rows[..1], 8192, Some(1));
        assert_eq!(
            ranked(&sel, 1, "cache"),
            "killed cache (1): highest badness (1000 points)"
        );
        let sel = rank(&rows, 8192, Some(4));
        assert!(ranked(&sel, 4, "pause").starts_with("killed pause (4), not oomlab's pick: "));
    }
}
