//! Attribution and rate on plain data; the poller on the fake runtime, on a paused clock.

use super::*;
use crate::config::Config;
use crate::puller::{PullEvent, PullSettings, Puller};
use crate::runtime::Runtime;
use crate::runtime::fake::FakeRuntime;

fn r(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn ingest(digest: &str, offset: u64, total: u64) -> Ingest {
    Ingest {
        digest: digest.into(),
        offset,
        total: Some(total),
    }
}

fn manifest(blobs: &[(&str, u64, bool)]) -> Vec<ManifestBlobs> {
    vec![ManifestBlobs {
        digest: "sha256:m".into(),
        blobs: blobs
            .iter()
            .map(|&(d, s, stored)| (d.to_string(), s, stored))
            .collect(),
    }]
}

fn bytes_of(updates: &[ProgressUpdate], n: usize) -> Option<PullBytes> {
    updates.iter().find(|u| u.n == n).map(|u| u.bytes)
}

/// One pull in flight: every ingest is its own, before its manifest is known; a blob whose
/// ingest disappeared counts as fetched in full.
#[test]
fn a_lone_pull_owns_every_ingest() {
    let mut a = Attribution::default();
    let t0 = Instant::now();
    a.begin(1, 0, &r("r.example/a:1"), SystemTime::now());
    let u = a.observe(
        &[ingest("sha256:l0", 10, 100), ingest("sha256:l1", 5, 50)],
        t0,
    );
    assert_eq!(
        bytes_of(&u, 0),
        Some(PullBytes {
            done: 15,
            total: None,
            per_second: None
        })
    );
    let u = a.observe(&[ingest("sha256:l1", 25, 50)], t0 + Duration::from_secs(1));
    let b = bytes_of(&u, 0).unwrap();
    assert_eq!(b.done, 125, "l0 finished (100) + l1 at 25");
    assert_eq!(b.per_second, Some(110));
    a.end(1);
    assert!(a.observe(&[ingest("sha256:l1", 30, 50)], t0).is_empty());
    assert!(a.is_idle());
}

/// Several pulls: each takes the ingests of its manifest's blobs (a shared layer counts for
/// both), its total is what it has to fetch (stored blobs left out), and an ingest nobody's
/// manifest names goes to the one pull whose manifest is not known yet.
#[test]
fn several_pulls_split_ingests_by_their_manifests() {
    let mut a = Attribution::default();
    let t0 = Instant::now();
    let now = SystemTime::now();
    a.begin(1, 0, &r("r.example/a:1"), now);
    a.begin(2, 1, &r("r.example/b:1"), now);
    a.begin(3, 2, &r("r.example/c:1"), now);
    let mut wanted: Vec<_> = a
        .manifests_wanted(t0)
        .into_iter()
        .map(|(id, host, repo, _)| (id, host, repo))
        .collect();
    wanted.sort();
    assert_eq!(
        wanted,
        vec![
            (1, "r.example".into(), "a".into()),
            (2, "r.example".into(), "b".into()),
            (3, "r.example".into(), "c".into()),
        ]
    );
    assert!(
        a.manifests_wanted(t0).is_empty(),
        "not again within a second"
    );
    a.set_manifests(
        1,
        manifest(&[
            ("sha256:ca", 1, true),
            ("sha256:a0", 100, false),
            ("sha256:s", 40, false),
        ]),
    );
    a.set_manifests(
        2,
        manifest(&[("sha256:b0", 200, false), ("sha256:s", 40, false)]),
    );
    let ingests = [
        ingest("sha256:a0", 30, 100),
        ingest("sha256:b0", 20, 200),
        ingest("sha256:s", 10, 40),
        ingest("sha256:other", 7, 70),
    ];
    let u = a.observe(&ingests, t0);
    assert_eq!(
        bytes_of(&u, 0).map(|b| (b.done, b.total)),
        Some((40, Some(140)))
    );
    assert_eq!(
        bytes_of(&u, 1).map(|b| (b.done, b.total)),
        Some((30, Some(240)))
    );
    assert_eq!(bytes_of(&u, 2).map(|b| (b.done, b.total)), Some((7, None)));
    // A manifest still unknown is looked for again a second later, ten times at most.
    for s in 1..=9 {
        assert_eq!(a.manifests_wanted(t0 + Duration::from_secs(s)).len(), 1);
    }
    assert!(a.manifests_wanted(t0 + Duration::from_secs(10)).is_empty());
}

/// Seen on containerd: the manifest and config are fetched (and counted) before the manifest
/// is found, which then leaves the stored config out; the bytes shown never go back.
#[test]
fn bytes_never_go_back_when_the_manifest_turns_up() {
    let mut a = Attribution::default();
    let t0 = Instant::now();
    a.begin(1, 0, &r("r.example/a:1"), SystemTime::now());
    let u = a.observe(
        &[
            ingest("sha256:c", 500, 500),
            ingest("sha256:l", 1000, 10_000),
        ],
        t0,
    );
    assert_eq!(bytes_of(&u, 0).unwrap().done, 1500);
    a.set_manifests(
        1,
        manifest(&[("sha256:c", 500, true), ("sha256:l", 10_000, false)]),
    );
    let u = a.observe(
        &[ingest("sha256:l", 1200, 10_000)],
        t0 + Duration::from_secs(1),
    );
    assert_eq!(
        bytes_of(&u, 0).map(|b| (b.done, b.total)),
        Some((1500, Some(10_000)))
    );
    let u = a.observe(
        &[ingest("sha256:l", 2000, 10_000)],
        t0 + Duration::from_secs(2),
    );
    assert_eq!(bytes_of(&u, 0).unwrap().done, 2000);
}

/// With two pulls whose manifests are unknown, an ingest cannot be told apart: neither gets it.
#[test]
fn unknown_ingests_of_several_unknown_pulls_are_not_attributed() {
    let mut a = Attribution::default();
    a.begin(1, 0, &r("r.example/a:1"), SystemTime::now());
    a.begin(2, 1, &r("r.example/b:1"), SystemTime::now());
    assert!(
        a.observe(&[ingest("sha256:x", 5, 10)], Instant::now())
            .is_empty()
    );
}

/// The rate is over the last few seconds, not since the start.
#[test]
fn the_rate_follows_the_last_seconds() {
    let mut a = Attribution::default();
    let t0 = Instant::now();
    a.begin(1, 0, &r("r.example/a:1"), SystemTime::now());
    a.set_manifests(1, manifest(&[("sha256:l", 1000, false)]));
    // 10 B/s for 10 s, then 100 B/s.
    for s in 0..=10 {
        a.observe(
            &[ingest("sha256:l", s * 10, 1000)],
            t0 + Duration::from_secs(s),
        );
    }
    let mut last = None;
    for s in 1..=4 {
        let u = a.observe(
            &[ingest("sha256:l", 100 + s * 100, 1000)],
            t0 + Duration::from_secs(10 + s),
        );
        last = bytes_of(&u, 0);
    }
    let b = last.unwrap();
    assert_eq!((b.done, b.total), (500, Some(1000)));
    assert_eq!(b.per_second, Some(100));
}

fn config(yaml: &str) -> Config {
    Config::parse(yaml, std::path::Path::new("test.yaml")).unwrap()
}

/// "Never slower": no poll while nothing is pulling (an hour idle), at most one per
/// [`POLL_EVERY`] while a pull runs, and none again once it ended.
#[tokio::test(start_paused = true)]
async fn the_poller_polls_only_while_pulling_and_at_most_every_250_ms() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_ingests(Some(vec![ingest("sha256:l", 1, 10)]));
    let updates = Arc::new(Mutex::new(0usize));
    let seen = updates.clone();
    let poller = ProgressPoller::start(
        rt.clone(),
        Arc::new(move |u: Vec<ProgressUpdate>| *seen.lock().unwrap() += u.len()),
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(rt.stats().ingest_calls, 0, "polled while idle");

    poller.begin(7, 0, &r("r.example/a:1"), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = rt.stats().ingest_calls;
    assert!(
        (200..=241).contains(&during),
        "{during} polls in a minute of pulling (at most one per 250 ms)"
    );
    assert!(*updates.lock().unwrap() >= 200);
    poller.end(7);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        rt.stats().ingest_calls <= during + 1,
        "polled after the pull ended: {} → {}",
        during,
        rt.stats().ingest_calls
    );
    poller.stop();
}

/// A runtime without the content service (CRI-O): one try, then nothing for that poller.
#[tokio::test(start_paused = true)]
async fn without_a_content_service_the_poller_asks_once() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_ingests(None);
    let poller = ProgressPoller::start(rt.clone(), Arc::new(|_| panic!("no progress expected")));
    poller.begin(1, 0, &r("r.example/a:1"), 1);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(rt.stats().ingest_calls, 1);
}

