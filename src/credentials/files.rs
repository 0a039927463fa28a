//! The file sources (`dockerConfig`, `dockerConfigDir`, `nodeDefaults`): read once, kept until
//! they change. A change is known from the agent's watcher ([`FileCache::changed`]) or, where
//! the watcher cannot follow it, from the size and mtime of every path the read looked at (a
//! few `stat`s, no reads). Reads and `stat`s run in `spawn_blocking`, never on the async
//! worker threads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::CredentialSource;
use super::docker_config::parse_docker_config;
use super::document::{Document, Problem, ProblemKind, SourceRead};

/// How deep `dockerConfigDir` is searched: `<dir>/<secret>/.dockerconfigjson` is depth 2.
const DIR_SEARCH_DEPTH: usize = 4;

/// A path's size and modification time, `None` when it cannot be `stat`ed (absent, say).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

// The paths are the kubelet's search order, which is this module's business; the method lives
// here so that the declared sources need not know it.
impl CredentialSource {
    /// Files and directories whose changes can change this source's credentials.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        match self {
            CredentialSource::DockerConfig(p) => vec![p.clone()],
            CredentialSource::DockerConfigDir(p) => vec![p.clone()],
            // Read once per config, as the kubelet reads it once at start.
            CredentialSource::Secret { .. }
            | CredentialSource::KubeletCredentialProviders { .. } => {
                vec![]
            }
            CredentialSource::NodeDefaults { kubelet_root_dir } => {
                node_default_files(kubelet_root_dir)
            }
        }
    }
}

/// The file sources as last read, and what they looked like just before.
pub(super) struct FileSnapshot {
    /// [`FileCache::changed`] calls when it was read.
    generation: u64,
    /// Every path the read looked at (declared files, each directory searched, each file
    /// found), stamped before it was read: a change after that shows in the stamps.
    stamps: Vec<(PathBuf, Stamp)>,
    /// Per source, in order; `None` for `secret:` sources.
    pub sources: Vec<Option<SourceRead>>,
}

impl FileSnapshot {
    /// Reads every file source (blocking: call it in `spawn_blocking`).
    fn read(sources: &[CredentialSource], generation: u64) -> FileSnapshot {
        let mut stamps = Vec::new();
        let sources = sources
            .iter()
            .map(|source| read_file_source(source, &mut stamps))
            .collect();
        FileSnapshot {
            generation,
            stamps,
            sources,
        }
    }

    /// Whether it still holds what the files hold (blocking: a `stat` per path).
    fn is_current(&self, generation: u64) -> bool {
        self.generation == generation && self.stamps.iter().all(|(path, s)| stamp(path) == *s)
    }
}

/// The file sources' last read, shared by every lookup.
#[derive(Default)]
pub(super) struct FileCache {
    /// Bumped by [`FileCache::changed`]: a snapshot of an older one is read again.
    generation: AtomicU64,
    snapshot: tokio::sync::Mutex<Option<Arc<FileSnapshot>>>,
    /// How many times the file sources were read (for tests).
    reads: AtomicU64,
}

impl FileCache {
    /// The next [`FileCache::current`] reads the files again, even if their size and mtime look
    /// the same.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The file sources' current content: the snapshot if nothing changed since, else read
    /// again. Both the check and the read are blocking, so they run off the async threads.
    pub async fn current(&self, sources: &Arc<[CredentialSource]>) -> Arc<FileSnapshot> {
        let generation = self.generation.load(Ordering::SeqCst);
        let read = {
            let sources = sources.clone();
            move || Arc::new(FileSnapshot::read(&sources, generation))
        };
        if sources.iter().all(|s| {
            matches!(
                s,
                CredentialSource::Secret { .. }
                    | CredentialSource::KubeletCredentialProviders { .. }
            )
        }) {
            // Nothing to read, nothing to block on.
            return read();
        }
        // Held across the check, so that pulls starting together read the files once.
        let mut kept = self.snapshot.lock().await;
        let check = tokio::task::spawn_blocking({
            let (kept, read) = (kept.clone(), read.clone());
            move || match kept {
                Some(kept) if kept.is_current(generation) => (kept, false),
                _ => (read(), true),
            }
        });
        let (snapshot, fresh) = match check.await {
            Ok(done) => done,
            // Only a panic in the read gets here: read inline rather than have no credentials.
            Err(_) => (read(), true),
        };
        if fresh {
            self.reads.fetch_add(1, Ordering::Relaxed);
            *kept = Some(snapshot.clone());
        }
        snapshot
    }
}

