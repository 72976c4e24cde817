//! Rebuild the eBPF object when bpf-linker changes: cargo cannot see that dependency otherwise.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
