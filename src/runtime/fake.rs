//! An in-memory runtime for fast tests and benchmarks: scripted pull results, pull delays
//! (on tokio's clock, so paused-time tests run instantly), and counters of what was called and
//! how many pulls overlapped.
//!
//! Compiled for this crate's unit tests, and with the `test-util` feature for the integration
//! tests and benches (a dev-dependency turns it on): never in the release build.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tonic::Code;

use secrecy::ExposeSecret;

use super::{
    ContentProgress, FsSpace, ImageFs, ImageInfo, Ingest, ManifestBlobs, ProgressError,
    RegistryAuth, Runtime, RuntimeError, RuntimeVersion,
};
use crate::reference::ImageRef;

#[derive(Debug, Default, Clone)]
pub struct FakeStats {
    pub version_calls: usize,
    pub list_calls: usize,
    pub status_calls: usize,
    pub image_fs_calls: usize,
    /// Every pull attempt, in the order it started.
    pub pulls: Vec<String>,
    /// The user name each pull attempt sent, `None` for anonymous (parallel to `pulls`).
    pub pull_users: Vec<Option<String>>,
    pub max_in_flight: usize,
    /// Highest number of overlapping pulls per registry host.
    pub max_in_flight_per_registry: HashMap<String, usize>,
    /// Calls to `ingests()` (pull progress polls).
    pub ingest_calls: usize,
}

#[derive(Default)]
struct State {
    images: Vec<ImageInfo>,
    scripts: HashMap<String, VecDeque<Result<(), RuntimeError>>>,
    digests: HashMap<String, String>,
    /// Registry host → the one user:password it accepts.
    logins: HashMap<String, (String, String)>,
    /// Repository → the digest its registry serves whatever was asked (a pinned pull included).
    served: HashMap<String, String>,
    pull_delay: Duration,
    unavailable: bool,
    /// Every call waits forever, like a socket that accepts and never answers.
    hanging: bool,
    /// Registry hosts that refuse connections: every pull from them fails as containerd says.
    down: std::collections::HashSet<String>,
    /// The image filesystem, once a test sets one (see [`FakeRuntime::set_image_fs`]).
    image_fs: Option<FakeFs>,
    /// Reference → the size a pull of it lists (default 1 MB).
    pull_sizes: HashMap<String, u64>,
    in_flight: usize,
    in_flight_per_registry: HashMap<String, usize>,
    stats: FakeStats,
    /// What `ingests()` answers; `None`: no content service (as CRI-O).
    ingests: Option<Vec<Ingest>>,
    /// "host/repository" → what `manifests()` answers.
    manifests: HashMap<String, Vec<ManifestBlobs>>,
}

