//! Which cgroup a command works on: `--cgroup PATH`, `--pid N`, `--pod UID|NAMESPACE/NAME` or
//! `--container ID|NAME`, resolved against the node's memory controller (and the container
//! runtimes, for names); the guard that keeps pressure out of the node's own cgroups; and a
//! target's descendants, which the tracer filters on.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::{
    kube::{self, KubeLevel, KubeRef},
    CgroupError, Hierarchy, MemCgroup,
};
use crate::runtime::{Container, RuntimeError, RuntimeKind, Runtimes};

/// The shortest id prefix `--container` takes when a runtime is asked (Docker's short ids).
pub const MIN_ID_PREFIX: usize = 12;

/// Target selection shared by `inject` and `trace` (at most one of them).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// A cgroup path relative to the memory controller's mount (`/kubepods/burstable/pod…/…`)
    /// or absolute under it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// The memory cgroup of this process.
    #[arg(long)]
    pub pid: Option<i32>,
    /// A pod by UID, with dashes or underscores (kubelet naming, cgroupfs or systemd driver), or
    /// by NAMESPACE/NAME (the CRI labels, asked of containerd or Docker).
    #[arg(long)]
    pub pod: Option<String>,
    /// A container by id, unique id prefix (at least 12 characters when a runtime is asked) or
    /// name (Docker's, or the CRI container name), from containerd, Docker or cgroup naming.
    #[arg(long)]
    pub container: Option<String>,
}

impl TargetArgs {
    pub fn is_empty(&self) -> bool {
        self.cgroup.is_none()
            && self.pid.is_none()
            && self.pod.is_none()
            && self.container.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("no target given: use one of --cgroup, --pid, --pod, --container")]
    None,
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "no process with pid {pid} (/proc/{pid} does not exist); give the pid of a running process"
    )]
    NoProcess { pid: i32 },
    #[error("{flag} needs a value: a pod UID (with `-` or `_`) for --pod, a container id or a unique prefix of one for --container")]
    Empty { flag: &'static str },
    #[error("pod {uid} not found: looked for `pod<uid>` (cgroupfs) and `kubepods[-<qos>]-pod<uid with _>.slice` (systemd) in {looked}")]
    PodNotFound { uid: String, looked: String },
    #[error("container {id} not found: looked for `<id>…` (cgroupfs) and `<runtime>-<id>….scope` (systemd) in every pod in {looked}")]
    ContainerNotFound { id: String, looked: String },
    #[error("{what} {given} matches {} cgroups: {}; {hint}", matches.len(), matches.join(", "))]
    Ambiguous {
        what: &'static str,
        given: String,
        matches: Vec<String>,
        hint: &'static str,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("container {given} ({runtime} {id}) is not running ({state}): it has no processes and no memory cgroup to target; start it first")]
    Stopped {
        given: String,
        runtime: String,
        id: String,
        state: &'static str,
    },
    #[error("container {given} not found: no container of {asked} has that id, id prefix (at least {MIN_ID_PREFIX} characters) or name, and no kubelet cgroup has that id ({looked}){nearest}")]
    NoSuchContainer {
        given: String,
        asked: String,
        looked: String,
        nearest: String,
    },
    #[error("pod {given} not found: no container of {asked} carries the labels io.kubernetes.pod.namespace={namespace} and io.kubernetes.pod.name={name}{nearest}")]
    NoSuchPod {
        given: String,
        asked: String,
        namespace: String,
        name: String,
        nearest: String,
    },
    #[error("pod {given} (uid {uid}) has no pod cgroup the kubelet's naming finds; its containers are in {}; target one with --container", cgroups.join(", "))]
    PodWithoutCgroup {
        given: String,
        uid: String,
        cgroups: Vec<String>,
    },
    #[error("refusing to target {path}: it is {what}, so pressure there {effect}; pass --force to do it anyway")]
    Protected {
        path: String,
        what: String,
        effect: &'static str,
    },
}

/// Resolves the target to a memory cgroup that exists, by cgroup naming only.
pub fn resolve(hier: &Hierarchy, args: &TargetArgs) -> Result<MemCgroup, TargetError> {
    resolve_with(hier, args, None)
}

/// Resolves the target, asking `runtimes` for container and pod names.
pub fn resolve_with(
    hier: &Hierarchy,
    args: &TargetArgs,
    runtimes: Option<&Runtimes>,
) -> Result<MemCgroup, TargetError> {
    if let Some(rts) = runtimes {
        rts.check_explicit(Some(hier.memory_version))?;
        if let Some(pod) = &args.pod {
            if let Some((ns, name)) = pod.trim().split_once('/') {
                return resolve_pod_name(hier, rts, ns, name);
            }
        }
        if let Some(given) = &args.container {
            return resolve_container_named(hier, rts, given.trim());
        }
    }
    if let Some(path) = &args.cgroup {
        return Ok(hier.resolve(path)?);
    }
    if let Some(pid) = args.pid {
        return resolve_pid(hier, pid);
    }
    if let Some(uid) = &args.pod {
        return resolve_pod(hier, uid).map(|(cg, _)| cg);
    }
    if let Some(id) = &args.container {
        return resolve_container(hier, id).map(|(cg, _)| cg);
    }
    Err(TargetError::None)
}

/// The memory cgroup of a running process.
pub fn resolve_pid(hier: &Hierarchy, pid: i32) -> Result<MemCgroup, TargetError> {
    if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(TargetError::NoProcess { pid });
    }
    Ok(hier.of_pid(pid)?)
}

