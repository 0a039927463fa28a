//! The kubelet's exec credential-provider plugins (ECR, Artifact Registry, ACR), run the way the
//! kubelet runs them (pkg/credentialprovider/plugin): its own `CredentialProviderConfig` is
//! read, a provider whose `matchImages` match an image is executed from the bin dir with its
//! `args` and `env` (added to prepuller's environment), a `CredentialProviderRequest` on stdin,
//! and its `CredentialProviderResponse` is cached by its `cacheKeyType` for its `cacheDuration`
//! (else the provider's `defaultCacheDuration`; zero: not cached). Its `auth` entries join the
//! keyring like docker config entries.
//!
//! Unlike the kubelet: the timeout is a setting (default its fixed minute); one plugin runs
//! once at a time per provider, so that pulls starting together for one registry run it once
//! (the kubelet singleflights per image only), and waiters do not each wait out a plugin that
//! has just timed out; a refusal ([`PluginSources::clear`]) drops the cache, so the next
//! attempt asks the plugin again rather than resending what the registry refused.
//! A plugin's stderr is read but shown only when it fails, shortened and with the config's env
//! values scrubbed; its stdout (the passwords) never reaches a message.

mod api;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use api::ResponseError;
use api::{CacheKeyType, ProviderSpec};

use super::document::{Problem, ProblemKind};
use super::keyring::{Keyring, urls_match};
use crate::config::{ConfigError, CredentialSource};
use crate::runtime::RegistryAuth;

/// What a plugin may print: a response is a few KiB; more is a broken plugin.
const MAX_STDOUT: usize = 1 << 20;
/// What of a failed plugin's stderr is kept for the message.
const MAX_STDERR_SHOWN: usize = 512;

/// Why a plugin gave no credentials for an image. Names the image; the provider is named by
/// the [`Problem`] it travels in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("cannot run {path} for image {image}: {source} (is the plugin in binDir, executable?)")]
    Spawn {
        path: PathBuf,
        image: String,
        source: Arc<io::Error>,
    },
    #[error(
        "gave no answer for image {image} within {} and was killed (kubeletCredentialProviders.timeout){stderr}", humantime::format_duration(*timeout)
    )]
    Timeout {
        image: String,
        timeout: Duration,
        stderr: String,
    },
    #[error("failed for image {image}: {status}{stderr}")]
    Failed {
        image: String,
        status: String,
        stderr: String,
    },
    #[error("gave no usable answer for image {image}: {why}{stderr}")]
    BadResponse {
        image: String,
        why: ResponseError,
        stderr: String,
    },
    #[error(
        "needs a pod's service account token (tokenAttributes), which prepuller, pulling for no pod, does not have; no credentials for image {image}"
    )]
    NeedsServiceAccountToken { image: String },
}

/// Every `kubeletCredentialProviders` source of a config, its file read on first use.
#[derive(Default)]
pub(super) struct PluginSources {
    sources: Vec<PluginSource>,
}

struct PluginSource {
    /// `kubeletCredentialProviders /path`, for messages.
    what: String,
    config: PathBuf,
    bin_dir: PathBuf,
    timeout: Duration,
    /// Read once, as the kubelet reads it once at start.
    providers: OnceCell<Result<Vec<Provider>, ConfigError>>,
}

impl PluginSources {
    pub(super) fn new(sources: &[CredentialSource]) -> Self {
        PluginSources {
            sources: sources
                .iter()
                .filter_map(|s| match s {
                    CredentialSource::KubeletCredentialProviders {
                        config,
                        bin_dir,
                        timeout,
                    } => Some(PluginSource {
                        what: s.to_string(),
                        config: config.clone(),
                        bin_dir: bin_dir.clone(),
                        timeout: *timeout,
                        providers: OnceCell::new(),
                    }),
                    _ => None,
                })
                .collect(),
        }
    }

    /// Adds to `keyring` what every provider matching `image` (a name without tag, as the
    /// kubelet passes it) returns, running plugins whose answer is not cached.
    pub(super) async fn add_to(
        &self,
        image: &str,
        keyring: &mut Keyring,
        problems: &mut Vec<Problem>,
    ) {
        for source in &self.sources {
            let providers = source.providers.get_or_init(|| source.load()).await;
            let providers = match providers {
                Ok(p) => p,
                Err(e) => {
                    problems.push(Problem::new(
                        &source.what,
                        ProblemKind::ProviderConfig(e.clone()),
                    ));
                    continue;
                }
            };
            for provider in providers {
                match provider.provide(image, source.timeout).await {
                    None => {}
                    Some(Ok(entries)) => keyring.add(&provider.label, entries.as_ref().clone()),
                    Some(Err(e)) => problems.push(Problem::new(&provider.label, e)),
                }
            }
        }
    }

