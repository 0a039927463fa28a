//! The puller end to end on the in-memory runtime, on a paused clock.

use super::*;
use crate::config::Config;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{ErrorKind, RuntimeError};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

fn config(yaml: &str) -> Config {
    Config::parse(yaml, Path::new("test.yaml")).unwrap()
}

struct Run {
    outcomes: Vec<ImageOutcome>,
    events: Vec<PullEvent>,
}

async fn run(rt: &Arc<FakeRuntime>, c: &Config) -> Run {
    run_with(rt, c, &CancellationToken::new()).await
}

async fn run_with(rt: &Arc<FakeRuntime>, c: &Config, cancel: &CancellationToken) -> Run {
    let puller = Arc::new(Puller::new(rt.clone(), PullSettings::from(c)));
    let present = rt.list_images().await.unwrap();
    let events = Mutex::new(Vec::new());
    let outcomes = puller
        .run(
            &c.images,
            &present,
            &|e| events.lock().unwrap().push(e),
            cancel,
        )
        .await;
    Run {
        outcomes,
        events: events.into_inner().unwrap(),
    }
}

fn err(code: Code, msg: &str) -> Result<(), RuntimeError> {
    Err(RuntimeError::new(code, msg))
}

#[tokio::test(start_paused = true)]
async fn pulls_missing_and_skips_present() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("r.example/a:1", 5);
    let c = config("images: [r.example/a:1, r.example/b:1]");
    let r = run(&rt, &c).await;
    assert_eq!(r.outcomes[0].result, PullResult::AlreadyPresent);
    assert_eq!(r.outcomes[1].result, PullResult::Pulled);
    assert_eq!(rt.stats().pulls, vec!["r.example/b:1"]);
    // A second run finds everything present.
    let r = run(&rt, &c).await;
    assert!(
        r.outcomes
            .iter()
            .all(|o| o.result == PullResult::AlreadyPresent)
    );
    assert_eq!(rt.stats().pulls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn policies() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("r.example/always:1", 5);
    rt.add_image("r.example/never-here:1", 5);
    let c = config(
        "images:\n  - {image: r.example/always:1, pullPolicy: Always}\n  - {image: r.example/never-here:1, pullPolicy: Never}\n  - {image: r.example/never-absent:1, pullPolicy: Never}\n",
    );
    let r = run(&rt, &c).await;
    assert_eq!(r.outcomes[0].result, PullResult::Pulled);
    assert_eq!(r.outcomes[1].result, PullResult::AlreadyPresent);
    match &r.outcomes[2].result {
        PullResult::Failed(e) => assert_eq!(e.kind, FailureKind::NotPresent),
        other => panic!("{other:?}"),
    }
    assert_eq!(rt.stats().pulls, vec!["r.example/always:1"]);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried() {
    let rt = Arc::new(FakeRuntime::new());
    rt.script_pulls("r.example/gone:1", [err(Code::NotFound, "failed to pull and unpack image \"r.example/gone:1\": failed to resolve reference \"r.example/gone:1\": r.example/gone:1: not found")]);
    let c = config("images: [r.example/gone:1]");
    let r = run(&rt, &c).await;
    let PullResult::Failed(e) = &r.outcomes[0].result else {
        panic!()
    };
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.to_string()
            .starts_with("r.example/gone:1: the image or tag does not exist"),
        "{e}"
    );
    assert_eq!(r.outcomes[0].attempts, 1);
    assert_eq!(rt.stats().pulls.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn transient_errors_back_off_exponentially_within_bounds() {
    let rt = Arc::new(FakeRuntime::new());
    // A timeout says nothing about the host: the image's own back-off (not the breaker).
    rt.script_pulls(
        "r.example/a:1",
        (0..6).map(|_| err(Code::Cancelled, "Timeout expired")),
    );
    let c = config("backoff: {initial: 1s, max: 8s}\nimages: [r.example/a:1]");
    let r = run(&rt, &c).await;
    assert_eq!(r.outcomes[0].result, PullResult::Pulled);
    assert_eq!(r.outcomes[0].attempts, 7);
    assert_eq!(
        r.outcomes[0].last_error.as_ref().unwrap().kind,
        ErrorKind::Timeout
    );
    let delays: Vec<Duration> = r
        .events
        .iter()
        .filter_map(|e| match e {
            PullEvent::AttemptFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    // Full jitter: each delay is at most the exponential ceiling 1, 2, 4, 8, 8, 8 seconds.
    let ceilings = [1, 2, 4, 8, 8, 8];
    assert_eq!(delays.len(), ceilings.len());
    for (d, c) in delays.iter().zip(ceilings) {
        assert!(*d <= Duration::from_secs(c), "{delays:?}");
    }
}

/// The lower side of the documented back-off: full jitter is uniform in [0, ceiling], so
/// over many images each attempt's delays average half its ceiling and reach close to it.
/// A back-off that did not grow, or a jitter that collapsed to 0, fails here.
#[tokio::test(start_paused = true)]
async fn back_off_delays_spread_over_the_whole_jitter_range() {
    const IMAGES: usize = 100;
    let rt = Arc::new(FakeRuntime::new());
    let mut yaml = String::from("backoff: {initial: 1s, max: 8s}\nparallelism: 100\nimages:\n");
    for i in 0..IMAGES {
        rt.script_pulls(
            &format!("r.example/a:{i}"),
            (0..4).map(|_| err(Code::Cancelled, "Timeout expired")),
        );
        yaml.push_str(&format!("  - r.example/a:{i}\n"));
    }
    let r = run(&rt, &config(&yaml)).await;
    let ceilings = [1.0, 2.0, 4.0, 8.0];
    for (n, ceiling) in ceilings.iter().enumerate() {
        let delays: Vec<f64> = r
            .events
            .iter()
            .filter_map(|e| match e {
                PullEvent::AttemptFailed {
                    attempt, retry_in, ..
                } if *attempt as usize == n + 1 => Some(retry_in.as_secs_f64()),
                _ => None,
            })
            .collect();
        assert_eq!(delays.len(), IMAGES);
        let mean = delays.iter().sum::<f64>() / IMAGES as f64;
        let max = delays.iter().cloned().fold(0.0, f64::max);
        // Uniform on [0, c]: mean c/2 with a standard error of c/35 over 100 samples.
        assert!(
            mean > 0.35 * ceiling && mean < 0.65 * ceiling,
            "attempt {}: mean {mean:.2}s for a {ceiling}s ceiling",
            n + 1
        );
        assert!(
            max > 0.8 * ceiling,
            "attempt {}: max {max:.2}s for a {ceiling}s ceiling",
            n + 1
        );
    }
    assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
}

#[tokio::test(start_paused = true)]
async fn rate_limits_back_off_hard_and_pause_the_registry() {
    let rt = Arc::new(FakeRuntime::new());
    rt.script_pulls(
        "r.example/a:1",
        [err(
            Code::Unknown,
            "failed with status code [manifests 1]: 429 Too Many Requests",
        )],
    );
    let c = config(
        "parallelism: 1\nbackoff: {initial: 1s, max: 60s}\nimages: [r.example/a:1, r.example/b:1]",
    );
    let r = run(&rt, &c).await;
    let retry_in = r
        .events
        .iter()
        .find_map(|e| match e {
            PullEvent::AttemptFailed {
                retry_in, error, ..
            } => {
                assert_eq!(error.kind, ErrorKind::RateLimited);
                Some(*retry_in)
            }
            _ => None,
        })
        .unwrap();
    // The first delay (1s) after three extra doublings: 8s, half-jittered to [4s, 8s].
    assert!(
        retry_in >= Duration::from_secs(4) && retry_in <= Duration::from_secs(8),
        "{retry_in:?}"
    );
    // b waited for the hold instead of hitting the limited registry right away.
    assert!(
        r.outcomes[1].elapsed >= retry_in,
        "{:?} < {retry_in:?}",
        r.outcomes[1].elapsed
    );
    assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
}

#[tokio::test(start_paused = true)]
async fn parallelism_caps_are_never_exceeded() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_pull_delay(Duration::from_secs(3));
    let mut yaml = String::from("parallelism: 4\nperRegistryParallelism: 2\nimages:\n");
    for reg in ["a.example", "b.example", "c.example"] {
        for i in 0..6 {
            yaml.push_str(&format!("  - {reg}/img:{i}\n"));
        }
    }
    let r = run(&rt, &config(&yaml)).await;
    assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
    let s = rt.stats();
    assert_eq!(s.max_in_flight, 4);
    for reg in ["a.example", "b.example", "c.example"] {
        assert_eq!(s.max_in_flight_per_registry[reg], 2, "{reg}");
    }
}

#[tokio::test(start_paused = true)]
async fn backing_off_holds_no_slot() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_pull_delay(Duration::from_secs(1));
    // A timeout: the image's own back-off. (A 503 would pause the whole host, b and c
    // included, by its breaker.)
    rt.script_pulls(
        "r.example/flaky:1",
        (0..3).map(|_| err(Code::Cancelled, "Timeout expired")),
    );
    let c = config(
        "parallelism: 1\nbackoff: {initial: 60s, max: 60s}\nimages: [r.example/flaky:1, r.example/b:1, r.example/c:1]",
    );
    let r = run(&rt, &c).await;
    // b and c finished while flaky sat in a 60s back-off with the only slot free.
    assert!(
        r.outcomes[1].elapsed < Duration::from_secs(60),
        "{:?}",
        r.outcomes[1].elapsed
    );
    assert!(
        r.outcomes[2].elapsed < Duration::from_secs(60),
        "{:?}",
        r.outcomes[2].elapsed
    );
    assert_eq!(r.outcomes[0].result, PullResult::Pulled);
    assert_eq!(r.outcomes[0].attempts, 4);
}

#[tokio::test(start_paused = true)]
async fn digest_pins_are_verified() {
    let rt = Arc::new(FakeRuntime::new());
    let good = format!("sha256:{}", "a".repeat(64));
    let c = config(&format!(
        "images: [r.example/pinned@{good}, r.example/tagged:1]"
    ));
    let r = run(&rt, &c).await;
    assert_eq!(r.outcomes[0].result, PullResult::Pulled);
    assert_eq!(rt.stats().pulls[0], format!("r.example/pinned@{good}"));
    let image = r.outcomes[0].image.as_ref().unwrap();
    assert_eq!(
        image.repo_digest_for(&c.images[0].reference),
        Some(good.as_str())
    );
}

/// Issue 10: 5,000 images against one refused host made ~200 attempts/s with per-image
/// back-off only. The breaker pauses the host as a whole and probes it with one pull.
#[tokio::test(start_paused = true)]
async fn a_refused_host_is_paused_as_a_whole_and_resumed_by_one_probe() {
    const IMAGES: usize = 1_000;
    const DOWN: Duration = Duration::from_secs(1800);
    let rt = Arc::new(FakeRuntime::new());
    rt.set_registry_down("down.example", true);
    // The defaults: backoff 10s..5m, parallelism 3.
    let mut yaml = String::from("images:\n");
    for i in 0..IMAGES {
        yaml.push_str(&format!("  - down.example/team/img{i}:1\n"));
    }
    yaml.push_str("  - up.example/team/other:1\n");
    let c = config(&yaml);
    let counts = Arc::new(Mutex::new(Vec::new()));
    let (rt2, counts2) = (rt.clone(), counts.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let at_10s = rt2.stats().pulls.len();
        tokio::time::sleep(DOWN - Duration::from_secs(10)).await;
        let at_down_end = rt2.stats().pulls.len();
        counts2.lock().unwrap().extend([at_10s, at_down_end]);
        rt2.set_registry_down("down.example", false);
    });
    let started = Instant::now();
    let r = run(&rt, &c).await;
    let took = started.elapsed();
    let counts = counts.lock().unwrap().clone();
    let rate = (counts[1] - counts[0]) as f64 / (DOWN - Duration::from_secs(10)).as_secs_f64();
    eprintln!(
        "refused host: {rate:.3} attempts/s after 10 s; converged {:?} after it came back",
        took - DOWN
    );
    // The README's 0.006/s: once the pause has grown to backoff.max (5m, jittered within its
    // upper half), one probe every 150 to 300 s; with the growth from 10 s, the jitter allows
    // 0.0045 to 0.0078 over this window (paused time: no machine noise). A pause that stopped
    // growing (10 s: 0.1/s) or per-image back-off alone (~7/s) is far outside.
    assert!(
        (0.004..=0.009).contains(&rate),
        "{rate:.4} attempts/s to the refused host after the first 10 s (documented: 0.006)"
    );
    assert!(r.outcomes.iter().all(|o| o.result == PullResult::Pulled));
    // Back: everything converges within one breaker interval (at most backoff.max, 5m).
    assert!(
        took <= DOWN + Duration::from_secs(300),
        "converged {:?} after the host came back",
        took - DOWN
    );
    // The other host was never held up by the dead one.
    assert!(
        r.outcomes[IMAGES].elapsed < Duration::from_secs(1),
        "{:?}",
        r.outcomes[IMAGES].elapsed
    );
}

/// A registry that serves other content than the pinned digest: a permanent failure that
/// names both digests, not retried.
#[tokio::test(start_paused = true)]
async fn a_pin_the_registry_does_not_serve_is_a_digest_mismatch() {
    let rt = Arc::new(FakeRuntime::new());
    let pinned = format!("sha256:{}", "a".repeat(64));
    let served = format!("sha256:{}", "b".repeat(64));
    rt.serve_digest("r.example/pinned", &served);
    let c = config(&format!("images: [r.example/pinned@{pinned}]"));
    let r = run(&rt, &c).await;
    let PullResult::Failed(e) = &r.outcomes[0].result else {
        panic!("{:?}", r.outcomes[0].result)
    };
    assert_eq!(e.kind, FailureKind::DigestMismatch);
    assert_eq!(e.kind.class(), "permanent");
    assert!(
        e.detail.contains(&format!("expected {pinned}")) && e.detail.contains(&served),
        "{e}"
    );
    assert_eq!(r.outcomes[0].attempts, 1, "not retried");
}

#[tokio::test(start_paused = true)]
async fn cancel_reports_where_each_image_was() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_pull_delay(Duration::from_secs(100));
    let c = config("parallelism: 1\nimages: [r.example/a:1, r.example/b:1]");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        stop.cancel();
    });
    let r = run_with(&rt, &c, &cancel).await;
    assert_eq!(r.outcomes[0].result, PullResult::Cancelled(Stage::Pulling));
    assert_eq!(r.outcomes[1].result, PullResult::Cancelled(Stage::Waiting));
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_transient() {
    let rt = Arc::new(FakeRuntime::new());
    rt.set_pull_delay(Duration::from_secs(100));
    let c = config("pullTimeout: 5s\nbackoff: {initial: 1s, max: 1s}\nimages: [r.example/slow:1]");
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(20)).await;
        stop.cancel();
    });
    let r = run_with(&rt, &c, &cancel).await;
    assert!(r.outcomes[0].attempts >= 3, "{}", r.outcomes[0].attempts);
    assert_eq!(
        r.outcomes[0].last_error.as_ref().unwrap().kind,
        ErrorKind::Timeout
    );
}