/// A pod's cgroup by UID, searching every kubepods root under the mount (both drivers).
pub fn resolve_pod(hier: &Hierarchy, uid: &str) -> Result<(MemCgroup, KubeRef), TargetError> {
    if uid.trim().is_empty() {
        return Err(TargetError::Empty { flag: "--pod" });
    }
    let roots = kube::find_roots(hier);
    one_of(
        kube::find_pod(hier, &roots, uid),
        || TargetError::PodNotFound {
            uid: kube::normalize_uid(uid),
            looked: kube::describe_roots(hier, &roots),
        },
        "pod",
        uid,
        "two kubelet trees hold this UID; use --cgroup with the one you mean",
    )
}

/// A container's cgroup by id or unique id prefix, searching every pod (both drivers).
pub fn resolve_container(hier: &Hierarchy, id: &str) -> Result<(MemCgroup, KubeRef), TargetError> {
    if id.trim().is_empty() {
        return Err(TargetError::Empty {
            flag: "--container",
        });
    }
    let roots = kube::find_roots(hier);
    one_of(
        kube::find_container(hier, &roots, id),
        || TargetError::ContainerNotFound {
            id: id.trim().into(),
            looked: kube::describe_roots(hier, &roots),
        },
        "container id prefix",
        id,
        "give more characters of the id, or use --cgroup with the one you mean",
    )
}

