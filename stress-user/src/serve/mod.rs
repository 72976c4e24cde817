//! `oomlab serve`: the tracer as a node daemon. Events flow one way — tracer → this loop →
//! Prometheus counters and a broadcast of JSON lines for `/events` — and nothing on the network
//! side can start, stop or inject anything.

pub mod config;
pub mod conns;
pub mod http;
pub mod metrics;
pub mod web;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::Ordering, Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use tokio::{
    net::TcpListener,
    signal::unix::{signal, Signal, SignalKind},
    sync::broadcast,
    task::JoinHandle,
    time::Interval,
};

pub use self::config::{Config, ConfigError};
use self::{
    conns::{ConnLimits, Conns},
    http::{Chunk, Shared},
    metrics::{Kill, Limits, Metrics},
    web::{Web, WebConfigError},
};
use crate::{
    cgroup::{CgroupError, Hierarchy},
    report,
    trace::{
        episode::{Episode, Episodes},
        pump::{drive, Consumer, End, Pump},
        Event, EventClass, EventKind, EventSet, TraceError, TraceOptions, Tracer,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Web(#[from] WebConfigError),
    #[error("cannot listen on {addr}: {source} (another exporter on that port? pick another with --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
    #[error("the tracer stopped delivering events (its ring-buffer reader ended); restarting oomlab re-attaches it")]
    TracerEnded,
}

/// What the command line says; the config file fills in the rest.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    /// Overrides `listen` from the file (also after a reload).
    pub listen: Option<SocketAddr>,
    /// Overrides `allow_remote = false` from the file.
    pub allow_remote: bool,
    /// Overrides `web_config` from the file.
    pub web_config: Option<PathBuf>,
    /// Override the `[runtime]` sockets of the file.
    pub runtime: crate::runtime::RuntimeArgs,
}

impl ServeOptions {
    /// The file's config (or the defaults) with the command line on top.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            cfg.listen = listen;
        }
        // The file's `web_config` is relative to the file; the flag's, to the working directory.
        if let (Some(web), Some(file)) = (&cfg.web_config, &self.config) {
            if web.is_relative() {
                cfg.web_config = file.parent().map(|d| d.join(web));
            }
        }
        if let Some(web) = &self.web_config {
            cfg.web_config = Some(web.clone());
        }
        cfg.allow_remote |= self.allow_remote;
        if self.runtime.containerd_socket.is_some() {
            cfg.runtime
                .containerd_socket
                .clone_from(&self.runtime.containerd_socket);
        }
        if self.runtime.docker_socket.is_some() {
            cfg.runtime
                .docker_socket
                .clone_from(&self.runtime.docker_socket);
        }
        cfg.check_listen()?;
        Ok(cfg)
    }

    /// TLS and basic auth from the config's `web_config`, or plain HTTP without one.
    pub fn web(cfg: &Config) -> Result<Web, WebConfigError> {
        match &cfg.web_config {
            Some(path) => Web::load(path),
            None => Ok(Web::plain()),
        }
    }
}

fn scheme(web: &Web) -> &'static str {
    if web.tls.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Tells systemd (when it started us with `Type=notify`); a no-op elsewhere.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("sd_notify: {e}");
    }
}

