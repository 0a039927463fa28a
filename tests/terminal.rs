//! What `prepuller pull` shows on a terminal: the real binary in a real pseudo-terminal
//! (tmux, 80×24) against a real containerd and registry, its screen captured while it pulls
//! and after. Also: a config error is printed once.

use std::process::Command;
use std::time::{Duration, Instant};

use testkit::faults::{Fault, FaultProxy};
use testkit::{Sandbox, prepuller_bin, push_image};

const COLUMNS: usize = 80;
const ROWS: usize = 24;

/// A tmux server of its own (its own socket), killed when dropped, whatever the test did.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` (a shell line) in a detached 80×24 session.
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("prepuller-test-{}", std::process::id()),
        };
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            &COLUMNS.to_string(),
            "-y",
            &ROWS.to_string(),
            "-s",
            "t",
            command,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen's rows. (indicatif pads each line to the terminal's width and lets the
    /// terminal wrap to the next, so tmux would join them all with `-J`.)
    fn screen(&self) -> Vec<String> {
        lines(&self.run(&["capture-pane", "-p", "-t", "t"]))
    }

    /// The screen and all that scrolled off it, each line as printed (one wrapped by the
    /// terminal joined up again, so a line wider than the terminal shows as such).
    fn history(&self) -> Vec<String> {
        lines(&self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"]))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(|l| l.trim_end().to_string()).collect()
}

/// Rows of the live view that continue the line above: each of its lines starts with the
/// counter, or with two spaces and a spinner or mark; a line too wide for the terminal goes on
/// in the next row.
fn continued(screen: &[String]) -> Vec<&String> {
    screen
        .iter()
        .filter(|row| {
            let mark = row.strip_prefix("  ").and_then(|r| r.chars().next());
            !(row.is_empty()
                || row.starts_with("prepuller [")
                || mark.is_some_and(|c| c != ' ' && row[2 + c.len_utf8()..].starts_with(' ')))
        })
        .collect()
}

fn too_wide(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.chars().count() > COLUMNS)
        .collect()
}

/// `N/M ready` in the counter line.
fn ready_count(screen: &[String]) -> Option<(usize, usize)> {
    let line = screen.iter().find(|l| l.starts_with("prepuller ["))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.starts_with("ready"))?;
    let (n, m) = words[at - 1].split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// 30 images on 24 rows: 26 small ones pulled at once, one missing tag, and three slowed
