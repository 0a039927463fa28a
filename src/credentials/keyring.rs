//! The keyring: credentials by normalized key, matched against an image the way the kubelet's
//! `BasicDockerKeyring` does (pkg/credentialprovider/keyring.go).

use std::collections::HashMap;

use super::RegistryAuth;

/// Docker Hub's key in docker config files, and the kubelet's fallback for Hub images.
const DOCKER_HUB_KEY: &str = "index.docker.io";

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

/// A schemeless URL taken apart: host labels, port (`None` when absent or empty) and path
/// (everything from the first `/`, empty when there is none: the empty prefix).
struct UrlParts<'a> {
    labels: Vec<&'a str>,
    port: Option<&'a str>,
    path: &'a str,
}

fn split_url(url: &str) -> UrlParts<'_> {
    let (hostport, path) = match url.find('/') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (hostport, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (hostport, None),
        }
    };
    UrlParts {
        labels: host.split('.').collect(),
        port: port.filter(|p| !p.is_empty()),
        path,
    }
}

/// Whether `target` (a schemeless image name) matches the keyring key `glob`: same port, same
/// number of host labels, each label a glob, and the key's path a string prefix of the image's.
pub fn urls_match(glob: &str, target: &str) -> bool {
    let (glob, target) = (split_url(glob), split_url(target));
    if glob.port != target.port
        || glob.labels.len() != target.labels.len()
        || !target.path.starts_with(glob.path)
    {
        return false;
    }
    glob.labels.iter().zip(&target.labels).all(|(g, t)| {
        glob::Pattern::new(g).is_ok_and(|p| p.matches_with(t, glob::MatchOptions::new()))
    })
}

/// Whether an image name pulls from Docker Hub, by the kubelet's rule.
pub fn is_default_registry_match(image: &str) -> bool {
    match image.split_once('/') {
        None => !image.is_empty(),
        Some((first, _)) => {
            !first.is_empty()
                && (first == "docker.io" || first == DOCKER_HUB_KEY || !first.contains(['.', ':']))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::testing::auth;

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
}
