//! `cgroup:*` tracepoints (mkdir, rmdir, task moves) and the `sched` fork/exit hooks that keep
//! the target's pid set (`FILTER_PID_SET`) in step: a task moved into the target, or forked by
//! a task already in it, joins the set; one moved out or exited leaves it.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use stress_common::{
    cgroup_attach as ca, cgroup_dir as cd, cgroup_op, kind, process_exit, process_fork,
    CgroupEvent, FILTER_CGROUP_V2,
};

use crate::emit::{
    cgroup_in_filter, config, ctx_load, current_wanted, field_at, filtering, header, header_of,
    loc_at, pid_in_filter, read_loc_str, read_signed, read_str, read_unsigned, reserve, submit,
    submit_now, unname, FILTER_PID_SET, OWN_WORKERS,
};

/// Under a target filter a cgroup change wakes the reader at once: user space grows the filter
/// from it (a mkdir under the target adds the cgroup, and the processes already moved in). A
/// node-wide trace has no filter to keep, and the wakeup is most of the cost (an irq_work, a
/// self-IPI: 12–18 µs per record in a VM, `bench overhead`): its records wait for the reader's
/// next poll or a ring an eighth full. What reads them sooner still does — an OOM record makes
/// the reader decode what waits here first, so a victim's last move is known when it is named.
#[inline(always)]
fn publish<T: 'static>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    if filtering() {
        submit_now(entry);
    } else {
        submit(entry);
    }
}

#[tracepoint]
pub(crate) fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    match dir(&ctx, cgroup_op::MKDIR) {
        Ok(r) | Err(r) => r,
    }
}

#[tracepoint]
pub(crate) fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    match dir(&ctx, cgroup_op::RMDIR) {
        Ok(r) | Err(r) => r,
    }
}

/// With a filter, only the memory controller's hierarchy passes: user space needs every mkdir
/// there to grow the target set (the new cgroup's parent is only in its path), and filters the
/// rest by path.
#[inline(always)]
fn dir(ctx: &TracePointContext, op: u32) -> Result<u32, u32> {
    let l = config(|c| &c.cgroup_dir);
    // The layout of the 6.1, 6.12 and 6.18 format files (shared/kernel): `root` at 8, `level`
    // at 12, `id` at 16, `path`'s locator at 24, read with direct loads (`ctx_load`); another
    // layout through the helpers.
    let known = field_at(l[cd::ROOT], 8, 4)
        && field_at(l[cd::LEVEL], 12, 4)
        && field_at(l[cd::ID], 16, 8)
        && loc_at(l[cd::PATH], 24);
    let root = if known {
        ctx_load::<i32, 8>(ctx)
    } else {
        read_signed(ctx, l[cd::ROOT]).ok_or(1u32)? as i32
    };
    if filtering() && root != config(|c| &c.filter_root) {
        return Ok(0);
    }
    let Some(mut entry) = reserve::<CgroupEvent>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory for one CgroupEvent, fully written before submit.
    unsafe {
        (*ev).hdr = header(kind::CGROUP);
        (*ev).op = op;
        (*ev).root = root;
        (*ev).pid = 0;
        (*ev).comm[0] = 0;
        if known {
            (*ev).level = ctx_load::<i32, 12>(ctx);
            (*ev).id = ctx_load::<u64, 16>(ctx);
            read_loc_str::<24>(ctx, &mut (*ev).path);
        } else {
            (*ev).level = read_signed(ctx, l[cd::LEVEL]).unwrap_or(0) as i32;
            (*ev).id = read_unsigned(ctx, l[cd::ID]).unwrap_or(0);
            read_str(ctx, l[cd::PATH], &mut (*ev).path);
        }
    }
    publish(entry);
    Ok(0)
}

