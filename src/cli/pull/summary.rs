//! The summary of a `prepuller pull` run: one row per image, as a table or JSON.

use std::fmt;
use std::time::Duration;

use comfy_table::{ColumnConstraint, ColumnConstraint::ContentWidth, Width};
use serde::Serialize;

use super::reason;
use crate::cli::ExitCode;
use crate::cli::format::{human_bytes, human_duration, short_digest, table, wrap};
use crate::config::{ImageSpec, PullPolicy};
use crate::puller::{ImageOutcome, PullResult};
use crate::runtime::RuntimeVersion;

/// How one image ended; serialized as `present`, `pulled`, `failed`, `timedOut` or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageResult {
    /// Already there.
    Present,
    Pulled,
    Failed,
    /// Not finished when `--timeout` expired.
    TimedOut,
    /// Not finished when a signal ended the run.
    Cancelled,
}

impl ImageResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageResult::Present => "present",
            ImageResult::Pulled => "pulled",
            ImageResult::Failed => "failed",
            ImageResult::TimedOut => "timedOut",
            ImageResult::Cancelled => "cancelled",
        }
    }

    /// The run ended before the image did.
    pub fn unfinished(self) -> bool {
        matches!(self, ImageResult::TimedOut | ImageResult::Cancelled)
    }
}

impl fmt::Display for ImageResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One image's line in the summary.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRow {
    pub image: String,
    pub normalized: String,
    /// The `imageRegistry` that moved the image from `image` to `normalized` (the pulled one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
    pub required: bool,
    pub policy: PullPolicy,
    pub result: ImageResult,
    pub image_id: Option<String>,
    pub repo_digest: Option<String>,
    pub size_bytes: Option<u64>,
    pub seconds: f64,
    pub attempts: u32,
    pub reason: Option<String>,
    pub error_class: Option<&'static str>,
    /// The table's REASON: a few words (`not found`, `rate limited (429)`).
    #[serde(skip)]
    pub short_reason: Option<String>,
    /// `reason` has the runtime's (or the puller's) message, listed under the table in full.
    #[serde(skip)]
    pub has_message: bool,
}

