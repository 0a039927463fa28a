//! `diskGuard:` in the config: how full the image filesystem may get before prepuller stops
//! starting pulls, so that what it pulls never starts the kubelet's image GC.

use serde::Deserialize;

/// The kubelet's `imageGCHighThresholdPercent` default: above it, its GC removes unused images.
pub const DEFAULT_HIGH_THRESHOLD_PERCENT: u8 = 85;
/// The kubelet's `imageGCLowThresholdPercent` default: its GC frees down to this.
pub const DEFAULT_LOW_THRESHOLD_PERCENT: u8 = 80;
/// Pulls stop this many points below the high threshold: at 80 %, where the kubelet's GC would
/// stop freeing anyway, so prepuller never by itself brings the kubelet near its GC, and other
/// writers on that filesystem (images pods pull, logs, emptyDirs) keep 5 points of room.
pub const DEFAULT_MARGIN_PERCENT: u8 = 5;

/// The effective settings (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskGuardSettings {
    pub enabled: bool,
    /// The kubelet's `imageGCHighThresholdPercent` on this node.
    pub high_threshold_percent: u8,
    /// The kubelet's `imageGCLowThresholdPercent`: an image held back for GC thrash is pulled
    /// again once usage is below it.
    pub low_threshold_percent: u8,
    /// Pulls may take the filesystem up to `high - margin` percent.
    pub margin_percent: u8,
}

impl Default for DiskGuardSettings {
    fn default() -> Self {
        DiskGuardSettings {
            enabled: true,
            high_threshold_percent: DEFAULT_HIGH_THRESHOLD_PERCENT,
            low_threshold_percent: DEFAULT_LOW_THRESHOLD_PERCENT,
            margin_percent: DEFAULT_MARGIN_PERCENT,
        }
    }
}

impl DiskGuardSettings {
    /// Usage (percent) no pull may take the image filesystem above.
    pub fn pull_limit_percent(&self) -> u8 {
        self.high_threshold_percent - self.margin_percent
    }
}

/// What is wrong with `diskGuard:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskGuardError {
    #[error("highThresholdPercent must be from 1 to 100, not {0}")]
    High(u8),
    #[error(
        "lowThresholdPercent ({low}) must be below highThresholdPercent ({high}), as the kubelet's imageGCLowThresholdPercent is"
    )]
    LowNotBelowHigh { low: u8, high: u8 },
    #[error("marginPercent ({margin}) must be below highThresholdPercent ({high})")]
    Margin { margin: u8, high: u8 },
}

/// As written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", try_from = "RawFields")]
pub(super) struct RawDiskGuard {
    fields: RawFields,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFields {
    enabled: Option<bool>,
    high_threshold_percent: Option<u8>,
    low_threshold_percent: Option<u8>,
    margin_percent: Option<u8>,
}

impl TryFrom<RawFields> for RawDiskGuard {
    type Error = DiskGuardError;
    fn try_from(fields: RawFields) -> Result<Self, DiskGuardError> {
        let raw = RawDiskGuard { fields };
        raw.settings()?;
        Ok(raw)
    }
}

impl RawDiskGuard {
    fn settings(&self) -> Result<DiskGuardSettings, DiskGuardError> {
        let d = DiskGuardSettings::default();
        let f = &self.fields;
        let s = DiskGuardSettings {
            enabled: f.enabled.unwrap_or(d.enabled),
            high_threshold_percent: f.high_threshold_percent.unwrap_or(d.high_threshold_percent),
            low_threshold_percent: f.low_threshold_percent.unwrap_or(d.low_threshold_percent),
            margin_percent: f.margin_percent.unwrap_or(d.margin_percent),
        };
        let (high, low, margin) = (
            s.high_threshold_percent,
            s.low_threshold_percent,
            s.margin_percent,
        );
        if high == 0 || high > 100 {
            return Err(DiskGuardError::High(high));
        }
        if low >= high {
            return Err(DiskGuardError::LowNotBelowHigh { low, high });
        }
        if margin >= high {
            return Err(DiskGuardError::Margin { margin, high });
        }
        Ok(s)
    }

    pub fn effective(raw: Option<&RawDiskGuard>) -> DiskGuardSettings {
        raw.and_then(|r| r.settings().ok()).unwrap_or_default()
    }
}
