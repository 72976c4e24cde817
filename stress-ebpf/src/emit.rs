//! Shared plumbing of the probes: the two ring buffers, the drop counters, the run-time config,
//! the target filter and reading tracepoint fields at the offsets user space found in the
//! kernel's `format` files.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::map,
    maps::{ring_buf::RingBufEntry, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext as _,
};
use stress_common::{stat, Config, EventHeader, Field, FILTER_CGROUP_V2, FILTER_PIDS};

/// Set by user space before load (`EbpfLoader::set_global`): offsets and the filter.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::zeroed();

/// Everything but the OOM events below. User space sizes it at load (`--ring-buffer`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Victims, reaper steps and kill hooks get a ring of their own, so a flood of adj updates or
/// reclaim passes that fills `EVENTS` cannot crowd out an OOM kill. 256 KiB holds ~2000 victims.
#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::N, 0);

/// Tgids in the target: seeded by user space from `cgroup.procs`, kept in step by
/// `cgroup_attach_task` and the `sched` fork/exit hooks. On cgroup v1 it is the filter itself;
/// on v2 it tells whether the task an adj write changes is in the target.
#[map]
pub(crate) static FILTER_PID_SET: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Pids of this oomlab's own workers, put in by user space as it starts each one (`oomlab run`,
/// whose tracer and injector are one process) and dropped at exit (`sched_process_exit`):
/// `mark_victim` reads it so a victim's role comes from the kernel, not from its comm.
#[map]
pub(crate) static OWN_WORKERS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Ids of the target cgroup and its descendants, in the memory controller's hierarchy
/// (`Config::filter_root`). Seeded by user space and grown by it on `cgroup_mkdir` events under
/// the target; on v2 it is the filter itself, on v1 it tells `cgroup_attach_task` which moves
/// bring a task into the target.
#[map]
pub(crate) static FILTER_CGROUP_SET: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Tgids whose memory cgroup user space has read and keeps in its cache (it puts them in after
/// a successful /proc read and takes them out when they move or exit): their reclaim records may
/// wait in `EVENTS` for the reader's next poll, because naming them no longer needs the task
/// alive. The kernel drops a tgid that moves cgroups (`cgroup_attach_task`). LRU: a user space
/// that fell behind never blocks an insert; an evicted tgid is only woken for again.
#[map]
pub(crate) static NAMED_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// The last SIGKILL each task sent (`signal_generate`), keyed by the sender's tid: the OOM
/// killer's own SIGKILL to its victim comes a few instructions before `mark_victim`, in the
/// same task, which then checks it here. LRU: kill storms elsewhere only evict old senders.
#[map]
pub(crate) static SIGKILLS_SENT: LruHashMap<u32, SigKill> = LruHashMap::with_max_entries(1024, 0);

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct SigKill {
    /// The task the signal went to (the tracepoint's `pid`, a tid).
    pub pid: u32,
    pub _pad: u32,
    pub ts: u64,
}

/// `bpf_ringbuf_submit` flags and `bpf_ringbuf_query` selectors (uapi `linux/bpf.h`).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// True when user space already knows `tgid`'s memory cgroup (see [`NAMED_TGIDS`]).
#[inline(always)]
pub(crate) fn tgid_named(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { NAMED_TGIDS.get(tgid) }.is_some()
}

/// A task moved: user space reads its cgroup again at its next record.
#[inline(always)]
pub(crate) fn unname(tgid: u32) {
    let _ = NAMED_TGIDS.remove(tgid);
}

/// Reads `CONFIG` through a volatile load so the compiler cannot fold the zeroed initialiser.
#[inline(always)]
pub(crate) fn config<T: Copy + 'static>(f: impl FnOnce(&'static Config) -> &'static T) -> T {
    // SAFETY: CONFIG is a valid static; the volatile read only defeats constant folding.
    unsafe { core::ptr::read_volatile(f(&CONFIG)) }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

/// True when the current task passes the user's target filter (node-wide when none is set).
#[inline(always)]
pub(crate) fn current_wanted() -> bool {
    match config(|c| &c.filter_mode) {
        FILTER_PIDS => {
            let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
            // SAFETY: the value is only tested for presence.
            unsafe { FILTER_PID_SET.get(tgid) }.is_some()
        }
        FILTER_CGROUP_V2 => {
            // SAFETY: the helper has no preconditions.
            let id = unsafe { bpf_get_current_cgroup_id() };
            // SAFETY: the value is only tested for presence.
            unsafe { FILTER_CGROUP_SET.get(id) }.is_some()
        }
        _ => true,
    }
}

/// True when a target filter is set (either kind).
#[inline(always)]
pub(crate) fn filtering() -> bool {
    config(|c| &c.filter_mode) != stress_common::FILTER_NONE
}

/// True when `tgid` is in the v1 pid set.
#[inline(always)]
pub(crate) fn pid_in_filter(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { FILTER_PID_SET.get(tgid) }.is_some()
}

