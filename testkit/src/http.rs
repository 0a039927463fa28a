//! The HTTP client for the tests' own requests.

use std::time::Duration;

/// An HTTP client for the tests' own requests. reqwest brings no crypto provider (the tests must
/// not link one the shipped binary lacks) and panics without one, even for plain HTTP: it gets
/// ring, the binary's, here, rather than as a process-wide default that could hide a missing
/// one in library code under test.
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client")
}
