//! Image references, parsed and normalized as the kubelet and containerd do.
//!
//! This follows distribution/reference v0.6 (`ParseNormalizedNamed` + `ParseDockerRef`), which
//! both the kubelet and containerd's CRI plugin use:
//!
//! ```text
//! reference := name [":" tag] ["@" digest]
//! name      := [domain "/"] path
//! domain    := host [":" port]          host: dns-ish components, or "[" ipv6 "]"
//! path      := component ["/" component]*
//! component := [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! tag       := [\w][\w.-]{0,127}
//! digest    := algorithm ":" hex        (only sha256, sha384 and sha512 are accepted)
//! ```
//!
//! Normalization: the first `/`-separated component is a registry only when it is `localhost`,
//! contains `.` or `:`, or has an uppercase letter; otherwise the registry is `docker.io`.
//! `index.docker.io` becomes `docker.io`, one-component Docker Hub paths get `library/`, and a
//! reference with neither tag nor digest gets `:latest`.

use std::fmt;
use std::str::FromStr;

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Measured on the normalized path only (so `library/` counts, the domain does not), in bytes.
/// That is distribution/reference >= v0.6.0 (PR #9), the version kubelet and containerd vendor;
/// older releases measured domain + "/" + path.
const MAX_PATH_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalized image reference. Invariant: at least one of `tag` and `digest` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The reference as written (for [`ImageRef::from_parts`], the parts joined back together).
    pub input: String,
    pub reason: Invalid,
}

/// Which rule a reference breaks, one variant per rule. The texts are quoted by config errors,
/// the README and tests, so they stay exactly as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("reference is empty")]
    Empty,
    /// A bare image ID would otherwise parse as docker.io/library/<hex>.
    #[error("cannot specify 64-byte hexadecimal strings")]
    ImageId,
    #[error("missing repository name")]
    MissingRepository,
    #[error("registry is empty")]
    EmptyRegistry,
    #[error("registry {registry:?} must not have a scheme; write the host, e.g. {host:?}")]
    RegistryWithScheme { registry: String, host: String },
    #[error("registry {registry:?} must not contain a tag or digest")]
    RegistryWithTagOrDigest { registry: String },
    #[error(
        "registry {registry:?} would be read as a docker hub namespace; \
         a registry needs a '.', a ':port', or to be localhost"
    )]
    RegistryReadAsNamespace { registry: String },
    #[error("invalid registry domain {domain:?}: unclosed '['")]
    DomainUnclosedBracket { domain: String },
    #[error("invalid registry domain {domain:?}: ipv6 address must be hex digits and ':' only")]
    DomainIpv6 { domain: String },
    #[error(
        "invalid registry domain {domain:?}: host parts must be letters and digits with inner '-'"
    )]
    DomainHost { domain: String },
    #[error("invalid registry domain {domain:?}: port must be digits")]
    DomainPort { domain: String },
    #[error("repository is empty")]
    EmptyRepository,
    #[error("repository must not contain a tag or digest; set them separately")]
    RepositoryWithTagOrDigest,
    #[error(
        "repository starts with registry {first:?} (a registry with a port) and `registry` is \
         set too; name the registry in one place"
    )]
    RepositoryWithRegistryPort { first: String },
    #[error("repository {repository:?} is a registry with a port and no repository path")]
    RepositoryOnlyRegistry { repository: String },
    #[error("repository name must be lowercase")]
    Uppercase,
    #[error("repository path has an empty component (double or trailing '/')")]
    EmptyPathComponent,
    #[error(
        "invalid repository path component {component:?}: use lowercase letters and digits \
         joined by '.', '_', '__' or '-'"
    )]
    PathComponent { component: String },
    #[error("repository name must not be more than {MAX_PATH_LEN} characters (got {len})")]
    PathTooLong { len: usize },
    #[error("tag is empty")]
    EmptyTag,
    #[error("tag must not be more than {MAX_TAG_LEN} characters (got {len})")]
    TagTooLong { len: usize },
    #[error(
        "invalid tag {tag:?}: use letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    Tag { tag: String },
    #[error("invalid digest {digest:?}: expected <algorithm>:<hex>, e.g. sha256:<64 hex>")]
    DigestSyntax { digest: String },
    #[error("unsupported digest algorithm {algorithm:?} (use sha256, sha384 or sha512)")]
    DigestAlgorithm { algorithm: String },
    #[error("invalid digest {digest:?}: {algorithm} needs {want} hex characters, got {got}")]
    DigestLength {
        digest: String,
        algorithm: String,
        want: usize,
        got: usize,
    },
    #[error("invalid digest {digest:?}: hex must be lowercase")]
    DigestUppercase { digest: String },
}

impl ImageRef {
    /// Parse as the kubelet does (ParseDockerRef): normalizes, adds :latest when neither tag nor digest.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        parse_inner(s).map_err(|reason| ReferenceError {
            input: s.to_owned(),
            reason,
        })
    }

    /// Build from coordinates (config form). registry None => docker.io; it may carry a path
    /// (`gcr.io/yourproject`). repository is the path, e.g. "myrepo/cass-management-api" or
    /// "nginx" (=> library/nginx on docker.io); without `registry` it may start with one (the
    /// REC form `gcr.io/yourproject/redislabs/redis`). tag/digest optional.
    ///
    /// The result is what the kubelet makes of the joined `registry/repository:tag@digest`, and
    /// always round-trips through [`ImageRef::parse`] of its [`pull_ref`](Self::pull_ref), so a
    /// registry the parser would read as a Docker Hub namespace (e.g. `myregistry`) is refused.
    pub fn from_parts(
        registry: Option<&str>,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<ImageRef, ReferenceError> {
        from_parts_inner(registry, repository, tag, digest).map_err(|reason| {
            let mut input = String::new();
            if let Some(r) = registry {
                input.push_str(r);
                input.push('/');
            }
            input.push_str(repository);
            if let Some(t) = tag {
                input.push(':');
                input.push_str(t);
            }
            if let Some(d) = digest {
                input.push('@');
                input.push_str(d);
            }
            ReferenceError { input, reason }
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to send to the runtime: "name@digest" when a digest is set, else "name:tag".
    pub fn pull_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}/{}@{}", self.domain, self.path, d),
            (None, Some(t)) => format!("{}/{}:{}", self.domain, self.path, t),
            (None, None) => self.name(),
        }
    }

    /// The rule for a defaulted pull policy (`SetDefaults_Container`): `Always` exactly when the
    /// tag is "latest". Kubernetes looks only at the tag from `parsers.ParseImageName`, so
    /// `img:latest@sha256:...` is still "latest" (pull Always) even though the digest pins it;
    /// `img@sha256:...` has no tag and is not.
    pub fn is_latest(&self) -> bool {
        self.tag.as_deref() == Some(DEFAULT_TAG)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pull_ref())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

fn parse_inner(s: &str) -> Result<ImageRef, Invalid> {
    if s.is_empty() {
        return Err(Invalid::Empty);
    }
    // A bare image ID would otherwise parse as docker.io/library/<hex>.
    if s.len() == 64 && s.bytes().all(is_lower_hex) {
        return Err(Invalid::ImageId);
    }
    // Neither tags nor digests contain '@', and names cannot either.
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let (domain, remainder) = split_docker_domain(name_tag);
    // Any ':' left after the domain can only be the tag separator.
    let (path, tag) = match remainder.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (remainder, None),
    };
    if path.is_empty() {
        return Err(Invalid::MissingRepository);
    }
    validate_domain(domain)?;
    validated(domain, normalize_path(domain, path), tag, digest)
}

