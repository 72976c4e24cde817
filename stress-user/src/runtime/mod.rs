//! Container runtimes as name resolvers: which container (and pod) a memory cgroup belongs to,
//! asked of containerd (gRPC) and Docker (Engine API) over their unix sockets, with the cgroup
//! names themselves (kubelet, Docker and containerd layouts) as the fallback that needs no
//! daemon. The tracer's copy of these answers lives in [`cache`], off the event path.

pub mod cache;
mod containerd;
mod docker;
pub mod naming;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;

pub use self::{containerd::Containerd, docker::Docker, naming::CgroupNaming};
use crate::cgroup::{self, Version};

/// containerd's socket when no flag names one.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Docker's socket when no flag names one.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// How long one runtime gets to answer a full listing.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The CRI labels the kubelet puts on every container it asks containerd (or Docker) for.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// containerd's CRI plugin marks a pod's sandbox (pause) container with `kind=sandbox`.
const LABEL_CRI_KIND: &str = "io.cri-containerd.kind";

/// Runtime sockets, shared by the commands that name containers (`inject`, `trace`, `run`,
/// `serve`, `doctor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeArgs {
    /// containerd's gRPC socket (default /run/containerd/containerd.sock, skipped when absent;
    /// given explicitly it must answer).
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// Docker Engine's API socket (default /var/run/docker.sock, skipped when absent; given
    /// explicitly it must answer).
    #[arg(long, value_name = "PATH")]
    pub docker_socket: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{runtime} socket {} ({flag}): {reason}", socket.display())]
    Unreachable {
        runtime: &'static str,
        socket: PathBuf,
        flag: &'static str,
        reason: String,
    },
    #[error("{runtime} socket {} ({flag}) did not answer within {:?}", socket.display(), QUERY_TIMEOUT)]
    Timeout {
        runtime: &'static str,
        socket: PathBuf,
        flag: &'static str,
    },
    #[error("cannot start the runtime client's I/O thread: {0}")]
    Io(#[from] std::io::Error),
}

/// Which runtime knows a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Containerd,
    Docker,
    /// Found by its cgroup's name only (kubelet, CRI-O, podman, Docker or containerd layout).
    Cgroup,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Containerd => "containerd",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Cgroup => "cgroup",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pod, from the CRI labels of one of its containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// One container as a runtime (or its cgroup's name) describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub runtime: RuntimeKind,
    /// containerd's namespace (`k8s.io`, `default`, `moby`…); `None` for Docker and naming.
    pub runtime_namespace: Option<String>,
    pub id: String,
    /// Docker's name, or the CRI container name (`io.kubernetes.container.name`).
    pub name: Option<String>,
    pub pod: Option<PodRef>,
    /// The pod's UID (CRI label, or the kubelet's cgroup name).
    pub pod_uid: Option<String>,
    pub image: Option<String>,
    /// The container's init (main) process as the host sees it; `None` when it does not run.
    pub init_pid: Option<u32>,
    pub running: bool,
    /// Its memory cgroup relative to the controller's mount (`/k8s.io/<id>`, `/docker/<id>`).
    pub cgroup: Option<String>,
    /// A CRI sandbox (pause) container: never a target by name.
    pub sandbox: bool,
}

impl Container {
    /// Fills name, pod and sandbox from the CRI labels, where the kubelet set them.
    fn with_labels(mut self, labels: &BTreeMap<String, String>) -> Container {
        if let (Some(ns), Some(name)) =
            (labels.get(LABEL_POD_NAMESPACE), labels.get(LABEL_POD_NAME))
        {
            self.pod = Some(PodRef {
                namespace: ns.clone(),
                name: name.clone(),
            });
        }
        if let Some(uid) = labels.get(LABEL_POD_UID) {
            self.pod_uid = Some(uid.clone());
        }
        if let Some(name) = labels.get(LABEL_CONTAINER_NAME) {
            self.name = Some(name.clone());
        }
        self.sandbox = labels.get(LABEL_CRI_KIND).is_some_and(|k| k == "sandbox");
        self
    }

