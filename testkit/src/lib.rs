//! prepuller's test kit: a real `docker-registry` and a real `containerd`, each started as a
//! plain process with all of its files (config, storage, sockets, log) in one directory, and what
//! the tests do with them: images pushed through the registry's HTTP API, faults, a hostile
//! HTTP client, the agent process.
//!
//! Tests own their processes (`start`): dropping the owner kills and reaps them. `make demo`
//! (examples/sandbox.rs) starts the same processes detached (`start_detached`) with pid files.
//!
//! A library rather than a module each test binary includes: every test binary uses a different
//! part, and a library's public items are never dead code.

use std::time::Duration;

mod agent;
mod configmap;
mod containerd;
mod fake_apiserver;
pub mod faults;
mod fixtures;
pub mod fleet;
pub mod front;
pub mod goals;
pub mod hostile;
mod http;
mod images;
mod process;
mod pulled;
pub mod rbac;
mod registry;
mod sandbox;
mod secure_registry;
mod tls;

pub use agent::{AGENT_CONVERGE, AgentProc, AgentSpec, prepuller_bin};
pub use configmap::ConfigMapDir;
pub use containerd::{Containerd, unix_channel};
pub use fake_apiserver::FakeApiServer;
pub use fixtures::{boot_id, dockerconfigjson, images_prepulled_condition, taint_keys};
pub use http::http_client;
pub use images::{
    OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, TestImage, build_image, delete_manifest,
    manifest_digest, oci_arch, push_built, push_image, push_image_by_digest, sha256_digest,
};
pub use process::{Lifetime, free_port, log_tail, rss_kib, status_kib};
pub use pulled::Pulled;
pub use rbac::{assert_no_forbidden, deploy_rbac, deploy_rbac_file, forbidden};
pub use registry::Registry;
pub use sandbox::Sandbox;
pub use secure_registry::{SECURE_REGISTRY_IP, SecureRegistry};
pub use tls::{ServerCert, ca_signed_server_cert};

/// Generous: the machine has 2 CPUs shared with parallel builds and tests; normal starts take <1 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const LOG_TAIL_LINES: usize = 40;
