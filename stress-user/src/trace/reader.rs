//! The ring-buffer reader: an OS thread that takes records from the kernel's two rings, decodes
//! and enriches them, and hands them to the consumer in two lanes, OOM events first.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use super::{enrich::Enricher, error::TraceError, event::Event};
use crate::sys::monotonic;

/// Decoded events queued between the ring buffer reader and the consumer.
const CHANNEL_EVENTS: usize = 4096;
/// OOM events (from `OOM_EVENTS`) queued in their own lane, which the consumer empties first.
const OOM_CHANNEL_EVENTS: usize = 1024;

/// The tracer's events, in two lanes: OOM events (victims, reaper steps, kill hooks) and the
/// rest. A consumer that falls behind a flood of adj or reclaim events still gets each OOM event
/// next, not after the thousands queued before it; within a lane the order is the kernel's.
pub struct Events {
    oom: mpsc::Receiver<Event>,
    rest: mpsc::Receiver<Event>,
    /// Wakes the reader; `None` for events fed by hand.
    kick: Option<Arc<Kick>>,
    /// Where the reader puts a writer for OOM events' lines (see [`Events::write_oom_first`]).
    first: Arc<FirstWrite>,
}

/// Writes an OOM event's line on the reader thread, as soon as the event is read and enriched:
/// `Ok(true)` when it wrote it, `Ok(false)` when the event is not one it writes.
pub type FirstWriter = Box<dyn FnMut(&Event) -> io::Result<bool> + Send>;

/// The reader's slot for a [`FirstWriter`], empty until a consumer installs one.
#[derive(Default)]
struct FirstWrite(Mutex<Option<FirstWriter>>);

impl FirstWrite {
    /// Lets the installed writer write `ev`'s line, and marks the event `written` if it did. A
    /// writer that fails is dropped and the event left unwritten: the consumer writes it and
    /// meets the error (a closed stdout, say) itself.
    fn write(&self, ev: &mut Event) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(write) = slot.as_mut() else { return };
        match write(ev) {
            Ok(wrote) => ev.written = wrote,
            Err(e) => {
                log::debug!("first write of an OOM event failed ({e}); the consumer writes it");
                *slot = None;
            }
        }
    }
}

/// An eventfd in the reader's poll set. The kernel publishes the records of `EVENTS` without
/// waking the reader (it polls every [`READER_POLL_MS`]), so a consumer that is about to end
/// kicks it to read what waits now rather than up to 100 ms later.
struct Kick(OwnedFd);

