//! containerd over its gRPC socket (the `containerd-client` bindings): every namespace,
//! `k8s.io` (the kubelet's) first; each container's labels, image, task pid and status, and
//! its memory cgroup from the running init's /proc entry or the OCI spec's `cgroupsPath`.

use std::collections::BTreeMap;

use containerd_client::{
    services::v1::{
        containers_client::ContainersClient, namespaces_client::NamespacesClient,
        tasks_client::TasksClient, ListContainersRequest, ListNamespacesRequest, ListTasksRequest,
    },
    tonic::{metadata::MetadataValue, Request},
    types::v1::Status,
};

use super::{cgroup_of_pid, Container, Resolver, RuntimeError, RuntimeKind, Socket};
use crate::cgroup::Version;

const NAME: &str = "containerd";
/// The kubelet's namespace: asked first, so a pod's container wins ties.
const K8S_NAMESPACE: &str = "k8s.io";

pub struct Containerd {
    socket: Socket,
}

impl Containerd {
    pub(super) fn new(socket: Socket) -> Containerd {
        Containerd { socket }
    }
}

/// A request in one containerd namespace.
fn in_namespace<T>(msg: T, ns: &str) -> Result<Request<T>, String> {
    let mut req = Request::new(msg);
    let value = MetadataValue::try_from(ns).map_err(|e| format!("namespace {ns:?}: {e}"))?;
    req.metadata_mut().insert("containerd-namespace", value);
    Ok(req)
}

/// The OCI spec's `linux.cgroupsPath` when it is a cgroupfs path (`/k8s.io/<id>`); the
/// systemd form (`slice:prefix:name`) is left to the init's /proc entry.
fn spec_cgroup(spec: Option<&prost_types::Any>) -> Option<String> {
    let spec: serde_json::Value = serde_json::from_slice(&spec?.value).ok()?;
    let path = spec.get("linux")?.get("cgroupsPath")?.as_str()?;
    path.starts_with('/').then(|| path.to_string())
}

async fn list(
    socket: std::path::PathBuf,
    version: Option<Version>,
) -> Result<Vec<Container>, String> {
    let channel = containerd_client::connect(&socket)
        .await
        .map_err(|e| format!("cannot connect: {}", super::chain(&e)))?;
    let mut namespaces: Vec<String> = NamespacesClient::new(channel.clone())
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|e| format!("listing namespaces: {}", e.message()))?
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    namespaces.sort_by_key(|n| (n != K8S_NAMESPACE, n.clone()));
    let mut out = Vec::new();
    for ns in namespaces {
        let containers = ContainersClient::new(channel.clone())
            .list(in_namespace(ListContainersRequest::default(), &ns)?)
            .await
            .map_err(|e| format!("listing containers in {ns}: {}", e.message()))?
            .into_inner()
            .containers;
        let tasks: BTreeMap<String, (u32, bool)> = TasksClient::new(channel.clone())
            .list(in_namespace(ListTasksRequest::default(), &ns)?)
            .await
            .map_err(|e| format!("listing tasks in {ns}: {}", e.message()))?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| {
                let running = matches!(t.status(), Status::Running | Status::Paused);
                // containerd fills `id` with the container's id; `container_id` is left empty.
                let id = if t.container_id.is_empty() {
                    t.id.clone()
                } else {
                    t.container_id.clone()
                };
                (id, (t.pid, running))
            })
            .collect();
        for c in containers {
            let (pid, running) = tasks.get(&c.id).copied().unwrap_or((0, false));
            let init_pid = (running && pid > 0).then_some(pid);
            let cgroup = init_pid
                .and_then(|p| cgroup_of_pid(p, version))
                .filter(|p| p != "/")
                .or_else(|| spec_cgroup(c.spec.as_ref()));
            let labels: BTreeMap<String, String> = c.labels.into_iter().collect();
            out.push(
                Container {
                    runtime: RuntimeKind::Containerd,
                    runtime_namespace: Some(ns.clone()),
                    id: c.id,
                    name: None,
                    pod: None,
                    pod_uid: None,
                    image: (!c.image.is_empty()).then_some(c.image),
                    init_pid,
                    running,
                    cgroup,
                    sandbox: false,
                }
                .with_labels(&labels),
            );
        }
    }
    Ok(out)
}

impl Resolver for Containerd {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Containerd
    }

    fn endpoint(&self) -> String {
        self.socket.path.display().to_string()
    }

    fn list(&self, version: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
        match super::block_on(list(self.socket.path.clone(), version))? {
            Some(Ok(found)) => Ok(found),
            Some(Err(reason)) => Err(self.socket.unreachable(NAME, reason)),
            None => Err(RuntimeError::Timeout {
                runtime: NAME,
                socket: self.socket.path.clone(),
                flag: self.socket.flag,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_spec_paths_only() {
        let any = |json: &str| prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: json.as_bytes().to_vec(),
        };
        assert_eq!(
            spec_cgroup(Some(&any(r#"{"linux":{"cgroupsPath":"/k8s.io/abc"}}"#))).as_deref(),
            Some("/k8s.io/abc")
        );
        assert_eq!(
            spec_cgroup(Some(&any(
                r#"{"linux":{"cgroupsPath":"kubepods-pod1.slice:cri-containerd:abc"}}"#
            ))),
            None
        );
        assert_eq!(spec_cgroup(Some(&any("not json"))), None);
        assert_eq!(spec_cgroup(None), None);
    }
}
