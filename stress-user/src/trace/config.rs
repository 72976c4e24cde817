//! The eBPF object's `CONFIG`, built from this kernel's tracepoint `format` files and, for a
//! target, the filter settings (cgroup v2 ids or v1 pids in the memory hierarchy).

use std::path::Path;

use stress_common::{self as common, Config};

use super::{
    catalogue::{TracepointName, SHARED_LAYOUTS},
    error::TraceError,
    format::{Format, FormatError},
    tracefs::read_format,
};
use crate::cgroup::{
    target::{descendants, CgroupNode},
    MemCgroup, Version,
};

/// Builds the eBPF config from the running kernel's `format` files (filter fields zero).
pub fn build_config(tracefs: &Path) -> Result<Config, FormatError> {
    let mut cfg = Config::zeroed();
    macro_rules! fill {
        ($($slot:ident: $layout:ident),+ $(,)?) => {$(
            if let Some(f) = read_format(tracefs, common::$layout::GROUP, common::$layout::EVENT)? {
                cfg.$slot = f.layout(common::$layout::FIELDS);
            }
        )+};
    }
    fill!(
        mark_victim: mark_victim,
        adj_update: adj_update,
        reclaim_begin: reclaim_begin,
        reclaim_end: reclaim_end,
        retry_zone: retry_zone,
        compact_retry: compact_retry,
        reaper: reaper,
        kswapd_wake: kswapd_wake,
        cgroup_dir: cgroup_dir,
        cgroup_attach: cgroup_attach,
        process_fork: process_fork,
        process_exit: process_exit,
        signal_generate: signal_generate,
    );
    // Direct reclaim is read with the memcg layout: on a kernel without memcg reclaim events use
    // the direct ones' instead.
    if !cfg.reclaim_begin[common::reclaim_begin::ORDER].is_present() {
        if let Some(f) = read_format(tracefs, "vmscan", "mm_vmscan_direct_reclaim_begin")? {
            cfg.reclaim_begin = f.layout(common::reclaim_begin::FIELDS);
        }
        if let Some(f) = read_format(tracefs, "vmscan", "mm_vmscan_direct_reclaim_end")? {
            cfg.reclaim_end = f.layout(common::reclaim_end::FIELDS);
        }
    }
    Ok(cfg)
}

/// The tracepoints whose layout differs from the one they share in `Config` on this kernel
/// (see [`SHARED_LAYOUTS`]); the tracer leaves them unattached rather than read wrong offsets.
pub fn layout_mismatches(tracefs: &Path) -> Result<Vec<TracepointName>, FormatError> {
    let mut out = Vec::new();
    for ((g1, e1), (g2, e2)) in SHARED_LAYOUTS {
        let (Some(a), Some(b)) = (read_format(tracefs, g1, e1)?, read_format(tracefs, g2, e2)?)
        else {
            continue;
        };
        if !same_layout(&a, &b) {
            out.push((*g2, *e2));
        }
    }
    Ok(out)
}

/// Same names at the same offsets and sizes.
pub fn same_layout(a: &Format, b: &Format) -> bool {
    let key = |f: &Format| {
        f.fields
            .iter()
            .map(|d| (d.name.clone(), d.offset, d.size))
            .collect::<Vec<_>>()
    };
    key(a) == key(b)
}

/// The memory controller's hierarchy id from `/proc/cgroups` (0 on a v2-only node).
pub fn memory_hierarchy_id() -> Option<i32> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    parse_hierarchy_id(&text, "memory")
}

/// `#subsys_name hierarchy num_cgroups enabled` → the hierarchy of `controller`.
pub fn parse_hierarchy_id(proc_cgroups: &str, controller: &str) -> Option<i32> {
    proc_cgroups.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next()? == controller).then_some(())?;
        parts.next()?.parse().ok()
    })
}

/// What the keys of the kernel's reclaim totals are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReclaimKey {
    /// cgroup v2 id of the reclaiming task (its memory cgroup on a v2 node).
    CgroupId,
    /// tgid of the reclaiming task (v1: the memory cgroup is not reachable from eBPF helpers).
    Tgid,
}

/// Keys the reclaim totals by tgid on a v1 memory controller, by cgroup id elsewhere.
pub(super) fn set_reclaim_key(cfg: &mut Config, memory_version: Option<Version>) -> ReclaimKey {
    if memory_version == Some(Version::V1) {
        cfg.reclaim_key = common::RECLAIM_KEY_TGID;
        ReclaimKey::Tgid
    } else {
        ReclaimKey::CgroupId
    }
}