    /// Forgets every cached answer: the next lookup runs the plugins again.
    pub(super) fn clear(&self) {
        for source in &self.sources {
            if let Some(Ok(providers)) = source.providers.get() {
                for p in providers {
                    p.cache.lock().unwrap().clear();
                }
            }
        }
    }

    /// Plugin runs so far (tests).
    #[cfg(test)]
    fn runs(&self) -> u64 {
        self.sources
            .iter()
            .filter_map(|s| s.providers.get()?.as_ref().ok())
            .flatten()
            .map(|p| p.finished.load(Ordering::SeqCst))
            .sum()
    }
}

impl PluginSource {
    async fn load(&self) -> Result<Vec<Provider>, ConfigError> {
        let text = tokio::fs::read_to_string(&self.config).await.map_err(|e| {
            ConfigError::whole_file(
                &self.config,
                format!("cannot read the kubelet's CredentialProviderConfig: {e}"),
            )
        })?;
        let specs = api::parse_config(&text, &self.config)?;
        Ok(specs
            .into_iter()
            .map(|spec| Provider::new(spec, &self.bin_dir))
            .collect())
    }
}

/// Credentials one run returned: `(matchImage key, credential)`.
type Entries = Arc<Vec<(String, RegistryAuth)>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Image(String),
    Registry(String),
    Global,
}

impl CacheKey {
    /// The keys an image's answer may be cached under, in the kubelet's order of lookup.
    fn for_image(image: &str) -> [CacheKey; 3] {
        [
            CacheKey::Image(image.to_string()),
            CacheKey::Registry(registry(image).to_string()),
            CacheKey::Global,
        ]
    }

    fn new(kind: CacheKeyType, image: &str) -> CacheKey {
        match kind {
            CacheKeyType::Image => CacheKey::Image(image.to_string()),
            CacheKeyType::Registry => CacheKey::Registry(registry(image).to_string()),
            CacheKeyType::Global => CacheKey::Global,
        }
    }
}

/// The kubelet's registry of an image: everything before the first `/` (host and port).
fn registry(image: &str) -> &str {
    image.split('/').next().unwrap_or(image)
}

struct Provider {
    spec: ProviderSpec,
    path: PathBuf,
    /// `kubelet credential provider <name>`: the source of its credentials in messages.
    label: String,
    /// Expired entries are dropped at each lookup: no timer.
    cache: Mutex<HashMap<CacheKey, (Instant, Entries)>>,
    /// Held while the plugin runs: one run at a time.
    run: tokio::sync::Mutex<()>,
    /// Runs finished, and the number of the last one that timed out.
    finished: AtomicU64,
    last_timeout: AtomicU64,
}

impl Provider {
    fn new(spec: ProviderSpec, bin_dir: &Path) -> Self {
        Provider {
            path: bin_dir.join(&spec.name),
            label: format!("kubelet credential provider {}", spec.name),
            spec,
            cache: Mutex::default(),
            run: tokio::sync::Mutex::new(()),
            finished: AtomicU64::new(0),
            last_timeout: AtomicU64::new(0),
        }
    }

    fn matches(&self, image: &str) -> bool {
        self.spec.match_images.iter().any(|glob| {
            let glob = glob
                .strip_prefix("https://")
                .or_else(|| glob.strip_prefix("http://"))
                .unwrap_or(glob);
            urls_match(glob, image)
        })
    }

    /// The credentials for `image`, cached or from a run; `None` when the provider does not
    /// match it.
    async fn provide(
        &self,
        image: &str,
        timeout: Duration,
    ) -> Option<Result<Entries, PluginError>> {
        if !self.matches(image) {
            return None;
        }
        if self.spec.token_attributes {
            return Some(Err(PluginError::NeedsServiceAccountToken {
                image: image.to_string(),
            }));
        }
        if let Some(hit) = self.cached(image) {
            return Some(Ok(hit));
        }
        let seen = self.finished.load(Ordering::SeqCst);
        let _running = self.run.lock().await;
        // A run that finished while this one waited may have answered for it too.
        if let Some(hit) = self.cached(image) {
            return Some(Ok(hit));
        }
        if self.last_timeout.load(Ordering::SeqCst) > seen {
            return Some(Err(PluginError::Timeout {
                image: image.to_string(),
                timeout,
                stderr: " (a run for another image timed out just before)".to_string(),
            }));
        }
        let result = self.exec(image, timeout).await;
        let run = self.finished.fetch_add(1, Ordering::SeqCst) + 1;
        Some(match result {
            Ok(response) => {
                let entries: Entries = Arc::new(response.auth);
                let ttl = response
                    .cache_duration
                    .unwrap_or(self.spec.default_cache_duration);
                if !ttl.is_zero() {
                    self.cache.lock().unwrap().insert(
                        CacheKey::new(response.cache_key_type, image),
                        (Instant::now() + ttl, entries.clone()),
                    );
                }
                Ok(entries)
            }
            Err(e) => {
                if matches!(e, PluginError::Timeout { .. }) {
                    self.last_timeout.store(run, Ordering::SeqCst);
                }
                Err(e)
            }
        })
    }

