//! The tracepoints oomlab uses, in one table: where each lives, which eBPF program serves it and
//! which `--events` class it belongs to — what the tracer attaches and `doctor` checks — and the
//! pairs whose layouts the programs share.

/// A class of events, as `--events` (and `events` in `oomlab serve`'s config) names them;
/// programs of classes not asked for are not attached at all (no overhead).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EventClass {
    /// Victims, OOM episodes, the reaper, the allocator's retry decisions, the OOM killer hooks.
    Oom,
    /// `oom_score_adj` writes.
    Adj,
    /// memcg/direct reclaim, kswapd.
    Reclaim,
    /// cgroup mkdir/rmdir/attach (also attached whenever a target filter is set: moves into the
    /// target grow the filter).
    Cgroup,
}

impl EventClass {
    pub const ALL: [EventClass; 4] = [
        EventClass::Oom,
        EventClass::Adj,
        EventClass::Reclaim,
        EventClass::Cgroup,
    ];
}

/// The `--events` selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet {
    pub oom: bool,
    pub adj: bool,
    pub reclaim: bool,
    pub cgroup: bool,
}

impl Default for EventSet {
    fn default() -> Self {
        EventSet::ALL
    }
}

impl EventSet {
    pub const ALL: EventSet = EventSet {
        oom: true,
        adj: true,
        reclaim: true,
        cgroup: true,
    };

    /// `oom,adj,reclaim,cgroup` (any subset, any order).
    pub fn parse(text: &str) -> Result<EventSet, String> {
        let mut set = EventSet {
            oom: false,
            adj: false,
            reclaim: false,
            cgroup: false,
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match word {
                "oom" => set.oom = true,
                "adj" => set.adj = true,
                "reclaim" => set.reclaim = true,
                "cgroup" => set.cgroup = true,
                "all" => set = EventSet::ALL,
                other => {
                    return Err(format!(
                        "unknown event class {other:?}: use oom, adj, reclaim, cgroup (comma-separated)"
                    ))
                }
            }
        }
        if set
            == (EventSet {
                oom: false,
                adj: false,
                reclaim: false,
                cgroup: false,
            })
        {
            return Err("no event class given: use oom, adj, reclaim, cgroup".into());
        }
        Ok(set)
    }

    pub fn wants(&self, class: EventClass) -> bool {
        match class {
            EventClass::Oom => self.oom,
            EventClass::Adj => self.adj,
            EventClass::Reclaim => self.reclaim,
            EventClass::Cgroup => self.cgroup,
        }
    }
}

/// One tracepoint oomlab uses: where it lives and which eBPF program serves it.
#[derive(Debug, Clone, Copy)]
pub struct TracepointSpec {
    pub group: &'static str,
    pub event: &'static str,
    pub program: &'static str,
    /// oomlab cannot trace OOMs without it.
    pub required: bool,
    /// Attached with every trace, like the required one, but oomlab traces without it (less
    /// well: see `signal_generate`).
    pub always: bool,
    /// `None`: only for the target filter (fork/exit/exec keep the pid filter in step).
    pub class: Option<EventClass>,
}

impl TracepointSpec {
    /// Whether the tracer attaches it for `events`. A target filter (`targeted`) also needs the
    /// cgroup events (moves into the target grow the filter) and fork/exit/exec (the pid filter).
    pub fn wanted(&self, events: EventSet, targeted: bool) -> bool {
        if self.required || self.always {
            return true;
        }
        match self.class {
            Some(class) => events.wants(class) || (targeted && class == EventClass::Cgroup),
            None => targeted,
        }
    }
}

const fn tp(
    group: &'static str,
    event: &'static str,
    program: &'static str,
    class: Option<EventClass>,
) -> TracepointSpec {
    TracepointSpec {
        group,
        event,
        program,
        required: false,
        always: false,
        class,
    }
}

