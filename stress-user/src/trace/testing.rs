//! Test support for the tracer's unit tests: the recorded kernel fixtures under `tests/data/`
//! and hand-made events, shared here so no test module reaches into another's `tests`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    episode::{Episode, EpisodeBuilder, QUIET},
    event::{AdjUpdate, Task},
    format::Format,
    kmsg::parse_dump,
    Event, EventKind,
};

/// The `format` files of the kernels we have, one folder per kernel.
pub(crate) fn kernel_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/kernel")
}

/// One tracepoint's recorded `format`; `None` when that kernel does not have it.
pub(crate) fn format_fixture(kernel: &str, group: &str, event: &str) -> Option<Format> {
    let path = kernel_fixtures()
        .join(kernel)
        .join(group)
        .join(format!("{event}.format"));
    path.exists().then(|| read_format(&path))
}

fn read_format(path: &Path) -> Format {
    Format::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A recorded `/dev/kmsg` dump (`tests/data/kmsg/`).
pub(crate) fn kmsg_fixture(name: &str) -> String {
    let path = format!("{}/../tests/data/kmsg/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The episode the builder makes of a recorded kmsg dump holding one OOM report.
pub(crate) fn fixture_episode(name: &str) -> Episode {
    let t0 = Instant::now();
    let mut b = EpisodeBuilder::new(0, None);
    for rec in parse_dump(&kmsg_fixture(name)) {
        b.push_record(&rec, t0);
    }
    b.poll(t0 + QUIET).pop().expect("an episode")
}

/// An `oom_score_adj` event for `pid`, stamped `pid` ms.
pub(crate) fn adj(pid: i32) -> Event {
    Event {
        ts: Duration::from_millis(pid as u64),
        read_at: Duration::ZERO,
        enriched_at: Duration::ZERO,
        written: false,
        cpu: 0,
        kind: EventKind::AdjUpdate(AdjUpdate {
            pid,
            comm: String::new(),
            oom_score_adj: 0,
            writer: Task {
                tgid: 0,
                pid: 0,
                comm: String::new(),
                cgroup_id: 0,
            },
        }),
    }
}

/// The pids of events made by [`adj`].
pub(crate) fn pids(evs: &[Event]) -> Vec<i32> {
    evs.iter()
        .map(|e| match &e.kind {
            EventKind::AdjUpdate(a) => a.pid,
            _ => unreachable!(),
        })
        .collect()
}
