//! `prepuller check`: validates a config and prints every entry's normalized reference and
//! policy.

use std::path::PathBuf;

use serde::Serialize;

use super::format::print_json;
use super::{ExitCode, Output};
use crate::config::{Config, PullPolicy};

/// What `prepuller check` prints: every entry as it will be pulled.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub source: PathBuf,
    pub parallelism: usize,
    pub per_registry_parallelism: usize,
    pub pull_timeout_seconds: u64,
    pub images: Vec<CheckedImage>,
    pub merged: Vec<String>,
    /// Credential sources, as `dockerConfig /path`, `secret ns/name`, … (never their content).
    pub credentials: Vec<String>,
    pub anonymous_fallback: bool,
    /// Image sets with a `nodeSelector`, not listed in `images`: only for the nodes they select.
    pub node_specific_sets: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckedImage {
    pub line: usize,
    pub image: String,
    pub normalized: String,
    pub required: bool,
    pub policy: PullPolicy,
}

impl From<&Config> for CheckReport {
    fn from(c: &Config) -> Self {
        CheckReport {
            source: c.source.clone(),
            parallelism: c.parallelism,
            per_registry_parallelism: c.per_registry_parallelism,
            pull_timeout_seconds: c.pull_timeout.as_secs(),
            images: c
                .images
                .iter()
                .map(|i| CheckedImage {
                    line: i.line,
                    image: i.declared.clone(),
                    normalized: i.reference.to_string(),
                    required: i.required,
                    policy: i.policy,
                })
                .collect(),
            merged: c.merged.clone(),
            credentials: c.credentials.iter().map(ToString::to_string).collect(),
            anonymous_fallback: c.anonymous_fallback,
            node_specific_sets: c
                .skipped_sets
                .iter()
                .map(|s| {
                    format!(
                        "{} ({} images): only for nodes matching {}",
                        s.file.display(),
                        s.images,
                        s.selector
                    )
                })
                .collect(),
        }
    }
}

impl CheckReport {
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(["LINE", "NORMALIZED", "POLICY", "REQUIRED"]);
        for i in &self.images {
            t.add_row([
                i.line.to_string(),
                i.normalized.clone(),
                i.policy.to_string(),
                if i.required { "yes" } else { "no" }.to_string(),
            ]);
        }
        let mut s = format!("{}\n", t);
        for m in &self.merged {
            s.push_str(&format!("note: {m}\n"));
        }
        if !self.credentials.is_empty() {
            s.push_str(&format!(
                "credential sources: {}{}\n",
                self.credentials.join(", "),
                if self.anonymous_fallback {
                    "; then anonymous (anonymousFallback)"
                } else {
                    ""
                }
            ));
        }
        for m in &self.node_specific_sets {
            s.push_str(&format!("note: {m}\n"));
        }
        s.push_str(&format!(
            "{}: valid, {} images ({} required), parallelism {} ({} per registry)\n",
            self.source.display(),
            self.images.len(),
            self.images.iter().filter(|i| i.required).count(),
            self.parallelism,
            self.per_registry_parallelism
        ));
        s
    }
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The image list: a YAML file, or a directory of *.yaml files (a mounted ConfigMap).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Output format: a table for people, or JSON.
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// Runs `prepuller check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", e.render());
            return ExitCode::Failed;
        }
    };
    let report = CheckReport::from(&config);
    match args.output {
        Output::Json => {
            if let Err(code) = print_json(&report) {
                return code;
            }
        }
        Output::Table => print!("{}", report.table()),
    }
    ExitCode::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sets_for_other_nodes_are_named_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.yaml"), "images: [nginx:1.25]\n").unwrap();
        std::fs::write(
            dir.path().join("gpu.yaml"),
            "nodeSelector:\n  matchLabels: {pool: gpu}\nimages: [cuda:12]\n",
        )
        .unwrap();
        // Without Node labels (no cluster) only the sets without a selector apply.
        let report = CheckReport::from(&Config::load(dir.path()).unwrap());
        let table = report.table();
        assert!(
            table.contains("only for nodes matching pool=gpu"),
            "{table}"
        );
        assert!(!table.contains("cuda"), "{table}");
    }
}
