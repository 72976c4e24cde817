//! Guards that undo what a test started or created when they drop, so a failing test leaves
//! no process running and no file behind.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Child,
};

/// A process this test started, killed and reaped on drop.
pub(crate) struct Reap(pub(crate) Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A path removed on drop: a file, or a directory with everything in it.
pub(crate) struct TempPath(PathBuf);

impl TempPath {
    /// A new, empty directory `oomlab-<name>-<pid>` in the temp dir.
    pub(crate) fn dir(name: &str) -> TempPath {
        let dir = std::env::temp_dir().join(super::unique(&format!("oomlab-{name}")));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temp dir");
        TempPath(dir)
    }

    /// `path`, which the test is about to create.
    pub(crate) fn file(path: PathBuf) -> TempPath {
        TempPath(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            fs::remove_dir_all(&self.0)
        } else {
            fs::remove_file(&self.0)
        };
    }
}
