//! Kernel features some of oomlab's output or injection depends on, found by looking at this
//! kernel (a tracepoint's format, a real `madvise` call), not at its version: stable lines
//! backport them (Debian's 6.1 has the 6.9 `oom:mark_victim` fields, 5.10 does not).

use std::{num::NonZeroUsize, path::Path};

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use serde::Serialize;

use crate::trace;

#[derive(Debug, Serialize)]
pub struct FeatureCheck {
    pub name: &'static str,
    pub present: bool,
    /// What oomlab does on a kernel without it.
    pub without: &'static str,
}

/// The `oom:mark_victim` fields beyond `pid` that the victim's details come from.
const VICTIM_FIELDS: [&str; 3] = ["comm", "oom_score_adj", "anon_rss"];

/// Whether `oom:mark_victim` carries the victim's comm, oom_score_adj and rss (mainline 6.9,
/// backported to some stable lines) rather than only its pid.
pub fn mark_victim_details(tracefs: &Path) -> bool {
    trace::read_format(tracefs, "oom", "mark_victim")
        .ok()
        .flatten()
        .is_some_and(|f| {
            VICTIM_FIELDS
                .iter()
                .all(|want| f.fields.iter().any(|have| have.name == *want))
        })
}

/// Whether `madvise(MADV_POPULATE_WRITE)` (5.14) works, tried on one fresh page.
pub fn madvise_populate_write() -> bool {
    let Some(len) = usize::try_from(crate::sys::page_size())
        .ok()
        .and_then(NonZeroUsize::new)
    else {
        return false;
    };
    // SAFETY: a fresh anonymous mapping aliases nothing; it is unmapped below.
    let Ok(ptr) = (unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }) else {
        return false;
    };
    // SAFETY: the range is the page just mapped.
    let works = unsafe { libc::madvise(ptr.as_ptr(), len.get(), libc::MADV_POPULATE_WRITE) } == 0;
    // SAFETY: unmaps only the page mapped above, which nothing else refers to.
    let _ = unsafe { munmap(ptr, len.get()) };
    works
}

/// Whether `memory.events` counts group kills (`oom_group_kill`, 5.17), read from the first
/// non-root v2 memory cgroup found (the root has no `memory.events`); `None` where memory is on
/// v1 or no such cgroup exists yet.
pub fn oom_group_kill_counted() -> Option<bool> {
    let hier = crate::cgroup::Hierarchy::detect().ok()?;
    if hier.memory_version != crate::cgroup::Version::V2 {
        return None;
    }
    let events = std::fs::read_dir(&hier.memory_mount)
        .ok()?
        .filter_map(Result::ok)
        .map(|d| d.path().join("memory.events"))
        .find(|p| p.is_file())?;
    let text = std::fs::read_to_string(events).ok()?;
    Some(text.lines().any(|l| l.starts_with("oom_group_kill ")))
}

/// Every feature doctor looks for; `tracefs` is `None` when tracefs could not be mounted.
pub fn check(tracefs: Option<&Path>) -> Vec<FeatureCheck> {
    let group_kill = oom_group_kill_counted().map(|present| FeatureCheck {
        name: "memory.events oom_group_kill",
        present,
        without: "the kernel does not count memory.oom.group kills (5.17 added the counter): group kills are known from the kernel log's `Tasks in … are going to be killed due to memory.oom.group set` only",
    });
    let mut found = vec![
        FeatureCheck {
            name: "oom:mark_victim victim details",
            present: tracefs.is_some_and(mark_victim_details),
            without: "the kernel gives victims only their pid: comm and oom_score_adj are read from /proc while the victim exists, rss only from the kernel log's Killed process line",
        },
        FeatureCheck {
            name: "MADV_POPULATE_WRITE",
            present: madvise_populate_write(),
            without: "injection faults pages in with one write each (slower)",
        },
    ];
    found.extend(group_kill);
    found
}
