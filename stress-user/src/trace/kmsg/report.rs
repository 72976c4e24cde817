//! The lines of an OOM report (`dump_header`, `dump_tasks`, the `oom-kill:` summary, `Killed
//! process`, `oom_reaper`, a global OOM's `show_mem`) parsed into typed [`OomLine`]s. Formats seen
//! on 6.1, 6.12 and 6.18 are parsed; anything else is ignored, never fatal.

use std::collections::BTreeMap;

use serde::Serialize;

use super::unescape;
use crate::sys::page_size;

/// `<comm> invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomHeader {
    pub comm: String,
    pub gfp_mask: String,
    pub order: Option<i32>,
    pub oom_score_adj: Option<i32>,
}

/// `memory: usage 32768kB, limit 32768kB, failcnt 70` (also `memory+swap:`, `swap:`, `kmem:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemCounter {
    pub name: String,
    pub usage_kb: u64,
    pub limit_kb: u64,
    pub failcnt: u64,
}

/// A `dump_tasks` row, read by the names in the table's header (the columns differ between
/// kernels: 6.1 has no `rss_anon rss_file rss_shmem`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    pub pid: i32,
    pub uid: Option<u32>,
    pub tgid: Option<i32>,
    /// Pages.
    pub total_vm: Option<u64>,
    /// Pages (anon + file + shmem), what `oom_badness` counts.
    pub rss: Option<u64>,
    pub rss_anon: Option<u64>,
    pub rss_file: Option<u64>,
    pub rss_shmem: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub swapents: Option<u64>,
    pub oom_score_adj: Option<i32>,
    pub name: String,
    /// Columns this parser does not know, by header name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, i64>,
}

/// `oom-kill:constraint=…,nodemask=…,cpuset=…,mems_allowed=…,oom_memcg=…,task_memcg=…,task=…,pid=…,uid=…`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OomSummary {
    pub constraint: String,
    pub nodemask: Option<String>,
    pub cpuset: Option<String>,
    pub mems_allowed: Option<String>,
    /// The OOM domain's memcg (only for a memcg OOM).
    pub oom_memcg: Option<String>,
    pub task_memcg: Option<String>,
    pub task: Option<String>,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

/// Where the OOM happened, as the `Killed process` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Memcg,
    Global,
}

/// `Memory cgroup out of memory: Killed process N (comm) total-vm:…kB, anon-rss:…kB, …`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Killed {
    pub scope: Scope,
    pub pid: i32,
    pub comm: String,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub uid: Option<u32>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

/// `oom_reaper: reaped process N (comm), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reaped {
    pub pid: i32,
    pub comm: String,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
}

/// One line of an OOM report that matters for episodes and victim selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomLine {
    Header(OomHeader),
    /// `CPU: 1 UID: 0 PID: 19655 Comm: oomlab …` (the invoking task, from `dump_stack`).
    TriggerTask {
        pid: i32,
        comm: String,
    },
    Memory(MemCounter),
    /// `Memory cgroup stats for /path:`
    MemcgStats(String),
    /// `Tasks state (memory values in pages):` is followed by this header.
    TasksHeader(Vec<String>),
    Task(TaskRow),
    Summary(OomSummary),
    /// `Tasks in /path are going to be killed due to memory.oom.group set`
    GroupKill(String),
    Killed(Killed),
    Reaped(Reaped),
    /// Global OOMs (`show_mem`): `N pages RAM`, `N pages reserved`, `Total swap = NkB`.
    PagesRam(u64),
    PagesReserved(u64),
    TotalSwapKb(u64),
}

/// Stateful line parser: the task table's columns come from its header line.
#[derive(Debug, Default, Clone)]
pub struct OomParser {
    columns: Option<Vec<String>>,
}

