//! A directory tree standing in for a cgroup mount in unit tests (no root, no kernel), removed
//! when dropped.

use std::{fs, path::PathBuf};

use super::{Hierarchy, Mode, Version};

/// A fresh directory shaped like a v2 memory mount.
pub(crate) struct TempTree {
    pub root: PathBuf,
}

impl TempTree {
    /// A fresh tree; unique per call, as tests run in parallel.
    pub(crate) fn new(name: &str) -> TempTree {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("oomlab-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("create the temp tree");
        TempTree { root }
    }

    /// Creates `rel` (and its parents) below the root.
    pub(crate) fn mkdir(&self, rel: &str) -> &Self {
        fs::create_dir_all(self.root.join(rel.trim_start_matches('/')))
            .expect("mkdir in temp tree");
        self
    }

    pub(crate) fn hierarchy(&self) -> Hierarchy {
        Hierarchy {
            mode: Mode::V2,
            unified: Some(self.root.clone()),
            memory_version: Version::V2,
            memory_mount: self.root.clone(),
        }
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
