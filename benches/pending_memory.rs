//! Resident memory of the agent while many declared images cannot be pulled (their registry
//! refuses connections): 5,000 and 20,000 images, on a real containerd, release build. Memory
//! must follow the parallelism, not the number of images waiting. Then `prepuller pull` with
//! 10,000 such entries and a 30 s `--timeout`: its peak RSS. `make bench` runs it; it exits 1
//! when a figure misses its goal. `PENDING_BENCH_SMOKE=1` (`make bench-smoke`, in `make test`)
//! measures only 5,000 images at 30 s.
//!
//! Resident memory does not depend on the machine's load, so the goals have no margin.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use testkit::goals::Goals;
use testkit::{AgentProc, Sandbox, prepuller_bin, rss_kib, status_kib};

const SETTLE: Duration = Duration::from_secs(30);
/// README: "the same after 60 s": what may be added between the two samples (allocator noise).
const GROWTH_KIB: u64 = 2 * 1024;
/// README's goals, MiB, per number of images waiting.
const GOALS_MIB: [(usize, u64); 2] = [(5_000, 40), (20_000, 64)];
/// README: `prepuller pull` with 10,000 such entries peaks at 19.1 MiB.
const PULL_GOAL_MIB: u64 = 32;

async fn measure(sb: &Sandbox, images: usize, twice: bool, goals: &mut Goals) {
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
    let goal = GOALS_MIB
        .iter()
        .find(|(n, _)| *n == images)
        .map_or(64, |(_, g)| *g);
    println!(
        "  {images} images waiting: RSS {:.1} MiB after {}s",
        first as f64 / 1024.0,
        SETTLE.as_secs(),
    );
    goals.check(
        first < goal * 1024,
        format!(
            "{images} images: RSS {:.1} MiB < {goal} MiB after {} s",
            first as f64 / 1024.0,
            SETTLE.as_secs()
        ),
    );
    if twice {
        tokio::time::sleep(SETTLE).await;
        let later = rss_kib(pid);
        println!(
            "  {images} images waiting: RSS {:.1} MiB after {}s",
            later as f64 / 1024.0,
            2 * SETTLE.as_secs()
        );
        goals.check(
            later < goal * 1024 && later <= first + GROWTH_KIB,
            format!(
                "{images} images: RSS {:.1} MiB after {} s, under {goal} MiB and at most {} MiB \
                 above the first sample",
                later as f64 / 1024.0,
                2 * SETTLE.as_secs(),
                GROWTH_KIB / 1024
            ),
        );
    }
    agent.child.kill().await.unwrap();
}

async fn measure_pull(sb: &Sandbox, images: usize, goals: &mut Goals) {
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
    goals.check(
        peak > 0 && peak < PULL_GOAL_MIB * 1024,
        format!(
            "prepuller pull, {images} entries: peak RSS {:.1} MiB < {PULL_GOAL_MIB} MiB",
            peak as f64 / 1024.0
        ),
    );
}

#[tokio::main]
async fn main() {
    let smoke = std::env::var_os("PENDING_BENCH_SMOKE").is_some_and(|v| v == "1");
    let sb = Sandbox::start();
    let mut goals = Goals::new();
    println!("agent, every declared image on a registry that refuses connections (release build):");
    if smoke {
        measure(&sb, 5_000, false, &mut goals).await;
    } else {
        for (images, _) in GOALS_MIB {
            measure(&sb, images, true, &mut goals).await;
        }
        measure_pull(&sb, 10_000, &mut goals).await;
    }
    // Stops containerd first: `finish` may exit the process.
    drop(sb);
    goals.finish();
}
