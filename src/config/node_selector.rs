//! A config file's `nodeSelector`: which nodes its images are for, with the semantics of a
//! Kubernetes `LabelSelector` (matchLabels and matchExpressions, ANDed).
//!
//! Matching is kube's own [`Selector`]; the declared form is kept for messages, and is
//! validated here so that a bad selector is reported at its line, in our words.

use std::collections::BTreeMap;
use std::fmt;

use kube::core::{Expression, Selector, SelectorExt};
use serde::Deserialize;

/// A Node's labels.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

/// Validated on deserialization, so a bad selector is reported at its line like any field.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawSelector")]
pub struct NodeSelector {
    /// As declared, for messages: kube's `Display` sorts and dedups `In` values and prints
    /// nothing for an empty selector.
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
    /// The same, as kube evaluates it.
    selector: Selector,
}

/// What is wrong with a `nodeSelector`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchLabels key {key:?}: {source}")]
    LabelKey { key: String, source: NameError },
    #[error("matchLabels value {value:?} of {key}: {source}")]
    LabelValue {
        key: String,
        value: String,
        source: NameError,
    },
    #[error("matchExpressions[{index}].key: {source}")]
    ExpressionKey { index: usize, source: NameError },
    #[error("matchExpressions[{index}]: operator {operator:?} needs at least one value")]
    NeedsValues { index: usize, operator: Operator },
    #[error("matchExpressions[{index}]: operator {operator:?} takes no values")]
    TakesNoValues { index: usize, operator: Operator },
    #[error("matchExpressions[{index}] value {value:?}: {source}")]
    ExpressionValue {
        index: usize,
        value: String,
        source: NameError,
    },
}

/// A label or taint key, or a label value, that Kubernetes would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("prefix {0:?} must be a lowercase DNS subdomain (e.g. example.com)")]
    Prefix(String),
    #[error("the name part must be 1 to 63 characters")]
    NameLength,
    #[error(
        "must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    )]
    Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<Requirement>,
}

impl TryFrom<RawSelector> for NodeSelector {
    type Error = SelectorError;
    fn try_from(raw: RawSelector) -> Result<Self, SelectorError> {
        for (k, v) in &raw.match_labels {
            qualified_name(k).map_err(|source| SelectorError::LabelKey {
                key: k.clone(),
                source,
            })?;
            label_value(v).map_err(|source| SelectorError::LabelValue {
                key: k.clone(),
                value: v.clone(),
                source,
            })?;
        }
        for (index, r) in raw.match_expressions.iter().enumerate() {
            qualified_name(&r.key)
                .map_err(|source| SelectorError::ExpressionKey { index, source })?;
            let operator = r.operator;
            match operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err(SelectorError::NeedsValues { index, operator });
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err(SelectorError::TakesNoValues { index, operator });
                }
                _ => {}
            }
            for v in &r.values {
                label_value(v).map_err(|source| SelectorError::ExpressionValue {
                    index,
                    value: v.clone(),
                    source,
                })?;
            }
        }
        // Built from the validated parts rather than through `LabelSelector`, whose conversion
        // can fail for cases refused above already.
        let mut selector: Selector = raw.match_labels.clone().into_iter().collect();
        selector.extend(raw.match_expressions.iter().map(Requirement::expression));
        Ok(NodeSelector {
            match_labels: raw.match_labels,
            match_expressions: raw.match_expressions,
            selector,
        })
    }
}

impl Requirement {
    fn expression(&self) -> Expression {
        let key = self.key.clone();
        let values = || self.values.iter().cloned().collect();
        match self.operator {
            Operator::In => Expression::In(key, values()),
            Operator::NotIn => Expression::NotIn(key, values()),
            Operator::Exists => Expression::Exists(key),
            Operator::DoesNotExist => Expression::DoesNotExist(key),
        }
    }
}

impl NodeSelector {
    /// Whether a node with `labels` is selected. An empty selector selects every node, as in
    /// Kubernetes.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.selector.matches(labels)
    }
}

/// The `kubectl --selector` form, for messages: `pool=gpu,zone in (a,b),!spot`.
impl fmt::Display for NodeSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        if parts.is_empty() {
            return f.write_str("(every node)");
        }
        f.write_str(&parts.join(","))
    }
}

/// A label or taint key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 characters
/// of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
pub(super) fn qualified_name(key: &str) -> Result<(), NameError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(NameError::Prefix(p.to_string()));
        }
    }
    if name.is_empty() || name.len() > 63 {
        return Err(NameError::NameLength);
    }
    label_value(name)
}

/// A label value: at most 63 characters, alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric (or empty).
pub(super) fn label_value(v: &str) -> Result<(), NameError> {
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || !alnum(v.chars().next())
        || !alnum(v.chars().last())
    {
        return Err(NameError::Value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(yaml: &str) -> Result<NodeSelector, serde_saphyr::Error> {
        serde_saphyr::from_str::<NodeSelector>(yaml)
    }

    #[test]
    fn match_labels_and_expressions_are_anded_like_kubernetes() {
        let s = selector(
            "matchLabels: {pool: gpu}\nmatchExpressions:\n  - {key: zone, operator: In, values: [a, b]}\n  - {key: spot, operator: DoesNotExist}\n  - {key: arch, operator: NotIn, values: [arm64]}\n  - {key: gpu.example.com/model, operator: Exists}\n",
        )
        .unwrap();
        let base = [
            ("pool", "gpu"),
            ("zone", "a"),
            ("gpu.example.com/model", "a100"),
        ];
        assert!(s.matches(&labels(&base)));
        let with = |extra: (&str, &str)| {
            let mut l = labels(&base);
            l.insert(extra.0.into(), extra.1.into());
            s.matches(&l)
        };
        assert!(!with(("pool", "cpu")));
        assert!(!with(("zone", "c")));
        assert!(!with(("spot", "true")));
        assert!(!with(("arch", "arm64")));
        assert!(with(("arch", "amd64")));
        assert!(!s.matches(&labels(&[("pool", "gpu"), ("zone", "a")])));
        assert_eq!(
            s.to_string(),
            "pool=gpu,zone in (a,b),!spot,arch notin (arm64),gpu.example.com/model"
        );
        // An empty selector selects every node.
        assert!(selector("{}").unwrap().matches(&Labels::new()));
        assert_eq!(selector("{}").unwrap().to_string(), "(every node)");
        // Messages keep the declared order of values (kube's `Display` would sort them).
        let s =
            selector("matchExpressions: [{key: zone, operator: NotIn, values: [b, a]}]").unwrap();
        assert_eq!(s.to_string(), "zone notin (b,a)");
        assert!(s.matches(&labels(&[("zone", "c")])));
        assert!(!s.matches(&labels(&[("zone", "a")])));
    }

    #[test]
    fn invalid_selectors_say_what_is_wrong() {
        for (yaml, needle) in [
            (
                "matchExpressions: [{key: a, operator: In}]",
                "needs at least one value",
            ),
            (
                "matchExpressions: [{key: a, operator: Exists, values: [x]}]",
                "takes no values",
            ),
            ("matchExpressions: [{key: a, operator: Has}]", "Has"),
            ("matchLabels: {\"Bad_/x\": y}", "DNS subdomain"),
            ("matchLabels: {pool: \"-x\"}", "at most 63"),
            ("matchLabel: {pool: x}", "matchLabel"),
        ] {
            let e = selector(yaml).unwrap_err().to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
