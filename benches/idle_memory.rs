//! Resident memory of the agent when idle, with 100 declared images present on a real
//! containerd: measured once the node is ready, and again after many resyncs, to show that it
//! does not grow. `make bench` runs it; it exits 1 when a figure misses its goal (resident
//! memory does not depend on the machine's load: no margin).

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::goals::Goals;
use testkit::{AgentProc, Sandbox, push_image, rss_kib};

const IMAGES: usize = 100;
const SETTLE: Duration = Duration::from_secs(5);
const SOAK: Duration = Duration::from_secs(60);
/// README: 11.9 MiB once idle.
const IDLE_GOAL_KIB: u64 = 16 * 1024;
/// README: "unchanged after 60 more passes": allocator noise only.
const GROWTH_KIB: u64 = 1024;

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
    let mut agent = AgentProc::start_with(
        &sb,
        &config,
        Path::new("/nonexistent/kubeconfig"),
        &[("PREPULLER_LOG", "warn")],
    );
    let pid = agent.child.id().unwrap();
    let started = Instant::now();
    while agent.get("/readyz").await.map(|r| r.0) != Some(200) {
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
    agent.child.kill().await.unwrap();
    drop(sb);
    let mut goals = Goals::new();
    goals.check(
        first < IDLE_GOAL_KIB,
        format!(
            "RSS once idle {:.1} MiB < {} MiB",
            first as f64 / 1024.0,
            IDLE_GOAL_KIB / 1024
        ),
    );
    goals.check(
        later <= first + GROWTH_KIB,
        format!(
            "RSS after {} s more {:.1} MiB, at most {} MiB above",
            SOAK.as_secs(),
            later as f64 / 1024.0,
            GROWTH_KIB / 1024
        ),
    );
    goals.finish();
}
