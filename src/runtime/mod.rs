//! The container runtime, over CRI `runtime.v1`: a small trait, the real client over a unix
//! socket, and (in `fake`) an in-memory runtime for fast tests.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_cri::v1 as cri;
use secrecy::ExposeSecret;
use serde::Serialize;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::credentials::RegistryAuth;
use crate::reference::ImageRef;

pub mod fake;

/// Sockets tried, in order, when no endpoint is given (the kubelet's usual ones).
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
];

/// Deadline for the cheap calls (version, list, status); pulls have their own.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An image as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size_bytes: u64,
}

impl ImageInfo {
    /// Whether this image is what `reference` names: by digest when one is pinned, else by tag.
    pub fn matches(&self, reference: &ImageRef) -> bool {
        match reference.digest() {
            Some(digest) => {
                let want = format!("{}@{digest}", reference.name());
                self.repo_digests.contains(&want)
            }
            None => {
                let want = reference.pull_ref();
                self.repo_tags.contains(&want)
            }
        }
    }

    /// The repo digest of this image for `reference`'s repository, if the runtime knows it.
    pub fn repo_digest_for(&self, reference: &ImageRef) -> Option<&str> {
        let prefix = format!("{}@", reference.name());
        self.repo_digests
            .iter()
            .find_map(|d| d.strip_prefix(&prefix))
    }
}

impl From<cri::Image> for ImageInfo {
    fn from(i: cri::Image) -> Self {
        ImageInfo {
            id: i.id,
            repo_tags: i.repo_tags,
            repo_digests: i.repo_digests,
            size_bytes: i.size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

impl std::fmt::Display for RuntimeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (CRI {})",
            self.runtime_name, self.runtime_version, self.runtime_api_version
        )
    }
}

/// What kind of failure a runtime error is, which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    // Permanent: retrying soon gives the same answer.
    NotFound,
    Unauthorized,
    Tls,
    InvalidReference,
    NoMatchingPlatform,
    DigestMismatch,
    NotPresent,
    // Transient.
    RateLimited,
    RegistryError,
    Network,
    Timeout,
    RuntimeUnavailable,
    Unknown,
}

impl ErrorKind {
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            ErrorKind::NotFound
                | ErrorKind::Unauthorized
                | ErrorKind::Tls
                | ErrorKind::InvalidReference
                | ErrorKind::NoMatchingPlatform
                | ErrorKind::DigestMismatch
                | ErrorKind::NotPresent
        )
    }

    pub fn class(self) -> &'static str {
        if self.is_permanent() {
            "permanent"
        } else {
            "transient"
        }
    }

    /// A short, stable name for logs, JSON and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Tls => "tls",
            ErrorKind::InvalidReference => "invalid_reference",
            ErrorKind::NoMatchingPlatform => "no_matching_platform",
            ErrorKind::DigestMismatch => "digest_mismatch",
            ErrorKind::NotPresent => "not_present",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::RegistryError => "registry_error",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::RuntimeUnavailable => "runtime_unavailable",
            ErrorKind::Unknown => "unknown",
        }
    }

    /// What failed, in words.
    pub fn summary(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "the image or tag does not exist in the registry",
            ErrorKind::Unauthorized => "the registry refused access (401/403)",
            ErrorKind::Tls => "the registry's TLS certificate is not trusted",
            ErrorKind::InvalidReference => "the runtime rejected the reference",
            ErrorKind::NoMatchingPlatform => "the image has no variant for this node's platform",
            ErrorKind::DigestMismatch => "the pulled image does not have the pinned digest",
            ErrorKind::NotPresent => "pullPolicy is Never and the image is not on this node",
            ErrorKind::RateLimited => "the registry is rate-limiting pulls (429)",
            ErrorKind::RegistryError => "the registry answered with a server error (5xx)",
            ErrorKind::Network => "the registry could not be reached",
            ErrorKind::Timeout => "the pull did not finish within pullTimeout",
            ErrorKind::RuntimeUnavailable => "the container runtime is not answering",
            ErrorKind::Unknown => "the runtime reported an unexpected error",
        }
    }

    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "check the repository and tag or digest",
            ErrorKind::Unauthorized => {
                "add or fix the pull credentials for this registry (`credentials:` in the config)"
            }
            ErrorKind::Tls => {
                "add the registry's CA to the runtime (containerd: certs.d/<host>/hosts.toml)"
            }
            ErrorKind::InvalidReference => "fix the image reference in the config",
            ErrorKind::NoMatchingPlatform => "publish the image for this node's OS/architecture",
            ErrorKind::DigestMismatch => "check that the digest belongs to this repository",
            ErrorKind::NotPresent => "load the image another way, or change pullPolicy",
            ErrorKind::RateLimited => "retrying with a long back-off; use credentials or a mirror",
            ErrorKind::RegistryError | ErrorKind::Network => "retrying with back-off",
            ErrorKind::Timeout => "retrying; raise pullTimeout for very large images",
            ErrorKind::RuntimeUnavailable => "retrying until the runtime answers",
            ErrorKind::Unknown => "retrying with back-off",
        }
    }
}

