//! Registry credentials, found and matched the way the kubelet does, so that whatever works
//! for an operator's pods works for prepuller.
//!
//! Files are read once and kept until they change: the agent's watcher says so
//! ([`Credentials::files_changed`]), and every lookup also compares their size and mtime (a few
//! `stat`s, no reads), so a change is seen even where the watcher cannot follow it. Reads and
//! `stat`s run in `spawn_blocking`, never on the async worker threads. Secrets read through the
//! Kubernetes API are cached for a short time. A rotated password is thus used on the next
//! attempt without a restart.
//! Secrets live in [`SecretString`]s: they print as `[REDACTED]` in Debug output and have no
//! Display, so they cannot reach a log, an error, `/status` or a metric by accident.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::reference::ImageRef;

/// How long a secret read through the API is reused before it is read again (a 401 forces an
/// earlier read). Pulls are rare, so this keeps API traffic near zero.
const SECRET_CACHE_TTL: Duration = Duration::from_secs(60);
/// How deep `dockerConfigDir` is searched: `<dir>/<secret>/.dockerconfigjson` is depth 2.
const DIR_SEARCH_DEPTH: usize = 4;

/// Docker Hub's key in docker config files, and the kubelet's fallback for Hub images.
const DOCKER_HUB_KEY: &str = "index.docker.io";

/// Where credentials come from, as declared under `credentials:` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialSource {
    /// A docker `config.json` (`{"auths": …}`) or a legacy `.dockercfg` file.
    DockerConfig(PathBuf),
    /// Every `.dockerconfigjson` / `.dockercfg` below a directory of mounted pull secrets.
    DockerConfigDir(PathBuf),
    /// A `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` secret, read by name.
    Secret { namespace: String, name: String },
    /// The kubelet's own search: `<root-dir>/config.json`, `$HOME/.docker/config.json`,
    /// `/.docker/config.json`, then `.dockercfg` in `<root-dir>`, `$HOME`, `/`.
    NodeDefaults { kubelet_root_dir: PathBuf },
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::DockerConfig(p) => write!(f, "dockerConfig {}", p.display()),
            CredentialSource::DockerConfigDir(p) => write!(f, "dockerConfigDir {}", p.display()),
            CredentialSource::Secret { namespace, name } => write!(f, "secret {namespace}/{name}"),
            CredentialSource::NodeDefaults { .. } => f.write_str("nodeDefaults"),
        }
    }
}

impl CredentialSource {
    /// Files and directories whose changes can change this source's credentials.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        match self {
            CredentialSource::DockerConfig(p) => vec![p.clone()],
            CredentialSource::DockerConfigDir(p) => vec![p.clone()],
            CredentialSource::Secret { .. } => vec![],
            CredentialSource::NodeDefaults { kubelet_root_dir } => {
                node_default_files(kubelet_root_dir)
            }
        }
    }
}

/// What the runtime is sent for one registry: the CRI `AuthConfig` fields.
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: SecretString,
    pub identity_token: Option<SecretString>,
    pub registry_token: Option<SecretString>,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even the user name stays out: it is half of a credential, and often an account id.
        f.debug_struct("RegistryAuth")
            .field("username", &"[REDACTED]")
            .field("password", &"[REDACTED]")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field(
                "registry_token",
                &self.registry_token.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

impl RegistryAuth {
    /// Every secret string of this credential, to scrub from text that came from elsewhere
    /// (a runtime's error message could echo what it was sent).
    pub fn secrets(&self) -> Vec<&str> {
        let mut out = vec![self.password.expose_secret()];
        out.extend(self.identity_token.iter().map(|t| t.expose_secret()));
        out.extend(self.registry_token.iter().map(|t| t.expose_secret()));
        out.retain(|s| s.len() >= 3);
        out
    }
}

/// One credential that matched an image: what to send, and where it came from.
#[derive(Debug, Clone)]
pub struct Credential {
    /// The normalized key it was stored under, e.g. `registry.example.com/team`.
    pub key: String,
    /// Where it came from, for messages: `secret redis/regcred`, `dockerConfig /path`, ….
    pub source: String,
    pub auth: RegistryAuth,
}

impl Credential {
    /// `secret redis/regcred (key registry.example.com)`: never the secret itself.
    pub fn describe(&self) -> String {
        format!("{} (key {})", self.source, self.key)
    }
}

/// Removes every secret of `credentials` from `text`.
pub fn redact<'a>(text: &str, credentials: impl IntoIterator<Item = &'a RegistryAuth>) -> String {
    let mut out = text.to_string();
    for auth in credentials {
        for secret in auth.secrets() {
            out = out.replace(secret, "[REDACTED]");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Docker config files

/// One `auths` entry as docker writes it. Unknown fields (`email`, …) are ignored, as by docker.
#[derive(Deserialize, Default)]
struct RawEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

impl fmt::Debug for RawEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawEntry([REDACTED])")
    }
}

/// Parses a docker config: `{"auths": {key: entry}}` (config.json, `.dockerconfigjson`) or the
/// legacy bare map (`.dockercfg`). Errors never quote the input.
pub fn parse_docker_config(bytes: &[u8]) -> Result<Vec<(String, RegistryAuth)>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON (line {})", e.line()))?;
    let map = match value {
        serde_json::Value::Object(mut top) => match top.remove("auths") {
            Some(serde_json::Value::Object(auths)) => auths,
            Some(_) => return Err("`auths` is not an object".into()),
            // A config.json without `auths` (only credsStore, say) has nothing for us.
            None if top.contains_key("credsStore") || top.contains_key("credHelpers") => {
                Default::default()
            }
            None => top,
        },
        _ => return Err("not a JSON object".into()),
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let entry: RawEntry = serde_json::from_value(value)
            .map_err(|_| format!("the entry for {key:?} is not a valid auth entry"))?;
        out.push((key.clone(), entry_auth(&key, entry)?));
    }
    Ok(out)
}

