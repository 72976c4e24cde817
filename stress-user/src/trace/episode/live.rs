//! The live wiring: `/dev/kmsg` records and tracer events into an [`EpisodeBuilder`] on the wall
//! clock, complete episodes (of the target, if any) out.

use std::time::Instant;

use tokio::sync::mpsc;

use super::{Episode, EpisodeBuilder};
use crate::trace::{
    enrich::VictimLedger,
    kmsg::{KmsgReader, Record},
    Event,
};

/// Episodes while oomlab runs (`trace`, `run`, `serve`): `/dev/kmsg` records and tracer events in,
/// complete episodes (of the target, if any) out.
pub struct Episodes {
    builder: EpisodeBuilder,
    kmsg: Option<(KmsgReader, mpsc::Receiver<Record>)>,
    target: Option<String>,
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
        }
    }

    /// Kill lines are checked against every victim the tracer delivered, before its target
    /// filter (see [`Tracer::victim_ledger`](crate::trace::Tracer::victim_ledger)).
    pub fn use_victims(&mut self, ledger: VictimLedger) {
        self.builder.use_victims(ledger);
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
        match &self.target {
            Some(t) => eps.into_iter().filter(|e| e.in_target(t)).collect(),
            None => eps,
        }
    }
}