impl OomParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one message line, `\xNN` escapes still in (task names and paths are unescaped
    /// once cut out); `None` when the line is not part of an OOM report this parser knows.
    pub fn parse(&mut self, line: &str) -> Option<OomLine> {
        let line = line.trim_end();
        if let Some(h) = parse_header(line) {
            self.columns = None;
            return Some(OomLine::Header(h));
        }
        if let Some(header) = line.strip_prefix("[  pid  ]") {
            let cols: Vec<String> = header.split_whitespace().map(str::to_string).collect();
            self.columns = Some(cols.clone());
            return Some(OomLine::TasksHeader(cols));
        }
        if line.starts_with('[') {
            if let Some(cols) = &self.columns {
                return parse_row(line, cols).map(OomLine::Task);
            }
            return None;
        }
        // Anything else ends the table (a global OOM's table can be followed by other output).
        if let Some(rest) = line.strip_prefix("oom-kill:") {
            self.columns = None;
            return Some(OomLine::Summary(parse_summary(rest)));
        }
        if let Some(k) = parse_killed(line) {
            self.columns = None;
            return Some(OomLine::Killed(k));
        }
        if let Some(rest) = line.strip_prefix("oom_reaper: reaped process ") {
            return parse_reaped(rest).map(OomLine::Reaped);
        }
        if let Some(rest) = line.strip_prefix("Tasks in ") {
            if let Some(path) =
                rest.strip_suffix(" are going to be killed due to memory.oom.group set")
            {
                return Some(OomLine::GroupKill(unescape(path)));
            }
        }
        if let Some(path) = line
            .strip_prefix("Memory cgroup stats for ")
            .and_then(|r| r.strip_suffix(':'))
        {
            return Some(OomLine::MemcgStats(unescape(path)));
        }
        if let Some(m) = parse_counter(line) {
            return Some(OomLine::Memory(m));
        }
        if let Some(t) = parse_trigger(line) {
            return Some(t);
        }
        if let Some(n) = line.strip_suffix(" pages RAM") {
            return n.trim().parse().ok().map(OomLine::PagesRam);
        }
        if let Some(n) = line.strip_suffix(" pages reserved") {
            return n.trim().parse().ok().map(OomLine::PagesReserved);
        }
        if let Some(kb) = line
            .strip_prefix("Total swap = ")
            .and_then(|r| r.strip_suffix("kB"))
        {
            return kb.trim().parse().ok().map(OomLine::TotalSwapKb);
        }
        None
    }
}