/// The fake image filesystem: `base` bytes used by other things, and each image takes twice its
/// listed size (its content plus the unpacked snapshot, as containerd with uncompressed layers).
struct FakeFs {
    mountpoint: String,
    base: u64,
    /// `None`: the mountpoint is not visible to the agent (no statvfs).
    capacity: Option<u64>,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

/// A stable fake digest for a name, so tests can predict it.
pub fn fake_digest(name: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    format!("sha256:{:016x}{}", h.finish(), "0".repeat(48))
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `reference` present, as if pulled earlier.
    pub fn add_image(&self, reference: &str, size_bytes: u64) {
        let r = ImageRef::parse(reference).expect("valid test reference");
        let info = self.image_for(&r, size_bytes);
        self.state().images.push(info);
    }

    /// Removes every image that `reference` matches (like `crictl rmi`).
    pub fn remove_image(&self, reference: &str) {
        let r = ImageRef::parse(reference).expect("valid test reference");
        self.state().images.retain(|i| !i.matches(&r));
    }

    /// The next pulls of `reference` return these results in order; later ones succeed.
    pub fn script_pulls(
        &self,
        reference: &str,
        results: impl IntoIterator<Item = Result<(), RuntimeError>>,
    ) {
        let key = ImageRef::parse(reference).expect("valid").pull_ref();
        self.state().scripts.entry(key).or_default().extend(results);
    }

    /// The repo digest a pull of this repository records (default: `fake_digest(name)`).
    pub fn set_repo_digest(&self, name: &str, digest: &str) {
        self.state()
            .digests
            .insert(name.to_string(), digest.to_string());
    }

    /// From now on `registry` accepts only this user and password, like an htpasswd registry:
    /// anything else gets containerd's 401 message.
    pub fn require_login(&self, registry: &str, user: &str, password: &str) {
        self.state().logins.insert(
            registry.to_string(),
            (user.to_string(), password.to_string()),
        );
    }

    /// How long every pull takes.
    pub fn set_pull_delay(&self, delay: Duration) {
        self.state().pull_delay = delay;
    }

    /// The registry serves `digest` for repository `name` from now on, whatever is pulled,
    /// pinned references included (a registry that answers with other content).
    pub fn serve_digest(&self, name: &str, digest: &str) {
        self.state()
            .served
            .insert(name.to_string(), digest.to_string());
    }

    /// While hanging every call waits forever (until its future is dropped), like a runtime
    /// whose socket accepts connections and never answers.
    pub fn set_hanging(&self, hanging: bool) {
        self.state().hanging = hanging;
    }

    /// While down, every pull from `registry` fails with containerd's "connection refused".
    pub fn set_registry_down(&self, registry: &str, down: bool) {
        let mut s = self.state();
        if down {
            s.down.insert(registry.to_string());
        } else {
            s.down.remove(registry);
        }
    }

    /// The content service answers these ingests from now on (`None`: unsupported, as CRI-O).
    pub fn set_ingests(&self, ingests: Option<Vec<Ingest>>) {
        self.state().ingests = ingests;
    }

    /// The manifests committed from `host`/`repository`, as the content service lists them.
    pub fn set_manifests(&self, host: &str, repository: &str, manifests: Vec<ManifestBlobs>) {
        self.state()
            .manifests
            .insert(format!("{host}/{repository}"), manifests);
    }

    /// While unavailable every call fails as a runtime that is down.
    pub fn set_available(&self, available: bool) {
        self.state().unavailable = !available;
    }

    /// The runtime reports an image filesystem at `mountpoint` with `base` bytes used besides
    /// the images; `capacity`: its size as statvfs sees it, `None` when the agent cannot see it.
    pub fn set_image_fs(&self, mountpoint: &str, base: u64, capacity: Option<u64>) {
        self.state().image_fs = Some(FakeFs {
            mountpoint: mountpoint.to_string(),
            base,
            capacity,
        });
    }

    /// A pull of `reference` lists this size (default 1 MB).
    pub fn set_pull_size(&self, reference: &str, bytes: u64) {
        let key = ImageRef::parse(reference).expect("valid").pull_ref();
        self.state().pull_sizes.insert(key, bytes);
    }

    /// Bytes used on the fake image filesystem now.
    pub fn disk_used(&self) -> u64 {
        let s = self.state();
        let images: u64 = s.images.iter().map(|i| i.size_bytes * 2).sum();
        s.image_fs.as_ref().map_or(0, |f| f.base) + images
    }

    pub fn stats(&self) -> FakeStats {
        self.state().stats.clone()
    }

    pub fn image_count(&self) -> usize {
        self.state().images.len()
    }

    fn image_for(&self, r: &ImageRef, size_bytes: u64) -> ImageInfo {
        let name = r.name();
        let served = self.state().served.get(&name).cloned();
        let digest = match (served, r.digest()) {
            (Some(d), _) => d,
            (None, Some(d)) => d.to_string(),
            (None, None) => self
                .state()
                .digests
                .get(&name)
                .cloned()
                .unwrap_or_else(|| fake_digest(&name)),
        };
        ImageInfo {
            id: fake_digest(&r.pull_ref()),
            repo_tags: if r.digest().is_none() {
                vec![r.pull_ref()]
            } else {
                vec![]
            },
            repo_digests: vec![format!("{name}@{digest}")],
            size_bytes,
        }
    }

    async fn check_available(&self) -> Result<(), RuntimeError> {
        let hanging = self.state().hanging;
        if hanging {
            std::future::pending::<()>().await;
        }
        if self.state().unavailable {
            Err(RuntimeError::new(
                Code::Unavailable,
                "cannot reach the runtime at unix:///fake.sock: connection refused",
            ))
        } else {
            Ok(())
        }
    }
}

impl FakeRuntime {
    /// What `version()` answers: for callers that need it without a call.
    pub fn runtime_version() -> RuntimeVersion {
        RuntimeVersion {
            runtime_name: "fake".into(),
            runtime_version: "1.0".into(),
            runtime_api_version: "v1".into(),
        }
    }
}

impl ContentProgress for FakeRuntime {
    async fn ingests(&self) -> Result<Vec<Ingest>, ProgressError> {
        let mut state = self.state();
        state.stats.ingest_calls += 1;
        state
            .ingests
            .clone()
            .ok_or_else(|| ProgressError::Unsupported("unknown service".into()))
    }

