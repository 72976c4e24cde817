//! The tracer's view of the runtimes, kept off the event path: a thread refreshes a
//! cgroup → container table when cgroups are made or removed (and every few seconds), and a
//! victim's lookup only reads the last table. A slow or dead runtime delays the table, never a
//! kill: the lookup says what is missing instead.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Condvar, Mutex},
    time::Duration,
};

use super::{Container, RuntimeKind, Runtimes};
use crate::cgroup::Version;

/// How often the table is rebuilt when no cgroup changes.
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// Changes closer together than this share one refresh.
const COALESCE: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Table {
    by_cgroup: HashMap<String, Arc<Container>>,
    /// A refresh has completed.
    ready: bool,
    /// Why the last refresh missed a runtime.
    errors: Vec<String>,
}

/// What the table says of one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<Container>),
    /// Not a container the runtimes know (yet), and why names may be missing.
    Missing(String),
}

/// Refreshes asked for (`changed`) and done, counted, so a lookup can tell that the table it
/// read predates a cgroup change the refresh thread has not caught up with yet.
#[derive(Debug, Default)]
struct Generations {
    counts: Mutex<(u64, u64)>,
    done: Condvar,
}

impl Generations {
    fn asked(&self) -> u64 {
        self.counts.lock().map_or(0, |mut c| {
            c.0 += 1;
            c.0
        })
    }

    fn current_ask(&self) -> u64 {
        self.counts.lock().map_or(0, |c| c.0)
    }

    fn completed(&self, upto: u64) {
        if let Ok(mut c) = self.counts.lock() {
            c.1 = c.1.max(upto);
        }
        self.done.notify_all();
    }

    /// Waits up to `limit` for the refreshes asked for so far; true when one was pending and
    /// has completed.
    fn wait(&self, limit: Duration) -> bool {
        let Ok(c) = self.counts.lock() else {
            return false;
        };
        let want = c.0;
        if c.1 >= want {
            return false;
        }
        self.done
            .wait_timeout_while(c, limit, |c| c.1 < want)
            .is_ok_and(|(c, _)| c.1 >= want)
    }
}

/// Handle on the table; cheap to clone. The refresh thread stops when the last handle goes.
#[derive(Clone)]
pub struct Names {
    table: Arc<Mutex<Table>>,
    tx: mpsc::SyncSender<()>,
    gens: Arc<Generations>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Names")
    }
}

/// Rebuilds the table. A runtime that did not answer keeps its containers from the last table
/// (a stopped or slow daemon's containers still run, and their names have not changed).
fn refresh(runtimes: &Runtimes, version: Option<Version>, table: &Mutex<Table>) {
    let (reached, containers) = runtimes.reach(version);
    let failed: Vec<RuntimeKind> = reached
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.kind)
        .collect();
    let errors = reached.into_iter().filter_map(|r| r.result.err()).collect();
    let mut by_cgroup: HashMap<String, Arc<Container>> = containers
        .into_iter()
        .filter_map(|c| Some((c.cgroup.clone()?, Arc::new(c))))
        .collect();
    let Ok(mut t) = table.lock() else {
        return;
    };
    for (cg, c) in &t.by_cgroup {
        if failed.contains(&c.runtime) && !by_cgroup.contains_key(cg) {
            by_cgroup.insert(cg.clone(), Arc::clone(c));
        }
    }
    *t = Table {
        by_cgroup,
        ready: true,
        errors,
    };
}

impl Names {
    /// Starts the refresh thread and waits up to `first` for its first table (start-up, not the
    /// event path: a runtime that answers late leaves the first victims without names).
    pub fn start(runtimes: Runtimes, version: Option<Version>, first: Duration) -> Names {
        let names = Names::spawn(runtimes, version);
        names.gens.wait(first);
        names
    }