/// The documents of one file source (`None` for a secret), stamping each path before reading it.
fn read_file_source(
    source: &CredentialSource,
    stamps: &mut Vec<(PathBuf, Stamp)>,
) -> Option<SourceRead> {
    let mut seen = |path: &Path| stamps.push((path.to_path_buf(), stamp(path)));
    let mut read = SourceRead::default();
    match source {
        CredentialSource::DockerConfig(path) => {
            seen(path);
            read_document(source.to_string(), path, &mut read);
        }
        CredentialSource::DockerConfigDir(dir) => {
            let mut files = Vec::new();
            if let Err(e) = find_secret_files(dir, 0, &mut files, &mut seen) {
                read.problems.push(Problem::new(
                    source,
                    ProblemKind::UnreadableDirectory(Arc::new(e)),
                ));
            }
            files.sort();
            for file in files {
                let rel = file.strip_prefix(dir).unwrap_or(&file).display();
                seen(&file);
                read_document(format!("{source} ({rel})"), &file, &mut read);
            }
        }
        CredentialSource::Secret { .. } | CredentialSource::KubeletCredentialProviders { .. } => {
            return None;
        }
        CredentialSource::NodeDefaults { kubelet_root_dir } => {
            let files = node_default_files(kubelet_root_dir);
            // All of them: a file appearing earlier in the search order wins from then on.
            files.iter().for_each(|f| seen(f));
            read.documents.extend(first_node_default(&files));
        }
    }
    Some(read)
}

/// The file at `path` as the document `name`, or why it cannot be read.
fn read_document(name: String, path: &Path, read: &mut SourceRead) {
    match std::fs::read(path) {
        Ok(bytes) => read.documents.push(Document { name, bytes }),
        Err(e) => read
            .problems
            .push(Problem::new(name, ProblemKind::Unreadable(Arc::new(e)))),
    }
}

/// The kubelet's search order for node-wide credentials.
fn node_default_files(kubelet_root_dir: &Path) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    node_default_files_in(kubelet_root_dir, home.as_deref(), Path::new("/"))
}

fn node_default_files_in(
    kubelet_root_dir: &Path,
    home: Option<&Path>,
    root: &Path,
) -> Vec<PathBuf> {
    let mut files = vec![kubelet_root_dir.join("config.json")];
    files.extend(home.map(|h| h.join(".docker").join("config.json")));
    files.push(root.join(".docker").join("config.json"));
    files.push(kubelet_root_dir.join(".dockercfg"));
    files.extend(home.map(|h| h.join(".dockercfg")));
    files.push(root.join(".dockercfg"));
    files
}

/// The first file that exists and parses wins, as in the kubelet.
fn first_node_default(files: &[PathBuf]) -> Option<Document> {
    files.iter().find_map(|file| {
        let bytes = std::fs::read(file).ok()?;
        parse_docker_config(&bytes).ok()?;
        Some(Document {
            name: format!("nodeDefaults {}", file.display()),
            bytes,
        })
    })
}

/// `.dockerconfigjson` and `.dockercfg` files below `dir`. Entries starting with `..` are the
/// kubelet's atomic-writer internals (`..data`, `..2026_…`): the same files again. `seen` is
/// told of each directory before it is listed (a file added or swapped in changes its mtime).
fn find_secret_files(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    seen: &mut impl FnMut(&Path),
) -> std::io::Result<()> {
    seen(dir);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // A name that is not UTF-8 is neither internal nor one of ours, but may be a folder.
        let name = path.file_name().and_then(|n| n.to_str());
        if name.is_some_and(|n| n.starts_with("..")) {
            continue;
        }
        if path.is_dir() {
            if depth < DIR_SEARCH_DEPTH {
                // An unreadable subdirectory should not hide the others.
                let _ = find_secret_files(&path, depth + 1, out, seen);
            }
        } else if matches!(name, Some(".dockerconfigjson" | ".dockercfg")) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::{b64, dockerconfigjson};

    #[test]
    fn node_defaults_search_like_the_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        let (kubelet, home, root) = (
            dir.path().join("kubelet"),
            dir.path().join("home"),
            dir.path().join("root"),
        );
        for d in [&kubelet, &home.join(".docker"), &root.join(".docker")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let files = node_default_files_in(&kubelet, Some(&home), &root);
        let user = |files: &[PathBuf]| {
            let doc = first_node_default(files).unwrap();
            parse_docker_config(&doc.bytes).unwrap()[0]
                .1
                .username
                .clone()
        };
        let write = |path: PathBuf, user: &str| {
            std::fs::write(path, dockerconfigjson("r.example.com", user, "x")).unwrap()
        };
        assert!(first_node_default(&files).is_none());
        std::fs::write(
            root.join(".dockercfg"),
            format!(
                r#"{{"r.example.com": {{"auth": "{}"}}}}"#,
                b64("root-legacy:x")
            ),
        )
        .unwrap();
        assert_eq!(user(&files), "root-legacy");
        write(root.join(".docker/config.json"), "root-json");
        assert_eq!(
            user(&files),
            "root-json",
            "config.json before any .dockercfg"
        );
        write(home.join(".docker/config.json"), "home-json");
        assert_eq!(user(&files), "home-json");
        std::fs::write(kubelet.join("config.json"), "not json").unwrap();
        assert_eq!(user(&files), "home-json", "an unparsable file is skipped");
        write(kubelet.join("config.json"), "kubelet");
        assert_eq!(user(&files), "kubelet");
    }
}