fn from_parts_inner(
    registry: Option<&str>,
    repository: &str,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<ImageRef, Invalid> {
    let registry = registry.map(RegistryPath::parse_inner).transpose()?;
    if repository.is_empty() {
        return Err(Invalid::EmptyRepository);
    }
    // A repository may carry its registry (the REC form, `gcr.io/project/redislabs/redis`):
    // read it as the kubelet reads the joined `repository:tag`.
    let (registry, path) = match (registry, repository.split_once('/')) {
        (None, Some((first, rest))) if looks_like_domain(first) => {
            validate_domain(first)?;
            (RegistryPath::new(first, None), rest)
        }
        // Joined behind another registry, the port would be read as a tag.
        (Some(_), Some((first, _))) if first.contains(':') => {
            return Err(Invalid::RepositoryWithRegistryPort {
                first: first.into(),
            });
        }
        (registry, _) => (
            registry.unwrap_or_else(|| RegistryPath::new(DEFAULT_DOMAIN, None)),
            repository,
        ),
    };
    if path.contains([':', '@']) {
        let registry_only = path == repository
            && repository.split_once(':').is_some_and(|(host, port)| {
                (host == "localhost" || host.contains('.'))
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
            });
        if registry_only {
            return Err(Invalid::RepositoryOnlyRegistry {
                repository: repository.into(),
            });
        }
        return Err(Invalid::RepositoryWithTagOrDigest);
    }
    if path.chars().any(char::is_uppercase) {
        return Err(Invalid::Uppercase);
    }
    registry.join(path, tag, digest)
}

/// A registry host with an optional path below it (`gcr.io/yourproject`): what `registry:`
/// coordinates and `imageRegistry` name. Images below it are `<host>/<path>/<repository>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryPath {
    /// Normalized: `index.docker.io` is `docker.io`.
    domain: String,
    prefix: Option<String>,
}

impl RegistryPath {
    /// Parses `host[:port][/path]`; the host must be one the kubelet reads as a registry.
    pub fn parse(s: &str) -> Result<RegistryPath, ReferenceError> {
        RegistryPath::parse_inner(s).map_err(|reason| ReferenceError {
            input: s.to_owned(),
            reason,
        })
    }

    fn parse_inner(r: &str) -> Result<RegistryPath, Invalid> {
        if r.is_empty() {
            return Err(Invalid::EmptyRegistry);
        }
        if let Some((_, after)) = r.split_once("://") {
            return Err(Invalid::RegistryWithScheme {
                registry: r.into(),
                host: after.split('/').next().unwrap_or_default().into(),
            });
        }
        let (host, prefix) = match r.split_once('/') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        };
        validate_domain(host)?;
        if !looks_like_domain(host) {
            return Err(Invalid::RegistryReadAsNamespace { registry: r.into() });
        }
        if let Some(p) = prefix {
            if p.contains([':', '@']) {
                return Err(Invalid::RegistryWithTagOrDigest { registry: r.into() });
            }
            validate_path(p)?;
        }
        Ok(RegistryPath::new(host, prefix))
    }

    fn new(host: &str, prefix: Option<&str>) -> RegistryPath {
        let domain = if host == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            host
        };
        RegistryPath {
            domain: domain.to_owned(),
            prefix: prefix.map(str::to_owned),
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The path below the host, e.g. `yourproject` of `gcr.io/yourproject`.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// `repository` below this registry path: `<host>/<path>/<repository>`, parsed as the
    /// kubelet parses that joined reference (`library/` only where the host is Docker Hub).
    pub fn image(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<ImageRef, ReferenceError> {
        self.join(repository, tag, digest)
            .map_err(|reason| ReferenceError {
                input: joined(&self.to_string(), repository, tag, digest),
                reason,
            })
    }

    fn join(
        &self,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<ImageRef, Invalid> {
        let path = match &self.prefix {
            Some(p) => format!("{p}/{repository}"),
            None => repository.to_owned(),
        };
        validated(
            &self.domain,
            normalize_path(&self.domain, &path),
            tag,
            digest,
        )
    }

    /// Whether `image` already lives below this registry path.
    pub fn holds(&self, image: &ImageRef) -> bool {
        image.domain == self.domain
            && self.prefix.as_ref().is_none_or(|p| {
                image
                    .path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

impl fmt::Display for RegistryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.domain)?;
        if let Some(p) = &self.prefix {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

/// The repository of a valid reference as written: without its registry, tag and digest, and
/// without the `library/` that Docker Hub normalization adds (`nginx:1` is `nginx`,
/// `docker.io/library/nginx` is `library/nginx`, `gcr.io/p/app@sha256:…` is `p/app`).
pub fn written_repository(reference: &str) -> &str {
    let name_tag = reference.split_once('@').map_or(reference, |(n, _)| n);
    let rest = match name_tag.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) => rest,
        _ => name_tag,
    };
    rest.split_once(':').map_or(rest, |(path, _)| path)
}

fn joined(registry: &str, repository: &str, tag: Option<&str>, digest: Option<&str>) -> String {
    let mut input = format!("{registry}/{repository}");
    if let Some(t) = tag {
        input.push(':');
        input.push_str(t);
    }
    if let Some(d) = digest {
        input.push('@');
        input.push_str(d);
    }
    input
}

/// The rules both entry points share once the domain is known and the path normalized.
fn validated(
    domain: &str,
    path: String,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<ImageRef, Invalid> {
    validate_path(&path)?;
    if let Some(t) = tag {
        validate_tag(t)?;
    }
    if let Some(d) = digest {
        validate_digest(d)?;
    }
    Ok(build(domain, path, tag, digest))
}

fn build(domain: &str, path: String, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
    let tag = match (tag, digest) {
        (None, None) => Some(DEFAULT_TAG),
        (t, _) => t,
    };
    ImageRef {
        domain: domain.to_owned(),
        path,
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    }
}

/// Docker's rule for whether the first component names a registry. Lowercase single words are
/// Docker Hub namespaces, which is why `myregistry/app` means `docker.io/myregistry/app`.
fn looks_like_domain(first: &str) -> bool {
    first == "localhost" || first.contains(['.', ':']) || first.chars().any(char::is_uppercase)
}

/// Returns (domain, rest) where rest is the path with any tag still attached.
fn split_docker_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if looks_like_domain(first) => {
            if first == LEGACY_DEFAULT_DOMAIN {
                (DEFAULT_DOMAIN, rest)
            } else {
                (first, rest)
            }
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn normalize_path(domain: &str, path: &str) -> String {
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path.to_owned()
    }
}

fn validate_domain(d: &str) -> Result<(), Invalid> {
    let (host_ok, port) = if let Some(inner) = d.strip_prefix('[') {
        // IPv6 only as hex digits and colons: no zone ids, no embedded IPv4.
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(Invalid::DomainUnclosedBracket { domain: d.into() });
        };
        let addr_ok = !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        if !addr_ok {
            return Err(Invalid::DomainIpv6 { domain: d.into() });
        }
        match after {
            "" => (true, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (true, Some(p)),
                None => (false, None),
            },
        }
    } else {
        let (host, port) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        (host.split('.').all(is_domain_component), port)
    };
    if !host_ok {
        return Err(Invalid::DomainHost { domain: d.into() });
    }
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Invalid::DomainPort { domain: d.into() });
    }
    Ok(())
}

fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        }
        _ => false,
    }
}

