//! The Prometheus side of the daemon: counters and histograms fed by trace events, with the
//! number of label sets bounded so a node with thousands of short-lived pods cannot blow up the
//! scrape (or the daemon's memory).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{text, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        info::Info,
    },
    registry::Registry,
};

/// Label value for cgroups (and names) beyond the configured limits.
pub const OTHER: &str = "other";
/// Label value when oomlab could not find out (the victim was gone before its cgroup was read,
/// or the kernel did not say).
pub const UNKNOWN: &str = "unknown";

/// How often at most the cgroup table looks for cgroups that no longer exist.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The kill counter's labels. `namespace`, `pod` and `container` are the names
/// kube-state-metrics and cAdvisor use, so existing dashboards join on them. A kill in a named
/// container is counted per (namespace, pod, container), with `cgroup` empty: a restarted
/// container (new id, new cgroup) continues its series instead of starting a new one. Ids and
/// pids stay out of the labels (they are in `/events`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KillLabels {
    pub cgroup: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub comm: String,
    pub constraint: String,
}

/// Limits' key of a named container's place (never taken for a cgroup path, which starts `/`).
fn container_key(namespace: &str, pod: &str, container: &str) -> String {
    format!("container:{namespace}/{pod}/{container}")
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CgroupLabels {
    pub cgroup: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    kernel: String,
}

type HistogramFamily = Family<CgroupLabels, Histogram, fn() -> Histogram>;

fn reclaim_histogram() -> Histogram {
    // 10 µs … 2.6 s: memcg reclaim is usually tens of µs, a stall worth an alert is 100 ms+.
    Histogram::new(exponential_buckets(1e-5, 4.0, 10))
}

/// Handles on every metric; cheap to clone (the families share their storage).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    oom_kills: Family<KillLabels, Counter>,
    oom_episodes: Counter,
    oom_group_kills: Counter,
    adj_updates: Counter,
    marks_without_kill: Counter,
    reclaim_seconds: HistogramFamily,
    reclaimed_pages: Family<CgroupLabels, Counter>,
    events_lost: Counter,
    stream_skipped: Counter,
    connections_refused: Counter,
    http: HttpMetrics,
}

/// The connection side: admissions, evictions, stream slots, stalled clients, auth and TLS.
#[derive(Clone, Default)]
struct HttpMetrics {
    connections_evicted: Counter,
    connections_open: Gauge,
    streams_open: Gauge,
    streams_refused: Counter,
    streams_dropped: Counter,
    unauthorized: Counter,
    tls_failed: Counter,
}

impl HttpMetrics {
    fn register(&self, reg: &mut Registry) {
        reg.register(
            "http_connections_evicted",
            "Idle HTTP connections (no whole request yet, or between requests) closed to make room for a new one",
            self.connections_evicted.clone(),
        );
        reg.register(
            "http_connections_open",
            "HTTP connections open now",
            self.connections_open.clone(),
        );
        reg.register(
            "events_streams_open",
            "/events streams open now",
            self.streams_open.clone(),
        );
        reg.register(
            "events_streams_refused",
            "/events requests answered 503 because max_streams streams were open",
            self.streams_refused.clone(),
        );
        reg.register(
            "events_streams_dropped",
            "/events clients disconnected because they accepted no bytes for stream_write_timeout",
            self.streams_dropped.clone(),
        );
        reg.register(
            "http_unauthorized",
            "Requests answered 401: basic auth configured and missing or wrong credentials",
            self.unauthorized.clone(),
        );
        reg.register(
            "tls_handshake_failures",
            "TLS connections closed before or during the handshake (bad certificate, timeout, plain HTTP on the TLS port)",
            self.tls_failed.clone(),
        );
    }
}

/// What one OOM kill is counted under, before the cardinality limits apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    pub cgroup: Option<String>,
    /// The pod's namespace and name, and the container's name (CRI labels or Docker's name).
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub comm: Option<String>,
    pub constraint: Option<String>,
}

