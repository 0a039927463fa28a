//! A ConfigMap volume as the kubelet mounts it.

use std::fs;
use std::path::{Path, PathBuf};

/// A mounted ConfigMap as the kubelet writes it: each key is a link into `..data`, which links to
/// a timestamped directory; an update writes a new directory and renames a new `..data` over the
/// old one, so readers never see a half-written set.
pub struct ConfigMapDir {
    pub dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    /// `keys`: file name and content of each key.
    pub fn create(dir: &Path, keys: &[(&str, &str)]) -> ConfigMapDir {
        fs::create_dir_all(dir).unwrap();
        let mut c = ConfigMapDir {
            dir: dir.to_path_buf(),
            version: 0,
        };
        c.update(keys);
        for (name, _) in keys {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        c
    }

    /// Swaps in new contents for the same keys.
    pub fn update(&mut self, keys: &[(&str, &str)]) {
        self.version += 1;
        let version = format!("..2026_11_23_00_00_{:02}.000000001", self.version);
        let old = fs::read_link(self.dir.join("..data")).ok();
        fs::create_dir(self.dir.join(&version)).unwrap();
        for (name, text) in keys {
            fs::write(self.dir.join(&version).join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if let Some(old) = old {
            fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}
