//! File watching: the config and the credential files wake the run loop when they change.
//!
//! Both go through one [`Watch`]: a notify watcher, the interests it acts on, and the channel
//! its wake-ups arrive on. Writes come in bursts, so a wake-up is followed by a short settle.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CredentialSource;

/// Config files are often written in several steps; wait for the writes to settle.
const RELOAD_DEBOUNCE: Duration = Duration::from_millis(300);

/// Files whose changes wake the loop. The channel holds one wake-up: more while it is full
/// say nothing new.
pub(super) struct Watch {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
    /// `None` while nothing is watched (or the watcher failed): the wake-ups never come, and
    /// the periodic pass is the fallback.
    watcher: Option<RecommendedWatcher>,
}

impl Watch {
    /// A watch of nothing yet.
    pub(super) fn new() -> Watch {
        let (tx, rx) = mpsc::channel(1);
        Watch {
            tx,
            rx,
            watcher: None,
        }
    }

    /// Watches the config file or directory (see [`watch_config`]).
    pub(super) fn config(path: &Path) -> Watch {
        let mut watch = Watch::new();
        match watch_config(path, watch.tx.clone()) {
            Ok(w) => watch.watcher = Some(w),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot watch the config, re-reading it every resync instead: {e}");
            }
        }
        watch
    }

    /// Follows the files of these credential sources from now on (see [`watch_credentials`]).
    pub(super) fn follow_credentials(&mut self, sources: &[CredentialSource]) {
        self.watcher = watch_credentials(sources, self.tx.clone());
    }

    /// Resolves at the next wake-up (never `None`: the sender lives as long as the receiver).
    pub(super) async fn changed(&mut self) -> Option<()> {
        self.rx.recv().await
    }

    /// Lets a burst of file writes settle, then drops the wake-ups it sent meanwhile;
    /// `false` when cancelled first.
    pub(super) async fn settle(&mut self, cancel: &CancellationToken) -> bool {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(RELOAD_DEBOUNCE) => {}
        }
        while self.rx.try_recv().is_ok() {}
        true
    }
}

/// Watches the config path for changes. For a file, its directory is watched: editors and
/// the kubelet replace files (and the `..data` link of a ConfigMap) rather than write them.
/// Only events on the config itself wake the agent: that file (or, for a directory, its
/// `*.yaml`/`*.yml` files) and `..data`. Anything else there, such as a log file the agent
/// itself writes, would otherwise wake it on every write.
fn watch_config(path: &Path, tx: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    let interest = if path.is_dir() {
        Interest::ConfigDir(path.to_path_buf())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Interest::File(
            dir.to_path_buf(),
            path.file_name().unwrap_or_default().into(),
        )
    };
    let (watcher, unwatched) = start(vec![interest], tx)?;
    match unwatched.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(watcher),
    }
}

/// Watches the credential files and directories (mounted secrets are swapped like ConfigMaps,
/// so a directory is watched recursively). `None` when there is nothing to watch or the
/// watcher fails: lookups still see changes by size and mtime. Only the declared files (and a
/// `..data` swap beside them) and whatever is below a declared directory wake the agent.
fn watch_credentials(
    sources: &[CredentialSource],
    tx: mpsc::Sender<()>,
) -> Option<RecommendedWatcher> {
    let mut interests = Vec::new();
    for path in sources.iter().flat_map(|s| s.watched_paths()) {
        if path.is_dir() {
            interests.push(Interest::Tree(path));
        } else if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
            // The file itself may be replaced (a rename, a `..data` swap): watch its folder.
            if parent.is_dir() {
                interests.push(Interest::File(parent.to_path_buf(), name.into()));
            }
        }
    }
    if interests.is_empty() {
        return None;
    }
    let (watcher, unwatched) = start(interests, tx)
        .map_err(|e| tracing::warn!("cannot watch credential files, checking their size and mtime on every pull instead: {e}"))
        .ok()?;
    for (target, e) in unwatched {
        tracing::debug!(path = %target.display(), "not watching: {e}");
    }
    Some(watcher)
}