    /// `runtime[/namespace]` for error lists.
    pub fn origin(&self) -> String {
        match &self.runtime_namespace {
            Some(ns) => format!("{}/{ns}", self.runtime),
            None => self.runtime.to_string(),
        }
    }
}

/// An error with its causes (`transport error: No such file or directory (os error 2)`): the
/// client crates' top-level messages alone do not say what failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The memory cgroup of a running process, relative to the mount.
fn cgroup_of_pid(pid: u32, version: Option<Version>) -> Option<String> {
    cgroup::cgroup_of_pid(pid, version?)
}

/// One daemon that can list its containers.
pub trait Resolver: Send + Sync {
    fn kind(&self) -> RuntimeKind;
    /// The socket it talks to, for messages and `doctor`.
    fn endpoint(&self) -> String;
    /// Every container it knows, running or not (blocking; at most [`QUERY_TIMEOUT`]).
    fn list(&self, version: Option<Version>) -> Result<Vec<Container>, RuntimeError>;
}

/// Runs `fut` on a private current-thread runtime in its own thread, so that callers inside
/// or outside tokio alike can wait for it, bounded by [`QUERY_TIMEOUT`].
fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<Option<T>, std::io::Error> {
    std::thread::Builder::new()
        .name("oomlab-runtime".into())
        .spawn(move || -> Result<Option<T>, std::io::Error> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(async { tokio::time::timeout(QUERY_TIMEOUT, fut).await.ok() }))
        })?
        .join()
        .map_err(|_| std::io::Error::other("runtime client thread panicked"))?
}

/// A socket, whether a flag named it, and the flag.
#[derive(Debug, Clone)]
struct Socket {
    path: PathBuf,
    explicit: bool,
    flag: &'static str,
}

impl Socket {
    fn new(given: Option<&Path>, default: &str, flag: &'static str) -> Socket {
        Socket {
            path: given.map_or_else(|| PathBuf::from(default), Path::to_path_buf),
            explicit: given.is_some(),
            flag,
        }
    }

    fn unreachable(&self, runtime: &'static str, reason: String) -> RuntimeError {
        RuntimeError::Unreachable {
            runtime,
            socket: self.path.clone(),
            flag: self.flag,
            reason,
        }
    }
}

/// What one runtime answered.
#[derive(Debug, Serialize)]
pub struct Reached {
    pub kind: RuntimeKind,
    pub endpoint: String,
    /// `{"Ok": n containers}` or `{"Err": why not}`.
    pub result: Result<usize, String>,
}

/// The runtimes a command asks, in order: containerd, Docker, then cgroup naming.
pub struct Runtimes {
    resolvers: Vec<(Box<dyn Resolver>, bool)>,
}

impl Runtimes {
    /// containerd and Docker on their sockets (default ones only when they exist) and naming.
    pub fn new(args: &RuntimeArgs, hier: Option<&cgroup::Hierarchy>) -> Runtimes {
        let mut resolvers: Vec<(Box<dyn Resolver>, bool)> = Vec::new();
        let c = Socket::new(
            args.containerd_socket.as_deref(),
            CONTAINERD_SOCKET,
            "--containerd-socket",
        );
        if c.explicit || c.path.exists() {
            let explicit = c.explicit;
            resolvers.push((Box::new(Containerd::new(c)), explicit));
        }
        let d = Socket::new(
            args.docker_socket.as_deref(),
            DOCKER_SOCKET,
            "--docker-socket",
        );
        if d.explicit || d.path.exists() {
            let explicit = d.explicit;
            resolvers.push((Box::new(Docker::new(d)), explicit));
        }
        if let Some(h) = hier {
            resolvers.push((Box::new(CgroupNaming::new(h.clone())), false));
        }
        Runtimes { resolvers }
    }

    /// Exactly these resolvers, none of them named by a flag (for tests of what uses them).
    #[cfg(test)]
    pub(crate) fn from_resolvers(resolvers: Vec<Box<dyn Resolver>>) -> Runtimes {
        Runtimes {
            resolvers: resolvers.into_iter().map(|r| (r, false)).collect(),
        }
    }

