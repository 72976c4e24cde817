//! `memory.oom.group` (cgroup v2): whether an OOM kill of one of oomlab's workers in a target
//! would take every process of a cgroup with it, and the kernel's count of such group kills
//! (`memory.events` `oom_group_kill`, which kernels before 5.17 do not have).
//!
//! Since Kubernetes 1.28 the kubelet sets `memory.oom.group=1` on every container cgroup on
//! cgroup v2, so a worker injected into a container kills the container's own processes on its
//! first OOM: `oomlab inject` and `oomlab run` refuse such a target unless told otherwise.

use super::{parse_flat_keyed, CgroupError, MemCgroup, Version};

/// The cgroup a worker's OOM kill would empty, and the OOM domain it was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomGroup {
    /// The highest cgroup with `memory.oom.group=1` between the target and the domain: every
    /// process in it (and in its descendants) is killed together with the victim.
    pub group: MemCgroup,
    /// The OOM domain the search stopped at: the nearest cgroup with a `memory.max` (the target
    /// itself or an ancestor), or the root for an unlimited chain.
    pub domain: MemCgroup,
}

impl OomGroup {
    /// Why a worker should not be started there, for the refusal.
    pub fn describe(&self) -> String {
        let group = self.group.path();
        let domain = self.domain.path();
        let under = if self.domain.rel.as_os_str().is_empty() {
            "a node-wide OOM (no memory.max on the way up)".to_string()
        } else {
            format!("an OOM of {domain} (its memory.max is the nearest limit)")
        };
        format!("{group} has memory.oom.group=1: on {under}, the first worker OOM kills every process in {group}, not only the worker")
    }
}

/// The group a worker in `target` would take down with it on its first OOM, or `None`.
///
/// The rule is the kernel's (`mem_cgroup_get_oom_group` in mm/memcontrol.c): starting from the
/// victim's memcg, walk up to the OOM domain (`oc->memcg`, the root for a global OOM) and keep
/// the *highest* memcg with `oom_group` set; nothing on cgroup v1 (`cgroup_subsys_on_dfl`) or
/// when the victim is in the root. A worker's charge fails at the first counter on its way up
/// whose `memory.max` it exceeds, so the domain of the OOM it causes is the nearest cgroup with
/// a limit: the target or an ancestor. With no limit anywhere it is a node-wide OOM and the
/// walk goes to the top (the root has no `memory.oom.group`). An outer limit that happens to be
/// hit first makes the domain larger than this, which is the one case this cannot see ahead.
pub fn find(target: &MemCgroup) -> Result<Option<OomGroup>, CgroupError> {
    if target.version != Version::V2 || target.rel.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut group = None;
    let mut cg = target.clone();
    loop {
        if cg.rel.as_os_str().is_empty() {
            // The root: no memory.oom.group, and the domain of a node-wide OOM.
            break;
        }
        if cg.read("memory.oom.group")?.trim() == "1" {
            group = Some(cg.clone());
        }
        if cg.limit()?.is_some() {
            break;
        }
        cg = parent(&cg);
    }
    Ok(group.map(|group| OomGroup { group, domain: cg }))
}

fn parent(cg: &MemCgroup) -> MemCgroup {
    MemCgroup {
        rel: cg.rel.parent().map(Into::into).unwrap_or_default(),
        ..cg.clone()
    }
}

/// The kernel's count of group kills of `cg` and its descendants (`memory.events`
/// `oom_group_kill`), `None` on v1 and on kernels before 5.17, which do not count them.
pub fn group_kills(cg: &MemCgroup) -> Result<Option<u64>, CgroupError> {
    if cg.version != Version::V2 {
        return Ok(None);
    }
    Ok(parse_flat_keyed(&cg.read("memory.events")?)
        .get("oom_group_kill")
        .copied())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::cgroup::temp_tree::TempTree;

    const POD: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice";
    const CTR: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope";

    /// The kubelet's v2 layout: every level has `memory.max` and `memory.oom.group`.
    fn kube_tree(limits: [&str; 4], groups: [&str; 4]) -> TempTree {
        let t = TempTree::new("oom-group");
        t.mkdir(CTR);
        let levels = [
            "kubepods.slice",
            "kubepods.slice/kubepods-burstable.slice",
            POD,
            CTR,
        ];
        for ((dir, max), group) in levels.iter().zip(limits).zip(groups) {
            let d = t.root.join(dir);
            fs::write(d.join("memory.max"), format!("{max}\n")).expect("memory.max");
            fs::write(d.join("memory.oom.group"), format!("{group}\n")).expect("oom.group");
        }
        t
    }

    #[test]
    fn a_kubelet_container_with_a_limit_is_its_own_group() {
        let t = kube_tree(
            ["1073741824", "max", "268435456", "134217728"],
            ["0", "0", "0", "1"],
        );
        let g = find(&t.hierarchy().cgroup(CTR))
            .expect("reads")
            .expect("group");
        assert_eq!(g.group.path(), format!("/{CTR}"));
        assert_eq!(
            g.domain.path(),
            format!("/{CTR}"),
            "the container's own limit"
        );
        assert!(
            g.describe().contains("kills every process"),
            "{}",
            g.describe()
        );
    }

    #[test]
    fn the_walk_stops_at_the_nearest_limit_and_keeps_the_highest_group() {
        // No container limit: the pod's limit is the domain, and the pod (higher) wins.
        let t = kube_tree(
            ["1073741824", "max", "268435456", "max"],
            ["1", "0", "1", "1"],
        );
        let g = find(&t.hierarchy().cgroup(CTR))
            .expect("reads")
            .expect("group");
        assert_eq!(g.group.path(), format!("/{POD}"));
        assert_eq!(g.domain.path(), format!("/{POD}"));
        // kubepods.slice has oom.group too, but lies above the domain: not a group of this OOM.
    }

    #[test]
    fn a_group_above_the_domain_is_no_group_of_this_oom() {
        let t = kube_tree(
            ["max", "max", "268435456", "134217728"],
            ["1", "1", "1", "0"],
        );
        assert_eq!(find(&t.hierarchy().cgroup(CTR)).expect("reads"), None);
    }

    #[test]
    fn with_no_limit_the_walk_reaches_the_top() {
        let t = kube_tree(["max", "max", "max", "max"], ["1", "0", "0", "0"]);
        let g = find(&t.hierarchy().cgroup(CTR))
            .expect("reads")
            .expect("group");
        assert_eq!(g.group.path(), "/kubepods.slice");
        assert_eq!(g.domain.path(), "/");
        assert!(g.describe().contains("node-wide"), "{}", g.describe());
    }

    #[test]
    fn the_root_and_v1_have_no_group() {
        let t = kube_tree(["max", "max", "max", "134217728"], ["0", "0", "0", "1"]);
        let hier = t.hierarchy();
        assert_eq!(find(&hier.cgroup("")).expect("root"), None);
        let mut v1 = hier.cgroup(CTR);
        v1.version = Version::V1;
        assert_eq!(find(&v1).expect("v1"), None);
    }

    #[test]
    fn group_kills_only_where_the_kernel_counts_them() {
        let t = kube_tree(["max", "max", "max", "134217728"], ["0", "0", "0", "1"]);
        let cg = t.hierarchy().cgroup(CTR);
        let d = cg.dir();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .expect("5.10");
        assert_eq!(
            group_kills(&cg).expect("reads"),
            None,
            "5.10 has no oom_group_kill"
        );
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 4\noom_group_kill 1\n",
        )
        .expect("6.12");
        assert_eq!(group_kills(&cg).expect("reads"), Some(1));
    }
}
