//! The agent's HTTP listener under attack: the real binary, probed by the hostile client of
//! testkit/src/hostile.rs (what any pod on the network can do to `0.0.0.0:8080`).

use std::time::{Duration, Instant};

use testkit::hostile::{Flood, Hostile};
use testkit::{AgentProc, Sandbox};

/// The README's figures (under "Cost" and "HTTP"), each with the margin a loaded 2-core machine
/// needs where it is a time.
const RSS_LIMIT_KIB: u64 = 40 * 1024;
/// The agent's header-read timeout (`HEADER_READ_TIMEOUT`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Scheduling slack on a 2-core machine shared with builds.
const MARGIN: Duration = Duration::from_secs(3);
/// A slowloris is closed by the agent's own timer, the moment it fires: only a little slack.
const DRIP_MARGIN: Duration = Duration::from_secs(1);
/// Connections served at once (`MAX_CONNECTIONS`).
const SERVED: usize = 256;
/// The listen backlog tokio takes from std (128); Linux admits one more than it.
const ACCEPT_QUEUE: usize = 129;
/// Hostile connections opened at once, half idle, half half-sent.
const FLOOD: usize = 10_000;
/// File descriptors this process needs beside the flood (sandbox, runtime, probes).
const FD_RESERVE: u64 = 512;

#[tokio::test]
async fn hostile_connections_are_capped_timed_out_and_cost_bounded_memory() {
    // A smaller flood proves less: refuse to run one rather than shrink it.
    let limit = testkit::hostile::raise_open_files();
    assert!(
        limit >= FLOOD as u64 + FD_RESERVE,
        "the open-files limit ({limit}, soft raised to hard) cannot hold {FLOOD} hostile \
         connections: raise the hard limit (ulimit -Hn) to at least {}",
        FLOOD as u64 + FD_RESERVE
    );
    let flood = FLOOD;
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
            open_for.is_some_and(|d| (HEADER_TIMEOUT..=HEADER_TIMEOUT + DRIP_MARGIN).contains(&d)),
            "a slowloris socket was open for {open_for:?}, not 5 to 6 s (None: still open after \
             30 s)\n{}",
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
    // The first round of header timeouts frees the slots; a probe waiting in the kernel's
    // SYN retries may need a second round.
    assert!(
        readyz.2 <= 2 * HEADER_TIMEOUT + MARGIN,
        "/readyz answered only after {:?} under attack",
        readyz.2
    );
    // The cap: the agent accepts 256, the kernel queues what the backlog holds, and refuses the
    // rest (without the cap every one of the 10,000 would connect).
    assert!(
        connected <= SERVED + ACCEPT_QUEUE,
        "{connected} hostile connections admitted: over {SERVED} served + {ACCEPT_QUEUE} queued"
    );
    let (sampler_stop, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = peak;
        while !*stopped.borrow() {
            peak = peak.max(testkit::rss_kib(pid));
            let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
        }
        peak
    });
    // Each admitted connection waits at most one header timeout in the queue behind the 256
    // served, then is served for one: closed within 10 s of connecting.
    let closed = hostile
        .closed_by_server_within(2 * HEADER_TIMEOUT + MARGIN)
        .await;
    sampler_stop.send(true).unwrap();
    let peak = sampler.await.unwrap();
    let after = testkit::rss_kib(pid);
    let longest = closed.iter().max().copied().unwrap_or_default();
    // Served in the first round: closed before the second round of timeouts could end.
    let first_round = closed
        .iter()
        .filter(|d| **d < HEADER_TIMEOUT + HEADER_TIMEOUT / 2)
        .count();
    eprintln!(
        "RSS before {rss_before} KiB, peak under attack {peak} KiB, after {after} KiB; \
         the agent closed {} hostile sockets ({first_round} in the first round, longest open \
         {longest:?})",
        closed.len()
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "RSS peaked at {peak} KiB under {flood} hostile connections"
    );
    assert_eq!(
        closed.len(),
        connected,
        "hostile sockets the agent did not close within {:?}",
        2 * HEADER_TIMEOUT + MARGIN
    );
    assert!(
        longest <= 2 * HEADER_TIMEOUT + MARGIN,
        "a hostile socket stayed open {longest:?}"
    );
    assert!(
        first_round <= SERVED,
        "{first_round} hostile connections served at once (cap {SERVED})"
    );
    assert_eq!(
        testkit::hostile::get(addr, "/readyz").await.map(|r| r.0),
        Some(200),
        "after the attack"
    );
}

/// A request head of over 8 KiB, or with over 32 headers, is answered 431; one just inside
/// either limit is served.
#[tokio::test]
async fn request_heads_over_8_kib_or_32_headers_are_answered_431() {
    let sb = Sandbox::start();
    let config = sb.path().join("images.yaml");
    std::fs::write(&config, "images: []\n").unwrap();
    let agent = AgentProc::start(&sb, &config);
    let addr = agent.http_addr();
    let deadline = Instant::now() + testkit::AGENT_CONVERGE;
    while testkit::hostile::get(addr, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "never ready\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `headers` headers in all (Host among them), the head padded to `bytes` with the last.
    let head = |headers: usize, bytes: usize| {
        let mut h = String::from("GET /livez HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n");
        for i in 2..headers - 1 {
            h.push_str(&format!("X-H{i}: v\r\n"));
        }
        let pad = bytes.saturating_sub(h.len() + "X-Pad: \r\n\r\n".len());
        h.push_str(&format!("X-Pad: {}\r\n\r\n", "a".repeat(pad)));
        h.into_bytes()
    };
    let cases = [
        ("32 headers", head(32, 0), 200),
        ("33 headers", head(33, 0), 431),
        ("a head of 7.5 KiB", head(4, 7 * 1024 + 512), 200),
        ("a head of 8.5 KiB", head(4, 8 * 1024 + 512), 431),
    ];
    for (what, bytes, want) in cases {
        let got = testkit::hostile::raw(addr, &bytes).await;
        assert_eq!(got, Some(want), "{what} ({} bytes)", bytes.len());
    }
}
