//! Real container runtimes for the containers/docker/prometheus tests, each started by the test
//! on private sockets and directories under its temp dir (never the system's): containerd with
//! its CRI plugin off, dockerd on its own socket, and a busybox-static rootfs to run from (no
//! image is pulled). Containers are removed, daemons stopped by pid and the cgroups they left
//! removed when the guards drop.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use super::wait_until;

/// Debian's containerd client, and Docker's 20.10 client (`/usr/local/bin/docker` on these
/// machines is a different, newer one).
pub(crate) const CTR: &str = "ctr";
pub(crate) const DOCKER: &str = "/usr/bin/docker";

/// Whether the daemons `cargo xtask setup` installs are here; in the VM matrix they are not.
/// Under `CI=true` on the host a missing one is a failure.
pub(crate) fn have_runtimes(test: &str, programs: &[&str]) -> bool {
    if super::skip_in_vm(test, "the VM guests have no container runtime") {
        return false;
    }
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: {missing:?} missing: `cargo xtask setup` installs them"
    );
    eprintln!("skipped: {test} needs {missing:?} (`cargo xtask setup` installs them)");
    false
}

/// A folder with busybox-static and the applets the tests run, to start containers from.
pub(crate) fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).expect("create the rootfs");
    fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox (busybox-static)");
    for applet in ["sh", "sleep", "dd", "cat", "head", "tail"] {
        symlink("busybox", bin.join(applet)).expect("busybox applet link");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        fs::create_dir_all(root.join(d)).expect("rootfs dir");
    }
    root
}

fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Top-level cgroups under every v1 controller (or the v2 mount) named `name`: a runtime makes
/// its namespace's (`/<ns>`) or `/docker` in each, and leaves them behind.
fn top_cgroups(name: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path().join(name))
        .collect();
    out.push(Path::new("/sys/fs/cgroup").join(name));
    out
}

