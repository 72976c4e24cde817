//! Sinks of the injector's [`AgentEvent`] stream: the JSON lines and the human lines that
//! `oomlab inject` prints, and the timed JSON line `oomlab run` prints for the same events.

use std::io::{self, Write};

use super::{json_line, OutputFormat};
use crate::{
    cgroup::PsiScope,
    inject::event::{
        AgentEvent, PressureSample, Sample, Summary, TargetOpened, WorkerKilled, WorkerStarted,
    },
    size::human,
};

/// The `type` of an event's JSON line; `None` for the event that has no line.
pub fn json_type(ev: &AgentEvent) -> Option<&'static str> {
    Some(match ev {
        AgentEvent::TargetOpened(_) | AgentEvent::WorkerBorn(_) => return None,
        AgentEvent::WorkerStarted(_) => "worker_started",
        AgentEvent::WorkerKilled(_) => "worker_killed",
        AgentEvent::TargetReached(_) => "target_reached",
        AgentEvent::Sample(_) => "sample",
        AgentEvent::WorkerError(_) => "worker_error",
        AgentEvent::Summary(_) => "summary",
    })
}

/// An event as `oomlab run --output json` prints it: its record and the run's clock `t`, the
/// keys in sorted order (the record goes through a JSON object, whose keys are kept sorted).
pub fn timed_json_line(out: &mut impl Write, ev: &AgentEvent, t: f64) -> io::Result<()> {
    let Some(kind) = json_type(ev) else {
        return Ok(());
    };
    let mut v = serde_json::to_value(ev).map_err(io::Error::other)?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("t".into(), t.into());
    }
    json_line(out, kind, &v)
}

/// What `oomlab inject` prints on stdout, one line per event, in the chosen format.
#[derive(Debug)]
pub struct InjectOutput {
    format: OutputFormat,
    /// Named by the human lines; known from the first event on.
    target: Option<TargetOpened>,
}

impl InjectOutput {
    pub fn new(format: OutputFormat) -> Self {
        InjectOutput {
            format,
            target: None,
        }
    }

    /// Prints the event's line on stdout; a closed stdout asks the agent to stop.
    pub fn write(&mut self, ev: &AgentEvent) {
        crate::stop::write_stdout(|out| self.write_to(out, ev));
    }

    fn write_to(&mut self, out: &mut impl Write, ev: &AgentEvent) -> io::Result<()> {
        if let AgentEvent::TargetOpened(t) = ev {
            self.target = Some(t.clone());
        }
        match self.format {
            OutputFormat::Json => match json_type(ev) {
                Some(kind) => json_line(out, kind, ev),
                None => Ok(()),
            },
            OutputFormat::Human => match self.human(ev) {
                Some(line) => writeln!(out, "{line}").and_then(|()| out.flush()),
                None => Ok(()),
            },
        }
    }

    fn human(&self, ev: &AgentEvent) -> Option<String> {
        let cgroup = self.target.as_ref().map_or("?", |t| t.cgroup.as_str());
        Some(match ev {
            AgentEvent::TargetOpened(_) | AgentEvent::WorkerBorn(_) => return None,
            AgentEvent::WorkerStarted(w) => worker_started(w, cgroup),
            AgentEvent::WorkerKilled(k) => worker_killed(k),
            AgentEvent::TargetReached(r) => match r.working_set_bytes {
                None => format!(
                    "target reached in {:.2} s: requested {}, charged {}",
                    r.seconds,
                    human(r.requested_bytes),
                    human(r.charged_bytes)
                ),
                Some(ws) => format!("working set reached {} in {:.2} s", human(ws), r.seconds),
            },
            AgentEvent::Sample(s) => self.sample(s),
            AgentEvent::WorkerError(e) => {
                format!("worker {} (pid {}): {}", e.worker, e.pid, e.message)
            }
            AgentEvent::Summary(s) => self.summary(s),
        })
    }

