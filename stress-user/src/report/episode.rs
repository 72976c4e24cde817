//! An OOM episode as a human block (what `oomlab trace` prints): one headline, the victims with
//! their `oom_score_adj` history, the reaper's work, and the ranked candidate table.

use std::io::{self, Write};

use crate::{
    sys::page_size,
    trace::{
        badness::Ranking,
        episode::{Episode, EpisodeVictim, KmsgState},
        kmsg::Scope,
    },
};

/// Lines under the headline start below its text, past the timestamp column.
pub(crate) const PAD: &str = "                ";

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "?".into())
}

/// A task name as a terminal may show it: a tenant picks its comm, and a newline or an escape
/// sequence in it must not forge a line or recolour the screen.
pub(crate) fn shown(name: Option<&str>) -> String {
    name.map_or_else(|| "?".into(), |n| n.escape_debug().to_string())
}

/// A human block: one headline, the victims, the ranked candidate table.
pub fn render_human(ep: &Episode, out: &mut impl Write) -> io::Result<()> {
    let scope = match ep.domain.scope {
        Some(Scope::Memcg) => "memcg",
        Some(Scope::Global) => "global",
        None => "?",
    };
    writeln!(
        out,
        "{:>14.6}  OOM-EPISODE #{} {scope} {}  {}  trigger {} ({}) gfp {} order {}",
        ep.ts,
        ep.id,
        ep.domain.memcg.as_deref().unwrap_or("-"),
        ep.constraint.as_deref().unwrap_or("-"),
        opt(ep.trigger.pid.map(|p| p.to_string())),
        shown(ep.trigger.comm.as_deref()),
        ep.trigger.gfp_mask.as_deref().unwrap_or("?"),
        opt(ep.trigger.order.map(|o| o.to_string())),
    )?;
    match ep.kmsg {
        KmsgState::Complete => {}
        KmsgState::Truncated => writeln!(
            out,
            "{PAD}kernel log: part of the OOM report (ratelimited, cut or late)"
        )?,
        KmsgState::Missing => writeln!(
            out,
            "{PAD}kernel log: no OOM report (ratelimited, late or unreadable); from the tracepoints"
        )?,
    }
    if let Some(g) = &ep.group_kill {
        writeln!(out, "{PAD}memory.oom.group: every task of {g} killed")?;
    }
    for v in &ep.victims {
        victim(v, out)?;
    }
    for r in &ep.reaper {
        writeln!(out, "{PAD}reaper {} {}", r.step, r.pid)?;
    }
    match &ep.selection {
        None => writeln!(
            out,
            "{PAD}no candidate table (vm.oom_dump_tasks=0, ratelimited, or no report)"
        )?,
        Some(sel) => candidates(sel, out)?,
    }
    out.flush()
}

fn victim(v: &EpisodeVictim, out: &mut impl Write) -> io::Result<()> {
    let how: Vec<&str> = [
        (v.selected, "selected"),
        (v.logged, "logged"),
        (v.traced, "traced"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    writeln!(
        out,
        "{PAD}killed {} ({}) adj {}  anon {} KiB  cgroup {}  [{}]{}",
        v.pid,
        shown(v.comm.as_deref()),
        opt(v.oom_score_adj.map(|a| a.to_string())),
        opt(v.anon_rss_kb.map(|a| a.to_string())),
        v.cgroup.as_deref().unwrap_or("?"),
        how.join(","),
        super::trace::container_tags(&v.container, None)
    )?;
    for c in &v.adj_history {
        writeln!(
            out,
            "{PAD}  adj {} at {:.6} by {} ({})",
            c.oom_score_adj, c.ts, c.writer_pid, c.writer_comm
        )?;
    }
    Ok(())
}

/// The kernel's candidate table with oomlab's points, the kernel's choice marked `=>`.
fn candidates(sel: &Ranking, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "{PAD}candidates (totalpages {}, badness = rss + swap + pgtables + adj * (totalpages / 1000)):",
        sel.totalpages
    )?;
    writeln!(
        out,
        "{PAD}  {:>4} {:>8} {:>9} {:>8} {:>6} {:>6} {:>6}  name",
        "rank", "pid", "points", "rss", "swap", "pgtbl", "adj"
    )?;
    for c in &sel.candidates {
        writeln!(
            out,
            "{PAD}{} {:>4} {:>8} {:>9} {:>8} {:>6} {:>6} {:>6}  {}",
            if c.chosen { "=>" } else { "  " },
            opt(c.rank.map(|r| r.to_string())),
            c.pid,
            c.points.map_or("never".into(), |p| p.to_string()),
            opt(c.rss_pages.map(|r| r.to_string())),
            opt(c.swapents.map(|r| r.to_string())),
            opt(c.pgtables_bytes.map(|b| (b / page_size()).to_string())),
            opt(c.oom_score_adj.map(|r| r.to_string())),
            shown(Some(&c.name))
        )?;
    }
    match (&sel.disagreement, sel.agrees()) {
        (Some(d), _) => writeln!(out, "{PAD}DISAGREEMENT: {d}")?,
        (None, Some(true)) => {
            writeln!(out, "{PAD}oomlab's ranking agrees with the kernel's choice")?
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::testing::fixture_episode;

    #[test]
    fn the_kernels_choice_is_marked_and_checked() {
        let ep = fixture_episode("6.18-host-memcg.txt");
        let mut text = Vec::new();
        render_human(&ep, &mut text).expect("render");
        let text = String::from_utf8(text).expect("utf8");
        let chosen = text
            .lines()
            .find(|l| l.trim_start().starts_with("=>"))
            .expect("marked row");
        assert!(
            chosen.contains("19495") && chosen.contains("7544"),
            "{text}"
        );
        assert!(text.contains("agrees with the kernel"), "{text}");
    }
}
