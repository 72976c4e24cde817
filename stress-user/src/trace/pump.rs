//! The consumer side every long-running command shares (`trace`, `run`, `serve`): tracer events
//! and `/dev/kmsg` records in, batches of events and complete OOM episodes out, and an orderly
//! end. [`drive`] is the loop around it, with the command's own timers and signals beside it.
//!
//! Ending is the delicate part. When the end is asked for, what the kernel produced just before
//! may still be in the ring buffer, the tracer's lanes or `/dev/kmsg` (a victim's `Killed
//! process` line lands a little after its `mark_victim` event). So after [`Pump::stop`] events
//! and records are read on until both have been quiet for [`DRAIN_QUIET`] (at most
//! [`DRAIN_MAX`]); then the open episodes are closed and handed out, and [`Pump::next`] returns
//! `None`.

use std::{collections::VecDeque, future::Future, time::Duration};

use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::trace::{
    episode::{Episode, Episodes},
    Event, Events,
};

/// How long the tracer and the kernel log must be quiet before the drain ends.
pub const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The most a drain may take.
pub const DRAIN_MAX: Duration = Duration::from_secs(1);
/// How often complete episodes are looked for.
const EPISODE_POLL: Duration = Duration::from_millis(100);
/// The most events handed out at once.
pub const BATCH: usize = 64;

/// What [`Pump::next`] hands out.
#[derive(Debug)]
pub enum Pumped {
    /// Events in arrival order (OOM events first when both lanes had some), at most [`BATCH`].
    Events(Vec<Event>),
    /// A complete OOM episode (of the target, when `Episodes` has one).
    Episode(Box<Episode>),
}

/// Why the pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// [`Pump::stop`] was called and the drain finished.
    Stopped,
    /// The tracer's reader ended (it failed or its programs went away).
    TracerClosed,
}

pub struct Pump {
    events: Events,
    episodes: Option<Episodes>,
    poll: Interval,
    ready: VecDeque<Episode>,
    drain_end: Option<Instant>,
    /// While draining: when the tracer and the kernel log will have been quiet for
    /// [`DRAIN_QUIET`]. Kept here, not in `next`, so a `select!` that cancels `next` does not
    /// restart the quiet period.
    quiet_until: Option<Instant>,
    end: Option<End>,
}

impl Pump {
    /// `episodes`: `None` when OOM episodes are not built (OOM events not traced).
    pub fn new(events: Events, episodes: Option<Episodes>) -> Pump {
        let mut poll = tokio::time::interval(EPISODE_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pump {
            events,
            episodes,
            poll,
            ready: VecDeque::new(),
            drain_end: None,
            quiet_until: None,
            end: None,
        }
    }

    /// Starts the drain; [`Pump::next`] returns `None` once it is over. Idempotent.
    pub fn stop(&mut self) {
        if self.drain_end.is_none() && self.end.is_none() {
            let now = Instant::now();
            self.drain_end = Some(now + DRAIN_MAX);
            self.quiet_until = Some(now + DRAIN_QUIET);
            // What the kernel published without waking the reader is read now, inside the
            // quiet period, not at the reader's next poll timeout.
            self.events.flush();
        }
    }

    /// True from [`Pump::stop`] (or the tracer's end) on.
    pub fn stopping(&self) -> bool {
        self.drain_end.is_some() || self.end.is_some()
    }

    /// Why the pump ended; `None` while it runs.
    pub fn end(&self) -> Option<End> {
        self.end.filter(|_| self.ready.is_empty())
    }

    pub fn has_kmsg(&self) -> bool {
        self.episodes.as_ref().is_some_and(Episodes::has_kmsg)
    }

    /// The next batch of events or complete episode; `None` once the drain after
    /// [`Pump::stop`] is over or the tracer has ended, and every episode has been handed out.
    /// Cancel-safe: every branch changes `self` only after its future completed, so it can sit
    /// in a `tokio::select!` beside a command's own timers and signals.
    pub async fn next(&mut self) -> Option<Pumped> {
        loop {
            if let Some(ep) = self.ready.pop_front() {
                return Some(Pumped::Episode(Box::new(ep)));
            }
            if self.end.is_some() {
                return None;
            }
            let draining = self.drain_end.is_some();
            let drain_over = self.drain_end.zip(self.quiet_until).map(|(a, b)| a.min(b));
            let mut batch = Vec::new();
            tokio::select! {
                n = self.events.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        self.finish(End::TracerClosed);
                        continue;
                    }
                    if let Some(e) = &mut self.episodes {
                        for ev in &batch {
                            e.push_event(ev);
                        }
                    }
                    self.not_quiet();
                    return Some(Pumped::Events(batch));
                }
                Some(rec) = next_record(&mut self.episodes) => {
                    if let Some(e) = &mut self.episodes {
                        e.push_record(&rec);
                    }
                    self.not_quiet();
                }
                _ = self.poll.tick(), if !draining => {
                    if let Some(e) = &mut self.episodes {
                        self.ready.extend(e.poll());
                    }
                }
                _ = sleep_until(drain_over) => self.finish(End::Stopped),
            }
        }
    }

    /// Something came in: while draining, the quiet period starts again.
    fn not_quiet(&mut self) {
        if self.quiet_until.is_some() {
            self.quiet_until = Some(Instant::now() + DRAIN_QUIET);
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(e) = &mut self.episodes {
            self.ready.extend(e.flush());
        }
        self.drain_end = None;
        self.quiet_until = None;
        self.end = Some(end);
    }
}

