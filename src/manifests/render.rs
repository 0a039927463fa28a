//! What was found, merged and written as an image-list config: one entry per image (after
//! normalization), sorted, each with where it came from, so that the file diffs cleanly.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use super::Found;
use crate::config::PullPolicy;
use crate::reference::ImageRef;

/// How many users of an image its comment names.
const MAX_ORIGINS: usize = 3;

struct Entry {
    written: String,
    reference: ImageRef,
    policy: PullPolicy,
    required: bool,
    origins: BTreeSet<String>,
}

/// The pull policy prepuller should use for one use of an image. A workload's `Never` means the
/// kubelet will not pull it, so the image must be put there beforehand: that is prepuller's job,
/// so it pulls when missing. `Always` stays `Always` (the kubelet will ask the registry on each
/// start; pre-pulling keeps the layers warm and the tag fresh).
fn policy_for(declared: Option<PullPolicy>, reference: &ImageRef) -> PullPolicy {
    match declared {
        Some(PullPolicy::Always) => PullPolicy::Always,
        Some(PullPolicy::IfNotPresent | PullPolicy::Never) => PullPolicy::IfNotPresent,
        None => default_policy(reference),
    }
}

/// The kubelet's and the config's default.
fn default_policy(reference: &ImageRef) -> PullPolicy {
    if reference.is_latest() {
        PullPolicy::Always
    } else {
        PullPolicy::IfNotPresent
    }
}

fn merge(found: &Found) -> BTreeMap<String, Entry> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for u in &found.uses {
        let policy = policy_for(u.policy, &u.reference);
        let entry = entries
            .entry(u.reference.to_string())
            .or_insert_with(|| Entry {
                written: u.written.clone(),
                reference: u.reference.clone(),
                policy,
                required: false,
                origins: BTreeSet::new(),
            });
        // Of two spellings of one image, the shorter (then the first in order): the same
        // output whatever the order of the inputs.
        if (u.written.len(), &u.written) < (entry.written.len(), &entry.written) {
            entry.written = u.written.clone();
        }
        // The stricter policy wins, as when the config merges duplicates.
        entry.policy = entry.policy.max(policy);
        entry.required |= !u.ephemeral;
        entry.origins.insert(u.origin.clone());
    }
    entries
}

/// The config text: a header saying where it came from, `images:`, and the pull secrets the
/// workloads use as a commented-out `credentials:` block.
pub fn render(found: &Found) -> String {
    let entries = merge(found);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Made by `prepuller images {}`",
        one_line(&found.inputs.join(" "))
    );
    let objects: usize = found.objects.values().sum();
    let kinds = found
        .objects
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut from = vec![];
    if objects > 0 {
        from.push(format!(
            "{objects} {} ({kinds})",
            plural(objects, "object", "objects")
        ));
    }
    if found.values_files > 0 {
        from.push(format!(
            "{} {}",
            found.values_files,
            plural(found.values_files, "values file", "values files")
        ));
    }
    let _ = writeln!(
        out,
        "# from {}: {} {}.",
        if from.is_empty() {
            "nothing".to_string()
        } else {
            from.join(" and ")
        },
        entries.len(),
        plural(entries.len(), "image", "images")
    );
    out.push_str("images:\n");
    for e in entries.values() {
        let mut origins: Vec<String> = e
            .origins
            .iter()
            .take(MAX_ORIGINS)
            .map(|o| one_line(o))
            .collect();
        if e.origins.len() > MAX_ORIGINS {
            origins.push(format!("and {} more", e.origins.len() - MAX_ORIGINS));
        }
        let comment = format!("  # {}", origins.join(", "));
        let image = scalar(&e.written);
        if e.policy == default_policy(&e.reference) && e.required {
            let _ = writeln!(out, "  - {image}{comment}");
        } else {
            let _ = writeln!(out, "  - image: {image}{comment}");
            if e.policy != default_policy(&e.reference) {
                let _ = writeln!(out, "    pullPolicy: {}", e.policy);
            }
            if !e.required {
                out.push_str("    required: false  # only ephemeral (debug) containers use it\n");
            }
        }
    }
    let disabled = found.disabled();
    if !disabled.is_empty() {
        out.push_str(
            "# Disabled in these values (`enabled: false`; --include-disabled lists them):\n",
        );
        for (image, origin) in &disabled {
            let _ = writeln!(out, "#   - {}  # {}", scalar(image), one_line(origin));
        }
    }
    if !found.secrets.is_empty() {
        out.push_str(
            "# The workloads pull with these secrets; to pull with the same credentials, add:\n",
        );
        out.push_str("# credentials:\n");
        for s in &found.secrets {
            let (ns, note) = match &s.namespace {
                Some(ns) => (scalar(ns), ""),
                None => (
                    "NAMESPACE".to_string(),
                    "  # the release's namespace: not in the input",
                ),
            };
            let _ = writeln!(
                out,
                "#   - secret: {{namespace: {ns}, name: {}}}{note}",
                scalar(&s.name)
            );
        }
    }
    out
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}

/// A YAML scalar: plain when it is safe (every valid reference but an IPv6 registry), else
/// double-quoted (a JSON string is a valid YAML one).
fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !s.contains(": ");
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// Text for a comment: on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
