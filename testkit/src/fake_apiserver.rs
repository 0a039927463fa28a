//! `examples/fake_apiserver` started as its own process, as the acceptance tests and the fleet
//! simulation run it: the listeners its ready line names, and its log. It authorizes the
//! agent's requests with the RBAC of `deploy/` ([`crate::rbac`]); dropping it fails the test
//! (unless it is failing already) if any request was refused 403.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncBufReadExt;

use crate::log_tail;

pub struct FakeApiServer {
    /// Killed on drop.
    pub child: tokio::process::Child,
    /// The control listener's base URL (`http://127.0.0.1:<port>`).
    pub control: String,
    /// The agent's kubeconfig for the API (over TLS): RBAC-checked as the ServiceAccount.
    pub kubeconfig: PathBuf,
    /// The operator's (`prepuller nodes`, `pull` with `secret:`): not RBAC-checked.
    pub operator_kubeconfig: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl FakeApiServer {
    /// Runs `bin --dir dir` and waits (up to 30 s) for its ready line.
    pub async fn start(bin: &Path, dir: &Path) -> FakeApiServer {
        let log = dir.join("fake-api.log");
        let mut child = tokio::process::Command::new(bin)
            .arg("--dir")
            .arg(dir)
            .arg("--rbac")
            .arg(crate::rbac::deploy_rbac_file())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start the fake API server");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the fake API server did not start within 30 s")
            .unwrap()
            .unwrap_or_else(|| panic!("the fake API server exited: {}", log_tail(&log, 20)));
        let ready: Value = serde_json::from_str(&line).unwrap();
        FakeApiServer {
            child,
            control: ready["control"].as_str().unwrap().to_string(),
            kubeconfig: PathBuf::from(ready["kubeconfig"].as_str().unwrap()),
            operator_kubeconfig: PathBuf::from(ready["operatorKubeconfig"].as_str().unwrap()),
            log,
        }
    }

    /// The request log (`GET /requests`), read without a runtime (for `Drop`); `None` when
    /// the server does not answer (killed by the test).
    pub fn requests_blocking(&self) -> Option<Vec<Value>> {
        use std::io::{Read, Write};
        let addr = self.control.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(conn, "GET /requests HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some(serde_json::from_str(body).expect("GET /requests answers JSON"))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if !std::thread::panicking()
            && let Some(log) = self.requests_blocking()
        {
            crate::rbac::assert_no_forbidden(&log);
        }
    }
}
