//! Prometheus metrics, rendered in the OpenMetrics text format by `prometheus-client`.
//!
//! Two kinds of series: counters and the pull histogram, which the agent feeds as things
//! happen ([`Metrics::observe_pull_success`] …), and gauges that describe the current state
//! (`prepuller_images`, `prepuller_node_ready` …), which a [`Collector`] reads from the
//! [`StatusHub`] at scrape time so they can never go stale. Labels only take values from small
//! fixed sets, typed below: no image names, which would make the series count grow with the
//! config.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::{ErrorClass, HoldReason, ImageState, StatusHub};

/// Content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const PREFIX: &str = "prepuller";

/// How a pull attempt ended (`prepuller_pulls_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PullResult {
    Success,
    Failure,
}

impl EncodeLabelValue for PullResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            PullResult::Success => "success",
            PullResult::Failure => "failure",
        }
        .encode(encoder)
    }
}

/// How a config load ended (`prepuller_config_reloads_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ReloadResult {
    Success,
    /// Rejected: the last good config is kept.
    Error,
}

impl EncodeLabelValue for ReloadResult {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Error => "error",
        }
        .encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PullLabels {
    result: PullResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    /// The error kind's stable name: a fixed set.
    reason: &'static str,
    class: ErrorClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ImageLabels {
    state: ImageState,
    required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FleetLabels {
    registry: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HeldLabels {
    reason: HoldReason,
    required: bool,
}

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
    pulls: Family<PullLabels, Counter>,
    pull_failures: Family<FailureLabels, Counter>,
    pulled_bytes: Counter,
    config_reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// The counters, and the state gauges of `hub`.
    pub fn new(hub: Arc<StatusHub>) -> Metrics {
        let pull_duration = Histogram::new(pull_buckets());
        let pulls = Family::<PullLabels, Counter>::default();
        let pull_failures = Family::<FailureLabels, Counter>::default();
        let pulled_bytes = Counter::default();
        let config_reloads = Family::<ReloadLabels, Counter>::default();

        // Both outcomes exist from the start, so `rate()` and alerts see a 0, not an absence.
        // (`_owned`: only creating the series, no lock guard to hold.)
        for result in [PullResult::Success, PullResult::Failure] {
            pulls.get_or_create_owned(&PullLabels { result });
        }
        for result in [ReloadResult::Success, ReloadResult::Error] {
            config_reloads.get_or_create_owned(&ReloadLabels { result });
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
        // Encoded after the metrics above, as registered.
        registry.register_collector(Box::new(StateGauges { hub }));

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
        self.pulls
            .get_or_create(&PullLabels {
                result: PullResult::Success,
            })
            .inc();
        self.pulled_bytes.inc_by(bytes);
    }

    /// `reason` is the error kind's stable name (`ErrorKind::reason`): a fixed set.
    pub fn observe_pull_failure(&self, reason: &'static str, class: ErrorClass) {
        self.pulls
            .get_or_create(&PullLabels {
                result: PullResult::Failure,
            })
            .inc();
        self.pull_failures
            .get_or_create(&FailureLabels { reason, class })
            .inc();
    }

    pub fn observe_config_reload(&self, ok: bool) {
        let result = if ok {
            ReloadResult::Success
        } else {
            ReloadResult::Error
        };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), the state gauges read from the hub
    /// now.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            // Writing to a String does not fail; should an encoder ever refuse, say so.
            tracing::error!("encoding metrics: {e}");
            let _ = writeln!(out, "# encoding error: {e}");
        }
        out
    }
}

/// The state gauges, as constants computed from one read of the hub per scrape: nothing shared
/// is written, so concurrent scrapes cannot mix, and a state no image is in any more reads 0
/// rather than its last value.
struct StateGauges {
    hub: Arc<StatusHub>,
}

impl fmt::Debug for StateGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateGauges").finish_non_exhaustive()
    }
}

