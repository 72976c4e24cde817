//! The tracer's side of a run: the tracer on the target, and a task that drives the pump and
//! hands its events and complete OOM episodes to the collector until the run asks it to stop.

use std::time::Duration;

use tokio::time::Interval;

use super::{
    collector::{lock, Shared},
    runner::RunError,
};
use crate::{
    cgroup::MemCgroup,
    trace::{
        episode::{Episode, Episodes},
        pump::{drive, Consumer, Pump},
        Event, TraceOptions, Tracer,
    },
};

/// How often the tracer's task looks whether the run asked it to stop.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Starts the tracer on the target and the task that feeds the collector from it.
pub(super) fn start_tracer(
    rt: &tokio::runtime::Runtime,
    cg: &MemCgroup,
    shared: &Shared,
    names: crate::runtime::cache::Names,
) -> Result<(Tracer, bool, tokio::task::JoinHandle<()>), RunError> {
    let _enter = rt.enter();
    let (tracer, rx) = Tracer::start(&TraceOptions {
        target: Some(cg.clone()),
        own_workers: true,
        names: Some(names.clone()),
        ..TraceOptions::default()
    })
    .map_err(|e| RunError::Failed(format!("starting the tracer: {e}")))?;
    lock(shared).own_workers = tracer.own_workers();
    // Opened before anything is injected, so no OOM report of the run is missed.
    let mut episodes = Episodes::start(None);
    episodes.use_victims(tracer.victim_ledger());
    episodes.use_names(Some(names));
    let mut pump = Pump::new(rx, Some(episodes));
    let kmsg_ok = pump.has_kmsg();
    let (shared, cg_path) = (shared.clone(), cg.path());
    // Stop is asked for through the collector; once it is, the pump drains what a kill just
    // before it left in the ring buffer and /dev/kmsg, then closes the open episodes.
    let feed = rt.spawn(async move {
        let mut feed = TraceFeed {
            shared,
            cg_path,
            stop_check: tokio::time::interval(STOP_CHECK),
        };
        let _ = drive(&mut pump, &mut feed).await;
    });
    Ok((tracer, kmsg_ok, feed))
}

/// The tracer's side of the run: hands what the pump gathers to the collector, and asks the
/// pump to drain once the collector is told to stop.
struct TraceFeed {
    shared: Shared,
    cg_path: String,
    stop_check: Interval,
}

impl Consumer for TraceFeed {
    type Error = std::convert::Infallible;
    type Wake = ();

    async fn wait(&mut self, stopping: bool) {
        if stopping {
            std::future::pending::<()>().await;
        }
        self.stop_check.tick().await;
    }

    async fn woke(&mut self, (): (), pump: &mut Pump) -> Result<(), Self::Error> {
        if lock(&self.shared).stop_asked() {
            pump.stop();
        }
        Ok(())
    }

    fn events(&mut self, batch: &[Event]) -> Result<(), Self::Error> {
        let mut s = lock(&self.shared);
        for ev in batch {
            s.on_event(ev);
        }
        Ok(())
    }

    fn episode(&mut self, ep: Episode) -> Result<(), Self::Error> {
        lock(&self.shared).on_episode(ep, &self.cg_path);
        Ok(())
    }
}
