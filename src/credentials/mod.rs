//! Registry credentials, found and matched the way the kubelet does, so that whatever works
//! for an operator's pods works for prepuller.
//!
//! Files are read once and kept until they change: the agent's watcher says so
//! ([`Credentials::files_changed`]), and every lookup also compares their size and mtime (a few
//! `stat`s, no reads), so a change is seen even where the watcher cannot follow it. Reads and
//! `stat`s run in `spawn_blocking`, never on the async worker threads. Secrets read through the
//! Kubernetes API are cached for a short time. A rotated password is thus used on the next
//! attempt without a restart.
//! Secrets live in [`SecretString`](secrecy::SecretString)s: they print as `[REDACTED]` in
//! Debug output and have no Display, so they cannot reach a log, an error, `/status` or a
//! metric by accident.
//!
//! - `source`: the sources as declared; `auth`: what the runtime is sent for one registry;
//! - `docker_config`: config.json / `.dockercfg` parsing; `keyring`: the kubelet's matching;
//! - `files`: the file sources, their cache and stamps; `secret`: Secrets read through the API;
//! - `document`: what reading a source yields, and its problems; this file: the lookup per image;
//! - `provider_plugin`: the kubelet's exec credential-provider plugins, run per image and cached.

mod docker_config;
mod document;
mod files;
mod keyring;
mod provider_plugin;
mod secret;
#[cfg(test)]
pub(crate) mod testing;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub use docker_config::{DockerConfigError, parse_docker_config};
pub use document::{Problem, ProblemKind};
pub use keyring::{Credential, Keyring, is_default_registry_match, normalize_key, urls_match};
pub use provider_plugin::{PluginError, ResponseError};
pub use secret::{SecretError, SecretRead, SecretReader, secret_reader};

use crate::config::CredentialSource;
use crate::reference::ImageRef;
use crate::runtime::RegistryAuth;
use document::SourceRead;
use files::FileCache;
use provider_plugin::PluginSources;
use secret::SecretCache;

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

/// What a lookup found for one image.
#[derive(Debug, Default)]
pub struct Found {
    /// In the order to try them.
    pub credentials: Vec<Credential>,
    /// Sources that could not be read, with why (never with their content).
    pub problems: Vec<Problem>,
}

/// The credentials of the current config: looks them up per image. Files are read once and
/// again only when they change; secrets are cached for a minute.
pub struct Credentials {
    sources: Arc<[CredentialSource]>,
    pub anonymous_fallback: bool,
    secrets: SecretCache,
    files: FileCache,
    plugins: PluginSources,
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
            plugins: PluginSources::new(&sources),
            sources: sources.into(),
            anonymous_fallback,
            secrets: SecretCache::new(secrets),
            files: FileCache::default(),
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

    /// The credentials to try for `image`, from the current content of every source, and what
    /// the credential-provider plugins matching it return (run unless their answer is cached).
    pub async fn lookup(&self, image: &ImageRef) -> Found {
        let (mut keyring, mut problems) = self.keyring().await;
        let name = image.name();
        self.plugins
            .add_to(&name, &mut keyring, &mut problems)
            .await;
        Found {
            credentials: keyring.lookup(&name).into_iter().cloned().collect(),
            problems,
        }
    }

    /// Forgets cached secrets and plugin answers, so the next lookup reads and asks again
    /// (after a 401: they may have been rotated). Files need not be forgotten: a change to them
    /// is seen anyway.
    pub fn invalidate(&self) {
        self.secrets.clear();
        self.plugins.clear();
    }

    /// A credential file or directory changed (the agent's watcher saw it): the next lookup
    /// reads the files again, even if their size and mtime look the same.
    pub fn files_changed(&self) {
        self.files.changed();
    }

    /// A hash of every credential's material: it changes when any source changes. Used to
    /// retry images that were refused, as soon as the credentials change.
    pub async fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for read in self.read().await {
            read.documents.hash(&mut h);
        }
        h.finish()
    }

    async fn keyring(&self) -> (Keyring, Vec<Problem>) {
        let mut keyring = Keyring::default();
        let mut problems = Vec::new();
        for mut read in self.read().await {
            problems.append(&mut read.problems);
            for doc in read.documents {
                match parse_docker_config(&doc.bytes) {
                    Ok(entries) => keyring.add(&doc.name, entries),
                    Err(e) => problems.push(Problem::new(doc.name, e)),
                }
            }
        }
        (keyring, problems)
    }

    /// What every source holds now, in their order: a file source's from the file cache, a
    /// secret's through the secret cache.
    async fn read(&self) -> Vec<SourceRead> {
        let files = self.files.current(&self.sources).await;
        let mut out = Vec::with_capacity(self.sources.len());
        for (source, read) in self.sources.iter().zip(&files.sources) {
            out.push(match source {
                CredentialSource::Secret { namespace, name } => {
                    self.secrets.document(source, namespace, name).await
                }
                _ => read.clone().unwrap_or_default(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use secrecy::ExposeSecret;

    use super::*;
    use testing::{auth, b64, dockerconfigjson};

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

    #[tokio::test]
    async fn every_source_form_and_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, dockerconfigjson("r.example.com", "from-file", "a")).unwrap();
        // A mounted secret, as the kubelet lays it out.
        let secrets = dir.path().join("pull-secrets");
        mount(
            &secrets.join("regcred"),
            0,
            &dockerconfigjson("r.example.com/team", "from-dir", "b"),
        );
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
        assert_eq!(
            found
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["secret redis/missing: not found"]
        );
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
        let reads = || creds.files.reads();

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
        assert_eq!(creds.files.reads(), 1);
    }
}
