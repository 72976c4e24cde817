//! A saved log's records into episodes, by the live tracer's own [`EpisodeBuilder`] (the same
//! report framing, kill-line and ranking rules), each with its verdict and the pods its
//! cgroups name.

use std::time::Instant;

use serde::Serialize;

use super::verdict::verdict;
use crate::{
    cgroup::kube::{self, KubeRef},
    trace::{
        episode::{Episode, EpisodeBuilder},
        kmsg::Record,
    },
};

/// A kubelet-named cgroup of the episode (its OOM domain or a victim's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodCgroup {
    pub cgroup: String,
    #[serde(flatten)]
    pub kube: KubeRef,
}

/// One episode as `oomlab explain` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    #[serde(flatten)]
    pub episode: Episode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodCgroup>,
    pub verdict: String,
}

/// The node a log was saved on, as far as `totalpages` needs it: its swap (bounds a memcg's
/// swap share) and its RAM + swap (a global OOM whose report lacks `show_mem`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Node {
    pub total_swap_pages: u64,
    pub totalpages: Option<u64>,
}

impl Node {
    /// This node's figures, for its own ring buffer (a saved log does not say them: then none
    /// is assumed, the usual swapless node).
    pub fn this_node() -> Node {
        let m = crate::sys::MemInfo::read().unwrap_or_default();
        let pages = |kb: u64| kb / (crate::sys::page_size() / 1024);
        let swap = pages(m.swap_total_kb.unwrap_or(0));
        Node {
            total_swap_pages: swap,
            totalpages: m.total_kb.map(|t| pages(t).saturating_add(swap)),
        }
    }
}

/// The episodes of `records`, in log order.
pub fn episodes(records: &[Record], node: Node) -> Vec<Explained> {
    let mut b = EpisodeBuilder::new(node.total_swap_pages, node.totalpages);
    // A saved log has no arrival times: every record is there at once, and the end of the log
    // closes what is open.
    let now = Instant::now();
    for r in records {
        b.push_record(r, now);
    }
    b.flush()
        .into_iter()
        .map(|episode| Explained {
            pods: pods(&episode),
            verdict: verdict(&episode),
            episode,
        })
        .collect()
}

fn pods(ep: &Episode) -> Vec<PodCgroup> {
    let mut out: Vec<PodCgroup> = Vec::new();
    let paths = ep
        .domain
        .memcg
        .iter()
        .chain(ep.victims.iter().filter_map(|v| v.cgroup.as_ref()));
    for path in paths {
        if out.iter().any(|p| &p.cgroup == path) {
            continue;
        }
        if let Some(kube) = kube::parse_path(path) {
            out.push(PodCgroup {
                cgroup: path.clone(),
                kube,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        explain::{records, LogFormat},
        trace::{episode::KmsgState, kmsg::parse_dump, testing::kmsg_fixture},
    };

    fn explained(text: &str) -> Vec<Explained> {
        let recs = records(text, LogFormat::KmsgDump, 2026, None).expect("records");
        episodes(&recs, Node::default())
    }

    #[test]
    fn a_report_makes_one_episode_with_its_verdict() {
        let eps = explained(&kmsg_fixture("6.18-host-memcg.txt"));
        assert_eq!(eps.len(), 1);
        let e = &eps[0];
        assert_eq!(e.episode.selected(), Some(19495));
        assert_eq!(e.episode.kmsg, KmsgState::Complete);
        assert!(
            e.verdict
                .starts_with("killed oomlab (19495): highest badness (7544 points)"),
            "{}",
            e.verdict
        );
    }

    #[test]
    fn several_reports_interleaved_with_other_lines() {
        let text = [
            "6,1,100,-;usb 1-1: new high-speed USB device number 2 using xhci_hcd".to_string(),
            kmsg_fixture("6.1-debian-memcg.txt"),
            "6,2,200,-;[drm] Initialized".into(),
            kmsg_fixture("6.12-debian-memcg-group.txt"),
        ]
        .join("\n");
        let eps = explained(&text);
        let picks: Vec<Option<i32>> = eps.iter().map(|e| e.episode.selected()).collect();
        assert_eq!(picks, [Some(88), Some(137)]);
        assert!(
            eps[1]
                .verdict
                .contains("memory.oom.group took 4 task(s) of /lab"),
            "{}",
            eps[1].verdict
        );
    }

    #[test]
    fn truncated_and_rate_limited_reports_say_so() {
        let full = kmsg_fixture("6.18-host-memcg.txt");
        let recs = parse_dump(&full);
        let cut: Vec<Record> = recs[..recs.len() - 1].to_vec();
        let eps = episodes(&cut, Node::default());
        assert_eq!(eps.len(), 1);
        assert!(eps[0].verdict.contains("truncated"), "{}", eps[0].verdict);
        let kill = "3,9,1,-;Memory cgroup out of memory: Killed process 500 (hog) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0";
        let eps = explained(kill);
        assert_eq!(eps[0].episode.selected(), Some(500));
        assert!(
            eps[0].verdict.starts_with("truncated (only the kill line"),
            "{}",
            eps[0].verdict
        );
    }

    #[test]
    fn kubelet_cgroups_name_their_pod() {
        let path = "/kubepods/burstable/pod0b4a0e8c-8a8e-4c3e-9d1a-7c1f2b3a4d5e/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let text = kmsg_fixture("6.18-host-memcg.txt")
            .replace(
                "oom_memcg=/oomlab-test/victims-fixture-18259",
                &format!("oom_memcg={path}"),
            )
            .replace(
                "task_memcg=/oomlab-test/victims-fixture-18259",
                &format!("task_memcg={path}"),
            );
        let eps = explained(&text);
        assert_eq!(eps[0].pods.len(), 1, "{:?}", eps[0].pods);
        assert_eq!(
            eps[0].pods[0].kube.pod_uid,
            "0b4a0e8c-8a8e-4c3e-9d1a-7c1f2b3a4d5e"
        );
    }
}