fn entry_auth(key: &str, e: RawEntry) -> Result<RegistryAuth, String> {
    let (mut username, mut password) = (
        e.username.unwrap_or_default(),
        e.password.unwrap_or_default(),
    );
    // As docker and the kubelet: `auth` wins over username/password.
    if let Some(auth) = e.auth.filter(|a| !a.is_empty()) {
        let (u, p) = decode_auth(&auth)
            .ok_or_else(|| format!("the `auth` of {key:?} is not base64 of user:password"))?;
        username = u;
        password = p;
    }
    Ok(RegistryAuth {
        username,
        password: password.into(),
        identity_token: e.identitytoken.filter(|t| !t.is_empty()).map(Into::into),
        registry_token: e.registrytoken.filter(|t| !t.is_empty()).map(Into::into),
    })
}

/// `base64(user:password)`, padded or not (the kubelet accepts both).
fn decode_auth(field: &str) -> Option<(String, String)> {
    let field = field.trim();
    let bytes = if field.ends_with('=') {
        base64::engine::general_purpose::STANDARD.decode(field)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.decode(field)
    }
    .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

// ---------------------------------------------------------------------------------------------
// The keyring: matching as the kubelet's BasicDockerKeyring does

/// The kubelet's key form: no scheme, and `/v1/` or `/v2/` mean the host alone.
pub fn normalize_key(location: &str) -> String {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = if path.starts_with("/v1/") || path.starts_with("/v2/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        host.to_string()
    } else {
        format!("{host}{path}")
    }
}

/// Host labels and port of a schemeless URL; the path is everything from the first `/`.
fn split_url(url: &str) -> (Vec<&str>, &str, &str) {
    let (hostport, path) = match url.find('/') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').unwrap_or("")),
            None => (hostport, ""),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, p),
            _ => (hostport, ""),
        }
    };
    (host.split('.').collect(), port, path)
}

/// Whether `target` (a schemeless image name) matches the keyring key `glob`: same port, same
/// number of host labels, each label a glob, and the key's path a string prefix of the image's.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (glob_labels, glob_port, glob_path) = split_url(glob);
    let (target_labels, target_port, target_path) = split_url(target);
    if glob_port != target_port
        || glob_labels.len() != target_labels.len()
        || !target_path.starts_with(glob_path)
    {
        return false;
    }
    glob_labels.iter().zip(&target_labels).all(|(g, t)| {
        glob::Pattern::new(g).is_ok_and(|p| p.matches_with(t, glob::MatchOptions::new()))
    })
}

/// Whether an image name pulls from Docker Hub, by the kubelet's rule.
pub fn is_default_registry_match(image: &str) -> bool {
    let mut parts = image.splitn(2, '/');
    let first = parts.next().unwrap_or("");
    if first.is_empty() {
        return false;
    }
    match parts.next() {
        None => true,
        Some(_) => first == "docker.io" || first == DOCKER_HUB_KEY || !first.contains(['.', ':']),
    }
}

#[derive(Debug, Default, Clone)]
pub struct Keyring {
    creds: HashMap<String, Vec<Credential>>,
    /// Keys, reverse-sorted so more specific ones come first (`quay.io/coreos` before `quay.io`).
    index: Vec<String>,
}

impl Keyring {
    pub fn add(&mut self, source: &str, entries: Vec<(String, RegistryAuth)>) {
        for (location, auth) in entries {
            let key = normalize_key(&location);
            self.creds.entry(key.clone()).or_default().push(Credential {
                key,
                source: source.to_string(),
                auth,
            });
        }
        self.index = self.creds.keys().cloned().collect();
        self.index.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Every credential to try for `image` (a name without tag, e.g. `docker.io/library/nginx`),
    /// most specific key first; Docker Hub's entry for Hub images when nothing else matched.
    pub fn lookup(&self, image: &str) -> Vec<&Credential> {
        let found: Vec<&Credential> = self
            .index
            .iter()
            .filter(|key| urls_match(key, image))
            .flat_map(|key| &self.creds[key])
            .collect();
        if found.is_empty() && is_default_registry_match(image) {
            return self
                .creds
                .get(DOCKER_HUB_KEY)
                .map(|c| c.iter().collect())
                .unwrap_or_default();
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the sources

/// A secret's data by key (`None`: it does not exist), or why it could not be read.
pub type SecretRead = Result<Option<BTreeMap<String, Vec<u8>>>, String>;

/// Reads pull secrets by name through the Kubernetes API (only `get`: RBAC `resourceNames`).
pub trait SecretReader: Send + Sync {
    /// The secret's data, `None` when it does not exist.
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'_, SecretRead>;
}

impl SecretReader for kube::Client {
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'_, SecretRead> {
        use k8s_openapi::api::core::v1::Secret;
        let api: kube::Api<Secret> = kube::Api::namespaced(self.clone(), namespace);
        let (namespace, name) = (namespace.to_string(), name.to_string());
        Box::pin(async move {
            match api.get_opt(&name).await {
                Ok(secret) => Ok(secret.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.0))
                        .collect()
                })),
                Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
                    "forbidden: the agent's ServiceAccount needs `get` on secrets {name:?} in namespace {namespace:?} (a Role with resourceNames: [{name}])"
                )),
                Err(e) => Err(format!("cannot read it through the Kubernetes API: {e}")),
            }
        })
    }
}

