//! `oom:*` tracepoints: the victim, `oom_score_adj` writes, the allocator's retry decisions and
//! the OOM reaper's steps.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use stress_common::{
    adj_update, compact_retry as cr, kind, mark_victim as mv, reaper_step, retry_zone as rz,
    signal_generate as sg, victim_fields, AdjUpdate, CompactRetry, MarkVictim, Reaper, RetryZone,
    KILL_TO_MARK_NS,
};

use crate::emit::{
    config, ctx_load, current_wanted, field_at, filtering, header, header_of, own_worker,
    pid_in_filter, read_signed, read_str, read_unsigned, reserve, reserve_oom, submit, SigKill,
    SIGKILLS_SENT,
};

const SIGKILL: i64 = 9;

/// Every signal on the node passes here; only a SIGKILL is written down, by its sender's tid.
#[tracepoint]
pub(crate) fn signal_generate(ctx: TracePointContext) -> u32 {
    let l = config(|c| &c.signal_generate);
    if read_signed(&ctx, l[sg::SIG]) != Some(SIGKILL) {
        return 0;
    }
    let Some(pid) = read_signed(&ctx, l[sg::PID]) else {
        return 0;
    };
    let sender = bpf_get_current_pid_tgid() as u32;
    let sent = SigKill {
        pid: pid as u32,
        _pad: 0,
        // SAFETY: a helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
    };
    let _ = SIGKILLS_SENT.insert(sender, sent, 0);
    0
}

/// Whether the current task has just sent SIGKILL to `pid` (and forgets it: one kill, one mark).
#[inline(always)]
fn just_killed(pid: u32) -> bool {
    let me = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(sent) = (unsafe { SIGKILLS_SENT.get(me) }).copied() else {
        return false;
    };
    let _ = SIGKILLS_SENT.remove(me);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    sent.pid == pid && now.wrapping_sub(sent.ts) <= KILL_TO_MARK_NS
}

