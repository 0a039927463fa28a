//! The fake API served as a cluster serves it: over TLS, with a certificate for 127.0.0.1 and
//! localhost signed by a CA made here (rcgen), and a bearer token required on every request
//! (401 without it, logged like any request). The kubeconfig carries both, as a real one does
//! (`certificate-authority-data`, `token`), so a client must do real TLS to get in: the
//! acceptance tests check that the shipped binary can. A token `<token>.<client>` (see
//! [`TlsFakeApi::kubeconfig_for`]) names the client in the request log: one per simulated node.
//!
//! RBAC from below ([`TlsFakeApi::serve_with`] given the rendered manifests): the agent's
//! tokens (`kubeconfig`, `kubeconfig_for`) authenticate as the ServiceAccount of `deploy/`
//! (`system:serviceaccount:prepuller:prepuller`, its kubeconfig's namespace `prepuller` as
//! in-cluster), and every request they make is authorized as kube-apiserver's RBAC authorizer
//! does (`prepuller::apirules::rbac`); a denied one is answered 403 with the real message,
//! logged (status 403, `message`) and written to stderr. The operator's token
//! ([`TlsFakeApi::operator_kubeconfig`]: `prepuller nodes`, `prepuller pull` with `secret:`)
//! stands for a person's own credentials and is not RBAC-checked.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request as HttpRequest;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use base64::Engine;
use prepuller::apirules::rbac::{Rbac, User, request_info};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

use super::{FakeApi, refused, status};

/// The ServiceAccount of `deploy/base/serviceaccount.yaml`, as which the agent's tokens
/// authenticate, and its namespace (the Leases' namespace, as POD_NAMESPACE in the DaemonSet).
pub const AGENT_NAMESPACE: &str = "prepuller";
pub const AGENT_SERVICE_ACCOUNT: &str = "prepuller";

/// A client that connects and never finishes its handshake is dropped after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TlsFakeApi {
    /// Its `url` is `https://<listener's address>`.
    pub api: FakeApi,
    ca_pem: String,
    token: String,
    /// The operator's: not RBAC-checked.
    operator_token: String,
}

impl TlsFakeApi {
    /// Serves a new, empty API on `listener` (bound to 127.0.0.1 or localhost, the names the
    /// certificate is for) until the runtime ends.
    pub fn serve(listener: TcpListener) -> TlsFakeApi {
        TlsFakeApi::serve_with(listener, None)
    }

    /// [`Self::serve`], every request of the agent's tokens authorized by `rbac` (none: all
    /// allowed).
    pub fn serve_with(listener: TcpListener, rbac: Option<Rbac>) -> TlsFakeApi {
        let addr = listener.local_addr().expect("listener address");
        let (ca_pem, cert, key) = certificates();
        let token = format!("fake-api-token-{:016x}", rand::random::<u64>());
        let operator_token = format!("fake-api-operator-{:016x}", rand::random::<u64>());
        let operator = format!("Bearer {operator_token}");
        let rbac = rbac.map(Arc::new);
        let agent = User::service_account(AGENT_NAMESPACE, AGENT_SERVICE_ACCOUNT);
        let api = FakeApi::new(format!("https://{addr}"));

        // ring, the provider the shipped binary uses, named explicitly: no process default needed.
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let expected = format!("Bearer {token}");
        let logger = api.clone();
        let router =
            api.router()
                .layer(middleware::from_fn(move |req: HttpRequest, next: Next| {
                    let expected = expected.clone();
                    let api = logger.clone();
                    let (operator, rbac, agent) = (operator.clone(), rbac.clone(), agent.clone());
                    async move {
                        let mut req = req;
                        let header = req
                            .headers()
                            .get(AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if header == operator {
                            req.headers_mut()
                                .insert(super::CLIENT_HEADER, "operator".parse().unwrap());
                            return next.run(req).await;
                        }
                        let client = match header.strip_prefix(expected.as_str()) {
                            Some("") => Some(None),
                            Some(rest) => rest.strip_prefix('.').map(|c| Some(c.to_string())),
                            None => None,
                        };
                        if let Some(client) = client {
                            if let Some(c) = client.and_then(|c| c.parse().ok()) {
                                req.headers_mut().insert(super::CLIENT_HEADER, c);
                            }
                            if let Some(rbac) = &rbac {
                                let (method, uri) = (req.method(), req.uri());
                                let asked = request_info(
                                    method.as_str(),
                                    uri.path(),
                                    uri.query().unwrap_or(""),
                                );
                                if let Err(e) = rbac.check(&agent, &asked) {
                                    eprintln!("fake API: 403 {method} {uri}: {}", e.message);
                                    api.log_refused(method, uri, req.headers(), &e);
                                    return refused(&e);
                                }
                            }
                            return next.run(req).await;
                        }
                        api.log(req.method(), req.uri(), req.headers(), &Value::Null, 401);
                        status(
                            StatusCode::UNAUTHORIZED,
                            "Unauthorized",
                            "Unauthorized".into(),
                        )
                    }
                }));

        // Handshakes run concurrently, off the accept loop, so one stalled client blocks no other.
        let (tx, rx) = mpsc::channel(64);
        let switch = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if switch.is_down() {
                    drop(tcp); // closed unanswered, as a server that is not there
                    continue;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => eprintln!("fake API: TLS handshake with {peer} failed: {e}"),
                        Err(_) => eprintln!("fake API: TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        tokio::spawn(async move {
            axum::serve(TlsListener { rx, addr }, router).await.unwrap();
        });
        TlsFakeApi {
            api,
            ca_pem,
            token,
            operator_token,
        }
    }

    /// The agent's kubeconfig for this server (mode 0600: it holds the token), for `KUBECONFIG`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        self.write_kubeconfig(&dir.join("kubeconfig"), &self.token, AGENT_NAMESPACE)
    }

    /// An agent's kubeconfig whose token names `client` in the request log:
    /// `<dir>/kubeconfig-<client>`.
    pub fn kubeconfig_for(&self, dir: &Path, client: &str) -> PathBuf {
        let token = format!("{}.{client}", self.token);
        let path = dir.join(format!("kubeconfig-{client}"));
        self.write_kubeconfig(&path, &token, AGENT_NAMESPACE)
    }

    /// The operator's kubeconfig (`<dir>/kubeconfig-operator`): client `operator` in the log,
    /// never RBAC-checked.
    pub fn operator_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig-operator");
        self.write_kubeconfig(&path, &self.operator_token, "default")
    }

    fn write_kubeconfig(&self, path: &Path, token: &str, namespace: &str) -> PathBuf {
        let path = path.to_path_buf();
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: fake\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
                self.api.url, token
            ),
        )
        .expect("write kubeconfig");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod kubeconfig");
        path
    }

    /// The CA certificate (PEM) that signed the server's.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// (CA certificate PEM, server certificate for 127.0.0.1 and localhost, its key).
fn certificates() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "prepuller fake API CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca_cert.pem(), cert.der().clone(), key)
}

/// Connections whose TLS handshake is done, for `axum::serve`.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop never ends while the runtime runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
