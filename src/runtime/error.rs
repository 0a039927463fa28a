//! What a runtime call failed with, and what kind of failure that is: the runtime's (or the
//! registry's, relayed by the runtime) answer only. The puller adds its own kinds on top
//! (`puller::FailureKind`).

use serde::Serialize;
use tonic::Code;

/// What kind of failure a runtime error is, which decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // Permanent: retrying soon gives the same answer.
    NotFound,
    Unauthorized,
    Tls,
    InvalidReference,
    NoMatchingPlatform,
    // Transient.
    RateLimited,
    RegistryError,
    Network,
    Timeout,
    RuntimeUnavailable,
    Unknown,
}

/// One row of a failure-kind table: its stable name, whether retrying soon helps, what failed
/// and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// A short, stable name for logs, JSON and metric labels.
    pub name: &'static str,
    /// Retrying soon gives the same answer.
    pub permanent: bool,
    /// What failed, in words.
    pub summary: &'static str,
    /// What to do about it.
    pub hint: &'static str,
}

/// Whether retrying soon helps, in a row of a kind table.
pub(crate) const PERMANENT: bool = true;
pub(crate) const TRANSIENT: bool = false;

impl KindInfo {
    pub(crate) const fn new(
        permanent: bool,
        name: &'static str,
        summary: &'static str,
        hint: &'static str,
    ) -> Self {
        KindInfo {
            name,
            permanent,
            summary,
            hint,
        }
    }

    /// `permanent` or `transient`, for logs, JSON and metric labels.
    pub fn class(&self) -> &'static str {
        if self.permanent {
            "permanent"
        } else {
            "transient"
        }
    }
}

impl ErrorKind {
    /// The table: every kind's name, permanence, summary and hint.
    pub const fn info(self) -> KindInfo {
        use KindInfo as K;
        match self {
            ErrorKind::NotFound => K::new(
                PERMANENT,
                "not_found",
                "the image or tag does not exist in the registry",
                "check the repository and tag or digest",
            ),
            ErrorKind::Unauthorized => K::new(
                PERMANENT,
                "unauthorized",
                "the registry refused access (401/403)",
                "add or fix the pull credentials for this registry (`credentials:` in the config)",
            ),
            ErrorKind::Tls => K::new(
                PERMANENT,
                "tls",
                "the registry's TLS certificate is not trusted",
                "add the registry's CA to the runtime (containerd: certs.d/<host>/hosts.toml)",
            ),
            ErrorKind::InvalidReference => K::new(
                PERMANENT,
                "invalid_reference",
                "the runtime rejected the reference",
                "fix the image reference in the config",
            ),
            ErrorKind::NoMatchingPlatform => K::new(
                PERMANENT,
                "no_matching_platform",
                "the image has no variant for this node's platform",
                "publish the image for this node's OS/architecture",
            ),
            ErrorKind::RateLimited => K::new(
                TRANSIENT,
                "rate_limited",
                "the registry is rate-limiting pulls (429)",
                "retrying with a long back-off; use credentials or a mirror",
            ),
            ErrorKind::RegistryError => K::new(
                TRANSIENT,
                "registry_error",
                "the registry answered with a server error (5xx)",
                "retrying with back-off",
            ),
            ErrorKind::Network => K::new(
                TRANSIENT,
                "network",
                "the registry could not be reached",
                "retrying with back-off",
            ),
            ErrorKind::Timeout => K::new(
                TRANSIENT,
                "timeout",
                "the pull did not finish within pullTimeout",
                "retrying; raise pullTimeout for very large images",
            ),
            ErrorKind::RuntimeUnavailable => K::new(
                TRANSIENT,
                "runtime_unavailable",
                "the container runtime is not answering",
                "retrying until the runtime answers",
            ),
            ErrorKind::Unknown => K::new(
                TRANSIENT,
                "unknown",
                "the runtime reported an unexpected error",
                "retrying with back-off",
            ),
        }
    }

    /// Retrying soon gives the same answer.
    pub fn is_permanent(self) -> bool {
        self.info().permanent
    }

    /// A short, stable name for logs, JSON and metric labels (the puller's `FailureKind`
    /// gives the summary, hint and class of a failed pull).
    pub fn as_str(self) -> &'static str {
        self.info().name
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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
            ErrorKind::NoMatchingPlatform,
        ] {
            assert!(k.is_permanent(), "{k:?}");
            assert_eq!(k.info().class(), "permanent");
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
            assert_eq!(k.info().class(), "transient");
        }
    }

    /// The names are metric labels and JSON values: they must not change.
    #[test]
    fn names_are_stable_and_serialize_as_themselves() {
        let names = [
            (ErrorKind::NotFound, "not_found"),
            (ErrorKind::Unauthorized, "unauthorized"),
            (ErrorKind::Tls, "tls"),
            (ErrorKind::InvalidReference, "invalid_reference"),
            (ErrorKind::NoMatchingPlatform, "no_matching_platform"),
            (ErrorKind::RateLimited, "rate_limited"),
            (ErrorKind::RegistryError, "registry_error"),
            (ErrorKind::Network, "network"),
            (ErrorKind::Timeout, "timeout"),
            (ErrorKind::RuntimeUnavailable, "runtime_unavailable"),
            (ErrorKind::Unknown, "unknown"),
        ];
        for (kind, name) in names {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), name);
        }
    }
}
