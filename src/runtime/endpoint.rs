//! Where the runtime listens: `unix://` endpoints, and finding the socket as the kubelet would.

use std::path::PathBuf;

/// Sockets tried, in order, when no endpoint is given (the kubelet's usual ones).
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "unix:///run/containerd/containerd.sock",
    "unix:///run/crio/crio.sock",
    "unix:///var/run/cri-dockerd.sock",
];

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