    fn sample(&self, s: &Sample) -> String {
        // The limit as it was when the run began.
        let limit = self.target.as_ref().and_then(|t| t.limit_bytes);
        if let Some(p) = &s.pressure_hold {
            return pressure_sample(s, p, limit);
        }
        format!(
            "{:>6.1}s  requested {}  charged {}  working set {}  usage {} / {}  workers {}/{}  oom kills {}",
            s.elapsed_s,
            human(s.requested_bytes),
            human(s.charged_bytes),
            human(s.working_set_bytes),
            human(s.usage_bytes),
            limit.map_or("unlimited".into(), human),
            s.workers_alive,
            s.workers,
            s.oom_kills
        )
    }

    fn summary(&self, s: &Summary) -> String {
        let pressure = match &self.target {
            Some(t) => s.pressure.describe(t.version),
            None => "?".into(),
        };
        if let Some(p) = &s.pressure_hold {
            let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} %"));
            return format!(
                "summary: {} held{}: reached (±20 %) {}, mean after {}, mean |error| {} (p95 {}), backoffs {}, oomlab CPU {:.2} s ({:.1} % of one CPU), oom kills {}, stopped by {}\npressure: {pressure}",
                p.pressure_target,
                scope_note(p.psi_scope),
                p.score
                    .seconds_to_pressure
                    .map_or("never".into(), |t| format!("in {t:.0} s")),
                pct(p.score.pressure_mean),
                pct(p.score.pressure_abs_error_mean).replace(" %", " pts"),
                pct(p.score.pressure_abs_error_p95).replace(" %", " pts"),
                p.backoffs,
                p.oomlab_cpu_s,
                p.oomlab_cpu_pct,
                s.oom_kills,
                s.stopped_by,
            );
        }
        format!(
            "summary: requested {}, charged {} ({:.1}%), target {}, worker kills {}, respawns {}, oom kills {}, stopped by {}\npressure: {pressure}",
            human(s.requested_bytes),
            human(s.charged_bytes),
            s.accuracy * 100.0,
            s.seconds_to_target
                .map_or("not reached".into(), |t| format!("reached in {t:.2} s")),
            s.worker_kills,
            s.respawns,
            s.oom_kills,
            s.stopped_by,
        )
    }
}

/// Said on every line of a --node-pressure run: the level is the node's, not the target's.
fn scope_note(scope: PsiScope) -> &'static str {
    match scope {
        PsiScope::Cgroup => "",
        PsiScope::Node => " [node PSI: /proc/pressure/memory]",
    }
}

fn pressure_sample(s: &Sample, p: &PressureSample, limit: Option<u64>) -> String {
    format!(
        "{:>6.1}s  PSI some {:.1} %  full {:.1} % (last {:.0} s; target {}){}  squeeze {}  room {}  cycling {} at {} pages/s{}  usage {} / {}  oomlab CPU {:.0} %",
        s.elapsed_s,
        p.psi_some_pct,
        p.psi_full_pct,
        p.psi_window_s,
        p.pressure_target,
        scope_note(p.psi_scope),
        human(p.squeeze_bytes),
        human(p.room_bytes),
        human(p.cycle_set_bytes),
        p.cycle_pages_per_s,
        // Said only when the cycler falls well short of the pace asked (a starved CPU).
        if (p.cycle_pages_made_per_s as f64) < 0.7 * p.cycle_pages_per_s as f64 {
            format!(" (made {})", p.cycle_pages_made_per_s)
        } else {
            String::new()
        },
        human(s.usage_bytes),
        limit.map_or("unlimited".into(), human),
        p.oomlab_cpu_pct,
    )
}

fn worker_started(w: &WorkerStarted, cgroup: &str) -> String {
    format!(
        "worker {} started: pid {}{} in {cgroup}",
        w.worker,
        w.pid,
        if w.respawn { " (respawn)" } else { "" },
    )
}

