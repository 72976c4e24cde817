//! `report.md`: the summary, each stage beside what `free` would have said, every OOM episode
//! with the candidate table the kernel ranked, and the expectations with their verdicts.

use std::fmt::{self, Write as _};

use super::timeline::{Candidate, RunReport, RunSummary, Verdict};
use crate::size::human;

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "–".into(), |v| v.to_string())
}

/// Renders the report as Markdown.
pub fn render(r: &RunReport) -> String {
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = write_markdown(&mut md, r);
    md
}

fn write_markdown(md: &mut String, r: &RunReport) -> fmt::Result {
    write_heading(md, r)?;
    write_summary(md, &r.summary)?;
    if let Some(i) = &r.interrupted {
        writeln!(md, "## Interrupted")?;
        writeln!(md)?;
        for line in super::run::interrupted_lines(r, i) {
            writeln!(md, "- {line}")?;
        }
        writeln!(md)?;
    }
    write_stages(md, r)?;
    write_episodes(md, r)?;
    write_expectations(md, &r.expectations)?;
    if let Some(c) = &r.conclusion {
        writeln!(md, "## Conclusion")?;
        writeln!(md)?;
        writeln!(md, "{}", c.trim())?;
    }
    Ok(())
}

/// The title, the description, one line on where it ran and how it went, and the plot.
fn write_heading(md: &mut String, r: &RunReport) -> fmt::Result {
    writeln!(md, "# oomlab run: {}", r.experiment)?;
    writeln!(md)?;
    if let Some(d) = &r.description {
        writeln!(md, "{d}")?;
        writeln!(md)?;
    }
    let interrupted;
    let verdict = if let Some(i) = &r.interrupted {
        interrupted = format!("**interrupted by {}**", i.cause);
        interrupted.as_str()
    } else if r.passed() {
        "**all expectations held**"
    } else {
        "**some expectations failed**"
    };
    writeln!(
        md,
        "From `{}` on kernel {}, cgroup {} `{}` (limit {}); {:.1} s; {}.",
        r.source,
        r.kernel,
        r.cgroup_version,
        r.cgroup,
        r.limit_bytes.map_or("none".into(), human),
        r.summary.duration_s,
        verdict
    )?;
    writeln!(md)?;
    writeln!(md, "![timeline](timeline.svg)")?;
    writeln!(md)
}

fn write_summary(md: &mut String, s: &RunSummary) -> fmt::Result {
    writeln!(md, "## Summary")?;
    writeln!(md)?;
    writeln!(md, "| | |")?;
    writeln!(md, "|---|---|")?;
    writeln!(md, "| OOM kills (kernel counter) | {} |", s.oom_kills)?;
    writeln!(
        md,
        "| victims traced | {} (workers {}, apps {}) |",
        s.traced_victims, s.worker_kills, s.app_kills
    )?;
    writeln!(md, "| worker respawns | {} |", s.respawns)?;
    writeln!(md, "| events lost | {} |", s.lost_events)?;
    writeln!(md, "| peak usage | {} |", human(s.peak_usage_bytes))?;
    writeln!(
        md,
        "| peak working set | {} |",
        human(s.peak_working_set_bytes)
    )?;
    writeln!(
        md,
        "| expectations | {} |",
        super::run::expectations_count(s)
    )?;
    writeln!(md)
}

/// One row a stage beside what `free` said on the host, then each stage's pressure.
fn write_stages(md: &mut String, r: &RunReport) -> fmt::Result {
    writeln!(md, "## Stages")?;
    writeln!(md)?;
    writeln!(md, "| # | stage | time (s) | requested | charged in the cgroup | peak usage | OOM kills | respawns | what `free` said (host) |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for st in &r.stages {
        let req = st.requested_bytes.map(|b| {
            format!(
                "{}{}{}",
                human(b),
                st.workers
                    .map_or(String::new(), |w| format!(", {w} workers")),
                st.oom_score_adj
                    .map_or(String::new(), |a| format!(", adj {a}"))
            )
        });
        let cut = if r.interrupted.as_ref().and_then(|i| i.stage) == Some(st.index) {
            " (cut short)"
        } else {
            ""
        };
        writeln!(
            md,
            "| {} | {}{cut} | {:.1}–{:.1} | {} | {} | {} | {} | {} | {} used of {} |",
            st.index + 1,
            st.name,
            st.start,
            st.end,
            opt(req),
            opt(st.charged_bytes.map(human)),
            human(st.peak_usage_bytes),
            st.oom_kills,
            st.respawns,
            human(st.host_used_bytes),
            human(st.host_total_bytes)
        )?;
    }
    for st in r.interrupted.iter().flat_map(|i| &i.skipped) {
        writeln!(
            md,
            "| {} | {} (skipped) | – | – | – | – | – | – | – |",
            st.index + 1,
            st.name
        )?;
    }
    writeln!(md)?;
    for st in &r.stages {
        if let Some(p) = &st.pressure {
            writeln!(
                md,
                "- Stage {} pressure: {}",
                st.index + 1,
                p.describe(r.cgroup_version)
            )?;
        }
    }
    writeln!(md)
}

