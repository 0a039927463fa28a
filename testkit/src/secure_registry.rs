//! A `docker-registry` over TLS with htpasswd basic auth, trusted by a containerd.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::process::{Lifetime, Proc, absolute, toml_str};
use crate::tls::ca_signed_server_cert;
use crate::{Containerd, POLL, READY_TIMEOUT, Registry, Sandbox, push_image};

/// A second `docker-registry` serving the storage of a plain one over TLS (a CA made here) with
/// htpasswd (bcrypt) basic auth, on 127.0.0.2 (loopback hosts default to plain HTTP in
/// containerd). Images are pushed through the plain registry; pulls go through this one.
/// distribution loads htpasswd once, so changing users restarts it.
pub struct SecureRegistry {
    dir: PathBuf,
    storage: PathBuf,
    port: u16,
    proc: Proc,
}

pub const SECURE_REGISTRY_IP: &str = "127.0.0.2";

impl SecureRegistry {
    /// A sandbox with `images` (repo:tag; 64 KiB of random layers each, seeded from `seed` on)
    /// pushed to its plain registry, and a secure one serving them to `users` (name, password).
    pub async fn in_sandbox(
        images: &[&str],
        seed: u64,
        users: &[(&str, &str)],
    ) -> (Sandbox, SecureRegistry) {
        let sb = Sandbox::start();
        for (n, image) in images.iter().enumerate() {
            let (repo, tag) = image.split_once(':').expect("repo:tag");
            push_image(&sb.registry.host(), repo, tag, seed + n as u64, 64 * 1024).await;
        }
        let secure = SecureRegistry::start(
            &sb.path().join("secure-registry"),
            &sb.registry,
            &sb.containerd,
            users,
        );
        (sb, secure)
    }

    /// Serves `plain`'s storage; `users` are (name, password); trusted by `containerd` through
    /// `certs.d/<host>/hosts.toml` with `ca` on both the server and the host entry.
    pub fn start(
        dir: &Path,
        plain: &Registry,
        containerd: &Containerd,
        users: &[(&str, &str)],
    ) -> SecureRegistry {
        let dir = absolute(dir);
        fs::create_dir_all(&dir).expect("create secure registry dir");
        let port = {
            let l = TcpListener::bind((SECURE_REGISTRY_IP, 0)).expect("bind 127.0.0.2:0");
            l.local_addr().unwrap().port()
        };
        let mut reg = SecureRegistry {
            proc: Proc::new("secure-registry", &dir, Lifetime::Owned),
            storage: plain.dir().join("storage"),
            dir,
            port,
        };
        reg.write_certs();
        let host = reg.host();
        let certs = containerd.certs_dir().join(&host);
        fs::create_dir_all(&certs).expect("create certs.d host dir");
        let ca = reg.ca_path();
        fs::write(
            certs.join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\nca = {ca}\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = {ca}\n",
                ca = toml_str(&ca)
            ),
        )
        .expect("write hosts.toml");
        reg.set_users(users);
        reg
    }

    /// Replaces the accepted users (a password rotation on the registry side) and restarts.
    pub fn set_users(&mut self, users: &[(&str, &str)]) {
        let mut htpasswd = String::new();
        for (user, password) in users {
            let out = Command::new("htpasswd")
                .args(["-nbB", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            htpasswd.push_str(String::from_utf8_lossy(&out.stdout).trim());
            htpasswd.push('\n');
        }
        fs::write(self.dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        self.write_config();
        self.proc.kill();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(self.dir.join("config.yml"));
        self.proc.spawn(cmd);
        self.wait_ready();
    }

    /// "127.0.0.2:PORT"
    pub fn host(&self) -> String {
        format!("{SECURE_REGISTRY_IP}:{}", self.port)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn write_certs(&self) {
        let cert = ca_signed_server_cert(SECURE_REGISTRY_IP);
        fs::write(self.ca_path(), cert.ca_pem).unwrap();
        fs::write(self.dir.join("server.crt"), cert.cert_pem).unwrap();
        fs::write(self.dir.join("server.key"), cert.key_pem).unwrap();
    }

    fn write_config(&self) {
        let config = format!(
            "\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {storage}
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {host}
  secret: prepuller-test-harness
  tls:
    certificate: {dir}/server.crt
    key: {dir}/server.key
auth:
  htpasswd:
    realm: prepuller-test
    path: {dir}/htpasswd
",
            storage = self.storage.display(),
            host = self.host(),
            dir = self.dir.display(),
        );
        fs::write(self.dir.join("config.yml"), config).expect("write registry config");
    }

    /// Ready when `/v2/` asks for credentials over TLS (checked with curl, trusting our CA).
    fn wait_ready(&mut self) {
        let start = Instant::now();
        let url = format!("https://{}/v2/", self.host());
        loop {
            let code = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                ])
                .arg("--cacert")
                .arg(self.ca_path())
                .arg(&url)
                .output()
                .expect("run curl");
            if String::from_utf8_lossy(&code.stdout) == "401" {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!(
                    "secure registry exited ({status}) before it was ready\n{}",
                    self.proc.log_tail()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "secure registry not ready\n{}",
                self.proc.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The registry's log: what it was sent (never passwords; checked by the tests).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}