/// A secret reader for the cluster prepuller runs in, if any; said once in the log either way.
pub async fn cluster_secret_reader() -> Option<Arc<dyn SecretReader>> {
    match crate::cluster::connect().await {
        Ok(Some((client, source))) => {
            tracing::debug!(%source, "Kubernetes API available for `secret:` credentials");
            Some(Arc::new(client))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("`secret:` credentials cannot be read: {e}");
            None
        }
    }
}

/// What a lookup found for one image.
#[derive(Debug, Default)]
pub struct Found {
    /// In the order to try them.
    pub credentials: Vec<Credential>,
    /// Sources that could not be read, with why (never with their content).
    pub problems: Vec<String>,
}

struct CachedSecret {
    read_at: Instant,
    data: SecretRead,
}

/// What one source yielded: docker config documents, each named for messages, and the problems
/// met reading it.
type SourceRead = (Vec<(String, Vec<u8>)>, Vec<String>);

/// A path's size and modification time, `None` when it cannot be `stat`ed (absent, say).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The file sources as last read, and what they looked like just before.
struct FileSnapshot {
    /// [`Credentials::files_changed`] calls when it was read.
    generation: u64,
    /// Every path the read looked at (declared files, each directory searched, each file
    /// found), stamped before it was read: a change after that shows in the stamps.
    stamps: Vec<(PathBuf, Stamp)>,
    /// Per source, in order; `None` for `secret:` sources.
    sources: Vec<Option<SourceRead>>,
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

/// The documents of one file source (`None` for a secret), stamping each path before reading it.
fn read_file_source(
    source: &CredentialSource,
    stamps: &mut Vec<(PathBuf, Stamp)>,
) -> Option<SourceRead> {
    let mut seen = |path: &Path| stamps.push((path.to_path_buf(), stamp(path)));
    let mut found = Vec::new();
    let mut problems = Vec::new();
    match source {
        CredentialSource::DockerConfig(path) => {
            seen(path);
            match std::fs::read(path) {
                Ok(bytes) => found.push((source.to_string(), bytes)),
                Err(e) => problems.push(format!("{source}: cannot read it: {e}")),
            }
        }
        CredentialSource::DockerConfigDir(dir) => {
            let mut files = Vec::new();
            if let Err(e) = find_secret_files(dir, 0, &mut files, &mut seen) {
                problems.push(format!("{source}: cannot read the directory: {e}"));
            }
            files.sort();
            for file in files {
                let rel = file
                    .strip_prefix(dir)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                seen(&file);
                match std::fs::read(&file) {
                    Ok(bytes) => found.push((format!("{source} ({rel})"), bytes)),
                    Err(e) => problems.push(format!("{source} ({rel}): cannot read it: {e}")),
                }
            }
        }
        CredentialSource::Secret { .. } => return None,
        CredentialSource::NodeDefaults { kubelet_root_dir } => {
            let files = node_default_files(kubelet_root_dir);
            // All of them: a file appearing earlier in the search order wins from then on.
            files.iter().for_each(|f| seen(f));
            found.extend(first_node_default(&files));
        }
    }
    Some((found, problems))
}

/// The credentials of the current config: looks them up per image. Files are read once and
/// again only when they change; secrets are cached for [`SECRET_CACHE_TTL`].
pub struct Credentials {
    sources: Arc<[CredentialSource]>,
    pub anonymous_fallback: bool,
    secrets: Option<Arc<dyn SecretReader>>,
    cache: Mutex<HashMap<(String, String), CachedSecret>>,
    /// Bumped by [`Credentials::files_changed`]: a snapshot of an older one is read again.
    generation: AtomicU64,
    files: tokio::sync::Mutex<Option<Arc<FileSnapshot>>>,
    /// How many times the file sources were read (for tests).
    file_reads: AtomicU64,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("sources", &self.sources)
            .field("anonymous_fallback", &self.anonymous_fallback)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(
        sources: Vec<CredentialSource>,
        anonymous_fallback: bool,
        secrets: Option<Arc<dyn SecretReader>>,
    ) -> Self {
        Credentials {
            sources: sources.into(),
            anonymous_fallback,
            secrets,
            cache: Mutex::default(),
            generation: AtomicU64::new(0),
            files: Default::default(),
            file_reads: AtomicU64::new(0),
        }
    }

    /// No sources: every pull is anonymous.
    pub fn none() -> Self {
        Credentials::new(vec![], false, None)
    }

