//! A running `prepuller agent` for the end-to-end tests and the memory benches.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::{Sandbox, free_port, http_client, log_tail};

/// Path of the built `prepuller` binary. Cargo builds it for the integration tests and benches
/// of its package, next to their `deps/` directory; it names it in `CARGO_BIN_EXE_prepuller`
/// only while compiling them, which a library cannot read, hence the look-up at run time.
pub fn prepuller_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_prepuller") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe.parent().expect("the test executable's directory");
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir = dir.parent().expect("the target directory");
    }
    let bin = dir.join("prepuller");
    assert!(
        bin.is_file(),
        "no prepuller binary at {} (built by `cargo test`/`cargo bench`)",
        bin.display()
    );
    bin
}

/// Generous: a 2-core CI machine runs several sandboxes at once.
pub const AGENT_CONVERGE: Duration = Duration::from_secs(60);

/// How to start an agent: which binary, where its files go, what it runs against.
pub struct AgentSpec<'a> {
    pub bin: &'a Path,
    /// Its log and API socket go here.
    pub dir: &'a Path,
    pub endpoint: &'a str,
    pub config: &'a Path,
    /// `NODE_NAME`; None leaves it unset.
    pub node: Option<&'a str>,
    pub kubeconfig: &'a Path,
}

/// A running `prepuller agent` (node `node-a`) on a sandbox, its HTTP on a free port, its log
/// in the sandbox dir. Killed on drop.
pub struct AgentProc {
    pub child: tokio::process::Child,
    base: String,
    pub log: PathBuf,
}

impl AgentProc {
    /// Without a cluster: never the developer's own (KUBECONFIG points nowhere).
    pub fn start(sb: &Sandbox, config: &Path) -> AgentProc {
        Self::start_with_kubeconfig(sb, config, Path::new("/nonexistent/kubeconfig"))
    }

    pub fn start_with_kubeconfig(sb: &Sandbox, config: &Path, kubeconfig: &Path) -> AgentProc {
        Self::start_with(sb, config, kubeconfig, &[])
    }

    /// With extra environment variables (`PREPULLER_LOG`, …).
    pub fn start_with(
        sb: &Sandbox,
        config: &Path,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> AgentProc {
        Self::start_on(
            sb.path(),
            &sb.containerd.endpoint(),
            config,
            kubeconfig,
            env,
        )
    }

    /// On any runtime endpoint (a faulty one, say), with its files in `dir`.
    pub fn start_on(
        dir: &Path,
        endpoint: &str,
        config: &Path,
        kubeconfig: &Path,
        env: &[(&str, &str)],
    ) -> AgentProc {
        Self::spawn(
            &AgentSpec {
                bin: &prepuller_bin(),
                dir,
                endpoint,
                config,
                node: Some("node-a"),
                kubeconfig,
            },
            env,
        )
    }

    /// Any binary (the release build, say), any node name or none (`NODE_NAME` unset).
    pub fn spawn(spec: &AgentSpec, env: &[(&str, &str)]) -> AgentProc {
        let port = free_port();
        let log = spec.dir.join(format!("agent-{port}.log"));
        let mut cmd = tokio::process::Command::new(spec.bin);
        cmd.arg("agent")
            .arg("--config")
            .arg(spec.config)
            .arg("--runtime-endpoint")
            .arg(spec.endpoint)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--api-socket")
            .arg(spec.dir.join(format!("agent-{port}.sock")))
            .env("KUBECONFIG", spec.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        if let Some(node) = spec.node {
            cmd.env("NODE_NAME", node);
        }
        // The disk guard's capacity check off (no image filesystem under this root): the host's
        // disk may be above the kubelet's GC threshold as the kubelet counts it (this machine's
        // ext4 reserves most of its free blocks: 87 %), and the tests of other things must not
        // depend on it. tests/disk_guard.rs passes its own.
        cmd.env("PREPULLER_HOST_ROOT", "/nonexistent-host-root");
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", spec.bin.display()));
        AgentProc {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Its HTTP listener's address.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address")
    }

    /// The last 60 lines of its log.
    pub fn log(&self) -> String {
        log_tail(&self.log, 60)
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = http_client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    pub async fn status(&self) -> Option<serde_json::Value> {
        let (_, body) = self.get("/status").await?;
        serde_json::from_str(&body).ok()
    }

    /// Polls `/status` until `check` holds; panics with the agent's log after AGENT_CONVERGE.
    pub async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + AGENT_CONVERGE;
        loop {
            if let Some(s) = self.status().await
                && check(&s)
            {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; last status {:#}\nagent log:\n{}",
                    self.status().await.unwrap_or_default(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
