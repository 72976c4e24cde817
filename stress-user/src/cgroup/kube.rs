//! Kubelet cgroup naming, both drivers: parsing a cgroup path into (QoS, pod UID, container id)
//! and finding a pod's or a container's cgroup under the memory controller's mount.
//!
//! cgroupfs: `kubepods/<qos>/pod<uid>/<id>`, guaranteed pods at `kubepods/pod<uid>`.
//! systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<runtime>-<id>.scope`
//! (`-` of the UID written `_`), guaranteed pods at `kubepods.slice/kubepods-pod<uid_>.slice`.
//! A kubelet started with `--cgroup-root` (kind: `kubelet.slice/kubelet-kubepods.slice/…`) puts
//! the same tree lower down, so the kubepods root is searched for, not assumed at the top.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use super::{Hierarchy, MemCgroup};

/// How deep below the mount a kubepods root is looked for (`kubelet.slice/kubelet-kubepods.slice`
/// is depth 2; nested test or kind-in-kind trees go a little deeper).
pub const ROOT_SEARCH_DEPTH: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        })
    }
}

/// The kubelet's cgroup driver, as seen in the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// What a kubelet-style cgroup path says about its pod and container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KubeRef {
    pub driver: Driver,
    pub qos: Qos,
    /// With dashes, as the API server shows it (`kubectl get pod -o jsonpath={.metadata.uid}`).
    pub pod_uid: String,
    /// `None` for the pod-level cgroup itself.
    pub container_id: Option<String>,
    /// The scope's prefix (`cri-containerd`, `crio`, `docker`, `crio-conmon`…) when the name
    /// carries one; cgroupfs with containerd or docker names the cgroup by the bare id.
    pub runtime: Option<String>,
}

/// Where a path sits in the kubelet's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeLevel {
    /// `kubepods` / `kubepods.slice`: every pod on the node.
    Root,
    /// `kubepods/burstable`, `kubepods.slice/kubepods-besteffort.slice`…
    Qos(Qos),
    /// A pod, a container, or anything below a container.
    Pod(KubeRef),
}

/// Normalises a pod UID given with dashes or with the systemd driver's underscores.
pub fn normalize_uid(uid: &str) -> String {
    uid.trim().replace('_', "-").to_ascii_lowercase()
}

fn is_root_name(name: &str) -> bool {
    name == "kubepods" || name == "kubepods.slice" || name.ends_with("-kubepods.slice")
}