    async fn manifests(
        &self,
        host: &str,
        repository: &str,
        _since: std::time::SystemTime,
    ) -> Result<Vec<ManifestBlobs>, ProgressError> {
        Ok(self
            .state()
            .manifests
            .get(&format!("{host}/{repository}"))
            .cloned()
            .unwrap_or_default())
    }
}

impl Runtime for FakeRuntime {
    async fn version(&self) -> Result<RuntimeVersion, RuntimeError> {
        self.state().stats.version_calls += 1;
        self.check_available().await?;
        Ok(FakeRuntime::runtime_version())
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        self.state().stats.list_calls += 1;
        self.check_available().await?;
        Ok(self.state().images.clone())
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.state().stats.status_calls += 1;
        self.check_available().await?;
        // Like containerd, accept an image id as well as a reference.
        if let Some(i) = self.state().images.iter().find(|i| i.id == image) {
            return Ok(Some(i.clone()));
        }
        let r = ImageRef::parse(image)
            .map_err(|e| RuntimeError::new(Code::InvalidArgument, e.to_string()))?;
        Ok(self.state().images.iter().find(|i| i.matches(&r)).cloned())
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        self.check_available().await?;
        let r = ImageRef::parse(image).map_err(|e| {
            RuntimeError::new(
                Code::Unknown,
                format!("failed to parse image reference {image:?}: invalid reference format: {e}"),
            )
        })?;
        let registry = r.domain().to_string();
        let (delay, scripted) = {
            let mut s = self.state();
            s.stats.pulls.push(image.to_string());
            s.stats.pull_users.push(auth.map(|a| a.username.clone()));
            s.in_flight += 1;
            let global = s.in_flight;
            s.stats.max_in_flight = s.stats.max_in_flight.max(global);
            let per = s
                .in_flight_per_registry
                .entry(registry.clone())
                .or_default();
            *per += 1;
            let per = *per;
            let max = s
                .stats
                .max_in_flight_per_registry
                .entry(registry.clone())
                .or_default();
            *max = (*max).max(per);
            let scripted = s.scripts.get_mut(&r.pull_ref()).and_then(|q| q.pop_front());
            (s.pull_delay, scripted)
        };
        // Decrements the in-flight counters even when the caller drops this future.
        struct InFlight<'a>(&'a FakeRuntime, String);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                let mut s = self.0.state();
                s.in_flight -= 1;
                if let Some(n) = s.in_flight_per_registry.get_mut(&self.1) {
                    *n -= 1;
                }
            }
        }
        let _guard = InFlight(self, registry);

        if delay > timeout {
            tokio::time::sleep(timeout).await;
            return Err(RuntimeError::new(
                Code::DeadlineExceeded,
                "Deadline Exceeded",
            ));
        }
        tokio::time::sleep(delay).await;
        if let Some(Err(e)) = scripted {
            return Err(e);
        }
        if self.state().down.contains(r.domain()) {
            return Err(RuntimeError::new(
                Code::Unknown,
                format!(
                    "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": failed to do request: Head \"https://{}/v2/{}/manifests/x\": dial tcp 127.0.0.1:443: connect: connection refused",
                    r.domain(),
                    r.path()
                ),
            ));
        }
        let login = self.state().logins.get(r.domain()).cloned();
        if let Some((user, password)) = login {
            let accepted =
                auth.is_some_and(|a| a.username == user && a.password.expose_secret() == password);
            if !accepted {
                return Err(RuntimeError::new(
                    Code::Unknown,
                    format!(
                        "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": unexpected status from HEAD request to https://{}/v2/{}/manifests/x: 401 Unauthorized",
                        r.domain(),
                        r.path()
                    ),
                ));
            }
        }
        let size = self
            .state()
            .pull_sizes
            .get(&r.pull_ref())
            .copied()
            .unwrap_or(1_000_000);
        let info = self.image_for(&r, size);
        let id = info.id.clone();
        let mut s = self.state();
        s.images.retain(|i| !i.matches(&r));
        s.images.push(info);
        Ok(id)
    }

    async fn image_fs_info(&self) -> Result<Option<ImageFs>, RuntimeError> {
        self.state().stats.image_fs_calls += 1;
        self.check_available().await?;
        let used_bytes = self.disk_used();
        Ok(self.state().image_fs.as_ref().map(|f| ImageFs {
            mountpoint: f.mountpoint.clone(),
            used_bytes,
        }))
    }

    fn filesystem_space(&self, path: &std::path::Path) -> std::io::Result<FsSpace> {
        let used = self.disk_used();
        let s = self.state();
        match s.image_fs.as_ref() {
            Some(f)
                if f.capacity.is_some() && path.ends_with(f.mountpoint.trim_start_matches('/')) =>
            {
                let capacity = f.capacity.unwrap_or(0);
                Ok(FsSpace {
                    capacity_bytes: capacity,
                    available_bytes: capacity.saturating_sub(used),
                })
            }
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }
}