struct Server {
    listen: SocketAddr,
    task: JoinHandle<()>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn conn_limits(cfg: &Config) -> ConnLimits {
    ConnLimits {
        max_connections: cfg.max_connections,
        max_per_peer: cfg.max_connections_per_peer,
        max_streams: cfg.max_streams,
    }
}

/// Limits and timeouts for the connections accepted from now on.
fn apply_http_config(shared: &Shared, cfg: &Config) {
    shared.conns.set_limits(conn_limits(cfg));
    shared
        .max_header_bytes
        .store(cfg.max_header_bytes, Ordering::Relaxed);
    shared.stream_write_timeout_ms.store(
        u64::try_from(cfg.stream_write_timeout.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

impl Server {
    fn start(listener: TcpListener, shared: Arc<Shared>, listen: SocketAddr) -> Server {
        Server {
            listen,
            task: tokio::spawn(http::serve(listener, shared)),
        }
    }

    /// Moves to a new address. The new port is bound first: when it cannot be had, the old
    /// listener was never touched and keeps serving.
    async fn move_to(
        &mut self,
        shared: &Arc<Shared>,
        listen: SocketAddr,
    ) -> Result<(), ServeError> {
        if listen == self.listen {
            return Ok(());
        }
        let listener = bind(listen).await?;
        // Closed before the new one accepts: abort() only asks, and on a busy runtime the
        // old listener could otherwise still take connections after the new one answers.
        self.task.abort();
        let _ = (&mut self.task).await;
        *self = Server::start(listener, shared.clone(), listen);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The event loop's state: what turns one event into metrics and a line on `/events`.
struct Daemon {
    cfg: Config,
    hier: Hierarchy,
    metrics: Metrics,
    limits: Limits,
    /// The `/events` broadcast and its line count, shared with the HTTP side.
    shared: Arc<Shared>,
    /// Lines for `/events` gathered since the last [`Daemon::flush`], and how many.
    out: BytesMut,
    out_lines: u64,
    /// Victims waiting for their episode (which brings the constraint), by pid.
    pending: HashMap<i32, Pending>,
}

/// A victim waiting for its episode.
struct Pending {
    kill: Kill,
    at: Instant,
    /// Its `oom_victim` line, held when the tracer could not tell its cgroup (gone before its
    /// /proc entry was read: a dying task shows `/` there on v1). The episode brings the kernel
    /// log's `task_memcg=` and the container named from it; the line goes out with those, just
    /// before its episode's, or as it was when no episode comes.
    held: Option<Box<Event>>,
}

/// How long open connections get, at the end, to take their last lines.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// How long a victim waits for its episode before it is counted without a constraint.
const EPISODE_WAIT: Duration = Duration::from_secs(5);

impl Daemon {
    fn new(cfg: Config, hier: Hierarchy, metrics: Metrics, shared: Arc<Shared>) -> Daemon {
        Daemon {
            limits: Limits::new(cfg.top_n, cfg.max_comms_per_cgroup),
            cfg,
            hier,
            metrics,
            shared,
            out: BytesMut::new(),
            out_lines: 0,
            pending: HashMap::new(),
        }
    }

    fn handle(&mut self, ev: &Event) {
        // A class a reload took out is still attached until the next restart: filtered here.
        if !self.cfg.traces(ev.kind.class()) {
            return;
        }
        let hier = &self.hier;
        let gone = |cg: &str| !hier.cgroup(cg).exists();
        if let EventKind::Victim(v) = &ev.kind {
            let c = &v.context;
            let kill = Kill {
                cgroup: c.cgroup.clone(),
                namespace: c.container.namespace.clone(),
                pod: c.container.pod.clone(),
                container: c.container.container_name.clone(),
                comm: v.comm.clone(),
                constraint: None,
            };
            // Counted when its episode (kernel log + tracepoints) is complete, with the
            // constraint the kernel logged; see `episode()` and `expire()`.
            let held = c.cgroup.is_none().then(|| Box::new(ev.clone()));
            let hold = held.is_some();
            self.pending.insert(
                v.pid,
                Pending {
                    kill,
                    at: Instant::now(),
                    held,
                },
            );
            if hold {
                return;
            }
        } else if let EventKind::AdjUpdate(_) = &ev.kind {
            self.metrics.adj_update();
        } else if let EventKind::Marked(_) = &ev.kind {
            self.metrics.mark_without_kill();
        } else if let EventKind::Reclaim(r) = &ev.kind {
            self.metrics.reclaim(
                &mut self.limits,
                r.cgroup.as_deref(),
                Duration::from_nanos(r.latency_ns),
                r.nr_reclaimed,
                &gone,
            );
        }
        self.emit_event(ev);
    }

    /// `ev` as a line for `/events`, serialized only when someone listens.
    fn emit_event(&mut self, ev: &Event) {
        if self.shared.events.receiver_count() > 0 {
            let line = json(ev);
            self.emit(&line);
        }
    }

    /// One complete OOM episode: counted, its victims counted with its constraint, and
    /// streamed as `oom_episode` (what `trace --output json` prints).
    fn episode(&mut self, ep: &Episode) {
        if !self.cfg.traces(EventClass::Oom) {
            return;
        }
        self.metrics.episode(ep.group_kill.is_some());
        let hier = &self.hier;
        let gone = |cg: &str| !hier.cgroup(cg).exists();
        let mut held_lines = Vec::new();
        for v in ep.victims.iter().filter(|v| v.traced) {
            if let Some(Pending { mut kill, held, .. }) = self.pending.remove(&v.pid) {
                if let Some(mut ev) = held {
                    if let EventKind::Victim(victim) = &mut ev.kind {
                        if v.cgroup.is_some() {
                            victim.context.cgroup.clone_from(&v.cgroup);
                            victim.context.cgroup_source = Some("kmsg");
                        }
                        if victim.context.container.runtime.is_none() {
                            *victim.context.container = v.container.clone();
                        }
                    }
                    held_lines.push(ev);
                }
                kill.constraint = ep.constraint.clone();
                if kill.cgroup.is_none() {
                    kill.cgroup = v.cgroup.clone();
                }
                // Gone before the tracer read its /proc entry: the episode named its container
                // from the kernel log's `task_memcg=` (see `Episodes::use_names`).
                if kill.namespace.is_none() && kill.pod.is_none() && kill.container.is_none() {
                    kill.namespace.clone_from(&v.container.namespace);
                    kill.pod.clone_from(&v.container.pod);
                    kill.container.clone_from(&v.container.container_name);
                }
                self.metrics.kill(&mut self.limits, kill, &gone);
            }
        }
        for ev in held_lines {
            self.emit_event(&ev);
        }
        if self.shared.events.receiver_count() > 0 {
            let mut out = Vec::with_capacity(1024);
            report::json_line(&mut out, "oom_episode", ep).expect("JSON to a Vec");
            self.emit(&out);
        }
    }

    /// One line for `/events`, sent with the others of this turn of the loop by [`Self::flush`].
    fn emit(&mut self, line: &[u8]) {
        self.out.put_slice(line);
        self.out_lines += 1;
    }

    /// Sends what this turn of the loop gathered as one chunk: a flood costs each `/events`
    /// client one wakeup and one write per batch of events, not per event.
    fn flush(&mut self) {
        if self.out_lines == 0 {
            return;
        }
        // Numbered before the send: a client that subscribes in between receives this chunk
        // too, and must not count it as missed.
        let first = self
            .shared
            .next_line
            .fetch_add(self.out_lines, Ordering::AcqRel);
        let chunk = Chunk {
            first,
            lines: self.out_lines,
            bytes: self.out.split().freeze(),
        };
        self.out_lines = 0;
        // No receiver: nobody is listening right now, which is fine.
        let _ = self.shared.events.send(chunk);
    }

    /// Victims whose episode never came (no kernel log, or it was lost) are counted anyway.
    fn expire(&mut self, all: bool) {
        let hier = &self.hier;
        let gone = |cg: &str| !hier.cgroup(cg).exists();
        let late: Vec<i32> = self
            .pending
            .iter()
            .filter(|(_, p)| all || p.at.elapsed() >= EPISODE_WAIT)
            .map(|(pid, _)| *pid)
            .collect();
        let mut held_lines = Vec::new();
        for pid in late {
            if let Some(p) = self.pending.remove(&pid) {
                self.metrics.kill(&mut self.limits, p.kill, &gone);
                held_lines.extend(p.held);
            }
        }
        for ev in held_lines {
            self.emit_event(&ev);
        }
    }

    fn reload(&mut self, cfg: Config) {
        self.limits.set(cfg.top_n, cfg.max_comms_per_cgroup);
        if cfg.stream_buffer != self.cfg.stream_buffer {
            log::warn!("stream_buffer changes take effect at the next restart");
        }
        if cfg.events.difference(&self.cfg.events).next().is_some() {
            log::warn!("event classes added to `events` are attached at the next restart");
        }
        self.cfg = cfg;
    }
}

fn json(ev: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    report::event_json_line(&mut out, ev).expect("writing JSON to a Vec cannot fail");
    out
}

fn ready_line(tracer: &Tracer) -> Bytes {
    #[derive(serde::Serialize)]
    struct Ready<'a> {
        tracefs: String,
        hooks: &'a [crate::trace::HookResult],
    }
    let mut out = Vec::new();
    report::json_line(
        &mut out,
        "ready",
        &Ready {
            tracefs: tracer.tracefs.path.display().to_string(),
            hooks: &tracer.hooks,
        },
    )
    .expect("writing JSON to a Vec cannot fail");
    Bytes::from(out)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| metrics::UNKNOWN.into())
}

/// Events taken from the tracer in one turn of the loop, and so at most the lines in one chunk
/// for `/events`.
const CHUNK_EVENTS: usize = crate::trace::pump::BATCH;

/// The broadcast keeps chunks; `stream_buffer` counts events, as if every chunk were full.
fn chunks_kept(stream_buffer: usize) -> usize {
    stream_buffer.div_ceil(CHUNK_EVENTS).max(1)
}

/// How often the loop wakes without events: kernel drop counters, systemd watchdog.
const TICK: Duration = Duration::from_secs(1);
/// How often at most the heap's free memory is handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Free heap worth handing back.
const TRIM_ABOVE: usize = 1 << 20;

/// Hands the heap's free pages back to the kernel once there is enough of them. glibc keeps
/// what a burst freed (a backlog of events behind a slow loop, a large scrape) in its arenas,
/// pinned behind a few chunks still in use, so without this RSS stays at every burst's peak.
#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free >= TRIM_ABOVE {
        // SAFETY: malloc_trim only releases free pages; no allocation is moved or touched.
        let released = unsafe { libc::malloc_trim(0) } == 1;
        log::debug!("heap: {free} bytes free, released to the kernel: {released}");
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

/// The signals the daemon answers: SIGHUP reloads, SIGTERM and SIGINT stop.
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Signals, ServeError> {
        let install = |kind| signal(kind).map_err(ServeError::Signal);
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

/// The event loop's consumer: the daemon gets what the pump hands out; beside it run the
/// housekeeping and watchdog timers and the signals.
struct EventLoop<'a> {
    daemon: Daemon,
    server: Server,
    opts: &'a ServeOptions,
    tracer: &'a Tracer,
    signals: Signals,
    /// Kernel drop counters and victims whose episode never came.
    housekeeping: Interval,
    /// The systemd watchdog and the heap trim.
    ticker: Interval,
    last_trim: Instant,
}

enum Wake {
    Housekeeping,
    Tick,
    Reload,
    Stop(&'static str),
}

impl<'a> EventLoop<'a> {
    fn new(
        daemon: Daemon,
        server: Server,
        signals: Signals,
        opts: &'a ServeOptions,
        tracer: &'a Tracer,
    ) -> Self {
        let tick = sd_notify::watchdog_enabled()
            .map(|wd| (wd / 2).min(TICK))
            .unwrap_or(TICK);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        EventLoop {
            daemon,
            server,
            opts,
            tracer,
            signals,
            housekeeping: tokio::time::interval(Duration::from_millis(100)),
            ticker,
            last_trim: Instant::now(),
        }
    }

    /// SIGHUP: the config file and the web config again. A bad file keeps the running
    /// config; a port that cannot be bound keeps the old listener (the rest is applied).
    async fn reload(&mut self) {
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
        notify(&reloading);
        match self
            .opts
            .config()
            .map_err(ServeError::from)
            .and_then(|cfg| Ok((ServeOptions::web(&cfg)?, cfg)))
        {
            Ok((web, mut cfg)) => {
                let shared = &self.daemon.shared;
                let scheme = scheme(&web);
                shared.set_web(web);
                apply_http_config(shared, &cfg);
                let server = &mut self.server;
                match server.move_to(shared, cfg.listen).await {
                    Ok(()) => eprintln!(
                        "oomlab serve: config reloaded (listening on {scheme}://{})",
                        server.listen
                    ),
                    Err(e) => {
                        log::error!("config reload: {e}");
                        eprintln!(
                            "oomlab serve: config reloaded, but {e}; still listening on {scheme}://{}",
                            server.listen
                        );
                        cfg.listen = server.listen;
                    }
                }
                self.daemon.reload(cfg);
            }
            Err(e) => {
                log::error!("config reload failed, keeping the running config: {e}");
                eprintln!("oomlab serve: config reload failed, keeping the running config: {e}");
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }

    /// Pinged from the event loop itself, so a wedged loop gets restarted.
    fn tick(&mut self) {
        if self.last_trim.elapsed() >= TRIM_EVERY {
            self.last_trim = Instant::now();
            trim_heap();
        }
        notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

impl Consumer for EventLoop<'_> {
    type Error = Infallible;
    type Wake = Wake;

    async fn wait(&mut self, stopping: bool) -> Wake {
        let s = &mut self.signals;
        tokio::select! {
            _ = self.housekeeping.tick() => Wake::Housekeeping,
            _ = self.ticker.tick() => Wake::Tick,
            _ = s.hup.recv(), if !stopping => Wake::Reload,
            _ = s.term.recv(), if !stopping => Wake::Stop("SIGTERM"),
            _ = s.int.recv(), if !stopping => Wake::Stop("SIGINT"),
        }
    }

    async fn woke(&mut self, wake: Wake, pump: &mut Pump) -> Result<(), Infallible> {
        match wake {
            Wake::Housekeeping => {
                self.daemon.expire(false);
                // Read often, so a scrape right after a flood shows its drops.
                self.daemon.metrics.set_lost(self.tracer.stats().lost);
            }
            Wake::Tick => self.tick(),
            Wake::Reload => self.reload().await,
            Wake::Stop(signal) => {
                // Tell the service manager, and let the pump drain what the kernel still has.
                log::info!("{signal}: reading what the kernel still has, then stopping");
                notify(&[sd_notify::NotifyState::Stopping]);
                pump.stop();
            }
        }
        Ok(())
    }

    fn events(&mut self, batch: &[Event]) -> Result<(), Infallible> {
        for ev in batch {
            self.daemon.handle(ev);
        }
        Ok(())
    }

    fn episode(&mut self, ep: Episode) -> Result<(), Infallible> {
        self.daemon.episode(&ep);
        Ok(())
    }

    /// What the turn gathered goes out as one chunk.
    fn turned(&mut self) {
        self.daemon.flush();
    }
}

/// Programs for classes the config leaves out are not attached at all. A reload that adds a
/// class needs a restart; one that removes a class filters in [`Daemon::handle`].
fn trace_options(cfg: &Config, names: Option<crate::runtime::cache::Names>) -> TraceOptions {
    TraceOptions {
        names,
        events: EventSet {
            oom: cfg.traces(EventClass::Oom),
            adj: cfg.traces(EventClass::Adj),
            reclaim: cfg.traces(EventClass::Reclaim),
            cgroup: cfg.traces(EventClass::Cgroup),
        },
        ..TraceOptions::default()
    }
}

/// Runs until SIGTERM/SIGINT. Binds first (a taken port fails fast), then attaches, then tells
/// systemd it is ready.
pub async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let cfg = opts.config()?;
    let web = ServeOptions::web(&cfg)?;
    let scheme = scheme(&web);
    let signals = Signals::install()?;
    let listener = bind(cfg.listen).await?;
    let hier = Hierarchy::detect()?;
    // Opened before the tracer attaches, so no OOM report after READY is missed.
    let episodes = cfg.traces(EventClass::Oom).then(|| Episodes::start(None));
    // Names for victims' containers, refreshed off the event path (see runtime::cache).
    let names = cfg.traces(EventClass::Oom).then(|| {
        crate::runtime::cache::Names::start(
            crate::runtime::Runtimes::new(&cfg.runtime, Some(&hier)),
            Some(hier.memory_version),
            Duration::from_secs(3),
        )
    });
    let episodes = episodes.map(|mut e| {
        e.use_names(names.clone());
        e
    });
    let (tracer, rx) = Tracer::start(&trace_options(&cfg, names))?;
    let metrics = Metrics::new(&kernel_release());
    let (events, _) = broadcast::channel(chunks_kept(cfg.stream_buffer));
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        events,
        ready_line: ready_line(&tracer),
        healthy: true.into(),
        next_line: 0.into(),
        closing: tokio::sync::watch::Sender::new(false),
        conns: Conns::new(conn_limits(&cfg), metrics.clone()),
        web: RwLock::new(Arc::new(web)),
        max_header_bytes: 0.into(),
        stream_write_timeout_ms: 0.into(),
    });
    apply_http_config(&shared, &cfg);
    let server = Server::start(listener, shared.clone(), cfg.listen);
    let daemon = Daemon::new(cfg, hier, metrics, shared.clone());
    log::info!(
        "serving /metrics, /events and /healthz on {scheme}://{}",
        daemon.cfg.listen
    );
    eprintln!("oomlab serve: ready on {scheme}://{}", daemon.cfg.listen);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("tracing; serving /metrics"),
    ]);
    let mut event_loop = EventLoop::new(daemon, server, signals, &opts, &tracer);
    // SIGTERM / SIGINT stop the pump: what the kernel produced before (a kill just before the
    // stop) is drained and its episode counted before the daemon exits.
    let Ok(end) = drive(&mut Pump::new(rx, episodes), &mut event_loop).await;
    let EventLoop { daemon, server, .. } = event_loop;
    let result = if end == End::TracerClosed {
        shared.healthy.store(false, Ordering::Relaxed);
        Err(ServeError::TracerEnded)
    } else {
        Ok(())
    };
    close(daemon, server, &shared, result.is_err()).await;
    // Detaches every program.
    drop(tracer);
    log::info!("programs detached");
    result
}

/// The end: the last counts and lines out, then no new connections, and the open ones finish:
/// `/events` clients get the last lines (those the drain found included) and the end of the
/// stream, not a cut connection.
async fn close(mut daemon: Daemon, server: Server, shared: &Shared, failed: bool) {
    log::info!("event stream drained");
    daemon.expire(true);
    daemon.flush();
    if failed {
        notify(&[sd_notify::NotifyState::Stopping]);
    }
    drop(server);
    if !shared.close_connections(CLOSE_GRACE).await {
        log::info!(
            "some clients did not take their last lines within {CLOSE_GRACE:?}; closing anyway"
        );
    }
    log::info!("connections closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_config_is_relative_to_the_config_file_and_the_flag_wins() {
        let dir = std::env::temp_dir().join(format!("oomlab-serve-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("serve.toml");
        std::fs::write(&file, "web_config = \"web.yml\"\n").expect("write");
        let mut opts = ServeOptions {
            config: Some(file),
            ..ServeOptions::default()
        };
        let cfg = opts.config().expect("parses");
        assert_eq!(cfg.web_config, Some(dir.join("web.yml")));
        // No such file: named in the error, which start-up turns into exit 2.
        let err = ServeOptions::web(&cfg).err().expect("missing web.yml");
        assert!(err.to_string().contains("web.yml"), "{err}");
        opts.web_config = Some(PathBuf::from("/etc/oomlab/other.yml"));
        assert_eq!(
            opts.config().expect("parses").web_config,
            Some(PathBuf::from("/etc/oomlab/other.yml"))
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
