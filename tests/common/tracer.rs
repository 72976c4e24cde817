//! The tracer run inside the test process, for the tests that read its typed events directly.

use std::time::Duration;

use stress_user::trace::{EventKind, Events, TraceOptions, Tracer};

/// The tracer on every event class; `hooks` also tries kprobe/fentry on `oom_kill_process`.
pub(crate) fn start(hooks: bool) -> (Tracer, Events) {
    Tracer::start(&TraceOptions {
        hooks,
        ..TraceOptions::default()
    })
    .expect("tracer starts")
}

/// Hands each event's kind to `f` until `f` returns something (that is returned), or `None`
/// once `timeout` has passed.
pub(crate) async fn first<T>(
    rx: &mut Events,
    timeout: Duration,
    mut f: impl FnMut(EventKind) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(timeout, async {
        loop {
            let ev = rx.recv().await.expect("tracer channel open");
            if let Some(found) = f(ev.kind) {
                return found;
            }
        }
    })
    .await
    .ok()
}

/// Hands the kind of every event of the next `period` to `f`: late duplicates show here.
pub(crate) async fn during(rx: &mut Events, period: Duration, mut f: impl FnMut(EventKind)) {
    let _ = tokio::time::timeout(period, async {
        while let Some(ev) = rx.recv().await {
            f(ev.kind);
        }
    })
    .await;
}
