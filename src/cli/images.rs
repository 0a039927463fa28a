//! `prepuller images`: prints the image-list config for the images of manifests and Helm values
//! files ([`crate::manifests`]).

use std::io::Read;
use std::path::PathBuf;

use super::ExitCode;
use crate::manifests::{self, Found, Input, ManifestError};

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Kubernetes manifests: a YAML (multi-document) or JSON file, a directory of them, or `-`
    /// for standard input (`helm template …`, `kubectl get … -o yaml`). Repeatable.
    #[arg(long = "filename", short = 'f', value_name = "FILE|DIR|-")]
    pub files: Vec<PathBuf>,
    /// A Helm values or K8ssandra overrides file, or a cass-operator ImageConfig. Several are
    /// merged as Helm merges them (later files win, lists replaced), then every image mapping is
    /// composed as the charts do (see the README). Repeatable.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Also list the images of blocks the values switch off (`enabled: false` on the block or
    /// above it); without it they are written as comments.
    #[arg(long)]
    pub include_disabled: bool,
    /// Write the config to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `prepuller images`.
pub fn run(args: &ImagesArgs) -> ExitCode {
    if args.files.is_empty() && args.values.is_empty() {
        eprintln!(
            "error: nothing to read: give manifests with -f FILE|DIR|- or values with --values FILE"
        );
        return ExitCode::Usage;
    }
    let found = match collect(args) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::Usage;
        }
    };
    for note in &found.notes {
        eprintln!("note: {note}");
    }
    if !found.skipped.is_empty() {
        let n: usize = found.skipped.values().sum();
        let kinds: Vec<String> = found
            .skipped
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let objects = if n == 1 {
            "object of another kind"
        } else {
            "objects of other kinds"
        };
        eprintln!(
            "skipped {n} {objects} (no images prepuller reads): {}",
            kinds.join(", ")
        );
    }
    if found.image_count() == 0 {
        let disabled = found.disabled().len();
        if disabled > 0 {
            eprintln!(
                "error: no images found in the input but {disabled} in blocks disabled in these values (--include-disabled lists them)"
            );
            return ExitCode::Failed;
        }
        eprintln!("error: no images found in the input");
        return ExitCode::Failed;
    }
    let text = manifests::render(&found);
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::Failed;
            }
        }
        None => print!("{text}"),
    }
    match &args.output {
        Some(path) => eprintln!(
            "{} images, written to {}",
            found.image_count(),
            path.display()
        ),
        None => eprintln!("{} images", found.image_count()),
    }
    ExitCode::Ok
}

fn collect(args: &ImagesArgs) -> Result<Found, ManifestError> {
    let mut found = Found::default();
    found.include_disabled = args.include_disabled;
    let mut stdin_read = false;
    let mut stdin = || {
        if std::mem::replace(&mut stdin_read, true) {
            return Err(std::io::Error::other(
                "standard input (`-`) can be read only once",
            ));
        }
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    };
    for path in &args.files {
        found.inputs.push(format!("-f {}", path.display()));
        for input in Input::read(path, &mut stdin)? {
            found.add_manifests(&input)?;
        }
    }
    for path in &args.values {
        found.inputs.push(format!("--values {}", path.display()));
        for input in Input::read(path, &mut stdin)? {
            found.add_values(&input)?;
        }
    }
    if args.include_disabled {
        found.inputs.push("--include-disabled".into());
    }
    found.compose_values()?;
    Ok(found)
}