/// An error from a runtime call, with the runtime's own message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuntimeError {
    pub code: Code,
    pub message: String,
}

impl RuntimeError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RuntimeError {
            code,
            message: message.into(),
        }
    }

    /// Classifies by gRPC code first, then by the registry's words inside containerd's and
    /// CRI-O's messages (the only place a 401 or 429 shows through CRI).
    pub fn kind(&self) -> ErrorKind {
        let m = self.message.as_str();
        let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
        // Said by the client stack (tonic, hyper, h2), not relayed from the runtime: the call to
        // the runtime itself broke (a restart, a closed socket). Those messages start with the
        // client's own words; a registry's network errors, relayed by containerd ("failed to
        // pull ...") or CRI-O ("pinging container registry ...: connection reset by peer"),
        // only contain them, and stay network errors.
        let lower = m.to_ascii_lowercase();
        let from_transport = [
            "transport error",
            "h2 protocol error",
            "connection reset",
            "broken pipe",
            "connection closed before message completed",
            "error trying to connect",
        ]
        .iter()
        .any(|n| lower.starts_with(n));
        match self.code {
            Code::DeadlineExceeded => return ErrorKind::Timeout,
            // tonic enforces the call's deadline itself and reports it as Cancelled.
            Code::Cancelled if has(&["Timeout expired"]) => return ErrorKind::Timeout,
            _ if from_transport => return ErrorKind::RuntimeUnavailable,
            Code::Unavailable if !has(&["failed to pull"]) => {
                return ErrorKind::RuntimeUnavailable;
            }
            Code::Unimplemented => return ErrorKind::RuntimeUnavailable,
            Code::InvalidArgument => return ErrorKind::InvalidReference,
            _ => {}
        }
        if has(&["server is not initialized yet"]) {
            ErrorKind::RuntimeUnavailable
        } else if has(&["no match for platform"]) {
            ErrorKind::NoMatchingPlatform
        } else if self.code == Code::NotFound
            || has(&[": not found", "manifest unknown", "name unknown"])
        {
            ErrorKind::NotFound
        } else if has(&["429 Too Many Requests", "toomanyrequests"]) {
            ErrorKind::RateLimited
        } else if has(&[
            "401 Unauthorized",
            "403 Forbidden",
            "pull access denied",
            "authorization failed",
            "insufficient_scope",
            "unauthorized:",
        ]) {
            ErrorKind::Unauthorized
        } else if has(&["x509:", "tls:", "certificate"]) {
            ErrorKind::Tls
        } else if has(&[
            "invalid reference format",
            "failed to parse image reference",
        ]) {
            ErrorKind::InvalidReference
        } else if has(&[
            "500 Internal Server Error",
            "502 Bad Gateway",
            "503 Service Unavailable",
            "504 Gateway Timeout",
        ]) {
            ErrorKind::RegistryError
        } else if has(&[
            "connection refused",
            "connection reset",
            "EOF",
            "i/o timeout",
            "no such host",
            "network is unreachable",
            "broken pipe",
            "context deadline exceeded",
        ]) {
            ErrorKind::Network
        } else {
            ErrorKind::Unknown
        }
    }
}

