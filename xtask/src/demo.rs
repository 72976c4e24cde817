//! `cargo xtask demo`: doctor, then one OOM kill in a scratch cgroup, traced by oomlab.
//! Until the experiment runner lands, the scratch cgroup is made here with plain cgroupfs writes.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{run as sh, workspace_root};

/// (cgroup dir, limit file) of the demo cgroup on this node's memory controller.
fn demo_cgroup() -> Result<(PathBuf, &'static str)> {
    let v1 = PathBuf::from("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Ok((v1.join("oomlab/demo"), "memory.limit_in_bytes"));
    }
    let v2 = PathBuf::from("/sys/fs/cgroup");
    let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "memory") {
        fs::create_dir_all(v2.join("oomlab"))?;
        fs::write(v2.join("cgroup.subtree_control"), "+memory")?;
        fs::write(v2.join("oomlab/cgroup.subtree_control"), "+memory")?;
        return Ok((v2.join("oomlab/demo"), "memory.max"));
    }
    bail!("no memory cgroup controller found (run `oomlab doctor`)")
}

pub fn run() -> Result<()> {
    sh("cargo", &["build", "--release", "--package", "stress-user"])?;
    let oomlab = workspace_root().join("target/release/oomlab");
    let oomlab = oomlab.to_str().context("non-UTF-8 path")?;

    println!("\n=== oomlab doctor ===");
    let _ = Command::new(oomlab).arg("doctor").status()?;

    println!(
        "\n=== a traced OOM kill: `oomlab app` holding 64 MiB in a cgroup limited to 32 MiB ==="
    );
    let mut trace = Command::new(oomlab)
        .args(["trace", "--duration", "20s"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting oomlab trace")?;
    let mut lines = BufReader::new(trace.stdout.take().context("trace stdout")?).lines();
    match lines.next() {
        Some(Ok(l)) => println!("{l}"),
        _ => bail!("oomlab trace did not become ready"),
    }

    let (dir, limit_file) = demo_cgroup()?;
    let _ = fs::remove_dir(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join(limit_file), (32u64 << 20).to_string())?;
    let rel = dir
        .strip_prefix(
            dir.parent()
                .and_then(|p| p.parent())
                .context("cgroup path")?,
        )?
        .to_string_lossy()
        .into_owned();
    let status = Command::new(oomlab)
        .args([
            "app",
            "--size",
            "64MiB",
            "--oom-score-adj",
            "500",
            "--cgroup",
            &rel,
        ])
        .status()?;
    println!("oomlab app ended: {status}");
    thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on the child we started.
    unsafe { libc::kill(trace.id() as i32, libc::SIGTERM) };
    for l in lines.map_while(Result::ok) {
        println!("{l}");
    }
    let _ = trace.wait();
    fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}