impl Metrics {
    pub fn new(kernel: &str) -> Metrics {
        let mut reg = Registry::with_prefix("oomlab");
        let oom_kills = Family::<KillLabels, Counter>::default();
        reg.register(
            "oom_kills",
            "Processes killed by the OOM killer (oom:mark_victim), by the victim's memory cgroup",
            oom_kills.clone(),
        );
        let oom_episodes = Counter::default();
        reg.register(
            "oom_episodes",
            "OOM episodes: one OOM killer invocation, from the kernel log report and the tracepoints (a group kill has several victims)",
            oom_episodes.clone(),
        );
        let oom_group_kills = Counter::default();
        reg.register(
            "oom_group_kills",
            "OOM episodes that killed every task of a memory.oom.group cgroup (cgroup v2; the kernel counts them in memory.events oom_group_kill from 5.17)",
            oom_group_kills.clone(),
        );
        let adj_updates = Counter::default();
        reg.register(
            "oom_score_adj_updates",
            "Writes to /proc/PID/oom_score_adj (oom:oom_score_adj_update)",
            adj_updates.clone(),
        );
        let marks_without_kill = Counter::default();
        reg.register(
            "oom_marks_without_kill",
            "oom:mark_victim of a task that was exiting already (no SIGKILL before it): the kernel gave it the reserves and the reaper but killed nothing; not in oomlab_oom_kills",
            marks_without_kill.clone(),
        );
        let reclaim_seconds: HistogramFamily = Family::new_with_constructor(reclaim_histogram);
        reg.register(
            "memcg_reclaim_seconds",
            "Latency of memcg and direct reclaim passes, by memory cgroup",
            reclaim_seconds.clone(),
        );
        let reclaimed_pages = Family::<CgroupLabels, Counter>::default();
        reg.register(
            "reclaimed_pages",
            "Pages reclaimed by memcg and direct reclaim, by memory cgroup",
            reclaimed_pages.clone(),
        );
        let events_lost = Counter::default();
        reg.register(
            "events_lost",
            "Kernel events dropped because the eBPF ring buffer was full",
            events_lost.clone(),
        );
        let stream_skipped = Counter::default();
        reg.register(
            "events_stream_skipped",
            "Events skipped for /events clients that read too slowly",
            stream_skipped.clone(),
        );
        let connections_refused = Counter::default();
        reg.register(
            "http_connections_refused",
            "HTTP connections closed at once because max_connections (or the peer's max_connections_per_peer) were open and none of them idle",
            connections_refused.clone(),
        );
        let http = HttpMetrics::default();
        http.register(&mut reg);
        reg.register(
            "build",
            "oomlab version and the kernel it runs on",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                kernel: kernel.into(),
            }),
        );
        Metrics {
            registry: Arc::new(reg),
            oom_kills,
            oom_episodes,
            oom_group_kills,
            adj_updates,
            marks_without_kill,
            reclaim_seconds,
            reclaimed_pages,
            events_lost,
            stream_skipped,
            connections_refused,
            http,
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn kill(&self, limits: &mut Limits, kill: Kill, gone: &dyn Fn(&str) -> bool) {
        let named = kill.container.is_some();
        let (namespace, pod, container) = (
            kill.namespace.unwrap_or_default(),
            kill.pod.unwrap_or_default(),
            kill.container.unwrap_or_default(),
        );
        let key = if named {
            container_key(&namespace, &pod, &container)
        } else {
            kill.cgroup.clone().unwrap_or_else(|| UNKNOWN.into())
        };
        let cgroup = if named {
            ""
        } else {
            kill.cgroup.as_deref().unwrap_or(UNKNOWN)
        };
        let admitted = self.admit(limits, &key, gone);
        let slot = if admitted {
            limits.cgroups.get_mut(&key)
        } else {
            Some(&mut limits.other)
        }
        .expect("admit() inserted the cgroup");
        let comm = kill.comm.unwrap_or_else(|| UNKNOWN.into());
        let comm = if slot.comms.contains(&comm) || slot.comms.len() < limits.max_comms {
            slot.comms.insert(comm.clone());
            comm
        } else {
            OTHER.into()
        };
        let labels = if admitted {
            KillLabels {
                cgroup: cgroup.into(),
                namespace,
                pod,
                container,
                comm,
                constraint: kill.constraint.unwrap_or_else(|| UNKNOWN.into()),
            }
        } else {
            KillLabels {
                cgroup: OTHER.into(),
                namespace: String::new(),
                pod: String::new(),
                container: String::new(),
                comm,
                constraint: kill.constraint.unwrap_or_else(|| UNKNOWN.into()),
            }
        };
        self.oom_kills.get_or_create(&labels).inc();
        slot.kill_series.insert(labels);
    }

    /// One episode; `group_kill` when `memory.oom.group` took a whole cgroup.
    pub fn episode(&self, group_kill: bool) {
        self.oom_episodes.inc();
        if group_kill {
            self.oom_group_kills.inc();
        }
    }

    pub fn adj_update(&self) {
        self.adj_updates.inc();
    }

    pub fn mark_without_kill(&self) {
        self.marks_without_kill.inc();
    }

    /// One reclaim pass in `cgroup` (`None`: unknown or global).
    pub fn reclaim(
        &self,
        limits: &mut Limits,
        cgroup: Option<&str>,
        latency: Duration,
        pages: u64,
        gone: &dyn Fn(&str) -> bool,
    ) {
        let cgroup = cgroup.unwrap_or(UNKNOWN);
        let labels = CgroupLabels {
            cgroup: if self.admit(limits, cgroup, gone) {
                cgroup.into()
            } else {
                OTHER.into()
            },
        };
        self.reclaim_seconds
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
        self.reclaimed_pages.get_or_create(&labels).inc_by(pages);
    }

    /// Brings the lost-events counter up to the kernel's running total.
    pub fn set_lost(&self, total: u64) {
        let now = self.events_lost.get();
        if total > now {
            self.events_lost.inc_by(total - now);
        }
    }

    pub fn stream_skipped(&self, n: u64) {
        self.stream_skipped.inc_by(n);
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_evicted(&self) {
        self.http.connections_evicted.inc();
    }

    pub fn set_open(&self, connections: usize, streams: usize) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.http.connections_open.set(gauge(connections));
        self.http.streams_open.set(gauge(streams));
    }

    pub fn stream_refused(&self) {
        self.http.streams_refused.inc();
    }

    pub fn stream_dropped(&self) {
        self.http.streams_dropped.inc();
    }

    pub fn unauthorized(&self) {
        self.http.unauthorized.inc();
    }

    pub fn tls_failed(&self) {
        self.http.tls_failed.inc();
    }

    /// Whether `cgroup` has (or now gets) its own series. A full table makes room by dropping
    /// cgroups that no longer exist (deleted pods), looked for at most every [`SWEEP_EVERY`].
    fn admit(&self, limits: &mut Limits, cgroup: &str, gone: &dyn Fn(&str) -> bool) -> bool {
        if limits.cgroups.contains_key(cgroup) {
            return true;
        }
        if limits.cgroups.len() >= limits.top_n {
            if limits.last_sweep.elapsed() < SWEEP_EVERY {
                return false;
            }
            limits.last_sweep = Instant::now();
            let dead: Vec<String> = limits
                .cgroups
                .keys()
                // A named container keeps its place: its series outlives restarts.
                .filter(|c| c.as_str() != UNKNOWN && !c.starts_with("container:") && gone(c))
                .cloned()
                .collect();
            for c in dead {
                if let Some(slot) = limits.cgroups.remove(&c) {
                    self.forget(&c, &slot);
                }
            }
            if limits.cgroups.len() >= limits.top_n {
                return false;
            }
        }
        limits.cgroups.insert(cgroup.into(), Slot::default());
        true
    }

    fn forget(&self, cgroup: &str, slot: &Slot) {
        for labels in &slot.kill_series {
            self.oom_kills.remove(labels);
        }
        let labels = CgroupLabels {
            cgroup: cgroup.into(),
        };
        self.reclaim_seconds.remove(&labels);
        self.reclaimed_pages.remove(&labels);
    }
}

