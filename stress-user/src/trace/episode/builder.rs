//! Groups kernel-log records and tracer events into episodes. The kernel serialises OOM reports
//! (`oom_lock`), so one report's lines arrive together; a report is complete after its `Killed
//! process` line(s) and a short quiet period. Under a ratelimited storm the kernel prints only
//! `Killed process`, and when a victim is already exiting it prints nothing: such kills still
//! become episodes, from what is known.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, Instant},
};

use super::{Domain, Episode, EpisodeVictim, KmsgState, ReaperNote, Trigger};
use crate::{
    sys::page_size,
    trace::{
        badness::{self, Ranking},
        enrich::VictimLedger,
        event::{ContainerNames, ReaperStep, Task, Victim},
        kmsg::{
            Killed, MemCounter, OomHeader, OomLine, OomParser, OomSummary, Reaped, Record, Scope,
            TaskRow,
        },
        scoreboard::AdjTimeline,
        Event, EventKind,
    },
};

/// How long a report stays open after its last line (group-kill lines, the reaper).
pub const QUIET: Duration = Duration::from_millis(300);
/// How long a `mark_victim` event waits for its report's `Killed process` line. Then the
/// episode closes with what it has: the tracepoint is the proof of the kill, and a report that
/// is ratelimited, late, cut or garbled must neither delay nor split it. With the tracer's
/// 100 ms poll an episode is out within a second of its kill.
pub const VICTIM_GRACE: Duration = Duration::from_millis(700);
/// A report that never reaches `Killed process` (no killable task, aborted) is closed after this.
pub const STALE: Duration = Duration::from_secs(5);
/// How often the `oom_score_adj` timeline drops the processes that exited. A pid found gone at
/// two looks in a row goes, so a victim's history outlives it long enough for its episode.
pub const ADJ_PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A report being assembled from kernel-log lines.
#[derive(Debug, Default)]
struct Report {
    first_ts: Option<Duration>,
    header: Option<OomHeader>,
    trigger_task: Option<(i32, String)>,
    memory: Vec<MemCounter>,
    stats_memcg: Option<String>,
    rows: Vec<TaskRow>,
    summary: Option<OomSummary>,
    group: Option<String>,
    killed: Vec<Killed>,
    reaped: Vec<Reaped>,
    last: Option<Instant>,
}

impl Report {
    fn has_kill(&self) -> bool {
        !self.killed.is_empty()
    }

    fn victim_pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.killed.iter().map(|k| k.pid)
    }

    /// A line of the report's body (not a header, kill or reaper line). After the kill only
    /// group-kill lines belong to this report.
    fn push(&mut self, line: OomLine, now: Instant) {
        if self.has_kill() && !matches!(line, OomLine::GroupKill(_)) {
            return;
        }
        self.last = Some(now);
        let page_kb = page_size() / 1024;
        match line {
            OomLine::TriggerTask { pid, comm } => self.trigger_task = Some((pid, comm)),
            OomLine::Memory(m) => self.memory.push(m),
            OomLine::MemcgStats(p) => self.stats_memcg = Some(p),
            OomLine::Task(t) => self.rows.push(t),
            OomLine::Summary(s) => self.summary = Some(s),
            OomLine::GroupKill(g) => self.group = Some(g),
            OomLine::PagesRam(n) => self
                .memory
                .push(limit("pages_ram", n.saturating_mul(page_kb))),
            OomLine::PagesReserved(n) => {
                self.memory
                    .push(limit("pages_reserved", n.saturating_mul(page_kb)));
            }
            OomLine::TotalSwapKb(kb) => self.memory.push(limit("total_swap", kb)),
            OomLine::Header(_)
            | OomLine::Killed(_)
            | OomLine::Reaped(_)
            | OomLine::TasksHeader(_) => {}
        }
    }
}

/// A global OOM's `show_mem` figure, kept beside the memcg counters as a limit.
fn limit(name: &str, limit_kb: u64) -> MemCounter {
    MemCounter {
        name: name.into(),
        usage_kb: 0,
        limit_kb,
        failcnt: 0,
    }
}

/// Groups kernel-log records and tracer events into episodes. Time is passed in (`now`) so the
/// grouping is testable without sleeping.
#[derive(Debug)]
pub struct EpisodeBuilder {
    next_id: u64,
    parser: OomParser,
    current: Option<Report>,
    closed: VecDeque<Report>,
    victims: Vec<(Instant, Event)>,
    reaper: Vec<(Instant, i32, ReaperStep)>,
    /// Victims of episodes already emitted: a `mark_victim` event arriving after its report
    /// closed is dropped instead of becoming a second episode.
    emitted: VecDeque<(Instant, i32)>,
    adj: AdjTimeline,
    /// Pids of `adj` found gone at the last prune.
    adj_gone: HashSet<i32>,
    last_adj_prune: Option<Instant>,
    /// Whether a pid exists (`/proc`; replaced in tests).
    alive: fn(i32) -> bool,
    total_swap_pages: u64,
    node_totalpages: Option<u64>,
    /// Live (see [`EpisodeBuilder::verify_kills`]): a `Killed process` line is believed only
    /// when an `oom:mark_victim` event names its pid.
    verify_kills: bool,
    /// Pids of the `mark_victim` events of the last [`STALE`], claimed or not.
    traced_pids: VecDeque<(Instant, i32)>,
    /// The tracer's record of every victim, also those its target filter dropped.
    ledger: Option<VictimLedger>,
    /// `Killed process` lines no `mark_victim` event confirmed, skipped.
    unmatched_kills: u64,
}