/// down by a throttling proxy, last in the list (so a view that lists the first lines that
/// fit would not show them).
#[tokio::test]
async fn the_live_view_and_the_summary_fit_an_80_column_terminal() {
    let sb = Sandbox::start();
    let reg = sb.registry.host();
    // Long names: cut to fit in the live view, wrapped in the table.
    let repo = |n: usize| format!("team/project/a-rather-long-service-name-{n:02}");
    let repos: Vec<String> = (0..29).map(repo).collect();
    futures::future::join_all(repos.iter().enumerate().map(|(n, r)| {
        let bytes = if n < 26 { 16 * 1024 } else { 2 * 1024 * 1024 };
        push_image(&reg, r, "1.0.0", 7000 + n as u64, bytes)
    }))
    .await;
    // Two 1 MiB layers at 192 KiB/s each: about 5 s an image.
    let slow = FaultProxy::start(&reg, Fault::Throttle(192 * 1024));
    let mut yaml = "parallelism: 4\nimages:\n".to_string();
    for n in 0..26 {
        yaml.push_str(&format!("  - {reg}/{}:1.0.0\n", repo(n)));
    }
    yaml.push_str(&format!("  - {reg}/{}:no-such-tag\n", repo(0)));
    for n in 26..29 {
        yaml.push_str(&format!("  - {}/{}:1.0.0\n", slow.host(), repo(n)));
    }
    let config = sb.path().join("images.yaml");
    std::fs::write(&config, yaml).unwrap();

    let shell = format!(
        "PREPULLER_LOG=warn {} pull --config {} --runtime-endpoint {}; echo EXIT=$?; sleep 600",
        prepuller_bin().display(),
        config.display(),
        sb.containerd.endpoint()
    );
    let tmux = Tmux::start(&shell);

    // While the slow ones pull: their lines and the failed one are listed, the ready ones
    // collapsed into the counter, which counts present images only.
    let started = Instant::now();
    let live = loop {
        let screen = tmux.screen();
        let pulling = screen.iter().filter(|l| l.contains("pulling")).count();
        let failed = screen.iter().any(|l| l.contains("failed: not found"));
        // The counter is redrawn at most 20 times a second: it may lag a line by a moment.
        let counted = screen
            .iter()
            .any(|l| l.starts_with("prepuller [") && l.contains(", 1 failed"));
        if pulling >= 2 && failed && counted {
            break screen;
        }
        assert!(
            !screen.iter().any(|l| l.starts_with("EXIT=")),
            "ended before the view could be seen:\n{}",
            tmux.history().join("\n")
        );
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no live view with pulling and failed lines:\n{}",
            screen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown = live.join("\n");
    assert!(
        continued(&live).is_empty(),
        "a line wider than {COLUMNS}:\n{shown}"
    );
    let pulling = live.iter().filter(|l| l.contains("pulling")).count();
    assert!(
        live.iter().any(|l| l.contains("failed: not found")),
        "{shown}"
    );
    let (ready, total) = ready_count(&live).unwrap_or_else(|| panic!("no counter:\n{shown}"));
    assert_eq!(total, 30, "{shown}");
    assert!(
        ready <= total - 1 - pulling,
        "counts more than the present images:\n{shown}"
    );
    assert!(
        live.iter()
            .any(|l| l.starts_with("prepuller [") && l.contains(", 1 failed")),
        "{shown}"
    );
    // The slow images' names are cut (`…`) to fit, with their distinct end kept.
    assert!(
        live.iter()
            .any(|l| l.contains("pulling") && l.contains('…') && l.contains("-2")),
        "{shown}"
    );

    // After: the summary table fits, the failed row says a few words and points at the
    // full message under the table.
    let started = Instant::now();
    let after = loop {
        let history = tmux.history();
        if history.iter().any(|l| l.starts_with("EXIT=")) {
            break history;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "pull did not end:\n{}",
            history.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // From the table on: what the live view drew is cleared.
    let table = after
        .iter()
        .position(|l| l.starts_with('┌'))
        .unwrap_or_else(|| panic!("no table:\n{}", after.join("\n")));
    let after = &after[table..];
    let text = after.join("\n");
    assert!(after.iter().any(|l| l == "EXIT=1"), "{text}");
    assert!(too_wide(after).is_empty(), "wider than {COLUMNS}:\n{text}");
    assert!(
        after
            .iter()
            .any(|l| l.starts_with('│') && l.contains("not found [1]")),
        "{text}"
    );
    let note = after
        .iter()
        .position(|l| l.starts_with("[1] "))
        .unwrap_or_else(|| panic!("no message under the table:\n{text}"));
    let message = after[note..]
        .iter()
        .take_while(|l| l.starts_with("[1] ") || l.starts_with("    "))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        message.contains("no-such-tag") && message.contains("not found"),
        "{text}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.starts_with("29/30 required images present")),
        "{text}"
    );
}

/// Each config error once on stderr (it used to be printed twice: the headline, then
/// serde-saphyr's own rendering of the same error above the code frame).
#[test]
fn a_config_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("list.yaml", "- nginx:1.25\n", "needs an `images:` list"),
        ("empty.yaml", "", "needs an `images:` list"),
        (
            "indent.yaml",
            "images:\n  - repository: nginx\n     tag: \"1.25\"\n",
            "mapping values are not allowed",
        ),
        ("unknown.yaml", "images:\n- nam: x\n", "unknown field `nam`"),
    ];
    for (name, text, message) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        // `pull` reads the config before it looks for the runtime.
        let no_runtime = ["--runtime-endpoint", "unix:///nonexistent.sock"];
        for (subcommand, extra) in [("check", &[][..]), ("pull", &no_runtime[..])] {
            let out = Command::new(prepuller_bin())
                .args([subcommand, "--config"])
                .arg(&path)
                .args(extra)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                stderr.matches(message).count(),
                1,
                "{name}, {subcommand}:\n{stderr}"
            );
            assert_eq!(
                stderr.matches("error").count(),
                1,
                "{name}, {subcommand}:\n{stderr}"
            );
            assert!(!stderr.contains('?'), "{name}, {subcommand}:\n{stderr}");
        }
    }
}
