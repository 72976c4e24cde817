//! `oom:*` tracepoints: the victim, `oom_score_adj` writes.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::warn;
use stress_common::{adj_update, kind, mark_victim as mv, victim_fields, AdjUpdate, MarkVictim};

use crate::emit::{config, current_wanted, header, read_signed, read_str, read_unsigned, reserve};

/// Not filtered in the kernel: the victim can live in another cgroup than the task that
/// triggered the OOM, and kills are rare; user space filters on the victim's own cgroup.
#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
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
    let Some(mut entry) = reserve::<MarkVictim>() else {
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
pub fn oom_score_adj_update(ctx: TracePointContext) -> u32 {
    match try_oom_score_adj_update(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_oom_score_adj_update(ctx: &TracePointContext) -> Result<u32, u32> {
    // The writer (current) is what the filter sees: a process in the target changing its own
    // or a child's adj, or the injector setting its workers' adj.
    if !current_wanted() {
        return Ok(0);
    }
    let layout = config(|c| &c.adj_update);
    let pid = read_signed(ctx, layout[adj_update::PID]).ok_or(1u32)? as i32;
    let adj = read_signed(ctx, layout[adj_update::OOM_SCORE_ADJ]).ok_or(1u32)? as i32;
    let Some(mut entry) = reserve::<AdjUpdate>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: as in try_mark_victim.
    unsafe {
        (*ev).hdr = header(kind::ADJ_UPDATE);
        (*ev).pid = pid;
        (*ev).oom_score_adj = adj;
        read_str(ctx, layout[adj_update::COMM], &mut (*ev).comm);
    }
    entry.submit(0);
    Ok(0)
}