    pub fn sources(&self) -> &[CredentialSource] {
        &self.sources
    }

    /// The sources, as a list for messages: `secret redis/regcred, dockerConfig /x`.
    pub fn describe_sources(&self) -> String {
        self.sources
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The credentials to try for `image`, from the current content of every source.
    pub async fn lookup(&self, image: &ImageRef) -> Found {
        let (keyring, problems) = self.keyring().await;
        Found {
            credentials: keyring.lookup(&image.name()).into_iter().cloned().collect(),
            problems,
        }
    }

    /// Forgets cached secrets, so the next lookup reads them again (after a 401: they may have
    /// been rotated). Files need not be forgotten: a change to them is seen anyway.
    pub fn invalidate(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A credential file or directory changed (the agent's watcher saw it): the next lookup
    /// reads the files again, even if their size and mtime look the same.
    pub fn files_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A hash of every credential's material: it changes when any source changes. Used to
    /// retry images that were refused, as soon as the credentials change.
    pub async fn fingerprint(&self) -> u64 {
        let files = self.files().await;
        let mut material: Vec<(String, Vec<u8>)> = Vec::new();
        for (source, read) in self.sources.iter().zip(&files.sources) {
            for (name, bytes) in self.source_docs(source, read).await.0 {
                material.push((name, bytes));
            }
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        material.hash(&mut h);
        h.finish()
    }

    async fn keyring(&self) -> (Keyring, Vec<String>) {
        let files = self.files().await;
        let mut keyring = Keyring::default();
        let mut problems = Vec::new();
        for (source, read) in self.sources.iter().zip(&files.sources) {
            let (docs, mut errs) = self.source_docs(source, read).await;
            problems.append(&mut errs);
            for (name, bytes) in docs {
                match parse_docker_config(&bytes) {
                    Ok(entries) => keyring.add(&name, entries),
                    Err(e) => problems.push(format!("{name}: {e}")),
                }
            }
        }
        (keyring, problems)
    }

    /// The file sources' current content: the snapshot if nothing changed since, else read
    /// again. Both the check and the read are blocking, so they run off the async threads.
    async fn files(&self) -> Arc<FileSnapshot> {
        let generation = self.generation.load(Ordering::SeqCst);
        if self
            .sources
            .iter()
            .all(|s| matches!(s, CredentialSource::Secret { .. }))
        {
            // Nothing to read, nothing to block on.
            return Arc::new(FileSnapshot::read(&self.sources, generation));
        }
        // Held across the check, so that pulls starting together read the files once.
        let mut files = self.files.lock().await;
        let (kept, sources) = (files.clone(), self.sources.clone());
        let check = tokio::task::spawn_blocking(move || match kept {
            Some(kept) if kept.is_current(generation) => (kept, false),
            _ => (Arc::new(FileSnapshot::read(&sources, generation)), true),
        });
        let (snapshot, fresh) = match check.await {
            Ok(done) => done,
            // Only a panic in the read gets here: read inline rather than have no credentials.
            Err(_) => (
                Arc::new(FileSnapshot::read(&self.sources, generation)),
                true,
            ),
        };
        if fresh {
            self.file_reads.fetch_add(1, Ordering::Relaxed);
            *files = Some(snapshot.clone());
        }
        snapshot
    }

    /// The docker config documents of one source: a file source's from the snapshot, a
    /// secret's through the cache.
    async fn source_docs(
        &self,
        source: &CredentialSource,
        read: &Option<SourceRead>,
    ) -> SourceRead {
        let CredentialSource::Secret { namespace, name } = source else {
            return read.clone().unwrap_or_default();
        };
        let mut found = Vec::new();
        let mut problems = Vec::new();
        match self.secret(namespace, name).await {
            Ok(Some(data)) => {
                let doc = data
                    .get(".dockerconfigjson")
                    .or_else(|| data.get(".dockercfg"));
                match doc {
                    Some(bytes) => found.push((source.to_string(), bytes.clone())),
                    None => problems.push(format!(
                        "{source}: has no .dockerconfigjson or .dockercfg key (is it a kubernetes.io/dockerconfigjson secret?)"
                    )),
                }
            }
            Ok(None) => problems.push(format!("{source}: not found")),
            Err(e) => problems.push(format!("{source}: {e}")),
        }
        (found, problems)
    }

    async fn secret(&self, namespace: &str, name: &str) -> SecretRead {
        let key = (namespace.to_string(), name.to_string());
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && c.read_at.elapsed() < SECRET_CACHE_TTL
        {
            return c.data.clone();
        }
        let Some(reader) = &self.secrets else {
            return Err(
                "no Kubernetes API to read it from (not in a cluster and no kubeconfig)".into(),
            );
        };
        let data = reader.get(namespace, name).await;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            CachedSecret {
                read_at: Instant::now(),
                data: data.clone(),
            },
        );
        data
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
fn first_node_default(files: &[PathBuf]) -> Option<(String, Vec<u8>)> {
    files.iter().find_map(|file| {
        let bytes = std::fs::read(file).ok()?;
        parse_docker_config(&bytes).ok()?;
        Some((format!("nodeDefaults {}", file.display()), bytes))
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
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("..") {
            continue;
        }
        if path.is_dir() {
            if depth < DIR_SEARCH_DEPTH {
                // An unreadable subdirectory should not hide the others.
                let _ = find_secret_files(&path, depth + 1, out, seen);
            }
        } else if name == ".dockerconfigjson" || name == ".dockercfg" {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn auth(user: &str) -> RegistryAuth {
        RegistryAuth {
            username: user.into(),
            password: format!("{user}-password").into(),
            identity_token: None,
            registry_token: None,
        }
    }

    fn keyring(keys: &[(&str, &str)]) -> Keyring {
        let mut k = Keyring::default();
        k.add(
            "test",
            keys.iter()
                .map(|(key, user)| (key.to_string(), auth(user)))
                .collect(),
        );
        k
    }

    fn users(k: &Keyring, image: &str) -> Vec<String> {
        k.lookup(image)
            .iter()
            .map(|c| c.auth.username.clone())
            .collect()
    }

    /// The kubelet's TestUrlsMatch table (pkg/credentialprovider/keyring_test.go).
    #[test]
    fn urls_match_like_the_kubelet() {
        let cases = [
            ("*.kubernetes.io", "prefix.kubernetes.io", true),
            ("prefix.*.io", "prefix.kubernetes.io", true),
            ("prefix.kubernetes.*", "prefix.kubernetes.io", true),
            ("*-good.kubernetes.io", "prefix-good.kubernetes.io", true),
            ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", true),
            ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", true),
            (
                "*.kubernetes.io:1111/blah",
                "prefix.kubernetes.io:1111/blah",
                true,
            ),
            (
                "prefix.*.io:1111/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                true,
            ),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.*.kubernetes.io", "prefix.kubernetes.io", false),
            ("*.*.kubernetes.io", "kubernetes.io", false),
            ("kubernetes.io", "kubernetes.com", false),
            ("k*.io", "quay.io", false),
            (
                "*.kubernetes.io:1234/blah",
                "prefix.kubernetes.io:1111/blah",
                false,
            ),
            (
                "prefix.*.io/foo",
                "prefix.kubernetes.io:1111/foo/bar",
                false,
            ),
            // Ours: a glob matches one label only, IPv6 hosts, ports must both be absent.
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.example.com", true),
            ("[::1]:5000", "[::1]:5000/team/app", true),
            ("[::1]:5000", "[::1]:5001/team/app", false),
            (
                "registry.example.com",
                "registry.example.com:5000/app",
                false,
            ),
        ];
        for (glob, target, want) in cases {
            assert_eq!(urls_match(glob, target), want, "{glob} vs {target}");
        }
    }

    /// The kubelet's TestDockerKeyringForGlob: keys as written in config files, with schemes
    /// and /v1/, /v2/ paths, each matching `<target>/foo/bar`.
    #[test]
    fn keys_with_schemes_and_api_paths_match() {
        let cases = [
            ("https://hello.kubernetes.io", "hello.kubernetes.io"),
            ("https://*.docker.io", "prefix.docker.io"),
            ("https://prefix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.*", "prefix.docker.io"),
            ("https://*.docker.io/path", "prefix.docker.io/path"),
            ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
            ("https://prefix.docker.*/path", "prefix.docker.io/path"),
            ("https://*.docker.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.*.io:8888", "prefix.docker.io:8888"),
            ("https://prefix.docker.*:8888", "prefix.docker.io:8888"),
            (
                "https://*.docker.io/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("https://*.docker.io/v1/", "prefix.docker.io/path:1111"),
            ("https://*.docker.io/v2/", "prefix.docker.io/path:1111"),
            (
                "https://prefix.docker.*/path:1111",
                "prefix.docker.io/path:1111",
            ),
            ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),
            ("*.docker.io:1111", "prefix.docker.io:1111/path"),
            ("http://plain.example.com/v2/", "plain.example.com"),
        ];
        for (key, target) in cases {
            let k = keyring(&[(key, "foo")]);
            assert_eq!(
                users(&k, &format!("{target}/foo/bar")),
                ["foo"],
                "{key} vs {target}"
            );
        }
    }

    /// The kubelet's TestKeyringMiss.
    #[test]
    fn keys_that_must_not_match() {
        let cases = [
            ("https://hello.kubernetes.io", "world.mesos.org/foo/bar"),
            ("https://*.docker.com", "prefix.docker.io"),
            ("https://suffix.*.io", "prefix.docker.io"),
            ("https://prefix.docker.c*", "prefix.docker.io"),
            (
                "https://prefix.*.io/path:1111",
                "prefix.docker.io/path/subpath:1111",
            ),
            ("suffix.*.io", "prefix.docker.io"),
        ];
        for (key, target) in cases {
            let k = keyring(&[(key, "foo")]);
            assert!(
                k.lookup(&format!("{target}/foo/bar")).is_empty(),
                "{key} vs {target}"
            );
        }
    }

    /// TestKeyringMissWithDockerHubCredentials, TestKeyringHit*DockerHub: Hub's entry serves
    /// Hub images however they are written, and nothing else.
    #[test]
    fn docker_hub_entry_serves_hub_images_only() {
        let k = keyring(&[("https://index.docker.io/v1/", "hub")]);
        assert!(k.lookup("world.mesos.org/foo/bar").is_empty());
        for image in [
            "google/docker-registry",
            "jenkins",
            "index.docker.io/google/docker-registry",
            "docker.io/library/nginx",
        ] {
            assert_eq!(users(&k, image), ["hub"], "{image}");
        }
    }

    /// TestIsDefaultRegistryMatch.
    #[test]
    fn default_registry_names() {
        for (image, want) in [
            ("foo/bar", true),
            ("docker.io/foo/bar", true),
            ("index.docker.io/foo/bar", true),
            ("foo", true),
            ("", false),
            ("registry.tld/foo/bar", false),
            ("registry:5000/foo/bar", false),
            ("myhostdocker.io/foo/bar", false),
        ] {
            assert_eq!(is_default_registry_match(image), want, "{image:?}");
        }
    }

    /// TestDockerKeyringLookup and TestIssue3797: most specific key first, path prefixes are
    /// string prefixes, hosts never match partially.
    #[test]
    fn most_specific_key_first() {
        let k = keyring(&[
            ("bar.example.com/pong", "grace"),
            ("bar.example.com", "ada"),
        ]);
        assert_eq!(users(&k, "bar.example.com"), ["ada"]);
        assert_eq!(users(&k, "bar.example.com/pong"), ["grace", "ada"]);
        assert_eq!(users(&k, "bar.example.com/ping"), ["ada"]);
        assert_eq!(users(&k, "bar.example.com/pongz"), ["grace", "ada"]);
        assert_eq!(users(&k, "bar.example.com/pong/pang"), ["grace", "ada"]);
        assert!(k.lookup("example.com").is_empty());
        assert!(k.lookup("foo.example.com").is_empty());

        let k = keyring(&[("https://quay.io/v1/", "rex")]);
        for image in ["quay.io", "quay.io/foo", "quay.io/foo/bar"] {
            assert_eq!(users(&k, image), ["rex"], "{image}");
        }
    }

    #[test]
    fn a_glob_key_comes_after_the_exact_host() {
        let k = keyring(&[("*.example.com", "wild"), ("a.example.com", "exact")]);
        assert_eq!(users(&k, "a.example.com/app"), ["exact", "wild"]);
    }

    #[test]
    fn docker_config_forms() {
        let json = format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}", "email": "a@b.c"}},
                "padless.example.com": {{"auth": "{}"}},
                "plain.example.com": {{"username": "u", "password": "p"}},
                "both.example.com": {{"auth": "{}", "username": "ignored", "password": "ignored"}},
                "token.example.com": {{"identitytoken": "idt", "registrytoken": "rgt"}}
            }}}}"#,
            b64("hubuser:hub:pass"),
            b64("pad:less").trim_end_matches('='),
            b64("auth-user:auth-pass"),
        );
        let entries: HashMap<String, RegistryAuth> = parse_docker_config(json.as_bytes())
            .unwrap()
            .into_iter()
            .collect();
        let hub = &entries["https://index.docker.io/v1/"];
        assert_eq!(hub.username, "hubuser");
        assert_eq!(
            hub.password.expose_secret(),
            "hub:pass",
            "split at the first colon"
        );
        assert_eq!(entries["padless.example.com"].username, "pad");
        assert_eq!(entries["plain.example.com"].password.expose_secret(), "p");
        assert_eq!(
            entries["both.example.com"].username, "auth-user",
            "auth wins"
        );
        let token = &entries["token.example.com"];
        assert_eq!(
            token.identity_token.as_ref().unwrap().expose_secret(),
            "idt"
        );
        assert_eq!(
            token.registry_token.as_ref().unwrap().expose_secret(),
            "rgt"
        );

        // Legacy .dockercfg: the bare map.
        let legacy = format!(r#"{{"r.example.com": {{"auth": "{}"}}}}"#, b64("old:pw"));
        let entries = parse_docker_config(legacy.as_bytes()).unwrap();
        assert_eq!(entries[0].1.username, "old");
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        let bad = br#"{"auths": {"r.example.com": {"auth": "bm90LWEtcGFpcg=="}}}"#; // "not-a-pair"
        let e = parse_docker_config(bad).unwrap_err();
        assert!(e.contains("r.example.com") && !e.contains("bm90"), "{e}");
        let e = parse_docker_config(b"{\"auths\": {\"r\": {\"password\": \"hunter2\"").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let mut a = auth("alice");
        a.identity_token = Some("tok-123".to_string().into());
        let c = Credential {
            key: "r.example.com".into(),
            source: "secret ns/regcred".into(),
            auth: a.clone(),
        };
        let text = format!("{c:?} {a:?} {:?}", vec![c.clone()]);
        for secret in ["alice", "alice-password", "tok-123"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("secret ns/regcred"),
            "the source is shown: {text}"
        );
        assert_eq!(
            redact("denied for alice-password and tok-123", [&a]),
            "denied for [REDACTED] and [REDACTED]"
        );
    }

    #[test]
    fn key_normalization() {
        for (loc, key) in [
            ("https://index.docker.io/v1/", "index.docker.io"),
            ("index.docker.io", "index.docker.io"),
            ("http://r.example.com:5000/v2/", "r.example.com:5000"),
            ("https://r.example.com/team", "r.example.com/team"),
            ("r.example.com/v1/team", "r.example.com/team"),
            ("r.example.com/", "r.example.com"),
        ] {
            assert_eq!(normalize_key(loc), key, "{loc}");
        }
    }

    struct FakeSecrets(Mutex<(u32, BTreeMap<String, Vec<u8>>)>);

    impl SecretReader for FakeSecrets {
        fn get(&self, namespace: &str, name: &str) -> BoxFuture<'_, SecretRead> {
            let found = (namespace, name) == ("redis", "regcred");
            Box::pin(async move {
                let mut s = self.0.lock().unwrap();
                s.0 += 1;
                Ok(found.then(|| s.1.clone()))
            })
        }
    }

    fn dockerconfigjson(host: &str, user: &str, password: &str) -> Vec<u8> {
        format!(
            r#"{{"auths": {{"{host}": {{"auth": "{}"}}}}}}"#,
            b64(&format!("{user}:{password}"))
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn every_source_form_and_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, dockerconfigjson("r.example.com", "from-file", "a")).unwrap();
        // A mounted secret, as the kubelet lays it out.
        let secrets = dir.path().join("pull-secrets");
        let data = secrets.join("regcred").join("..2026_11_23_00_00_00.1");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            data.join(".dockerconfigjson"),
            dockerconfigjson("r.example.com/team", "from-dir", "b"),
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_11_23_00_00_00.1", secrets.join("regcred/..data"))
            .unwrap();
        std::os::unix::fs::symlink(
            "..data/.dockerconfigjson",
            secrets.join("regcred/.dockerconfigjson"),
        )
        .unwrap();
        let legacy = secrets.join("old");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(
            legacy.join(".dockercfg"),
            format!(
                r#"{{"*.example.com": {{"auth": "{}"}}}}"#,
                b64("from-dockercfg:c")
            ),
        )
        .unwrap();
        let api = Arc::new(FakeSecrets(Mutex::new((
            0,
            BTreeMap::from([(
                ".dockerconfigjson".to_string(),
                dockerconfigjson("r.example.com", "from-secret", "d"),
            )]),
        ))));
        let creds = Credentials::new(
            vec![
                CredentialSource::DockerConfig(file),
                CredentialSource::DockerConfigDir(secrets),
                CredentialSource::Secret {
                    namespace: "redis".into(),
                    name: "regcred".into(),
                },
                CredentialSource::Secret {
                    namespace: "redis".into(),
                    name: "missing".into(),
                },
            ],
            false,
            Some(api.clone()),
        );
        let found = creds
            .lookup(&ImageRef::parse("r.example.com/team/app:1").unwrap())
            .await;
        let tried: Vec<String> = found.credentials.iter().map(Credential::describe).collect();
        assert_eq!(
            tried,
            [
                format!(
                    "dockerConfigDir {} (regcred/.dockerconfigjson) (key r.example.com/team)",
                    dir.path().join("pull-secrets").display()
                ),
                format!(
                    "dockerConfig {} (key r.example.com)",
                    dir.path().join("config.json").display()
                ),
                "secret redis/regcred (key r.example.com)".to_string(),
                format!(
                    "dockerConfigDir {} (old/.dockercfg) (key *.example.com)",
                    dir.path().join("pull-secrets").display()
                ),
            ]
        );
        assert_eq!(found.problems, ["secret redis/missing: not found"]);
        // Within the cache time the secret is not read again; after invalidate() it is.
        creds
            .lookup(&ImageRef::parse("r.example.com/x:1").unwrap())
            .await;
        assert_eq!(api.0.lock().unwrap().0, 2, "regcred and missing, once each");
        creds.invalidate();
        creds
            .lookup(&ImageRef::parse("r.example.com/x:1").unwrap())
            .await;
        assert_eq!(api.0.lock().unwrap().0, 4);
    }

    #[tokio::test]
    async fn rotation_is_seen_on_the_next_lookup_and_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, dockerconfigjson("r.example.com", "u", "old")).unwrap();
        let creds = Credentials::new(
            vec![CredentialSource::DockerConfig(file.clone())],
            false,
            None,
        );
        let image = ImageRef::parse("r.example.com/app:1").unwrap();
        let before = creds.fingerprint().await;
        assert_eq!(
            before,
            creds.fingerprint().await,
            "stable while nothing changes"
        );
        std::fs::write(&file, dockerconfigjson("r.example.com", "u", "new")).unwrap();
        let found = creds.lookup(&image).await;
        assert_eq!(found.credentials[0].auth.password.expose_secret(), "new");
        assert_ne!(before, creds.fingerprint().await);
    }