fn pid_alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(crate::trace::enrich::pid_alive)
}

impl EpisodeBuilder {
    /// `total_swap_pages`: the node's swap (bounds a memcg's swap share in `totalpages`);
    /// `node_totalpages`: RAM + swap pages, used for a global OOM whose report lacks `show_mem`.
    pub fn new(total_swap_pages: u64, node_totalpages: Option<u64>) -> Self {
        EpisodeBuilder {
            next_id: 1,
            parser: OomParser::new(),
            current: None,
            closed: VecDeque::new(),
            victims: Vec::new(),
            reaper: Vec::new(),
            emitted: VecDeque::new(),
            adj: AdjTimeline::default(),
            adj_gone: HashSet::new(),
            last_adj_prune: None,
            alive: pid_alive,
            total_swap_pages,
            node_totalpages,
            verify_kills: false,
            traced_pids: VecDeque::new(),
            ledger: None,
            unmatched_kills: 0,
        }
    }

    /// While the tracer runs beside the kernel log, a `Killed process` line must name the pid of
    /// a live `oom:mark_victim` event (the kernel marks the victim before it prints the line):
    /// one that does not is forged or mismatched, counted and skipped, and a report left with no
    /// kill makes no episode. A report waits up to [`VICTIM_GRACE`] for its victims' events,
    /// which come through another ring. A saved log has no events: there the kill line is
    /// checked against its report's own pid only.
    pub fn verify_kills(&mut self) {
        self.verify_kills = true;
    }

    /// Also believe kill lines of victims the tracer's target filter dropped (they are kills
    /// all the same; the episode's target check decides what is shown).
    pub fn use_victims(&mut self, ledger: VictimLedger) {
        self.ledger = Some(ledger);
    }

    /// `Killed process` lines skipped because no `mark_victim` named their pid.
    pub fn unmatched_kills(&self) -> u64 {
        self.unmatched_kills
    }

    /// Reads the node's swap and RAM from `/proc/meminfo` (zeros when it cannot be read).
    pub fn for_this_node() -> Self {
        let m = crate::sys::MemInfo::read().unwrap_or_default();
        let page_kb = page_size() / 1024;
        let swap = m.swap_total_kb.unwrap_or(0) / page_kb;
        let ram = m.total_kb.map(|t| t / page_kb + swap);
        Self::new(swap, ram)
    }

    /// The `oom_score_adj` timeline fed by the events seen so far.
    pub fn adj_timeline(&self) -> &AdjTimeline {
        &self.adj
    }

    /// Feeds one `/dev/kmsg` record. Only the kernel's own records count: anything user space
    /// wrote to `/dev/kmsg` carries another facility, whatever its text says.
    pub fn push_record(&mut self, rec: &Record, now: Instant) {
        if !rec.from_kernel() {
            return;
        }
        if let Some(l) = self.parser.parse(rec.line()) {
            self.push_line(l, rec.ts, now);
        }
    }

    fn push_line(&mut self, line: OomLine, ts: Duration, now: Instant) {
        match line {
            OomLine::Header(h) => {
                self.close_current();
                self.current = Some(Report {
                    first_ts: Some(ts),
                    header: Some(h),
                    last: Some(now),
                    ..Report::default()
                });
            }
            OomLine::Killed(k) => self.push_kill(k, ts, now),
            OomLine::Reaped(p) => {
                // The reaper runs after the report, possibly while the next one prints.
                let owner = self
                    .current
                    .iter_mut()
                    .chain(self.closed.iter_mut())
                    .find(|r| r.victim_pids().any(|v| v == p.pid));
                if let Some(r) = owner {
                    r.reaped.push(p);
                }
            }
            other => {
                if let Some(r) = self.current.as_mut() {
                    r.push(other, now);
                }
            }
        }
    }

    fn push_kill(&mut self, k: Killed, ts: Duration, now: Instant) {
        // The report names its victim (`oom-kill:…,pid=N`) before the kill line: a kill line
        // for another pid is not this report's, and no report prints one.
        let named = self
            .current
            .as_ref()
            .filter(|r| !r.has_kill())
            .and_then(|r| r.summary.as_ref()?.pid);
        if named.is_some_and(|p| p != k.pid) {
            log::debug!(
                "kill line for {} inside the report of {named:?} ignored",
                k.pid
            );
            return;
        }
        // A second kill without a group-kill line is the next (ratelimited, header-less) OOM;
        // so is a kill with no report open.
        let continues = self
            .current
            .as_ref()
            .is_some_and(|r| !r.has_kill() || r.group.is_some());
        if !continues {
            self.close_current();
        }
        let r = self.current.get_or_insert_with(|| Report {
            first_ts: Some(ts),
            ..Report::default()
        });
        r.killed.push(k);
        r.last = Some(now);
    }

    fn close_current(&mut self) {
        if let Some(r) = self.current.take() {
            self.closed.push_back(r);
        }
    }

    /// Feeds one tracer event; events other than victims, reaper steps and adj updates are
    /// ignored.
    pub fn push_event(&mut self, ev: &Event, now: Instant) {
        match &ev.kind {
            EventKind::Victim(v) => {
                self.traced_pids.push_back((now, v.pid));
                self.victims.push((now, ev.clone()));
            }
            EventKind::AdjUpdate(a) => self.adj.record(ev.ts, a),
            EventKind::Reaper(r) => self.reaper.push((now, r.pid, r.step)),
            _ => {}
        }
    }

