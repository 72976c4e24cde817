//! The live wiring: `/dev/kmsg` records and tracer events into an [`EpisodeBuilder`] on the wall
//! clock, complete episodes (of the target, if any) out.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Episode, EpisodeBuilder};
use crate::{
    runtime::cache::Names,
    trace::{
        enrich::{self, VictimLedger},
        kmsg::{KmsgReader, Record},
        Event,
    },
};

/// Episodes while oomlab runs (`trace`, `run`, `serve`): `/dev/kmsg` records and tracer events in,
/// complete episodes (of the target, if any) out.
pub struct Episodes {
    builder: EpisodeBuilder,
    kmsg: Option<(KmsgReader, mpsc::Receiver<Record>)>,
    target: Option<String>,
    /// The runtimes' names, for victims whose cgroup only the kernel log told.
    names: Option<Names>,
}

impl Episodes {
    /// Opens `/dev/kmsg` from its end. Without it (no permission) episodes come from the
    /// tracepoints alone, without a candidate table; the reason is logged.
    pub fn start(target: Option<String>) -> Episodes {
        let kmsg = match KmsgReader::start() {
            Ok(k) => Some(k),
            Err(e) => {
                log::warn!("OOM episodes without the kernel's candidate table: {e}");
                None
            }
        };
        let mut builder = EpisodeBuilder::for_this_node();
        builder.verify_kills();
        Episodes {
            builder,
            kmsg,
            target,
            names: None,
        }
    }

    /// Kill lines are checked against every victim the tracer delivered, before its target
    /// filter (see [`Tracer::victim_ledger`](crate::trace::Tracer::victim_ledger)).
    pub fn use_victims(&mut self, ledger: VictimLedger) {
        self.builder.use_victims(ledger);
    }

    /// Names the containers of victims whose cgroup came from the kernel log's `task_memcg=`
    /// (gone before the tracer could read their /proc entry) or whose container the name table
    /// did not know yet when the tracer saw them.
    pub fn use_names(&mut self, names: Option<Names>) {
        self.names = names;
    }

    /// `Killed process` lines skipped because no `oom:mark_victim` named their pid.
    pub fn unmatched_kills(&self) -> u64 {
        self.builder.unmatched_kills()
    }

    pub fn has_kmsg(&self) -> bool {
        self.kmsg.is_some()
    }

    /// The next kernel-log record (pending forever without `/dev/kmsg`).
    pub async fn record(&mut self) -> Option<Record> {
        match &mut self.kmsg {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    pub fn push_record(&mut self, rec: &Record) {
        self.builder.push_record(rec, Instant::now());
    }

    pub fn push_event(&mut self, ev: &Event) {
        self.builder.push_event(ev, Instant::now());
    }

    /// Complete episodes. Kernel-log records already read are taken in first: on a starved
    /// process the poll tick and a victim's `Killed process` line can be ready at once, and the
    /// victim's grace must not run out while its line waits in the channel (seen on a 6.1 guest
    /// under host load: `constraint="unknown"` for a kill whose report had been read).
    pub fn poll(&mut self) -> Vec<Episode> {
        self.take_queued_records();
        let eps = self.builder.poll(Instant::now());
        self.keep_target(eps)
    }

    /// At the end of the trace: reads what the kernel log still holds, then closes everything.
    pub fn flush(&mut self) -> Vec<Episode> {
        self.take_queued_records();
        let eps = self.builder.flush();
        self.keep_target(eps)
    }

    fn take_queued_records(&mut self) {
        let now = Instant::now();
        if let Some((_, rx)) = &mut self.kmsg {
            while let Ok(rec) = rx.try_recv() {
                self.builder.push_record(&rec, now);
            }
        }
    }

    fn keep_target(&self, eps: Vec<Episode>) -> Vec<Episode> {
        let mut eps: Vec<Episode> = match &self.target {
            Some(t) => eps.into_iter().filter(|e| e.in_target(t)).collect(),
            None => eps,
        };
        if let Some(names) = &self.names {
            for ep in &mut eps {
                name_victims(names, ep);
            }
        }
        eps
    }
}

/// Victims with a cgroup and no container yet get one from the name table (a read, no wait:
/// an episode closes well after a refresh that its victim's cgroup asked for).
fn name_victims(names: &Names, ep: &mut Episode) {
    for v in &mut ep.victims {
        let unnamed = v.container.runtime.is_none() || v.container.names_missing.is_some();
        let (Some(cg), true) = (v.cgroup.as_deref(), unnamed) else {
            continue;
        };
        let Ok(pid) = u32::try_from(v.pid) else {
            continue;
        };
        let named = enrich::container_of(names, pid, cg, Duration::ZERO);
        if named.names.runtime.is_some() || v.container.runtime.is_none() {
            v.container = named.names;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        runtime::{Container, Fixed, PodRef, RuntimeKind, Runtimes},
        trace::{episode::EpisodeVictim, event::ContainerNames},
    };

    fn victim(pid: i32, cgroup: Option<&str>) -> EpisodeVictim {
        EpisodeVictim {
            pid,
            comm: Some("dd".into()),
            oom_score_adj: None,
            anon_rss_kb: None,
            file_rss_kb: None,
            shmem_rss_kb: None,
            pgtables_kb: None,
            selected: true,
            logged: true,
            traced: true,
            cgroup: cgroup.map(str::to_string),
            adj_history: Vec::new(),
            container: ContainerNames::default(),
        }
    }

    /// CI's prometheus test: a victim exec'd into a container was gone before its /proc entry
    /// was read, its cgroup came from the kernel log, and it was counted without pod and
    /// container.
    #[test]
    fn victims_known_by_the_kernel_log_only_get_their_container() {
        let names = Names::once(&Runtimes::from_resolvers(vec![Box::new(Fixed(vec![
            Container {
                runtime: RuntimeKind::Containerd,
                runtime_namespace: Some("k8s.io".into()),
                id: "db".into(),
                name: Some("pg".into()),
                pod: Some(PodRef {
                    namespace: "shop".into(),
                    name: "db-0".into(),
                }),
                pod_uid: None,
                image: None,
                init_pid: Some(42),
                running: true,
                cgroup: Some("/ctd/db".into()),
                sandbox: false,
            },
        ]))]));
        let mut ep = super::super::builder::blank(1);
        ep.victims = vec![
            victim(7, Some("/ctd/db")),
            victim(8, Some("/elsewhere")),
            victim(9, None),
        ];
        name_victims(&names, &mut ep);
        let got = &ep.victims[0].container;
        assert_eq!(
            (
                got.runtime,
                got.namespace.as_deref(),
                got.pod.as_deref(),
                got.container_name.as_deref(),
                got.container_init
            ),
            (
                Some("containerd"),
                Some("shop"),
                Some("db-0"),
                Some("pg"),
                Some(false)
            )
        );
        assert_eq!(ep.victims[1].container, ContainerNames::default());
        assert_eq!(ep.victims[2].container, ContainerNames::default());
    }
}