impl SummaryRow {
    pub fn new(spec: &ImageSpec, outcome: &ImageOutcome, timed_out: bool) -> SummaryRow {
        let (result, reason) = match &outcome.result {
            PullResult::AlreadyPresent => (ImageResult::Present, None),
            PullResult::Pulled => (ImageResult::Pulled, None),
            PullResult::Failed(e) => (ImageResult::Failed, Some(e.to_string())),
            PullResult::Cancelled(stage) => {
                let mut reason = format!("{stage} when the run ended");
                if let Some(e) = &outcome.last_error {
                    reason.push_str(&format!("; last error: {e}"));
                }
                let result = if timed_out {
                    ImageResult::TimedOut
                } else {
                    ImageResult::Cancelled
                };
                (result, Some(reason))
            }
        };
        let kind = match &outcome.result {
            PullResult::Failed(e) => Some(e.kind),
            PullResult::Cancelled(_) => outcome.last_error.as_ref().map(|e| e.kind),
            _ => None,
        };
        let short_reason = match &outcome.result {
            PullResult::Failed(e) => Some(reason::short(e.kind).to_string()),
            PullResult::Cancelled(stage) => Some(reason::unfinished(*stage, kind)),
            _ => None,
        };
        SummaryRow {
            image: spec.declared.clone(),
            normalized: spec.reference.to_string(),
            image_registry: spec.image_registry.clone(),
            required: spec.required,
            policy: spec.policy,
            result,
            image_id: outcome.image.as_ref().map(|i| i.id.clone()),
            repo_digest: outcome
                .image
                .as_ref()
                .and_then(|i| i.repo_digest_for(&spec.reference))
                .map(str::to_string),
            size_bytes: outcome.image.as_ref().map(|i| i.size_bytes),
            seconds: outcome.elapsed.as_secs_f64(),
            attempts: outcome.attempts,
            reason,
            error_class: kind.map(|k| k.class()),
            short_reason,
            has_message: kind.is_some(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ok: bool,
    pub endpoint: String,
    pub runtime: RuntimeVersion,
    pub required_present: usize,
    pub required_total: usize,
    pub seconds: f64,
    pub timed_out: bool,
    pub images: Vec<SummaryRow>,
}

impl Summary {
    pub fn exit_code(&self) -> ExitCode {
        if self.ok {
            ExitCode::Ok
        } else {
            ExitCode::Failed
        }
    }

    /// Images that were not finished when the run ended.
    pub fn unfinished(&self) -> Vec<&str> {
        self.images
            .iter()
            .filter(|r| r.result.unfinished())
            .map(|r| r.normalized.as_str())
            .collect()
    }

    /// The table, fitted to `width` columns when given, and the full message of each failure
    /// under it, numbered as its row's REASON refers to it.
    pub fn table(&self, width: Option<usize>) -> String {
        let mut t = table(width);
        t.set_header(["IMAGE", "RESULT", "SIZE", "TIME", "TRIES", "REASON"]);
        let mut notes = Vec::new();
        let results: Vec<String> = self
            .images
            .iter()
            .map(|r| {
                if r.required {
                    r.result.to_string()
                } else {
                    format!("{} (optional)", r.result)
                }
            })
            .collect();
        for (r, result) in self.images.iter().zip(&results) {
            let mut reason = r.short_reason.clone().unwrap_or_default();
            if let (true, Some(full)) = (r.has_message, &r.reason) {
                notes.push(full.as_str());
                reason.push_str(&format!(" [{}]", notes.len()));
            }
            // Moved by an imageRegistry: the pulled name, then the declared one.
            let image = match &r.image_registry {
                Some(_) => format!("{}\n(declared {})", short_digest(&r.normalized), r.image),
                None => short_digest(&r.normalized),
            };
            t.add_row([
                image,
                result.clone(),
                r.size_bytes.map(human_bytes).unwrap_or_default(),
                human_duration(Duration::from_secs_f64(r.seconds)),
                r.attempts.to_string(),
                reason,
            ]);
        }
        if width.is_some() {
            // On a narrow terminal the image names and reasons wrap, not the short columns,
            // and the names not into slivers.
            // The widths comfy-table is given include a space either side.
            let longest_result_word = results
                .iter()
                .flat_map(|r| r.split(' '))
                .map(|w| w.chars().count() + 2)
                .max()
                .unwrap_or(0);
            let result = ColumnConstraint::Absolute(Width::Fixed(longest_result_word as u16));
            for (n, constraint) in [
                (1, result),
                (2, ContentWidth),
                (3, ContentWidth),
                (4, ContentWidth),
            ] {
                if let Some(column) = t.column_mut(n) {
                    column.set_constraint(constraint);
                }
            }
        }
        let mut s = t.to_string();
        s.push('\n');
        for (n, note) in notes.iter().enumerate() {
            let note = format!("[{}] {note}", n + 1);
            for line in wrap(&note, width, 4) {
                s.push_str(&line);
                s.push('\n');
            }
        }
        let total = format!(
            "{}/{} required images present on {} in {}{}",
            self.required_present,
            self.required_total,
            self.runtime,
            human_duration(Duration::from_secs_f64(self.seconds)),
            if self.timed_out { " (timed out)" } else { "" }
        );
        for line in wrap(&total, width, 0) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::puller::{PullError, Stage};
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ImageInfo, RuntimeError};
    use std::path::Path;
    use tonic::Code;

    /// What containerd 1.6 answers for a missing tag and a 429 (shared/LAB.md): the image
    /// three times in one message.
    fn summary() -> Summary {
        let config = Config::parse(
            "images:\n\
             - registry.example.com:5000/team/project/frontend:1.25.3-alpine\n\
             - registry.example.com:5000/team/project/backend:does-not-exist\n\
             - image: registry.example.com:5000/team/project/metrics-exporter:2.1\n\
             \x20 required: false\n\
             - registry.example.com:5000/team/project/worker:9\n",
            Path::new("images.yaml"),
        )
        .unwrap();
        let failure = |i: usize, code, detail: &str| {
            let image = config.images[i].reference.to_string();
            let message = format!("failed to pull and unpack image \"{image}\": {detail}");
            PullError::from_runtime(&image, RuntimeError::new(code, message))
        };
        let outcome = |result, last_error| ImageOutcome {
            result,
            image: None,
            attempts: 1,
            elapsed: Duration::from_millis(1500),
            last_error,
        };
        let not_found = failure(
            1,
            Code::NotFound,
            "failed to resolve reference \"registry.example.com:5000/team/project/backend:does-not-exist\": \
             registry.example.com:5000/team/project/backend:does-not-exist: not found",
        );
        let limited = failure(
            2,
            Code::Unknown,
            "failed with status code [manifests 2.1]: 429 Too Many Requests",
        );
        let pulled = ImageOutcome {
            image: Some(ImageInfo {
                id: "sha256:ab".into(),
                repo_tags: vec![],
                repo_digests: vec![],
                size_bytes: 12_345_678,
            }),
            ..outcome(PullResult::Pulled, None)
        };
        let outcomes = [
            pulled,
            outcome(PullResult::Failed(not_found), None),
            outcome(PullResult::Failed(limited.clone()), None),
            outcome(PullResult::Cancelled(Stage::BackingOff), Some(limited)),
        ];
        Summary {
            ok: false,
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            runtime: FakeRuntime::runtime_version(),
            required_present: 1,
            required_total: 3,
            seconds: 12.0,
            timed_out: true,
            images: config
                .images
                .iter()
                .zip(&outcomes)
                .map(|(spec, o)| SummaryRow::new(spec, o, true))
                .collect(),
        }
    }

    /// The words of the table's `n`th column (from 1), top to bottom.
    fn column(table: &str, n: usize) -> String {
        table
            .lines()
            .filter_map(|l| l.split(['│', '┆']).nth(n))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn widest(text: &str) -> usize {
        text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
    }

    /// The table fits the terminal; each failure's row says a few words and points at its
    /// full message, listed once under the table.
    #[test]
    fn the_table_fits_the_width_with_short_reasons_and_the_messages_below() {
        let summary = summary();
        for width in [80, 150] {
            let text = summary.table(Some(width));
            assert!(widest(&text) <= width, "wider than {width}:\n{text}");
            let (table, below) = text.split_once("\n[1] ").expect("notes under the table");
            assert_eq!(
                column(table, 6),
                "REASON not found [1] rate limited (429) [2] backing off: rate limited (429) [3]",
                "{text}"
            );
            assert_eq!(
                column(table, 2),
                "RESULT pulled failed failed (optional) timedOut",
                "{text}"
            );
            assert!(!table.contains("failed to pull"), "{text}");
            let below = below.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                below.contains("does-not-exist: not found (check the repository"),
                "{text}"
            );
            assert!(
                below.contains("[3] backing off when the run ended"),
                "{text}"
            );
        }
        // Each image's row in its own line of the wide table.
        let wide = summary.table(Some(150));
        assert!(
            wide.lines().any(
                |l| l.contains("registry.example.com:5000/team/project/backend:does-not-exist")
            ),
            "{wide}"
        );
        // Without a width (a pipe): whole lines, one per row and per message.
        let piped = summary.table(None);
        assert_eq!(
            piped.lines().filter(|l| l.starts_with('[')).count(),
            3,
            "{piped}"
        );
        assert!(widest(&piped) > 150, "{piped}");
    }

    #[test]
    fn results_serialize_as_the_documented_words() {
        for r in [
            ImageResult::Present,
            ImageResult::Pulled,
            ImageResult::Failed,
            ImageResult::TimedOut,
            ImageResult::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