/// True when `pid` is one of this oomlab's own workers.
#[inline(always)]
pub(crate) fn own_worker(pid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { OWN_WORKERS.get(pid) }.is_some()
}

/// True when the cgroup `id` of hierarchy `root` is the target or one of its descendants.
#[inline(always)]
pub(crate) fn cgroup_in_filter(root: i32, id: u64) -> bool {
    if root != config(|c| &c.filter_root) {
        return false;
    }
    // SAFETY: the value is only tested for presence.
    unsafe { FILTER_CGROUP_SET.get(id) }.is_some()
}

/// Reserves room for one `T` in `EVENTS`; counts a drop when that ring is full.
#[inline(always)]
pub(crate) fn reserve<T: 'static>() -> Option<RingBufEntry<T>> {
    reserve_in(&EVENTS, None)
}

/// Like [`reserve`], in the OOM events' own ring (drops also counted as `OOM_DROPPED`).
#[inline(always)]
pub(crate) fn reserve_oom<T: 'static>() -> Option<RingBufEntry<T>> {
    reserve_in(&OOM_EVENTS, Some(stat::OOM_DROPPED))
}

#[inline(always)]
fn reserve_in<T: 'static>(ring: &RingBuf, also_dropped: Option<u32>) -> Option<RingBufEntry<T>> {
    let entry = ring.reserve::<T>(0);
    match entry {
        Some(_) => bump(stat::PRODUCED),
        None => {
            bump(stat::DROPPED);
            if let Some(counter) = also_dropped {
                bump(counter);
            }
        }
    }
    entry
}

/// Publishes a record reserved with [`reserve`] without waking the reader: it comes at the
/// reader's next poll (at most 100 ms, `READER_POLL_MS` in user space), one wakeup for a batch
/// of records instead of one per record (an adj update cost ≈6,200 ns with a wakeup each and
/// ≈280 ns batched in `cargo xtask bench overhead`). Once an eighth of the ring is waiting the
/// reader is woken at once, so a flood cannot fill the ring between two polls; that look (two
/// helper calls, ≈100 ns of a ≈600 ns adj record on the SRSO-mitigated bench host) is taken
/// only at one record in `wake_check_mask + 1` of this CPU (see `Config::wake_check_mask`).
/// For records whose meaning user space reads from /proc of a live task, use [`submit_now`]
/// (or check [`tgid_named`] first).
#[inline(always)]
pub(crate) fn submit<T: 'static>(entry: RingBufEntry<T>) {
    let mask = u64::from(config(|c| &c.wake_check_mask));
    let produced = match STATS.get_ptr(stat::PRODUCED) {
        // SAFETY: this CPU's slot, bumped by reserve() in this same run.
        Some(p) => unsafe { *p },
        None => 0,
    };
    let flags = if produced & mask == 0 && ring_backlogged() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags);
}

/// True when an eighth of `EVENTS` (or `Config::wake_bytes`) waits unread.
#[inline(always)]
fn ring_backlogged() -> bool {
    let mut at = config(|c| &c.wake_bytes);
    if at == 0 {
        at = EVENTS.query(BPF_RB_RING_SIZE) / 8;
    }
    EVENTS.query(BPF_RB_AVAIL_DATA) >= at
}

/// Publishes a record and wakes the reader now: cgroup changes (the target filter's upkeep, a
/// victim's last move) and records of tasks user space has not named yet. A forced wakeup: the
/// kernel's default (flag 0) wakes only when the ring was empty, never while batched records
/// wait unread.
#[inline(always)]
pub(crate) fn submit_now<T: 'static>(entry: RingBufEntry<T>) {
    entry.submit(BPF_RB_FORCE_WAKEUP);
}

/// Fills the common header with the current task and the clock.
#[inline(always)]
pub(crate) fn header(kind: u32) -> EventHeader {
    header_of(kind, bpf_get_current_pid_tgid(), None, None)
}

/// [`header`] from what the caller already has: `bpf_get_current_pid_tgid()`, the clock it
/// read for this same record, and (when the tracepoint's own fields name the current task) its
/// comm. Each helper call left out is ≈50 ns where every `ret` goes through a return thunk (the
/// bench host: SRSO "Safe RET", retpolines).
#[inline(always)]
pub(crate) fn header_of(
    kind: u32,
    pid_tgid: u64,
    ts_ns: Option<u64>,
    comm: Option<[u8; 16]>,
) -> EventHeader {
    // SAFETY: these helpers have no preconditions.
    let (cpu, cgroup_id) = unsafe { (bpf_get_smp_processor_id(), bpf_get_current_cgroup_id()) };
    EventHeader {
        kind,
        cpu,
        // SAFETY: as above.
        ts_ns: ts_ns.unwrap_or_else(|| unsafe { bpf_ktime_get_ns() }),
        cgroup_id,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        comm: match comm {
            Some(c) => c,
            None => bpf_get_current_comm().unwrap_or([0; 16]),
        },
    }
}