fn validate_path(path: &str) -> Result<(), Invalid> {
    if path.chars().any(char::is_uppercase) {
        return Err(Invalid::Uppercase);
    }
    for comp in path.split('/') {
        if comp.is_empty() {
            return Err(Invalid::EmptyPathComponent);
        }
        if !is_path_component(comp) {
            return Err(Invalid::PathComponent {
                component: comp.into(),
            });
        }
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Invalid::PathTooLong { len: path.len() });
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // One alphanumeric run is required here: at the start and after every separator.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

fn validate_tag(t: &str) -> Result<(), Invalid> {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    let Some(&first) = b.first() else {
        return Err(Invalid::EmptyTag);
    };
    if b.len() > MAX_TAG_LEN {
        return Err(Invalid::TagTooLong { len: b.len() });
    }
    if !word(first) || !b.iter().all(|&x| word(x) || x == b'.' || x == b'-') {
        return Err(Invalid::Tag { tag: t.into() });
    }
    Ok(())
}

fn validate_digest(d: &str) -> Result<(), Invalid> {
    let syntax_ok = d.split_once(':').is_some_and(|(alg, hex)| {
        is_digest_algorithm(alg) && !hex.is_empty() && hex.bytes().all(|x| x.is_ascii_hexdigit())
    });
    let Some((alg, hex)) = d.split_once(':').filter(|_| syntax_ok) else {
        return Err(Invalid::DigestSyntax { digest: d.into() });
    };
    // The algorithms the kubelet links in (crypto/sha256, crypto/sha512); case-sensitive.
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(Invalid::DigestAlgorithm {
                algorithm: alg.into(),
            });
        }
    };
    if hex.len() != want {
        return Err(Invalid::DigestLength {
            digest: d.into(),
            algorithm: alg.into(),
            want,
            got: hex.len(),
        });
    }
    if !hex.bytes().all(is_lower_hex) {
        return Err(Invalid::DigestUppercase { digest: d.into() });
    }
    Ok(())
}

