//! oomlab's kernel side: classic tracepoints on `oom`, `vmscan`, `cgroup` and `sched`, plus
//! optional kprobe/fentry hooks on `oom_kill_process`. A program writes at most one typed event
//! (see `stress-common`) into one of two ring buffers: `OOM_EVENTS` (victims, reaper steps, kill
//! hooks) or `EVENTS` (the rest; see `emit`). Field offsets come from `CONFIG`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::needless_pass_by_value,
        reason = "aya's program macros hand each program its context by value"
    )
)]

#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod probes;

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF programs cannot panic; the verifier rejects any path that would reach here.
    unsafe { core::hint::unreachable_unchecked() }
}

/// Built for the host only so that `cargo clippy --workspace` can check the crate.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
