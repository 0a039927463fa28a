//! Live progress of a pull run: bars on a terminal, one log line per event otherwise.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::format::{fit, human_bytes, human_duration, pull_bytes, short_digest};
use crate::cli::pull::reason;
use crate::config::ImageSpec;
use crate::puller::{PullBytes, PullEvent};

mod lines;

use lines::{LineState, Lines};

/// Shows the events of one run.
pub trait Progress: Send + Sync {
    fn event(&self, images: &[ImageSpec], event: &PullEvent);
    /// Clears anything drawn, before the summary is printed.
    fn finish(&self) {}
}

/// One `tracing` line per event, for logs and CI.
pub struct LogProgress;

impl Progress for LogProgress {
    fn event(&self, images: &[ImageSpec], event: &PullEvent) {
        let image = |index: usize| images[index].reference.to_string();
        match event {
            PullEvent::Present { index, size_bytes } => {
                tracing::info!(image = %image(*index), size = %human_bytes(*size_bytes), "already present")
            }
            PullEvent::Queued { index } => {
                tracing::debug!(image = %image(*index), "waiting for a pull slot")
            }
            // Four a second per image: too many for a log; the terminal view shows them.
            PullEvent::Progress { .. } => {}
            PullEvent::Started { index, attempt } => {
                tracing::info!(image = %image(*index), attempt, "pulling")
            }
            PullEvent::AttemptFailed {
                index,
                attempt,
                error,
                retry_in,
            } => tracing::warn!(
                image = %image(*index),
                attempt,
                class = error.kind.class(),
                reason = error.kind.as_str(),
                retry_in = %human_duration(*retry_in),
                "pull failed, retrying: {error}"
            ),
            PullEvent::Pulled {
                index,
                size_bytes,
                elapsed,
                attempts,
            } => tracing::info!(
                image = %image(*index),
                size = %human_bytes(*size_bytes),
                took = %human_duration(*elapsed),
                attempts,
                "pulled"
            ),
            PullEvent::Failed { index, error, .. } => {
                let required = images[*index].required;
                if required {
                    tracing::error!(image = %image(*index), class = error.kind.class(), reason = error.kind.as_str(), "failed: {error}")
                } else {
                    tracing::warn!(image = %image(*index), class = error.kind.class(), reason = error.kind.as_str(), "optional image failed: {error}")
                }
            }
        }
    }
}

/// A line per image with a spinner and elapsed time, and an overall counter of the images
/// present; fitted to the terminal (names cut to its width, ready lines collapsed into the
/// counter when the list is taller than it).
pub struct TerminalProgress {
    multi: MultiProgress,
    overall: ProgressBar,
    bars: Vec<ProgressBar>,
    lines: Mutex<Lines>,
    /// Each image's attempt in flight, for its progress line.
    attempts: Mutex<Vec<u32>>,
    /// Of the image column, measured once (not on every event).
    width: usize,
}

/// The terminal's rows and columns, when stderr is one.
fn terminal_size() -> Option<(usize, usize)> {
    console::Term::stderr()
        .size_checked()
        .map(|(rows, columns)| (rows as usize, columns as usize))
}

/// Room a line keeps beside the image name: the spinner, gaps, a message and the time.
const LINE_ROOM: usize = 36;

impl TerminalProgress {
    pub fn new(images: &[ImageSpec]) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let columns = terminal_size().map_or(120, |(_, c)| c);
        let width = images
            .iter()
            .map(|i| short_digest(&i.reference.to_string()).chars().count())
            .max()
            .unwrap_or(10)
            .min(70)
            .min(columns.saturating_sub(LINE_ROOM).max(10));
        let bar = if columns >= 100 { 30 } else { 16 };
        let overall = multi.add(
            ProgressBar::new(images.len() as u64).with_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix:.bold}} [{{bar:{bar}}}] {{wide_msg}} {{elapsed}}"
                ))
                .expect("valid template")
                .progress_chars("=> "),
            ),
        );
        overall.set_prefix("prepuller");
        // Hidden until listed: a bar outside the MultiProgress would draw on its own.
        let bars = images
            .iter()
            .map(|spec| {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
                    .with_style(waiting_style(width));
                bar.set_prefix(fit(&short_digest(&spec.reference.to_string()), width));
                bar.set_message("checking");
                bar
            })
            .collect();
        overall.enable_steady_tick(Duration::from_millis(200));
        let progress = TerminalProgress {
            multi,
            overall,
            bars,
            lines: Mutex::new(Lines::new(images.len())),
            attempts: Mutex::new(vec![0; images.len()]),
            width,
        };
        progress.update(None);
        progress
    }

    /// Sets image `index`'s state (if given), lists the lines that fit now, and counts.
    fn update(&self, change: Option<(usize, LineState)>) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((index, state)) = change {
            lines.set(index, state);
        }
        // The counter's line, and one spare for the cursor.
        let capacity = terminal_size().map_or(usize::MAX, |(rows, _)| rows.saturating_sub(2));
        let (hide, show) = lines.relist(capacity.max(1));
        for i in hide {
            self.multi.remove(&self.bars[i]);
        }
        for i in show {
            // After the counter and the listed lines above it, in list order.
            let position = 1 + lines.listed_before(i);
            self.multi.insert(position, self.bars[i].clone());
            // A finished bar draws only when told.
            self.bars[i].force_draw();
        }
        self.overall.set_position(lines.ready() as u64);
        self.overall.set_message(lines.counter());
    }

    fn finish_bar(&self, index: usize, state: LineState, style: ProgressStyle, message: String) {
        let bar = &self.bars[index];
        bar.set_style(style);
        bar.finish_with_message(message);
        self.update(Some((index, state)));
    }
}

