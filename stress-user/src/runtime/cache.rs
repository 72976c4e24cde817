//! The tracer's view of the runtimes, kept off the event path: a thread refreshes a
//! cgroup → container table when cgroups are made or removed (and every few seconds), and a
//! victim's lookup only reads the last table. A slow or dead runtime delays the table, never a
//! kill: the lookup says what is missing instead.

use std::{
    collections::HashMap,
    sync::{mpsc, Arc, Mutex},
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

/// Handle on the table; cheap to clone. The refresh thread stops when the last handle goes.
#[derive(Clone)]
pub struct Names {
    table: Arc<Mutex<Table>>,
    tx: mpsc::SyncSender<()>,
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
        let table = Arc::new(Mutex::new(Table::default()));
        // One pending request is enough: a refresh reads everything anew.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&table);
        let spawned = std::thread::Builder::new()
            .name("oomlab-names".into())
            .spawn(move || {
                refresh(&runtimes, version, &shared);
                let _ = ready_tx.send(());
                loop {
                    match rx.recv_timeout(REFRESH_EVERY) {
                        Ok(()) => {
                            std::thread::sleep(COALESCE);
                            while rx.try_recv().is_ok() {}
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    refresh(&runtimes, version, &shared);
                }
            });
        match spawned {
            Ok(_) => {
                let _ = ready_rx.recv_timeout(first);
            }
            Err(e) => {
                if let Ok(mut t) = table.lock() {
                    t.errors
                        .push(format!("cannot start the name resolver thread: {e}"));
                }
            }
        }
        Names { table, tx }
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
        }
    }

    /// A cgroup was made or removed: refresh soon (never blocks).
    pub fn changed(&self) {
        let _ = self.tx.try_send(());
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
