//! The summary of a `prepuller pull` run: one row per image, as a table or JSON.

use std::fmt;
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use crate::cli::ExitCode;
use crate::cli::format::{human_bytes, human_duration, short_digest};
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
        let error_class = match &outcome.result {
            PullResult::Failed(e) => Some(e.kind.class()),
            PullResult::Cancelled(_) => outcome.last_error.as_ref().map(|e| e.kind.class()),
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
            error_class,
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

    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["IMAGE", "RESULT", "SIZE", "TIME", "ATTEMPTS", "REASON"]);
        for r in &self.images {
            let result = if r.required {
                r.result.to_string()
            } else {
                format!("{} (optional)", r.result)
            };
            // Moved by an imageRegistry: the pulled name, then the declared one.
            let image = match &r.image_registry {
                Some(_) => format!("{}\n(declared {})", short_digest(&r.normalized), r.image),
                None => short_digest(&r.normalized),
            };
            t.add_row([
                image,
                result,
                r.size_bytes.map(human_bytes).unwrap_or_default(),
                human_duration(Duration::from_secs_f64(r.seconds)),
                r.attempts.to_string(),
                r.reason.clone().unwrap_or_default(),
            ]);
        }
        let mut s = t.to_string();
        s.push_str(&format!(
            "\n{}/{} required images present on {} in {}{}\n",
            self.required_present,
            self.required_total,
            self.runtime,
            human_duration(Duration::from_secs_f64(self.seconds)),
            if self.timed_out { " (timed out)" } else { "" }
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::ImageResult;

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