impl Kick {
    fn new() -> io::Result<Kick> {
        // SAFETY: eventfd has no preconditions; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and is owned by nobody else.
        Ok(Kick(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to our eventfd. A full counter (EAGAIN) is already a kick.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Resets the counter after a wakeup.
    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

impl Events {
    /// Events fed by hand, for the consumers' tests.
    #[cfg(test)]
    pub(crate) fn from_lanes(oom: mpsc::Receiver<Event>, rest: mpsc::Receiver<Event>) -> Events {
        Events {
            oom,
            rest,
            kick: None,
            first: Arc::default(),
        }
    }

    /// From now on the reader thread hands each OOM event (victims, reaper steps, kill hooks)
    /// to `writer` as soon as it has read and enriched it, before the event goes to this
    /// consumer, and marks the event `written` when `writer` wrote its line. The hop from the
    /// reader to the consumer is a wakeup of another thread, and while the OOM killer prints
    /// `Killed process` to a serial console with interrupts off, a wakeup aimed at that CPU
    /// waits milliseconds for it (`cargo xtask bench trace` (d): p99 3.8–4.2 ms of the hop
    /// against 0.03 ms at p50); writing on the reader's own thread takes no wakeup at all. The
    /// consumer still gets every event, written or not, for its episodes and counters.
    pub fn write_oom_first(&self, writer: FirstWriter) {
        *self.first.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(writer);
    }

    /// Makes the reader read what waits in the rings now (see [`Kick`]).
    pub fn flush(&self) {
        if let Some(k) = &self.kick {
            k.kick();
        }
    }

    /// The next event, OOM events first; `None` once the reader has ended. Cancel-safe, for
    /// `tokio::select!`.
    pub async fn recv(&mut self) -> Option<Event> {
        tokio::select! {
            biased;
            Some(ev) = self.oom.recv() => Some(ev),
            Some(ev) = self.rest.recv() => Some(ev),
            else => None,
        }
    }

    /// Appends up to `limit` events that are ready (OOM events first), waiting for one if none
    /// is; 0 once the reader has ended. Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<Event>, limit: usize) -> usize {
        let before = buf.len();
        while buf.len() - before < limit {
            match self.oom.try_recv() {
                Ok(ev) => buf.push(ev),
                Err(_) => break,
            }
        }
        if buf.len() == before {
            match self.recv().await {
                Some(ev) => buf.push(ev),
                None => return 0,
            }
        }
        while buf.len() - before < limit {
            match self.rest.try_recv() {
                Ok(ev) => buf.push(ev),
                Err(_) => break,
            }
        }
        buf.len() - before
    }
}

/// How long the reader waits before it tries the full lane of other events again (the OOM
/// lane is served in between).
const FULL_LANE_WAIT: Duration = Duration::from_millis(1);

/// How long the reader thread waits in poll(2) before checking whether to stop, and so the
/// longest a record of `EVENTS` (published without a wakeup, see the eBPF `emit::submit`) waits.
const READER_POLL_MS: i32 = 100;

/// Records of `EVENTS` read between two looks at `OOM_EVENTS`.
const READER_BATCH: usize = 256;

/// At most this many `EVENTS` records are read ahead of an OOM record (see `read_ahead`).
const READ_AHEAD_MAX: usize = 256;

/// Starts the reader thread on the `EVENTS` and `OOM_EVENTS` rings. It ends when the returned
/// flag is set (noticed within [`READER_POLL_MS`]) or the consumer drops its [`Events`].
pub(super) fn spawn(
    ring: RingBuf<MapData>,
    oom_ring: RingBuf<MapData>,
    enricher: Enricher,
) -> Result<(Arc<AtomicBool>, Events), TraceError> {
    // Bounded: a consumer that falls behind (a slow stdout pipe, a stalled client) makes the
    // reader wait, the ring buffers fill and the kernel count the drops as `lost` — memory
    // stays bounded instead of queueing events here without limit.
    let (tx, rest) = mpsc::channel(CHANNEL_EVENTS);
    let (tx_oom, oom) = mpsc::channel(OOM_CHANNEL_EVENTS);
    let stop = Arc::new(AtomicBool::new(false));
    let kick = Arc::new(Kick::new().map_err(TraceError::Io)?);
    let first = Arc::new(FirstWrite::default());
    let reader = Reader {
        kick: kick.clone(),
        first: first.clone(),
        ring,
        oom_ring,
        enricher,
        tx,
        tx_oom,
        stopping: stop.clone(),
        ahead: VecDeque::new(),
    };
    // An OS thread, not a tokio task: enrichment reads /proc/PID of victims, and the kernel
    // holds a victim's task_lock while it prints `Killed process` to the console (milliseconds
    // on a serial console); on a runtime worker those waits can hold up the consumer's task too.
    std::thread::Builder::new()
        .name("oomlab-ring".into())
        .spawn(move || reader.run())
        .map_err(TraceError::Io)?;
    Ok((
        stop,
        Events {
            oom,
            rest,
            kick: Some(kick),
            first,
        },
    ))
}

struct Reader {
    ring: RingBuf<MapData>,
    oom_ring: RingBuf<MapData>,
    enricher: Enricher,
    tx: mpsc::Sender<Event>,
    tx_oom: mpsc::Sender<Event>,
    stopping: Arc<AtomicBool>,
    kick: Arc<Kick>,
    first: Arc<FirstWrite>,
    /// `EVENTS` records decoded ahead of an OOM record and not yet forwarded, oldest first.
    ahead: VecDeque<Event>,
}

impl Reader {
    fn run(mut self) {
        loop {
            // OOM events first, and again between batches of the others and while the other
            // lane is full, so neither a flood in `EVENTS` nor a consumer behind it delays a
            // victim.
            if !self.pump_oom() {
                return;
            }
            match self.forward_batch() {
                Some(true) => continue,
                Some(false) => {}
                None => return,
            }
            if self.stopping.load(Ordering::Relaxed) || self.tx.is_closed() {
                return;
            }
            if !self.wait_for_records() {
                return;
            }
        }
    }

    /// Forwards every record waiting in the OOM ring to the OOM lane; false once the consumer is
    /// gone.
    fn pump_oom(&mut self) -> bool {
        loop {
            let Some(record) = self.oom_ring.next().map(|item| item.to_vec()) else {
                return true;
            };
            self.read_ahead();
            if let Some(mut ev) = decode(&mut self.enricher, &record) {
                self.first.write(&mut ev);
                if self.tx_oom.blocking_send(ev).is_err() {
                    return false;
                }
            }
        }
    }

    /// Decodes what already waits in `EVENTS` before an OOM record is enriched. Those records
    /// happened first, and a victim's `cgroup_attach_task` among them is what names its cgroup
    /// once /proc no longer does (a dying task shows `/` there on v1): without this, a reader
    /// woken late by a busy CPU enriched the victim before the attach that preceded it. They
    /// are still forwarded after the OOM record, in their own order.
    fn read_ahead(&mut self) {
        while self.ahead.len() < READ_AHEAD_MAX {
            let Some(item) = self.ring.next() else { break };
            let ev = decode(&mut self.enricher, &item);
            drop(item);
            self.ahead.extend(ev);
        }
    }

    /// Forwards up to [`READER_BATCH`] records of `EVENTS` (those read ahead first), serving
    /// the OOM lane while the other one is full. Whether there were any; `None` once the
    /// consumer is gone.
    fn forward_batch(&mut self) -> Option<bool> {
        let mut busy = false;
        for _ in 0..READER_BATCH {
            let ev = if let Some(ev) = self.ahead.pop_front() {
                ev
            } else {
                let Some(item) = self.ring.next() else { break };
                busy = true;
                let ev = decode(&mut self.enricher, &item);
                drop(item);
                match ev {
                    Some(ev) => ev,
                    None => continue,
                }
            };
            busy = true;
            self.send_rest(ev)?;
        }
        Some(busy)
    }

    /// Queues one event in the other lane, serving the OOM lane while it is full; `None` once
    /// the consumer is gone.
    fn send_rest(&mut self, mut ev: Event) -> Option<()> {
        loop {
            match self.tx.try_send(ev) {
                Ok(()) => return Some(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return None,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    ev = back;
                    if !self.pump_oom() {
                        return None;
                    }
                    std::thread::sleep(FULL_LANE_WAIT);
                }
            }
        }
    }

    /// Waits until either ring has records, or [`READER_POLL_MS`] passed; false when poll(2)
    /// failed.
    fn wait_for_records(&self) -> bool {
        let mut pfds = [
            self.ring.as_raw_fd(),
            self.oom_ring.as_raw_fd(),
            self.kick.0.as_raw_fd(),
        ]
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: three valid pollfds; the rings' and the eventfd's fds stay open while they
        // live. The timeout bounds how long a stop request waits and how long a record published
        // without a wakeup waits; EINTR simply loops.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 3, READER_POLL_MS) } < 0
            && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
        {
            log::warn!("ring buffer poll: {}", io::Error::last_os_error());
            return false;
        }
        if pfds[2].revents & libc::POLLIN != 0 {
            self.kick.clear();
        }
        true
    }
}

/// Decodes and enriches one record; `None` when it is undecodable or outside the target.
fn decode(enricher: &mut Enricher, item: &[u8]) -> Option<Event> {
    match Event::decode(item) {
        Ok(mut ev) => {
            ev.read_at = monotonic();
            if log::log_enabled!(log::Level::Trace) {
                log::trace!(
                    "event {:?} read {:?} after the kernel stamped it",
                    std::mem::discriminant(&ev.kind),
                    ev.read_at.saturating_sub(ev.ts)
                );
            }
            let keep = enricher.process(&mut ev);
            ev.enriched_at = monotonic();
            keep.then_some(ev)
        }
        Err(e) => {
            log::warn!("dropping undecodable event: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::testing::{adj, pids};

    #[tokio::test]
    async fn the_oom_lane_goes_first_and_both_keep_their_order() {
        let (tx_oom, oom) = mpsc::channel(8);
        let (tx, rest) = mpsc::channel(8);
        let mut events = Events::from_lanes(oom, rest);
        for p in [1, 2, 3] {
            tx.send(adj(p)).await.expect("send");
        }
        for p in [100, 101] {
            tx_oom.send(adj(p)).await.expect("send");
        }
        let first = events.recv().await.expect("an event");
        assert_eq!(pids(&[first]), [100]);
        let mut buf = Vec::new();
        assert_eq!(events.recv_many(&mut buf, 3).await, 3);
        assert_eq!(pids(&buf), [101, 1, 2]);
        drop((tx, tx_oom));
        assert_eq!(pids(&[events.recv().await.expect("the last one")]), [3]);
        assert!(events.recv().await.is_none(), "both lanes closed and empty");
        assert_eq!(events.recv_many(&mut buf, 3).await, 0);
    }

    #[test]
    fn the_first_writer_marks_what_it_wrote_and_a_failing_one_is_dropped() {
        let (oom, rest) = (mpsc::channel(1).1, mpsc::channel(1).1);
        let events = Events::from_lanes(oom, rest);
        let mut ev = adj(7);
        events.first.write(&mut ev);
        assert!(!ev.written, "no writer installed: the consumer writes it");

        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        events.write_oom_first(Box::new(move |ev| {
            let pid = pids(std::slice::from_ref(ev))[0];
            log.lock().expect("lock").push(pid);
            Ok(pid != 8)
        }));
        events.first.write(&mut ev);
        assert!(ev.written, "written by the first writer");
        let mut other = adj(8);
        events.first.write(&mut other);
        assert!(!other.written, "the writer declined it");
        assert_eq!(*seen.lock().expect("lock"), [7, 8]);

        events.write_oom_first(Box::new(|_| {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }));
        let mut failed = adj(9);
        events.first.write(&mut failed);
        assert!(!failed.written, "a failed write leaves it to the consumer");
        let mut after = adj(10);
        events.first.write(&mut after);
        assert!(!after.written);
        assert!(
            events.first.0.lock().expect("lock").is_none(),
            "the failed writer is gone"
        );
    }
}