/// What the state gauges show, counted under the hub's read lock (no copy of the images).
struct State {
    /// Images by `ImageState::ALL` position, then required (0) or optional (1).
    images: [[i64; 2]; ImageState::ALL.len()],
    ready: bool,
    runtime_up: bool,
    generation: u64,
    /// Images held back by the disk guard, by `HoldReason::ALL` position, then required (0) or
    /// optional (1).
    held: [[i64; 2]; HoldReason::ALL.len()],
    /// The image filesystem's used share (0–1), when the disk guard could measure it.
    image_fs_usage: Option<f64>,
    /// Bytes fetched so far by the pulls in flight (containerd), and what they have to fetch
    /// where known.
    fetching_done: u64,
    fetching_total: u64,
    /// With `fleet:`: the registries waiting for a slot, and the slots held.
    fleet: Option<(Vec<(String, bool)>, i64)>,
}

impl Collector for StateGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let state = self.hub.inspect(|s| {
            let mut images = [[0; 2]; ImageState::ALL.len()];
            let mut held = [[0; 2]; HoldReason::ALL.len()];
            let (mut fetching_done, mut fetching_total) = (0u64, 0u64);
            for i in &s.images {
                fetching_done += i.bytes_done.unwrap_or(0);
                fetching_total += i.bytes_total.unwrap_or(0);
                if let Some(n) = ImageState::ALL.iter().position(|&st| st == i.state) {
                    images[n][usize::from(!i.required)] += 1;
                }
                if let Some(h) = &i.held_back
                    && let Some(n) = HoldReason::ALL.iter().position(|&r| r == h.reason)
                {
                    held[n][usize::from(!i.required)] += 1;
                }
            }
            State {
                images,
                ready: s.ready,
                runtime_up: s.runtime.reachable,
                generation: s.config.generation,
                held,
                image_fs_usage: s
                    .disk
                    .as_ref()
                    .and_then(|d| d.usage_percent)
                    .map(|p| p / 100.0),
                fetching_done,
                fetching_total,
                fleet: s.fleet.as_ref().map(|f| {
                    use crate::fleet::FleetState;
                    let waiting = f
                        .registries
                        .iter()
                        .map(|r| (r.registry.clone(), r.state == FleetState::Waiting))
                        .collect();
                    let held = f.registries.iter().filter(|r| r.slot.is_some()).count();
                    (waiting, i64::try_from(held).unwrap_or(i64::MAX))
                }),
            }
        });

        // Help texts end with the period `Registry::register` appends to the ones above.
        let mut family = encoder.encode_descriptor(
            "images",
            "Declared images by state and whether they are required.",
            None,
            MetricType::Gauge,
        )?;
        for (state, counts) in ImageState::ALL.into_iter().zip(state.images) {
            for (required, count) in [true, false].into_iter().zip(counts) {
                let labels = ImageLabels { state, required };
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut gauge = |name, help, value: i64| {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)
        };
        gauge(
            "node_ready",
            "1 when every required image is present (the readiness probe passes).",
            state.ready.into(),
        )?;
        gauge(
            "runtime_up",
            "1 when the container runtime answered its last call.",
            state.runtime_up.into(),
        )?;
        gauge(
            "config_generation",
            "Generation of the applied config (0: none applied yet).",
            i64::try_from(state.generation).unwrap_or(i64::MAX),
        )?;

        let mut family = encoder.encode_descriptor(
            "images_held_back",
            "Declared images the disk guard does not pull now, by reason (disk_threshold: the pull would cross the pull limit; gc_thrash: the kubelet's image GC removed it twice within an hour of its pull).",
            None,
            MetricType::Gauge,
        )?;
        for (reason, counts) in HoldReason::ALL.into_iter().zip(state.held) {
            for (required, count) in [true, false].into_iter().zip(counts) {
                let labels = HeldLabels { reason, required };
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        // Absent until the disk guard could measure the image filesystem.
        if let Some(ratio) = state.image_fs_usage {
            ConstGauge::new(ratio).encode(encoder.encode_descriptor(
                "image_fs_usage_ratio",
                "Used share of the image filesystem (0-1) at the disk guard's last check, as the kubelet's image GC computes it.",
                None,
                MetricType::Gauge,
            )?)?;
        }
        let bytes = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        ConstGauge::new(bytes(state.fetching_done)).encode(encoder.encode_descriptor(
            "pull_progress",
            "Bytes fetched so far by the pulls in flight (containerd only; 0 when none runs).",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(bytes(state.fetching_total)).encode(encoder.encode_descriptor(
            "pull_expected",
            "Bytes the pulls in flight have to fetch, of those whose manifest is known.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?)?;
        // Absent unless `fleet:` is set.
        if let Some((registries, held)) = state.fleet {
            ConstGauge::new(held).encode(encoder.encode_descriptor(
                "fleet_slots_held",
                "Pull slots of the fleet budget this node holds (one per registry it pulls from).",
                None,
                MetricType::Gauge,
            )?)?;
            let mut family = encoder.encode_descriptor(
                "fleet_waiting",
                "1 while this node waits for a pull slot of the registry (fleet.maxConcurrentNodes nodes already pull from it).",
                None,
                MetricType::Gauge,
            )?;
            for (registry, waiting) in registries {
                let labels = FleetLabels { registry };
                ConstGauge::new(i64::from(waiting)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::status::{AgentStatus, test_image as image};

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

    /// A hub holding `status` (its `ready` recomputed), and metrics reading it.
    fn metrics_of(status: AgentStatus) -> (Arc<StatusHub>, Metrics) {
        let hub = Arc::new(StatusHub::new(None, String::new(), String::new()));
        hub.update(|s| *s = status);
        (hub.clone(), Metrics::new(hub))
    }

    /// Two pulls (3 s, 100 s), three failures (two of one reason), a good and a bad config.
    fn observe(m: &Metrics) {
        m.observe_pull_success(3.0, 1000);
        m.observe_pull_success(100.0, 500);
        m.observe_pull_failure("not_found", ErrorClass::Permanent);
        m.observe_pull_failure("rate_limited", ErrorClass::Transient);
        m.observe_pull_failure("rate_limited", ErrorClass::Transient);
        m.observe_config_reload(true);
        m.observe_config_reload(false);
    }

    #[test]
    fn counters_and_histogram_follow_observations() {
        let (_hub, m) = metrics_of(AgentStatus::default());
        // Every result is exported from the start, at zero.
        let text = m.render();
        let result = |text: &str, family: &str, result: &str| {
            value(text, &format!("{family}_total{{result=\"{result}\"}}"))
        };
        assert_eq!(result(&text, "prepuller_pulls", "success"), Some(0.0));
        assert_eq!(result(&text, "prepuller_pulls", "failure"), Some(0.0));
        assert_eq!(
            result(&text, "prepuller_config_reloads", "error"),
            Some(0.0)
        );

        observe(&m);
        m.observe_config_reload(true);
        let text = m.render();

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
        assert_eq!(result(&text, "prepuller_pulls", "success"), Some(2.0));
        assert_eq!(result(&text, "prepuller_pulls", "failure"), Some(3.0));

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
            result(&text, "prepuller_config_reloads", "success"),
            Some(2.0)
        );
        assert_eq!(
            result(&text, "prepuller_config_reloads", "error"),
            Some(1.0)
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    }

    /// `prepuller_images{state, required}` in `text`.
    fn images_in(text: &str, state: &str, required: &str) -> Option<f64> {
        labelled(
            text,
            "prepuller_images",
            &[("state", state), ("required", required)],
        )
    }

    #[test]
    fn gauges_come_from_the_hub() {
        let (hub, m) = metrics_of(status());
        let text = m.render();
        let images = |state, required| images_in(&text, state, required);
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

        hub.update(|s| s.images[2].state = ImageState::Present);
        let text = m.render();
        assert_eq!(value(&text, "prepuller_node_ready"), Some(1.0));
    }

    #[test]
    fn images_gone_from_the_config_drop_to_zero() {
        let (hub, m) = metrics_of(status());
        let before = m.render();
        assert_eq!(
            labelled(
                &before,
                "prepuller_images",
                &[("state", "Failed"), ("required", "false")]
            ),
            Some(1.0)
        );

        hub.update(|s| {
            s.images
                .retain(|i| i.normalized != "d" && i.normalized != "c");
            s.runtime.reachable = false;
        });
        let text = m.render();
        let images = |state, required| images_in(&text, state, required);
        assert_eq!(images("Failed", "false"), Some(0.0), "{text}");
        assert_eq!(images("Pulling", "true"), Some(0.0), "{text}");
        assert_eq!(images("Present", "true"), Some(2.0), "{text}");
        assert_eq!(value(&text, "prepuller_runtime_up"), Some(0.0));
    }

    /// The series of each family sorted: a family's series come in hash order.
    fn sorted_series(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = Vec::new();
        let mut run: Vec<&str> = Vec::new();
        for l in text.lines() {
            if l.starts_with('#') {
                run.sort_unstable();
                lines.append(&mut run);
                lines.push(l);
            } else {
                run.push(l);
            }
        }
        run.sort_unstable();
        lines.append(&mut run);
        lines
    }

    #[test]
    fn fleet_gauges_show_the_wait_per_registry_and_only_with_fleet_set() {
        use crate::fleet::{FleetRegistry, FleetState};
        let (_hub, m) = metrics_of(status());
        assert!(!m.render().contains("prepuller_fleet"));
        let mut s = status();
        let reg = |registry: &str, state, slot| FleetRegistry {
            registry: registry.into(),
            state,
            slot,
            slots: 2,
        };
        s.fleet = Some(crate::status::FleetStatus {
            registries: vec![
                reg("a.example", FleetState::Waiting, None),
                reg("b.example", FleetState::Holding, Some(1)),
            ],
        });
        let (_hub, m) = metrics_of(s);
        let text = m.render();
        assert_eq!(
            value(&text, "prepuller_fleet_slots_held"),
            Some(1.0),
            "{text}"
        );
        let waiting = |r| labelled(&text, "prepuller_fleet_waiting", &[("registry", r)]);
        assert_eq!(waiting("a.example"), Some(1.0), "{text}");
        assert_eq!(waiting("b.example"), Some(0.0), "{text}");
    }

    /// The whole exposition of a fixed hub, as the agent's `/metrics` has always rendered it:
    /// names, help texts, units, label names and values. Only the order of series within a
    /// family is free (prometheus-client keeps them in a hash map).
    #[test]
    fn the_exposition_is_pinned() {
        let mut s = status();
        s.images.push(image("e", false, ImageState::BackingOff));
        s.images[2].held_back = Some(crate::status::HeldBack {
            reason: HoldReason::DiskThreshold,
            message: "disk threshold".into(),
        });
        s.disk = Some(crate::status::DiskStatus {
            usage_percent: Some(81.5),
            ..Default::default()
        });
        s.images[2].bytes_done = Some(12_000_000);
        s.images[2].bytes_total = Some(50_000_000);
        let (_hub, m) = metrics_of(s);
        observe(&m);
        let text = m.render();
        assert_eq!(sorted_series(&text), sorted_series(PINNED), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    const PINNED: &str = r#"# HELP prepuller_pull_duration_seconds Duration of successful image pulls.
# TYPE prepuller_pull_duration_seconds histogram
# UNIT prepuller_pull_duration_seconds seconds
prepuller_pull_duration_seconds_sum 103.0
prepuller_pull_duration_seconds_count 2
prepuller_pull_duration_seconds_bucket{le="0.5"} 0
prepuller_pull_duration_seconds_bucket{le="1.0"} 0
prepuller_pull_duration_seconds_bucket{le="2.0"} 0
prepuller_pull_duration_seconds_bucket{le="4.0"} 1
prepuller_pull_duration_seconds_bucket{le="8.0"} 1
prepuller_pull_duration_seconds_bucket{le="16.0"} 1
prepuller_pull_duration_seconds_bucket{le="32.0"} 1
prepuller_pull_duration_seconds_bucket{le="64.0"} 1
prepuller_pull_duration_seconds_bucket{le="128.0"} 2
prepuller_pull_duration_seconds_bucket{le="256.0"} 2
prepuller_pull_duration_seconds_bucket{le="512.0"} 2
prepuller_pull_duration_seconds_bucket{le="1024.0"} 2
prepuller_pull_duration_seconds_bucket{le="2048.0"} 2
prepuller_pull_duration_seconds_bucket{le="+Inf"} 2
# HELP prepuller_pulls Pull attempts by result (a retried pull counts each failed attempt).
# TYPE prepuller_pulls counter
prepuller_pulls_total{result="success"} 2
prepuller_pulls_total{result="failure"} 3
# HELP prepuller_pull_failures Failed pull attempts by reason and class (permanent or transient).
# TYPE prepuller_pull_failures counter
prepuller_pull_failures_total{reason="not_found",class="permanent"} 1
prepuller_pull_failures_total{reason="rate_limited",class="transient"} 2
# HELP prepuller_pulled_bytes Size of the images pulled.
# TYPE prepuller_pulled_bytes counter
# UNIT prepuller_pulled_bytes bytes
prepuller_pulled_bytes_total 1500
# HELP prepuller_config_reloads Config loads by result (error: the config was rejected and the last good one kept).
# TYPE prepuller_config_reloads counter
prepuller_config_reloads_total{result="success"} 1
prepuller_config_reloads_total{result="error"} 1
# HELP prepuller_images Declared images by state and whether they are required.
# TYPE prepuller_images gauge
prepuller_images{state="Present",required="true"} 2
prepuller_images{state="Present",required="false"} 0
prepuller_images{state="BackingOff",required="true"} 0
prepuller_images{state="Failed",required="true"} 0
prepuller_images{state="Pulling",required="true"} 1
prepuller_images{state="Waiting",required="false"} 0
prepuller_images{state="Pulling",required="false"} 0
prepuller_images{state="Waiting",required="true"} 0
prepuller_images{state="BackingOff",required="false"} 1
prepuller_images{state="Failed",required="false"} 1
# HELP prepuller_node_ready 1 when every required image is present (the readiness probe passes).
# TYPE prepuller_node_ready gauge
prepuller_node_ready 0
# HELP prepuller_runtime_up 1 when the container runtime answered its last call.
# TYPE prepuller_runtime_up gauge
prepuller_runtime_up 1
# HELP prepuller_config_generation Generation of the applied config (0: none applied yet).
# TYPE prepuller_config_generation gauge
prepuller_config_generation 3
# HELP prepuller_images_held_back Declared images the disk guard does not pull now, by reason (disk_threshold: the pull would cross the pull limit; gc_thrash: the kubelet's image GC removed it twice within an hour of its pull).
# TYPE prepuller_images_held_back gauge
prepuller_images_held_back{reason="disk_threshold",required="true"} 1
prepuller_images_held_back{reason="disk_threshold",required="false"} 0
prepuller_images_held_back{reason="gc_thrash",required="true"} 0
prepuller_images_held_back{reason="gc_thrash",required="false"} 0
# HELP prepuller_image_fs_usage_ratio Used share of the image filesystem (0-1) at the disk guard's last check, as the kubelet's image GC computes it.
# TYPE prepuller_image_fs_usage_ratio gauge
prepuller_image_fs_usage_ratio 0.815
# HELP prepuller_pull_progress_bytes Bytes fetched so far by the pulls in flight (containerd only; 0 when none runs).
# TYPE prepuller_pull_progress_bytes gauge
# UNIT prepuller_pull_progress_bytes bytes
prepuller_pull_progress_bytes 12000000
# HELP prepuller_pull_expected_bytes Bytes the pulls in flight have to fetch, of those whose manifest is known.
# TYPE prepuller_pull_expected_bytes gauge
# UNIT prepuller_pull_expected_bytes bytes
prepuller_pull_expected_bytes 50000000
# EOF
"#;
}
