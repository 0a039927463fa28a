//! Why a pull failed: what the runtime (or the registry, through it) answered, or what the
//! puller found itself (a pin the registry does not serve, an image `Never` to be pulled).

use serde::Serialize;

use crate::runtime::{ErrorKind, KindInfo, PERMANENT, RuntimeError};

/// What kind of failure ended a pull attempt, which decides whether it is retried. Its names,
/// permanence and hints are those of [`ErrorKind`] for the runtime's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// What the runtime answered.
    Runtime(ErrorKind),
    /// The pulled image does not have the pinned digest.
    DigestMismatch,
    /// `pullPolicy: Never` and the image is not on the node.
    NotPresent,
}

impl FailureKind {
    /// The runtime's table, and the puller's own two rows.
    pub const fn info(self) -> KindInfo {
        match self {
            FailureKind::Runtime(kind) => kind.info(),
            FailureKind::DigestMismatch => KindInfo::new(
                PERMANENT,
                "digest_mismatch",
                "the pulled image does not have the pinned digest",
                "check that the digest belongs to this repository",
            ),
            FailureKind::NotPresent => KindInfo::new(
                PERMANENT,
                "not_present",
                "pullPolicy is Never and the image is not on this node",
                "load the image another way, or change pullPolicy",
            ),
        }
    }

    /// The runtime's answer, when the runtime gave one.
    pub fn runtime(self) -> Option<ErrorKind> {
        match self {
            FailureKind::Runtime(kind) => Some(kind),
            FailureKind::DigestMismatch | FailureKind::NotPresent => None,
        }
    }

    pub fn is_permanent(self) -> bool {
        self.info().permanent
    }

    /// `permanent` or `transient`.
    pub fn class(self) -> &'static str {
        self.info().class()
    }

    /// A short, stable name for logs, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// What failed, in words.
    pub fn summary(self) -> &'static str {
        self.info().summary
    }

    /// What to do about it.
    pub fn hint(self) -> &'static str {
        self.info().hint
    }
}

impl From<ErrorKind> for FailureKind {
    fn from(kind: ErrorKind) -> Self {
        FailureKind::Runtime(kind)
    }
}

/// `kind == ErrorKind::Unauthorized`: whether the runtime answered that.
impl PartialEq<ErrorKind> for FailureKind {
    fn eq(&self, other: &ErrorKind) -> bool {
        self.runtime() == Some(*other)
    }
}

impl Serialize for FailureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why an image is not present, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{image}: {}: {detail} ({})", kind.summary(), kind.hint())]
pub struct PullError {
    /// The reference that was pulled.
    pub image: String,
    pub kind: FailureKind,
    /// The runtime's own message.
    pub detail: String,
}

impl PullError {
    pub(crate) fn from_runtime(image: &str, e: RuntimeError) -> Self {
        PullError {
            image: image.to_string(),
            kind: e.kind().into(),
            detail: e.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metric labels, `/status` JSON and logs name these kinds as before they moved here.
    #[test]
    fn the_puller_kinds_keep_their_names_permanence_and_hints() {
        let k = FailureKind::DigestMismatch;
        assert_eq!((k.as_str(), k.class()), ("digest_mismatch", "permanent"));
        assert_eq!(k.hint(), "check that the digest belongs to this repository");
        let k = FailureKind::NotPresent;
        assert_eq!((k.as_str(), k.class()), ("not_present", "permanent"));
        assert_eq!(
            k.summary(),
            "pullPolicy is Never and the image is not on this node"
        );
        assert_eq!(serde_json::to_value(k).unwrap(), "not_present");
        let k = FailureKind::from(ErrorKind::RateLimited);
        assert_eq!((k.as_str(), k.class()), ("rate_limited", "transient"));
        assert_eq!(serde_json::to_value(k).unwrap(), "rate_limited");
        assert!(k == ErrorKind::RateLimited && k != ErrorKind::Network);
        assert!(FailureKind::NotPresent != ErrorKind::NotFound);
    }
}