/// The next kernel-log record; pending forever when no episodes are built or `/dev/kmsg` could
/// not be opened.
async fn next_record(episodes: &mut Option<Episodes>) -> Option<crate::trace::kmsg::Record> {
    match episodes {
        Some(e) => e.record().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `t`; pending forever when there is none (for an optional deadline in a
/// `tokio::select!`).
pub async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A long-running command's side of [`drive`]: what it does with what the pump hands out, and
/// what else it waits for (its timers, signals, stop requests).
pub trait Consumer {
    /// What ends the loop early (a sink that can no longer write).
    type Error;
    /// What [`Consumer::wait`] saw.
    type Wake;

    /// Waits for the command's own timers and signals. It must be cancel-safe: it is dropped
    /// whenever the pump hands something out first. While `stopping` (the pump is draining),
    /// stop requests and anything the drain must not wait for should be left out; when nothing
    /// is left to wait for, it never resolves.
    fn wait(&mut self, stopping: bool) -> impl Future<Output = Self::Wake>;

    /// Acts on what [`Consumer::wait`] saw; a stop request calls [`Pump::stop`].
    fn woke(
        &mut self,
        wake: Self::Wake,
        pump: &mut Pump,
    ) -> impl Future<Output = Result<(), Self::Error>>;

    /// A batch of events, in the order [`Pump::next`] handed them out.
    fn events(&mut self, batch: &[Event]) -> Result<(), Self::Error>;

    /// A complete OOM episode.
    fn episode(&mut self, ep: Episode) -> Result<(), Self::Error>;

    /// After each turn of the loop that handed something out or woke the consumer, e.g. to
    /// send what the turn gathered at once.
    fn turned(&mut self) {}
}

/// Runs `pump` until it ends (the drain after [`Pump::stop`] is over, or the tracer closed),
/// handing what it pumps to `consumer` and waiting for the consumer's own wake-ups beside it.
/// Why the pump ended, or the consumer's first error.
pub async fn drive<C: Consumer>(pump: &mut Pump, consumer: &mut C) -> Result<End, C::Error> {
    loop {
        let stopping = pump.stopping();
        tokio::select! {
            item = pump.next() => match item {
                Some(Pumped::Events(batch)) => consumer.events(&batch)?,
                Some(Pumped::Episode(ep)) => consumer.episode(*ep)?,
                None => break,
            },
            wake = consumer.wait(stopping) => consumer.woke(wake, pump).await?,
        }
        consumer.turned();
    }
    Ok(pump.end().unwrap_or(End::Stopped))
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;
    use crate::trace::testing::{adj, pids};

    fn pump() -> (mpsc::Sender<Event>, mpsc::Sender<Event>, Pump) {
        let (tx_oom, oom) = mpsc::channel(256);
        let (tx, rest) = mpsc::channel(256);
        (tx_oom, tx, Pump::new(Events::from_lanes(oom, rest), None))
    }

    /// Every event until `next` returns `None`.
    async fn drain(pump: &mut Pump) -> Vec<Event> {
        let mut all = Vec::new();
        while let Some(item) = pump.next().await {
            match item {
                Pumped::Events(batch) => {
                    assert!(!batch.is_empty() && batch.len() <= BATCH);
                    all.extend(batch);
                }
                Pumped::Episode(_) => unreachable!("no episodes are built"),
            }
        }
        all
    }

    #[tokio::test(start_paused = true)]
    async fn batches_keep_order_and_a_closed_tracer_ends_the_pump() {
        let (tx_oom, tx, mut pump) = pump();
        for p in 1..=100 {
            tx.send(adj(p)).await.expect("send");
        }
        tx_oom.send(adj(1000)).await.expect("send");
        drop((tx, tx_oom));
        let all = drain(&mut pump).await;
        let mut want = vec![1000];
        want.extend(1..=100);
        assert_eq!(
            pids(&all),
            want,
            "the OOM lane first, then the rest in order"
        );
        assert_eq!(pump.end(), Some(End::TracerClosed));
        assert!(pump.next().await.is_none(), "stays ended");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_drains_until_quiet() {
        let (_tx_oom, tx, mut pump) = pump();
        tx.send(adj(1)).await.expect("send");
        let t0 = Instant::now();
        pump.stop();
        assert!(pump.stopping());
        // Two late events, 60 ms apart: each restarts the quiet period.
        let late = tokio::spawn(async move {
            for p in [2, 3] {
                tokio::time::sleep(Duration::from_millis(60)).await;
                tx.send(adj(p)).await.expect("send");
            }
            tx
        });
        let all = drain(&mut pump).await;
        assert_eq!(pids(&all), [1, 2, 3]);
        assert_eq!(pump.end(), Some(End::Stopped));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(120) + DRAIN_QUIET && took < DRAIN_MAX,
            "{took:?}"
        );
        drop(late.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_beside_next_does_not_keep_the_drain_going() {
        let (_tx_oom, _tx, mut pump) = pump();
        let mut tick = tokio::time::interval(DRAIN_QUIET / 4);
        let t0 = Instant::now();
        pump.stop();
        loop {
            tokio::select! {
                item = pump.next() => match item {
                    None => break,
                    other => panic!("{other:?}"),
                },
                _ = tick.tick() => {}
            }
        }
        let took = t0.elapsed();
        assert!(took < DRAIN_QUIET * 2, "quiet from stop on: {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_that_never_goes_quiet_ends_at_drain_max() {
        let (_tx_oom, tx, mut pump) = pump();
        let flood = tokio::spawn(async move {
            for p in 0.. {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx.send(adj(p)).await.is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        pump.stop();
        let all = drain(&mut pump).await;
        let took = t0.elapsed();
        assert!(
            took >= DRAIN_MAX && took < DRAIN_MAX + DRAIN_QUIET,
            "{took:?}"
        );
        assert!(all.len() >= 40, "read on while draining: {}", all.len());
        pump.stop();
        assert_eq!(
            pump.end(),
            Some(End::Stopped),
            "stop after the end changes nothing"
        );
        drop(pump);
        flood.await.expect("the flood ends with the pump");
    }

    #[tokio::test(start_paused = true)]
    async fn next_loses_nothing_when_a_select_cancels_it() {
        let (_tx_oom, tx, mut pump) = pump();
        let feed = tokio::spawn(async move {
            for p in 0..500 {
                tx.send(adj(p)).await.expect("send");
                if p % 7 == 0 {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                }
            }
            tx
        });
        let mut tick = tokio::time::interval(Duration::from_micros(100));
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < 500 {
            tokio::select! {
                item = pump.next() => match item {
                    Some(Pumped::Events(batch)) => got.extend(batch),
                    other => panic!("{other:?}"),
                },
                _ = tick.tick() => cancelled += 1,
            }
        }
        assert!(cancelled > 10, "the timer did cancel next(): {cancelled}");
        assert_eq!(pids(&got), (0..500).collect::<Vec<_>>());
        drop(feed.await);
    }

    /// Counts what it is handed; stops the pump at its first tick.
    struct Counter {
        events: Vec<i32>,
        turns: usize,
        tick: Interval,
    }

    impl Consumer for Counter {
        type Error = std::convert::Infallible;
        type Wake = ();

        async fn wait(&mut self, stopping: bool) {
            if stopping {
                std::future::pending::<()>().await;
            }
            self.tick.tick().await;
        }

        async fn woke(&mut self, (): (), pump: &mut Pump) -> Result<(), Self::Error> {
            pump.stop();
            Ok(())
        }

        fn events(&mut self, batch: &[Event]) -> Result<(), Self::Error> {
            self.events.extend(pids(batch));
            Ok(())
        }

        fn episode(&mut self, _: Episode) -> Result<(), Self::Error> {
            unreachable!("no episodes are built")
        }

        fn turned(&mut self) {
            self.turns += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drive_hands_out_everything_and_a_stop_from_a_wake_drains() {
        let (_tx_oom, tx, mut pump) = pump();
        for p in 0..10 {
            tx.send(adj(p)).await.expect("send");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.tick().await;
        let counter = Counter {
            events: Vec::new(),
            turns: 0,
            tick,
        };
        // On a task of its own: a consumer that is Send makes a drive future that is Send.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(80)).await;
            tx.send(adj(10)).await.expect("send while draining");
            tx
        });
        let (end, counter) = tokio::spawn(async move {
            let mut counter = counter;
            let end = drive(&mut pump, &mut counter).await;
            (end, counter)
        })
        .await
        .expect("the driver task");
        assert_eq!(end, Ok(End::Stopped));
        assert_eq!(counter.events, (0..=10).collect::<Vec<_>>());
        assert!(counter.turns >= 3, "{}", counter.turns);
        drop(late.await);
    }

    #[tokio::test(start_paused = true)]
    async fn drive_ends_with_the_tracer_and_stops_at_an_error() {
        let (tx_oom, tx, mut closed) = pump();
        drop((tx_oom, tx));
        let mut counter = Counter {
            events: Vec::new(),
            turns: 0,
            tick: tokio::time::interval(Duration::from_secs(3600)),
        };
        counter.tick.tick().await;
        assert_eq!(
            drive(&mut closed, &mut counter).await,
            Ok(End::TracerClosed)
        );

        struct Failing;
        impl Consumer for Failing {
            type Error = &'static str;
            type Wake = ();
            async fn wait(&mut self, _: bool) {
                std::future::pending::<()>().await;
            }
            async fn woke(&mut self, (): (), _: &mut Pump) -> Result<(), Self::Error> {
                Ok(())
            }
            fn events(&mut self, _: &[Event]) -> Result<(), Self::Error> {
                Err("sink closed")
            }
            fn episode(&mut self, _: Episode) -> Result<(), Self::Error> {
                Ok(())
            }
        }
        let (_tx_oom, tx, mut pump) = pump();
        tx.send(adj(1)).await.expect("send");
        assert_eq!(drive(&mut pump, &mut Failing).await, Err("sink closed"));
    }
}
