//! The agent's HTTP listener under attack: the real binary, probed by the hostile client of
//! testkit/src/hostile.rs (what any pod on the network can do to `0.0.0.0:8080`).

use std::time::{Duration, Instant};

use testkit::hostile::{Flood, Hostile};
use testkit::{AgentProc, Sandbox};

/// The goals of issue 10 (README, "Cost"): the figures a user was promised.
const RSS_LIMIT_KIB: u64 = 40 * 1024;
const SLOWLORIS_CLOSED_WITHIN: Duration = Duration::from_secs(10);
/// Hostile connections opened at once, half idle, half half-sent.
const FLOOD: usize = 10_000;

#[tokio::test]
async fn hostile_connections_are_capped_timed_out_and_cost_bounded_memory() {
    let limit = testkit::hostile::raise_open_files(FLOOD as u64 + 1024);
    let flood = FLOOD.min((limit as usize).saturating_sub(512));
    let sb = Sandbox::start();
    // Ready with nothing to pull: /readyz answers 200 from the first pass on.
    let config = sb.path().join("images.yaml");
    std::fs::write(&config, "images: []\n").unwrap();
    let agent = AgentProc::start(&sb, &config);
    let addr = agent.http_addr();
    let deadline = Instant::now() + testkit::AGENT_CONVERGE;
    while testkit::hostile::get(addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pid = agent.child.id().unwrap();
    let rss_before = testkit::rss_kib(pid);

    // Slowloris: a byte of a header every second never finishes the head.
    let mut drips = tokio::task::JoinSet::new();
    for _ in 0..5 {
        drips.spawn(testkit::hostile::slowloris(
            addr,
            Duration::from_secs(1),
            Duration::from_secs(30),
        ));
    }
    while let Some(open_for) = drips.join_next().await {
        let open_for = open_for.unwrap();
        eprintln!("slowloris socket closed by the agent after {open_for:?}");
        assert!(
            open_for.is_some_and(|d| d <= SLOWLORIS_CLOSED_WITHIN),
            "a slowloris socket was open for {open_for:?} (None: still open after 30 s)\n{}",
            agent.log()
        );
    }

    // The flood: idle and half-sent connections at once, held until the agent closes them.
    let started = Instant::now();
    let hostile = Flood::open(
        addr,
        flood,
        &[Hostile::Idle, Hostile::HalfSent],
        Duration::from_secs(3),
    )
    .await;
    let connected = hostile.connected;
    eprintln!(
        "flood of {flood}: {connected} connected, {} not admitted by the kernel within 3 s",
        hostile.not_connected,
    );
    // Under attack: /readyz still answers (the hostile sockets are still held).
    let mut peak = testkit::rss_kib(pid);
    let readyz = loop {
        peak = peak.max(testkit::rss_kib(pid));
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            testkit::hostile::get(addr, "/readyz"),
        )
        .await;
        if let Ok(Some((code, body))) = probe {
            break (code, body, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/readyz did not answer under attack\n{}",
            agent.log()
        );
    };
    eprintln!("/readyz answered {} after {:?}", readyz.0, readyz.2);
    assert_eq!(readyz.0, 200, "{}", readyz.1);
    let (sampler_stop, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = peak;
        while !*stopped.borrow() {
            peak = peak.max(testkit::rss_kib(pid));
            let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
        }
        peak
    });
    let (closed, longest) = hostile
        .closed_by_server_within(Duration::from_secs(90))
        .await;
    sampler_stop.send(true).unwrap();
    let peak = sampler.await.unwrap();
    let after = testkit::rss_kib(pid);
    eprintln!(
        "RSS before {rss_before} KiB, peak under attack {peak} KiB, after {after} KiB; \
         the agent closed {closed} hostile sockets (longest open {longest:?})"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "RSS peaked at {peak} KiB under {flood} hostile connections"
    );
    assert_eq!(closed, connected, "hostile sockets the agent never closed");
    assert_eq!(
        testkit::hostile::get(addr, "/readyz").await.map(|r| r.0),
        Some(200),
        "after the attack"
    );
}
