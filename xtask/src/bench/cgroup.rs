//! The scratch memory cgroup every benchmark runs in: under `oomlab-test/` on the cgroup v1
//! memory controller (these machines), removed on drop after its processes are killed.
//! xtask cannot use stress-user's library (it must build before the eBPF toolchain exists).

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

const MEMCG: &str = "/sys/fs/cgroup/memory";

pub(super) struct BenchCgroup(pub PathBuf);

impl BenchCgroup {
    /// `oomlab-test/<name>` with a hard limit; `bench` names the caller in the error.
    pub(super) fn create(bench: &str, name: &str, limit: u64) -> Result<BenchCgroup> {
        if !Path::new(MEMCG).join("memory.limit_in_bytes").exists() {
            bail!("bench {bench} needs the cgroup v1 memory controller at {MEMCG}");
        }
        let dir = Path::new(MEMCG).join("oomlab-test").join(name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())?;
        Ok(BenchCgroup(dir))
    }

    /// The path as oomlab takes it (`/oomlab-test/<name>`).
    pub(super) fn rel(&self) -> String {
        format!(
            "/{}",
            self.0
                .strip_prefix(MEMCG)
                .expect("created under the mount")
                .display()
        )
    }

    /// `cgroup.procs`, for a shell that joins the cgroup.
    pub(super) fn procs_file(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }

    pub(super) fn procs(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    pub(super) fn usage(&self) -> u64 {
        fs::read_to_string(self.0.join("memory.usage_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(super) fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.0.join("memory.oom_control"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        for _ in 0..250 {
            for pid in self.procs() {
                // SAFETY: kill(2) on a pid the bench put in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: could not remove {}", self.0.display());
    }
}