/// Points the kernel's filter at `target` and returns the target's cgroups, for the filter maps.
pub(super) fn set_filter(
    cfg: &mut Config,
    target: &MemCgroup,
) -> Result<Vec<CgroupNode>, TraceError> {
    let nodes = descendants(target).map_err(TraceError::Target)?;
    cfg.filter_root = if target.version == Version::V2 {
        0
    } else {
        memory_hierarchy_id().ok_or(TraceError::NoHierarchyId)?
    };
    cfg.filter_mode = match target.version {
        Version::V1 => common::FILTER_PIDS,
        Version::V2 => common::FILTER_CGROUP_V2,
    };
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::testing::format_fixture as fixture;

    /// The programs read direct reclaim with the memcg layout and the three reaping events with
    /// wake_reaper's: true on every kernel we have formats of.
    #[test]
    fn shared_layouts_agree_on_every_fixture_kernel() {
        for kernel in ["6.1-debian", "6.12-debian", "6.18-host"] {
            for ((g1, e1), (g2, e2)) in SHARED_LAYOUTS {
                let a = fixture(kernel, g1, e1).unwrap_or_else(|| panic!("{kernel}: {g1}:{e1}"));
                let b = fixture(kernel, g2, e2).unwrap_or_else(|| panic!("{kernel}: {g2}:{e2}"));
                assert!(same_layout(&a, &b), "{kernel}: {e1} vs {e2}");
            }
        }
        let a = fixture("6.18-host", "oom", "wake_reaper").expect("fixture");
        let b = fixture("6.18-host", "oom", "mark_victim").expect("fixture");
        assert!(!same_layout(&a, &b), "different events differ");
    }

    /// Every layout oomlab declares resolves fully on 6.18, at the offsets its
    /// format file gives (the ones the probes read).
    #[test]
    fn every_layout_is_complete_on_6_18() {
        fn check<const N: usize>(group: &str, event: &str, names: &[&str]) -> [common::Field; N] {
            let f = fixture("6.18-host", group, event).expect("fixture");
            let l: [common::Field; N] = f.layout(names);
            for (i, field) in l.iter().enumerate() {
                assert!(field.is_present(), "{event}: {} missing", names[i]);
            }
            l
        }
        let rb: [_; common::reclaim_begin::N] = check(
            "vmscan",
            "mm_vmscan_memcg_reclaim_begin",
            common::reclaim_begin::FIELDS,
        );
        assert_eq!(
            (
                rb[common::reclaim_begin::ORDER].offset,
                rb[common::reclaim_begin::GFP_FLAGS].offset
            ),
            (8, 16)
        );
        let re: [_; common::reclaim_end::N] = check(
            "vmscan",
            "mm_vmscan_memcg_reclaim_end",
            common::reclaim_end::FIELDS,
        );
        assert_eq!(re[0].offset, 8);
        let rz: [_; common::retry_zone::N] =
            check("oom", "reclaim_retry_zone", common::retry_zone::FIELDS);
        assert_eq!(rz[common::retry_zone::WMARK_CHECK].size, 1);
        let _: [_; common::compact_retry::N] =
            check("oom", "compact_retry", common::compact_retry::FIELDS);
        let _: [_; common::reaper::N] = check("oom", "wake_reaper", common::reaper::FIELDS);
        let _: [_; common::kswapd_wake::N] = check(
            "vmscan",
            "mm_vmscan_kswapd_wake",
            common::kswapd_wake::FIELDS,
        );
        let cd: [_; common::cgroup_dir::N] =
            check("cgroup", "cgroup_mkdir", common::cgroup_dir::FIELDS);
        assert_eq!(cd[common::cgroup_dir::PATH].data_loc, 1);
        let ca: [_; common::cgroup_attach::N] = check(
            "cgroup",
            "cgroup_attach_task",
            common::cgroup_attach::FIELDS,
        );
        assert_eq!(
            (
                ca[common::cgroup_attach::PID].offset,
                ca[common::cgroup_attach::DST_ID].offset
            ),
            (24, 16)
        );
    }

    #[test]
    fn hierarchy_id_from_proc_cgroups() {
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t2\t1\t1\nmemory\t4\t120\t1\npids\t0\t1\t1\n";
        assert_eq!(parse_hierarchy_id(text, "memory"), Some(4));
        assert_eq!(parse_hierarchy_id(text, "pids"), Some(0));
        assert_eq!(parse_hierarchy_id(text, "hugetlb"), None);
    }
}
