//! Prometheus metrics, rendered in the OpenMetrics text format by `prometheus-client`.
//!
//! Two kinds of series: counters and the pull histogram, which the agent feeds as things
//! happen ([`Metrics::observe_pull_success`] …), and gauges that describe the current state
//! (`prepuller_images`, `prepuller_node_ready` …), which are derived from the status snapshot
//! at scrape time so they can never go stale. Labels only take values from small fixed sets:
//! no image names, which would make the series count grow with the config.

use std::fmt::Write as _;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{AgentStatus, ImageState};

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PREFIX: &str = "prepuller";

type ResultLabels = [(&'static str, &'static str); 1];
type FailureLabels = [(&'static str, String); 2];
type ImageLabels = [(&'static str, &'static str); 2];

/// Histogram buckets for pull durations: 0.5 s doubling up to 2048 s (~34 min), which spans
/// a cached small image to a multi-GB one on a slow link.
fn pull_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.5, 2.0, 13)
}

/// The agent's metrics. Created once and shared through an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pull_duration: Histogram,
    pulls: Family<ResultLabels, Counter>,
    pull_failures: Family<FailureLabels, Counter>,
    pulled_bytes: Counter,
    config_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let pull_duration = Histogram::new(pull_buckets());
        let pulls = Family::<ResultLabels, Counter>::default();
        let pull_failures = Family::<FailureLabels, Counter>::default();
        let pulled_bytes = Counter::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();

        // Both outcomes exist from the start, so `rate()` and alerts see a 0, not an absence.
        // (`_owned`: only creating the series, no lock guard to hold.)
        for result in ["success", "failure"] {
            pulls.get_or_create_owned(&[("result", result)]);
        }
        for result in ["success", "error"] {
            config_reloads.get_or_create_owned(&[("result", result)]);
        }

        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_with_unit(
            "pull_duration",
            "Duration of successful image pulls",
            Unit::Seconds,
            pull_duration.clone(),
        );
        registry.register(
            "pulls",
            "Pull attempts by result (a retried pull counts each failed attempt)",
            pulls.clone(),
        );
        registry.register(
            "pull_failures",
            "Failed pull attempts by reason and class (permanent or transient)",
            pull_failures.clone(),
        );
        registry.register_with_unit(
            "pulled",
            "Size of the images pulled",
            Unit::Bytes,
            pulled_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Config loads by result (error: the config was rejected and the last good one kept)",
            config_reloads.clone(),
        );

        Metrics {
            registry,
            pull_duration,
            pulls,
            pull_failures,
            pulled_bytes,
            config_reloads,
        }
    }

    pub fn observe_pull_success(&self, seconds: f64, bytes: u64) {
        self.pull_duration.observe(seconds);
        self.pulls.get_or_create(&[("result", "success")]).inc();
        self.pulled_bytes.inc_by(bytes);
    }

    /// `reason` and `class` come from `puller::FailureKind::{as_str, class}`: fixed sets.
    pub fn observe_pull_failure(&self, reason: &str, class: &str) {
        self.pulls.get_or_create(&[("result", "failure")]).inc();
        self.pull_failures
            .get_or_create(&[("reason", reason.to_owned()), ("class", class.to_owned())])
            .inc();
    }

    pub fn observe_config_reload(&self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.config_reloads
            .get_or_create(&[("result", result)])
            .inc();
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), with the state gauges taken from
    /// `status`.
    pub fn render(&self, status: &AgentStatus) -> String {
        // The state gauges live in a registry built per scrape: nothing shared is written, so
        // concurrent scrapes of different snapshots cannot mix, and series of states no image
        // is in any more are 0 rather than left at their last value.
        let mut scrape = Registry::with_prefix(PREFIX);

        let images = Family::<ImageLabels, Gauge>::default();
        for state in ImageState::ALL {
            for required in ["true", "false"] {
                images.get_or_create_owned(&[("state", state.as_str()), ("required", required)]);
            }
        }
        for image in &status.images {
            let required = if image.required { "true" } else { "false" };
            images
                .get_or_create(&[("state", image.state.as_str()), ("required", required)])
                .inc();
        }
        scrape.register(
            "images",
            "Declared images by state and whether they are required",
            images,
        );

        let gauge = |v: i64| {
            let g = Gauge::<i64>::default();
            g.set(v);
            g
        };
        scrape.register(
            "node_ready",
            "1 when every required image is present (the readiness probe passes)",
            gauge(status.ready.into()),
        );
        scrape.register(
            "runtime_up",
            "1 when the container runtime answered its last call",
            gauge(status.runtime.reachable.into()),
        );
        scrape.register(
            "config_generation",
            "Generation of the applied config (0: none applied yet)",
            gauge(i64::try_from(status.config.generation).unwrap_or(i64::MAX)),
        );

        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &scrape))
            .and_then(|()| encode_eof(&mut out));
        if let Err(e) = encoded {
            // Writing to a String does not fail; should an encoder ever refuse, say so.
            tracing::error!("encoding metrics: {e}");
            let _ = writeln!(out, "# encoding error: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::report::test_image as image;

    /// The value of the sample line that is exactly `series` (name and labels, as rendered).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().unwrap())
        })
    }

    /// Like `value`, for a series whose labels may be rendered in any order.
    fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, v) = rest.rsplit_once("} ")?;
            let mut got: Vec<&str> = set.split(',').collect();
            let mut want: Vec<String> =
                labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            got.sort_unstable();
            want.sort_unstable();
            (got == want).then(|| v.parse().unwrap())
        })
    }

    fn status() -> AgentStatus {
        let mut s = AgentStatus::default();
        s.config.generation = 3;
        s.runtime.reachable = true;
        s.images = vec![
            image("a", true, ImageState::Present),
            image("b", true, ImageState::Present),
            image("c", true, ImageState::Pulling),
            image("d", false, ImageState::Failed),
        ];
        s
    }

    #[test]
    fn counters_and_histogram_follow_observations() {
        let m = Metrics::new();
        let text = m.render(&AgentStatus::default());
        assert_eq!(
            value(&text, "prepuller_pulls_total{result=\"success\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "prepuller_pulls_total{result=\"failure\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&text, "prepuller_config_reloads_total{result=\"error\"}"),
            Some(0.0)
        );

        m.observe_pull_success(3.0, 1000);
        m.observe_pull_success(100.0, 500);
        m.observe_pull_failure("not_found", "permanent");
        m.observe_pull_failure("rate_limited", "transient");
        m.observe_pull_failure("rate_limited", "transient");
        m.observe_config_reload(true);
        m.observe_config_reload(true);
        m.observe_config_reload(false);
        let text = m.render(&AgentStatus::default());

        assert!(
            text.contains("# TYPE prepuller_pull_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("# UNIT prepuller_pull_duration_seconds seconds"),
            "{text}"
        );
        assert_eq!(
            value(&text, "prepuller_pull_duration_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "prepuller_pull_duration_seconds_sum"),
            Some(103.0)
        );
        let bucket = |le: &str| {
            value(
                &text,
                &format!("prepuller_pull_duration_seconds_bucket{{le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.5"), Some(0.0));
        assert_eq!(bucket("4.0"), Some(1.0));
        assert_eq!(bucket("128.0"), Some(2.0));
        assert_eq!(bucket("2048.0"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));

        assert!(text.contains("# TYPE prepuller_pulls counter"), "{text}");
        assert_eq!(
            value(&text, "prepuller_pulls_total{result=\"success\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "prepuller_pulls_total{result=\"failure\"}"),
            Some(3.0)
        );

        assert!(
            text.contains("# TYPE prepuller_pull_failures counter"),
            "{text}"
        );
        let failures = |reason, class| {
            labelled(
                &text,
                "prepuller_pull_failures_total",
                &[("reason", reason), ("class", class)],
            )
        };
        assert_eq!(failures("not_found", "permanent"), Some(1.0));
        assert_eq!(failures("rate_limited", "transient"), Some(2.0));

        assert!(
            text.contains("# TYPE prepuller_pulled_bytes counter"),
            "{text}"
        );
        assert_eq!(value(&text, "prepuller_pulled_bytes_total"), Some(1500.0));

        assert_eq!(
            value(&text, "prepuller_config_reloads_total{result=\"success\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&text, "prepuller_config_reloads_total{result=\"error\"}"),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    #[test]
    fn gauges_come_from_the_snapshot() {
        let m = Metrics::new();
        let text = m.render(&status());
        let images = |state, required| {
            labelled(
                &text,
                "prepuller_images",
                &[("state", state), ("required", required)],
            )
        };
        assert!(text.contains("# TYPE prepuller_images gauge"), "{text}");
        assert_eq!(images("Present", "true"), Some(2.0));
        assert_eq!(images("Pulling", "true"), Some(1.0));
        assert_eq!(images("Failed", "false"), Some(1.0));
        assert_eq!(
            images("Waiting", "true"),
            Some(0.0),
            "every state has a series"
        );
        assert_eq!(images("BackingOff", "false"), Some(0.0));
        assert_eq!(value(&text, "prepuller_node_ready"), Some(0.0));
        assert_eq!(value(&text, "prepuller_runtime_up"), Some(1.0));
        assert_eq!(value(&text, "prepuller_config_generation"), Some(3.0));

        let mut ready = status();
        ready.images[2].state = ImageState::Present;
        ready.ready = true;
        let text = m.render(&ready);
        assert_eq!(value(&text, "prepuller_node_ready"), Some(1.0));
    }

    #[test]
    fn images_gone_from_the_config_drop_to_zero() {
        let m = Metrics::new();
        let before = m.render(&status());
        assert_eq!(
            labelled(
                &before,
                "prepuller_images",
                &[("state", "Failed"), ("required", "false")]
            ),
            Some(1.0)
        );

        let mut after = status();
        after
            .images
            .retain(|i| i.normalized != "d" && i.normalized != "c");
        after.runtime.reachable = false;
        let text = m.render(&after);
        let images = |state, required| {
            labelled(
                &text,
                "prepuller_images",
                &[("state", state), ("required", required)],
            )
        };
        assert_eq!(images("Failed", "false"), Some(0.0), "{text}");
        assert_eq!(images("Pulling", "true"), Some(0.0), "{text}");
        assert_eq!(images("Present", "true"), Some(2.0), "{text}");
        assert_eq!(value(&text, "prepuller_runtime_up"), Some(0.0));
    }
}