    /// Every container of every runtime that answers. A runtime whose socket a flag named must
    /// answer; a default socket that fails is skipped (and said so in `log`).
    pub fn list(&self, version: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
        let mut all = Vec::new();
        for (r, explicit) in &self.resolvers {
            match r.list(version) {
                Ok(found) => all.extend(found),
                Err(e) if *explicit => return Err(e),
                Err(e) => log::info!("{e}; skipped"),
            }
        }
        Ok(dedup(all))
    }

    /// Checks that every runtime a flag named answers (before anything is created).
    pub fn check_explicit(&self, version: Option<Version>) -> Result<(), RuntimeError> {
        for (r, explicit) in &self.resolvers {
            if *explicit {
                r.list(version)?;
            }
        }
        Ok(())
    }

    /// What each runtime answered, for `doctor` and the cache.
    pub fn reach(&self, version: Option<Version>) -> (Vec<Reached>, Vec<Container>) {
        let mut all = Vec::new();
        let mut out = Vec::new();
        for (r, _) in &self.resolvers {
            let result = match r.list(version) {
                Ok(found) => {
                    let n = found.len();
                    all.extend(found);
                    Ok(n)
                }
                Err(e) => Err(e.to_string()),
            };
            out.push(Reached {
                kind: r.kind(),
                endpoint: r.endpoint(),
                result,
            });
        }
        (out, dedup(all))
    }
}

/// A container that a daemon and cgroup naming both found is kept once, the daemon's (richer)
/// record first. Docker's containers also appear in containerd's `moby` namespace: Docker wins.
fn dedup(all: Vec<Container>) -> Vec<Container> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<Container> = Vec::new();
    for c in all {
        match seen.get(&c.id) {
            Some(&i) => {
                let better = matches!(
                    (out[i].runtime, c.runtime),
                    (RuntimeKind::Cgroup, _) | (RuntimeKind::Containerd, RuntimeKind::Docker)
                );
                if better {
                    out[i] = c;
                }
            }
            None => {
                seen.insert(c.id.clone(), out.len());
                out.push(c);
            }
        }
    }
    out
}

/// A resolver with a fixed answer, for the unit tests of what uses resolvers (the real
/// daemons are the root tests' business: tests/containers.rs, tests/docker.rs).
#[cfg(test)]
pub(crate) struct Fixed(pub(crate) Vec<Container>);

#[cfg(test)]
impl Resolver for Fixed {
    fn kind(&self) -> RuntimeKind {
        self.0
            .first()
            .map_or(RuntimeKind::Containerd, |c| c.runtime)
    }

    fn endpoint(&self) -> String {
        "fixed".into()
    }

    fn list(&self, _: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(runtime: RuntimeKind, id: &str) -> Container {
        Container {
            runtime,
            runtime_namespace: None,
            id: id.into(),
            name: None,
            pod: None,
            pod_uid: None,
            image: None,
            init_pid: None,
            running: true,
            cgroup: None,
            sandbox: false,
        }
    }

    #[test]
    fn cri_labels_name_the_pod() {
        let labels: BTreeMap<String, String> = [
            (LABEL_POD_NAME, "web-0"),
            (LABEL_POD_NAMESPACE, "shop"),
            (LABEL_POD_UID, "u-1"),
            (LABEL_CONTAINER_NAME, "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got = c(RuntimeKind::Containerd, "x").with_labels(&labels);
        assert_eq!(got.name.as_deref(), Some("app"));
        assert_eq!(
            got.pod,
            Some(PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
            })
        );
        assert_eq!(got.pod_uid.as_deref(), Some("u-1"));
        assert!(!got.sandbox);
    }

    #[test]
    fn daemons_win_over_naming() {
        let got = dedup(vec![
            c(RuntimeKind::Cgroup, "a"),
            c(RuntimeKind::Containerd, "b"),
            c(RuntimeKind::Containerd, "a"),
            c(RuntimeKind::Docker, "b"),
            c(RuntimeKind::Cgroup, "b"),
        ]);
        let kinds: Vec<(String, RuntimeKind)> =
            got.into_iter().map(|c| (c.id, c.runtime)).collect();
        assert_eq!(
            kinds,
            [
                ("a".into(), RuntimeKind::Containerd),
                ("b".into(), RuntimeKind::Docker)
            ]
        );
    }
}
