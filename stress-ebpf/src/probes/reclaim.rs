//! `vmscan:*` tracepoints: memcg and direct reclaim, paired begin/end per task into one event
//! with its latency, and totals per cgroup kept in the kernel so summaries survive drops; kswapd
//! wake-ups.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::TracePointContext,
};
use stress_common::{
    kind, kswapd_wake as kw, reclaim_begin as rb, reclaim_end as re, reclaim_kind, KswapdWake,
    Reclaim, ReclaimStats, RECLAIM_KEY_TGID,
};

use crate::emit::{
    config, ctx_load, current_wanted, field_at, header, header_of, read_signed, read_unsigned,
    reserve, submit, submit_now, tgid_named,
};

/// A reclaim pass in progress, keyed by `tid | kind << 32`.
#[derive(Clone, Copy)]
#[repr(C)]
struct Start {
    ts_ns: u64,
    gfp_flags: u64,
    order: i32,
    _pad: u32,
}

/// LRU: a task's entry stays between its passes (`ts_ns` 0 while none is in progress) and ages
/// out once the task is gone, or was killed in the middle of reclaim and never reached `_end`.
#[map]
static RECLAIM_START: LruHashMap<u64, Start> = LruHashMap::with_max_entries(16384, 0);

/// Totals per cgroup (or per tgid on v1, see `Config::reclaim_key`), per CPU: no atomics needed,
/// user space sums the CPUs.
#[map]
static RECLAIM_STATS: PerCpuHashMap<u64, ReclaimStats> = PerCpuHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn key(pid_tgid: u64, kind: u32) -> u64 {
    (pid_tgid & 0xffff_ffff) | (u64::from(kind) << 32)
}

#[inline(always)]
fn begin(ctx: &TracePointContext, kind: u32) -> Result<u32, u32> {
    // Filtered here: an unwanted task never gets a start entry, so its end is ignored too.
    if !current_wanted() {
        return Ok(0);
    }
    let layout = config(|c| &c.reclaim_begin);
    // The 6.1, 6.12 and 6.18 format files: `order` at 8, `gfp_flags` at 16 (direct loads, see
    // `ctx_load`); another layout through the helpers.
    let known = field_at(layout[rb::ORDER], 8, 4) && field_at(layout[rb::GFP_FLAGS], 16, 8);
    let (order, gfp_flags) = if known {
        (ctx_load::<i32, 8>(ctx), ctx_load::<u64, 16>(ctx))
    } else {
        (
            read_signed(ctx, layout[rb::ORDER]).unwrap_or(0) as i32,
            read_unsigned(ctx, layout[rb::GFP_FLAGS]).unwrap_or(0),
        )
    };
    let start = Start {
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        gfp_flags,
        order,
        _pad: 0,
    };
    let k = key(bpf_get_current_pid_tgid(), kind);
    // A task that reclaims again finds its entry from the last pass (`end` only marks it done)
    // and rewrites it in place: an LRU insert and delete per pass take the map's locks and
    // move a node between its lists, a lookup does not.
    match RECLAIM_START.get_ptr_mut(k) {
        // SAFETY: the entry is keyed by this task, which is the only writer; the element stays
        // valid for the program's run even if the LRU evicts it meanwhile.
        Some(s) => unsafe { *s = start },
        None => RECLAIM_START.insert(k, start, 0).map_err(|_| 1u32)?,
    }
    Ok(0)
}

