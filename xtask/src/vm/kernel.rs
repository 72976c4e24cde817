//! The guests' kernels: the newest Debian `linux-image-<series>.*-cloud-amd64-unsigned` apt
//! knows, downloaded from Debian's archive once and unpacked into a cache that also serves
//! offline runs. A series the system's own sources lack (5.10 is Debian 11's) is looked up in its
//! suite through a private apt configuration kept in that cache.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};

use crate::target_dir;

/// One kernel series of the matrix.
#[derive(Clone, Copy, Debug)]
pub(super) struct Series {
    /// `5.10`, `6.1`: the `--kernel` value and the name of its target/vm/ folder.
    pub(super) name: &'static str,
    /// Its row in the kernel matrix.
    pub(super) label: &'static str,
    /// The Debian suite to fetch it from when the system's apt sources do not carry it.
    suite: Option<&'static str>,
}

/// Every series `cargo xtask vm-test` boots, oldest first (the matrix's row order).
pub(super) const SERIES: [Series; 3] = [
    Series {
        name: "5.10",
        label: "Debian 5.10 (VM)",
        suite: Some("bullseye"),
    },
    Series {
        name: "6.1",
        label: "Debian 6.1 (VM)",
        suite: None,
    },
    Series {
        name: "6.12",
        label: "Debian 6.12 (VM)",
        suite: None,
    },
];

/// The keyring Debian's own sources are signed with (package debian-archive-keyring).
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// apt writes into the cache, which is root's: its sandbox user could not (and warns on every
/// download that it fell back to root).
const UNSANDBOXED: [&str; 2] = ["-o", "APT::Sandbox::User=root"];
/// A private suite's package lists are fetched again after this long.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The newest `linux-image-<series>.*-cloud-amd64-unsigned` apt knows, downloaded once and kept
/// in ~/.cache/oomlab-vm/<package>/vmlinuz. Offline, the newest cached one of the series.
pub(super) fn kernel_image(series: &Series) -> Result<PathBuf> {
    let name = series.name;
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let apt = match series.suite {
        Some(suite) => private_suite(&cache, suite)?,
        None => Vec::new(),
    };
    let listed = Command::new("apt-cache")
        .args(&apt)
        .args([
            "search",
            "--names-only",
            &format!("^linux-image-{}\\.", regex_escape(name)),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if let Some(pkg) = newest_package(name, names.iter().copied()) {
        let image = cache.join(pkg).join("vmlinuz");
        if image.exists() {
            return Ok(image);
        }
        match download_kernel(&cache, &apt, pkg) {
            Ok(image) => return Ok(image),
            Err(e) => eprintln!("xtask vm-test: {e:#}; looking for a cached {name} kernel"),
        }
    }
    let cached: Vec<String> = fs::read_dir(&cache)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("vmlinuz").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let pkg = newest_package(name, cached.iter().map(String::as_str)).with_context(|| {
        format!("no Debian {name} cloud kernel: apt-cache lists none (run `apt-get update`) and none is cached in {}", cache.display())
    })?;
    Ok(cache.join(pkg).join("vmlinuz"))
}

/// apt options that read only `suite` of the system's Debian archive, with its sources list,
/// package lists and download cache under `cache`/apt-<suite>/ — the system's own apt sources
/// and state are left alone. The lists are refreshed when older than a day; offline, the old
/// ones (or none) serve.
fn private_suite(cache: &Path, suite: &str) -> Result<Vec<String>> {
    let dir = cache.join(format!("apt-{suite}"));
    let lists = dir.join("lists");
    let archives = dir.join("cache");
    for d in [lists.join("partial"), archives.join("archives/partial")] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let sources = dir.join("sources.list");
    let uri = archive_uri(
        &fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default(),
        &fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
    );
    fs::write(
        &sources,
        format!("deb [signed-by={ARCHIVE_KEYRING}] {uri} {suite} main\n"),
    )
    .with_context(|| format!("writing {}", sources.display()))?;
    let options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/dev/null".into(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", archives.display()),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect::<Vec<_>>();
    let stamp = dir.join("updated");
    let fresh = fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < LISTS_MAX_AGE);
    if !fresh {
        let status = Command::new("apt-get")
            .args(&options)
            .args(UNSANDBOXED)
            .args(["-qq", "update"])
            .status()
            .context("starting apt-get")?;
        if status.success() {
            fs::write(&stamp, "")?;
        } else {
            eprintln!("xtask vm-test: `apt-get update` of {suite} failed ({status}); using the lists and kernels already cached");
        }
    }
    Ok(options)
}

/// The Debian archive the system's own sources name (deb822 `URIs:` first, then a one-line
/// `deb` entry), not its security archive; Debian's main mirror when neither says.
fn archive_uri(deb822: &str, one_line: &str) -> String {
    let from_deb822 = deb822
        .lines()
        .filter_map(|l| l.trim().strip_prefix("URIs:"))
        .flat_map(str::split_whitespace);
    let from_one_line = one_line
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb "))
        .filter_map(|l| l.split_whitespace().find(|w| w.contains("://")));
    from_deb822
        .chain(from_one_line)
        .find(|u| !u.contains("security"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_string()
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

fn download_kernel(cache: &Path, apt: &[String], pkg: &str) -> Result<PathBuf> {
    let work = cache.join(format!("{pkg}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    eprintln!(
        "xtask vm-test: downloading {pkg} (once; cached in {})",
        cache.display()
    );
    let status = Command::new("apt-get")
        .args(apt)
        .args(UNSANDBOXED)
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
        let bullseye = [
            "linux-image-5.10.0-30-cloud-amd64-unsigned",
            "linux-image-5.10.0-32-cloud-amd64-unsigned",
            "linux-image-5.10.0-32-cloud-amd64",
        ];
        assert_eq!(
            newest_package("5.10", bullseye.iter().copied()),
            Some("linux-image-5.10.0-32-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn finds_the_system_archive() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(archive_uri(deb822, ""), "http://deb.debian.org/debian");
        let one_line = "deb http://security.debian.org/debian-security bookworm-security main\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(archive_uri("", one_line), "http://mirror.example/debian");
        assert_eq!(archive_uri("", ""), "http://deb.debian.org/debian");
    }
}
