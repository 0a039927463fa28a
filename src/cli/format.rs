//! Formatting shared by the subcommands' tables and progress lines.

use std::time::Duration;

pub fn human_bytes(bytes: u64) -> String {
    indicatif::DecimalBytes(bytes).to_string()
}

/// A pull in flight's bytes: `12.0 MB / 50.0 MB (24%) at 2.10 MB/s`; without a total (its
/// manifest not found yet) `12.0 MB at 2.10 MB/s`; the rate once there are two samples.
pub fn pull_bytes(done: u64, total: Option<u64>, per_second: Option<u64>) -> String {
    let mut s = human_bytes(done);
    if let Some(total) = total.filter(|&t| t > 0) {
        let percent = (done.min(total) as f64 / total as f64 * 100.0).floor();
        s.push_str(&format!(" / {} ({percent}%)", human_bytes(total)));
    }
    if let Some(rate) = per_second {
        s.push_str(&format!(" at {}/s", human_bytes(rate)));
    }
    s
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_bytes_show_the_total_and_rate_when_known() {
        assert_eq!(
            pull_bytes(12_000_000, Some(50_000_000), Some(2_100_000)),
            "12.00 MB / 50.00 MB (24%) at 2.10 MB/s"
        );
        assert_eq!(pull_bytes(12_000_000, None, None), "12.00 MB");
        assert_eq!(pull_bytes(0, Some(0), Some(0)), "0 B at 0 B/s");
    }
}