    fn cached(&self, image: &str) -> Option<Entries> {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap();
        cache.retain(|_, (expires, _)| *expires > now);
        CacheKey::for_image(image)
            .iter()
            .find_map(|key| cache.get(key))
            .map(|(_, entries)| entries.clone())
    }

    /// One run of the plugin; killed when it outlasts `timeout` or the caller goes away.
    async fn exec(&self, image: &str, timeout: Duration) -> Result<api::Response, PluginError> {
        let mut child = tokio::process::Command::new(&self.path)
            .args(&self.spec.args)
            .envs(self.spec.env.iter().map(|e| (&e.name, &e.value)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PluginError::Spawn {
                path: self.path.clone(),
                image: image.to_string(),
                source: Arc::new(e),
            })?;
        let request = api::request(&self.spec.api_version, image);
        let (mut stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let stderr_buf = Arc::new(Mutex::new(Vec::new()));
        let run = async {
            let write = async {
                // A plugin may exit without reading its stdin: a closed pipe is its business.
                let _ = stdin.write_all(&request).await;
                drop(stdin);
            };
            let (_, out, _, status) = tokio::join!(
                write,
                read_capped(stdout, MAX_STDOUT, None),
                read_capped(stderr, MAX_STDERR_SHOWN * 4, Some(&stderr_buf)),
                child.wait()
            );
            (out, status)
        };
        let ended = tokio::time::timeout(timeout, run).await;
        let stderr = || self.shown_stderr(&stderr_buf.lock().unwrap());
        let image = image.to_string();
        let Ok((stdout, status)) = ended else {
            // Dropping the child would kill it too; killing here also reaps it.
            let _ = child.kill().await;
            return Err(PluginError::Timeout {
                image,
                timeout,
                stderr: stderr(),
            });
        };
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => {
                return Err(PluginError::Failed {
                    image,
                    status: describe_exit(status),
                    stderr: stderr(),
                });
            }
            Err(e) => {
                return Err(PluginError::Failed {
                    image,
                    status: format!("cannot wait for it: {e}"),
                    stderr: stderr(),
                });
            }
        }
        let stdout = match stdout {
            Ok(out) if out.len() < MAX_STDOUT => out,
            Ok(_) => {
                return Err(PluginError::BadResponse {
                    image,
                    why: ResponseError::Invalid("its output is larger than 1 MiB".into()),
                    stderr: stderr(),
                });
            }
            Err(e) => {
                return Err(PluginError::Failed {
                    image,
                    status: format!("cannot read its output: {e}"),
                    stderr: stderr(),
                });
            }
        };
        api::parse_response(&stdout, &self.spec.api_version).map_err(|why| {
            PluginError::BadResponse {
                image,
                why,
                stderr: stderr(),
            }
        })
    }

    /// `; its stderr: …`: one line, at most [`MAX_STDERR_SHOWN`] bytes, the config's env
    /// values (which may be keys) scrubbed; empty when it said nothing.
    fn shown_stderr(&self, raw: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(raw).into_owned();
        for env in &self.spec.env {
            if env.value.len() >= 3 {
                text = text.replace(&env.value, "[REDACTED]");
            }
        }
        let mut text: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        if text.is_empty() {
            return String::new();
        }
        if text.len() > MAX_STDERR_SHOWN {
            let mut end = MAX_STDERR_SHOWN;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        format!("; its stderr: {text}")
    }
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// Reads `from` to its end, keeping at most `cap` bytes (the rest is drained, so that the
/// plugin never blocks on a full pipe); into `into` as it comes when given, so that what a
/// killed plugin said is kept.
async fn read_capped(
    mut from: impl AsyncRead + Unpin,
    cap: usize,
    into: Option<&Mutex<Vec<u8>>>,
) -> io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
        if let Some(into) = into {
            into.lock().unwrap().extend_from_slice(&buf[..room]);
        }
    }
}

#[cfg(test)]
mod tests;
