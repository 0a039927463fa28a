//! The goals a bench holds its figures to: each figure printed with its bound, and the bench
//! exits non-zero when any is missed, so `make bench` (and `make bench-smoke` in `make test`)
//! fails instead of printing a bad figure.

use std::fmt::Display;

/// Goals checked so far; [`Goals::finish`] exits with 1 if any was missed.
#[derive(Default)]
pub struct Goals {
    missed: Vec<String>,
}

impl Goals {
    pub fn new() -> Goals {
        Goals::default()
    }

    /// Records one goal: `what` describes the figure and its bound.
    pub fn check(&mut self, met: bool, what: impl Display) {
        if met {
            println!("  goal met:    {what}");
        } else {
            println!("  GOAL MISSED: {what}");
            self.missed.push(what.to_string());
        }
    }

    /// How many goals were missed so far.
    pub fn missed(&self) -> usize {
        self.missed.len()
    }

    /// Exits the process with status 1 when a goal was missed.
    pub fn finish(self) {
        if self.missed.is_empty() {
            return;
        }
        eprintln!("{} goal(s) missed:", self.missed.len());
        for m in &self.missed {
            eprintln!("  {m}");
        }
        std::process::exit(1);
    }
}