fn write_episodes(md: &mut String, r: &RunReport) -> fmt::Result {
    writeln!(md, "## OOM episodes")?;
    writeln!(md)?;
    if r.episodes.is_empty() {
        writeln!(md, "None: the OOM killer did not run in this cgroup.")?;
        writeln!(md)?;
    }
    for (i, e) in r.episodes.iter().enumerate() {
        let stage = e
            .stage
            .and_then(|s| r.stages.get(s))
            .map_or(String::new(), |s| {
                format!(" (stage {}: {})", s.index + 1, s.name)
            });
        writeln!(
            md,
            "### {}. {:.2} s{stage}: killed pid {} `{}` — {}",
            i + 1,
            e.t,
            e.victim_pid,
            e.victim_comm,
            e.victim_role
        )?;
        writeln!(md)?;
        writeln!(
            md,
            "adj {}, anon RSS {}; triggered by {}; constraint {}.",
            opt(e.victim_adj),
            opt(e.victim_anon_rss_kb.map(|k| human(k * 1024))),
            e.trigger_pid.map_or("?".into(), |p| format!(
                "pid {p} `{}`",
                e.trigger_comm.as_deref().unwrap_or("?")
            )),
            e.constraint.as_deref().unwrap_or("?")
        )?;
        writeln!(md)?;
        writeln!(md, "Why: {}", e.why)?;
        writeln!(md)?;
        if let Some(d) = &e.disagreement {
            writeln!(md, "**Disagreement:** {d}")?;
            writeln!(md)?;
        }
        if !e.candidates.is_empty() {
            write_candidates(md, &e.candidates)?;
        }
    }
    Ok(())
}

/// The processes the kernel considered, ranked, the one it killed in bold.
fn write_candidates(md: &mut String, candidates: &[Candidate]) -> fmt::Result {
    writeln!(
        md,
        "| rank | pid | name | role | rss | swap | page tables | oom_score_adj | badness | |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|")?;
    for c in candidates {
        writeln!(
            md,
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} | {} |",
            opt(c.rank),
            c.pid,
            c.name,
            c.role,
            human(c.rss_kb * 1024),
            human(c.swap_kb * 1024),
            human(c.pgtables_kb * 1024),
            c.oom_score_adj,
            c.badness
                .map_or_else(|| "never (-1000)".into(), |b| b.to_string()),
            if c.chosen { "**killed**" } else { "" }
        )?;
    }
    writeln!(md)
}

fn write_expectations(md: &mut String, expectations: &[Verdict]) -> fmt::Result {
    writeln!(md, "## Expectations")?;
    writeln!(md)?;
    if expectations.is_empty() {
        writeln!(md, "The experiment states none.")?;
    } else {
        writeln!(md, "| result | scope | expectation | observed | line |")?;
        writeln!(md, "|---|---|---|---|---|")?;
        for v in expectations {
            writeln!(
                md,
                "| {} | {} | `{} = {}` | {} | {} |",
                if v.passed { "pass" } else { "**FAIL**" },
                v.scope,
                v.key,
                v.expected,
                v.observed,
                v.line
            )?;
        }
    }
    writeln!(md)
}

#[cfg(test)]
mod tests {
    use super::{super::fixture, *};

    #[test]
    fn has_every_section() {
        let md = render(&fixture::report());
        for needle in [
            "# oomlab run: seed-story",
            "**some expectations failed**",
            "## Stages",
            "| 1 | 4 workers, 200 MiB in total |",
            "201.0 MiB",
            "3.0 GiB used of 24.0 GiB",
            "- Stage 2 pressure: memory.failcnt +7, oom_kill +2; PSI (whole node: v1 has no per-cgroup PSI) some 12.5 %, full 4.0 % of the time",
            "## OOM episodes",
            "killed pid 443160 `oomlab` — worker",
            "| 1 | 443160 | `oomlab` | worker |",
            "**killed**",
            "| **FAIL** | push to 3,000 MiB | `victim = worker` | an app was killed | 40 |",
            "| pass |",
            "## Conclusion",
            "![timeline](timeline.svg)",
        ] {
            assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
        }
    }
}