    /// Episodes complete at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Episode> {
        let quiet =
            |r: &Report, limit: Duration| r.last.is_none_or(|t| now.duration_since(t) >= limit);
        if let Some(r) = &self.current {
            if (r.has_kill() && quiet(r, QUIET)) || quiet(r, STALE) {
                self.close_current();
            }
        }
        while self
            .traced_pids
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= STALE)
        {
            self.traced_pids.pop_front();
        }
        let mut out = Vec::new();
        // A closed report still collects reaper lines until its quiet period ends, and (live)
        // waits a little for the mark_victim events of its kill lines.
        let (verify, traced, ledger) = (self.verify_kills, &self.traced_pids, &self.ledger);
        // Settled once every victim's event is here, or will never come (the filter dropped
        // it); a kept event still in flight is waited for, up to the grace.
        let settled = |r: &Report| {
            !verify
                || r.victim_pids().all(|p| {
                    traced.iter().any(|(_, t)| *t == p)
                        || ledger.as_ref().is_some_and(|l| l.dropped(p))
                })
                || quiet(r, VICTIM_GRACE)
        };
        let mut ready = Vec::new();
        while let Some(r) = self.closed.pop_front_if(|r| quiet(r, QUIET) && settled(r)) {
            ready.push(r);
        }
        for r in ready {
            let Some(r) = self.confirmed(r) else {
                continue;
            };
            if r.has_kill() && r.victim_pids().all(|p| self.was_emitted(p)) {
                // The kill line came after its victim's episode had closed without it.
                log::debug!(
                    "late kernel-log report for {:?} dropped",
                    r.killed.first().map(|k| k.pid)
                );
                continue;
            }
            out.push(self.finish(&r, None));
        }
        // Victims no report claimed: the kernel printed nothing (victim already exiting) or the
        // log is not readable.
        let reported: Vec<i32> = self
            .current
            .iter()
            .chain(self.closed.iter())
            .flat_map(|r| r.victim_pids().collect::<Vec<_>>())
            .collect();
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut self.victims)
            .into_iter()
            .partition(|(t, ev)| {
                now.duration_since(*t) >= VICTIM_GRACE && !reported.contains(&victim_pid(ev))
            });
        self.victims = young;
        for ep in &out {
            self.emitted.extend(ep.victims.iter().map(|v| (now, v.pid)));
        }
        while self
            .emitted
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= STALE)
        {
            self.emitted.pop_front();
        }
        for (_, ev) in old {
            let pid = victim_pid(&ev);
            if self.was_emitted(pid) {
                log::debug!("mark_victim for {pid} arrived after its episode was emitted");
                continue;
            }
            let ep = match self.take_printing(pid) {
                // The kernel prints the header and table before marking the victim and the
                // kill line after: the report still being printed is this kill's, cut short.
                Some(r) => {
                    self.victims.push((now, ev));
                    self.finish(&r, Some(pid))
                }
                None => self.episode_of_event(&ev),
            };
            self.emitted.extend(ep.victims.iter().map(|v| (now, v.pid)));
            out.push(ep);
        }
        // Reaper steps of victims no episode claimed are dropped after a while.
        self.reaper
            .retain(|(t, _, _)| now.duration_since(*t) < STALE);
        match self.last_adj_prune {
            Some(t) if now.duration_since(t) < ADJ_PRUNE_EVERY => {}
            Some(_) => {
                self.last_adj_prune = Some(now);
                self.prune_adj();
            }
            None => self.last_adj_prune = Some(now),
        }
        out
    }

    /// The report without the kill lines no `mark_victim` confirmed (live only); `None` when
    /// that leaves a report that had kills with none.
    fn confirmed(&mut self, mut r: Report) -> Option<Report> {
        if !self.verify_kills || !r.has_kill() {
            return Some(r);
        }
        let (traced, ledger) = (&self.traced_pids, self.ledger.as_ref());
        let before = r.killed.len();
        r.killed.retain(|k| {
            let ok = is_traced(traced, ledger, k.pid);
            if !ok {
                log::warn!(
                    "kernel-log `Killed process {}` names no oom:mark_victim victim: skipped",
                    k.pid
                );
            }
            ok
        });
        let dropped = before - r.killed.len();
        self.unmatched_kills = self.unmatched_kills.saturating_add(dropped as u64);
        r.has_kill().then_some(r)
    }

    fn was_emitted(&self, pid: i32) -> bool {
        self.emitted.iter().any(|(_, p)| *p == pid)
    }

    /// The report being printed, if it has no kill line yet and does not name another victim.
    fn take_printing(&mut self, pid: i32) -> Option<Report> {
        let r = self.current.as_ref()?;
        let named = r.summary.as_ref().and_then(|s| s.pid);
        if r.has_kill() || named.is_some_and(|n| n != pid) {
            return None;
        }
        self.current.take()
    }

    /// Drops the `oom_score_adj` history of processes that exited (found gone at this prune and
    /// the one before), except victims still waiting for their episode: a node starts processes
    /// all day, and most set their `oom_score_adj`.
    fn prune_adj(&mut self) {
        let waiting: HashSet<i32> = self
            .victims
            .iter()
            .map(|(_, ev)| victim_pid(ev))
            .chain(
                self.current
                    .iter()
                    .chain(self.closed.iter())
                    .flat_map(Report::victim_pids),
            )
            .collect();
        let alive = self.alive;
        let before = std::mem::take(&mut self.adj_gone);
        let mut gone = HashSet::new();
        self.adj.retain(|pid| {
            if waiting.contains(&pid) || alive(pid) {
                true
            } else if before.contains(&pid) {
                false
            } else {
                gone.insert(pid);
                true
            }
        });
        self.adj_gone = gone;
    }

    /// Everything still open, as episodes (at the end of a trace).
    pub fn flush(&mut self) -> Vec<Episode> {
        self.close_current();
        let mut out = Vec::new();
        while let Some(r) = self.closed.pop_front() {
            if let Some(r) = self.confirmed(r) {
                out.push(self.finish(&r, None));
            }
        }
        for (_, ev) in std::mem::take(&mut self.victims) {
            out.push(self.episode_of_event(&ev));
        }
        out
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.saturating_add(1);
        id
    }

    /// Builds the episode from a report and the events of its victims (and of `claim`, the
    /// victim of a report cut before its kill line).
    fn finish(&mut self, r: &Report, claim: Option<i32>) -> Episode {
        let mut ep = Episode {
            kmsg_ts: r.first_ts.map(|t| t.as_secs_f64()),
            trigger: report_trigger(r),
            domain: report_domain(r),
            constraint: r.summary.as_ref().map(|s| s.constraint.clone()),
            memory: r.memory.clone(),
            victims: logged_victims(r),
            group_kill: r.group.clone(),
            kill_lines: r.killed.len(),
            kmsg: if r.header.is_some() && r.has_kill() {
                KmsgState::Complete
            } else {
                KmsgState::Truncated
            },
            ..blank(self.next_id())
        };
        // The tracepoint side: claim this report's mark_victim events.
        let pids: Vec<i32> = ep.victims.iter().map(|v| v.pid).chain(claim).collect();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.victims)
            .into_iter()
            .partition(|(_, ev)| pids.contains(&victim_pid(ev)));
        self.victims = rest;
        for (_, ev) in mine {
            self.merge_event(&mut ep, &ev);
        }
        if ep.selected().is_none() {
            if let Some(v) = ep.victims.first_mut() {
                v.selected = true;
                if v.cgroup.is_none() {
                    v.cgroup = r.summary.as_ref().and_then(|s| s.task_memcg.clone());
                }
            }
        }
        self.attach_reaper(&mut ep);
        ep.reaper.extend(r.reaped.iter().map(|p| ReaperNote {
            pid: p.pid,
            step: "reaped".into(),
            anon_rss_kb: p.anon_rss_kb,
        }));
        ep.selection = self.ranking(r, &ep);
        self.fill_adj(&mut ep);
        ep
    }

    /// oomlab's ranking of the report's candidate table, when it has one and `totalpages` is
    /// known.
    fn ranking(&self, r: &Report, ep: &Episode) -> Option<Ranking> {
        if r.rows.is_empty() {
            return None;
        }
        let totalpages = match ep.domain.scope {
            Some(Scope::Memcg) => badness::memcg_totalpages(&r.memory, self.total_swap_pages),
            _ => global_totalpages(&r.memory).or(self.node_totalpages),
        }?;
        let chosen = ep.selected().or(r.summary.as_ref().and_then(|s| s.pid));
        Some(badness::rank(&r.rows, totalpages, chosen))
    }

    /// An episode from a `mark_victim` event no report claimed.
    fn episode_of_event(&mut self, ev: &Event) -> Episode {
        let mut ep = blank(self.next_id());
        self.merge_event(&mut ep, ev);
        if let Some(v) = ep.victims.first_mut() {
            v.selected = true;
        }
        self.attach_reaper(&mut ep);
        self.fill_adj(&mut ep);
        ep
    }

    fn merge_event(&self, ep: &mut Episode, ev: &Event) {
        let EventKind::Victim(v) = &ev.kind else {
            return;
        };
        if ep.event_ts.is_none() {
            ep.event_ts = Some(ev.ts.as_secs_f64());
        }
        fill_trigger(&mut ep.trigger, &v.trigger);
        match ep.victims.iter_mut().find(|e| e.pid == v.pid) {
            Some(e) => {
                e.traced = true;
                e.comm = e.comm.take().or_else(|| v.comm.clone());
                e.oom_score_adj = e.oom_score_adj.or(v.oom_score_adj);
                if v.context.cgroup.is_some() {
                    e.cgroup = e.cgroup.take().or_else(|| v.context.cgroup.clone());
                }
                e.container = (*v.context.container).clone();
            }
            None => ep.victims.push(victim_episode_of_event(v)),
        }
    }

    fn attach_reaper(&mut self, ep: &mut Episode) {
        let pids: Vec<i32> = ep.victims.iter().map(|v| v.pid).collect();
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reaper)
            .into_iter()
            .partition(|(_, pid, _)| pids.contains(pid));
        self.reaper = rest;
        for (_, pid, step) in mine {
            let step = serde_json::to_value(step)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            ep.reaper.push(ReaperNote {
                pid,
                step,
                anon_rss_kb: None,
            });
        }
    }

    fn fill_adj(&self, ep: &mut Episode) {
        ep.ts = ep.event_ts.or(ep.kmsg_ts).unwrap_or(0.0);
        for v in &mut ep.victims {
            v.adj_history = self.adj.history(v.pid).to_vec();
        }
    }
}