/// A run reports the bytes of its pull as events, between its start and its end.
#[tokio::test(start_paused = true)]
async fn a_run_reports_progress_events_while_pulling() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_pull_delay(Duration::from_secs(10));
    rt.set_ingests(Some(vec![ingest("sha256:l", 0, 1000)]));
    rt.set_manifests("r.example", "a", manifest(&[("sha256:l", 1000, false)]));
    let c = config("images: [r.example/a:1]");
    let puller = Arc::new(Puller::new(rt.clone(), PullSettings::from(&c)));
    let present = rt.list_images().await.unwrap();
    let events = Mutex::new(Vec::new());
    let feed = async {
        for s in 1..=9 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rt.set_ingests(Some(vec![ingest("sha256:l", s * 100, 1000)]));
        }
    };
    let record = |e| events.lock().unwrap().push(e);
    let cancel = CancellationToken::new();
    let run = puller.run(&c.images, &present, &record, &cancel);
    tokio::join!(run, feed);
    let events = events.into_inner().unwrap();
    let progress: Vec<PullBytes> = events
        .iter()
        .filter_map(|e| match e {
            PullEvent::Progress { index: 0, bytes } => Some(*bytes),
            _ => None,
        })
        .collect();
    assert!(progress.len() > 20, "{} progress events", progress.len());
    assert!(progress.windows(2).all(|w| w[0].done <= w[1].done), "grows");
    let last = progress.last().unwrap();
    assert_eq!(last.total, Some(1000));
    assert!(last.done >= 800, "{last:?}");
    // 100 B/s, fed in one-second steps: the 3 s window reads between 2/3 of it and all of it.
    let mid = progress.iter().find(|b| b.done == 500).unwrap();
    assert!(
        mid.per_second.is_some_and(|r| (60..=110).contains(&r)),
        "{mid:?}"
    );
    let started = events
        .iter()
        .position(|e| matches!(e, PullEvent::Started { .. }))
        .unwrap();
    let pulled = events
        .iter()
        .position(|e| matches!(e, PullEvent::Pulled { .. }))
        .unwrap();
    assert!(
        events.iter().enumerate().all(|(i, e)| {
            !matches!(e, PullEvent::Progress { .. }) || (started < i && i < pulled)
        })
    );
}
