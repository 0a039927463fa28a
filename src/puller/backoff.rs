//! How long to wait before trying again: exponential ceilings and their jitter.
//!
//! Own arithmetic rather than a retry crate's policy: an image waits as a queue record, not in
//! a retry loop, so only the delays are needed, with full jitter (uniform in [0, ceiling], as
//! the README documents) and a half jitter for pauses asked for by a registry.

use std::time::Duration;

use crate::config::BackoffSettings;

/// containerd already retries a 429 about six times without pausing, so when one reaches us
/// the back-off jumps ahead this many doublings.
pub(crate) const RATE_LIMIT_EXTRA_STEPS: u32 = 3;

/// The back-off ceiling after `step` doublings: `backoff.initial` doubled, at most
/// `backoff.max`.
pub(crate) fn ceiling(backoff: &BackoffSettings, step: u32) -> Duration {
    backoff
        .initial
        .saturating_mul(1 << step.min(20))
        .min(backoff.max)
}

/// Full jitter: uniform in [0, d], so that nodes that failed together retry apart.
pub(crate) fn full_jitter(d: Duration) -> Duration {
    d.mul_f64(fastrand::f64())
}

/// Uniform in [d/2, d]: spread out, but never short, for registries that asked us to slow down.
pub(crate) fn half_jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum_and_jitter_stays_within() {
        let b = BackoffSettings {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let got: Vec<u64> = (0..6).map(|s| ceiling(&b, s).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 8, 8]);
        assert_eq!(ceiling(&b, u32::MAX), b.max, "no overflow");
        for _ in 0..100 {
            let d = Duration::from_secs(8);
            assert!(full_jitter(d) <= d);
            assert!((d / 2..=d).contains(&half_jitter(d)));
        }
    }
}
