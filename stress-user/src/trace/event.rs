//! Typed events decoded from the ring buffer's raw records (the kernel → user-space half of the
//! one-way flow: ring buffer → decoder → `Event` → channel → sinks).

use std::{mem::size_of, time::Duration};

use serde::Serialize;
use stress_common::{self as common, kind, victim_fields};

/// The task that was running when the kernel event fired (`current`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub tgid: u32,
    pub pid: u32,
    pub comm: String,
    /// cgroup v2 id of the task (on a v1 memory controller this is the unified-hierarchy id).
    pub cgroup_id: u64,
}

/// `oom:mark_victim`: the task the OOM killer chose. Fields the running kernel's layout lacks
/// are `None` (before 6.9 only `pid` exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Victim {
    pub pid: i32,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// The task that triggered the OOM (it is often not the victim).
    pub trigger: Task,
}

/// `oom:oom_score_adj_update`: `writer` set `pid`'s adj.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdjUpdate {
    pub pid: i32,
    pub comm: String,
    pub oom_score_adj: i32,
    pub writer: Task,
}

/// kprobe/fentry on `oom_kill_process`, where the kernel allows those hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OomKillHook {
    pub hook: &'static str,
    pub task: Task,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    Victim(Victim),
    AdjUpdate(AdjUpdate),
    OomKillHook(OomKillHook),
}

/// One kernel event with its kernel timestamp (CLOCK_MONOTONIC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    #[serde(serialize_with = "ser_ts")]
    pub ts: Duration,
    pub cpu: u32,
    #[serde(flatten)]
    pub kind: EventKind,
}

fn ser_ts<S: serde::Serializer>(ts: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(ts.as_secs_f64())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes is too short for event kind {kind} ({need} bytes)")]
    Short { kind: u32, len: usize, need: usize },
    #[error("unknown event kind {0} (user space and eBPF object out of step?)")]
    UnknownKind(u32),
}

/// A NUL-terminated kernel string (comm, cgroup path).
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn read<T: Copy>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    if buf.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            len: buf.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: the length is checked above; T is a plain repr(C) integer-only type from
    // stress-common, valid for any bit pattern, and read_unaligned has no alignment demands.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

fn task(h: &common::EventHeader) -> Task {
    Task {
        tgid: h.tgid,
        pid: h.pid,
        comm: cstr(&h.comm),
        cgroup_id: h.cgroup_id,
    }
}

impl Event {
    /// Decodes one ring-buffer record.
    pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
        let k: u32 = read(buf, 0)?;
        let (hdr, kind) = match k {
            kind::MARK_VICTIM => {
                let e: common::MarkVictim = read(buf, k)?;
                let has = |bit| e.present & bit != 0;
                let rss = |v| has(victim_fields::RSS).then_some(v);
                (
                    e.hdr,
                    EventKind::Victim(Victim {
                        pid: e.pid,
                        comm: has(victim_fields::COMM).then(|| cstr(&e.comm)),
                        uid: has(victim_fields::UID).then_some(e.uid),
                        total_vm_kb: rss(e.total_vm_kb),
                        anon_rss_kb: rss(e.anon_rss_kb),
                        file_rss_kb: rss(e.file_rss_kb),
                        shmem_rss_kb: rss(e.shmem_rss_kb),
                        pgtables_kb: has(victim_fields::PGTABLES).then_some(e.pgtables_kb),
                        oom_score_adj: has(victim_fields::OOM_SCORE_ADJ).then_some(e.oom_score_adj),
                        trigger: task(&e.hdr),
                    }),
                )
            }
            kind::ADJ_UPDATE => {
                let e: common::AdjUpdate = read(buf, k)?;
                (
                    e.hdr,
                    EventKind::AdjUpdate(AdjUpdate {
                        pid: e.pid,
                        comm: cstr(&e.comm),
                        oom_score_adj: e.oom_score_adj,
                        writer: task(&e.hdr),
                    }),
                )
            }
            kind::OOM_KILL_PROCESS => {
                let e: common::OomKillProcess = read(buf, k)?;
                (
                    e.hdr,
                    EventKind::OomKillHook(OomKillHook {
                        hook: if e.hook == 1 { "fentry" } else { "kprobe" },
                        task: task(&e.hdr),
                    }),
                )
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        Ok(Event {
            ts: Duration::from_nanos(hdr.ts_ns),
            cpu: hdr.cpu,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32) -> common::EventHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        common::EventHeader {
            kind,
            cpu: 1,
            ts_ns: 1_500_000_000,
            cgroup_id: 42,
            tgid: 10,
            pid: 11,
            comm,
        }
    }

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a repr(C) plain value for the test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    #[test]
    fn victim_with_full_layout() {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"hog");
        let raw = common::MarkVictim {
            hdr: header(kind::MARK_VICTIM),
            pid: 4242,
            uid: 0,
            total_vm_kb: 100,
            anon_rss_kb: 65536,
            file_rss_kb: 4,
            shmem_rss_kb: 0,
            pgtables_kb: 140,
            oom_score_adj: 500,
            present: victim_fields::COMM
                | victim_fields::RSS
                | victim_fields::UID
                | victim_fields::PGTABLES
                | victim_fields::OOM_SCORE_ADJ,
            comm,
        };
        let ev = Event::decode(&bytes(&raw)).expect("decodes");
        assert_eq!(ev.ts, Duration::from_millis(1500));
        let EventKind::Victim(v) = ev.kind else {
            panic!("not a victim: {ev:?}")
        };
        assert_eq!(
            (v.pid, v.oom_score_adj, v.comm.as_deref()),
            (4242, Some(500), Some("hog"))
        );
        assert_eq!(v.anon_rss_kb, Some(65536));
        assert_eq!(v.trigger.comm, "bash");
    }

    #[test]
    fn victim_on_pre_6_9_layout_has_only_pid() {
        let raw = common::MarkVictim {
            hdr: header(kind::MARK_VICTIM),
            pid: 7,
            uid: 0,
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            pgtables_kb: 0,
            oom_score_adj: 0,
            present: 0,
            comm: [0; 16],
        };
        let EventKind::Victim(v) = Event::decode(&bytes(&raw)).expect("decodes").kind else {
            panic!("not a victim")
        };
        assert_eq!(v.pid, 7);
        assert_eq!((v.comm, v.oom_score_adj, v.anon_rss_kb), (None, None, None));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let raw = bytes(&header(kind::MARK_VICTIM));
        assert!(matches!(
            Event::decode(&raw),
            Err(DecodeError::Short { .. })
        ));
        assert_eq!(
            Event::decode(&bytes(&header(999))),
            Err(DecodeError::UnknownKind(999))
        );
        assert!(Event::decode(&[1, 0]).is_err());
    }
}