/// What the line of an image being pulled says (the elapsed time follows): the attempt after
/// the first, and the bytes where the runtime tells them (containerd).
fn pulling_message(attempt: u32, bytes: Option<&PullBytes>) -> String {
    let mut s = "pulling".to_string();
    if attempt > 1 {
        s.push_str(&format!(" (attempt {attempt})"));
    }
    if let Some(b) = bytes {
        s.push_str(&format!(" {}", pull_bytes(b.done, b.total, b.per_second)));
    }
    s
}

fn waiting_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!("  {{spinner}} {{prefix:{width}}}  {{wide_msg}}"))
        .expect("valid template")
}

fn active_style(width: usize) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "  {{spinner:.cyan}} {{prefix:{width}}}  {{wide_msg}} {{elapsed}}"
    ))
    .expect("valid template")
}

fn done_style(width: usize, mark: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("  {mark} {{prefix:{width}}}  {{wide_msg}}"))
        .expect("valid template")
}

impl Progress for TerminalProgress {
    fn event(&self, images: &[ImageSpec], event: &PullEvent) {
        let width = self.width;
        match event {
            PullEvent::Present { index, size_bytes } => self.finish_bar(
                *index,
                LineState::Ready,
                done_style(width, "✔"),
                format!("present ({})", human_bytes(*size_bytes)),
            ),
            PullEvent::Queued { index } => {
                let bar = &self.bars[*index];
                bar.set_message("waiting");
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            PullEvent::Started { index, attempt } => {
                let bar = &self.bars[*index];
                bar.set_style(active_style(width));
                bar.reset_elapsed();
                self.attempts.lock().unwrap_or_else(|e| e.into_inner())[*index] = *attempt;
                bar.set_message(pulling_message(*attempt, None));
                self.update(Some((*index, LineState::InFlight)));
            }
            PullEvent::Progress { index, bytes } => {
                let attempt = self.attempts.lock().unwrap_or_else(|e| e.into_inner())[*index];
                let bar = &self.bars[*index];
                if !bar.is_finished() {
                    bar.set_message(pulling_message(attempt, Some(bytes)));
                }
            }
            PullEvent::AttemptFailed {
                index,
                error,
                retry_in,
                ..
            } => {
                let bar = &self.bars[*index];
                bar.set_style(waiting_style(width));
                bar.set_message(format!(
                    "{} — retry in {}",
                    reason::short(error.kind),
                    human_duration(*retry_in)
                ));
                self.update(Some((*index, LineState::Waiting)));
            }
            PullEvent::Pulled {
                index,
                size_bytes,
                elapsed,
                ..
            } => self.finish_bar(
                *index,
                LineState::Ready,
                done_style(width, "✔"),
                format!(
                    "pulled {} in {}",
                    human_bytes(*size_bytes),
                    human_duration(*elapsed)
                ),
            ),
            PullEvent::Failed { index, error, .. } => {
                let mark = if images[*index].required { "✘" } else { "!" };
                self.finish_bar(
                    *index,
                    LineState::Failed,
                    done_style(width, mark),
                    format!("failed: {}", reason::short(error.kind)),
                );
            }
        }
    }

    fn finish(&self) {
        self.overall.finish();
        for bar in &self.bars {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_in_flight_line_shows_bytes_total_and_rate() {
        assert_eq!(pulling_message(1, None), "pulling");
        assert_eq!(pulling_message(2, None), "pulling (attempt 2)");
        let bytes = PullBytes {
            done: 5_000_000,
            total: Some(50_000_000),
            per_second: Some(4_000_000),
        };
        assert_eq!(
            pulling_message(1, Some(&bytes)),
            "pulling 5.00 MB / 50.00 MB (10%) at 4.00 MB/s"
        );
    }
}
