//! RBAC checked from below: the Roles, ClusterRoles and bindings of `deploy/` as
//! `kubectl kustomize` renders them (once per test process), for the fake API server to
//! authorize the agent's requests with, and the one assertion every scenario makes on its
//! request log: no request was refused 403.
//!
//! Every component and overlay of `deploy/` adds no RBAC of its own (all of it is in
//! `deploy/base/rbac.yaml`), so the base's rendering is what each of them installs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

/// The repository's `deploy/`.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is in the repository")
        .join("deploy")
}

/// `kubectl kustomize deploy/`, rendered once per process.
pub fn deploy_rbac() -> &'static str {
    static RENDERED: OnceLock<String> = OnceLock::new();
    RENDERED.get_or_init(|| {
        let dir = deploy_dir();
        // The machine's kubectl, else the one `make setup` put in .tools/bin (as the Makefile).
        let local = dir.with_file_name(".tools/bin/kubectl");
        let kubectl = if local.is_file() && which_kubectl().is_none() {
            local
        } else {
            PathBuf::from("kubectl")
        };
        let out = Command::new(&kubectl)
            .arg("kustomize")
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubectl kustomize {}: {e} (hack/setup-deploy-tools.sh installs kubectl)",
                    dir.display()
                )
            });
        assert!(
            out.status.success(),
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl kustomize printed UTF-8")
    })
}

fn which_kubectl() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("kubectl"))
        .find(|p| p.is_file())
}

/// [`deploy_rbac`] in a file (once per process), for `examples/fake_apiserver --rbac`.
pub fn deploy_rbac_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("prepuller-rbac-{}.yaml", std::process::id()));
        std::fs::write(&path, deploy_rbac()).expect("write the rendered RBAC");
        path
    })
    .clone()
}

/// A copy of rendered manifests with `verb` taken out of the rules of the Role (or
/// ClusterRole) named `role`: what a test that RBAC can fail uses.
pub fn without_verb(yaml: &str, role: &str, verb: &str) -> String {
    let docs: Vec<String> = yaml
        .split("\n---\n")
        .map(|doc| {
            let is_role = doc.contains("\nkind: Role\n") || doc.contains("\nkind: ClusterRole\n");
            if !is_role || !doc.contains(&format!("\n  name: {role}\n")) {
                return doc.to_string();
            }
            let removed: Vec<&str> = doc
                .lines()
                .filter(|l| l.trim() != format!("- {verb}"))
                .collect();
            assert_ne!(removed.len(), doc.lines().count(), "no {verb} in {role}");
            removed.join("\n")
        })
        .collect();
    docs.join("\n---\n")
}

/// The requests of a fake API request log (`[{method, path, query, status, message}]`)
/// refused 403, as `METHOD path?query: message`.
pub fn forbidden(log: &[Value]) -> Vec<String> {
    log.iter()
        .filter(|r| r["status"] == 403)
        .map(|r| {
            format!(
                "{} {}?{}: {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or(""),
                r["query"].as_str().unwrap_or(""),
                r["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Fails on any request refused 403: the agent asked for something `deploy/` does not grant
/// (fix the agent or the RBAC, least privilege).
pub fn assert_no_forbidden(log: &[Value]) {
    let refused = forbidden(log);
    assert!(
        refused.is_empty(),
        "the API refused {} request(s) with the RBAC of deploy/:\n{}",
        refused.len(),
        refused.join("\n")
    );
}
