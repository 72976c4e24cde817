//! Loads the embedded eBPF object with its `CONFIG` and attaches the programs: the tracepoints
//! of the catalogue asked for, and the optional fentry/kprobe hooks on `oom_kill_process`.

use std::path::Path;

use aya::{
    programs::{FEntry, KProbe, Program, TracePoint},
    Ebpf, EbpfLoader,
};
use stress_common::Config;

use super::{
    btf,
    catalogue::{EventSet, TracepointSpec, TRACEPOINTS},
    config::layout_mismatches,
    error::TraceError,
    tracefs::{format_path, read_format},
};
use crate::sys::page_size;

/// The eBPF object built by build.rs from `stress-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stress"));

/// Loads the embedded object with `cfg` as its `CONFIG` global. Nothing is attached yet.
///
/// Without the kernel's BTF: the programs read tracepoint fields at offsets from `format` files
/// and need no CO-RE relocation, and parsing `/sys/kernel/btf/vmlinux` would cost most of the
/// start-up time and memory (only the optional fentry hook needs it, and loads it itself).
pub fn load(cfg: &Config) -> Result<Ebpf, TraceError> {
    load_with_ring(cfg, DEFAULT_RING_BYTES)
}

/// The kernel→user ring buffer for library users and `oomlab serve`: a daemon on a busy node
/// favours never dropping over 6 MiB of RSS (its pages are mapped twice into the process).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Checks a ring buffer size: the kernel wants a power of two and a whole number of pages.
pub fn ring_bytes(bytes: u64) -> Result<u32, TraceError> {
    let page = page_size();
    // A power of two no smaller than the (power-of-two) page is a whole number of pages.
    if bytes < page || bytes > 1 << 30 || !bytes.is_power_of_two() {
        return Err(TraceError::RingSize { bytes, page });
    }
    Ok(bytes as u32)
}

/// Loads the object with an `EVENTS` ring buffer of `ring_bytes` (see [`ring_bytes`]).
/// The programs' wake-up check is sized here, from the ring and the kernel's possible CPUs.
pub fn load_with_ring(cfg: &Config, ring_bytes: u32) -> Result<Ebpf, TraceError> {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n as u64);
    let mut cfg = *cfg;
    cfg.wake_check_mask = stress_common::wake_check_mask(u64::from(ring_bytes), cpus);
    cfg.wake_bytes = u64::from(ring_bytes) / 8;
    Ok(EbpfLoader::new()
        .btf(None)
        .map_max_entries("EVENTS", ring_bytes)
        .override_global("CONFIG", &cfg, true)
        .load(EBPF_OBJECT)?)
}

/// The outcome of trying one of the optional hooks.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HookResult {
    pub hook: &'static str,
    pub attached: bool,
    /// The exact error when it did not attach.
    pub error: Option<String>,
}

/// Tries kprobe on `oom_kill_process`: load and attach for real.
pub fn try_kprobe(bpf: &mut Ebpf) -> HookResult {
    let result = (|| -> Result<(), String> {
        let prog: &mut KProbe = bpf
            .program_mut("kprobe_oom_kill_process")
            .ok_or("program missing from the object")?
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        prog.load().map_err(|e| format!("load: {e:?}"))?;
        prog.attach("oom_kill_process", 0)
            .map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    })();
    HookResult {
        hook: "kprobe:oom_kill_process",
        attached: result.is_ok(),
        error: result.err(),
    }
}

/// Tries fentry on `oom_kill_process` (needs BTF and the BPF trampoline). The function's BTF id
/// is found by streaming the kernel's BTF (`trace::btf`), not by parsing all of it.
pub fn try_fentry(bpf: &mut Ebpf) -> HookResult {
    let result = (|| -> Result<(), String> {
        let id = btf::func_id(Path::new(btf::VMLINUX), "oom_kill_process")
            .map_err(|e| format!("BTF: {e}"))?;
        let prog: &mut FEntry = bpf
            .program_mut("fentry_oom_kill_process")
            .ok_or("program missing from the object")?
            .try_into()
            .map_err(|e| format!("{e:?}"))?;
        prog.load_with_btf_id(id)
            .map_err(|e| format!("load: {e:?}"))?;
        prog.attach().map_err(|e| format!("attach: {e:?}"))?;
        Ok(())
    })();
    HookResult {
        hook: "fentry:oom_kill_process",
        attached: result.is_ok(),
        error: result.err(),
    }
}

