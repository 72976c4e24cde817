//! The apps a run starts in its target: started through `inject::spawn` (in the cgroup before
//! exec, dying with oomlab, at their `oom_score_adj`), waited for until they hold their memory,
//! watched for their exit, and killed when the run ends.

use std::{
    ffi::OsString,
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use super::{
    runner::RunError,
    spec::{App, AppKind},
};
use crate::{
    cgroup::MemCgroup,
    inject::spawn::{spawn, Child, Io, SpawnOptions},
};

const APP_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A process started by the run.
pub(super) struct AppProc {
    pub(super) app: App,
    child: Child,
    pub(super) pid: i32,
    /// Set once it has exited: (seconds, how).
    pub(super) exited: Option<(f64, String)>,
}

fn status_text(s: std::process::ExitStatus) -> String {
    match (s.signal(), s.code()) {
        (Some(sig), _) => nix::sys::signal::Signal::try_from(sig).map_or_else(
            |_| format!("signal {sig}"),
            |x| format!("killed by {}", x.as_str()),
        ),
        (None, Some(c)) => format!("exited with {c}"),
        _ => "ended".into(),
    }
}

/// Each app's name and whether it is still running.
pub(super) fn alive(apps: &[AppProc]) -> Vec<(String, bool)> {
    apps.iter()
        .map(|a| (a.app.name.clone(), a.exited.is_none()))
        .collect()
}

impl AppProc {
    /// Starts an app inside `cg`: it joins the cgroup before exec (every page it maps is
    /// charged there), dies with oomlab, and gets its oom_score_adj before it runs. The
    /// built-in app's stdout comes back, to hear it say it is ready.
    pub(super) fn spawn(
        app: &App,
        cg: &MemCgroup,
        exe: &Path,
    ) -> Result<(AppProc, Option<BufReader<File>>), RunError> {
        let (program, args, stdout) = match &app.kind {
            AppKind::Builtin { size } => (
                exe.to_path_buf(),
                vec!["app".into(), "--size".into(), size.to_string().into()],
                Io::Pipe,
            ),
            AppKind::Command(argv) => (
                PathBuf::from(&argv[0]),
                argv[1..].iter().map(OsString::from).collect(),
                Io::Null,
            ),
        };
        let mut child = spawn(&SpawnOptions {
            program,
            args,
            cgroup_dir: cg.dir(),
            clone_into_cgroup: false,
            oom_score_adj: app.oom_score_adj,
            own_process_group: false,
            stdin: Io::Null,
            stdout,
        })
        .map_err(|e| RunError::Failed(format!("starting app {}: {e}", app.name)))?;
        let out = child.stdout.take().map(BufReader::new);
        let pid = child.pid();
        let proc = AppProc {
            app: app.clone(),
            child,
            pid,
            exited: None,
        };
        Ok((proc, out))
    }

    /// Waits until the app holds its memory (the built-in app says so on `out`; a command gets
    /// 300 ms) and checks it is still running. A stop request ends the wait at once, without
    /// an error: the run is ending anyway.
    pub(super) fn wait_ready(&mut self, out: Option<BufReader<File>>) -> Result<(), RunError> {
        if let Some(out) = out {
            let ready = said_ready(out);
            if crate::stop::requested() {
                return Ok(());
            }
            if !ready {
                let how = self
                    .poll_exit()
                    .unwrap_or_else(|| "did not report ready".into());
                return Err(RunError::Failed(format!(
                    "app {} (pid {}) {how} within {} s",
                    self.app.name,
                    self.pid,
                    APP_READY_TIMEOUT.as_secs()
                )));
            }
        } else if !crate::stop::sleep(Duration::from_millis(300)) {
            return Ok(());
        }
        match self.poll_exit() {
            Some(how) => Err(RunError::Failed(format!(
                "app {} (pid {}) {how} right after it started",
                self.app.name, self.pid
            ))),
            None => Ok(()),
        }
    }

    /// How it ended, if it has (not yet noted in `exited`).
    pub(super) fn poll_exit(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(status_text(st)),
            _ => None,
        }
    }

    /// Kills it if it still runs (what it started is killed with the rest of the tree by
    /// `process::kill_descendants` once every app is reaped).
    pub(super) fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The built-in app's first line (`app …`) within [`APP_READY_TIMEOUT`], or false as soon as a
/// stop is asked.
fn said_ready(mut out: BufReader<File>) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
        // Keep the pipe open for the app's life, so a later write cannot SIGPIPE it.
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    let until = std::time::Instant::now() + APP_READY_TIMEOUT;
    while std::time::Instant::now() < until && !crate::stop::requested() {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(l) => return l.starts_with("app "),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
    false
}
