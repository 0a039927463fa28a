//! `prepuller pull` end to end: the real binary, a real containerd and a real registry.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use testkit::faults::{HungSocket, StallProxy};
use testkit::{Sandbox, prepuller_bin, push_image};

const MB: usize = 1024 * 1024;

struct Pull {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Pull {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: stdout {:?}\nstderr {}", self.stdout, self.stderr))
    }

    /// The summary row of `normalized`.
    fn row(&self, normalized: &str) -> Value {
        let json = self.json();
        json["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["normalized"] == normalized)
            .unwrap_or_else(|| panic!("no row for {normalized}: {json:#}"))
            .clone()
    }
}

fn from_output(o: Output) -> Pull {
    Pull {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn command(sandbox: &Sandbox, config: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(prepuller_bin());
    cmd.arg("pull")
        .arg("--config")
        .arg(config)
        .arg("--runtime-endpoint")
        .arg(sandbox.containerd.endpoint())
        .args(["-o", "json"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn pull(sandbox: &Sandbox, config: &Path, extra: &[&str]) -> Pull {
    from_output(command(sandbox, config, extra).output().await.unwrap())
}

fn write_config(sandbox: &Sandbox, name: &str, yaml: &str) -> std::path::PathBuf {
    let path = sandbox.path().join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn pulls_a_mixed_list_then_finds_everything_present() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, 2 * MB).await;
    push_image(&reg, "team/api", "2.3", 2, MB).await;
    let pinned = push_image(&reg, "team/pinned", "x", 3, MB).await;
    push_image(&reg, "team/batch", "7", 4, MB).await;
    let config = write_config(
        &sb,
        "images.yaml",
        &format!(
            "parallelism: 2\nbackoff: {{initial: 1s, max: 2s}}\nimages:\n  - {reg}/team/web:1.0\n  - image: {reg}/team/api:2.3\n    required: false\n  - {reg}/team/pinned@{pinned}\n  - registry: {reg}\n    repository: team/batch\n    tag: \"7\"\n  - image: {reg}/team/web:1.0\n    required: false\n"
        ),
    );

    let first = pull(&sb, &config, &[]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    let json = first.json();
    assert_eq!(json["ok"], true);
    // The duplicate web entry was merged: four rows, web pulled once.
    assert_eq!(json["images"].as_array().unwrap().len(), 4, "{json:#}");
    for name in ["team/web:1.0", "team/api:2.3", "team/batch:7"] {
        let row = first.row(&format!("{reg}/{name}"));
        assert_eq!(row["result"], "pulled", "{row:#}");
        assert_eq!(row["attempts"], 1);
        assert!(row["sizeBytes"].as_u64().unwrap() > 0);
    }
    let row = first.row(&format!("{reg}/team/pinned@{pinned}"));
    assert_eq!(row["result"], "pulled");
    assert_eq!(row["repoDigest"], pinned.as_str());
    // The web duplicate was declared optional once and required once: required wins.
    assert_eq!(first.row(&format!("{reg}/team/web:1.0"))["required"], true);

    let present = sb.containerd.image_refs();
    for name in ["team/web:1.0", "team/api:2.3", "team/batch:7"] {
        assert!(present.contains(&format!("{reg}/{name}")), "{present:?}");
    }

    let second = pull(&sb, &config, &[]).await;
    assert_eq!(second.code, 0, "{}", second.stderr);
    for row in second.json()["images"].as_array().unwrap() {
        assert_eq!(row["result"], "present", "{row:#}");
        assert_eq!(row["attempts"], 0);
    }
}

#[tokio::test]
async fn a_missing_tag_fails_fast_as_permanent() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    // A long back-off: if the error were retried, the run would hit --timeout instead.
    let config = write_config(
        &sb,
        "images.yaml",
        &format!(
            "backoff: {{initial: 5m, max: 5m}}\nimages:\n  - {reg}/team/web:1.0\n  - {reg}/team/web:9.9\n"
        ),
    );
    let run = pull(&sb, &config, &["--timeout", "2m"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let row = run.row(&format!("{reg}/team/web:9.9"));
    assert_eq!(row["result"], "failed");
    assert_eq!(row["errorClass"], "permanent");
    assert_eq!(row["attempts"], 1);
    let reason = row["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("{reg}/team/web:9.9")), "{reason}");
    assert!(reason.contains("does not exist"), "{reason}");
    assert_eq!(run.row(&format!("{reg}/team/web:1.0"))["result"], "pulled");
    assert_eq!(run.json()["timedOut"], false);
}

#[tokio::test]
async fn a_registry_that_is_down_is_retried_until_it_comes_back() {
    let mut sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    sb.registry.stop();
    let config = write_config(
        &sb,
        "images.yaml",
        &format!("backoff: {{initial: 1s, max: 2s}}\nimages: [{reg}/team/web:1.0]\n"),
    );
    let child = command(&sb, &config, &["--timeout", "2m"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    sb.registry.restart();
    let run = from_output(child.wait_with_output().await.unwrap());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let row = run.row(&format!("{reg}/team/web:1.0"));
    assert_eq!(row["result"], "pulled");
    assert!(row["attempts"].as_u64().unwrap() >= 2, "{row:#}");
    // Each retry was logged with its class and back-off.
    assert!(
        run.stderr.contains("pull failed, retrying"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("class=\"transient\"") || run.stderr.contains("class=transient"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn never_with_an_absent_image_fails_without_pulling() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let config = write_config(
        &sb,
        "images.yaml",
        &format!("images:\n  - image: {reg}/team/web:1.0\n    pullPolicy: Never\n"),
    );
    let run = pull(&sb, &config, &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let row = run.row(&format!("{reg}/team/web:1.0"));
    assert_eq!(row["result"], "failed");
    assert_eq!(row["attempts"], 0);
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("pullPolicy is Never"),
        "{row:#}"
    );
    assert!(sb.containerd.image_refs().is_empty());
}

#[tokio::test]
async fn a_wrong_pinned_digest_is_a_permanent_failure() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let config = write_config(
        &sb,
        "images.yaml",
        &format!("images: [\"{reg}/team/web@{wrong}\"]\n"),
    );
    let run = pull(&sb, &config, &[]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let row = run.row(&format!("{reg}/team/web@{wrong}"));
    assert_eq!(row["errorClass"], "permanent", "{row:#}");
}

#[tokio::test]
async fn optional_failures_do_not_fail_the_run() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    push_image(&reg, "team/web", "1.0", 1, MB).await;
    let config = write_config(
        &sb,
        "images.yaml",
        &format!(
            "images:\n  - {reg}/team/web:1.0\n  - image: {reg}/team/nope:1\n    required: false\n"
        ),
    );
    let run = pull(&sb, &config, &[]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.row(&format!("{reg}/team/nope:1"))["result"], "failed");
    assert!(
        run.stderr.contains("optional image failed"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn the_timeout_names_what_was_left() {
    let mut sb = Sandbox::start();
    let reg = sb.registry.host();
    sb.registry.stop();
    let config = write_config(
        &sb,
        "images.yaml",
        &format!("backoff: {{initial: 1s, max: 1s}}\nimages: [{reg}/team/web:1.0]\n"),
    );
    let run = pull(&sb, &config, &["--timeout", "3s"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json()["timedOut"], true);
    assert!(
        run.stderr.contains(&format!(
            "timed out after 3s; not finished: {reg}/team/web:1.0"
        )),
        "{}",
        run.stderr
    );
    let row = run.row(&format!("{reg}/team/web:1.0"));
    assert_eq!(row["result"], "timedOut");
    assert!(
        row["reason"].as_str().unwrap().contains("last error"),
        "{row:#}"
    );
}

#[tokio::test]
async fn an_unreachable_runtime_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("images.yaml");
    std::fs::write(&config, "images: [nginx:1.25]\n").unwrap();
    let socket = format!("unix://{}", dir.path().join("missing.sock").display());
    let o = tokio::process::Command::new(prepuller_bin())
        .args([
            "pull",
            "--runtime-wait",
            "1s",
            "--runtime-endpoint",
            &socket,
            "--config",
        ])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let run = from_output(o);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("container runtime unreachable"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&socket), "{}", run.stderr);
}

#[tokio::test]
async fn an_invalid_config_exits_2_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("images.yaml");
    std::fs::write(
        &config,
        "images:\n  - image: nginx:1.25\n    pullPolicy: Sometimes\n",
    )
    .unwrap();
    let o = tokio::process::Command::new(prepuller_bin())
        .args([
            "pull",
            "--runtime-endpoint",
            "unix:///nonexistent.sock",
            "--config",
        ])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let run = from_output(o);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let want = format!("{}:3:17: field `images[0].pullPolicy`", config.display());
    assert!(run.stderr.contains(&want), "{}", run.stderr);

    // `check` validates the same way, with exit code 1.
    let o = tokio::process::Command::new(prepuller_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let check = from_output(o);
    assert_eq!(check.code, 1);
    assert!(check.stderr.contains(&want), "{}", check.stderr);
}

#[tokio::test]
async fn check_prints_normalized_references_and_policies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("images.yaml");
    std::fs::write(
        &config,
        "images:\n  - nginx\n  - image: quay.io/prometheus/node-exporter:v1.8.0\n    required: false\n  - registry: index.docker.io\n    repository: bitnami/redis\n    tag: \"7.2\"\n",
    )
    .unwrap();
    let o = tokio::process::Command::new(prepuller_bin())
        .args(["check", "-o", "json", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    let run = from_output(o);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let images = run.json()["images"].clone();
    let got: Vec<(String, String, bool)> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["normalized"].as_str().unwrap().to_string(),
                i["policy"].as_str().unwrap().to_string(),
                i["required"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "docker.io/library/nginx:latest".into(),
                "Always".into(),
                true
            ),
            (
                "quay.io/prometheus/node-exporter:v1.8.0".into(),
                "IfNotPresent".into(),
                false
            ),
            (
                "docker.io/bitnami/redis:7.2".into(),
                "IfNotPresent".into(),
                true
            ),
        ]
    );
}

/// A pull cut by `pullTimeout` (a registry that stalls the blob body, behind a proxy): tonic
/// ends the call itself with "Timeout expired", which must read as a timeout, not "unknown".
#[tokio::test]
async fn a_stalled_blob_is_a_pull_timeout() {
    let sb = Sandbox::start();
    push_image(&sb.registry.host(), "team/web", "1.0", 1, MB).await;
    let proxy = StallProxy::start(&sb.registry.host());
    let reg = proxy.host();
    let config = write_config(
        &sb,
        "images.yaml",
        &format!(
            "pullTimeout: 2s\nbackoff: {{initial: 1s, max: 1s}}\nimages: [{reg}/team/web:1.0]\n"
        ),
    );
    let run = pull(&sb, &config, &["--timeout", "7s"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let row = run.row(&format!("{reg}/team/web:1.0"));
    assert_eq!(row["result"], "timedOut", "{row:#}");
    assert!(row["attempts"].as_u64().unwrap() >= 2, "{row:#}");
    assert_eq!(row["errorClass"], "transient", "{row:#}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("the pull did not finish within pullTimeout")
            && reason.contains("raise pullTimeout"),
        "{reason}"
    );
    // Every failed attempt was logged as a timeout.
    assert!(
        run.stderr.contains("reason=\"timeout\"") || run.stderr.contains("reason=timeout"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("reason=\"unknown\"") && !run.stderr.contains("reason=unknown"),
        "{}",
        run.stderr
    );
}

/// A runtime that accepts and never answers: SIGTERM ends `prepuller pull` within 2 s.
#[tokio::test]
async fn sigterm_ends_the_wait_for_a_hung_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let hung = HungSocket::start(&dir.path().join("hung.sock"));
    let config = dir.path().join("images.yaml");
    std::fs::write(&config, "images: [nginx:1.25]\n").unwrap();
    let child = tokio::process::Command::new(prepuller_bin())
        .args(["pull", "--runtime-endpoint", &hung.endpoint(), "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Version is now waiting on the socket.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let started = std::time::Instant::now();
    let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("pull did not exit after SIGTERM")
        .unwrap();
    let took = started.elapsed();
    let run = from_output(o);
    assert!(took < Duration::from_secs(2), "{took:?}\n{}", run.stderr);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
}

/// A hung runtime is waited for (`--runtime-wait`), not given up on after one call; and
/// `--timeout` bounds the whole run, the wait for a missing runtime included.
#[tokio::test]
async fn the_runtime_wait_and_the_timeout_bound_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let hung = HungSocket::start(&dir.path().join("hung.sock"));
    let config = dir.path().join("images.yaml");
    std::fs::write(&config, "images: [nginx:1.25]\n").unwrap();
    let run_for = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let started = std::time::Instant::now();
            let o = tokio::process::Command::new(prepuller_bin())
                .arg("pull")
                .args(args)
                .arg("--config")
                .arg(&config)
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
            (from_output(o), started.elapsed())
        }
    };
    let (run, took) = run_for(vec![
        "--runtime-endpoint".into(),
        hung.endpoint(),
        "--runtime-wait".into(),
        "4s".into(),
    ])
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(6),
        "{took:?}\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("--runtime-wait"), "{}", run.stderr);

    let missing = format!("unix://{}", dir.path().join("missing.sock").display());
    let (run, took) = run_for(vec![
        "--runtime-endpoint".into(),
        missing,
        "--timeout".into(),
        "3s".into(),
    ])
    .await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(took < Duration::from_secs(5), "{took:?}\n{}", run.stderr);
    assert!(run.stderr.contains("--timeout"), "{}", run.stderr);
}
