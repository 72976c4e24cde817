//! The fallback resolver: containers known only by their cgroup's name — the kubelet's tree
//! (any CRI runtime: containerd, CRI-O, Docker via cri-dockerd; see `cgroup::kube`), plain
//! Docker's `docker/<id>` or `docker-<id>.scope`, podman's `libpod-<id>.scope`, and CRI-O's or
//! containerd's scopes outside a kubelet tree. It needs no daemon, and knows no names.

use super::{Container, Resolver, RuntimeError, RuntimeKind};
use crate::cgroup::{kube, Hierarchy, Version};

/// Scope prefixes of the runtimes' systemd-driver cgroups, and who they are.
const SCOPES: [(&str, &str); 5] = [
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("crio-", "crio"),
    ("cri-containerd-", "containerd"),
    ("containerd-", "containerd"),
];

fn is_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The runtime and 64-hex-digit container id a cgroup path names: `/docker/<id>` and
/// `/libpod_parent/libpod-<id>` (cgroupfs drivers) or `…/<prefix><id>.scope` (systemd
/// drivers, see [`SCOPES`]); the first such component wins (a container's sub-cgroups too).
pub fn runtime_id(path: &str) -> Option<(&'static str, String)> {
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(p) = parts.next() {
        if p == "docker" {
            if let Some(id) = parts.peek().filter(|id| is_id(id)) {
                return Some(("docker", (*id).to_string()));
            }
            continue;
        }
        let scope = p.ends_with(".scope");
        let base = p.strip_suffix(".scope").unwrap_or(p);
        for (prefix, runtime) in SCOPES {
            if let Some(id) = base.strip_prefix(prefix).filter(|id| is_id(id)) {
                if scope || prefix == "libpod-" {
                    return Some((runtime, id.to_string()));
                }
            }
        }
    }
    None
}

/// Docker's own cgroup for a container (see [`runtime_id`]).
pub fn docker_id(path: &str) -> Option<String> {
    runtime_id(path).and_then(|(rt, id)| (rt == "docker").then_some(id))
}

pub struct CgroupNaming {
    hier: Hierarchy,
}

impl CgroupNaming {
    pub(super) fn new(hier: Hierarchy) -> CgroupNaming {
        CgroupNaming { hier }
    }
}

impl Resolver for CgroupNaming {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Cgroup
    }

    fn endpoint(&self) -> String {
        self.hier.memory_mount.display().to_string()
    }

    fn list(&self, _version: Option<Version>) -> Result<Vec<Container>, RuntimeError> {
        let roots = kube::find_roots(&self.hier);
        let mut out: Vec<Container> = roots
            .iter()
            .flat_map(|root| kube::pods_under(&self.hier, root))
            .flat_map(|(pod, _)| kube::containers_of(&self.hier, &pod))
            .filter_map(|(cg, r)| {
                Some(Container {
                    runtime: RuntimeKind::Cgroup,
                    runtime_namespace: None,
                    id: r.container_id?,
                    name: None,
                    pod: None,
                    pod_uid: Some(r.pod_uid),
                    image: None,
                    init_pid: None,
                    running: true,
                    cgroup: Some(cg.path()),
                    sandbox: false,
                })
            })
            .collect();
        let docker = self.hier.cgroup("docker");
        if let Ok(entries) = std::fs::read_dir(docker.dir()) {
            for e in entries.filter_map(Result::ok) {
                let rel = format!("/docker/{}", e.file_name().to_string_lossy());
                if let Some(id) = docker_id(&rel) {
                    out.push(Container {
                        runtime: RuntimeKind::Cgroup,
                        runtime_namespace: None,
                        id,
                        name: None,
                        pod: None,
                        pod_uid: None,
                        image: None,
                        init_pid: None,
                        running: true,
                        cgroup: Some(rel),
                        sandbox: false,
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1e9a7c5b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    #[test]
    fn docker_layouts() {
        assert_eq!(docker_id(&format!("/docker/{ID}")).as_deref(), Some(ID));
        assert_eq!(docker_id(&format!("/docker/{ID}/sub")).as_deref(), Some(ID));
        assert_eq!(
            docker_id(&format!("/system.slice/docker-{ID}.scope")).as_deref(),
            Some(ID)
        );
        assert_eq!(docker_id("/docker"), None);
        assert_eq!(docker_id("/docker/short"), None);
        assert_eq!(docker_id("/system.slice/docker.service"), None);
    }

    #[test]
    fn podman_crio_containerd_scopes() {
        for (path, rt) in [
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
            (format!("/libpod_parent/libpod-{ID}"), "podman"),
            (format!("/system.slice/crio-{ID}.scope"), "crio"),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
        ] {
            assert_eq!(runtime_id(&path), Some((rt, ID.to_string())), "{path}");
        }
        assert_eq!(runtime_id("/machine.slice/libpod-conmon-x.scope"), None);
        assert_eq!(runtime_id(&format!("/system.slice/crio-{ID}")), None);
        assert_eq!(runtime_id("/user.slice/user-0.slice"), None);
    }
}
