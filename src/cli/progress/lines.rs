//! Which images the live view lists, and what its counter says: a list taller than the
//! terminal keeps the lines that need eyes (in flight, failed) and collapses the ready ones
//! into the counter.

use std::collections::BTreeSet;

/// Where one image stands, for the live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineState {
    /// Being checked, or waiting for a pull slot or a retry.
    Waiting,
    /// A pull is running.
    InFlight,
    /// Present: it was there, or it was pulled.
    Ready,
    Failed,
}

/// Every image's state and which lines are listed. Each change costs about the terminal's
/// height, not the list's length: a list of 20,000 present images reports each one.
pub struct Lines {
    states: Vec<LineState>,
    /// The images in each state but `Ready`, in list order.
    waiting: BTreeSet<usize>,
    in_flight: BTreeSet<usize>,
    failed: BTreeSet<usize>,
    listed: BTreeSet<usize>,
}

impl Lines {
    /// `count` images, all waiting (being checked), none listed yet.
    pub fn new(count: usize) -> Lines {
        Lines {
            states: vec![LineState::Waiting; count],
            waiting: (0..count).collect(),
            in_flight: BTreeSet::new(),
            failed: BTreeSet::new(),
            listed: BTreeSet::new(),
        }
    }

    fn set_of(&mut self, state: LineState) -> Option<&mut BTreeSet<usize>> {
        match state {
            LineState::Waiting => Some(&mut self.waiting),
            LineState::InFlight => Some(&mut self.in_flight),
            LineState::Failed => Some(&mut self.failed),
            LineState::Ready => None,
        }
    }

    pub fn set(&mut self, index: usize, state: LineState) {
        let old = std::mem::replace(&mut self.states[index], state);
        if let Some(set) = self.set_of(old) {
            set.remove(&index);
        }
        if let Some(set) = self.set_of(state) {
            set.insert(index);
        }
    }

    /// Lists what fits in `capacity` lines: all when the list does; else the lines in flight,
    /// then the failed, then the waiting (each in list order), and never the ready ones, which
    /// the counter counts. Returns the lines to hide and those to show, in list order.
    pub fn relist(&mut self, capacity: usize) -> (Vec<usize>, Vec<usize>) {
        let want: BTreeSet<usize> = if self.states.len() <= capacity {
            if self.listed.len() == self.states.len() {
                return (Vec::new(), Vec::new());
            }
            (0..self.states.len()).collect()
        } else {
            let first: Vec<usize> = self
                .in_flight
                .iter()
                .chain(&self.failed)
                .take(capacity)
                .copied()
                .collect();
            let room = capacity - first.len();
            first
                .into_iter()
                .chain(self.waiting.iter().take(room).copied())
                .collect()
        };
        let hide = self.listed.difference(&want).copied().collect();
        let show = want.difference(&self.listed).copied().collect();
        self.listed = want;
        (hide, show)
    }

    /// How many listed lines come before image `index`'s.
    pub fn listed_before(&self, index: usize) -> usize {
        self.listed.range(..index).count()
    }

    pub fn ready(&self) -> usize {
        self.states.len() - self.waiting.len() - self.in_flight.len() - self.failed.len()
    }

    /// The counter's words: present images out of all (not those merely finished: a failed
    /// one is not ready), the failed apart, and how many lines are not listed.
    pub fn counter(&self) -> String {
        let mut text = format!("{}/{} ready", self.ready(), self.states.len());
        if !self.failed.is_empty() {
            text.push_str(&format!(", {} failed", self.failed.len()));
        }
        let hidden = self.states.len() - self.listed.len();
        if hidden > 0 {
            text.push_str(&format!(" ({hidden} not listed)"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::LineState::*;
    use super::*;

    fn lines(states: &[LineState]) -> Lines {
        let mut lines = Lines::new(states.len());
        for (i, s) in states.iter().enumerate() {
            lines.set(i, *s);
        }
        lines
    }

    fn listed(lines: &Lines) -> Vec<usize> {
        lines.listed.iter().copied().collect()
    }

    /// Seen on a 150×30 terminal: `5/6 images ready` while 3 were present.
    #[test]
    fn the_counter_counts_present_images_and_failed_apart() {
        let mut six = lines(&[Ready, Ready, Ready, Failed, Failed, InFlight]);
        six.relist(10);
        assert_eq!(six.counter(), "3/6 ready, 2 failed");
        let mut two = lines(&[Waiting, Ready]);
        two.relist(10);
        assert_eq!(two.counter(), "1/2 ready");
        six.relist(3);
        assert_eq!(six.counter(), "3/6 ready, 2 failed (3 not listed)");
    }

    /// Seen with 30 images on 30 rows: only finished lines showed, none still pulling.
    #[test]
    fn a_list_taller_than_the_terminal_keeps_in_flight_and_failed_lines() {
        let mut states = vec![Ready; 30];
        states[25] = InFlight;
        states[27] = InFlight;
        states[29] = Failed;
        states[28] = Waiting;
        states[26] = Waiting;
        let mut tall = lines(&states);
        let (hide, show) = tall.relist(4);
        assert!(hide.is_empty());
        assert_eq!(show, [25, 26, 27, 29], "in flight, failed, then waiting");
        assert_eq!(tall.counter(), "25/30 ready, 1 failed (26 not listed)");
        assert_eq!(tall.listed_before(27), 2);

        // Ready lines are collapsed even where there is room: the list does not fit.
        tall.relist(22);
        assert_eq!(listed(&tall), [25, 26, 27, 28, 29]);
        // In flight before failed when even those do not fit.
        tall.relist(2);
        assert_eq!(listed(&tall), [25, 27]);
        // One finishes: the failed line takes its place.
        tall.set(25, Ready);
        assert_eq!(tall.relist(2), (vec![25], vec![29]));

        // A list that fits is listed whole, ready lines too.
        let mut short = lines(&states[20..]);
        short.relist(10);
        assert_eq!(listed(&short), (0..10).collect::<Vec<_>>());
    }

    /// 20,000 images reported present one by one, as `prepuller pull` does at its start.
    #[test]
    fn a_long_list_costs_the_height_of_the_terminal_per_change() {
        let mut lines = Lines::new(20_000);
        lines.relist(22);
        let mut changes = 0;
        for i in 0..20_000 {
            lines.set(i, Ready);
            let (hide, show) = lines.relist(22);
            changes += hide.len() + show.len();
        }
        assert_eq!(lines.counter(), "20000/20000 ready (20000 not listed)");
        assert_eq!(changes, 2 * 20_000 - 22);
    }
}