/// fentry, else kprobe, on `oom_kill_process`: both on one function would double every event.
pub fn try_hooks(bpf: &mut Ebpf) -> Vec<HookResult> {
    let fentry = try_fentry(bpf);
    let fentry_ok = fentry.attached;
    let mut hooks = vec![fentry];
    if !fentry_ok {
        hooks.push(try_kprobe(bpf));
    }
    for h in &hooks {
        match &h.error {
            None => log::info!("{} attached", h.hook),
            Some(e) => log::info!("{} unavailable: {e}", h.hook),
        }
    }
    hooks
}

/// Loads and attaches one tracepoint program.
pub fn attach_tracepoint(bpf: &mut Ebpf, spec: &TracepointSpec) -> Result<(), TraceError> {
    let what = || format!("tracepoint {}:{}", spec.group, spec.event);
    let prog: &mut TracePoint = bpf
        .program_mut(spec.program)
        .ok_or(TraceError::NoProgram(spec.program))?
        .try_into()
        .map_err(|source| TraceError::Attach {
            what: what(),
            source,
        })?;
    prog.load().map_err(|source| TraceError::Attach {
        what: what(),
        source,
    })?;
    prog.attach(spec.group, spec.event)
        .map_err(|source| TraceError::Attach {
            what: what(),
            source,
        })?;
    Ok(())
}

/// Attaches the tracepoints `events` (and a target filter, when `targeted`) need, in catalogue
/// order, and returns them as `group:event`. A tracepoint this kernel lacks is skipped, unless
/// oomlab cannot trace without it; one whose layout differs from the sibling it shares a layout
/// with is left unattached rather than read at wrong offsets.
pub(super) fn attach_tracepoints(
    bpf: &mut Ebpf,
    tracefs: &Path,
    events: EventSet,
    targeted: bool,
) -> Result<Vec<String>, TraceError> {
    let skip = layout_mismatches(tracefs)?;
    let mut attached = Vec::new();
    for spec in TRACEPOINTS.iter().filter(|s| s.wanted(events, targeted)) {
        if skip.contains(&(spec.group, spec.event)) {
            log::warn!(
                "tracepoint {}:{} has a layout that differs from its sibling on this kernel; not attached",
                spec.group,
                spec.event
            );
            continue;
        }
        if read_format(tracefs, spec.group, spec.event)?.is_none() {
            if spec.required {
                return Err(TraceError::MissingTracepoint {
                    group: spec.group.into(),
                    event: spec.event.into(),
                    path: format_path(tracefs, spec.group, spec.event)
                        .display()
                        .to_string(),
                });
            }
            log::info!(
                "tracepoint {}:{} not on this kernel; skipped",
                spec.group,
                spec.event
            );
            continue;
        }
        attach_tracepoint(bpf, spec)?;
        attached.push(format!("{}:{}", spec.group, spec.event));
    }
    Ok(attached)
}

/// Detaches and unloads one program; one that was never loaded is left as it is.
pub(super) fn unload(name: &str, program: &mut Program) {
    let result = match program {
        Program::TracePoint(p) if p.fd().is_ok() => p.unload(),
        Program::KProbe(p) if p.fd().is_ok() => p.unload(),
        Program::FEntry(p) if p.fd().is_ok() => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = result {
        log::debug!("unloading {name}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_in_whole_pages() {
        assert_eq!(ring_bytes(1 << 20).expect("1 MiB"), 1 << 20);
        assert_eq!(ring_bytes(4096).expect("one page"), 4096);
        for bad in [0, 2048, 3 << 20, (1 << 20) + 4096, 2 << 30] {
            let err = ring_bytes(bad).expect_err("refused").to_string();
            assert!(err.contains("power of two"), "{bad}: {err}");
        }
    }
}