fn qos_name(name: &str) -> Option<Qos> {
    match name {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// `kubepods-burstable.slice` (or `kubelet-kubepods-burstable.slice`) → Burstable.
fn systemd_qos_slice(name: &str) -> Option<Qos> {
    let stem = name.strip_suffix(".slice")?;
    if stem.ends_with("kubepods-burstable") {
        Some(Qos::Burstable)
    } else if stem.ends_with("kubepods-besteffort") {
        Some(Qos::BestEffort)
    } else {
        None
    }
}

/// `kubepods-burstable-pod<uid_>.slice` → (Burstable, uid); `kubepods-pod<uid_>.slice` →
/// (Guaranteed, uid).
fn systemd_pod_slice(name: &str) -> Option<(Qos, String)> {
    let stem = name.strip_suffix(".slice")?;
    // The UID is written with `_`, so the last `-pod` starts it.
    let (prefix, uid) = stem.rsplit_once("-pod")?;
    if uid.is_empty() || uid.contains('-') {
        return None;
    }
    let qos = if prefix.ends_with("kubepods-burstable") {
        Qos::Burstable
    } else if prefix.ends_with("kubepods-besteffort") {
        Qos::BestEffort
    } else if prefix.ends_with("kubepods") {
        Qos::Guaranteed
    } else {
        return None;
    };
    Some((qos, normalize_uid(uid)))
}

fn cgroupfs_pod(name: &str) -> Option<String> {
    let uid = name.strip_prefix("pod")?;
    (!uid.is_empty()).then(|| normalize_uid(uid))
}

/// A container cgroup name: `<runtime>-<id>.scope` (systemd), `<id>` or `<runtime>-<id>`
/// (cgroupfs; CRI-O prefixes `crio-`). The id is the part after the last `-`: runtime ids are
/// hex and never contain one.
fn container_name(name: &str, driver: Driver) -> Option<(Option<String>, String)> {
    let base = match driver {
        Driver::Systemd => name.strip_suffix(".scope")?,
        Driver::Cgroupfs => name,
    };
    match base.rsplit_once('-') {
        Some((runtime, id)) if !runtime.is_empty() && !id.is_empty() => {
            Some((Some(runtime.to_string()), id.to_string()))
        }
        Some(_) => None,
        None if driver == Driver::Cgroupfs && !base.is_empty() => Some((None, base.to_string())),
        None => None,
    }
}

/// Where `path` (relative to the mount or as `/proc/PID/cgroup` prints it) sits in a kubelet
/// tree, or `None` when it is not inside one.
pub fn classify(path: &str) -> Option<KubeLevel> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // The last kubepods root in the path: a kubelet nested in a pod of another is the innermost.
    let root = parts.iter().rposition(|p| is_root_name(p))?;
    let driver = if parts[root] == "kubepods" {
        Driver::Cgroupfs
    } else {
        Driver::Systemd
    };
    let mut rest = parts[root + 1..].iter().copied();
    let Some(first) = rest.next() else {
        return Some(KubeLevel::Root);
    };
    let (qos, uid) = match driver {
        Driver::Cgroupfs => match (qos_name(first), cgroupfs_pod(first)) {
            (Some(qos), _) => match rest.next() {
                None => return Some(KubeLevel::Qos(qos)),
                Some(pod) => (qos, cgroupfs_pod(pod)?),
            },
            (None, Some(uid)) => (Qos::Guaranteed, uid),
            (None, None) => return None,
        },
        Driver::Systemd => match (systemd_qos_slice(first), systemd_pod_slice(first)) {
            (Some(qos), _) => match rest.next() {
                None => return Some(KubeLevel::Qos(qos)),
                Some(pod) => {
                    let (pod_qos, uid) = systemd_pod_slice(pod)?;
                    (pod_qos == qos).then_some(())?;
                    (qos, uid)
                }
            },
            (None, Some((Qos::Guaranteed, uid))) => (Qos::Guaranteed, uid),
            _ => return None,
        },
    };
    let (runtime, container_id) = match rest.next() {
        Some(name) => match container_name(name, driver) {
            Some((runtime, id)) => (runtime, Some(id)),
            None => (None, None),
        },
        None => (None, None),
    };
    Some(KubeLevel::Pod(KubeRef {
        driver,
        qos,
        pod_uid: uid,
        container_id,
        runtime,
    }))
}

/// The pod (and container, when the path is inside one) a cgroup path belongs to — what the
/// tracer prints next to a victim. `None` for paths outside pods (including the kubepods and
/// QoS-level cgroups themselves).
pub fn parse_path(path: &str) -> Option<KubeRef> {
    match classify(path)? {
        KubeLevel::Pod(r) => Some(r),
        KubeLevel::Root | KubeLevel::Qos(_) => None,
    }
}

/// Every kubepods root (`kubepods`, `kubepods.slice`, `*-kubepods.slice`) under the memory
/// mount, at most [`ROOT_SEARCH_DEPTH`] levels down, without looking inside the roots found.
pub fn find_roots(hier: &Hierarchy) -> Vec<MemCgroup> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((rel, depth)) = stack.pop() {
        for name in subdirs(&hier.memory_mount.join(&rel)) {
            let child = rel.join(&name);
            if is_root_name(&name) {
                found.push(hier.cgroup(&child));
            } else if depth + 1 < ROOT_SEARCH_DEPTH {
                stack.push((child, depth + 1));
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    found
}

/// Child directory names, sorted; a directory that vanished meanwhile has none.
fn subdirs(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Every pod-level cgroup under one kubepods root, with what its name says.
pub fn pods_under(hier: &Hierarchy, root: &MemCgroup) -> Vec<(MemCgroup, KubeRef)> {
    let mut out = Vec::new();
    let mut visit = |rel: &Path| {
        let text = rel.to_string_lossy();
        if let Some(KubeLevel::Pod(r)) = classify(&text) {
            if r.container_id.is_none() {
                out.push((hier.cgroup(rel), r));
            }
        }
    };
    for name in subdirs(&root.dir()) {
        let rel = root.rel.join(&name);
        match classify(&rel.to_string_lossy()) {
            Some(KubeLevel::Qos(_)) => {
                for pod in subdirs(&root.dir().join(&name)) {
                    visit(&rel.join(pod));
                }
            }
            _ => visit(&rel),
        }
    }
    out
}

/// Every container cgroup directly under a pod cgroup. CRI-O's `crio-conmon-<id>` monitor
/// scopes are left out: they share the container's id but hold the monitor, not the container.
pub fn containers_of(hier: &Hierarchy, pod: &MemCgroup) -> Vec<(MemCgroup, KubeRef)> {
    subdirs(&pod.dir())
        .into_iter()
        .filter_map(|name| {
            let rel = pod.rel.join(name);
            let r = parse_path(&rel.to_string_lossy())?;
            let is_monitor = r
                .runtime
                .as_deref()
                .is_some_and(|rt| rt.ends_with("conmon"));
            (r.container_id.is_some() && !is_monitor).then(|| (hier.cgroup(&rel), r))
        })
        .collect()
}

/// The kubepods roots that were searched, for "not found" messages.
pub fn describe_roots(hier: &Hierarchy, roots: &[MemCgroup]) -> String {
    if roots.is_empty() {
        format!(
            "no kubepods or kubepods.slice cgroup within {ROOT_SEARCH_DEPTH} levels of {} (is this a Kubernetes node?)",
            hier.memory_mount.display()
        )
    } else {
        let list: Vec<String> = roots.iter().map(MemCgroup::path).collect();
        format!("{} under {}", list.join(", "), hier.memory_mount.display())
    }
}

/// Pods whose UID equals `uid` (dashes or underscores), across `roots`.
pub fn find_pod(hier: &Hierarchy, roots: &[MemCgroup], uid: &str) -> Vec<(MemCgroup, KubeRef)> {
    let uid = normalize_uid(uid);
    roots
        .iter()
        .flat_map(|root| pods_under(hier, root))
        .filter(|(_, r)| r.pod_uid == uid)
        .collect()
}

/// Containers whose id starts with `prefix`, across `roots`. An exact id match wins over
/// longer ids that merely start with it.
pub fn find_container(
    hier: &Hierarchy,
    roots: &[MemCgroup],
    prefix: &str,
) -> Vec<(MemCgroup, KubeRef)> {
    let prefix = prefix.trim().to_ascii_lowercase();
    let matches: Vec<(MemCgroup, KubeRef)> = roots
        .iter()
        .flat_map(|root| pods_under(hier, root))
        .flat_map(|(pod, _)| containers_of(hier, &pod))
        .filter(|(_, r)| {
            r.container_id
                .as_deref()
                .is_some_and(|id| id.to_ascii_lowercase().starts_with(&prefix))
        })
        .collect();
    let exact: Vec<(MemCgroup, KubeRef)> = matches
        .iter()
        .filter(|(_, r)| {
            r.container_id
                .as_deref()
                .is_some_and(|id| id.eq_ignore_ascii_case(&prefix))
        })
        .cloned()
        .collect();
    if exact.is_empty() {
        matches
    } else {
        exact
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f6e4f5c-1a2b-4c3d-9e8f-001122334455";
    const UID_: &str = "0f6e4f5c_1a2b_4c3d_9e8f_001122334455";
    const CID: &str = "3f1e9a7c5b2d4e6f8a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f";

    fn pod(driver: Driver, qos: Qos, cid: Option<&str>, runtime: Option<&str>) -> KubeRef {
        KubeRef {
            driver,
            qos,
            pod_uid: UID.into(),
            container_id: cid.map(Into::into),
            runtime: runtime.map(Into::into),
        }
    }

    #[test]
    fn cgroupfs_paths() {
        use Driver::Cgroupfs as D;
        assert_eq!(
            parse_path(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            Some(pod(D, Qos::Burstable, Some(CID), None))
        );
        assert_eq!(
            parse_path(&format!("kubepods/besteffort/pod{UID}")),
            Some(pod(D, Qos::BestEffort, None, None))
        );
        assert_eq!(
            parse_path(&format!("/kubepods/pod{UID}/{CID}")),
            Some(pod(D, Qos::Guaranteed, Some(CID), None))
        );
        // CRI-O with the cgroupfs driver prefixes the id.
        assert_eq!(
            parse_path(&format!("/kubepods/pod{UID}/crio-{CID}")),
            Some(pod(D, Qos::Guaranteed, Some(CID), Some("crio")))
        );
        // Below a container (a process's own sub-cgroup) still belongs to it.
        assert_eq!(
            parse_path(&format!("/kubepods/burstable/pod{UID}/{CID}/sub")),
            Some(pod(D, Qos::Burstable, Some(CID), None))
        );
    }

    #[test]
    fn systemd_paths_all_runtimes() {
        use Driver::Systemd as D;
        for runtime in ["cri-containerd", "crio", "docker", "crio-conmon"] {
            assert_eq!(
                parse_path(&format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/{runtime}-{CID}.scope"
                )),
                Some(pod(D, Qos::Burstable, Some(CID), Some(runtime))),
                "{runtime}"
            );
        }
        assert_eq!(
            parse_path(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
            )),
            Some(pod(D, Qos::BestEffort, None, None))
        );
        assert_eq!(
            parse_path(&format!(
                "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"
            )),
            Some(pod(D, Qos::Guaranteed, Some(CID), Some("cri-containerd")))
        );
        // kind: the kubelet runs with --cgroup-root=/kubelet.
        assert_eq!(
            parse_path(&format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope"
            )),
            Some(pod(D, Qos::BestEffort, Some(CID), Some("cri-containerd")))
        );
    }

    #[test]
    fn levels_and_non_kube_paths() {
        assert_eq!(classify("/kubepods"), Some(KubeLevel::Root));
        assert_eq!(classify("/kubepods.slice"), Some(KubeLevel::Root));
        assert_eq!(
            classify("kubepods/besteffort"),
            Some(KubeLevel::Qos(Qos::BestEffort))
        );
        assert_eq!(
            classify("/kubepods.slice/kubepods-burstable.slice"),
            Some(KubeLevel::Qos(Qos::Burstable))
        );
        assert_eq!(
            classify("/oomlab-test/x-1/kubepods.slice"),
            Some(KubeLevel::Root)
        );
        for p in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice",
            "/kubepods/guaranteed",
            "/kubepods/burstable/notapod",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-podabc.slice",
            "/kubepods.slice/kubepods-podabc-def.slice",
            "/kubepods.slice/kubepods-pod.slice",
        ] {
            assert_eq!(parse_path(p), None, "{p:?}");
        }
        // A systemd pod slice's child that is not a scope: the pod is known, the container not.
        assert_eq!(
            parse_path(&format!("/kubepods.slice/kubepods-pod{UID_}.slice/odd")),
            Some(pod(Driver::Systemd, Qos::Guaranteed, None, None))
        );
    }

    #[test]
    fn uid_with_dashes_or_underscores() {
        assert_eq!(normalize_uid(UID_), UID);
        assert_eq!(normalize_uid(&UID.to_uppercase()), UID);
        // Static pods have a hash for a UID: no separators at all.
        assert_eq!(
            parse_path("/kubepods.slice/kubepods-podd41d8cd98f00b204e9800998ecf8427e.slice")
                .map(|r| r.pod_uid),
            Some("d41d8cd98f00b204e9800998ecf8427e".into())
        );
    }
}
