//! Formatting shared by the subcommands' tables and progress lines.

use std::time::Duration;

pub fn human_bytes(bytes: u64) -> String {
    indicatif::DecimalBytes(bytes).to_string()
}

/// `name@sha256:0123456789ab…`: full digests are in the JSON; a line should fit a terminal.
pub fn short_digest(reference: &str) -> String {
    match reference.split_once('@') {
        Some((name, digest)) if digest.len() > 19 => format!("{name}@{}…", &digest[..19]),
        _ => reference.to_string(),
    }
}

pub fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Prints `value` as pretty JSON on stdout. One that cannot be serialized is reported, and
/// ends the command as a usage error (as any error outside the subcommand's own codes).
pub fn print_json(value: &impl serde::Serialize) -> Result<(), super::ExitCode> {
    match serde_json::to_string_pretty(value) {
        Ok(json) => {
            println!("{json}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(super::ExitCode::Usage)
        }
    }
}