    /// The kubelet's atomic writer: the data in a new timestamped folder, then `..data` swapped.
    fn mount(secret_dir: &Path, version: u32, content: &[u8]) {
        let data = format!("..2026_11_23_00_00_0{version}.1");
        std::fs::create_dir_all(secret_dir.join(&data)).unwrap();
        std::fs::write(secret_dir.join(&data).join(".dockerconfigjson"), content).unwrap();
        let tmp = secret_dir.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, secret_dir.join("..data")).unwrap();
        let link = secret_dir.join(".dockerconfigjson");
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("..data/.dockerconfigjson", link).unwrap();
        }
    }

    #[tokio::test]
    async fn files_are_read_once_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, dockerconfigjson("r.example.com", "file-a", "x")).unwrap();
        let secrets = dir.path().join("pull-secrets");
        mount(
            &secrets.join("regcred"),
            1,
            &dockerconfigjson("r.example.com/team", "dir-a", "x"),
        );
        let creds = Credentials::new(
            vec![
                CredentialSource::DockerConfig(file.clone()),
                CredentialSource::DockerConfigDir(secrets.clone()),
            ],
            false,
            None,
        );
        let image = ImageRef::parse("r.example.com/team/app:1").unwrap();
        let users = || async {
            let found = creds.lookup(&image).await;
            let users: Vec<String> = found
                .credentials
                .iter()
                .map(|c| c.auth.username.clone())
                .collect();
            users
        };
        let reads = || creds.file_reads.load(Ordering::Relaxed);

        // Many pull attempts (and the fingerprints taken after refusals), one read.
        for _ in 0..50 {
            assert_eq!(users().await, ["dir-a", "file-a"]);
            creds.fingerprint().await;
        }
        assert_eq!(reads(), 1, "the files were read for every lookup");

        // Rotated: seen on the next attempt, without the watcher saying so.
        std::fs::write(&file, dockerconfigjson("r.example.com", "file-b", "xx")).unwrap();
        assert_eq!(users().await, ["dir-a", "file-b"]);
        mount(
            &secrets.join("regcred"),
            2,
            &dockerconfigjson("r.example.com/team", "dir-b", "xx"),
        );
        assert_eq!(
            users().await,
            ["dir-b", "file-b"],
            "the ..data swap is seen"
        );
        mount(
            &secrets.join("other"),
            1,
            &dockerconfigjson("r.example.com/team", "dir-new", "x"),
        );
        assert_eq!(
            users().await,
            ["dir-new", "dir-b", "file-b"],
            "a secret mounted beside is seen (other/ sorts before regcred/)"
        );
        let settled = reads();
        users().await;
        assert_eq!(reads(), settled, "nothing changed since");

        // A rewrite that keeps the size and the mtime (same tick) escapes the stat check, so
        // the watcher's word forces the read.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, dockerconfigjson("r.example.com", "file-c", "xx")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(users().await, ["dir-new", "dir-b", "file-b"]);
        creds.files_changed();
        assert_eq!(users().await, ["dir-new", "dir-b", "file-c"]);
    }

    /// Pulls that start together wait for one read rather than each reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_share_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, dockerconfigjson("r.example.com", "u", "x")).unwrap();
        let creds = Arc::new(Credentials::new(
            vec![CredentialSource::DockerConfig(file)],
            false,
            None,
        ));
        let image = ImageRef::parse("r.example.com/app:1").unwrap();
        let lookups: Vec<_> = (0..20)
            .map(|_| {
                let (creds, image) = (creds.clone(), image.clone());
                tokio::spawn(async move { creds.lookup(&image).await.credentials.len() })
            })
            .collect();
        for lookup in lookups {
            assert_eq!(lookup.await.unwrap(), 1);
        }
        assert_eq!(creds.file_reads.load(Ordering::Relaxed), 1);
    }

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
            let (_, bytes) = first_node_default(files).unwrap();
            parse_docker_config(&bytes).unwrap()[0].1.username.clone()
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

    /// The `secret:` source through kube's client: one GET by name, nothing else; 404 is "not
    /// found" and 403 says which RBAC rule is missing.
    #[tokio::test]
    async fn secrets_are_read_by_name_through_the_api() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let server = tokio::spawn(async move {
            let mut paths = Vec::new();
            for (status, body) in [
                (
                    200,
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "regcred", "namespace": "redis"},
                        "type": "kubernetes.io/dockerconfigjson",
                        "data": {".dockerconfigjson": b64(r#"{"auths": {"r.example.com": {"auth": "dTpw"}}}"#)}
                    }),
                ),
                (
                    404,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "secrets \"gone\" not found"}),
                ),
                (
                    403,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "forbidden"}),
                ),
            ] {
                let (request, send) = handle.next_request().await.expect("a request");
                paths.push(format!("{} {}", request.method(), request.uri().path()));
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
            paths
        });
        let creds = Credentials::new(
            ["regcred", "gone", "private"]
                .map(|name| CredentialSource::Secret {
                    namespace: "redis".into(),
                    name: name.into(),
                })
                .to_vec(),
            false,
            Some(Arc::new(client)),
        );
        let found = creds
            .lookup(&ImageRef::parse("r.example.com/app:1").unwrap())
            .await;
        assert_eq!(found.credentials.len(), 1);
        assert_eq!(found.credentials[0].auth.username, "u");
        assert_eq!(found.problems[0], "secret redis/gone: not found");
        assert!(
            found.problems[1].contains("needs `get` on secrets \"private\" in namespace \"redis\""),
            "{}",
            found.problems[1]
        );
        assert_eq!(
            server.await.unwrap(),
            [
                "GET /api/v1/namespaces/redis/secrets/regcred",
                "GET /api/v1/namespaces/redis/secrets/gone",
                "GET /api/v1/namespaces/redis/secrets/private",
            ]
        );
    }
}