/// Every tracepoint oomlab uses, in attach order: the tracer attaches those asked for, `doctor`
/// checks every one (and loads and attaches it, to prove the verifier accepts it here).
pub const TRACEPOINTS: &[TracepointSpec] = &[
    // Before mark_victim: a kill is told from a mark without one by the SIGKILL before it, so
    // the first victim must not come before the SIGKILLs are seen.
    TracepointSpec {
        group: "signal",
        event: "signal_generate",
        program: "signal_generate",
        required: false,
        always: true,
        class: None,
    },
    TracepointSpec {
        group: "oom",
        event: "mark_victim",
        program: "mark_victim",
        required: true,
        always: false,
        class: Some(EventClass::Oom),
    },
    tp(
        "oom",
        "oom_score_adj_update",
        "oom_score_adj_update",
        Some(EventClass::Adj),
    ),
    tp(
        "oom",
        "reclaim_retry_zone",
        "reclaim_retry_zone",
        Some(EventClass::Oom),
    ),
    tp(
        "oom",
        "compact_retry",
        "compact_retry",
        Some(EventClass::Oom),
    ),
    tp("oom", "wake_reaper", "wake_reaper", Some(EventClass::Oom)),
    tp(
        "oom",
        "start_task_reaping",
        "start_task_reaping",
        Some(EventClass::Oom),
    ),
    tp(
        "oom",
        "finish_task_reaping",
        "finish_task_reaping",
        Some(EventClass::Oom),
    ),
    tp(
        "oom",
        "skip_task_reaping",
        "skip_task_reaping",
        Some(EventClass::Oom),
    ),
    tp(
        "vmscan",
        "mm_vmscan_memcg_reclaim_begin",
        "memcg_reclaim_begin",
        Some(EventClass::Reclaim),
    ),
    tp(
        "vmscan",
        "mm_vmscan_memcg_reclaim_end",
        "memcg_reclaim_end",
        Some(EventClass::Reclaim),
    ),
    tp(
        "vmscan",
        "mm_vmscan_direct_reclaim_begin",
        "direct_reclaim_begin",
        Some(EventClass::Reclaim),
    ),
    tp(
        "vmscan",
        "mm_vmscan_direct_reclaim_end",
        "direct_reclaim_end",
        Some(EventClass::Reclaim),
    ),
    tp(
        "vmscan",
        "mm_vmscan_kswapd_wake",
        "kswapd_wake",
        Some(EventClass::Reclaim),
    ),
    tp(
        "cgroup",
        "cgroup_mkdir",
        "cgroup_mkdir",
        Some(EventClass::Cgroup),
    ),
    tp(
        "cgroup",
        "cgroup_rmdir",
        "cgroup_rmdir",
        Some(EventClass::Cgroup),
    ),
    tp(
        "cgroup",
        "cgroup_attach_task",
        "cgroup_attach_task",
        Some(EventClass::Cgroup),
    ),
    tp("sched", "sched_process_fork", "sched_process_fork", None),
    tp("sched", "sched_process_exit", "sched_process_exit", None),
    tp("sched", "sched_process_exec", "sched_process_exec", None),
];

/// `(group, event)`.
pub type TracepointName = (&'static str, &'static str);

/// Tracepoints that reuse another one's layout in `Config` (the first of each pair is the one
/// read): their fields must sit at the same offsets, or the program would read garbage.
pub const SHARED_LAYOUTS: &[(TracepointName, TracepointName)] = &[
    (
        ("vmscan", "mm_vmscan_memcg_reclaim_begin"),
        ("vmscan", "mm_vmscan_direct_reclaim_begin"),
    ),
    (
        ("vmscan", "mm_vmscan_memcg_reclaim_end"),
        ("vmscan", "mm_vmscan_direct_reclaim_end"),
    ),
    (("oom", "wake_reaper"), ("oom", "start_task_reaping")),
    (("oom", "wake_reaper"), ("oom", "finish_task_reaping")),
    (("oom", "wake_reaper"), ("oom", "skip_task_reaping")),
    (("cgroup", "cgroup_mkdir"), ("cgroup", "cgroup_rmdir")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_classes_parse() {
        let s = EventSet::parse("oom,reclaim").expect("parses");
        assert!(s.oom && s.reclaim && !s.adj && !s.cgroup);
        assert_eq!(EventSet::parse("all"), Ok(EventSet::ALL));
        assert!(EventSet::parse("oom,bogus").unwrap_err().contains("bogus"));
        assert!(EventSet::parse("").is_err());
        assert!(TRACEPOINTS.iter().filter(|t| t.required).count() == 1);
    }
}
