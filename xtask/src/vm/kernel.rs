//! The guests' kernels: the newest Debian `linux-image-<series>.*-cloud-amd64-unsigned` apt
//! knows, downloaded from Debian's archive once and unpacked into a cache that also serves
//! offline runs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::target_dir;

/// The newest `linux-image-<series>.*-cloud-amd64-unsigned` apt knows, downloaded once and kept
/// in ~/.cache/oomlab-vm/<package>/vmlinuz. Offline, the newest cached one of the series.
pub(super) fn kernel_image(series: &str) -> Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let listed = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            &format!("^linux-image-{}\\.", regex_escape(series)),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if let Some(pkg) = newest_package(series, names.iter().copied()) {
        let image = cache.join(pkg).join("vmlinuz");
        if image.exists() {
            return Ok(image);
        }
        match download_kernel(&cache, pkg) {
            Ok(image) => return Ok(image),
            Err(e) => eprintln!("xtask vm-test: {e:#}; looking for a cached {series} kernel"),
        }
    }
    let cached: Vec<String> = fs::read_dir(&cache)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("vmlinuz").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let pkg = newest_package(series, cached.iter().map(String::as_str)).with_context(|| {
        format!("no Debian {series} cloud kernel: apt-cache lists none (run `apt-get update`) and none is cached in {}", cache.display())
    })?;
    Ok(cache.join(pkg).join("vmlinuz"))
}

fn cache_dir() -> PathBuf {
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(target_dir)
        .join("oomlab-vm")
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

/// Picks the highest version among `linux-image-<series>.…-cloud-amd64-unsigned` names.
fn newest_package<'a>(series: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let prefix = format!("linux-image-{series}.");
    names
        .filter(|n| n.starts_with(&prefix) && n.ends_with("-cloud-amd64-unsigned"))
        .max_by_key(|n| {
            n["linux-image-".len()..]
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| d.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
}

fn download_kernel(cache: &Path, pkg: &str) -> Result<PathBuf> {
    let work = cache.join(format!("{pkg}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    eprintln!(
        "xtask vm-test: downloading {pkg} (once; cached in {})",
        cache.display()
    );
    let status = Command::new("apt-get")
        .args(["download", "-q", pkg])
        .current_dir(&work)
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        bail!("`apt-get download {pkg}` failed: {status}");
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let x = work.join("x");
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&x)
        .status()?;
    if !status.success() {
        bail!("`dpkg-deb -x {}` failed: {status}", deb.display());
    }
    let dir = cache.join(pkg);
    fs::create_dir_all(&dir)?;
    for entry in fs::read_dir(x.join("boot"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The config says what is built in (no modules are loaded in the guest).
        if name.starts_with("config-") {
            fs::copy(entry.path(), dir.join("config"))?;
        }
    }
    let image = fs::read_dir(x.join("boot"))?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .context("the package has no boot/vmlinuz-*")?;
    // Copied last: its presence marks a complete cache entry.
    fs::copy(image.path(), dir.join("vmlinuz"))?;
    fs::remove_dir_all(&work)?;
    Ok(dir.join("vmlinuz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_cloud_package_of_a_series() {
        let names = [
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64-dbg",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.99+deb12-cloud-amd64-unsigned",
            "linux-image-6.12-cloud-amd64",
        ];
        assert_eq!(
            newest_package("6.1", names.iter().copied()),
            Some("linux-image-6.1.0-56-cloud-amd64-unsigned")
        );
        assert_eq!(
            newest_package("6.12", names.iter().copied()),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(newest_package("6.6", names.iter().copied()), None);
    }
}
