//! A registry and a containerd in one temp dir: what most tests start with.

use std::path::{Path, PathBuf};

use crate::{Containerd, Registry};

/// A temp dir with a registry (`<dir>/registry`) and a containerd (`<dir>/containerd`).
/// Field order is drop order: both processes die before the dir is removed.
pub struct Sandbox {
    pub containerd: Containerd,
    pub registry: Registry,
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    /// Both processes start in parallel; a panic in either kills the other.
    pub fn start() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("prepuller-it-")
            .tempdir()
            .expect("create temp dir");
        let (registry, containerd) = std::thread::scope(|s| {
            let registry = s.spawn(|| Registry::start(&dir.path().join("registry")));
            let containerd = Containerd::start(&dir.path().join("containerd"));
            let registry = registry
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            (registry, containerd)
        });
        Sandbox {
            containerd,
            registry,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// "127.0.0.1:PORT/<repo>:<tag>"
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry.host())
    }

    /// Keep the dir (and its logs) after the test, e.g. to debug a failure; returns its path.
    pub fn keep(self) -> PathBuf {
        let Sandbox {
            containerd,
            registry,
            dir,
        } = self;
        drop(containerd);
        drop(registry);
        dir.keep()
    }
}
