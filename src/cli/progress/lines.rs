//! Which images the live view lists, and what its counter says: a list taller than the
//! terminal keeps the lines that need eyes (in flight, failed) and collapses the ready ones
//! into the counter.

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

/// Which images' lines are listed in `capacity` lines: all when they fit; else the ones in
/// flight, then the failed, then the waiting (each in list order), and never the ready ones,
/// which the counter counts.
pub fn listed(states: &[LineState], capacity: usize) -> Vec<bool> {
    if states.len() <= capacity {
        return vec![true; states.len()];
    }
    let mut listed = vec![false; states.len()];
    let mut room = capacity;
    for class in [LineState::InFlight, LineState::Failed, LineState::Waiting] {
        for (i, _) in states.iter().enumerate().filter(|(_, s)| **s == class) {
            if room == 0 {
                return listed;
            }
            listed[i] = true;
            room -= 1;
        }
    }
    listed
}

/// The counter's words: present images out of all (not those merely finished: a failed one
/// is not ready), the failed apart, and how many lines are not listed.
pub fn counter(states: &[LineState], listed: &[bool]) -> String {
    let count = |s: LineState| states.iter().filter(|x| **x == s).count();
    let mut text = format!("{}/{} ready", count(LineState::Ready), states.len());
    let failed = count(LineState::Failed);
    if failed > 0 {
        text.push_str(&format!(", {failed} failed"));
    }
    let hidden = listed.iter().filter(|l| !**l).count();
    if hidden > 0 {
        text.push_str(&format!(" ({hidden} not listed)"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::LineState::*;
    use super::*;

    /// Seen on a 150×30 terminal: `5/6 images ready` while 3 were present.
    #[test]
    fn the_counter_counts_present_images_and_failed_apart() {
        let states = [Ready, Ready, Ready, Failed, Failed, InFlight];
        assert_eq!(counter(&states, &[true; 6]), "3/6 ready, 2 failed");
        assert_eq!(counter(&[Waiting, Ready], &[true; 2]), "1/2 ready");
        assert_eq!(
            counter(&states, &[false, false, false, true, true, true]),
            "3/6 ready, 2 failed (3 not listed)"
        );
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
        let listed = listed(&states, 4);
        let shown: Vec<usize> = (0..30).filter(|&i| listed[i]).collect();
        assert_eq!(shown, [25, 26, 27, 29], "in flight, failed, then waiting");
        assert_eq!(
            counter(&states, &listed),
            "25/30 ready, 1 failed (26 not listed)"
        );

        // Ready lines are collapsed even where there is room: the list does not fit.
        let roomy = super::listed(&states, 22);
        let shown: Vec<usize> = (0..30).filter(|&i| roomy[i]).collect();
        assert_eq!(shown, [25, 26, 27, 28, 29]);
        // A list that fits is listed whole.
        assert_eq!(super::listed(&states[20..], 10), vec![true; 10]);
        // In flight before failed when even those do not fit.
        let tight = super::listed(&states, 2);
        assert!(tight[25] && tight[27] && !tight[29]);
    }
}