mod credentials {
    use super::*;
    use crate::config::CredentialSource;
    use crate::credentials::Credentials;

    /// A docker config file with one `auth` entry per (key, user, password).
    fn docker_config(dir: &Path, name: &str, entries: &[(&str, &str, &str)]) -> CredentialSource {
        let path = dir.join(name);
        std::fs::write(
            &path,
            crate::credentials::testing::dockerconfigjson_of(entries),
        )
        .unwrap();
        CredentialSource::DockerConfig(path)
    }

    async fn pull_one(rt: &Arc<FakeRuntime>, creds: Credentials, image: &str) -> ImageOutcome {
        let c = config(&format!(
            "backoff: {{initial: 1s, max: 2s}}\nimages: [{image}]"
        ));
        let puller = Arc::new(Puller::with_credentials(
            rt.clone(),
            PullSettings::from(&c),
            Arc::new(creds),
        ));
        puller
            .run(&c.images, &[], &|_| {}, &CancellationToken::new())
            .await
            .remove(0)
    }

    #[tokio::test(start_paused = true)]
    async fn matching_credentials_are_tried_most_specific_first_until_one_works() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.require_login("r.example.com", "team-bot", "right");
        let source = docker_config(
            dir.path(),
            "config.json",
            &[
                ("r.example.com", "team-bot", "right"),
                ("https://r.example.com/team", "stale-bot", "old"),
            ],
        );
        let o = pull_one(
            &rt,
            Credentials::new(vec![source], false, None),
            "r.example.com/team/app:1",
        )
        .await;
        assert_eq!(o.result, PullResult::Pulled);
        assert_eq!(
            rt.stats().pull_users,
            [Some("stale-bot".to_string()), Some("team-bot".to_string())],
            "the path-specific key first, then the host key"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_permanent_and_name_every_source_tried_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.require_login("r.example.com", "bot", "right");
        let a = docker_config(
            dir.path(),
            "a.json",
            &[("r.example.com", "bot", "wrong-one")],
        );
        let b = docker_config(
            dir.path(),
            "b.json",
            &[("*.example.com", "bot", "wrong-two")],
        );
        let o = pull_one(
            &rt,
            Credentials::new(vec![a, b], false, None),
            "r.example.com/app:1",
        )
        .await;
        let PullResult::Failed(e) = &o.result else {
            panic!("{:?}", o.result)
        };
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert_eq!(o.attempts, 1, "a refusal is not retried hot");
        let text = e.to_string();
        assert!(
            text.contains("credentials rejected by r.example.com: tried 2 credentials"),
            "{text}"
        );
        assert!(
            text.contains("a.json (key r.example.com)")
                && text.contains("b.json (key *.example.com)"),
            "{text}"
        );
        assert!(
            !text.contains("wrong-one") && !text.contains("wrong-two"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_match_the_refusal_says_what_was_searched() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        rt.require_login("r.example.com", "bot", "right");
        let other = docker_config(
            dir.path(),
            "other.json",
            &[("elsewhere.example.org", "x", "y")],
        );
        let o = pull_one(
            &rt,
            Credentials::new(vec![other], false, None),
            "r.example.com/app:1",
        )
        .await;
        let PullResult::Failed(e) = &o.result else {
            panic!("{:?}", o.result)
        };
        assert!(
            e.detail
                .starts_with("no credentials matched r.example.com (searched dockerConfig "),
            "{}",
            e.detail
        );
        assert_eq!(rt.stats().pull_users, [None]);
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_fallback_is_opt_in() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::new());
        let source = docker_config(dir.path(), "c.json", &[("r.example.com", "bot", "pw")]);
        // A public registry that refuses this (stale) login but serves anonymous pulls.
        rt.script_pulls(
            "r.example.com/app:1",
            [err(
                Code::Unknown,
                "failed to pull and unpack image: 401 Unauthorized",
            )],
        );
        let o = pull_one(
            &rt,
            Credentials::new(vec![source.clone()], true, None),
            "r.example.com/app:1",
        )
        .await;
        assert_eq!(o.result, PullResult::Pulled);
        assert_eq!(rt.stats().pull_users, [Some("bot".to_string()), None]);

        rt.script_pulls(
            "r.example.com/app:2",
            [err(
                Code::Unknown,
                "failed to pull and unpack image: 401 Unauthorized",
            )],
        );
        let o = pull_one(
            &rt,
            Credentials::new(vec![source], false, None),
            "r.example.com/app:2",
        )
        .await;
        assert!(
            matches!(o.result, PullResult::Failed(_)),
            "no fallback by default"
        );
    }
}