    /// Starts the refresh thread without waiting: the first table is the first refresh asked
    /// for, so a victim looked up before it is ready waits for it as for any pending refresh
    /// ([`Names::caught_up`]). For a command whose start must not wait on the runtimes (or on
    /// the node's cgroups, which the first refresh reads: 0.1 s beside 5,000 of them).
    pub fn spawn(runtimes: Runtimes, version: Option<Version>) -> Names {
        let table = Arc::new(Mutex::new(Table::default()));
        // One pending request is enough: a refresh reads everything anew.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let shared = Arc::clone(&table);
        let gens = Arc::new(Generations::default());
        let first = gens.asked();
        let thread_gens = Arc::clone(&gens);
        let spawned = std::thread::Builder::new()
            .name("oomlab-names".into())
            .spawn(move || {
                refresh(&runtimes, version, &shared);
                thread_gens.completed(first);
                loop {
                    match rx.recv_timeout(REFRESH_EVERY) {
                        Ok(()) => {
                            std::thread::sleep(COALESCE);
                            while rx.try_recv().is_ok() {}
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // Asks made from here on may have come after the runtimes were read.
                    let upto = thread_gens.current_ask();
                    refresh(&runtimes, version, &shared);
                    thread_gens.completed(upto);
                }
            });
        if let Err(e) = spawned {
            if let Ok(mut t) = table.lock() {
                t.errors
                    .push(format!("cannot start the name resolver thread: {e}"));
            }
            // Nothing will complete the first refresh: nobody should wait for it.
            gens.completed(first);
        }
        Names { table, tx, gens }
    }

    /// One table from `runtimes`, built now, with no refresh thread (for tests of lookups).
    #[cfg(test)]
    pub(crate) fn once(runtimes: &Runtimes) -> Names {
        let table = Mutex::new(Table::default());
        refresh(runtimes, None, &table);
        let (tx, _rx) = mpsc::sync_channel(1);
        Names {
            table: Arc::new(table),
            tx,
            gens: Arc::default(),
        }
    }

    /// A cgroup was made or removed: refresh soon (never blocks).
    pub fn changed(&self) {
        self.gens.asked();
        let _ = self.tx.try_send(());
    }

    /// When a cgroup change is waiting for its refresh, waits up to `limit` for it; true when
    /// the table is newer now. For a victim whose cgroup the table does not know: a container
    /// made a moment before its first OOM kill is named, at the cost of at most `limit` for
    /// that one victim (nothing waits when no change is pending).
    pub fn caught_up(&self, limit: Duration) -> bool {
        self.gens.wait(limit)
    }

    /// The container whose init process is `pid`: a container's main process killed by the
    /// OOM killer may be reaped before its /proc names its cgroup, and no `cgroup_attach_task`
    /// of it comes when the runtime moved it in before the trace began.
    pub fn lookup_init(&self, pid: u32) -> Option<Arc<Container>> {
        let t = self.table.lock().ok()?;
        t.by_cgroup
            .values()
            .find(|c| c.init_pid == Some(pid))
            .map(Arc::clone)
    }

    /// The container `cgroup` (relative to the mount) is in or below.
    pub fn lookup(&self, cgroup: &str) -> Lookup {
        let Ok(t) = self.table.lock() else {
            return Lookup::Missing("the name table is unavailable".into());
        };
        let mut path = cgroup.trim_end_matches('/');
        loop {
            if let Some(c) = t.by_cgroup.get(path) {
                return Lookup::Found(Arc::clone(c));
            }
            match path.rfind('/') {
                Some(0) | None => break,
                Some(i) => path = &path[..i],
            }
        }
        Lookup::Missing(if !t.ready {
            "the runtimes had not answered yet".into()
        } else if t.errors.is_empty() {
            "no runtime knows this cgroup".into()
        } else {
            t.errors.join("; ")
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_lookup_waits_only_for_a_pending_refresh() {
        let g = Arc::new(Generations::default());
        assert!(!g.wait(Duration::from_secs(5)), "nothing pending: no wait");
        let want = g.asked();
        let t = {
            let g = Arc::clone(&g);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                g.completed(want);
            })
        };
        assert!(
            g.wait(Duration::from_secs(5)),
            "the pending refresh completed"
        );
        let _ = t.join();
        g.asked();
        let start = std::time::Instant::now();
        assert!(
            !g.wait(Duration::from_millis(50)),
            "a refresh that never comes"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    use crate::runtime::{Resolver, RuntimeError};

    /// Answers once with one container, then fails as a dead socket does.
    struct Flaky {
        answered: AtomicBool,
    }

    impl Resolver for Flaky {
        fn kind(&self) -> RuntimeKind {
            RuntimeKind::Containerd
        }

        fn endpoint(&self) -> String {
            "/nowhere.sock".into()
        }

        fn list(&self, _: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
            if self.answered.swap(true, Ordering::SeqCst) {
                return Err(RuntimeError::Timeout {
                    runtime: "containerd",
                    socket: "/nowhere.sock".into(),
                    flag: "--containerd-socket",
                });
            }
            Ok(vec![Container {
                runtime: RuntimeKind::Containerd,
                runtime_namespace: Some("k8s.io".into()),
                id: "abc".into(),
                name: Some("app".into()),
                pod: None,
                pod_uid: None,
                image: None,
                init_pid: Some(1),
                running: true,
                cgroup: Some("/k8s.io/abc".into()),
                sandbox: false,
            }])
        }
    }

    #[test]
    fn lookups_read_the_last_table_and_say_what_is_missing() {
        let runtimes = Runtimes::from_resolvers(vec![Box::new(Flaky {
            answered: AtomicBool::new(false),
        })]);
        let names = Names::once(&runtimes);
        // A process in a sub-cgroup of the container belongs to it.
        for cg in ["/k8s.io/abc", "/k8s.io/abc/sub/"] {
            assert!(
                matches!(names.lookup(cg), Lookup::Found(ref c) if c.id == "abc"),
                "{cg}"
            );
        }
        assert_eq!(
            names.lookup("/other"),
            Lookup::Missing("no runtime knows this cgroup".into())
        );
        // The runtime stops answering: its containers stay, and misses say why.
        refresh(&runtimes, None, &names.table);
        assert!(matches!(names.lookup("/k8s.io/abc"), Lookup::Found(_)));
        match names.lookup("/other") {
            Lookup::Missing(why) => assert!(why.contains("did not answer"), "{why}"),
            Lookup::Found(c) => panic!("found {c:?}"),
        }
    }
}
