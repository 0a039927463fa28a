//! `examples/fake_apiserver` started as its own process, as the acceptance tests and the fleet
//! simulation run it: the listeners its ready line names, and its log.

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
    /// A kubeconfig for the API (over TLS).
    pub kubeconfig: PathBuf,
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
            log,
        }
    }
}