/// Whether a `mark_victim` named `pid` lately: an event the builder got, or one the tracer's
/// filter dropped.
fn is_traced(traced: &VecDeque<(Instant, i32)>, ledger: Option<&VictimLedger>, pid: i32) -> bool {
    traced.iter().any(|(_, p)| *p == pid) || ledger.is_some_and(|l| l.contains(pid))
}

/// An episode with an id and nothing known yet.
pub(super) fn blank(id: u64) -> Episode {
    Episode {
        id,
        ts: 0.0,
        kmsg_ts: None,
        event_ts: None,
        trigger: Trigger::default(),
        domain: Domain {
            scope: None,
            memcg: None,
        },
        constraint: None,
        memory: Vec::new(),
        victims: Vec::new(),
        group_kill: None,
        kill_lines: 0,
        reaper: Vec::new(),
        selection: None,
        kmsg: KmsgState::Missing,
    }
}

/// The invoking task as the report names it: header, then `dump_stack`'s `CPU: … PID:` line.
fn report_trigger(r: &Report) -> Trigger {
    let mut t = Trigger::default();
    if let Some(h) = &r.header {
        t.comm = Some(h.comm.clone());
        t.gfp_mask = Some(h.gfp_mask.clone());
        t.order = h.order;
        t.oom_score_adj = h.oom_score_adj;
    }
    if let Some((pid, comm)) = &r.trigger_task {
        t.pid = Some(*pid);
        t.comm.get_or_insert_with(|| comm.clone());
    }
    t
}