/// Not filtered in the kernel: the victim can live in another cgroup than the task that
/// triggered the OOM, and kills are rare; user space filters on the victim's own cgroup.
#[tracepoint]
pub(crate) fn mark_victim(ctx: TracePointContext) -> u32 {
    match try_mark_victim(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_mark_victim(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = config(|c| &c.mark_victim);
    let pid = match read_signed(ctx, layout[mv::PID]) {
        Some(pid) => pid as i32,
        None => {
            warn!(
                ctx,
                "oom:mark_victim: pid unreadable at offset {}",
                layout[mv::PID].offset
            );
            return Err(1);
        }
    };
    let Some(mut entry) = reserve_oom::<MarkVictim>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    let mut present = 0;
    let mut kb = |i: usize, bit: u32| match read_unsigned(ctx, layout[i]) {
        Some(v) => {
            present |= bit;
            v
        }
        None => 0,
    };
    let total_vm_kb = kb(mv::TOTAL_VM, victim_fields::RSS);
    let anon_rss_kb = kb(mv::ANON_RSS, victim_fields::RSS);
    let file_rss_kb = kb(mv::FILE_RSS, victim_fields::RSS);
    let shmem_rss_kb = kb(mv::SHMEM_RSS, victim_fields::RSS);
    let pgtables_kb = kb(mv::PGTABLES, victim_fields::PGTABLES);
    let uid = kb(mv::UID, victim_fields::UID) as u32;
    let oom_score_adj = match read_signed(ctx, layout[mv::OOM_SCORE_ADJ]) {
        Some(adj) => {
            present |= victim_fields::OOM_SCORE_ADJ;
            adj as i32
        }
        None => 0,
    };
    if layout[mv::COMM].is_present() {
        present |= victim_fields::COMM;
    }
    // Recorded, not filtered on: user space decides with the victim's own cgroup, and this bit
    // still answers after the victim has exited and /proc no longer knows it.
    // A task that picked itself (the allocating task is the victim) is in the target when the
    // current task passes the filter, whichever pid set it was missed by.
    let current = (bpf_get_current_pid_tgid() >> 32) as i32;
    if filtering() && (pid_in_filter(pid as u32) || (pid == current && current_wanted())) {
        present |= victim_fields::IN_FILTER;
    }
    if own_worker(pid as u32) {
        present |= victim_fields::OWN_WORKER;
    }
    if just_killed(pid as u32) {
        present |= victim_fields::KILL_SENT;
    }
    // SAFETY: `ev` points at reserved ring-buffer memory large enough for one MarkVictim; every
    // field is written before submit.
    unsafe {
        (*ev).hdr = header(kind::MARK_VICTIM);
        (*ev).pid = pid;
        (*ev).uid = uid;
        (*ev).total_vm_kb = total_vm_kb;
        (*ev).anon_rss_kb = anon_rss_kb;
        (*ev).file_rss_kb = file_rss_kb;
        (*ev).shmem_rss_kb = shmem_rss_kb;
        (*ev).pgtables_kb = pgtables_kb;
        (*ev).oom_score_adj = oom_score_adj;
        (*ev).present = present;
        read_str(ctx, layout[mv::COMM], &mut (*ev).comm);
    }
    entry.submit(0);
    Ok(0)
}

#[tracepoint]
pub(crate) fn oom_score_adj_update(ctx: TracePointContext) -> u32 {
    match try_oom_score_adj_update(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_oom_score_adj_update(ctx: &TracePointContext) -> Result<u32, u32> {
    let layout = config(|c| &c.adj_update);
    // The layout of the 6.1, 6.12 and 6.18 format files (`pid` at 8, `comm` at 12,
    // `oom_score_adj` at 28) is read with direct loads; another is read through the helpers at its offsets.
    let known = field_at(layout[adj_update::PID], 8, 4)
        && field_at(layout[adj_update::COMM], 12, 16)
        && field_at(layout[adj_update::OOM_SCORE_ADJ], 28, 2)
        && layout[adj_update::OOM_SCORE_ADJ].signed != 0;
    let pid = if known {
        ctx_load::<i32, 8>(ctx)
    } else {
        read_signed(ctx, layout[adj_update::PID]).ok_or(1u32)? as i32
    };
    // Kept when the writer is in the target (a process changing its own or a child's adj, the
    // injector setting its workers') or when the process whose adj changed is (its pid is
    // tracked in both filter modes: the writer's cgroup says nothing about the target task's).
    if !current_wanted() && !(filtering() && pid_in_filter(pid as u32)) {
        return Ok(0);
    }
    let adj = if known {
        i32::from(ctx_load::<i16, 28>(ctx))
    } else {
        read_signed(ctx, layout[adj_update::OOM_SCORE_ADJ]).ok_or(1u32)? as i32
    };
    let Some(mut entry) = reserve::<AdjUpdate>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: as in try_mark_victim.
    unsafe {
        (*ev).pid = pid;
        (*ev).oom_score_adj = adj;
        let read = if known {
            let words = [
                ctx_load::<u32, 12>(ctx),
                ctx_load::<u32, 16>(ctx),
                ctx_load::<u32, 20>(ctx),
                ctx_load::<u32, 24>(ctx),
            ];
            let comm = &mut (*ev).comm;
            for (i, w) in words.iter().enumerate() {
                comm[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            true
        } else {
            read_str(ctx, layout[adj_update::COMM], &mut (*ev).comm)
        };
        // Most writes are a task's own (`echo N > /proc/self/oom_score_adj`): the field is
        // then the current task's comm, and the header needs no helper call for it.
        let own = (read && pid as u32 == pid_tgid as u32).then(|| (*ev).comm);
        (*ev).hdr = header_of(kind::ADJ_UPDATE, pid_tgid, None, own);
    }
    submit(entry);
    Ok(0)
}

/// `oom:reclaim_retry_zone`: fired in the allocating task, so filtered on it.
#[tracepoint]
pub(crate) fn reclaim_retry_zone(ctx: TracePointContext) -> u32 {
    match try_reclaim_retry_zone(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_reclaim_retry_zone(ctx: &TracePointContext) -> Result<u32, u32> {
    if !current_wanted() {
        return Ok(0);
    }
    let l = config(|c| &c.retry_zone);
    let int = |i: usize| read_signed(ctx, l[i]).unwrap_or(0) as i32;
    let Some(mut entry) = reserve::<RetryZone>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory for one RetryZone, fully written before submit.
    unsafe {
        (*ev).hdr = header(kind::RETRY_ZONE);
        (*ev).node = int(rz::NODE);
        (*ev).zone_idx = int(rz::ZONE_IDX);
        (*ev).order = int(rz::ORDER);
        (*ev).no_progress_loops = int(rz::NO_PROGRESS_LOOPS);
        (*ev).reclaimable = read_unsigned(ctx, l[rz::RECLAIMABLE]).unwrap_or(0);
        (*ev).available = read_unsigned(ctx, l[rz::AVAILABLE]).unwrap_or(0);
        (*ev).min_wmark = read_unsigned(ctx, l[rz::MIN_WMARK]).unwrap_or(0);
        (*ev).wmark_check = read_unsigned(ctx, l[rz::WMARK_CHECK]).unwrap_or(0) as i32;
        (*ev)._pad = 0;
    }
    submit(entry);
    Ok(0)
}

/// `oom:compact_retry` (kernels with compaction).
#[tracepoint]
pub(crate) fn compact_retry(ctx: TracePointContext) -> u32 {
    match try_compact_retry(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_compact_retry(ctx: &TracePointContext) -> Result<u32, u32> {
    if !current_wanted() {
        return Ok(0);
    }
    let l = config(|c| &c.compact_retry);
    let int = |i: usize| read_signed(ctx, l[i]).unwrap_or(0) as i32;
    let Some(mut entry) = reserve::<CompactRetry>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: as in try_reclaim_retry_zone.
    unsafe {
        (*ev).hdr = header(kind::COMPACT_RETRY);
        (*ev).order = int(cr::ORDER);
        (*ev).priority = int(cr::PRIORITY);
        (*ev).result = int(cr::RESULT);
        (*ev).retries = int(cr::RETRIES);
        (*ev).max_retries = int(cr::MAX_RETRIES);
        (*ev).ret = read_unsigned(ctx, l[cr::RET]).unwrap_or(0) as i32;
    }
    submit(entry);
    Ok(0)
}

/// The four reaper tracepoints share one layout (`pid` of the victim). Not filtered in the
/// kernel: `start/finish/skip` run in the `oom_reaper` kernel thread, often after the victim has
/// exited and left the pid filter; there are one to three per kill node-wide, and user space
/// keeps those of victims it reported.
#[inline(always)]
fn reaper(ctx: &TracePointContext, step: u32) -> Result<u32, u32> {
    let pid =
        read_signed(ctx, config(|c| &c.reaper)[stress_common::reaper::PID]).ok_or(1u32)? as i32;
    let Some(mut entry) = reserve_oom::<Reaper>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: as in try_reclaim_retry_zone.
    unsafe {
        (*ev).hdr = header(kind::REAPER);
        (*ev).step = step;
        (*ev).pid = pid;
    }
    entry.submit(0);
    Ok(0)
}

#[tracepoint]
pub(crate) fn wake_reaper(ctx: TracePointContext) -> u32 {
    match reaper(&ctx, reaper_step::WAKE) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn start_task_reaping(ctx: TracePointContext) -> u32 {
    match reaper(&ctx, reaper_step::START) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn finish_task_reaping(ctx: TracePointContext) -> u32 {
    match reaper(&ctx, reaper_step::FINISH) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn skip_task_reaping(ctx: TracePointContext) -> u32 {
    match reaper(&ctx, reaper_step::SKIP) {
        Ok(r) | Err(r) => r,
    }
}