/// Removes the empty cgroups `name` under every controller, deepest first.
fn remove_cgroups(name: &str) {
    for top in top_cgroups(name) {
        if !top.is_dir() {
            continue;
        }
        let mut dirs = vec![top.clone()];
        let mut i = 0;
        while i < dirs.len() {
            if let Ok(entries) = fs::read_dir(&dirs[i]) {
                dirs.extend(
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Stops a daemon this test started: SIGTERM, then SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    super::signal(child.id() as i32, nix::sys::signal::Signal::SIGTERM);
    if !wait_until(grace, || child.try_wait().ok().flatten().is_some()) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A private containerd: its own root, state, sockets and config, the CRI plugin off (it would
/// bind a streaming port), one containerd namespace unique to the test process.
pub(crate) struct Containerd {
    child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) namespace: String,
    containers: Vec<String>,
}

impl Containerd {
    pub(crate) fn start(dir: &Path) -> Containerd {
        let dir = dir.join("containerd");
        fs::create_dir_all(&dir).expect("containerd dir");
        let socket = dir.join("c.sock");
        let config = dir.join("config.toml");
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n",
                d = dir.display(),
                s = socket.display()
            ),
        )
        .expect("write containerd's config");
        let log = fs::File::create(dir.join("containerd.log")).expect("containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd {
            child,
            dir,
            socket,
            namespace: super::unique("oomlab-test-ctd"),
            containers: Vec::new(),
        };
        let up = wait_until(Duration::from_secs(15), || {
            c.ctr_raw(&["version"]).status.success()
        });
        assert!(
            up,
            "containerd did not answer on {} within 15 s: {}",
            c.socket.display(),
            fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
        );
        c
    }

    fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(CTR);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", &self.namespace])
            .args(args);
        cmd
    }

    pub(crate) fn ctr_raw(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr ARGS…`, which must succeed.
    pub(crate) fn ctr(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run_ok(&mut self.ctr_cmd(args), &format!("ctr {args:?}")).stdout)
            .into_owned()
    }

    /// `ctr ARGS…` as a child (e.g. `events`), its stdout piped.
    pub(crate) fn ctr_spawn(&self, args: &[&str]) -> Child {
        self.ctr_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr")
    }

    /// `ctr run -d` of `rootfs` as `id` with a memory limit and labels, running `cmd`.
    pub(crate) fn run(
        &mut self,
        id: &str,
        rootfs: &Path,
        limit: u64,
        labels: &[(&str, &str)],
        cmd: &[&str],
    ) {
        let limit = limit.to_string();
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--memory-limit".into(), limit];
        for (k, v) in labels {
            args.push("--label".into());
            args.push(format!("{k}={v}"));
        }
        // `--rootfs` is a switch: every flag goes before it, the folder stands for the image.
        args.push("--rootfs".into());
        args.push(rootfs.display().to_string());
        args.push(id.into());
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.containers.push(id.into());
        self.ctr(&args);
    }

    /// The memory cgroup containerd gave `id` (`/<namespace>/<id>`) under the v1 mount.
    pub(crate) fn cgroup(&self, id: &str) -> String {
        format!("/{}/{id}", self.namespace)
    }

    /// SIGSTOPs containerd (a runtime that no longer answers) until the guard drops.
    pub(crate) fn pause(&self) -> Paused {
        let pid = self.child.id() as i32;
        super::signal(pid, nix::sys::signal::Signal::SIGSTOP);
        Paused(pid)
    }

    /// Kills and deletes the task of `id`, keeping the container (a stopped container).
    pub(crate) fn stop_task(&self, id: &str) {
        let _ = self.ctr_raw(&["task", "kill", "--signal", "SIGKILL", id]);
        wait_until(Duration::from_secs(10), || {
            self.ctr_raw(&["task", "delete", id]).status.success()
        });
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            self.stop_task(&id);
            let _ = self.ctr_raw(&["container", "delete", &id]);
        }
        stop(&mut self.child, Duration::from_secs(10));
        remove_cgroups(&self.namespace);
    }
}

/// A daemon held with SIGSTOP; SIGCONT on drop.
pub(crate) struct Paused(i32);

impl Drop for Paused {
    fn drop(&mut self) {
        super::signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// A private dockerd (it starts its own containerd under its exec root), no networking, vfs.
pub(crate) struct Dockerd {
    child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) socket: PathBuf,
    containers: Vec<String>,
    had_docker_cgroup: bool,
}

impl Dockerd {
    pub(crate) fn start(dir: &Path) -> Dockerd {
        // Short paths: the exec root holds unix sockets (108-byte limit).
        let dir = dir.join("d");
        fs::create_dir_all(&dir).expect("docker dir");
        let socket = dir.join("d.sock");
        let had_docker_cgroup = Path::new("/sys/fs/cgroup/memory/docker").exists();
        let log = fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip6tables=false",
                "--storage-driver=vfs",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd {
            child,
            dir,
            socket,
            containers: Vec::new(),
            had_docker_cgroup,
        };
        let up = wait_until(Duration::from_secs(30), || {
            d.docker_raw(&["version"]).status.success()
        });
        assert!(
            up,
            "dockerd did not answer on {} within 30 s: {}",
            d.socket.display(),
            fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
        );
        d
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    pub(crate) fn docker_raw(&self, args: &[&str]) -> Output {
        self.docker_cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub(crate) fn docker(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(
            &run_ok(&mut self.docker_cmd(args), &format!("docker {args:?}")).stdout,
        )
        .trim()
        .to_string()
    }

    pub(crate) fn docker_spawn(&self, args: &[&str]) -> Child {
        self.docker_cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker")
    }

    /// `docker import` of `rootfs` as `tag` (a tar piped in: nothing is pulled).
    pub(crate) fn import(&self, rootfs: &Path, tag: &str) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar the rootfs");
        let out = self
            .docker_cmd(&["import", "-", tag])
            .stdin(tar.stdout.take().expect("tar's stdout"))
            .output()
            .expect("docker import");
        let tarred = tar.wait().expect("wait for tar");
        assert!(tarred.success(), "tar of the rootfs: {tarred}");
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `docker run -d ARGS…`; returns the full id.
    pub(crate) fn run(&mut self, args: &[&str]) -> String {
        let mut all = vec!["run", "-d", "--network", "none"];
        all.extend_from_slice(args);
        let id = self.docker(&all);
        self.containers.push(id.clone());
        id
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.docker_raw(&["rm", "-f", &id]);
        }
        stop(&mut self.child, Duration::from_secs(15));
        if !self.had_docker_cgroup {
            remove_cgroups("docker");
        }
    }
}

/// Lines of a child's stdout (`ctr events`, `docker events`), collected by a thread.
pub(crate) struct LineLog {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl LineLog {
    pub(crate) fn start(mut child: Child) -> LineLog {
        use std::io::BufRead as _;
        let out = child.stdout.take().expect("piped stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().expect("line log").push(line);
            }
        });
        LineLog { child, lines }
    }

    /// The lines containing every one of `needles`, once there are `n` of them or `timeout`
    /// passed.
    pub(crate) fn wait_count(&self, needles: &[&str], n: usize, timeout: Duration) -> Vec<String> {
        let matching = || -> Vec<String> {
            self.lines
                .lock()
                .expect("line log")
                .iter()
                .filter(|l| needles.iter().all(|s| l.contains(s)))
                .cloned()
                .collect()
        };
        wait_until(timeout, || matching().len() >= n);
        // A little longer: more than `n` would be a finding too.
        std::thread::sleep(Duration::from_millis(300));
        matching()
    }
}

impl Drop for LineLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