/// A watcher that wakes `tx` on the events that concern `interests`, watching the directory of
/// each (below it too, for a tree). Returns the directories that could not be watched, with
/// why: whether that is fatal is the caller's call.
fn start(
    interests: Vec<Interest>,
    tx: mpsc::Sender<()>,
) -> notify::Result<(RecommendedWatcher, Vec<(PathBuf, notify::Error)>)> {
    let interests: Vec<Interest> = interests.into_iter().map(Interest::absolute).collect();
    let targets: Vec<(PathBuf, RecursiveMode)> = interests.iter().map(Interest::target).collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| concerns(&interests, &e)) {
            // A full channel already holds a wake-up; dropping this one loses nothing.
            let _ = tx.try_send(());
        }
    })?;
    let unwatched = targets
        .into_iter()
        .filter_map(|(dir, mode)| watcher.watch(&dir, mode).err().map(|e| (dir, e)))
        .collect();
    Ok((watcher, unwatched))
}

/// What a watcher acts on.
enum Interest {
    /// One file of a directory (by name), or that directory's `..data` link.
    File(PathBuf, std::ffi::OsString),
    /// A config directory: its `*.yaml`/`*.yml` files (not hidden) and its `..data` link.
    ConfigDir(PathBuf),
    /// Anything below a directory.
    Tree(PathBuf),
}

impl Interest {
    /// notify reports paths as the watched one joined to the current directory, like this.
    fn absolute(self) -> Interest {
        let abs = |p: PathBuf| std::env::current_dir().map(|c| c.join(&p)).unwrap_or(p);
        match self {
            Interest::File(dir, name) => Interest::File(abs(dir), name),
            Interest::ConfigDir(dir) => Interest::ConfigDir(abs(dir)),
            Interest::Tree(dir) => Interest::Tree(abs(dir)),
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Interest::File(dir, _) | Interest::ConfigDir(dir) | Interest::Tree(dir) => dir,
        }
    }

    /// The directory to watch for it, and how deep.
    fn target(&self) -> (PathBuf, RecursiveMode) {
        let mode = match self {
            Interest::Tree(_) => RecursiveMode::Recursive,
            Interest::File(..) | Interest::ConfigDir(_) => RecursiveMode::NonRecursive,
        };
        (self.dir().to_path_buf(), mode)
    }

    fn covers(&self, path: &Path) -> bool {
        let name = path.file_name().unwrap_or_default();
        let beside = || path.parent() == Some(self.dir());
        match self {
            Interest::File(_, file) => beside() && (name == file.as_os_str() || name == "..data"),
            Interest::ConfigDir(_) => {
                let name = name.to_string_lossy();
                beside()
                    && (name == "..data"
                        || !name.starts_with('.')
                            && (name.ends_with(".yaml") || name.ends_with(".yml")))
            }
            Interest::Tree(dir) => path.starts_with(dir),
        }
    }
}

/// Whether an event concerns the watched files. An event without paths (the kernel's queue
/// overflowed: some events were lost) counts, so nothing is missed.
fn concerns(interests: &[Interest], event: &notify::Event) -> bool {
    !is_read(&event.kind)
        && (event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| interests.iter().any(|i| i.covers(p))))
}

/// Opening and reading files are events too; the agent's own reads must not wake it.
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(a) if *a != AccessKind::Close(AccessMode::Write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn the_watcher_wakes_on_a_replaced_file_but_not_on_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.yaml");
        std::fs::write(&path, "images: [r.example/a:1]").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watcher = watch_config(&path, tx).unwrap();
        for _ in 0..3 {
            Config::load(&path).unwrap();
        }
        // inotify delivers within milliseconds; a read would have woken us by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err(), "reading the config woke the agent");
        // Editors and config tools replace the file with a rename.
        let tmp = dir.path().join("images.yaml.tmp");
        std::fs::write(&tmp, "images: [r.example/a:1, r.example/b:1]").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no wake-up after the file was replaced");
    }
}