/// A field at a constant offset `OFF`, loaded from the tracepoint record itself: the verifier
/// allows a tracepoint program direct, aligned loads from its context at constant offsets
/// (`tp_prog_is_valid_access`), and a load is an instruction where `bpf_probe_read_kernel` is a
/// helper call (≈35 ns here). Only for a layout the caller has checked against `CONFIG`; a
/// volatile load, so the compiler neither merges neighbours into a misaligned wider load nor
/// turns a choice between offsets into a variable one (both rejected by the verifier).
#[inline(always)]
pub(crate) fn ctx_load<T: Copy, const OFF: usize>(ctx: &TracePointContext) -> T {
    const { assert!(OFF >= 8 && OFF.is_multiple_of(size_of::<T>())) };
    // SAFETY: OFF is inside the record (checked by the caller against the kernel's format) and
    // aligned for T; the verifier checks the access again.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(OFF) as *const T) }
}

/// True when `f` is a plain (not `__data_loc`) field at `offset` of `size` bytes.
#[inline(always)]
pub(crate) fn field_at(f: Field, offset: u16, size: u16) -> bool {
    f.offset == offset && f.size == size && f.data_loc == 0
}

/// True when `f` is a `__data_loc` string whose 4-byte locator is at `offset`.
#[inline(always)]
pub(crate) fn loc_at(f: Field, offset: u16) -> bool {
    f.offset == offset && f.size == 4 && f.data_loc != 0
}

/// [`read_str`] of a `__data_loc` string whose locator is at the constant offset `OFF` (checked
/// by the caller with [`loc_at`]): the locator is a direct load, the string one helper call.
#[inline(always)]
pub(crate) fn read_loc_str<const OFF: usize>(ctx: &TracePointContext, dst: &mut [u8]) -> bool {
    if dst.is_empty() {
        return false;
    }
    let start = (ctx_load::<u32, OFF>(ctx) & 0xffff) as usize;
    let ok = copy_str_at(ctx, start, dst);
    if !ok {
        dst[0] = 0;
    }
    ok
}

/// The NUL-terminated string at `start` bytes into the record (0: none) into `dst`.
#[inline(always)]
fn copy_str_at(ctx: &TracePointContext, start: usize, dst: &mut [u8]) -> bool {
    start != 0 && {
        // SAFETY: the source is the tracepoint record; the helper bounds-checks the read.
        let src = unsafe { (ctx.as_ptr() as *const u8).add(start) };
        unsafe { bpf_probe_read_kernel_str_bytes(src, dst) }.is_ok()
    }
}

/// An unsigned field of 1, 2, 4 or 8 bytes, zero-extended; `None` when absent or unreadable.
#[inline(always)]
pub(crate) fn read_unsigned(ctx: &TracePointContext, f: Field) -> Option<u64> {
    let off = f.offset as usize;
    // SAFETY: read_at goes through bpf_probe_read_kernel, which tolerates any address.
    unsafe {
        match f.size {
            1 => ctx.read_at::<u8>(off).ok().map(u64::from),
            2 => ctx.read_at::<u16>(off).ok().map(u64::from),
            4 => ctx.read_at::<u32>(off).ok().map(u64::from),
            8 => ctx.read_at::<u64>(off).ok(),
            _ => None,
        }
    }
}

/// A field as a signed value, sign-extended when the format says `signed:1`.
#[inline(always)]
pub(crate) fn read_signed(ctx: &TracePointContext, f: Field) -> Option<i64> {
    let raw = read_unsigned(ctx, f)?;
    if f.signed == 0 {
        return Some(raw as i64);
    }
    Some(match f.size {
        1 => i64::from(raw as u8 as i8),
        2 => i64::from(raw as u16 as i16),
        4 => i64::from(raw as u32 as i32),
        _ => raw as i64,
    })
}

/// Copies a string field (`__data_loc char[]` or a fixed `char[N]`) into `dst`, NUL-terminated.
/// On failure `dst` starts with NUL so user space reads an empty string, never stale bytes;
/// the result says whether it was read.
#[inline(always)]
pub(crate) fn read_str(ctx: &TracePointContext, f: Field, dst: &mut [u8]) -> bool {
    if dst.is_empty() {
        return false;
    }
    let ok = f.size != 0 && {
        let start = if f.data_loc != 0 {
            // SAFETY: see read_unsigned.
            match unsafe { ctx.read_at::<u32>(f.offset as usize) } {
                Ok(loc) => (loc & 0xffff) as usize,
                Err(_) => 0,
            }
        } else {
            f.offset as usize
        };
        if f.data_loc != 0 {
            copy_str_at(ctx, start, dst)
        } else if start == 0 {
            false
        } else {
            // SAFETY: the source is the tracepoint record; the helper bounds-checks the read.
            let src = unsafe { (ctx.as_ptr() as *const u8).add(start) };
            let n = dst.len().min(f.size as usize);
            match dst.get_mut(..n) {
                Some(d) => unsafe { bpf_probe_read_kernel_buf(src, d) }.is_ok(),
                None => false,
            }
        }
    };
    if !ok {
        dst[0] = 0;
    }
    ok
}
