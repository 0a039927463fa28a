//! The few words a summary row (and a failed line of the live view) gives as its reason: the
//! kind of failure, not the runtime's message, which names the image up to three times and
//! would make the row as wide as that. The full message is listed under the table.

use crate::puller::{FailureKind, Stage};
use crate::runtime::ErrorKind;

/// A few words per kind of failure (no `_` names: people read these).
pub fn short(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Runtime(kind) => match kind {
            ErrorKind::NotFound => "not found",
            ErrorKind::Unauthorized => "auth failed",
            ErrorKind::Tls => "TLS not trusted",
            ErrorKind::InvalidReference => "bad reference",
            ErrorKind::NoMatchingPlatform => "no image for this platform",
            ErrorKind::RateLimited => "rate limited (429)",
            ErrorKind::RegistryError => "registry error (5xx)",
            ErrorKind::Network => "registry unreachable",
            ErrorKind::Timeout => "pull timed out",
            ErrorKind::RuntimeUnavailable => "runtime not answering",
            ErrorKind::Unknown => "runtime error",
        },
        FailureKind::DigestMismatch => "digest mismatch",
        FailureKind::NotPresent => "absent (pullPolicy Never)",
    }
}

/// Where an image stood when the run ended before it, and the last failure if it had one.
pub fn unfinished(stage: Stage, last: Option<FailureKind>) -> String {
    let stage = match stage {
        Stage::Waiting => "not started",
        Stage::Pulling => "still pulling",
        Stage::BackingOff => "backing off",
    };
    match last {
        Some(kind) => format!("{stage}: {}", short(kind)),
        None => stage.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind gets its own few words, short enough for a narrow column.
    #[test]
    fn each_kind_has_a_short_reason_of_its_own() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::Unauthorized,
            ErrorKind::Tls,
            ErrorKind::InvalidReference,
            ErrorKind::NoMatchingPlatform,
            ErrorKind::RateLimited,
            ErrorKind::RegistryError,
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::RuntimeUnavailable,
            ErrorKind::Unknown,
        ]
        .map(FailureKind::from);
        let all: Vec<FailureKind> = kinds
            .into_iter()
            .chain([FailureKind::DigestMismatch, FailureKind::NotPresent])
            .collect();
        let words: std::collections::HashSet<&str> = all.iter().map(|&k| short(k)).collect();
        assert_eq!(words.len(), all.len(), "{words:?}");
        for k in all {
            assert!(short(k).chars().count() <= 26, "{}", short(k));
        }
        assert_eq!(short(ErrorKind::NotFound.into()), "not found");
        assert_eq!(short(ErrorKind::Unauthorized.into()), "auth failed");
        assert_eq!(short(ErrorKind::RateLimited.into()), "rate limited (429)");
        assert_eq!(
            unfinished(Stage::BackingOff, Some(ErrorKind::RateLimited.into())),
            "backing off: rate limited (429)"
        );
        assert_eq!(unfinished(Stage::Waiting, None), "not started");
    }
}
