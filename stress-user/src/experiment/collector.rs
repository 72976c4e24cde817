//! The run's collector: it folds the injector's `AgentEvent`s, the tracer's `Event`s, complete
//! OOM `Episode`s and the sampler's readings into what the report is built from, on the run's
//! clock, and prints each as it comes (human lines or JSON lines, rendered by `report`).

use std::{
    collections::HashMap,
    io::Write as _,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use indicatif::ProgressBar;
use serde::Serialize;

use crate::{
    inject::event::AgentEvent,
    report::{
        inject::timed_json_line,
        json_line,
        run_live::{self, candidate_table, kill_line},
        timeline::{Candidate, CgroupSample, Mark},
        OutputFormat,
    },
    size::human,
    sys::monotonic_ns,
    trace::{episode::Episode, event::Victim, Event, EventKind, OwnWorkers},
};

/// `worker`, `app:<name>` or `other`.
pub(super) fn role_of(roles: &HashMap<i32, String>, pid: i32) -> String {
    roles.get(&pid).cloned().unwrap_or_else(|| "other".into())
}

/// A victim as the tracer saw it.
#[derive(Debug, Clone, Serialize)]
pub(super) struct VictimSeen {
    pub(super) t: f64,
    pub(super) pid: i32,
    pub(super) comm: Option<String>,
    pub(super) role: String,
    pub(super) oom_score_adj: Option<i32>,
    pub(super) anon_rss_kb: Option<u64>,
    pub(super) trigger_pid: u32,
    pub(super) trigger_comm: String,
    pub(super) stage: Option<usize>,
    /// Known from the kernel log only: the tracer did not deliver its `mark_victim` (a victim
    /// gone before its cgroup could be read is dropped by the tracer's target filter on v2).
    pub(super) from_kmsg: bool,
}

/// What the run gathered, shared by the tracer's task, the sampler thread and the main thread.
pub(super) struct Collector {
    pub(super) t0: u64,
    output: OutputFormat,
    pub(super) roles: HashMap<i32, String>,
    pub(super) stage: Option<usize>,
    pub(super) victims: Vec<VictimSeen>,
    pub(super) episodes: Vec<(Episode, Option<usize>)>,
    /// Episodes already printed per stage (the first gets its full table).
    printed_tables: Vec<usize>,
    pub(super) marks: Vec<Mark>,
    pub(super) samples: Vec<CgroupSample>,
    pub(super) reclaimed_pages: u64,
    pub(super) reclaim_passes: u64,
    pub(super) host_peak: Vec<(u64, u64)>,
    pub(super) progress: Option<(ProgressBar, u64)>,
    /// The kernel's set of the run's workers: each one goes in as it starts, so a victim's
    /// event says whether it was one (an app that names itself `oomlab-worker` is not).
    pub(super) own_workers: Option<OwnWorkers>,
    stop: bool,
    /// What the run is doing (`loading the tracer`, `stage 2`…), for the report of a stop.
    pub(super) phase: String,
    /// When the run noticed a stop request (signal, closed stdout), what it was doing then and
    /// the stage it cut short.
    pub(super) interrupted: Option<(f64, String, Option<usize>)>,
}

pub(super) type Shared = Arc<Mutex<Collector>>;

pub(super) fn lock(s: &Mutex<Collector>) -> MutexGuard<'_, Collector> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl Collector {
    pub(super) fn new(t0: u64, output: OutputFormat, stages: usize) -> Shared {
        Arc::new(Mutex::new(Collector {
            t0,
            output,
            roles: HashMap::new(),
            stage: None,
            victims: Vec::new(),
            episodes: Vec::new(),
            printed_tables: vec![0; stages],
            marks: Vec::new(),
            samples: Vec::new(),
            reclaimed_pages: 0,
            reclaim_passes: 0,
            host_peak: vec![(0, 0); stages],
            progress: None,
            own_workers: None,
            stop: false,
            phase: "starting".into(),
            interrupted: None,
        }))
    }

    /// Seconds since the run's start.
    pub(super) fn t(&self) -> f64 {
        monotonic_ns().saturating_sub(self.t0) as f64 / 1e9
    }

    fn t_of(&self, ts: Duration) -> f64 {
        (ts.as_nanos() as i128 - i128::from(self.t0)) as f64 / 1e9
    }

    /// A human line (kept clear of the progress bar).
    pub(super) fn say(&self, line: &str) {
        if self.output != OutputFormat::Human {
            return;
        }
        match &self.progress {
            Some((pb, _)) => pb.println(line),
            None => crate::stop::write_stdout(|out| writeln!(out, "{line}")),
        }
    }

    /// A JSON line.
    pub(super) fn json<T: Serialize>(&self, kind: &str, value: &T) {
        if self.output == OutputFormat::Json {
            crate::stop::write_stdout(|out| json_line(out, kind, value));
        }
    }

    pub(super) fn mark(
        &mut self,
        kind: &str,
        pid: Option<i32>,
        role: Option<String>,
        label: String,
    ) {
        let t = self.t();
        let stage = self.stage;
        self.marks.push(Mark {
            t,
            kind: kind.into(),
            pid,
            role,
            label,
            stage,
        });
    }

    /// Enters a phase of the run (named in the report if a stop cuts it short).
    pub(super) fn enter(&mut self, phase: impl Into<String>) {
        self.phase = phase.into();
    }

    /// True once a stop was asked; the first time, notes when and in which phase, and says so.
    pub(super) fn check_stop(&mut self) -> bool {
        let Some(cause) = crate::stop::cause() else {
            return false;
        };
        if self.interrupted.is_none() {
            let t = self.t();
            self.interrupted = Some((t, self.phase.clone(), self.stage));
            self.mark("interrupted", None, None, cause.name());
            self.say(&run_live::interrupted_line(t, &cause.name(), &self.phase));
        }
        true
    }

    /// Asks the tracer's task to drain and end.
    pub(super) fn stop(&mut self) {
        self.stop = true;
    }

    pub(super) fn stop_asked(&self) -> bool {
        self.stop
    }

    /// An event from the injector's agent, put on the run's clock.
    pub(super) fn on_agent(&mut self, ev: &AgentEvent) {
        let t = self.t();
        match ev {
            // The worker waits for this to return before it joins the target or execs: in the
            // kernel's set before it can charge a page, and so before it can be an OOM victim.
            AgentEvent::WorkerBorn(b) => {
                if let Some(own) = &self.own_workers {
                    own.add(b.pid);
                }
                self.roles.insert(b.pid, "worker".into());
            }
            AgentEvent::WorkerStarted(w) => {
                self.roles.insert(w.pid, "worker".into());
                if w.respawn {
                    self.say(&run_live::respawn_line(t, w.pid, w.worker));
                }
                let label = format!(
                    "worker {}{}",
                    w.pid,
                    if w.respawn { " (respawn)" } else { "" }
                );
                self.mark("worker_started", Some(w.pid), Some("worker".into()), label);
            }
            AgentEvent::WorkerKilled(k) => self.mark(
                "worker_killed",
                Some(k.pid),
                Some("worker".into()),
                format!("worker {}", k.pid),
            ),
            AgentEvent::TargetReached(r) => {
                self.say(&run_live::target_reached_line(t, r));
                let label = format!("target reached ({})", human(r.requested_bytes));
                self.mark("target_reached", None, None, label);
            }
            // Expected when nothing is left to kill: the charge fails instead.
            AgentEvent::WorkerError(e) => log::info!("{t:.2}s worker {}: {}", e.pid, e.message),
            AgentEvent::TargetOpened(_) | AgentEvent::Sample(_) | AgentEvent::Summary(_) => {}
        }
        let timeline = matches!(
            ev,
            AgentEvent::WorkerStarted(_)
                | AgentEvent::WorkerKilled(_)
                | AgentEvent::TargetReached(_)
        );
        if timeline && self.output == OutputFormat::Json {
            crate::stop::write_stdout(|out| timed_json_line(out, ev, t));
        }
    }

    /// A tracer event (already filtered to the target by the tracer).
    pub(super) fn on_event(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::Victim(v) => {
                let t = self.t_of(ev.ts);
                let role = self.victim_role(v);
                // Its episode came first (the event was held up past the report's grace) and
                // counted it from the kernel log: the same kill, now with the tracer's numbers.
                if let Some(seen) = self
                    .victims
                    .iter_mut()
                    .rev()
                    .find(|x| x.pid == v.pid && x.from_kmsg && (x.t - t).abs() < 5.0)
                {
                    seen.from_kmsg = false;
                    seen.role = role;
                    seen.oom_score_adj = v.oom_score_adj;
                    seen.anon_rss_kb = v.anon_rss_kb;
                    seen.trigger_pid = v.trigger.pid;
                    seen.trigger_comm = v.trigger.comm.clone();
                    return;
                }
                let seen = VictimSeen {
                    t,
                    pid: v.pid,
                    comm: v.comm.clone(),
                    role: role.clone(),
                    oom_score_adj: v.oom_score_adj,
                    anon_rss_kb: v.anon_rss_kb,
                    trigger_pid: v.trigger.pid,
                    trigger_comm: v.trigger.comm.clone(),
                    stage: self.stage,
                    from_kmsg: false,
                };
                let source = format!("charge by pid {}", v.trigger.pid);
                self.say(&kill_line(
                    t,
                    v.pid,
                    &role,
                    v.oom_score_adj,
                    v.anon_rss_kb,
                    &source,
                ));
                self.json("oom_victim", &seen);
                self.kill_mark(t, v.pid, role, self.stage);
                self.victims.push(seen);
            }
            // Not a kill: the kernel marked a task on its way out (see `EventKind::Marked`).
            EventKind::Marked(v) => {
                let t = self.t_of(ev.ts);
                self.say(&run_live::mark_line(t, v.pid, &role_of(&self.roles, v.pid)));
                self.json("oom_marked", v);
            }
            EventKind::Reclaim(r) => {
                self.reclaimed_pages += r.nr_reclaimed;
                self.reclaim_passes += 1;
            }
            _ => {}
        }
    }

    /// A victim is a worker when the kernel found it in the run's own-worker set; the pid the
    /// injector recorded at its start is the fallback for a worker killed before it got there
    /// (and the only source without the set).
    fn victim_role(&self, v: &Victim) -> String {
        let role = role_of(&self.roles, v.pid);
        match (&self.own_workers, v.context.oomlab_worker) {
            (Some(_), true) => "worker".into(),
            (Some(_), false) if role == "worker" => {
                log::warn!(
                    "worker {} was killed before the kernel knew it: its role is the injector's record",
                    v.pid
                );
                role
            }
            _ => role,
        }
    }

    fn kill_mark(&mut self, t: f64, pid: i32, role: String, stage: Option<usize>) {
        let label = match role.strip_prefix("app:") {
            Some(name) => format!("{name} {pid}"),
            None => format!("{role} {pid}"),
        };
        self.marks.push(Mark {
            t,
            kind: "oom_kill".into(),
            pid: Some(pid),
            role: Some(role),
            label,
            stage,
        });
    }

    /// A finished OOM episode (kernel log + events): kept when it is about this target.
    pub(super) fn on_episode(&mut self, ep: Episode, cg_path: &str) {
        let in_target = ep.domain.memcg.as_deref() == Some(cg_path);
        if !(in_target || ep.victims.iter().any(|v| self.roles.contains_key(&v.pid))) {
            return;
        }
        self.kmsg_only_victims(&ep, in_target);
        let victim = ep.selected().or_else(|| ep.victims.first().map(|v| v.pid));
        let stage = victim
            .and_then(|p| self.victims.iter().rev().find(|v| v.pid == p))
            .and_then(|v| v.stage)
            .or(self.stage);
        self.print_selection(&ep, stage);
        self.json("oom_episode", &ep);
        self.episodes.push((ep, stage));
    }

    /// The episode's victims the tracer did not deliver, known from the kernel log only.
    fn kmsg_only_victims(&mut self, ep: &Episode, in_target: bool) {
        for v in &ep.victims {
            if self.victims.iter().any(|x| x.pid == v.pid)
                || !(self.roles.contains_key(&v.pid) || in_target)
            {
                continue;
            }
            // The kernel log's clock (local_clock, since boot) is CLOCK_MONOTONIC to within
            // milliseconds on these machines.
            let t = ep
                .kmsg_ts
                .map_or_else(|| self.t(), |k| k - self.t0 as f64 / 1e9);
            let role = role_of(&self.roles, v.pid);
            self.say(&kill_line(
                t,
                v.pid,
                &role,
                v.oom_score_adj,
                v.anon_rss_kb,
                "from the kernel log",
            ));
            self.kill_mark(t, v.pid, role.clone(), None);
            self.victims.push(VictimSeen {
                t,
                pid: v.pid,
                comm: v.comm.clone(),
                role,
                oom_score_adj: v.oom_score_adj,
                anon_rss_kb: v.anon_rss_kb,
                trigger_pid: ep.trigger.pid.map_or(0, |p| p as u32),
                trigger_comm: ep.trigger.comm.clone().unwrap_or_default(),
                stage: None,
                from_kmsg: true,
            });
        }
    }

    /// The first episode of a stage is printed with its whole table; later ones in one line.
    fn print_selection(&mut self, ep: &Episode, stage: Option<usize>) {
        let Some(rk) = &ep.selection else {
            return;
        };
        let idx = stage.unwrap_or(0);
        let first = self.printed_tables.get(idx).is_some_and(|n| *n == 0);
        if let Some(n) = self.printed_tables.get_mut(idx) {
            *n += 1;
        }
        if first && self.output == OutputFormat::Human {
            for line in candidate_table(rk.totalpages, &candidates(ep, &self.roles)) {
                self.say(&line);
            }
        }
        if let Some(d) = &rk.disagreement {
            self.say(&format!("          note: {d}"));
        }
    }
}

/// The episode's candidate table with each process's role in the run.
pub(super) fn candidates(ep: &Episode, roles: &HashMap<i32, String>) -> Vec<Candidate> {
    let Some(rk) = &ep.selection else {
        return Vec::new();
    };
    rk.candidates
        .iter()
        .map(|c| Candidate {
            pid: c.pid,
            name: c.name.clone(),
            role: role_of(roles, c.pid),
            rss_kb: c.rss_pages.unwrap_or(0) * 4,
            swap_kb: c.swapents.unwrap_or(0) * 4,
            pgtables_kb: c.pgtables_bytes.unwrap_or(0) / 1024,
            oom_score_adj: c.oom_score_adj.unwrap_or(0),
            badness: c.points,
            rank: c.rank,
            chosen: c.chosen,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles() {
        let mut r = HashMap::new();
        r.insert(5, "app:node".to_string());
        r.insert(6, "worker".to_string());
        assert_eq!(role_of(&r, 5), "app:node");
        assert_eq!(role_of(&r, 7), "other");
    }
}