/// The scope from the kill line (else the constraint), the memcg from the summary (else the
/// memcg stats header, else the group kill).
fn report_domain(r: &Report) -> Domain {
    let scope = r.killed.first().map(|k| k.scope).or_else(|| {
        r.summary.as_ref().map(|s| {
            if s.constraint == "CONSTRAINT_MEMCG" {
                Scope::Memcg
            } else {
                Scope::Global
            }
        })
    });
    let memcg = r
        .summary
        .as_ref()
        .and_then(|s| s.oom_memcg.clone())
        .or_else(|| r.stats_memcg.clone())
        .or_else(|| r.group.clone());
    Domain { scope, memcg }
}

/// One victim per killed pid, in the order logged: the first is the selected one (the others
/// died with it in a group kill, which logs the selected one twice).
fn logged_victims(r: &Report) -> Vec<EpisodeVictim> {
    let mut victims: Vec<EpisodeVictim> = Vec::new();
    for (i, k) in r.killed.iter().enumerate() {
        if victims.iter().any(|v| v.pid == k.pid) {
            continue;
        }
        victims.push(EpisodeVictim {
            pid: k.pid,
            comm: Some(k.comm.clone()),
            oom_score_adj: k.oom_score_adj,
            anon_rss_kb: k.anon_rss_kb,
            file_rss_kb: k.file_rss_kb,
            shmem_rss_kb: k.shmem_rss_kb,
            pgtables_kb: k.pgtables_kb,
            selected: i == 0,
            logged: true,
            traced: false,
            cgroup: (i == 0)
                .then(|| r.summary.as_ref().and_then(|s| s.task_memcg.clone()))
                .flatten(),
            adj_history: Vec::new(),
            container: ContainerNames::default(),
        });
    }
    victims
}

fn victim_pid(ev: &Event) -> i32 {
    match &ev.kind {
        EventKind::Victim(v) => v.pid,
        _ => 0,
    }
}

fn fill_trigger(t: &mut Trigger, task: &Task) {
    t.pid.get_or_insert(i32::try_from(task.pid).unwrap_or(0));
    t.comm.get_or_insert_with(|| task.comm.clone());
    t.cgroup_id.get_or_insert(task.cgroup_id);
}

fn victim_episode_of_event(v: &Victim) -> EpisodeVictim {
    EpisodeVictim {
        pid: v.pid,
        comm: v.comm.clone(),
        oom_score_adj: v.oom_score_adj,
        anon_rss_kb: v.anon_rss_kb,
        file_rss_kb: v.file_rss_kb,
        shmem_rss_kb: v.shmem_rss_kb,
        pgtables_kb: v.pgtables_kb,
        selected: false,
        logged: false,
        traced: true,
        cgroup: v.context.cgroup.clone(),
        adj_history: Vec::new(),
        container: (*v.context.container).clone(),
    }
}

