//! The disk guard: a pull that would take the image filesystem above the pull limit (the
//! kubelet's `imageGCHighThresholdPercent` minus a margin) is not started, and an image the
//! kubelet's image GC keeps removing is not pulled again until the filesystem has room. Pre-pulled
//! images are unused until a pod starts, so they are the first the GC removes; pulling them
//! again at once makes the node thrash.
//!
//! Decided at each resync, for the images it would queue (required ones first): the guard has
//! no timer of its own, and looks at the disk (CRI `ImageFsInfo`, then `statvfs` on the
//! reported mountpoint) only when there is something to pull or an image is held back.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::DiskGuardSettings;
use crate::runtime::{FsSpace, ImageFs, ImageInfo, Runtime};
use crate::status::{DiskStatus, HeldBack, HoldReason, now_rfc3339};

/// An image gone again within this long of its pull was removed by the GC, not by a person
/// cleaning up.
pub(super) const THRASH_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Quick disappearances that make an image thrash.
pub(super) const THRASH_LOSSES: u32 = 2;
/// The runtime lists an image's content size (compressed layers); unpacked, its layers take at
/// least as much again (exactly as much for uncompressed layers, two to four times for gzip).
pub(super) const ON_DISK_PER_LISTED_BYTE: u64 = 2;

/// What the guard remembers of an image it pulled.
#[derive(Debug, Default)]
struct Watch {
    /// When this agent last pulled it, until a resync sees it gone.
    pulled_at: Option<Instant>,
    /// Times it was gone within [`THRASH_WINDOW`] of its pull.
    quick_losses: u32,
    /// Held back until usage is below the low threshold.
    thrashing: bool,
}

/// One image a resync would pull.
pub(super) struct Candidate<'a> {
    /// Normalized reference.
    pub key: &'a str,
    /// Its repository (`registry/path`), to size it from an earlier tag.
    pub repository: String,
}

/// The image filesystem as measured now.
#[derive(Debug, Clone, Default)]
pub(super) struct Fs {
    pub image_fs: Option<ImageFs>,
    pub space: Option<FsSpace>,
    /// Why `space` is unknown.
    pub blind: Option<String>,
}

impl Fs {
    fn used(&self) -> Option<(u64, u64)> {
        let s = self.space?;
        Some((
            s.capacity_bytes.saturating_sub(s.available_bytes),
            s.capacity_bytes,
        ))
    }

    /// Used share, as the kubelet's image GC computes it (capacity minus available).
    pub fn usage_percent(&self) -> Option<f64> {
        self.used().map(|(used, cap)| percent(used, cap))
    }
}

fn percent(used: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        return 100.0;
    }
    used as f64 * 100.0 / capacity as f64
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The path this process sees for a host path the runtime reported.
pub(super) fn host_path(host_root: Option<&Path>, mountpoint: &str) -> PathBuf {
    match host_root {
        Some(root) => root.join(mountpoint.trim_start_matches('/')),
        None => PathBuf::from(mountpoint),
    }
}

