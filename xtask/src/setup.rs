//! `cargo xtask setup`: installs what a fresh machine lacks, idempotently, and says what it did.
//! The recipe is the one verified in shared ENVIRONMENT.md; with everything present it only
//! asks three quick questions (rustup, dpkg-query, bpf-linker --version).

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

/// Debian packages: LLVM 22 to build bpf-linker, and the tools later commands use
/// (stress-ng and bpftrace as benchmark peers, QEMU + busybox + cpio for the kernel matrix).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "stress-ng",
    "bpftrace",
    "bpftool",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // `systemd-analyze verify` checks packaging/oomlab.service (tests/serve_packaging.rs).
    "systemd",
    // Real container runtimes and a real Prometheus as the tests' oracles (#13, #14): each test
    // starts its own daemon on private sockets and directories; none is used as a service.
    "containerd",
    "runc",
    "docker.io",
    "prometheus",
    // tests/serve_tls.rs: certificates made with the openssl CLI, TLS client checks with curl.
    "openssl",
    "curl",
    // containerd-client's build script generates its gRPC code with protoc.
    "protobuf-compiler",
];

/// PyPI tools the tests run, as (console script, pip package): the script is looked up on PATH,
/// so the all-present path spawns nothing.
const PIP_PACKAGES: &[(&str, &str)] = &[
    // Validates deploy/kubernetes/ against the API schemas (tests/serve_packaging.rs).
    ("kubernetes-validate", "kubernetes-validate"),
];

fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

/// Where `program` is on PATH, if anywhere.
pub(crate) fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(program: &str, args: &[&str], envs: &[(&str, String)]) -> Result<()> {
    eprintln!("xtask setup: $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("starting {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed: {status}", args.join(" "));
    }
    Ok(())
}

fn missing_apt_packages() -> Vec<&'static str> {
    let mut args = vec!["-W", "-f=${Package} ${db:Status-Status}\n"];
    args.extend(APT_PACKAGES);
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the known ones.
    let listed = Command::new("dpkg-query")
        .args(&args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !listed.lines().any(|l| l == format!("{p} installed")))
        .collect()
}

pub(crate) fn run() -> Result<()> {
    let start = Instant::now();
    let mut did = Vec::new();

    // 1. nightly with rust-src (aya-build compiles core for bpfel-unknown-none with it).
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    match installed {
        None => {
            let mut args = vec!["toolchain", "install", "nightly", "--profile", "minimal"];
            for c in NIGHTLY_COMPONENTS {
                args.extend(["--component", c]);
            }
            sh("rustup", &args, &[])?;
            did.push("installed the nightly toolchain with rust-src".to_string());
        }
        Some(list) => {
            for c in NIGHTLY_COMPONENTS {
                if !list.lines().any(|l| l.starts_with(c)) {
                    sh(
                        "rustup",
                        &["component", "add", c, "--toolchain", "nightly"],
                        &[],
                    )?;
                    did.push(format!("added nightly component {c}"));
                }
            }
        }
    }

    // 2. Debian packages.
    let missing = missing_apt_packages();
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "missing Debian packages {}: run `cargo xtask setup` as root or `apt-get install {}`",
                missing.join(", "),
                missing.join(" ")
            );
        }
        // llvm-22 is only in the index after an update on these images.
        sh("apt-get", &["update", "-q"], &[])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        sh("apt-get", &args, &[])?;
        did.push(format!("installed {}", missing.join(", ")));
    }

    // 3. Python tools from PyPI, for the python3 the tests run.
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .filter(|(script, _)| !on_path(script))
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        let mut args = vec!["-m", "pip", "install", "--quiet"];
        args.extend(&missing);
        sh("python3", &args, &[])?;
        did.push(format!("installed {} (pip)", missing.join(", ")));
    }

    // 4. bpf-linker built against LLVM 22.
    let linker = output("bpf-linker", &["--version"]).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        sh(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ],
            &[("LLVM_PREFIX", "/usr/lib/llvm-22".into()), ("PATH", path)],
        )?;
        did.push(format!(
            "installed bpf-linker {BPF_LINKER_VERSION} (llvm-22)"
        ));
    }

    // 5. cargo-fuzz (builds with stable; `cargo xtask fuzz` runs it on nightly).
    if !on_path("cargo-fuzz") {
        sh("cargo", &["install", "cargo-fuzz", "--locked"], &[])?;
        did.push("installed cargo-fuzz".to_string());
    }

    if did.is_empty() {
        eprintln!(
            "xtask setup: everything present ({} ms)",
            start.elapsed().as_millis()
        );
    } else {
        eprintln!(
            "xtask setup: {} ({:.0} s)",
            did.join("; "),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