fn global_totalpages(memory: &[MemCounter]) -> Option<u64> {
    let pages = |name: &str| {
        memory
            .iter()
            .find(|c| c.name == name)
            .map(|c| badness::kb_to_pages(c.limit_kb))
    };
    Some(badness::global_totalpages(
        pages("pages_ram")?,
        pages("pages_reserved").unwrap_or(0),
        pages("total_swap").unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{
        event::{AdjUpdate, Reaper, VictimContext},
        kmsg::parse_dump,
        testing::{fixture_episode, kmsg_fixture as fixture},
    };

    fn task(pid: u32, comm: &str) -> Task {
        Task {
            tgid: pid,
            pid,
            comm: comm.into(),
            cgroup_id: 77,
        }
    }

    fn victim_event(pid: i32, trigger: u32) -> Event {
        Event {
            ts: Duration::from_secs(10),
            read_at: Duration::ZERO,
            enriched_at: Duration::ZERO,
            written: false,
            cpu: 0,
            kind: EventKind::Victim(Victim {
                pid,
                comm: Some("oomlab".into()),
                uid: Some(0),
                total_vm_kb: None,
                anon_rss_kb: Some(8576),
                file_rss_kb: None,
                shmem_rss_kb: None,
                pgtables_kb: None,
                oom_score_adj: Some(500),
                trigger: task(trigger, "oomlab"),
                in_filter: false,
                own_worker: false,
                kill_sent: true,
                context: VictimContext::default(),
            }),
        }
    }

    fn feed(b: &mut EpisodeBuilder, name: &str, now: Instant) {
        for rec in parse_dump(&fixture(name)) {
            b.push_record(&rec, now);
        }
    }

    fn adj_event(pid: i32, adj: i32) -> Event {
        Event {
            ts: Duration::from_secs(9),
            read_at: Duration::ZERO,
            enriched_at: Duration::ZERO,
            written: false,
            cpu: 0,
            kind: EventKind::AdjUpdate(AdjUpdate {
                pid,
                comm: "app".into(),
                oom_score_adj: adj,
                writer: task(1, "systemd"),
            }),
        }
    }

    #[test]
    fn adj_history_of_exited_processes_is_dropped() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut b = EpisodeBuilder::new(0, None);
        // 1 runs on; 7 and 9 have exited.
        b.alive = |pid| pid == 1;
        for pid in [1, 7, 9] {
            b.push_event(&adj_event(pid, 300), t0);
        }
        let kept = |b: &EpisodeBuilder| {
            [1, 7, 9]
                .into_iter()
                .filter(|p| !b.adj_timeline().history(*p).is_empty())
                .collect::<Vec<_>>()
        };
        assert!(b.poll(t0).is_empty());
        // First look: 7 and 9 found gone, kept for now.
        assert!(b.poll(at(10)).is_empty());
        assert_eq!(kept(&b), [1, 7, 9]);
        // 9 was killed: its mark_victim waits for its report; the second look drops 7 only.
        b.push_event(&victim_event(9, 1), at(20) - Duration::from_millis(100));
        assert!(b.poll(at(20)).is_empty());
        assert_eq!(kept(&b), [1, 9]);
        let eps = b.poll(at(22));
        assert_eq!(eps.len(), 1, "{eps:#?}");
        assert_eq!(eps[0].victims[0].pid, 9);
        assert_eq!(eps[0].victims[0].adj_history.len(), 1, "{eps:#?}");
        // Its episode is out: two looks later 9 is gone too.
        b.poll(at(30));
        b.poll(at(40));
        assert_eq!(kept(&b), [1]);
        assert_eq!(b.adj_timeline().len(), 1);
    }

    #[test]
    fn host_report_and_tracepoint_make_one_episode() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        b.push_event(&adj_event(19495, 500), t0);
        b.push_event(&victim_event(19495, 19655), t0);
        feed(&mut b, "6.18-host-memcg.txt", t0);
        assert!(
            b.poll(t0 + Duration::from_millis(100)).is_empty(),
            "still in the quiet period"
        );
        b.push_event(
            &Event {
                ts: Duration::from_secs(10),
                read_at: Duration::ZERO,
                enriched_at: Duration::ZERO,
                written: false,
                cpu: 0,
                kind: EventKind::Reaper(Reaper {
                    step: ReaperStep::Finish,
                    pid: 19495,
                    task: task(30, "oom_reaper"),
                }),
            },
            t0 + Duration::from_millis(150),
        );
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let ep = &eps[0];
        assert_eq!(ep.id, 1);
        assert_eq!(ep.domain.scope, Some(Scope::Memcg));
        assert_eq!(
            ep.domain.memcg.as_deref(),
            Some("/oomlab-test/victims-fixture-18259")
        );
        assert_eq!(ep.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(
            (ep.trigger.pid, ep.trigger.comm.as_deref()),
            (Some(19655), Some("oomlab"))
        );
        assert_eq!(ep.trigger.cgroup_id, Some(77), "from the tracepoint");
        assert_eq!(ep.victims.len(), 1);
        let v = &ep.victims[0];
        assert_eq!(
            (v.pid, v.selected, v.logged, v.traced),
            (19495, true, true, true)
        );
        assert_eq!(
            v.cgroup.as_deref(),
            Some("/oomlab-test/victims-fixture-18259")
        );
        assert_eq!(v.adj_history.len(), 1);
        assert_eq!(ep.reaper.len(), 1);
        let sel = ep.selection.as_ref().expect("candidate table");
        assert_eq!(
            (sel.totalpages, sel.predicted_pid, sel.kernel_pid),
            (8192, Some(19495), Some(19495))
        );
        assert_eq!(sel.candidates.len(), 4);
        assert!(b.flush().is_empty(), "the event was claimed by the report");
    }

    #[test]
    fn group_kill_is_one_episode_with_every_victim() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        feed(&mut b, "6.12-debian-memcg-group.txt", t0);
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let ep = &eps[0];
        assert_eq!(ep.group_kill.as_deref(), Some("/lab"));
        assert_eq!(
            ep.kill_lines, 5,
            "the kernel's oom_kill counter went up by 5"
        );
        let pids: Vec<i32> = ep.victims.iter().map(|v| v.pid).collect();
        assert_eq!(pids, [137, 138, 136, 141]);
        assert_eq!(ep.selected(), Some(137));
        assert_eq!(ep.selection.as_ref().and_then(|s| s.agrees()), Some(true));
    }

    #[test]
    fn consecutive_reports_and_ratelimited_kills_split() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        feed(&mut b, "6.1-debian-memcg.txt", t0);
        feed(&mut b, "6.12-debian-memcg.txt", t0);
        // Ratelimited: only the kill line is printed.
        b.push_record(
            &Record::parse("3,900,20000000,-;Memory cgroup out of memory: Killed process 500 (hog) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0").expect("record"),
            t0,
        );
        b.push_record(
            &Record::parse("6,901,20000100,-;oom_reaper: reaped process 500 (hog), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB").expect("record"),
            t0,
        );
        let eps = b.poll(t0 + QUIET);
        let summary: Vec<(u64, Option<i32>, bool)> = eps
            .iter()
            .map(|e| (e.id, e.selected(), e.selection.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                (1, Some(88), true),
                (2, Some(139), true),
                (3, Some(500), false)
            ]
        );
        assert_eq!(eps[2].reaper[0].step, "reaped");
        assert_eq!(eps[2].kmsg, KmsgState::Truncated, "ratelimited: no header");
        assert_eq!(eps[2].domain.scope, Some(Scope::Memcg));
    }

    #[test]
    fn a_victim_without_report_becomes_an_episode_after_the_grace() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        b.push_event(&victim_event(4242, 99), t0);
        assert!(b.poll(t0 + Duration::from_millis(500)).is_empty());
        let eps = b.poll(t0 + VICTIM_GRACE);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].selected(), Some(4242));
        assert!(eps[0].victims[0].traced && !eps[0].victims[0].logged);
        assert_eq!(eps[0].trigger.pid, Some(99));
        assert!(b.flush().is_empty());
    }

    #[test]
    fn a_report_without_kill_is_closed_when_stale() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        b.push_record(
            &Record::parse("4,1,1,-;bash invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=0, oom_score_adj=0").expect("record"),
            t0,
        );
        assert!(b.poll(t0 + QUIET).is_empty());
        let eps = b.poll(t0 + STALE);
        assert_eq!(eps.len(), 1);
        assert!(eps[0].victims.is_empty());
        assert_eq!(
            eps[0].trigger.gfp_mask.as_deref(),
            Some("0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO)")
        );
    }

    #[test]
    fn target_filter_and_json() {
        let ep = fixture_episode("6.18-host-memcg.txt");
        assert!(ep.in_target("/oomlab-test"));
        assert!(ep.in_target("oomlab-test/victims-fixture-18259/"));
        assert!(ep.in_target("/"));
        assert!(
            !ep.in_target("/oomlab-test/victims-fixture-1825"),
            "a sibling prefix is not a parent"
        );
        assert!(!ep.in_target("/other"));
        let v = serde_json::to_value(&ep).expect("json");
        assert_eq!(v["selection"]["candidates"][0]["pid"], 19495);
        assert_eq!(v["domain"]["scope"], "memcg");
    }

    #[test]
    fn global_oom_uses_ram_minus_reserved_and_ignores_the_later_show_mem() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        feed(&mut b, "6.12-debian-global.txt", t0);
        let eps = b.poll(t0 + STALE);
        assert_eq!(
            eps.len(),
            1,
            "the allocation-failure warning is no episode: {eps:#?}"
        );
        let ep = &eps[0];
        assert_eq!(ep.domain.scope, Some(Scope::Global));
        assert_eq!(
            (ep.domain.memcg.as_deref(), ep.constraint.as_deref()),
            (None, Some("CONSTRAINT_NONE"))
        );
        let sel = ep.selection.as_ref().expect("table");
        // 130942 pages RAM − 12186 reserved = 118756 = the VM's MemTotal (475024 kB) / 4.
        assert_eq!(sel.totalpages, 118_756);
        // 138: 72240 + 638976/4096 (156) = 72396; 134: 9082 + 28 + 500 × 118 = 68110.
        let pts: Vec<(i32, Option<i64>)> =
            sel.candidates.iter().map(|c| (c.pid, c.points)).collect();
        assert_eq!(pts[..2], [(138, Some(72_396)), (134, Some(68_110))]);
        assert_eq!((sel.kernel_pid, sel.agrees()), (Some(138), Some(true)));
    }

    #[test]
    fn a_late_mark_victim_does_not_make_a_second_episode() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        feed(&mut b, "6.18-host-memcg.txt", t0);
        assert_eq!(b.poll(t0 + QUIET).len(), 1);
        b.push_event(&victim_event(19495, 19655), t0 + QUIET);
        assert!(b.poll(t0 + QUIET + VICTIM_GRACE).is_empty());
        // Long after, the same pid (reused) is a new victim again.
        b.push_event(&victim_event(19495, 1), t0 + QUIET * 2 + STALE);
        assert_eq!(b.poll(t0 + QUIET * 2 + STALE + VICTIM_GRACE).len(), 1);
    }

    #[test]
    fn a_report_cut_before_its_kill_line_closes_with_its_victim() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        let recs = parse_dump(&fixture("6.18-host-memcg.txt"));
        let (head, kill) = recs.split_at(recs.len() - 1);
        for r in head {
            b.push_record(r, t0);
        }
        b.push_event(&victim_event(19495, 19655), t0);
        assert!(b.poll(t0 + VICTIM_GRACE / 2).is_empty(), "waits a little");
        // The kill line is late (a slow console) or never comes: the wait is bounded.
        let eps = b.poll(t0 + VICTIM_GRACE);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let ep = &eps[0];
        assert_eq!(ep.kmsg, KmsgState::Truncated);
        assert_eq!(ep.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(ep.selected(), Some(19495));
        let v = &ep.victims[0];
        assert_eq!((v.pid, v.logged, v.traced), (19495, false, true));
        assert_eq!(
            v.cgroup.as_deref(),
            Some("/oomlab-test/victims-fixture-18259")
        );
        assert!(ep.selection.is_some(), "the candidate table was printed");
        // The kill line, 3 s late, is no second episode.
        let late = t0 + Duration::from_secs(3);
        b.push_record(&kill[0], late);
        assert!(b.poll(late + QUIET).is_empty());
        assert!(b.flush().is_empty());
    }

    #[test]
    fn kmsg_state_says_what_the_log_gave() {
        assert_eq!(
            fixture_episode("6.18-host-memcg.txt").kmsg,
            KmsgState::Complete
        );
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        b.push_event(&victim_event(4242, 99), t0);
        let eps = b.poll(t0 + VICTIM_GRACE);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].kmsg, KmsgState::Missing);
        let v = serde_json::to_value(&eps[0]).expect("json");
        assert_eq!(v["kmsg"], "missing");
    }

    #[test]
    fn forged_user_lines_make_no_episode() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        // The same report, as `echo … > /dev/kmsg` logs it: facility user (prio 8 + level).
        for rec in parse_dump(&fixture("6.18-host-memcg.txt")) {
            let forged = Record { facility: 1, ..rec };
            b.push_record(&forged, t0);
        }
        assert!(b.poll(t0 + STALE).is_empty());
        assert!(b.flush().is_empty());
    }

    #[test]
    fn a_comm_with_an_escaped_newline_and_keys_is_one_episode() {
        let t0 = Instant::now();
        let mut b = EpisodeBuilder::new(0, None);
        let text = fixture("6.18-host-memcg.txt")
            .replace(
                "task=oomlab,pid=19495",
                "task=x,oom_memcg=/\\x0ab,pid=19495",
            )
            .replace("19495 (oomlab)", "19495 (x,oom_memcg=/\\x0ab)");
        for rec in parse_dump(&text) {
            b.push_record(&rec, t0);
        }
        b.push_event(&victim_event(19495, 19655), t0);
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let ep = &eps[0];
        assert_eq!(ep.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(
            ep.domain.memcg.as_deref(),
            Some("/oomlab-test/victims-fixture-18259")
        );
        let v = &ep.victims[0];
        assert_eq!((v.pid, v.logged, v.traced), (19495, true, true));
        assert_eq!(v.comm.as_deref(), Some("x,oom_memcg=/\nb"));
        assert!(b.flush().is_empty());
    }

    #[test]
    fn live_kill_lines_need_a_mark_victim_of_their_pid() {
        let t0 = Instant::now();
        let live = || {
            let mut b = EpisodeBuilder::new(0, None);
            b.verify_kills();
            b
        };
        // The kill line's victim was traced (its event may come a little after the line).
        let mut b = live();
        feed(&mut b, "6.18-host-memcg.txt", t0);
        assert!(b.poll(t0 + QUIET).is_empty(), "waits for the mark_victim");
        b.push_event(&victim_event(19495, 19655), t0 + QUIET);
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        assert_eq!(eps[0].victims[0].pid, 19495);
        assert!(eps[0].victims[0].logged && eps[0].victims[0].traced);
        assert_eq!(b.unmatched_kills(), 0);

        // No mark_victim names the line's pid (a forged or mismatched line): after the wait
        // the line is skipped and counted; the report, left with no kill, is no episode. The
        // victim that was traced gets its episode from the tracepoint.
        let mut b = live();
        feed(&mut b, "6.18-host-memcg.txt", t0);
        b.push_event(&victim_event(4242, 99), t0);
        let eps = b.poll(t0 + VICTIM_GRACE);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        assert_eq!(eps[0].selected(), Some(4242));
        assert!(!eps[0].victims[0].logged);
        assert_eq!(b.unmatched_kills(), 1);
        assert!(b.flush().is_empty());

        // A group kill: each task's line is kept only with its own event.
        let mut b = live();
        feed(&mut b, "6.12-debian-memcg-group.txt", t0);
        for pid in [137, 138, 136] {
            b.push_event(&victim_event(pid, 137), t0);
        }
        assert!(b.poll(t0 + QUIET).is_empty(), "141's event may still come");
        let eps = b.poll(t0 + VICTIM_GRACE);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let pids: Vec<i32> = eps[0].victims.iter().map(|v| v.pid).collect();
        assert_eq!(pids, [137, 138, 136]);
        assert_eq!(eps[0].group_kill.as_deref(), Some("/lab"));
        assert_eq!(b.unmatched_kills(), 1, "141's line");

        // The tracer's filter dropped the victim's event (on v2, gone before its cgroup could
        // be read): its ledger still has the kill, so the line stands, as a logged victim.
        let mut b = live();
        let ledger = VictimLedger::default();
        ledger.record(19495, t0, false);
        b.use_victims(ledger);
        feed(&mut b, "6.18-host-memcg.txt", t0);
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let v = &eps[0].victims[0];
        assert_eq!((v.pid, v.logged, v.traced), (19495, true, false));
        assert_eq!(b.unmatched_kills(), 0);

        // The filter kept the event, but it is still in flight behind the kernel log (a
        // starved reader): the report waits for it and the episode has the traced victim, so
        // nobody counts the kill twice (once from the log, once from the late event).
        let mut b = live();
        let ledger = VictimLedger::default();
        ledger.record(19495, t0, true);
        b.use_victims(ledger);
        feed(&mut b, "6.18-host-memcg.txt", t0);
        assert!(b.poll(t0 + QUIET).is_empty(), "waits for the kept event");
        b.push_event(&victim_event(19495, 19655), t0 + QUIET);
        let eps = b.poll(t0 + QUIET);
        assert_eq!(eps.len(), 1, "{eps:#?}");
        let v = &eps[0].victims[0];
        assert_eq!((v.pid, v.logged, v.traced), (19495, true, true));

        // A saved log (explain) has no events: the report's own pid is the check.
        let mut b = EpisodeBuilder::new(0, None);
        feed(&mut b, "6.18-host-memcg.txt", t0);
        assert_eq!(b.poll(t0 + QUIET).len(), 1);
        assert_eq!(b.unmatched_kills(), 0);
    }
}
