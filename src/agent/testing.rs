//! What the agent's unit tests share: an agent on the in-memory runtime, over a config file in
//! a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::runtime::fake::FakeRuntime;
use crate::status::metrics::Metrics;
use crate::status::{ImageState, StatusHub};

use super::Agent;

pub(super) struct Setup {
    pub(super) rt: Arc<FakeRuntime>,
    pub(super) hub: Arc<StatusHub>,
    pub(super) agent: Agent<FakeRuntime>,
    pub(super) _dir: tempfile::TempDir,
    pub(super) path: PathBuf,
}

pub(super) fn setup(yaml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("images.yaml");
    std::fs::write(&path, yaml).unwrap();
    let config = Config::load(&path).unwrap();
    let rt = Arc::new(FakeRuntime::new());
    let hub = Arc::new(StatusHub::new(
        None,
        path.display().to_string(),
        "unix:///fake".into(),
    ));
    let agent = Agent::new(
        rt.clone(),
        hub.clone(),
        Arc::new(Metrics::new(hub.clone())),
        path.clone(),
        config,
    );
    Setup {
        rt,
        hub,
        agent,
        _dir: dir,
        path,
    }
}

pub(super) fn state(hub: &StatusHub, key: &str) -> ImageState {
    hub.snapshot()
        .images
        .iter()
        .find(|i| i.normalized == key)
        .unwrap()
        .state
}

/// A docker config.json with user `bot` and `password` for r.example.
pub(super) fn write_bot_login(path: &Path, password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("bot:{password}"));
    std::fs::write(
        path,
        format!(r#"{{"auths": {{"r.example": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
}