#[tracepoint]
pub(crate) fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    match try_attach(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_attach(ctx: &TracePointContext) -> Result<u32, u32> {
    let l = config(|c| &c.cgroup_attach);
    // The layout of the 6.1, 6.12 and 6.18 format files: `dst_root` 8, `dst_level` 12, `dst_id`
    // 16, `pid` 24, the locators of `dst_path` 28 and `comm` 32 (direct loads); another layout
    // through the helpers.
    let known = field_at(l[ca::DST_ROOT], 8, 4)
        && field_at(l[ca::DST_LEVEL], 12, 4)
        && field_at(l[ca::DST_ID], 16, 8)
        && field_at(l[ca::PID], 24, 4)
        && loc_at(l[ca::DST_PATH], 28)
        && loc_at(l[ca::COMM], 32);
    let (root, id, pid) = if known {
        (
            ctx_load::<i32, 8>(ctx),
            ctx_load::<u64, 16>(ctx),
            ctx_load::<i32, 24>(ctx),
        )
    } else {
        (
            read_signed(ctx, l[ca::DST_ROOT]).ok_or(1u32)? as i32,
            read_unsigned(ctx, l[ca::DST_ID]).ok_or(1u32)?,
            read_signed(ctx, l[ca::PID]).ok_or(1u32)? as i32,
        )
    };
    // A move in any hierarchy (the memory one's id is not known here): user space reads the
    // task's cgroup again at its next reclaim record, which costs one /proc read.
    unname(pid as u32);
    if filtering() {
        let into_target = cgroup_in_filter(root, id);
        let mut out_of_target = false;
        if root == config(|c| &c.filter_root) {
            if into_target {
                let _ = FILTER_PID_SET.insert(pid as u32, 1u8, 0);
            } else if pid_in_filter(pid as u32) {
                out_of_target = true;
                let _ = FILTER_PID_SET.remove(pid as u32);
            }
        }
        if !into_target && !out_of_target {
            return Ok(0);
        }
    }
    let Some(mut entry) = reserve::<CgroupEvent>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: as in `dir`.
    unsafe {
        (*ev).op = cgroup_op::ATTACH;
        (*ev).root = root;
        (*ev).pid = pid;
        (*ev).id = id;
        let comm_read = if known {
            (*ev).level = ctx_load::<i32, 12>(ctx);
            read_loc_str::<28>(ctx, &mut (*ev).path);
            read_loc_str::<32>(ctx, &mut (*ev).comm)
        } else {
            (*ev).level = read_signed(ctx, l[ca::DST_LEVEL]).unwrap_or(0) as i32;
            read_str(ctx, l[ca::DST_PATH], &mut (*ev).path);
            read_str(ctx, l[ca::COMM], &mut (*ev).comm)
        };
        // A task moving itself (`echo $$ > cgroup.procs`): the moved task's comm is the
        // current task's, and the header needs no helper call for it.
        let own = (comm_read && pid as u32 == pid_tgid as u32).then(|| (*ev).comm);
        (*ev).hdr = header_of(kind::CGROUP, pid_tgid, None, own);
    }
    publish(entry);
    Ok(0)
}

/// Attached only with a target filter: a child of a task in the target is in the target.
#[tracepoint]
pub(crate) fn sched_process_fork(ctx: TracePointContext) -> u32 {
    match try_fork(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_fork(ctx: &TracePointContext) -> Result<u32, u32> {
    if !filtering() {
        return Ok(0);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !pid_in_filter(tgid) {
        return Ok(0);
    }
    let l = config(|c| &c.process_fork);
    let child = read_signed(ctx, l[process_fork::CHILD_PID]).ok_or(1u32)? as u32;
    // A new thread's tid goes in too: harmless, and cheaper than telling threads apart here.
    FILTER_PID_SET.insert(child, 1u8, 0).map_err(|_| 1u32)?;
    Ok(0)
}

/// Attached only with a target filter: on v2 a process can be born straight into the target
/// (clone3 with CLONE_INTO_CGROUP, as the injector's workers are) by a parent outside it, which
/// no attach or fork hook sees; once it execs in the target, its tgid joins the pid set, so its
/// `mark_victim` still says "in the target" after it has been reaped and /proc cannot.
#[tracepoint]
pub(crate) fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if config(|c| &c.filter_mode) == FILTER_CGROUP_V2 && current_wanted() {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let _ = FILTER_PID_SET.insert(tgid, 1u8, 0);
    }
    0
}

/// Attached only with a target filter: keeps the sets from filling with dead pids.
#[tracepoint]
pub(crate) fn sched_process_exit(ctx: TracePointContext) -> u32 {
    if !filtering() {
        return 0;
    }
    let l = config(|c| &c.process_exit);
    if let Some(pid) = read_signed(&ctx, l[process_exit::PID]) {
        let _ = FILTER_PID_SET.remove(pid as u32);
        // A worker's pid must not outlive it: the pid is reused for whatever comes next.
        let _ = OWN_WORKERS.remove(pid as u32);
    }
    0
}