#[inline(always)]
fn end(ctx: &TracePointContext, kind: u32) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let k = key(pid_tgid, kind);
    // Copied out, then marked done (`ts_ns` 0) rather than deleted: the next `begin` of this
    // task rewrites it, and the entry of a task that is gone ages out of the LRU.
    let start = match RECLAIM_START.get_ptr_mut(k) {
        // SAFETY: keyed by this task, the only writer (see `begin`).
        Some(s) => unsafe {
            let start = *s;
            (*s).ts_ns = 0;
            start
        },
        None => return Ok(0),
    };
    if start.ts_ns == 0 {
        // An end without its begin (attached mid-pass, or a second end).
        return Ok(0);
    }
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let latency_ns = now.saturating_sub(start.ts_ns);
    let f = config(|c| &c.reclaim_end)[re::NR_RECLAIMED];
    // `nr_reclaimed` at 8 in the 6.1, 6.12 and 6.18 format files.
    let nr_reclaimed = if field_at(f, 8, 8) {
        ctx_load::<u64, 8>(ctx)
    } else {
        read_unsigned(ctx, f).unwrap_or(0)
    };

    let stats_key = if config(|c| &c.reclaim_key) == RECLAIM_KEY_TGID {
        pid_tgid >> 32
    } else {
        // SAFETY: no preconditions.
        unsafe { bpf_get_current_cgroup_id() }
    };
    match RECLAIM_STATS.get_ptr_mut(stats_key) {
        // SAFETY: this CPU's slot; nothing else writes it while the program runs.
        Some(s) => unsafe {
            (*s).count += 1;
            (*s).nr_reclaimed += nr_reclaimed;
            (*s).total_ns += latency_ns;
            if latency_ns > (*s).max_ns {
                (*s).max_ns = latency_ns;
            }
        },
        None => {
            let first = ReclaimStats {
                count: 1,
                nr_reclaimed,
                total_ns: latency_ns,
                max_ns: latency_ns,
            };
            // BPF_NOEXIST: another CPU may have created the key meanwhile; then this pass is
            // counted in the event only, which is rare and visible as a small undercount.
            let _ = RECLAIM_STATS.insert(stats_key, first, 1);
        }
    }

    let Some(mut entry) = reserve::<Reclaim>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory for one Reclaim, fully written before submit.
    unsafe {
        (*ev).hdr = header_of(kind::RECLAIM, pid_tgid, Some(now), None);
        (*ev).reclaim_kind = kind;
        (*ev).order = start.order;
        (*ev).gfp_flags = start.gfp_flags;
        (*ev).nr_reclaimed = nr_reclaimed;
        (*ev).latency_ns = latency_ns;
    }
    // User space names the record's cgroup from /proc of its task: a task it has not named yet
    // may be gone by the next poll (a short `dd` reclaiming in a small cgroup).
    if tgid_named((pid_tgid >> 32) as u32) {
        submit(entry);
    } else {
        submit_now(entry);
    }
    Ok(0)
}

#[tracepoint]
pub(crate) fn memcg_reclaim_begin(ctx: TracePointContext) -> u32 {
    match begin(&ctx, reclaim_kind::MEMCG) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    match end(&ctx, reclaim_kind::MEMCG) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn direct_reclaim_begin(ctx: TracePointContext) -> u32 {
    match begin(&ctx, reclaim_kind::DIRECT) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn direct_reclaim_end(ctx: TracePointContext) -> u32 {
    match end(&ctx, reclaim_kind::DIRECT) {
        Ok(r) | Err(r) => r,
    }
}

/// Not filtered: kswapd is a kernel thread working for the whole node.
#[tracepoint]
pub(crate) fn kswapd_wake(ctx: TracePointContext) -> u32 {
    match try_kswapd_wake(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_kswapd_wake(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = config(|c| &c.kswapd_wake);
    let Some(mut entry) = reserve::<KswapdWake>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: as in `end`.
    unsafe {
        (*ev).hdr = header(kind::KSWAPD_WAKE);
        (*ev).nid = read_signed(ctx, layout[kw::NID]).unwrap_or(-1) as i32;
        (*ev).zid = read_signed(ctx, layout[kw::ZID]).unwrap_or(-1) as i32;
        (*ev).order = read_signed(ctx, layout[kw::ORDER]).unwrap_or(0) as i32;
        (*ev)._pad = 0;
    }
    submit(entry);
    Ok(0)
}
