//! Byte-level pull progress on real containerd: a 50 MB image made by the test, pulled through
//! a [`FaultProxy`] that throttles each blob to a few MB/s (about 12 s in all). The binary's
//! `prepuller pull` in a terminal (a tmux pane, captured) shows growing bytes and a rate; the
//! agent's `/status` shows growing `bytesDone` with its `bytesTotal` while it pulls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::faults::{Fault, FaultProxy};
use testkit::{AgentProc, Sandbox, TestImage, build_image, prepuller_bin, push_built};

/// Two 25 MB layers, fetched in parallel at this rate each: about 12 s.
const IMAGE_BYTES: usize = 50_000_000;
const BYTES_PER_SECOND: u64 = 2_000_000;

/// The image pushed to the registry; pulled through the throttling proxy as `<proxy>/team/big:1`.
async fn throttled_image(sb: &Sandbox) -> (FaultProxy, String, TestImage) {
    let image = tokio::task::spawn_blocking(|| build_image(42, IMAGE_BYTES))
        .await
        .unwrap();
    push_built(&sb.registry.host(), "team/big", "1", &image).await;
    let proxy = FaultProxy::start(&sb.registry.host(), Fault::Throttle(BYTES_PER_SECOND));
    let reference = format!("{}/team/big:1", proxy.host());
    (proxy, reference, image)
}

fn write_config(dir: &Path, reference: &str) -> PathBuf {
    let path = dir.join("images.yaml");
    std::fs::write(
        &path,
        format!("resyncInterval: 1h\nimages:\n  - {reference}\n"),
    )
    .unwrap();
    path
}

/// `12.00 MB` → 12_000_000 (indicatif's decimal units).
fn parse_bytes(number: &str, unit: &str) -> Option<f64> {
    let scale = match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// From a line `… pulling 12.00 MB / 50.00 MB (24%) at 2.10 MB/s 5s`: done and the rate.
fn progress_of(line: &str) -> Option<(f64, Option<f64>)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "pulling")?;
    let done = parse_bytes(words.get(at + 1)?, words.get(at + 2)?)?;
    let rate = words
        .iter()
        .position(|w| *w == "at")
        .and_then(|i| parse_bytes(words.get(i + 1)?, words.get(i + 2)?.strip_suffix("/s")?));
    Some((done, rate))
}

/// A tmux server of its own, its socket in the test's directory (removed with it), killed on
/// drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn start(dir: &Path, command: &str) -> Tmux {
        let socket = dir.join("tmux.sock");
        let ok = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["new-session", "-d", "-x", "120", "-y", "30", "-s", "pull"])
            .arg(command)
            .status()
            .expect("run tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux { socket }
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["capture-pane", "-p", "-t", "pull"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .status();
    }
}

#[tokio::test]
async fn pull_on_a_terminal_shows_growing_bytes_and_a_rate() {
    let sb = Sandbox::start();
    let (_proxy, reference, _image) = throttled_image(&sb).await;
    let config = write_config(sb.path(), &reference);
    let done_file = sb.path().join("pull.exit");
    let tmux = Tmux::start(
        sb.path(),
        &format!(
            "{} pull -c {} --runtime-endpoint {}; echo $? > {}; sleep 600",
            prepuller_bin().display(),
            config.display(),
            sb.containerd.endpoint(),
            done_file.display(),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<(f64, Option<f64>)> = Vec::new();
    let mut total_shown = false;
    let mut screens = String::new();
    while !done_file.exists() {
        assert!(Instant::now() < deadline, "no end within 120 s:\n{screens}");
        let screen = tmux.capture();
        if let Some(line) = screen
            .lines()
            .find(|l| l.contains("team/big") && progress_of(l).is_some())
        {
            seen.extend(progress_of(line));
            // The layers' 50,007,040 bytes (the config may be in by the time it is looked up).
            total_shown |= line.contains(" / 50.01 MB (");
        }
        screens = screen;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let exit = std::fs::read_to_string(&done_file).unwrap();
    assert_eq!(
        exit.trim(),
        "0",
        "prepuller pull failed:\n{}",
        tmux.capture()
    );
    let mut distinct: Vec<f64> = seen.iter().map(|s| s.0).collect();
    distinct.dedup();
    assert!(
        distinct.len() >= 3 && distinct.windows(2).all(|w| w[0] <= w[1]),
        "the line of the image in flight did not show growing bytes: {seen:?}\nlast screen:\n{screens}"
    );
    assert!(
        *distinct.last().unwrap() >= 10e6,
        "bytes seen: {distinct:?}"
    );
    let rates: Vec<f64> = seen.iter().filter_map(|s| s.1).collect();
    assert!(
        rates.iter().any(|&r| r > 0.5e6),
        "no rate on the line: {seen:?}"
    );
    assert!(total_shown, "the total never showed: {seen:?}\n{screens}");
    eprintln!("terminal samples (bytes, rate): {seen:?}");
}

#[tokio::test]
async fn status_shows_growing_bytes_while_the_agent_pulls() {
    let sb = Sandbox::start();
    let (_proxy, reference, image) = throttled_image(&sb).await;
    let config = write_config(sb.path(), &reference);
    let agent = AgentProc::start(&sb, &config);
    let layers: u64 = image.layers.iter().map(|l| l.len() as u64).sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples: Vec<(u64, Option<u64>)> = Vec::new();
    let mut gauge_seen = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "not present within 120 s; samples {samples:?}\n{}",
            agent.log()
        );
        let Some(status) = agent.status().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let i = &status["images"][0];
        if i["state"] == "Present" {
            assert!(i["bytesDone"].is_null(), "cleared once present: {i}");
            break;
        }
        if let Some(done) = i["bytesDone"].as_u64() {
            samples.push((done, i["bytesTotal"].as_u64()));
            if !gauge_seen && let Some((_, metrics)) = agent.get("/metrics").await {
                gauge_seen = metrics.lines().any(|l| {
                    l.strip_prefix("prepuller_pull_progress_bytes ")
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut distinct: Vec<u64> = samples.iter().map(|s| s.0).collect();
    distinct.dedup();
    assert!(
        distinct.len() >= 3 && distinct.windows(2).all(|w| w[0] <= w[1]),
        "bytesDone did not grow while pulling: {samples:?}"
    );
    // The total is what the pull fetches: the layers, and the config if it was not in yet.
    let total = samples.iter().rev().find_map(|s| s.1);
    assert!(
        total.is_some_and(|t| t >= layers && t <= layers + image.config.len() as u64),
        "bytesTotal {total:?}, layers {layers}: {samples:?}"
    );
    assert!(gauge_seen, "prepuller_pull_progress_bytes never above 0");
    eprintln!("/status samples (bytesDone, bytesTotal): {samples:?}");
}
