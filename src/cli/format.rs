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

/// `text` in at most `width` columns: cut in the middle with `…`, keeping its start (the
/// registry) and more of its end (the name and tag, which tell images apart).
pub fn fit(text: &str, width: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= width {
        return text.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut head = (width - 1) / 3;
    let mut tail = width - 1 - head;
    // The whole last segment (`/name:tag`) when it leaves a few characters of the start.
    let last = chars
        .iter()
        .rev()
        .position(|&c| c == '/')
        .map_or(0, |p| p + 1);
    if last > tail && last + 1 + 4 <= width {
        (head, tail) = (width - 1 - last, last);
    }
    let mut s: String = chars[..head].iter().collect();
    s.push('…');
    s.extend(&chars[chars.len() - tail..]);
    s
}

/// The width output to stdout should fit: the terminal's when stdout is one, else `COLUMNS`
/// when set, else none (a pipe or file gets whole lines, for grep and diff).
pub fn stdout_width() -> Option<usize> {
    if let Some((_, columns)) = console::Term::stdout().size_checked() {
        return Some(columns as usize);
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&c: &usize| c > 0)
}

/// A table in the subcommands' style that fits in `width` columns (wrapping cells), or lays
/// its rows out whole without a width.
pub fn table(width: Option<usize>) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    // Not comfy-table's own look at the terminal: the caller decides (stdout, or a test).
    t.force_no_tty();
    if let Some(width) = width {
        t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
        t.set_width(width.min(u16::MAX as usize) as u16);
    }
    t
}

/// `text` broken at spaces into lines of at most `width` columns (a longer word is cut), the
/// lines after the first indented by `indent`; without a width, one line.
pub fn wrap(text: &str, width: Option<usize>, indent: usize) -> Vec<String> {
    let Some(width) = width.filter(|&w| w > indent + 10) else {
        return vec![text.to_string()];
    };
    // Words longer than a line are cut into pieces that fit one.
    let words = text.split_whitespace().flat_map(|word| {
        let chars: Vec<char> = word.chars().collect();
        chars
            .chunks(width - indent)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
    });
    let mut lines = Vec::new();
    let (mut line, mut len, mut empty) = (String::new(), 0, true);
    for word in words {
        let w = word.chars().count();
        if !empty && len + 1 + w > width {
            lines.push(std::mem::replace(&mut line, " ".repeat(indent)));
            (len, empty) = (indent, true);
        }
        if !empty {
            line.push(' ');
            len += 1;
        }
        line.push_str(&word);
        (len, empty) = (len + w, false);
    }
    lines.push(line);
    lines
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

    #[test]
    fn fit_keeps_the_start_and_more_of_the_end() {
        let name = "registry.example.com:5000/team/project/frontend:1.25.3-alpine";
        assert_eq!(fit(name, 100), name);
        let fitted = fit(name, 30);
        assert_eq!(fitted.chars().count(), 30);
        assert_eq!(fitted, "regist…/frontend:1.25.3-alpine");
        assert_eq!(fit(name, 20), "regist…1.25.3-alpine");
        assert_eq!(fit(name, 1), "…");
        assert_eq!(fit(name, 0), "");
    }

    #[test]
    fn wrap_breaks_at_spaces_cuts_long_words_and_indents() {
        let text = "[1] r.example/a:1: the image or tag does not exist in the registry: \
                    failed to resolve reference \"r.example/a-very-long-name-without-spaces-at-all:1\"";
        let lines = wrap(text, Some(30), 4);
        for l in &lines {
            assert!(l.chars().count() <= 30, "{lines:#?}");
        }
        assert!(
            lines[0].starts_with("[1] r.example/a:1: the image"),
            "{lines:#?}"
        );
        assert!(
            lines[1..].iter().all(|l| l.starts_with("    ")),
            "{lines:#?}"
        );
        // Nothing lost: the words cut at a line's end join up again.
        let joined: String = lines.iter().map(|l| l.trim()).collect();
        let text_joined: String = text.split_whitespace().collect();
        assert_eq!(joined.replace(' ', ""), text_joined);
        assert_eq!(wrap(text, None, 4), [text]);
    }
}
