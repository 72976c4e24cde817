//! oomlab's developer commands — what cargo cannot do alone: install the eBPF toolchain, run the
//! root integration tests one at a time, fuzz the parsers, and the demo. `setup` runs first in
//! every command.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, LLVM 22, bpf-linker 0.13.0, Debian tools.
    Setup,
    /// setup, fmt, clippy, unit tests, a short run of every fuzz target, then the root
    /// integration tests one at a time.
    Test {
        /// Skip the root integration tests (unit tests only).
        #[arg(long)]
        unit_only: bool,
    },
    /// setup, build, `oomlab doctor`, then a traced OOM kill in a scratch cgroup.
    Demo,
    /// Benchmarks against peer tools, printed as ratios.
    Bench {
        #[arg(value_enum)]
        which: bench::Bench,
    },
    /// The root integration tests inside QEMU on Debian's 5.10, 6.1 and 6.12 kernels (cgroup v2).
    VmTest(vm::VmTestArgs),
    /// Runs the parser fuzz targets (cargo-fuzz, nightly) for a while each.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> Result<()> {
    // The inject bench's raw ceiling runs as this binary, before clap and setup.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(bench::RAW_POPULATE) {
        return bench::raw_populate(&args.next().unwrap_or_default());
    }
    let cli = Cli::parse();
    setup::run()?;
    match cli.command {
        Cmd::Setup => Ok(()),
        Cmd::Test { unit_only } => test(unit_only),
        Cmd::Demo => demo::run(),
        Cmd::Bench { which } => bench::run(which),
        Cmd::VmTest(args) => vm::run(&args),
        Cmd::Fuzz(args) => fuzz::run_all(&args),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Where cargo puts what it builds: CARGO_TARGET_DIR when set (each engineer's own), else
/// target/.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs a command in the workspace root, echoing it, failing on a non-zero exit.
pub fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("xtask: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn test(unit_only: bool) -> Result<()> {
    // Formatting uses nightly rustfmt when present: rustfmt.toml groups imports the aya way,
    // which only nightly can check. Stable must agree too, read with the stable options only:
    // given the whole file it prints three warnings per crate on every run.
    run("cargo", &["+nightly", "fmt", "--all", "--check"])?;
    let stable_config = stable_rustfmt_config()?;
    run(
        "cargo",
        &[
            "fmt",
            "--all",
            "--check",
            "--",
            "--config-path",
            &stable_config.to_string_lossy(),
        ],
    )?;
    clippy(&["clippy", "--workspace", "--all-targets"])?;
    // The eBPF crate only means something for the BPF target: lint it there too.
    clippy(&[
        "+nightly",
        "clippy",
        "--package",
        "stress-ebpf",
        "-Z",
        "build-std=core",
        "--target",
        "bpfel-unknown-none",
        "--release",
    ])?;
    run(
        "cargo",
        &[
            "test",
            "--workspace",
            "--exclude",
            "stress-ebpf",
            "--lib",
            "--bins",
        ],
    )?;
    // Seconds per target: enough to catch a parser that panics on its seeds' near neighbours;
    // the long runs are `cargo xtask fuzz`.
    fuzz::run_all(&fuzz::FuzzArgs {
        seconds: fuzz::CI_SECONDS,
        dev: true,
        target: None,
    })?;
    if unit_only {
        return Ok(());
    }
    if !nix_is_root() {
        bail!("the root integration tests need root (real cgroups, eBPF, OOM kills); run as root or pass --unit-only");
    }
    // One test binary and one test at a time: they share the kernel's OOM killer and kmsg.
    run(
        "cargo",
        &[
            "test",
            "--package",
            "stress-user",
            "--test",
            "*",
            "--",
            "--test-threads=1",
        ],
    )?;
    // Then the same tests on cgroup v2 kernels with kprobes and fentry, in QEMU.
    vm::run(&vm::VmTestArgs::all_kernels())
}

/// `cargo <args> -- -D warnings`: every warning fails the check.
fn clippy(args: &[&str]) -> Result<()> {
    run("cargo", &[args, &["--", "-D", "warnings"]].concat())
}

/// Options of rustfmt.toml that stable rustfmt refuses (it warns and ignores them).
const NIGHTLY_ONLY_RUSTFMT: [&str; 3] =
    ["group_imports", "imports_granularity", "unstable_features"];

/// rustfmt.toml without its nightly-only options, written under the target dir.
fn stable_rustfmt_config() -> Result<PathBuf> {
    let text = std::fs::read_to_string(workspace_root().join("rustfmt.toml"))
        .context("reading rustfmt.toml")?;
    let stable: String = text
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !NIGHTLY_ONLY_RUSTFMT.contains(&key)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = target_dir().join("xtask");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("rustfmt-stable.toml");
    std::fs::write(&path, stable).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