impl From<tonic::Status> for RuntimeError {
    /// Keeps the causes tonic wraps (`transport error` alone says nothing about a reset socket).
    fn from(s: tonic::Status) -> Self {
        let mut message = if s.message().is_empty() {
            s.code().description().to_string()
        } else {
            s.message().to_string()
        };
        let mut source = std::error::Error::source(&s);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        RuntimeError::new(s.code(), message)
    }
}

/// What prepuller needs from a container runtime.
pub trait Runtime: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = Result<RuntimeVersion, RuntimeError>> + Send;
    /// Every image the runtime has (one call, however many images are declared).
    fn list_images(&self) -> impl Future<Output = Result<Vec<ImageInfo>, RuntimeError>> + Send;
    /// One image, or `None` when the runtime does not have it.
    fn image_status(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<ImageInfo>, RuntimeError>> + Send;
    /// Pulls `image` within `timeout`, sending `auth` to the registry when given; returns the
    /// runtime's image id.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;
}

/// A CRI runtime over a unix socket. The channel reconnects by itself, so a restarted
/// runtime is picked up on the next call.
#[derive(Clone)]
pub struct CriRuntime {
    endpoint: String,
    images: cri::image_service_client::ImageServiceClient<Channel>,
    runtime: cri::runtime_service_client::RuntimeServiceClient<Channel>,
}

impl std::fmt::Debug for CriRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriRuntime")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A runtime endpoint that cannot be used as given.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndpointError {
    #[error("invalid runtime endpoint {0:?}: only unix:///path sockets are supported")]
    Invalid(String),
    #[error(
        "no container runtime socket found; tried {}. Pass --runtime-endpoint unix:///path/to/cri.sock",
        DEFAULT_ENDPOINTS.join(", ")
    )]
    NoneFound,
}

