//! The guests' root filesystem: busybox and /init, the planned test binaries and oomlab at the
//! absolute paths they were built with, the glibc they load, the test fixtures, and the plan, all
//! packed into one uncompressed cpio.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::plan::PlannedTest;
use crate::workspace_root;

/// The guest's /init, written into every initramfs.
const INIT: &str = include_str!("../../vm/init.sh");

/// Fills `root` afresh and packs it into `cpio`.
pub(super) fn build_initramfs(
    root: &Path,
    cpio: &Path,
    oomlab: &Path,
    plan: &[PlannedTest],
    guest: &GuestExtras,
) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("clearing {}", root.display()))?;
    }
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("vm"))?;
    place_busybox_and_init(root)?;
    place_binaries(root, oomlab, plan, &guest.tools)?;
    // Fixtures the tests find through CARGO_MANIFEST_DIR/../tests/data.
    let data = workspace_root().join("tests/data");
    if data.is_dir() {
        copy_tree(&data, &root.join(data.strip_prefix("/").unwrap_or(&data)))?;
    }
    write_plan(root, oomlab, plan, guest)?;
    pack(root, cpio)
}

fn place_busybox_and_init(root: &Path) -> Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!(
            "/bin/busybox is missing: `apt-get install busybox-static` (cargo xtask setup does it)"
        );
    }
    fs::copy(busybox, root.join("bin/busybox"))?;
    // The kernel runs /init through its #! line before busybox has installed its applets.
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    let init = root.join("init");
    fs::write(&init, INIT)?;
    set_executable(&init)
}

/// What a run puts in its guests beside the plan.
pub(super) struct GuestExtras {
    /// Seconds one test may run before the guest kills it.
    pub(super) test_timeout: u64,
    /// libtest arguments after `--exact NAME` (`--ignored` for a benchmark's guest half).
    pub(super) test_args: String,
    /// Host programs a test needs, at their host paths with their libraries (a peer tool).
    pub(super) tools: Vec<PathBuf>,
}

/// oomlab, each planned test binary and each extra tool once (stripped, but for the tools), and
/// every shared library they load.
fn place_binaries(
    root: &Path,
    oomlab: &Path,
    plan: &[PlannedTest],
    tools: &[PathBuf],
) -> Result<()> {
    for tool in tools {
        place(root, tool, false)?;
    }
    let mut bins: Vec<&Path> = vec![oomlab];
    for planned in plan {
        if !bins.contains(&planned.bin.as_path()) {
            bins.push(&planned.bin);
        }
    }
    let mut libs = Vec::new();
    bins.extend(tools.iter().map(PathBuf::as_path));
    for bin in &bins {
        if !tools.iter().any(|t| t == bin) {
            place(root, bin, true)?;
        }
        for lib in shared_libs(bin)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        place(root, lib, false)?;
    }
    Ok(())
}

/// /vm/plan (group, binary and test per line) and /vm/env, which /init reads.
fn write_plan(root: &Path, oomlab: &Path, plan: &[PlannedTest], guest: &GuestExtras) -> Result<()> {
    let mut plan_text = String::new();
    for PlannedTest { group, bin, test } in plan {
        plan_text.push_str(&format!("{group}\t{}\t{test}\n", bin.display()));
    }
    fs::write(root.join("vm/plan"), plan_text)?;
    fs::write(
        root.join("vm/env"),
        format!(
            "OOMLAB_BIN='{}'\nOOMLAB_TEST_TIMEOUT={}\nOOMLAB_TEST_ARGS='{}'\n",
            oomlab.display(),
            guest.test_timeout,
            guest.test_args
        ),
    )?;
    Ok(())
}

/// Uncompressed: TCG would spend longer inflating it than QEMU spends loading it.
fn pack(root: &Path, cpio: &Path) -> Result<()> {
    let file = fs::File::create(cpio).with_context(|| format!("creating {}", cpio.display()))?;
    let status = Command::new("sh")
        .args(["-c", "find . -print | cpio --quiet -o -H newc -R 0:0"])
        .current_dir(root)
        .stdout(file)
        .status()
        .context("starting cpio")?;
    if !status.success() {
        bail!("packing the initramfs with cpio failed: {status}");
    }
    Ok(())
}

/// Copies `src` to the same absolute path under `root` (tests carry absolute paths baked in at
/// compile time), without debug info: the initramfs lives in the guest's RAM.
fn place(root: &Path, src: &Path, strip: bool) -> Result<()> {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    if let Some(dir) = dst.parent() {
        fs::create_dir_all(dir)?;
    }
    if strip {
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(&dst)
            .status()
            .context("starting objcopy")?;
        if status.success() {
            return Ok(());
        }
        eprintln!(
            "xtask vm-test: objcopy failed on {}; copying it whole",
            src.display()
        );
    }
    fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

/// The shared libraries `ldd` resolves for a binary (absolute paths, including the loader).
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("starting ldd")?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
