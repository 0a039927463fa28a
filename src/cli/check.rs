//! `prepuller check`: validates a config and prints every entry as declared, the reference
//! pulled (after any `imageRegistry`) and its policy.

use std::path::PathBuf;

use serde::Serialize;

use super::format::{print_json, stdout_width, table, wrap};
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
    /// As declared.
    pub image: String,
    /// The reference pulled.
    pub normalized: String,
    /// The `imageRegistry` that moved it from `image` to `normalized`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_registry: Option<String>,
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
                    image_registry: i.image_registry.clone(),
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
    /// The table, fitted to `width` columns when given (the references wrap), and the notes.
    pub fn table(&self, width: Option<usize>) -> String {
        let mut t = table(width);
        t.set_header(["LINE", "DECLARED", "PULLED", "POLICY", "REQUIRED"]);
        for i in &self.images {
            let pulled = match &i.image_registry {
                Some(r) => format!("{} (imageRegistry {r})", i.normalized),
                None => i.normalized.clone(),
            };
            t.add_row([
                i.line.to_string(),
                i.image.clone(),
                pulled,
                i.policy.to_string(),
                if i.required { "yes" } else { "no" }.to_string(),
            ]);
        }
        if width.is_some() {
            for n in [0, 3, 4] {
                if let Some(column) = t.column_mut(n) {
                    column.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
                }
            }
        }
        let mut lines = vec![t.to_string()];
        for m in &self.merged {
            lines.push(format!("note: {m}"));
        }
        if !self.credentials.is_empty() {
            lines.push(format!(
                "credential sources: {}{}",
                self.credentials.join(", "),
                if self.anonymous_fallback {
                    "; then anonymous (anonymousFallback)"
                } else {
                    ""
                }
            ));
        }
        for m in &self.node_specific_sets {
            lines.push(format!("note: {m}"));
        }
        lines.push(format!(
            "{}: valid, {} images ({} required), parallelism {} ({} per registry)",
            self.source.display(),
            self.images.len(),
            self.images.iter().filter(|i| i.required).count(),
            self.parallelism,
            self.per_registry_parallelism
        ));
        let mut s = String::new();
        for (n, line) in lines.iter().enumerate() {
            // The table is fitted already; the notes are wrapped.
            let wrapped = if n == 0 {
                vec![line.clone()]
            } else {
                wrap(line, width, 4)
            };
            for l in wrapped {
                s.push_str(&l);
                s.push('\n');
            }
        }
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
        Output::Table => print!("{}", report.table(stdout_width())),
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
        let table = report.table(None);
        assert!(
            table.contains("only for nodes matching pool=gpu"),
            "{table}"
        );
        assert!(!table.contains("cuda"), "{table}");
    }
}

#[cfg(test)]
mod width_tests {
    use super::*;

    #[test]
    fn the_table_fits_the_width() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.yaml");
        std::fs::write(
            &path,
            "credentials:\n\
             - dockerConfig: /var/lib/kubelet/config.json\n\
             - dockerConfig: /etc/prepuller/registry-credentials/.dockerconfigjson\n\
             images:\n\
             - registry.example.com:5000/team/project/metrics-exporter@sha256:\
             0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n\
             - image: registry.example.com:5000/team/project/very/deep/path/frontend:1.25.3-alpine\n\
             \x20 required: false\n",
        )
        .unwrap();
        let report = CheckReport::from(&Config::load(&path).unwrap());
        for width in [80, 150] {
            let text = report.table(Some(width));
            let widest = text.lines().map(|l| l.chars().count()).max().unwrap();
            assert!(widest <= width, "wider than {width}:\n{text}");
            assert!(text.contains("IfNotPresent"), "{text}");
        }
        let piped = report.table(None);
        assert!(piped.lines().any(|l| l.chars().count() > 150), "{piped}");
    }
}
