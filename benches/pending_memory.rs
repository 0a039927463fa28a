//! Resident memory of the agent while many declared images cannot be pulled (their registry
//! refuses connections): 5,000 and 20,000 images, on a real containerd, release build. Memory
//! must follow the parallelism, not the number of images waiting. Then `prepuller pull` with
//! 10,000 such entries and a 30 s `--timeout`: its peak RSS. `make bench` runs it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use testkit::{AgentProc, Sandbox, prepuller_bin, rss_kib, status_kib};

const SETTLE: Duration = Duration::from_secs(30);

async fn measure(sb: &Sandbox, images: usize) {
    // Port 1 on loopback: connection refused, as a registry that is down.
    let mut yaml = String::from("images:\n");
    for i in 0..images {
        yaml.push_str(&format!("  - 127.0.0.1:1/bench/img{i}:1\n"));
    }
    let config = sb.path().join(format!("missing-{images}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let mut agent = AgentProc::start_with(
        sb,
        &config,
        Path::new("/nonexistent/kubeconfig"),
        &[("PREPULLER_LOG", "warn")],
    );
    let pid = agent.child.id().unwrap();
    tokio::time::sleep(SETTLE).await;
    let first = rss_kib(pid);
    tokio::time::sleep(SETTLE).await;
    let later = rss_kib(pid);
    println!(
        "  {images} images waiting: RSS {:.1} MiB after {}s, {:.1} MiB after {}s",
        first as f64 / 1024.0,
        SETTLE.as_secs(),
        later as f64 / 1024.0,
        2 * SETTLE.as_secs()
    );
    agent.child.kill().await.unwrap();
}

async fn measure_pull(sb: &Sandbox, images: usize) {
    let mut yaml = String::from("images:\n");
    for i in 0..images {
        yaml.push_str(&format!("  - 127.0.0.1:1/bench/img{i}:1\n"));
    }
    let config = sb.path().join(format!("pull-{images}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    let mut pull = tokio::process::Command::new(prepuller_bin())
        .args([
            "pull",
            "--runtime-endpoint",
            &sb.containerd.endpoint(),
            "--timeout",
            "30s",
            "--output",
            "json",
            "--config",
        ])
        .arg(&config)
        .env("PREPULLER_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = pull.id().unwrap();
    // The peak so far, read until the process is gone.
    let mut peak = 0;
    loop {
        if let Some(h) = status_kib(pid, "VmHWM") {
            peak = peak.max(h);
        }
        tokio::select! {
            _ = pull.wait() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    println!(
        "  prepuller pull, {images} entries waiting, --timeout 30s: peak RSS {:.1} MiB",
        peak as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() {
    let sb = Sandbox::start();
    println!("agent, every declared image on a registry that refuses connections (release build):");
    for images in [5_000, 20_000] {
        measure(&sb, images).await;
    }
    measure_pull(&sb, 10_000).await;
}
