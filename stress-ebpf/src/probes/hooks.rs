//! kprobe and fentry on `oom_kill_process`: the richer hooks, used only where the kernel allows
//! them (this project's host has kprobes compiled out and refuses fentry). `oomlab doctor` loads
//! and attaches them to find out; the tracer adds their events when they attach.

use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use stress_common::{kind, OomKillProcess};

use crate::emit::{header, reserve_oom};

const HOOK_FENTRY: u32 = 1;
const HOOK_KPROBE: u32 = 2;

fn emit(hook: u32) -> Result<u32, u32> {
    let Some(mut entry) = reserve_oom::<OomKillProcess>() else {
        return Err(1);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved ring-buffer memory for one OomKillProcess, fully written before submit.
    unsafe {
        (*ev).hdr = header(kind::OOM_KILL_PROCESS);
        (*ev).hook = hook;
        (*ev)._pad = 0;
    }
    entry.submit(0);
    Ok(0)
}

#[kprobe(function = "oom_kill_process")]
pub(crate) fn kprobe_oom_kill_process(_ctx: ProbeContext) -> u32 {
    match emit(HOOK_KPROBE) {
        Ok(r) | Err(r) => r,
    }
}

#[fentry(function = "oom_kill_process")]
pub(crate) fn fentry_oom_kill_process(_ctx: FEntryContext) -> u32 {
    match emit(HOOK_FENTRY) {
        Ok(r) | Err(r) => r,
    }
}
