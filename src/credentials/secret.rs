//! Pull secrets read by name through the Kubernetes API, and kept for a short time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::CredentialSource;
use super::document::{Document, Problem, ProblemKind, SourceRead};

/// How long a secret read through the API is reused before it is read again (a 401 forces an
/// earlier read). Pulls are rare, so this keeps API traffic near zero.
const SECRET_CACHE_TTL: Duration = Duration::from_secs(60);

/// Why a secret could not be read. Cloned into the cache, hence the `Arc`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    #[error(
        "forbidden: the agent's ServiceAccount needs `get` on secrets {name:?} in namespace {namespace:?} (a Role with resourceNames: [{name}])"
    )]
    Forbidden { namespace: String, name: String },
    #[error("cannot read it through the Kubernetes API: {0}")]
    Api(Arc<kube::Error>),
    #[error("no Kubernetes API to read it from (not in a cluster and no kubeconfig)")]
    NoApi,
}

/// A secret's data by key (`None`: it does not exist), or why it could not be read.
pub type SecretRead = Result<Option<BTreeMap<String, Vec<u8>>>, SecretError>;

/// Reads pull secrets by name through the Kubernetes API (only `get`: RBAC `resourceNames`).
pub trait SecretReader: Send + Sync {
    /// The secret's data, `None` when it does not exist.
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'_, SecretRead>;
}

/// The reader of `secret:` credentials through `client`, the process's one connection to the
/// cluster (made by `main`).
pub fn secret_reader(client: kube::Client) -> Arc<dyn SecretReader> {
    Arc::new(KubeSecrets(client))
}

struct KubeSecrets(kube::Client);

impl SecretReader for KubeSecrets {
    fn get(&self, namespace: &str, name: &str) -> BoxFuture<'_, SecretRead> {
        use k8s_openapi::api::core::v1::Secret;
        let api: kube::Api<Secret> = kube::Api::namespaced(self.0.clone(), namespace);
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
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    Err(SecretError::Forbidden { namespace, name })
                }
                Err(e) => Err(SecretError::Api(Arc::new(e))),
            }
        })
    }
}

struct CachedSecret {
    read_at: Instant,
    data: SecretRead,
}

/// The `secret:` sources' reads, each reused for [`SECRET_CACHE_TTL`].
pub(super) struct SecretCache {
    reader: Option<Arc<dyn SecretReader>>,
    entries: Mutex<HashMap<(String, String), CachedSecret>>,
}

impl SecretCache {
    pub fn new(reader: Option<Arc<dyn SecretReader>>) -> Self {
        SecretCache {
            reader,
            entries: Mutex::default(),
        }
    }

    /// Forgets every read, so the next lookup reads the secrets again.
    pub fn clear(&self) {
        self.entries().clear();
    }

    /// The docker config document of the secret `source` names.
    pub async fn document(
        &self,
        source: &CredentialSource,
        namespace: &str,
        name: &str,
    ) -> SourceRead {
        let mut read = SourceRead::default();
        match self.get(namespace, name).await {
            Ok(Some(data)) => {
                let doc = data
                    .get(".dockerconfigjson")
                    .or_else(|| data.get(".dockercfg"));
                match doc {
                    Some(bytes) => read.documents.push(Document {
                        name: source.to_string(),
                        bytes: bytes.clone(),
                    }),
                    None => read
                        .problems
                        .push(Problem::new(source, ProblemKind::NoDockerConfigKey)),
                }
            }
            Ok(None) => read
                .problems
                .push(Problem::new(source, ProblemKind::SecretNotFound)),
            Err(e) => read.problems.push(Problem::new(source, e)),
        }
        read
    }

    async fn get(&self, namespace: &str, name: &str) -> SecretRead {
        let key = (namespace.to_string(), name.to_string());
        if let Some(c) = self.entries().get(&key)
            && c.read_at.elapsed() < SECRET_CACHE_TTL
        {
            return c.data.clone();
        }
        let Some(reader) = &self.reader else {
            return Err(SecretError::NoApi);
        };
        let data = reader.get(namespace, name).await;
        self.entries().insert(
            key,
            CachedSecret {
                read_at: Instant::now(),
                data: data.clone(),
            },
        );
        data
    }

    /// The cache; a panic while it was held left nothing half-written in it.
    fn entries(&self) -> MutexGuard<'_, HashMap<(String, String), CachedSecret>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credentials;
    use crate::credentials::testing::b64;
    use crate::reference::ImageRef;

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
            Some(secret_reader(client)),
        );
        let found = creds
            .lookup(&ImageRef::parse("r.example.com/app:1").unwrap())
            .await;
        assert_eq!(found.credentials.len(), 1);
        assert_eq!(found.credentials[0].auth.username, "u");
        assert_eq!(
            found.problems[0].to_string(),
            "secret redis/gone: not found"
        );
        assert!(
            found.problems[1]
                .to_string()
                .contains("needs `get` on secrets \"private\" in namespace \"redis\""),
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