#[derive(Debug, Default)]
struct Slot {
    comms: BTreeSet<String>,
    kill_series: HashSet<KillLabels>,
}

/// The cardinality bounds and the cgroups that currently hold a place.
#[derive(Debug)]
pub struct Limits {
    top_n: usize,
    max_comms: usize,
    cgroups: HashMap<String, Slot>,
    other: Slot,
    last_sweep: Instant,
}

impl Limits {
    pub fn new(top_n: usize, max_comms: usize) -> Limits {
        Limits {
            top_n,
            max_comms,
            cgroups: HashMap::new(),
            other: Slot::default(),
            last_sweep: Instant::now() - SWEEP_EVERY,
        }
    }

    /// New bounds (config reload); cgroups that hold a place keep it.
    pub fn set(&mut self, top_n: usize, max_comms: usize) {
        self.top_n = top_n;
        self.max_comms = max_comms;
    }

    pub fn tracked(&self) -> usize {
        self.cgroups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(cgroup: &str, comm: &str) -> Kill {
        Kill {
            cgroup: Some(cgroup.into()),
            namespace: None,
            pod: None,
            container: None,
            comm: Some(comm.into()),
            constraint: Some("CONSTRAINT_MEMCG".into()),
        }
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new("6.18.0");
        // Labelled families appear with their first series.
        let mut lim = Limits::new(4, 4);
        m.kill(&mut lim, kill("/a", "x"), &|_| false);
        m.reclaim(&mut lim, Some("/a"), Duration::from_micros(9), 1, &|_| {
            false
        });
        let text = m.encode();
        for name in [
            "# TYPE oomlab_oom_kills counter",
            "# TYPE oomlab_oom_episodes counter",
            "oomlab_oom_episodes_total 0",
            "oomlab_oom_group_kills_total 0",
            "oomlab_oom_score_adj_updates_total 0",
            "oomlab_oom_marks_without_kill_total 0",
            "# TYPE oomlab_memcg_reclaim_seconds histogram",
            "# TYPE oomlab_reclaimed_pages counter",
            "oomlab_events_lost_total 0",
            "oomlab_build_info{version=\"",
            "kernel=\"6.18.0\"} 1",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    #[test]
    fn kills_are_labelled_and_bounded() {
        let m = Metrics::new("k");
        let mut lim = Limits::new(2, 2);
        let never_gone = |_: &str| false;
        m.kill(&mut lim, kill("/a", "x"), &never_gone);
        m.kill(&mut lim, kill("/a", "x"), &never_gone);
        m.kill(&mut lim, kill("/a", "y"), &never_gone);
        m.kill(&mut lim, kill("/a", "z"), &never_gone); // third name in /a → other
        m.kill(&mut lim, kill("/b", "x"), &never_gone);
        m.kill(&mut lim, kill("/c", "x"), &never_gone); // third cgroup → other
        let text = m.encode();
        let s = |cg: &str, comm: &str| {
            format!("oomlab_oom_kills_total{{cgroup=\"{cg}\",namespace=\"\",pod=\"\",container=\"\",comm=\"{comm}\",constraint=\"CONSTRAINT_MEMCG\"}}")
        };
        assert_eq!(value(&text, &s("/a", "x")), Some(2.0), "{text}");
        assert_eq!(value(&text, &s("/a", "y")), Some(1.0));
        assert_eq!(value(&text, &s("/a", "other")), Some(1.0));
        assert_eq!(value(&text, &s("/b", "x")), Some(1.0));
        assert_eq!(value(&text, &s("other", "x")), Some(1.0));
        assert!(!text.contains("\"/c\""), "{text}");
        assert_eq!(lim.tracked(), 2);
    }

    #[test]
    fn named_containers_count_across_restarts() {
        let m = Metrics::new("k");
        let mut lim = Limits::new(1, 5);
        let named = |cgroup: &str| Kill {
            namespace: Some("shop".into()),
            pod: Some("web-0".into()),
            container: Some("app".into()),
            ..kill(cgroup, "dd")
        };
        // The same container before and after a restart (new id, new cgroup, old one gone).
        m.kill(&mut lim, named("/k8s.io/aaa"), &|_| true);
        m.kill(&mut lim, named("/k8s.io/bbb"), &|_| true);
        // Its place is never swept, so a full table sends others to `other`.
        m.kill(&mut lim, kill("/x", "y"), &|_| true);
        let text = m.encode();
        assert_eq!(
            value(&text, "oomlab_oom_kills_total{cgroup=\"\",namespace=\"shop\",pod=\"web-0\",container=\"app\",comm=\"dd\",constraint=\"CONSTRAINT_MEMCG\"}"),
            Some(2.0),
            "{text}"
        );
        assert!(!text.contains("aaa") && !text.contains("bbb"), "{text}");
        assert!(text.contains("cgroup=\"other\""), "{text}");
    }

    #[test]
    fn deleted_cgroups_give_their_place_up() {
        let m = Metrics::new("k");
        let mut lim = Limits::new(1, 5);
        m.kill(&mut lim, kill("/old", "x"), &|_| false);
        m.reclaim(
            &mut lim,
            Some("/old"),
            Duration::from_micros(50),
            7,
            &|_| false,
        );
        m.kill(&mut lim, kill("/new", "x"), &|c| c == "/old");
        let text = m.encode();
        assert!(!text.contains("\"/old\""), "{text}");
        assert!(text.contains("cgroup=\"/new\""), "{text}");
    }

    #[test]
    fn reclaim_goes_into_histogram_and_pages() {
        let m = Metrics::new("k");
        let mut lim = Limits::new(4, 4);
        for us in [20, 30, 5000] {
            m.reclaim(&mut lim, Some("/x"), Duration::from_micros(us), 10, &|_| {
                false
            });
        }
        let text = m.encode();
        assert_eq!(
            value(&text, "oomlab_memcg_reclaim_seconds_count{cgroup=\"/x\"}"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "oomlab_reclaimed_pages_total{cgroup=\"/x\"}"),
            Some(30.0)
        );
    }

    #[test]
    fn lost_follows_the_kernel_total() {
        let m = Metrics::new("k");
        m.set_lost(3);
        m.set_lost(3);
        m.set_lost(10);
        assert_eq!(value(&m.encode(), "oomlab_events_lost_total"), Some(10.0));
    }
}