/// The socket path of a `unix://` endpoint (a bare absolute path is accepted too).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, EndpointError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.starts_with('/').then_some(endpoint))
        .ok_or_else(|| EndpointError::Invalid(endpoint.to_string()))?;
    if !path.starts_with('/') {
        return Err(EndpointError::Invalid(endpoint.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// The first of the default sockets that exists, as the kubelet would find it.
pub fn discover_endpoint() -> Result<String, EndpointError> {
    discover_endpoint_in(DEFAULT_ENDPOINTS)
}

pub fn discover_endpoint_in(candidates: &[&str]) -> Result<String, EndpointError> {
    candidates
        .iter()
        .find(|e| socket_path(e).is_ok_and(|p| p.exists()))
        .map(|e| e.to_string())
        .ok_or(EndpointError::NoneFound)
}

impl CriRuntime {
    /// A client for `endpoint` (`unix:///path`). Connects lazily: a socket that is missing now
    /// shows up as `RuntimeUnavailable` on the first call, not here.
    pub fn new(endpoint: &str) -> Result<CriRuntime, EndpointError> {
        let path = socket_path(endpoint)?;
        let channel = unix_channel(path);
        Ok(CriRuntime {
            endpoint: endpoint.to_string(),
            images: cri::image_service_client::ImageServiceClient::new(channel.clone())
                .max_decoding_message_size(64 * 1024 * 1024),
            runtime: cri::runtime_service_client::RuntimeServiceClient::new(channel),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn unix_channel(path: PathBuf) -> Channel {
    // The URI is ignored by the connector; tonic wants one all the same.
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
}

fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(timeout);
    r
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// Bounds a call locally too: a hung socket must not outlive the deadline the server was given.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RuntimeError> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(RuntimeError::new(
            Code::DeadlineExceeded,
            format!("no answer within {}", humantime::format_duration(timeout)),
        )),
    }
}

impl Runtime for CriRuntime {
    async fn version(&self) -> Result<RuntimeVersion, RuntimeError> {
        let mut client = self.runtime.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.version(request(
                cri::VersionRequest {
                    version: "v1".into(),
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(RuntimeVersion {
            runtime_name: r.runtime_name,
            runtime_version: r.runtime_version,
            runtime_api_version: r.runtime_api_version,
        })
    }

    async fn list_images(&self) -> Result<Vec<ImageInfo>, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.list_images(request(
                cri::ListImagesRequest { filter: None },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.images.into_iter().map(ImageInfo::from).collect())
    }

    async fn image_status(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        let mut client = self.images.clone();
        let r = bounded(
            CALL_TIMEOUT,
            client.image_status(request(
                cri::ImageStatusRequest {
                    image: image_spec(image),
                    verbose: false,
                },
                CALL_TIMEOUT,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.image.map(ImageInfo::from))
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let mut client = self.images.clone();
        let auth = auth.map(|a| cri::AuthConfig {
            username: a.username.clone(),
            password: a.password.expose_secret().to_string(),
            identity_token: a
                .identity_token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .unwrap_or_default(),
            registry_token: a
                .registry_token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .unwrap_or_default(),
            ..Default::default()
        });
        let r = bounded(
            timeout,
            client.pull_image(request(
                cri::PullImageRequest {
                    image: image_spec(image),
                    auth,
                    sandbox_config: None,
                },
                timeout,
            )),
        )
        .await
        .map_err(|e| self.unreachable(e))?;
        Ok(r.image_ref)
    }
}

impl CriRuntime {
    /// Names the socket in connection failures, which tonic reports without it.
    fn unreachable(&self, e: RuntimeError) -> RuntimeError {
        if e.code == Code::Unavailable && !e.message.contains("failed to pull") {
            RuntimeError::new(
                Code::Unavailable,
                format!(
                    "cannot reach the runtime at {}: {}",
                    self.endpoint, e.message
                ),
            )
        } else if e.code == Code::Unimplemented {
            RuntimeError::new(
                Code::Unimplemented,
                format!(
                    "the runtime at {} does not serve CRI runtime.v1 (containerd 1.6+, CRI-O 1.23+ do): {}",
                    self.endpoint, e.message
                ),
            )
        } else {
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(code: Code, message: &str) -> ErrorKind {
        RuntimeError::new(code, message).kind()
    }

    /// Messages as containerd 1.6.20 returns them (shared/LAB.md).
    #[test]
    fn classifies_containerd_messages() {
        let p = r#"failed to pull and unpack image "127.0.0.1:5000/a:1": "#;
        let cases = [
            (Code::NotFound, format!("{p}failed to resolve reference \"127.0.0.1:5000/a:1\": 127.0.0.1:5000/a:1: not found"), ErrorKind::NotFound),
            (Code::NotFound, format!("{p}no match for platform in manifest: not found"), ErrorKind::NoMatchingPlatform),
            (Code::Unknown, format!("{p}failed to resolve reference: unexpected status from HEAD request to https://r/v2/a/manifests/1: 401 Unauthorized"), ErrorKind::Unauthorized),
            (Code::Unknown, format!("{p}pull access denied, repository does not exist or may require authorization"), ErrorKind::Unauthorized),
            (Code::Unknown, format!("{p}failed to do request: Head \"http://127.0.0.1:5000/v2/a/manifests/1\": dial tcp 127.0.0.1:5000: connect: connection refused"), ErrorKind::Network),
            (Code::Unknown, format!("{p}failed to do request: Head \"https://127.0.0.2:5101/v2/a/manifests/1\": tls: failed to verify certificate: x509: certificate signed by unknown authority"), ErrorKind::Tls),
            (Code::Unknown, format!("{p}failed with status code [manifests 1]: 429 Too Many Requests"), ErrorKind::RateLimited),
            (Code::Unknown, format!("{p}failed to copy: httpReadSeeker: failed open: unexpected status code http://r/v2/a/blobs/sha256:ab: 429 Too Many Requests - Server message: toomanyrequests: slow down"), ErrorKind::RateLimited),
            (Code::Unknown, format!("{p}failed to copy: failed to read expected number of bytes: unexpected EOF"), ErrorKind::Network),
            (Code::Unknown, format!("{p}unexpected status from HEAD request: 503 Service Unavailable"), ErrorKind::RegistryError),
            (Code::DeadlineExceeded, "Deadline Exceeded".into(), ErrorKind::Timeout),
            (Code::Unknown, "failed to parse image reference \"A\": invalid reference format: repository name must be lowercase".into(), ErrorKind::InvalidReference),
            (Code::Unknown, "server is not initialized yet".into(), ErrorKind::RuntimeUnavailable),
            (Code::Unavailable, "cannot reach the runtime at unix:///x.sock: transport error".into(), ErrorKind::RuntimeUnavailable),
            (Code::Unimplemented, "unknown service runtime.v1.ImageService".into(), ErrorKind::RuntimeUnavailable),
            // What tonic 0.14 returns itself (shared/LAB.md): its own deadline, a restarted runtime.
            (Code::Cancelled, "Timeout expired".into(), ErrorKind::Timeout),
            (Code::Unknown, "transport error: connection closed before message completed".into(), ErrorKind::RuntimeUnavailable),
            (Code::Internal, "h2 protocol error: error reading a body from connection".into(), ErrorKind::RuntimeUnavailable),
            (Code::Unknown, "transport error: Connection reset by peer (os error 104)".into(), ErrorKind::RuntimeUnavailable),
            (Code::Internal, "Broken pipe (os error 32)".into(), ErrorKind::RuntimeUnavailable),
            (Code::Unknown, "transport error: broken pipe".into(), ErrorKind::RuntimeUnavailable),
            // The registry's resets, relayed by the runtime, stay network errors.
            (Code::Unknown, format!("{p}failed to copy: read tcp 127.0.0.1:1->127.0.0.1:5000: read: connection reset by peer"), ErrorKind::Network),
            // CRI-O relays them without "failed to pull".
            (Code::Unknown, "pinging container registry r.example: Get \"https://r.example/v2/\": read tcp 10.0.0.1:40000->10.0.0.2:443: read: connection reset by peer".into(), ErrorKind::Network),
            (Code::Unknown, "reading blob sha256:ab: Get \"https://r.example/v2/a/blobs/sha256:ab\": write tcp 10.0.0.1:1->10.0.0.2:443: write: broken pipe".into(), ErrorKind::Network),
            (Code::Cancelled, "operation cancelled by the caller".into(), ErrorKind::Unknown),
            (Code::Unknown, "something new".into(), ErrorKind::Unknown),
        ];
        for (code, message, want) in cases {
            assert_eq!(kind(code, &message), want, "{message}");
        }
    }

    #[test]
    fn permanent_and_transient_split() {
        for k in [
            ErrorKind::NotFound,
            ErrorKind::Unauthorized,
            ErrorKind::Tls,
            ErrorKind::InvalidReference,
            ErrorKind::DigestMismatch,
            ErrorKind::NotPresent,
        ] {
            assert!(k.is_permanent(), "{k:?}");
        }
        for k in [
            ErrorKind::RateLimited,
            ErrorKind::RegistryError,
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::RuntimeUnavailable,
            ErrorKind::Unknown,
        ] {
            assert!(!k.is_permanent(), "{k:?}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:1").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("b.sock");
        std::fs::write(&present, "").unwrap();
        let a = format!("unix://{}", dir.path().join("a.sock").display());
        let b = format!("unix://{}", present.display());
        assert_eq!(discover_endpoint_in(&[&a, &b]).unwrap(), b);
        let err = discover_endpoint_in(&[&a]).unwrap_err().to_string();
        assert!(err.contains("--runtime-endpoint"), "{err}");
    }

    #[test]
    fn image_matches_by_tag_or_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let info = ImageInfo {
            id: "sha256:1".into(),
            repo_tags: vec!["docker.io/library/nginx:1.25".into()],
            repo_digests: vec![format!("docker.io/library/nginx@{d}")],
            size_bytes: 10,
        };
        assert!(info.matches(&ImageRef::parse("nginx:1.25").unwrap()));
        assert!(!info.matches(&ImageRef::parse("nginx:1.26").unwrap()));
        assert!(info.matches(&ImageRef::parse(&format!("nginx@{d}")).unwrap()));
        assert!(info.matches(&ImageRef::parse(&format!("nginx:9@{d}")).unwrap()));
        assert!(!info.matches(&ImageRef::parse(&format!("other@{d}")).unwrap()));
        assert_eq!(
            info.repo_digest_for(&ImageRef::parse("nginx:x").unwrap()),
            Some(d.as_str())
        );
    }
}
