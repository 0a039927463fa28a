//! Resident memory of the agent when idle, with 100 declared images present on a real
//! containerd: measured once the node is ready, and again after many resyncs, to show that it
//! does not grow. `make bench` runs it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::{Sandbox, free_port, prepuller_bin, push_image};

const IMAGES: usize = 100;
const SETTLE: Duration = Duration::from_secs(5);
const SOAK: Duration = Duration::from_secs(60);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[tokio::main]
async fn main() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    let mut yaml = String::from("resyncInterval: 1s\nimages:\n");
    for i in 0..IMAGES {
        push_image(&reg, &format!("bench/img{i}"), "1", i as u64, 4096).await;
        yaml.push_str(&format!("  - {reg}/bench/img{i}:1\n"));
    }
    let config = sb.path().join("images.yaml");
    std::fs::write(&config, yaml).unwrap();
    let port = free_port();
    let mut agent = tokio::process::Command::new(prepuller_bin())
        .args([
            "agent",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--runtime-endpoint",
            &sb.containerd.endpoint(),
            "--config",
        ])
        .arg(&config)
        .arg("--api-socket")
        .arg(sb.path().join("agent.sock"))
        .env("PREPULLER_LOG", "warn")
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = testkit::http_client()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "agent not ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("idle agent, {IMAGES} images present on containerd, resyncInterval 1s:");
    println!(
        "  ready after {:.1}s (pulled all {IMAGES})",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(SETTLE).await;
    let first = rss_kib(pid);
    println!(
        "  RSS once idle:           {:.1} MiB",
        first as f64 / 1024.0
    );
    tokio::time::sleep(SOAK).await;
    let later = rss_kib(pid);
    println!(
        "  RSS after {}s more (~{} resyncs): {:.1} MiB",
        SOAK.as_secs(),
        SOAK.as_secs(),
        later as f64 / 1024.0
    );
    agent.kill().await.unwrap();
}