/// `[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*`
fn is_digest_algorithm(alg: &str) -> bool {
    alg.split(['-', '_', '+', '.']).all(|part| {
        let b = part.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphabetic) && b.iter().all(u8::is_ascii_alphanumeric)
    })
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef";

    fn hex(n: usize) -> String {
        HEX.repeat(n / 16 + 1)[..n].to_owned()
    }

    struct Want {
        normalized: String,
        domain: String,
        path: String,
        tag: Option<String>,
        digest: Option<String>,
    }

    struct Case {
        input: String,
        want: Result<Want, &'static str>,
    }

    #[derive(Default)]
    struct Table(Vec<Case>);

    impl Table {
        fn ok(
            &mut self,
            input: impl Into<String>,
            normalized: impl Into<String>,
            domain: &str,
            path: impl Into<String>,
            tag: Option<&str>,
            digest: Option<&str>,
        ) {
            self.0.push(Case {
                input: input.into(),
                want: Ok(Want {
                    normalized: normalized.into(),
                    domain: domain.into(),
                    path: path.into(),
                    tag: tag.map(Into::into),
                    digest: digest.map(Into::into),
                }),
            });
        }

        fn err(&mut self, input: impl Into<String>, reason: &'static str) {
            self.0.push(Case {
                input: input.into(),
                want: Err(reason),
            });
        }
    }

    #[rustfmt::skip]
    fn parse_table() -> Vec<Case> {
        let d256 = format!("sha256:{}", hex(64));
        let d384 = format!("sha384:{}", hex(96));
        let d512 = format!("sha512:{}", hex(128));
        let id = hex(64);
        let mut t = Table::default();
        let lat = Some("latest");
        let hub = "docker.io";

        // Docker Hub normalization.
        let n = "docker.io/library/nginx:latest";
        t.ok("nginx", n, hub, "library/nginx", lat, None);
        t.ok("nginx:latest", n, hub, "library/nginx", lat, None);
        t.ok("library/nginx", n, hub, "library/nginx", lat, None);
        t.ok("docker.io/nginx", n, hub, "library/nginx", lat, None);
        t.ok("docker.io/library/nginx", n, hub, "library/nginx", lat, None);
        t.ok("index.docker.io/nginx", n, hub, "library/nginx", lat, None);
        t.ok("index.docker.io/library/nginx", n, hub, "library/nginx", lat, None);
        t.ok("nginx:1.25", "docker.io/library/nginx:1.25", hub, "library/nginx", Some("1.25"), None);
        t.ok("docker/docker", "docker.io/docker/docker:latest", hub, "docker/docker", lat, None);
        t.ok("index.docker.io/docker/docker", "docker.io/docker/docker:latest", hub, "docker/docker", lat, None);
        t.ok("myrepo/cass-management-api:v0.1.5", "docker.io/myrepo/cass-management-api:v0.1.5", hub, "myrepo/cass-management-api", Some("v0.1.5"), None);
        t.ok("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest", hub, "library/foo/bar", lat, None);
        t.ok("store/foo/bar", "docker.io/store/foo/bar:latest", hub, "store/foo/bar", lat, None);
        t.ok("d/docker", "docker.io/d/docker:latest", hub, "d/docker", lat, None);
        t.ok("jess/t", "docker.io/jess/t:latest", hub, "jess/t", lat, None);
        t.ok("0/0", "docker.io/0/0:latest", hub, "0/0", lat, None);
        // Only the exact string "docker.io" is normalized.
        t.ok("DOCKER.IO/foo", "DOCKER.IO/foo:latest", "DOCKER.IO", "foo", lat, None);

        // localhost and host:port.
        t.ok("localhost/foo", "localhost/foo:latest", "localhost", "foo", lat, None);
        t.ok("localhost:5000/foo/bar:tag", "localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", Some("tag"), None);
        // Without a '/', "localhost" and "host:5000" are a Hub name (and a tag).
        t.ok("localhost", "docker.io/library/localhost:latest", hub, "library/localhost", lat, None);
        t.ok("localhost:5000", "docker.io/library/localhost:5000", hub, "library/localhost", Some("5000"), None);
        t.ok("test.com:5000", "docker.io/library/test.com:5000", hub, "library/test.com", Some("5000"), None);
        t.ok("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080", hub, "library/foo_bar.com", Some("8080"), None);
        t.ok("test:5000/repo", "test:5000/repo:latest", "test:5000", "repo", lat, None);
        t.ok("test-com:8080/foo", "test-com:8080/foo:latest", "test-com:8080", "foo", lat, None);
        t.ok("test.com/repo:tag", "test.com/repo:tag", "test.com", "repo", Some("tag"), None);
        t.ok("192.168.1.1", "docker.io/library/192.168.1.1:latest", hub, "library/192.168.1.1", lat, None);
        t.ok("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", Some("5050"), None);
        t.ok("127.0.0.1:5000/library/debian", "127.0.0.1:5000/library/debian:latest", "127.0.0.1:5000", "library/debian", lat, None);
        t.ok("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", Some("some-long-tag"), None);
        t.ok("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app", Some("test.example.com"), None);
        t.ok("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", Some("xn--n3h.com"), None);

        // IPv6.
        t.ok("[::1]:5000/foo", "[::1]:5000/foo:latest", "[::1]:5000", "foo", lat, None);
        t.ok("[2001:db8::1]/foo", "[2001:db8::1]/foo:latest", "[2001:db8::1]", "foo", lat, None);
        t.ok("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", Some("tag"), None);
        t.ok("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo:latest", "[2001:db8::]:5000", "repo", lat, None);
        t.ok(format!("[2001:db8::1]:5000/repo:tag@{d256}"), format!("[2001:db8::1]:5000/repo@{d256}"), "[2001:db8::1]:5000", "repo", Some("tag"), Some(&d256));

        // An uppercase first component means a registry, and domains may be uppercase.
        t.ok("Foo/bar", "Foo/bar:latest", "Foo", "bar", lat, None);
        t.ok("FOO/bar", "FOO/bar:latest", "FOO", "bar", lat, None);
        t.ok("Docker/docker", "Docker/docker:latest", "Docker", "docker", lat, None);
        t.ok("Registry.Example.COM:5000/team/app:v1", "Registry.Example.COM:5000/team/app:v1", "Registry.Example.COM:5000", "team/app", Some("v1"), None);

        // Separators.
        t.ok("dock__er/docker", "docker.io/dock__er/docker:latest", hub, "dock__er/docker", lat, None);
        t.ok("a__b", "docker.io/library/a__b:latest", hub, "library/a__b", lat, None);
        t.ok("docker---rules/docker", "docker.io/docker---rules/docker:latest", hub, "docker---rules/docker", lat, None);
        t.ok("x/a.b_c-d", "docker.io/x/a.b_c-d:latest", hub, "x/a.b_c-d", lat, None);
        t.ok("test_com/foo", "docker.io/test_com/foo:latest", hub, "test_com/foo", lat, None);

        // Tags.
        t.ok("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase", hub, "library/lowercase", Some("Uppercase"), None);
        t.ok("foo:_x.y-Z", "docker.io/library/foo:_x.y-Z", hub, "library/foo", Some("_x.y-Z"), None);
        let tag128 = "t".repeat(128);
        t.ok(format!("foo:{tag128}"), format!("docker.io/library/foo:{tag128}"), hub, "library/foo", Some(&tag128), None);

        // Digests.
        t.ok(format!("nginx@{d256}"), format!("docker.io/library/nginx@{d256}"), hub, "library/nginx", None, Some(&d256));
        t.ok(format!("nginx@{d384}"), format!("docker.io/library/nginx@{d384}"), hub, "library/nginx", None, Some(&d384));
        t.ok(format!("nginx@{d512}"), format!("docker.io/library/nginx@{d512}"), hub, "library/nginx", None, Some(&d512));
        t.ok(format!("test:5000/repo@{d256}"), format!("test:5000/repo@{d256}"), "test:5000", "repo", None, Some(&d256));
        // Tag and digest: both kept, the string drops the tag.
        t.ok(format!("busybox:latest@{d256}"), format!("docker.io/library/busybox@{d256}"), hub, "library/busybox", lat, Some(&d256));
        t.ok(format!("xn--7o8h.com/myimage:xn--7o8h.com@{d512}"), format!("xn--7o8h.com/myimage@{d512}"), "xn--7o8h.com", "myimage", Some("xn--7o8h.com"), Some(&d512));

        // Hex names are fine unless the whole input is a bare 64-hex id.
        t.ok(format!("docker.io/{id}"), format!("docker.io/library/{id}:latest"), hub, format!("library/{id}"), lat, None);
        t.ok(format!("{id}:tag"), format!("docker.io/library/{id}:tag"), hub, format!("library/{id}"), Some("tag"), None);
        let id63 = hex(63);
        t.ok(id63.clone(), format!("docker.io/library/{id63}:latest"), hub, format!("library/{id63}"), lat, None);
        let song = "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev";
        t.ok(song, format!("docker.io/library/{song}:latest"), hub, format!("library/{song}"), lat, None);

        // Length limit: the normalized path, "library/" included, domain excluded.
        let a247 = "a".repeat(247);
        t.ok(a247.clone(), format!("docker.io/library/{a247}:latest"), hub, format!("library/{a247}"), lat, None);
        let a255 = "a".repeat(255);
        t.ok(format!("example.com/{a255}"), format!("example.com/{a255}:latest"), "example.com", a255.clone(), lat, None);
        let nested = format!("{}a", "a/".repeat(127));
        t.ok(format!("{nested}:tag-puts-this-over-max"), format!("docker.io/{nested}:tag-puts-this-over-max"), hub, nested.clone(), Some("tag-puts-this-over-max"), None);

        // Rejections.
        t.err("", "reference is empty");
        t.err(id.clone(), "cannot specify 64-byte hexadecimal strings");
        t.err(":justtag", "missing repository name");
        t.err(format!("@{d256}"), "missing repository name");
        t.err("docker.io/", "missing repository name");
        t.err("localhost/", "missing repository name");
        t.err("docker/Docker", "repository name must be lowercase");
        t.err("Uppercase:tag", "repository name must be lowercase");
        t.err("test:5000/Uppercase/lowercase:tag", "repository name must be lowercase");
        t.err("docker.io/docker/Docker", "repository name must be lowercase");
        t.err("-docker", "invalid repository path component \"-docker\"");
        t.err("-docker/docker", "invalid repository path component \"-docker\"");
        t.err("docker-/docker", "invalid repository path component \"docker-\"");
        t.err("-docker-/docker", "invalid repository path component \"-docker-\"");
        t.err("a._b", "invalid repository path component \"a._b\"");
        t.err("a___b", "invalid repository path component \"a___b\"");
        t.err("a_-b", "invalid repository path component \"a_-b\"");
        t.err("x/dock..er", "invalid repository path component \"dock..er\"");
        t.err("x/dock_.er", "invalid repository path component \"dock_.er\"");
        t.err("x/dock-.er", "invalid repository path component \"dock-.er\"");
        // With a '.', the first component is a registry and fails as one.
        t.err("dock..er/docker", "invalid registry domain \"dock..er\"");
        t.err("dock-.er/docker", "invalid registry domain \"dock-.er\"");
        t.err("____/____", "invalid repository path component \"____\"");
        t.err("_docker/_docker", "invalid repository path component \"_docker\"");
        t.err("foo-", "invalid repository path component \"foo-\"");
        t.err("aa/asdf$$^/aa", "invalid repository path component \"asdf$$^\"");
        t.err("ünïcode/foo", "invalid repository path component");
        t.err("nginx latest", "invalid repository path component \"nginx latest\"");
        t.err("docker///docker", "empty component");
        t.err("docker.io/docker///docker", "empty component");
        t.err("docker/", "empty component");
        t.err("/foo", "empty component");
        t.err("-docker.io/docker/docker", "invalid registry domain \"-docker.io\"");
        t.err("https://github.com/docker/docker", "invalid registry domain \"https:\"");
        t.err("fc00::1:5000/debian", "invalid registry domain \"fc00::1:5000\"");
        t.err("host:port/foo", "port must be digits");
        t.err("example.com:/foo", "port must be digits");
        t.err(":5000/foo", "invalid registry domain \":5000\"");
        // distribution would read this whole name as a domain-less path; refuse it instead.
        t.err("foo_bar.com/foo", "invalid registry domain \"foo_bar.com\"");
        t.err("[fe80::1%eth0]:5000/repo", "ipv6 address must be hex digits");
        t.err("[2001:db8:3:4::192.0.2.33]:5000/debian", "ipv6 address must be hex digits");
        t.err("[]:5000/foo", "ipv6 address must be hex digits");
        t.err("[]/foo", "invalid repository path component \"[]\"");
        t.err("[::1/foo", "unclosed '['");
        t.err("[::1]x/foo", "invalid registry domain \"[::1]x\"");
        t.err("[2001:db8::1]", "invalid repository path component \"[2001\"");
        t.err("[2001:db8::1]:5000", "invalid repository path component \"[2001\"");
        t.err(format!("foo:{}", "t".repeat(129)), "tag must not be more than 128 characters (got 129)");
        t.err("foo:-bad", "invalid tag \"-bad\"");
        t.err("foo:.bad", "invalid tag \".bad\"");
        t.err("foo:bar:baz", "invalid tag \"bar:baz\"");
        t.err("foo:", "tag is empty");
        t.err(format!("repo@sha256:{}", hex(34)), "invalid digest");
        t.err("repo@sha256:ffff", "sha256 needs 64 hex characters, got 4");
        t.err(format!("repo@sha384:{}", hex(64)), "sha384 needs 96 hex characters, got 64");
        t.err(format!("repo@sha512:{}", hex(129)), "sha512 needs 128 hex characters, got 129");
        t.err(format!("repo@sha256:{}", hex(64).to_uppercase()), "hex must be lowercase");
        t.err(format!("validname@invaliddigest:{}", hex(64)), "unsupported digest algorithm \"invaliddigest\"");
        t.err(format!("repo@md5:{}", hex(32)), "unsupported digest algorithm \"md5\"");
        t.err(format!("repo@SHA256:{}", hex(64)), "unsupported digest algorithm \"SHA256\"");
        t.err(format!("repo@sha256+b64:{}", hex(64)), "unsupported digest algorithm \"sha256+b64\"");
        t.err("repo@sha256", "invalid digest \"sha256\"");
        t.err("repo@", "invalid digest \"\"");
        t.err(format!("repo@sha256:{}@x", hex(64)), "invalid digest");
        t.err(format!("repo@1sha:{}", hex(64)), "invalid digest");
        t.err(format!("repo@sha256:{}g", hex(63)), "invalid digest");
        t.err("a".repeat(248), "repository name must not be more than 255 characters (got 256)");
        t.err(format!("{}a:tag", "a/".repeat(128)), "must not be more than 255 characters (got 257)");
        t.err(format!("example.com/{a255}a"), "must not be more than 255 characters (got 256)");
        t.0
    }

    #[test]
    fn parse_table_cases() {
        let cases = parse_table();
        assert!(cases.len() >= 60, "only {} cases", cases.len());
        for c in &cases {
            let got = ImageRef::parse(&c.input);
            match (&c.want, got) {
                (Ok(w), Ok(r)) => {
                    assert_eq!(r.pull_ref(), w.normalized, "pull_ref of {:?}", c.input);
                    assert_eq!(r.to_string(), w.normalized, "display of {:?}", c.input);
                    assert_eq!(r.domain(), w.domain, "domain of {:?}", c.input);
                    assert_eq!(r.path(), w.path, "path of {:?}", c.input);
                    assert_eq!(r.tag(), w.tag.as_deref(), "tag of {:?}", c.input);
                    assert_eq!(r.digest(), w.digest.as_deref(), "digest of {:?}", c.input);
                    assert_eq!(r.name(), format!("{}/{}", w.domain, w.path));
                    // The normalized string is a fixed point.
                    let again = ImageRef::parse(&r.pull_ref()).expect("reparse");
                    assert_eq!(again.pull_ref(), r.pull_ref(), "reparse of {:?}", c.input);
                }
                (Err(reason), Err(e)) => {
                    let got = e.reason.to_string();
                    assert!(
                        got.contains(*reason),
                        "{:?}: reason {:?} lacks {:?}",
                        c.input,
                        got,
                        reason
                    );
                    assert_eq!(e.input, c.input);
                    assert!(got.starts_with(|c: char| c.is_ascii_lowercase()), "{e}");
                }
                (Ok(_), Err(e)) => panic!("{:?}: unexpected error: {e}", c.input),
                (Err(reason), Ok(r)) => {
                    panic!("{:?}: parsed as {r}, wanted error {reason:?}", c.input)
                }
            }
        }
    }

    #[test]
    fn error_display_names_input() {
        let e = ImageRef::parse("docker/Docker").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid image reference \"docker/Docker\": repository name must be lowercase"
        );
        let e = "".parse::<ImageRef>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid image reference \"\": reference is empty"
        );
    }

    /// The whole text of every reason, one rule each: config errors, the README and users' scripts
    /// quote them, so a reworded message must show up here.
    #[test]
    #[rustfmt::skip]
    fn every_reason_text_is_pinned() {
        let upper = format!("sha256:{}", hex(64).to_uppercase());
        let upper_text = format!("invalid digest {upper:?}: hex must be lowercase");
        let parsed: Vec<(String, Invalid, &str)> = vec![
            ("".into(), Invalid::Empty, "reference is empty"),
            (hex(64), Invalid::ImageId, "cannot specify 64-byte hexadecimal strings"),
            (":tag".into(), Invalid::MissingRepository, "missing repository name"),
            ("[::1/foo".into(), Invalid::DomainUnclosedBracket { domain: "[::1".into() }, "invalid registry domain \"[::1\": unclosed '['"),
            ("[fe80::1%eth0]/foo".into(), Invalid::DomainIpv6 { domain: "[fe80::1%eth0]".into() }, "invalid registry domain \"[fe80::1%eth0]\": ipv6 address must be hex digits and ':' only"),
            ("foo_bar.com/foo".into(), Invalid::DomainHost { domain: "foo_bar.com".into() }, "invalid registry domain \"foo_bar.com\": host parts must be letters and digits with inner '-'"),
            ("host:port/foo".into(), Invalid::DomainPort { domain: "host:port".into() }, "invalid registry domain \"host:port\": port must be digits"),
            ("Upper".into(), Invalid::Uppercase, "repository name must be lowercase"),
            ("a//b".into(), Invalid::EmptyPathComponent, "repository path has an empty component (double or trailing '/')"),
            ("a._b".into(), Invalid::PathComponent { component: "a._b".into() }, "invalid repository path component \"a._b\": use lowercase letters and digits joined by '.', '_', '__' or '-'"),
            ("a".repeat(248), Invalid::PathTooLong { len: 256 }, "repository name must not be more than 255 characters (got 256)"),
            ("foo:".into(), Invalid::EmptyTag, "tag is empty"),
            (format!("foo:{}", "t".repeat(129)), Invalid::TagTooLong { len: 129 }, "tag must not be more than 128 characters (got 129)"),
            ("foo:-x".into(), Invalid::Tag { tag: "-x".into() }, "invalid tag \"-x\": use letters, digits, '_', '.' and '-', not starting with '.' or '-'"),
            ("foo@sha256".into(), Invalid::DigestSyntax { digest: "sha256".into() }, "invalid digest \"sha256\": expected <algorithm>:<hex>, e.g. sha256:<64 hex>"),
            (format!("foo@md5:{}", hex(32)), Invalid::DigestAlgorithm { algorithm: "md5".into() }, "unsupported digest algorithm \"md5\" (use sha256, sha384 or sha512)"),
            ("foo@sha256:ffff".into(), Invalid::DigestLength { digest: "sha256:ffff".into(), algorithm: "sha256".into(), want: 64, got: 4 }, "invalid digest \"sha256:ffff\": sha256 needs 64 hex characters, got 4"),
            (format!("foo@{upper}"), Invalid::DigestUppercase { digest: upper.clone() }, &upper_text),
        ];
        for (input, reason, text) in parsed {
            let e = ImageRef::parse(&input).unwrap_err();
            assert_eq!(e.reason, reason, "{input:?}");
            assert_eq!(e.reason.to_string(), text, "{input:?}");
        }

        let parts: Vec<(Parts, Invalid, &str)> = vec![
            ((Some(""), "app", None, None), Invalid::EmptyRegistry, "registry is empty"),
            ((Some("https://quay.io/org"), "app", None, None), Invalid::RegistryWithScheme { registry: "https://quay.io/org".into(), host: "quay.io".into() }, "registry \"https://quay.io/org\" must not have a scheme; write the host, e.g. \"quay.io\""),
            ((Some("gcr.io/p:1"), "app", None, None), Invalid::RegistryWithTagOrDigest { registry: "gcr.io/p:1".into() }, "registry \"gcr.io/p:1\" must not contain a tag or digest"),
            ((Some("myregistry"), "app", None, None), Invalid::RegistryReadAsNamespace { registry: "myregistry".into() }, "registry \"myregistry\" would be read as a docker hub namespace; a registry needs a '.', a ':port', or to be localhost"),
            ((None, "", None, None), Invalid::EmptyRepository, "repository is empty"),
            ((None, "nginx:1", None, None), Invalid::RepositoryWithTagOrDigest, "repository must not contain a tag or digest; set them separately"),
            ((Some("quay.io"), "registry.example.com:5000/app", None, None), Invalid::RepositoryWithRegistryPort { first: "registry.example.com:5000".into() }, "repository starts with registry \"registry.example.com:5000\" (a registry with a port) and `registry` is set too; name the registry in one place"),
            ((None, "registry.example.com:5000", None, None), Invalid::RepositoryOnlyRegistry { repository: "registry.example.com:5000".into() }, "repository \"registry.example.com:5000\" is a registry with a port and no repository path"),
        ];
        for ((reg, repo, tag, dig), reason, text) in parts {
            let e = ImageRef::from_parts(reg, repo, tag, dig).unwrap_err();
            assert_eq!(e.reason, reason, "{reg:?} {repo:?}");
            assert_eq!(e.reason.to_string(), text, "{reg:?} {repo:?}");
        }
        let e = ImageRef::from_parts(Some("quay.io"), "app", Some("v1"), Some("sha1:ab")).unwrap_err();
        assert_eq!(e.input, "quay.io/app:v1@sha1:ab");
        assert_eq!(
            e.to_string(),
            "invalid image reference \"quay.io/app:v1@sha1:ab\": unsupported digest algorithm \"sha1\" (use sha256, sha384 or sha512)"
        );
    }

    #[test]
    fn from_str_matches_parse() {
        let r: ImageRef = "quay.io/org/app:v1".parse().unwrap();
        assert_eq!(r, ImageRef::parse("quay.io/org/app:v1").unwrap());
    }

    #[test]
    fn is_latest_follows_kubernetes_defaulting() {
        let d = format!("sha256:{}", hex(64));
        let cases = [
            ("nginx".to_owned(), true),
            ("nginx:latest".to_owned(), true),
            ("nginx:1.25".to_owned(), false),
            ("nginx:Latest".to_owned(), false),
            (format!("nginx@{d}"), false),
            // Kubernetes looks only at the tag, so a pinned digest does not change this.
            (format!("nginx:latest@{d}"), true),
            (format!("nginx:1@{d}"), false),
        ];
        for (input, want) in cases {
            assert_eq!(
                ImageRef::parse(&input).unwrap().is_latest(),
                want,
                "{input}"
            );
        }
    }

    type Parts<'a> = (Option<&'a str>, &'a str, Option<&'a str>, Option<&'a str>);

    #[test]
    #[rustfmt::skip]
    fn from_parts_table() {
        let d256 = format!("sha256:{}", hex(64));
        let d = Some(d256.as_str());
        let lat = Some("latest");
        let ok: Vec<(Parts, String, &str, &str, Option<&str>)> = vec![
            ((None, "nginx", None, None), "docker.io/library/nginx:latest".into(), "docker.io", "library/nginx", lat),
            ((None, "library/nginx", Some("1.25"), None), "docker.io/library/nginx:1.25".into(), "docker.io", "library/nginx", Some("1.25")),
            ((None, "myrepo/cass-management-api", Some("v0.1.5"), None), "docker.io/myrepo/cass-management-api:v0.1.5".into(), "docker.io", "myrepo/cass-management-api", Some("v0.1.5")),
            ((Some("docker.io"), "nginx", None, None), "docker.io/library/nginx:latest".into(), "docker.io", "library/nginx", lat),
            ((Some("index.docker.io"), "nginx", Some("1"), None), "docker.io/library/nginx:1".into(), "docker.io", "library/nginx", Some("1")),
            ((Some("Foo:5000"), "bar", None, None), "Foo:5000/bar:latest".into(), "Foo:5000", "bar", lat),
            ((Some("localhost"), "foo", None, None), "localhost/foo:latest".into(), "localhost", "foo", lat),
            ((Some("[::1]:5000"), "foo", Some("t"), None), "[::1]:5000/foo:t".into(), "[::1]:5000", "foo", Some("t")),
            ((Some("quay.io"), "test.example.com/app", None, None), "quay.io/test.example.com/app:latest".into(), "quay.io", "test.example.com/app", lat),
            ((None, "nginx", None, d), format!("docker.io/library/nginx@{d256}"), "docker.io", "library/nginx", None),
            ((Some("quay.io"), "org/app", Some("v1"), d), format!("quay.io/org/app@{d256}"), "quay.io", "org/app", Some("v1")),
            // A registry with a path (Redis's private repository prefix).
            ((Some("gcr.io/yourproject"), "redislabs/redis", Some("7.2.4-64"), None), "gcr.io/yourproject/redislabs/redis:7.2.4-64".into(), "gcr.io", "yourproject/redislabs/redis", Some("7.2.4-64")),
            ((Some("quay.io/org"), "app", None, None), "quay.io/org/app:latest".into(), "quay.io", "org/app", lat),
            ((Some("docker.io/bitnami"), "redis", Some("7"), None), "docker.io/bitnami/redis:7".into(), "docker.io", "bitnami/redis", Some("7")),
            ((Some("index.docker.io/library"), "nginx", None, None), "docker.io/library/nginx:latest".into(), "docker.io", "library/nginx", lat),
            ((Some("localhost:5000/a/b"), "c", None, None), "localhost:5000/a/b/c:latest".into(), "localhost:5000", "a/b/c", lat),
            // A repository that carries its registry (the REC form), read as the kubelet would.
            ((None, "gcr.io/yourproject/redislabs/redis", Some("7.2.4-64"), None), "gcr.io/yourproject/redislabs/redis:7.2.4-64".into(), "gcr.io", "yourproject/redislabs/redis", Some("7.2.4-64")),
            ((None, "registry.example.com:5000/repo", Some("1"), None), "registry.example.com:5000/repo:1".into(), "registry.example.com:5000", "repo", Some("1")),
            ((None, "localhost/app", None, None), "localhost/app:latest".into(), "localhost", "app", lat),
            ((None, "index.docker.io/nginx", Some("1"), None), "docker.io/library/nginx:1".into(), "docker.io", "library/nginx", Some("1")),
            ((None, "quay.io/org/app", None, d), format!("quay.io/org/app@{d256}"), "quay.io", "org/app", None),
        ];
        for ((reg, repo, tag, dig), want, domain, path, want_tag) in ok {
            let r = ImageRef::from_parts(reg, repo, tag, dig)
                .unwrap_or_else(|e| panic!("{reg:?} {repo:?}: {e}"));
            assert_eq!(r.pull_ref(), want);
            assert_eq!(r.domain(), domain);
            assert_eq!(r.path(), path);
            assert_eq!(r.tag(), want_tag);
            assert_eq!(r.digest(), dig);
            // What we hand to the runtime must name the same image when parsed back.
            let back = ImageRef::parse(&r.pull_ref()).unwrap();
            assert_eq!((back.domain(), back.path(), back.digest()), (domain, path, dig));
            assert_eq!(back.pull_ref(), r.pull_ref());
        }

        let a248 = "a".repeat(248);
        let errs: Vec<(Parts, &str)> = vec![
            ((Some("https://quay.io"), "app", None, None), "must not have a scheme; write the host, e.g. \"quay.io\""),
            ((Some("gcr.io/p@sha256:ab"), "app", None, None), "must not contain a tag or digest"),
            ((Some("myorg/sub"), "app", None, None), "registry \"myorg/sub\" would be read as a docker hub namespace"),
            ((Some("gcr.io//p"), "app", None, None), "empty component"),
            ((Some("gcr.io/p/"), "app", None, None), "empty component"),
            ((Some("gcr.io/Proj"), "app", None, None), "must be lowercase"),
            ((Some("quay.io"), "localhost:5000/app", None, None), "repository starts with registry \"localhost:5000\" (a registry with a port)"),
            ((None, "localhost:5000", None, None), "is a registry with a port and no repository path"),
            ((None, "registry.example.com:5000/repo:1", None, None), "repository must not contain a tag or digest"),
            ((None, "gcr.io/p/app@sha256:abc", None, None), "repository must not contain a tag or digest"),
            ((None, "bad_host.com/app", None, None), "invalid registry domain \"bad_host.com\""),
            ((Some(""), "app", None, None), "registry is empty"),
            ((Some("myregistry"), "app", None, None), "would be read as a docker hub namespace"),
            ((Some("bad_host.com"), "app", None, None), "invalid registry domain \"bad_host.com\""),
            ((Some("quay.io:http"), "app", None, None), "port must be digits"),
            ((None, "Nginx", None, None), "repository name must be lowercase"),
            ((None, "nginx:1.25", None, None), "repository must not contain a tag or digest"),
            ((None, "nginx@sha256:abc", None, None), "repository must not contain a tag or digest"),
            ((None, "", None, None), "repository is empty"),
            ((None, "a//b", None, None), "empty component"),
            ((Some("quay.io"), "app/", None, None), "empty component"),
            ((None, "a._b", None, None), "invalid repository path component \"a._b\""),
            ((None, &a248, None, None), "must not be more than 255 characters (got 256)"),
            ((None, "nginx", Some(""), None), "tag is empty"),
            ((None, "nginx", Some("-x"), None), "invalid tag \"-x\""),
            ((None, "nginx", None, Some("sha1:0123456789abcdef0123456789abcdef01234567")), "unsupported digest algorithm \"sha1\""),
            ((None, "nginx", None, Some("sha256:abc")), "sha256 needs 64 hex characters, got 3"),
        ];
        for ((reg, repo, tag, dig), reason) in errs {
            let e = ImageRef::from_parts(reg, repo, tag, dig).unwrap_err();
            let got = e.reason.to_string();
            assert!(got.contains(reason), "{reg:?} {repo:?}: {got:?} lacks {reason:?}");
            assert!(e.input.contains(repo), "{:?} should show {repo:?}", e.input);
        }
    }

    #[test]
    fn written_repository_drops_registry_tag_digest_and_implied_library() {
        let d = format!("sha256:{}", hex(64));
        let cases = [
            ("nginx".to_owned(), "nginx"),
            ("nginx:1.25".to_owned(), "nginx"),
            ("library/nginx:1.25".to_owned(), "library/nginx"),
            ("docker.io/library/nginx".to_owned(), "library/nginx"),
            ("index.docker.io/nginx:1".to_owned(), "nginx"),
            ("redislabs/redis:7.2.4-64".to_owned(), "redislabs/redis"),
            (
                "registry.example.com:5000/team/app:v1".to_owned(),
                "team/app",
            ),
            ("localhost/app".to_owned(), "app"),
            (format!("gcr.io/p/app:v1@{d}"), "p/app"),
            (format!("app@{d}"), "app"),
        ];
        for (input, want) in cases {
            ImageRef::parse(&input).unwrap();
            assert_eq!(written_repository(&input), want, "{input}");
        }
    }

    #[test]
    fn an_image_below_a_registry_path_is_joined_as_the_kubelet_parses_it() {
        let gcr = RegistryPath::parse("gcr.io/yourproject").unwrap();
        assert_eq!(
            (gcr.domain(), gcr.prefix()),
            ("gcr.io", Some("yourproject"))
        );
        assert_eq!(gcr.to_string(), "gcr.io/yourproject");
        let r = gcr
            .image("redislabs/redis", Some("7.2.4-64"), None)
            .unwrap();
        assert_eq!(r.pull_ref(), "gcr.io/yourproject/redislabs/redis:7.2.4-64");
        // `library/` is Docker Hub's; elsewhere the repository is kept as given.
        let plain = RegistryPath::parse("registry.example.com").unwrap();
        assert_eq!(
            plain.image("nginx", Some("1"), None).unwrap().pull_ref(),
            "registry.example.com/nginx:1"
        );
        let hub = RegistryPath::parse("index.docker.io").unwrap();
        assert_eq!(hub.to_string(), "docker.io");
        assert_eq!(
            hub.image("nginx", Some("1"), None).unwrap().pull_ref(),
            "docker.io/library/nginx:1"
        );
        // The prefix counts towards the 255 characters of the path.
        let e = gcr.image(&"a".repeat(245), None, None).unwrap_err();
        assert_eq!(e.input, format!("gcr.io/yourproject/{}", "a".repeat(245)));
        assert!(
            e.reason
                .to_string()
                .contains("more than 255 characters (got 257)"),
            "{e}"
        );

        let holds = |reg: &RegistryPath, image: &str| reg.holds(&ImageRef::parse(image).unwrap());
        assert!(holds(&gcr, "gcr.io/yourproject/redislabs/redis:1"));
        assert!(!holds(&gcr, "gcr.io/yourproject2/redislabs/redis:1"));
        assert!(!holds(&gcr, "gcr.io/other/yourproject/redis:1"));
        assert!(!holds(&gcr, "redislabs/redis:1"));
        assert!(holds(&plain, "registry.example.com/a/b:1"));
        assert!(!holds(&plain, "registry.example.com:5000/a/b:1"));
        assert!(holds(&hub, "nginx"));

        for (bad, reason) in [
            ("", "registry is empty"),
            ("gcr.io/", "empty component"),
            ("myregistry", "would be read as a docker hub namespace"),
            ("https://gcr.io", "must not have a scheme"),
            ("gcr.io/p:v1", "must not contain a tag or digest"),
        ] {
            let e = RegistryPath::parse(bad).unwrap_err();
            assert!(e.reason.to_string().contains(reason), "{bad:?}: {e}");
            assert_eq!(e.input, bad);
        }
    }
}