/// The runtimes a lookup asked, for messages.
fn asked(all: &[Container]) -> String {
    let mut kinds: Vec<RuntimeKind> = all.iter().map(|c| c.runtime).collect();
    kinds.sort();
    kinds.dedup();
    let names: Vec<&str> = kinds
        .iter()
        .filter(|k| **k != RuntimeKind::Cgroup)
        .map(|k| k.as_str())
        .collect();
    if names.is_empty() {
        "any runtime (none answered; only cgroup naming was used)".into()
    } else {
        names.join(", ")
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// "; nearest: a, b, c" of the three candidates closest to `given` (ids compared by as many
/// characters as were given).
fn nearest(given: &str, candidates: impl IntoIterator<Item = String>) -> String {
    let mut scored: Vec<(usize, String)> = candidates
        .into_iter()
        .map(|c| {
            let cut: String = c.chars().take(given.chars().count().max(1)).collect();
            (distance(given, &c).min(distance(given, &cut)), c)
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    let top: Vec<String> = scored.into_iter().take(3).map(|(_, c)| c).collect();
    if top.is_empty() {
        String::new()
    } else {
        format!("; nearest: {}", top.join(", "))
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(MIN_ID_PREFIX)]
}

/// How a container is listed among several matches.
fn describe(c: &Container) -> String {
    let name = c
        .name
        .as_deref()
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let pod = c
        .pod
        .as_ref()
        .map(|p| format!(" pod {}/{}", p.namespace, p.name))
        .unwrap_or_default();
    format!(
        "{} {}{name}{pod} cgroup {}",
        c.origin(),
        short(&c.id),
        c.cgroup.as_deref().unwrap_or("(none: not running)")
    )
}

/// A container the runtimes know by id, id prefix (≥ [`MIN_ID_PREFIX`]) or name; else what
/// cgroup naming finds.
fn resolve_container_named(
    hier: &Hierarchy,
    rts: &Runtimes,
    given: &str,
) -> Result<MemCgroup, TargetError> {
    if given.is_empty() {
        return Err(TargetError::Empty {
            flag: "--container",
        });
    }
    let all = rts.list(Some(hier.memory_version))?;
    let known: Vec<&Container> = all
        .iter()
        .filter(|c| c.runtime != RuntimeKind::Cgroup && !c.sandbox)
        .collect();
    let exact: Vec<&Container> = known
        .iter()
        .copied()
        .filter(|c| c.id == given || c.name.as_deref() == Some(given))
        .collect();
    let found: Vec<&Container> = if exact.is_empty() && given.len() >= MIN_ID_PREFIX {
        known
            .iter()
            .copied()
            .filter(|c| c.id.starts_with(given))
            .collect()
    } else {
        exact
    };
    match found.as_slice() {
        [one] => container_cgroup(hier, one, given),
        [] => match resolve_container(hier, given) {
            Ok((cg, _)) => Ok(cg),
            Err(TargetError::ContainerNotFound { looked, .. }) => {
                Err(TargetError::NoSuchContainer {
                    given: given.into(),
                    asked: asked(&all),
                    looked,
                    nearest: nearest(
                        given,
                        known.iter().flat_map(|c| {
                            let id = if given.len() >= MIN_ID_PREFIX {
                                c.id.clone()
                            } else {
                                short(&c.id).to_string()
                            };
                            std::iter::once(id).chain(c.name.clone())
                        }),
                    ),
                })
            }
            Err(e) => Err(e),
        },
        several => Err(TargetError::Ambiguous {
            what: "container",
            given: given.into(),
            matches: several.iter().map(|c| describe(c)).collect(),
            hint: "give the full id, or use --cgroup with the one you mean",
        }),
    }
}

/// The memory cgroup of a container a runtime found; a stopped one says so.
fn container_cgroup(
    hier: &Hierarchy,
    c: &Container,
    given: &str,
) -> Result<MemCgroup, TargetError> {
    let stopped = || TargetError::Stopped {
        given: given.into(),
        runtime: c.origin(),
        id: c.id.clone(),
        state: if c.running {
            "no cgroup found"
        } else {
            "stopped"
        },
    };
    if !c.running {
        return Err(stopped());
    }
    let cg = c.cgroup.as_deref().ok_or_else(stopped)?;
    Ok(hier.resolve(cg)?)
}

/// A pod by the CRI labels: its UID finds the kubelet's pod cgroup.
fn resolve_pod_name(
    hier: &Hierarchy,
    rts: &Runtimes,
    ns: &str,
    name: &str,
) -> Result<MemCgroup, TargetError> {
    let given = format!("{ns}/{name}");
    if ns.is_empty() || name.is_empty() {
        return Err(TargetError::Empty { flag: "--pod" });
    }
    let all = rts.list(Some(hier.memory_version))?;
    let members: Vec<&Container> = all
        .iter()
        .filter(|c| {
            c.pod
                .as_ref()
                .is_some_and(|p| p.namespace == ns && p.name == name)
        })
        .collect();
    if members.is_empty() {
        return Err(TargetError::NoSuchPod {
            given: given.clone(),
            asked: asked(&all),
            namespace: ns.into(),
            name: name.into(),
            nearest: nearest(
                &given,
                all.iter().filter_map(|c| {
                    c.pod
                        .as_ref()
                        .map(|p| format!("{}/{}", p.namespace, p.name))
                }),
            ),
        });
    }
    let uid = members
        .iter()
        .find_map(|c| c.pod_uid.clone())
        .unwrap_or_default();
    if !uid.is_empty() {
        let roots = kube::find_roots(hier);
        let mut pods = kube::find_pod(hier, &roots, &uid);
        if pods.len() == 1 {
            return Ok(pods.remove(0).0);
        }
    }
    Err(TargetError::PodWithoutCgroup {
        given,
        uid,
        cgroups: members.iter().map(|c| describe(c)).collect(),
    })
}

fn one_of(
    mut found: Vec<(MemCgroup, KubeRef)>,
    none: impl FnOnce() -> TargetError,
    what: &'static str,
    given: &str,
    hint: &'static str,
) -> Result<(MemCgroup, KubeRef), TargetError> {
    match found.len() {
        0 => Err(none()),
        1 => Ok(found.remove(0)),
        _ => Err(TargetError::Ambiguous {
            what,
            given: given.trim().into(),
            matches: found.iter().map(|(cg, _)| cg.path()).collect(),
            hint,
        }),
    }
}

/// Top-level cgroups systemd keeps the node's own services and sessions in.
const SYSTEM_CGROUPS: &[&str] = &["system.slice", "init.scope", "user.slice", "machine.slice"];

/// Refuses, unless `force`, cgroups where pressure would hit more than an experiment: the root,
/// the top-level system cgroups, the kubepods root and its QoS-level cgroups (every pod of that
/// class). `inject` calls this before creating anything.
pub fn check_writable(cg: &MemCgroup, force: bool) -> Result<(), TargetError> {
    if force {
        return Ok(());
    }
    let parts: Vec<String> = cg
        .rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let protected = |what: String, effect| {
        Err(TargetError::Protected {
            path: cg.path(),
            what,
            effect,
        })
    };
    match parts.as_slice() {
        [] => {
            return protected(
                format!("the root cgroup of {}", cg.mount.display()),
                "hits every process on the node",
            )
        }
        [one] if SYSTEM_CGROUPS.contains(&one.as_str()) => {
            return protected(
                "a top-level system cgroup".into(),
                "hits the node's own services",
            )
        }
        _ => {}
    }
    match kube::classify(&cg.path()) {
        Some(KubeLevel::Root) => protected(
            "the kubelet's kubepods root".into(),
            "hits every pod on the node",
        ),
        Some(KubeLevel::Qos(qos)) => protected(
            format!("the {qos} QoS cgroup"),
            "hits every pod of that class",
        ),
        Some(KubeLevel::Pod(_)) | None => Ok(()),
    }
}

/// One cgroup of a subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupNode {
    pub cgroup: MemCgroup,
    /// The inode number of the cgroup's directory, which is the kernel's id for it in that
    /// hierarchy: on v2 the id `bpf_get_current_cgroup_id()` returns; on v1 (and v2) the `id`
    /// the `cgroup:*` tracepoints print.
    pub id: u64,
}

/// A cgroup and all its descendants, breadth-first (parents before children, siblings in name
/// order). Cgroups removed during the walk are skipped; the top one must exist.
pub fn descendants(cg: &MemCgroup) -> Result<Vec<CgroupNode>, CgroupError> {
    let top = fs::symlink_metadata(cg.dir())
        .ok()
        .filter(|m| m.is_dir())
        .ok_or_else(|| CgroupError::NotFound {
            path: cg.path(),
            mount: cg.mount.display().to_string(),
        })?;
    let mut out = vec![CgroupNode {
        cgroup: cg.clone(),
        id: top.ino(),
    }];
    let mut i = 0;
    while i < out.len() {
        let rel = out[i].cgroup.rel.clone();
        i += 1;
        let mut children: Vec<(PathBuf, u64)> = match fs::read_dir(cg.mount.join(&rel)) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                // DirEntry::metadata does not follow symlinks: a link is never a child cgroup.
                .filter_map(|e| Some((e.file_name(), e.metadata().ok()?)))
                .filter(|(_, m)| m.is_dir())
                .map(|(name, m)| (rel.join(name), m.ino()))
                .collect(),
            // Removed since its parent was listed.
            Err(_) => continue,
        };
        children.sort();
        out.extend(children.into_iter().map(|(rel, id)| CgroupNode {
            cgroup: MemCgroup {
                version: cg.version,
                mount: cg.mount.clone(),
                rel,
            },
            id,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::{
        cgroup::{
            kube::{Driver, Qos},
            temp_tree::TempTree,
        },
        runtime::Container,
    };

    const UID: &str = "0f6e4f5c-1a2b-4c3d-9e8f-001122334455";
    const UID_: &str = "0f6e4f5c_1a2b_4c3d_9e8f_001122334455";
    const UID2: &str = "9a8b7c6d-0000-1111-2222-333344445555";
    const UID2_: &str = "9a8b7c6d_0000_1111_2222_333344445555";
    const CID_A: &str = "abc1230000000000000000000000000000000000000000000000000000000001";
    const CID_B: &str = "abc4560000000000000000000000000000000000000000000000000000000002";
    const CID_C: &str = "def7890000000000000000000000000000000000000000000000000000000003";

    /// Both drivers side by side, the systemd one nested as kind nests it.
    fn node() -> TempTree {
        let t = TempTree::new("target");
        t.mkdir("system.slice/containerd.service")
            .mkdir(&format!("kubepods/burstable/pod{UID}/{CID_A}"))
            .mkdir(&format!("kubepods/burstable/pod{UID}/{CID_A}/nested"))
            .mkdir("kubepods/besteffort")
            .mkdir(&format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID2_}.slice/cri-containerd-{CID_B}.scope"
            ))
            .mkdir(&format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID2_}.slice/crio-conmon-{CID_C}.scope"
            ))
            .mkdir(&format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID2_}.slice/crio-{CID_C}.scope"
            ));
        t
    }

    fn args_pod(uid: &str) -> TargetArgs {
        TargetArgs {
            pod: Some(uid.into()),
            ..TargetArgs::default()
        }
    }

    fn args_container(id: &str) -> TargetArgs {
        TargetArgs {
            container: Some(id.into()),
            ..TargetArgs::default()
        }
    }

    fn ctd(ns: &str, id: &str, name: &str, cgroup: Option<&str>, running: bool) -> Container {
        Container {
            runtime: RuntimeKind::Containerd,
            runtime_namespace: Some(ns.into()),
            id: id.into(),
            name: Some(name.into()),
            pod: Some(crate::runtime::PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
            }),
            pod_uid: Some(UID.into()),
            image: None,
            init_pid: running.then_some(1),
            running,
            cgroup: cgroup.map(Into::into),
            sandbox: false,
        }
    }

    #[test]
    fn containers_and_pods_by_runtime_names() {
        let t = node();
        t.mkdir("k8s.io/aaaaaaaaaaaaaaaa1")
            .mkdir("default/bbbbbbbbbbbbbbbb2");
        let h = t.hierarchy();
        let one = |cs: Vec<Container>| {
            Runtimes::from_resolvers(vec![Box::new(crate::runtime::Fixed(cs))])
        };
        let rts = one(vec![
            ctd(
                "k8s.io",
                "aaaaaaaaaaaaaaaa1",
                "app",
                Some("/k8s.io/aaaaaaaaaaaaaaaa1"),
                true,
            ),
            ctd(
                "default",
                "bbbbbbbbbbbbbbbb2",
                "db",
                Some("/default/bbbbbbbbbbbbbbbb2"),
                true,
            ),
            ctd("default", "cccccccccccccccc3", "old", None, false),
        ]);
        let by = |given: &str| resolve_with(&h, &args_container(given), Some(&rts));
        assert_eq!(
            by("app").expect("by name").path(),
            "/k8s.io/aaaaaaaaaaaaaaaa1"
        );
        assert_eq!(
            by("bbbbbbbbbbbb").expect("12-character prefix").path(),
            "/default/bbbbbbbbbbbbbbbb2"
        );
        // Shorter prefixes are not a runtime match (cgroup naming then finds nothing).
        let msg = by("bbbb").expect_err("short prefix").to_string();
        assert!(msg.contains("at least 12 characters"), "{msg}");
        let msg = by("old").expect_err("stopped").to_string();
        assert!(msg.contains("not running (stopped)"), "{msg}");
        let msg = by("ap").expect_err("unknown").to_string();
        assert!(msg.contains("nearest: app"), "{msg}");
        // A name two runtimes' namespaces share: every match, with runtime, namespace, cgroup.
        let twice = one(vec![
            ctd(
                "k8s.io",
                "aaaaaaaaaaaaaaaa1",
                "app",
                Some("/k8s.io/aaaaaaaaaaaaaaaa1"),
                true,
            ),
            ctd(
                "default",
                "bbbbbbbbbbbbbbbb2",
                "app",
                Some("/default/bbbbbbbbbbbbbbbb2"),
                true,
            ),
        ]);
        let msg = resolve_with(&h, &args_container("app"), Some(&twice))
            .expect_err("two named app")
            .to_string();
        for part in [
            "container app matches 2 cgroups",
            "containerd/k8s.io aaaaaaaaaaaa app pod shop/web-0 cgroup /k8s.io/aaaaaaaaaaaaaaaa1",
            "containerd/default bbbbbbbbbbbb app pod shop/web-0 cgroup /default/bbbbbbbbbbbbbbbb2",
        ] {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        // A pod by namespace/name: its UID (CRI label) finds the kubelet's pod cgroup.
        let cg = resolve_with(&h, &args_pod("shop/web-0"), Some(&rts)).expect("pod by name");
        assert_eq!(cg.path(), format!("/kubepods/burstable/pod{UID}"));
        let msg = resolve_with(&h, &args_pod("shop/web-9"), Some(&rts))
            .expect_err("no such pod")
            .to_string();
        assert!(msg.contains("nearest: shop/web-0"), "{msg}");
    }

    #[test]
    fn pods_by_uid_in_both_drivers() {
        let t = node();
        let h = t.hierarchy();
        for uid in [UID, UID_, &UID.to_uppercase()] {
            let cg = resolve(&h, &args_pod(uid)).expect("cgroupfs pod");
            assert_eq!(cg.path(), format!("/kubepods/burstable/pod{UID}"));
        }
        for uid in [UID2, UID2_] {
            let (cg, r) = resolve_pod(&h, uid).expect("systemd pod");
            assert_eq!(
                cg.path(),
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID2_}.slice")
            );
            assert_eq!((r.driver, r.qos), (Driver::Systemd, Qos::Guaranteed));
        }
    }

    #[test]
    fn containers_by_id_and_prefix() {
        let t = node();
        let h = t.hierarchy();
        let (cg, r) = resolve_container(&h, CID_A).expect("full id");
        assert_eq!(cg.path(), format!("/kubepods/burstable/pod{UID}/{CID_A}"));
        assert_eq!(r.pod_uid, UID);
        let (cg, r) = resolve_container(&h, "abc4").expect("unique prefix");
        assert!(cg
            .path()
            .ends_with(&format!("cri-containerd-{CID_B}.scope")));
        assert_eq!(r.runtime.as_deref(), Some("cri-containerd"));
        // The conmon scope shares the id but is not the container.
        let (cg, _) = resolve_container(&h, "def").expect("crio container, not conmon");
        assert!(
            cg.path().ends_with(&format!("/crio-{CID_C}.scope")),
            "{}",
            cg.path()
        );
    }

    #[test]
    fn ambiguous_prefix_lists_every_match() {
        let t = node();
        let err =
            resolve(&t.hierarchy(), &args_container("abc")).expect_err("two ids start with abc");
        let msg = err.to_string();
        assert!(matches!(err, TargetError::Ambiguous { ref matches, .. } if matches.len() == 2));
        assert!(
            msg.contains(&format!("/kubepods/burstable/pod{UID}/{CID_A}")),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("cri-containerd-{CID_B}.scope")),
            "{msg}"
        );
        assert!(msg.contains("more characters"), "{msg}");
    }

    #[test]
    fn same_pod_in_two_trees_is_ambiguous() {
        let t = node();
        t.mkdir(&format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        ));
        let err = resolve_pod(&t.hierarchy(), UID).expect_err("two trees");
        assert!(
            err.to_string()
                .contains("kubepods.slice/kubepods-burstable.slice"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("/kubepods/burstable/pod{UID}")),
            "{err}"
        );
    }

    #[test]
    fn not_found_says_where_it_looked() {
        let t = node();
        let h = t.hierarchy();
        let msg = resolve_container(&h, "ffff")
            .expect_err("no such id")
            .to_string();
        assert!(
            msg.contains("/kubelet.slice/kubelet-kubepods.slice, /kubepods under"),
            "{msg}"
        );
        let msg = resolve_pod(&h, "nope")
            .expect_err("no such pod")
            .to_string();
        assert!(msg.contains("pod nope not found"), "{msg}");
        let empty = TempTree::new("target-empty");
        let msg = resolve_pod(&empty.hierarchy(), UID)
            .expect_err("no kubelet")
            .to_string();
        assert!(
            msg.contains("no kubepods or kubepods.slice cgroup"),
            "{msg}"
        );
        assert!(matches!(
            resolve_container(&h, " "),
            Err(TargetError::Empty {
                flag: "--container"
            })
        ));
    }

    #[test]
    fn cgroup_paths_stay_inside_the_mount() {
        let t = node();
        let outside = TempTree::new("target-outside");
        outside.mkdir("elsewhere");
        symlink(
            outside.root.join("elsewhere"),
            t.root.join("kubepods/escape"),
        )
        .expect("symlink");
        symlink(t.root.join("system.slice"), t.root.join("inner-link")).expect("symlink");
        let h = t.hierarchy();
        let cg = |p: &str| {
            resolve(
                &h,
                &TargetArgs {
                    cgroup: Some(p.into()),
                    ..TargetArgs::default()
                },
            )
        };
        for bad in [
            "../",
            "/kubepods/../../etc",
            "kubepods/burstable/..",
            "kubepods/escape",
            "inner-link",
        ] {
            let err = cg(bad).expect_err(bad);
            assert!(
                matches!(err, TargetError::Cgroup(CgroupError::Escapes { .. })),
                "{bad}: {err}"
            );
            assert!(err
                .to_string()
                .contains("leaves the memory controller's mount"));
        }
        let err = cg("/kubepods/guaranteed").expect_err("missing");
        assert_eq!(
            err.to_string(),
            format!(
                "cgroup /kubepods/guaranteed does not exist under {}",
                t.root.display()
            )
        );
        let abs = t.root.join("kubepods/besteffort");
        assert_eq!(
            cg(&abs.to_string_lossy())
                .expect("absolute under the mount")
                .path(),
            "/kubepods/besteffort"
        );
        assert_eq!(
            cg("./kubepods//burstable/").expect("normalised").path(),
            "/kubepods/burstable"
        );
    }

    #[test]
    fn no_such_pid() {
        let h = TempTree::new("target-pid").hierarchy();
        for pid in [0, -5, i32::MAX] {
            assert!(
                matches!(resolve_pid(&h, pid), Err(TargetError::NoProcess { .. })),
                "{pid}"
            );
        }
    }

    #[test]
    fn protected_cgroups_need_force() {
        let t = node();
        let h = t.hierarchy();
        let refused = [
            ("", "root cgroup"),
            ("system.slice", "top-level system cgroup"),
            ("/init.scope", "top-level system cgroup"),
            ("user.slice", "top-level system cgroup"),
            ("kubepods", "kubepods root"),
            ("kubepods.slice", "kubepods root"),
            ("oomlab-test/x-1/kubepods.slice", "kubepods root"),
            ("kubepods/burstable", "burstable QoS"),
            ("kubepods.slice/kubepods-besteffort.slice", "besteffort QoS"),
        ];
        for (rel, what) in refused {
            let cg = h.cgroup(rel);
            let msg = check_writable(&cg, false).expect_err(rel).to_string();
            assert!(msg.contains(what), "{rel}: {msg}");
            assert!(msg.contains("--force"), "{rel}: {msg}");
            assert!(
                msg.contains(&format!(
                    "refusing to target /{}",
                    rel.trim_start_matches('/')
                )),
                "{msg}"
            );
            check_writable(&cg, true).expect("--force overrides");
        }
        for rel in [
            "system.slice/containerd.service",
            &format!("kubepods/burstable/pod{UID}"),
            &format!("kubepods/burstable/pod{UID}/{CID_A}"),
            "oomlab-test/x-1",
        ] {
            check_writable(&h.cgroup(rel), false).expect(rel);
        }
    }

    #[test]
    fn descendants_with_inode_ids() {
        let t = node();
        let h = t.hierarchy();
        let pod = h.cgroup(format!("kubepods/burstable/pod{UID}"));
        let all = descendants(&pod).expect("pod subtree");
        let paths: Vec<String> = all.iter().map(|n| n.cgroup.path()).collect();
        assert_eq!(
            paths,
            [
                format!("/kubepods/burstable/pod{UID}"),
                format!("/kubepods/burstable/pod{UID}/{CID_A}"),
                format!("/kubepods/burstable/pod{UID}/{CID_A}/nested"),
            ]
        );
        for n in &all {
            let ino = fs::metadata(n.cgroup.dir()).expect("exists").ino();
            assert_eq!(n.id, ino, "{}", n.cgroup.path());
        }
        // A symlink is not a child cgroup.
        symlink(t.root.join("system.slice"), pod.dir().join("link")).expect("symlink");
        assert_eq!(descendants(&pod).expect("again").len(), 3);
        assert!(matches!(
            descendants(&h.cgroup("nope")),
            Err(CgroupError::NotFound { .. })
        ));
    }
}