/// `registry/path` of a name the runtime lists (`name:tag` or `name@digest`).
fn repository_of(name: &str) -> &str {
    if let Some((repo, _)) = name.split_once('@') {
        return repo;
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

#[derive(Debug, Default)]
pub(super) struct DiskGuard {
    /// Listed size of each declared image, by normalized reference, from when it was last seen.
    sizes: HashMap<String, u64>,
    /// Listed size of the last image seen of each declared repository (another tag, say).
    repo_sizes: HashMap<String, u64>,
    /// Repositories of the declared images: only their sizes are kept.
    repositories: HashSet<String>,
    watches: HashMap<String, Watch>,
    /// Estimated bytes of pulls admitted and not ended, by image.
    admitted: HashMap<String, u64>,
    /// Images held back at the last check, and why: while any is, each resync checks again;
    /// a hold is logged when it starts or its reason changes, not at every resync.
    held: HashMap<String, HoldReason>,
    /// Why the capacity was unknown at the last check (said once per change).
    blind: Option<String>,
    /// Where the host's `/` is mounted in the agent's container (`--host-root`).
    host_root: Option<PathBuf>,
}

impl DiskGuard {
    pub(super) fn set_host_root(&mut self, host_root: Option<PathBuf>) {
        self.host_root = host_root;
    }

    /// A new config: forget what is no longer declared.
    pub(super) fn follow<'a>(&mut self, keys: impl Iterator<Item = (&'a str, String)>) {
        let mut declared = HashSet::new();
        self.repositories.clear();
        for (key, repository) in keys {
            declared.insert(key.to_string());
            self.repositories.insert(repository);
        }
        self.sizes.retain(|k, _| declared.contains(k));
        self.watches.retain(|k, _| declared.contains(k));
        self.admitted.retain(|k, _| declared.contains(k));
        let repositories = &self.repositories;
        self.repo_sizes.retain(|r, _| repositories.contains(r));
    }

    /// Learns the listed sizes of the runtime's images of declared repositories.
    pub(super) fn learn(&mut self, images: &[ImageInfo]) {
        for info in images {
            for name in info.repo_tags.iter().chain(&info.repo_digests) {
                let repo = repository_of(name);
                // Updated in place: a pass sees every image, and a new key would allocate.
                if let Some(size) = self.repo_sizes.get_mut(repo) {
                    *size = info.size_bytes;
                } else if let Some(r) = self.repositories.get(repo) {
                    self.repo_sizes.insert(r.clone(), info.size_bytes);
                }
            }
        }
    }

    /// A resync found a declared image present (with its listed size) or absent. An image this
    /// agent pulled that is gone again within [`THRASH_WINDOW`] counts as removed by the GC.
    pub(super) fn seen(&mut self, key: &str, present: Option<&ImageInfo>, now: Instant) {
        if let Some(info) = present {
            if self.sizes.get(key) != Some(&info.size_bytes) {
                self.sizes.insert(key.to_string(), info.size_bytes);
            }
            return;
        }
        let Some(w) = self.watches.get_mut(key) else {
            return;
        };
        let Some(at) = w.pulled_at.take() else {
            return;
        };
        let after = now.duration_since(at);
        if after > THRASH_WINDOW {
            return;
        }
        w.quick_losses += 1;
        tracing::warn!(
            image = %key,
            "removed {} after this agent pulled it (the kubelet's image GC?): {} of {THRASH_LOSSES}",
            humantime::format_duration(Duration::from_secs(after.as_secs())),
            w.quick_losses
        );
        if w.quick_losses >= THRASH_LOSSES && !w.thrashing {
            w.thrashing = true;
        }
    }

    /// This agent pulled `key` (listed at `size`).
    pub(super) fn pulled(&mut self, key: &str, size: Option<u64>, now: Instant) {
        self.admitted.remove(key);
        if let Some(size) = size {
            self.sizes.insert(key.to_string(), size);
        }
        self.watches.entry(key.to_string()).or_default().pulled_at = Some(now);
    }

    /// A pull of `key` ended without a new image.
    pub(super) fn ended(&mut self, key: &str) {
        self.admitted.remove(key);
    }

    /// Whether a resync must look at the disk even with nothing new to pull.
    pub(super) fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// What a pull of this image is expected to take on disk: its own listed size when known,
    /// else that of the last image seen of its repository.
    fn estimate(&self, c: &Candidate<'_>) -> Option<u64> {
        self.sizes
            .get(c.key)
            .or_else(|| self.repo_sizes.get(&c.repository))
            .map(|s| s * ON_DISK_PER_LISTED_BYTE)
    }

    /// Measures the image filesystem. With no visible mountpoint only the thrash guard works:
    /// said once (and shown in `/status`).
    pub(super) async fn measure<R: Runtime>(&mut self, runtime: &R) -> Fs {
        let (image_fs, mut blind) = match runtime.image_fs_info().await {
            Ok(Some(f)) => (Some(f), None),
            Ok(None) => (
                None,
                Some("the runtime reports no image filesystem".to_string()),
            ),
            Err(e) => (None, Some(format!("the runtime's ImageFsInfo failed: {e}"))),
        };
        let mut space = None;
        if let Some(f) = &image_fs {
            if f.mountpoint.is_empty() {
                blind = Some("the runtime reports no mountpoint for its images".into());
            } else {
                let path = host_path(self.host_root.as_deref(), &f.mountpoint);
                match runtime.filesystem_space(&path) {
                    Ok(sp) if sp.capacity_bytes > 0 => space = Some(sp),
                    Ok(_) => blind = Some(format!("{} reports a size of 0", path.display())),
                    Err(e) => {
                        blind = Some(format!(
                            "cannot read the size of the image filesystem at {} (the runtime's {}): {e}; \
                             mount the host's {} read-only under the agent's --host-root (PREPULLER_HOST_ROOT)",
                            path.display(),
                            f.mountpoint,
                            f.mountpoint
                        ))
                    }
                }
            }
        }
        if blind != self.blind {
            match &blind {
                Some(why) => tracing::warn!(
                    "disk guard: {why}; only the GC-thrash guard works (no capacity check)"
                ),
                None => tracing::info!("disk guard: the image filesystem's size is visible"),
            }
            self.blind = blind.clone();
        }
        Fs {
            image_fs,
            space,
            blind,
        }
    }

    /// Decides, in the order given (required images first), which candidates may start: the
    /// answer is parallel to `candidates`, `Some` for those held back.
    pub(super) fn decide(
        &mut self,
        s: &DiskGuardSettings,
        fs: &Fs,
        candidates: &[Candidate<'_>],
    ) -> Vec<Option<HeldBack>> {
        let usage = fs.usage_percent();
        // Below the low threshold, thrashing images get another chance.
        if usage.is_some_and(|u| u < f64::from(s.low_threshold_percent)) {
            for (key, w) in &mut self.watches {
                if w.thrashing {
                    tracing::info!(
                        image = %key,
                        "disk guard: the image filesystem is below {}%: pulling it again",
                        s.low_threshold_percent
                    );
                }
                w.thrashing = false;
                w.quick_losses = 0;
            }
        }
        let limit = s.pull_limit_percent();
        // Pulls admitted earlier and not ended yet take their room too.
        let mut projected = fs
            .used()
            .map(|(used, cap)| (used + self.admitted.values().sum::<u64>(), cap));
        let mut held = HashMap::new();
        let answer = candidates
            .iter()
            .map(|c| {
                let hold = self.hold(s, c, usage, projected, limit);
                match &hold {
                    Some(h) => {
                        if self.held.get(c.key) != Some(&h.reason) {
                            tracing::info!(image = %c.key, "held back: {}", h.message);
                        }
                        held.insert(c.key.to_string(), h.reason);
                    }
                    None => {
                        let estimate = self.estimate(c).unwrap_or(0);
                        if let Some((used, _)) = &mut projected {
                            *used += estimate;
                        }
                        self.admitted.insert(c.key.to_string(), estimate);
                    }
                }
                hold
            })
            .collect();
        self.held = held;
        answer
    }

    fn hold(
        &self,
        s: &DiskGuardSettings,
        c: &Candidate<'_>,
        usage: Option<f64>,
        projected: Option<(u64, u64)>,
        limit: u8,
    ) -> Option<HeldBack> {
        if let Some(w) = self.watches.get(c.key).filter(|w| w.thrashing) {
            let mut message = format!(
                "GC thrash: gone {} times within {} of its pull; pulled again when the image filesystem is below the low threshold {}%",
                w.quick_losses,
                humantime::format_duration(THRASH_WINDOW),
                s.low_threshold_percent
            );
            match usage {
                Some(u) => {
                    let _ = write!(message, " (now {u:.1}%)");
                }
                None => message.push_str(
                    " (its usage is unknown: held back until the agent restarts; see /status disk.capacityUnknown)",
                ),
            }
            return Some(HeldBack {
                reason: HoldReason::GcThrash,
                message,
            });
        }
        let (used, capacity) = projected?;
        let before = percent(used, capacity);
        let estimate = self.estimate(c);
        let after = percent(used + estimate.unwrap_or(0), capacity);
        if after <= f64::from(limit) {
            return None;
        }
        let size = match estimate {
            Some(e) => format!("about {} on disk", mb(e)),
            None => "size unknown".into(),
        };
        let mut now = format!("{:.1}% now", usage.unwrap_or(before));
        if usage.is_some_and(|u| (before - u).abs() >= 0.05) {
            let _ = write!(now, ", {before:.1}% with the pulls under way");
        }
        Some(HeldBack {
            reason: HoldReason::DiskThreshold,
            message: format!(
                "disk threshold: pulling it ({size}) would take the image filesystem to {after:.1}% ({now}), above the pull limit {limit}% (the kubelet's image GC starts at {}%)",
                s.high_threshold_percent
            ),
        })
    }

    /// The node-level summary for `/status`.
    pub(super) fn summary(
        &self,
        s: &DiskGuardSettings,
        fs: &Fs,
        held_back: Vec<String>,
    ) -> DiskStatus {
        DiskStatus {
            mountpoint: fs.image_fs.as_ref().map(|f| f.mountpoint.clone()),
            image_bytes: fs.image_fs.as_ref().map(|f| f.used_bytes),
            capacity_bytes: fs.space.map(|sp| sp.capacity_bytes),
            usage_percent: fs.usage_percent().map(|u| (u * 10.0).round() / 10.0),
            pull_limit_percent: s.pull_limit_percent(),
            low_threshold_percent: s.low_threshold_percent,
            held_back,
            capacity_unknown: fs.blind.clone(),
            checked_at: Some(now_rfc3339()),
        }
    }
}

#[cfg(test)]
mod tests;