fn parse_header(line: &str) -> Option<OomHeader> {
    // The comm comes first and the rest never holds the marker: split at its last occurrence.
    let (comm, rest) = line.rsplit_once(" invoked oom-killer: ")?;
    let mut h = OomHeader {
        comm: unescape(comm),
        gfp_mask: String::new(),
        order: None,
        oom_score_adj: None,
    };
    // `gfp_mask=0xcc0(GFP_KERNEL)`: the flag list can hold commas only inside the parentheses.
    for part in split_top_level(rest) {
        match part.trim().split_once('=') {
            Some(("gfp_mask", v)) => h.gfp_mask = v.to_string(),
            Some(("order", v)) => h.order = v.parse().ok(),
            Some(("oom_score_adj", v)) => h.oom_score_adj = v.parse().ok(),
            _ => {}
        }
    }
    Some(h)
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth = depth.saturating_add(1),
            ')' => depth = depth.saturating_sub(1),
            ',' if depth <= 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_row(line: &str, cols: &[String]) -> Option<TaskRow> {
    let (pid, rest) = line.strip_prefix('[')?.split_once(']')?;
    let mut row = TaskRow {
        pid: pid.trim().parse().ok()?,
        ..TaskRow::default()
    };
    let Some((name_col, numeric)) = cols.split_last() else {
        return Some(row);
    };
    let mut rest = rest.trim_start();
    for col in numeric {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let value: i64 = rest[..end].parse().ok()?;
        rest = rest[end..].trim_start();
        let u = u64::try_from(value).ok();
        match col.as_str() {
            "uid" => row.uid = u32::try_from(value).ok(),
            "tgid" => row.tgid = i32::try_from(value).ok(),
            "total_vm" => row.total_vm = u,
            "rss" => row.rss = u,
            "rss_anon" => row.rss_anon = u,
            "rss_file" => row.rss_file = u,
            "rss_shmem" => row.rss_shmem = u,
            "pgtables_bytes" => row.pgtables_bytes = u,
            // Kernels before 4.15 printed page-table pages instead of bytes.
            "nr_ptes" => row.pgtables_bytes = u.and_then(|p| p.checked_mul(page_size())),
            "swapents" => row.swapents = u,
            "oom_score_adj" => row.oom_score_adj = i32::try_from(value).ok(),
            other => {
                row.other.insert(other.to_string(), value);
            }
        }
    }
    // The name is the last column and the only free text: whatever follows the numbers,
    // spaces, brackets and escapes included.
    if name_col == "name" {
        row.name = unescape(rest);
    }
    if row.rss.is_none() {
        if let (Some(a), Some(f), Some(s)) = (row.rss_anon, row.rss_file, row.rss_shmem) {
            row.rss = a.checked_add(f).and_then(|af| af.checked_add(s));
        }
    }
    Some(row)
}

/// The summary's keys before `task=`, in the order `dump_oom_summary` prints them (`cpuset=` only
/// with cpusets, `oom_memcg=` for a memcg OOM, `global_oom` otherwise).
const SUMMARY_KEYS: [&str; 7] = [
    "constraint=",
    ",nodemask=",
    ",cpuset=",
    ",mems_allowed=",
    ",oom_memcg=",
    ",global_oom",
    ",task_memcg=",
];

/// Parses by position, not by splitting on commas: the comm (`task=`) is free text that may
/// hold `,` and `=`, nodemasks are range lists with commas (`0-1,3`) and paths are names. The
/// comm is followed only by `,pid=N,uid=N` (cut from the right) and preceded by the first
/// `,task=` (a comm cannot move it, as it comes after); the other keys are found in order in
/// what precedes it, so nothing in the comm can set them.
fn parse_summary(rest: &str) -> OomSummary {
    let mut s = OomSummary::default();
    let (head, uid) = rest.rsplit_once(",uid=").unwrap_or((rest, ""));
    let (head, pid) = head.rsplit_once(",pid=").unwrap_or((head, ""));
    let (head, task) = match head.split_once(",task=") {
        Some((h, t)) => (h, Some(t)),
        None => (head, None),
    };
    s.task = task.map(unescape);
    s.pid = pid.parse().ok();
    s.uid = uid.parse().ok();
    let mut found: Vec<(&str, usize, usize)> = Vec::new();
    let mut from = 0;
    for key in SUMMARY_KEYS {
        if let Some(at) = head.get(from..).and_then(|h| h.find(key)) {
            let start = from.saturating_add(at);
            from = start.saturating_add(key.len());
            found.push((key, start, from));
        }
    }
    for (i, (key, _, value_start)) in found.iter().enumerate() {
        let value_end = found.get(i + 1).map_or(head.len(), |next| next.1);
        let v = head.get(*value_start..value_end).unwrap_or_default();
        match key.trim_start_matches(',').trim_end_matches('=') {
            "constraint" => s.constraint = v.to_string(),
            "nodemask" => s.nodemask = Some(v.to_string()),
            "cpuset" => s.cpuset = Some(unescape(v)),
            "mems_allowed" => s.mems_allowed = Some(v.to_string()),
            "oom_memcg" => s.oom_memcg = Some(unescape(v)),
            "task_memcg" => s.task_memcg = Some(unescape(v)),
            _ => {}
        }
    }
    s
}

/// Splits `N (comm) rest`; the comm may hold spaces and parentheses, and the rest holds none,
/// so the last `)` closes the comm.
fn pid_comm(s: &str) -> Option<(i32, String, &str)> {
    let (pid, rest) = s.split_once(" (")?;
    let pid = pid.trim().parse().ok()?;
    let (comm, tail) = rest.rsplit_once(')')?;
    Some((pid, unescape(comm), tail.trim_start_matches([',', ' '])))
}

/// `key:valuekB` pairs separated by `, ` or spaces.
fn kv_colon(s: &str) -> BTreeMap<&str, &str> {
    s.split([',', ' '])
        .filter_map(|p| p.split_once(':'))
        .collect()
}

fn kb(m: &BTreeMap<&str, &str>, key: &str) -> Option<u64> {
    m.get(key)?.strip_suffix("kB")?.parse().ok()
}

fn parse_killed(line: &str) -> Option<Killed> {
    let idx = line.find("Killed process ")?;
    let prefix = &line[..idx];
    let scope = if prefix.starts_with("Memory cgroup out of memory") {
        Scope::Memcg
    } else if prefix.starts_with("Out of memory") {
        Scope::Global
    } else {
        return None;
    };
    let (pid, comm, tail) = pid_comm(&line[idx + "Killed process ".len()..])?;
    let m = kv_colon(tail);
    Some(Killed {
        scope,
        pid,
        comm,
        total_vm_kb: kb(&m, "total-vm"),
        anon_rss_kb: kb(&m, "anon-rss"),
        file_rss_kb: kb(&m, "file-rss"),
        shmem_rss_kb: kb(&m, "shmem-rss"),
        uid: m.get("UID").and_then(|v| v.parse().ok()),
        pgtables_kb: kb(&m, "pgtables"),
        oom_score_adj: m.get("oom_score_adj").and_then(|v| v.parse().ok()),
    })
}

fn parse_reaped(rest: &str) -> Option<Reaped> {
    let (pid, comm, tail) = pid_comm(rest)?;
    let m = kv_colon(tail);
    Some(Reaped {
        pid,
        comm,
        anon_rss_kb: kb(&m, "anon-rss"),
        file_rss_kb: kb(&m, "file-rss"),
        shmem_rss_kb: kb(&m, "shmem-rss"),
    })
}

fn parse_counter(line: &str) -> Option<MemCounter> {
    let (name, rest) = line.split_once(": usage ")?;
    if !matches!(name, "memory" | "memory+swap" | "swap" | "kmem") {
        return None;
    }
    let mut it = rest.split(", ");
    let usage_kb = it.next()?.strip_suffix("kB")?.parse().ok()?;
    let limit_kb = it
        .next()?
        .strip_prefix("limit ")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    let failcnt = it
        .next()
        .and_then(|f| f.strip_prefix("failcnt "))
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or(0);
    Some(MemCounter {
        name: name.to_string(),
        usage_kb,
        limit_kb,
        failcnt,
    })
}

fn parse_trigger(line: &str) -> Option<OomLine> {
    if !line.starts_with("CPU: ") {
        return None;
    }
    let (_, rest) = line.split_once(" PID: ")?;
    let (pid, rest) = rest.split_once(" Comm: ")?;
    // The comm is followed by ` Not tainted` / ` Tainted:` and the kernel version, which hold
    // neither marker again: cut at the last one.
    let comm = rest
        .rsplit_once(" Not tainted")
        .or_else(|| rest.rsplit_once(" Tainted:"))
        .map_or(rest, |(c, _)| c);
    Some(OomLine::TriggerTask {
        pid: pid.trim().parse().ok()?,
        comm: unescape(comm.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{kmsg::parse_dump, testing::kmsg_fixture as fixture};

    fn oom_lines(name: &str) -> Vec<OomLine> {
        let mut p = OomParser::new();
        parse_dump(&fixture(name))
            .iter()
            .filter_map(|r| p.parse(r.line()))
            .collect()
    }

    fn rows(lines: &[OomLine]) -> Vec<&TaskRow> {
        lines
            .iter()
            .filter_map(|l| match l {
                OomLine::Task(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn host_6_18_report() {
        let lines = oom_lines("6.18-host-memcg.txt");
        assert_eq!(
            lines[0],
            OomLine::Header(OomHeader {
                comm: "oomlab".into(),
                gfp_mask: "0xcc0(GFP_KERNEL)".into(),
                order: Some(0),
                oom_score_adj: Some(0),
            })
        );
        assert!(lines.contains(&OomLine::TriggerTask {
            pid: 19655,
            comm: "oomlab".into()
        }));
        assert!(lines.contains(&OomLine::Memory(MemCounter {
            name: "memory".into(),
            usage_kb: 32768,
            limit_kb: 32768,
            failcnt: 70
        })));
        let rows = rows(&lines);
        assert_eq!(rows.len(), 4);
        assert_eq!(
            *rows[1],
            TaskRow {
                pid: 19495,
                uid: Some(0),
                tgid: Some(19495),
                total_vm: Some(4673),
                rss: Some(3524),
                rss_anon: Some(2144),
                rss_file: Some(1380),
                rss_shmem: Some(0),
                pgtables_bytes: Some(81920),
                swapents: Some(0),
                oom_score_adj: Some(500),
                name: "oomlab".into(),
                other: BTreeMap::new(),
            }
        );
        let summary = lines.iter().find_map(|l| match l {
            OomLine::Summary(s) => Some(s.clone()),
            _ => None,
        });
        let s = summary.expect("oom-kill: line");
        assert_eq!(s.constraint, "CONSTRAINT_MEMCG");
        assert_eq!(
            s.oom_memcg.as_deref(),
            Some("/oomlab-test/victims-fixture-18259")
        );
        assert_eq!(
            (s.pid, s.task.as_deref(), s.uid),
            (Some(19495), Some("oomlab"), Some(0))
        );
        assert_eq!(
            lines.last(),
            Some(&OomLine::Killed(Killed {
                scope: Scope::Memcg,
                pid: 19495,
                comm: "oomlab".into(),
                total_vm_kb: Some(18692),
                anon_rss_kb: Some(8576),
                file_rss_kb: Some(5520),
                shmem_rss_kb: Some(0),
                uid: Some(0),
                pgtables_kb: Some(80),
                oom_score_adj: Some(500),
            }))
        );
    }

    #[test]
    fn debian_6_1_has_no_split_rss_columns() {
        let lines = oom_lines("6.1-debian-memcg.txt");
        let rows = rows(&lines);
        assert_eq!(rows.len(), 4);
        let r = rows[1];
        assert_eq!((r.pid, r.rss, r.rss_anon), (88, Some(3425), None));
        assert_eq!(
            (r.pgtables_bytes, r.swapents, r.oom_score_adj),
            (Some(81920), Some(0), Some(500))
        );
        assert!(lines.contains(&OomLine::TriggerTask {
            pid: 92,
            comm: "oomlab".into()
        }));
        // v2 prints `swap:` instead of v1's `memory+swap:`.
        assert!(lines
            .iter()
            .any(|l| matches!(l, OomLine::Memory(m) if m.name == "swap" && m.limit_kb == 0)));
        assert!(lines.iter().any(
            |l| matches!(l, OomLine::Killed(k) if k.pid == 88 && k.shmem_rss_kb == Some(5188))
        ));
    }

    #[test]
    fn debian_6_12_has_split_rss_columns() {
        let lines = oom_lines("6.12-debian-memcg.txt");
        let rows = rows(&lines);
        assert_eq!(rows.len(), 4);
        let r = rows[0];
        assert_eq!(
            (r.pid, r.rss, r.rss_anon, r.rss_file, r.rss_shmem),
            (140, Some(4000), Some(2685), Some(0), Some(1315))
        );
        assert!(lines
            .iter()
            .any(|l| matches!(l, OomLine::Summary(s) if s.oom_memcg.as_deref() == Some("/lab"))));
    }

    #[test]
    fn unknown_columns_and_garbage_degrade() {
        let mut p = OomParser::new();
        assert_eq!(
            p.parse("[ 1] 2 3"),
            None,
            "a row before any header is not guessed at"
        );
        p.parse("[  pid  ]   uid  tgid total_vm      rss nr_ptes future_col swapents oom_score_adj name");
        let Some(OomLine::Task(r)) = p.parse("[  7]  0  7  100  50  2  -3  1  -1000 my worker")
        else {
            panic!("row parsed by header names")
        };
        assert_eq!(
            (r.rss, r.pgtables_bytes, r.swapents, r.oom_score_adj),
            (Some(50), Some(8192), Some(1), Some(-1000))
        );
        assert_eq!(r.other.get("future_col"), Some(&-3));
        assert_eq!(r.name, "my worker");
        assert_eq!(p.parse("[  8]  0  x"), None, "a malformed row is skipped");
        for junk in [
            "",
            "oom-kill:",
            "Killed process x",
            "CPU: 1 PID: z Comm:",
            "memory: usage kB",
            "[",
            "Out of memory: Killed process (",
            "oom_reaper: reaped process",
        ] {
            let _ = p.parse(junk);
        }
    }

    #[test]
    fn global_kill_group_kill_and_reaper_lines() {
        let mut p = OomParser::new();
        assert_eq!(
            p.parse("Out of memory: Killed process 4242 (my (odd) app) total-vm:100kB, anon-rss:60kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:40kB oom_score_adj:0"),
            Some(OomLine::Killed(Killed {
                scope: Scope::Global,
                pid: 4242,
                comm: "my (odd) app".into(),
                total_vm_kb: Some(100),
                anon_rss_kb: Some(60),
                file_rss_kb: Some(0),
                shmem_rss_kb: Some(0),
                uid: Some(1000),
                pgtables_kb: Some(40),
                oom_score_adj: Some(0),
            }))
        );
        assert_eq!(
            p.parse("oom_reaper: reaped process 4242 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"),
            Some(OomLine::Reaped(Reaped {
                pid: 4242,
                comm: "stress".into(),
                anon_rss_kb: Some(0),
                file_rss_kb: Some(0),
                shmem_rss_kb: Some(0),
            }))
        );
        assert_eq!(
            p.parse("Tasks in /lab are going to be killed due to memory.oom.group set"),
            Some(OomLine::GroupKill("/lab".into()))
        );
        assert_eq!(
            p.parse("262014 pages RAM"),
            Some(OomLine::PagesRam(262_014))
        );
        assert_eq!(p.parse("Total swap = 0kB"), Some(OomLine::TotalSwapKb(0)));
    }

    /// Names a tenant can give its process (`prctl(PR_SET_NAME)`), as `/dev/kmsg` escapes them.
    const HOSTILE: [(&str, &str); 9] = [
        ("plain", "plain"),
        ("a\"b", "a\"b"),
        ("x,oom_memcg=/", "x,oom_memcg=/"),
        ("a\\x0ab", "a\nb"),
        ("Killed process", "Killed process"),
        ("\\x1b[31m", "\x1b[31m"),
        ("\\xe5\\x90\\x8d\\xe5\\x89\\x8d", "名前"),
        ("[ 1] ) (x", "[ 1] ) (x"),
        ("t,pid=1,uid=2", "t,pid=1,uid=2"),
    ];

    #[test]
    fn hostile_comm_cannot_set_summary_keys() {
        for (escaped, comm) in HOSTILE {
            let line = format!(
                "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=0-1,3,cpuset=/,mems_allowed=0-1,\
                 oom_memcg=/lab,task_memcg=/lab/app,task={escaped},pid=4242,uid=1000"
            );
            let Some(OomLine::Summary(s)) = OomParser::new().parse(&line) else {
                panic!("{line}: not a summary")
            };
            assert_eq!(
                s,
                OomSummary {
                    constraint: "CONSTRAINT_MEMCG".into(),
                    nodemask: Some("0-1,3".into()),
                    cpuset: Some("/".into()),
                    mems_allowed: Some("0-1".into()),
                    oom_memcg: Some("/lab".into()),
                    task_memcg: Some("/lab/app".into()),
                    task: Some(comm.into()),
                    pid: Some(4242),
                    uid: Some(1000),
                },
                "{line}"
            );
        }
        // A global OOM has no oom_memcg: a comm that spells one does not supply it.
        let Some(OomLine::Summary(s)) = OomParser::new().parse(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,\
             global_oom,task_memcg=/,task=x,oom_memcg=/,pid=7,uid=0",
        ) else {
            panic!("summary")
        };
        assert_eq!(
            (
                s.oom_memcg,
                s.task_memcg.as_deref(),
                s.task.as_deref(),
                s.pid
            ),
            (None, Some("/"), Some("x,oom_memcg=/"), Some(7))
        );
    }

    #[test]
    fn hostile_comm_keeps_every_number_of_a_row_and_kill_line() {
        for (escaped, comm) in HOSTILE {
            let mut p = OomParser::new();
            p.parse("[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes swapents oom_score_adj name");
            let row = format!(
                "[  4242]  1000  4242    24000    9000     8000     1000         0   200704        3          -998 {escaped}"
            );
            let Some(OomLine::Task(r)) = p.parse(&row) else {
                panic!("{row}: not a row")
            };
            assert_eq!(
                (r.pid, r.uid, r.tgid, r.total_vm, r.rss),
                (4242, Some(1000), Some(4242), Some(24000), Some(9000)),
                "{row}"
            );
            assert_eq!(
                (
                    r.rss_anon,
                    r.rss_file,
                    r.rss_shmem,
                    r.pgtables_bytes,
                    r.swapents
                ),
                (Some(8000), Some(1000), Some(0), Some(200_704), Some(3)),
                "{row}"
            );
            assert_eq!(
                (r.oom_score_adj, r.name.as_str()),
                (Some(-998), comm),
                "{row}"
            );
            let kill = format!(
                "Memory cgroup out of memory: Killed process 4242 ({escaped}) total-vm:96000kB, \
                 anon-rss:32000kB, file-rss:4kB, shmem-rss:0kB, UID:1000 pgtables:196kB oom_score_adj:-998"
            );
            let Some(OomLine::Killed(k)) = p.parse(&kill) else {
                panic!("{kill}: not a kill line")
            };
            assert_eq!(
                (k.pid, k.comm.as_str(), k.scope),
                (4242, comm, Scope::Memcg)
            );
            assert_eq!(
                (k.anon_rss_kb, k.uid, k.pgtables_kb, k.oom_score_adj),
                (Some(32000), Some(1000), Some(196), Some(-998))
            );
            let header = format!(
                "{escaped} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=-998"
            );
            let Some(OomLine::Header(h)) = p.parse(&header) else {
                panic!("{header}: not a header")
            };
            assert_eq!((h.comm.as_str(), h.oom_score_adj), (comm, Some(-998)));
        }
    }

    #[test]
    fn kernel_numbers_do_not_overflow() {
        let mut p = OomParser::new();
        p.parse("[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem nr_ptes swapents oom_score_adj name");
        let max = u64::MAX;
        assert_eq!(
            p.parse(&format!("[ 1] 0 1 0 {max} {max} {max} {max} {max} 0 0 x")),
            None,
            "a number beyond the kernel's long degrades the row"
        );
        let Some(OomLine::Task(r)) = p.parse(
            "[ 1] 0 1 0 9 9223372036854775807 9223372036854775807 9 9223372036854775807 0 0 x",
        ) else {
            panic!("row")
        };
        assert_eq!(
            (r.rss, r.rss_anon, r.pgtables_bytes),
            (Some(9), Some(i64::MAX as u64), None)
        );
    }
}