fn worker_killed(k: &WorkerKilled) -> String {
    format!(
        "worker {} (pid {}) {}{}, it held {}",
        k.worker,
        k.pid,
        k.signal.as_deref().map_or_else(
            || format!("exited with {:?}", k.exit_code),
            |s| format!("killed by {s}")
        ),
        if k.oom_kill { " (OOM kill)" } else { "" },
        human(k.held_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::Version,
        inject::{event::TargetReached, spawn::Birth},
    };

    const MIB: u64 = 1 << 20;

    fn opened() -> AgentEvent {
        AgentEvent::TargetOpened(TargetOpened {
            cgroup: "/oomlab/lab".into(),
            version: Version::V1,
            limit_bytes: Some(300 * MIB),
        })
    }

    fn events() -> Vec<AgentEvent> {
        vec![
            opened(),
            AgentEvent::WorkerStarted(WorkerStarted {
                worker: 0,
                pid: 26235,
                born: Birth::Join,
                respawn: true,
                elapsed_s: 0.013305744,
            }),
            AgentEvent::Sample(Sample {
                elapsed_s: 0.020835842,
                requested_bytes: 60 * MIB,
                charged_bytes: 3 * MIB,
                held_bytes: 0,
                working_set_bytes: 3 * MIB,
                usage_bytes: 3 * MIB,
                limit_bytes: Some(200 * MIB),
                workers_alive: 2,
                workers: 2,
                oom_kills: 0,
                pressure_hold: None,
            }),
            AgentEvent::WorkerKilled(WorkerKilled {
                worker: 0,
                pid: 26362,
                signal: Some("SIGKILL".into()),
                exit_code: None,
                oom_kill: true,
                held_bytes: 64 * MIB,
                elapsed_s: 0.114190851,
            }),
            AgentEvent::TargetReached(TargetReached {
                seconds: 0.48,
                requested_bytes: 60 * MIB,
                charged_bytes: 60 * MIB,
                working_set_bytes: None,
            }),
        ]
    }

    fn render(format: OutputFormat) -> String {
        let mut sink = InjectOutput::new(format);
        let mut out = Vec::new();
        for ev in events() {
            sink.write_to(&mut out, &ev).expect("written");
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn human_lines() {
        assert_eq!(
            render(OutputFormat::Human),
            "worker 0 started: pid 26235 (respawn) in /oomlab/lab\n\
             \x20  0.0s  requested 60.0 MiB  charged 3.0 MiB  working set 3.0 MiB  usage 3.0 MiB / 300.0 MiB  workers 2/2  oom kills 0\n\
             worker 0 (pid 26362) killed by SIGKILL (OOM kill), it held 64.0 MiB\n\
             target reached in 0.48 s: requested 60.0 MiB, charged 60.0 MiB\n"
        );
    }

    #[test]
    fn json_lines_keep_the_records_field_order() {
        let text = render(OutputFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "the target has no line: {text}");
        assert_eq!(
            lines[0],
            r#"{"type":"worker_started","worker":0,"pid":26235,"born":"join","respawn":true,"elapsed_s":0.013305744}"#
        );
        assert_eq!(
            lines[2],
            r#"{"type":"worker_killed","worker":0,"pid":26362,"signal":"SIGKILL","exit_code":null,"oom_kill":true,"held_bytes":67108864,"elapsed_s":0.114190851}"#
        );
        assert_eq!(
            lines[3],
            r#"{"type":"target_reached","seconds":0.48,"requested_bytes":62914560,"charged_bytes":62914560}"#
        );
    }

    #[test]
    fn timed_lines_sort_their_keys() {
        let mut out = Vec::new();
        timed_json_line(&mut out, &events()[1], 0.295556022).expect("written");
        timed_json_line(&mut out, &opened(), 1.0).expect("nothing to write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"type\":\"worker_started\",\"born\":\"join\",\"elapsed_s\":0.013305744,\"pid\":26235,\"respawn\":true,\"t\":0.295556022,\"worker\":0}\n"
        );
    }
}
