//! A config file's `nodeSelector`: which nodes its images are for, with the semantics of a
//! Kubernetes `LabelSelector` (matchLabels and matchExpressions, ANDed).

use std::collections::BTreeMap;
use std::fmt;

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
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<Requirement>,
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
    type Error = String;
    fn try_from(raw: RawSelector) -> Result<Self, String> {
        for (k, v) in &raw.match_labels {
            qualified_name(k).map_err(|e| format!("matchLabels key {k:?}: {e}"))?;
            label_value(v).map_err(|e| format!("matchLabels value {v:?} of {k}: {e}"))?;
        }
        for (n, r) in raw.match_expressions.iter().enumerate() {
            qualified_name(&r.key).map_err(|e| format!("matchExpressions[{n}].key: {e}"))?;
            match r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{n}]: operator {:?} needs at least one value",
                        r.operator
                    ));
                }
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{n}]: operator {:?} takes no values",
                        r.operator
                    ));
                }
                _ => {}
            }
            for v in &r.values {
                label_value(v).map_err(|e| format!("matchExpressions[{n}] value {v:?}: {e}"))?;
            }
        }
        Ok(NodeSelector {
            match_labels: raw.match_labels,
            match_expressions: raw.match_expressions,
        })
    }
}

impl NodeSelector {
    /// Whether a node with `labels` is selected. An empty selector selects every node, as in
    /// Kubernetes.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
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
pub fn qualified_name(key: &str) -> Result<(), String> {
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
            return Err(format!(
                "prefix {p:?} must be a lowercase DNS subdomain (e.g. example.com)"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 {
        return Err("the name part must be 1 to 63 characters".into());
    }
    label_value(name)
}

/// A label value: at most 63 characters, alphanumerics, `-`, `_`, `.`, starting and ending
/// alphanumeric (or empty).
pub fn label_value(v: &str) -> Result<(), String> {
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
        return Err("must be at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit".into());
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

    fn selector(yaml: &str) -> Result<NodeSelector, String> {
        serde_saphyr::from_str::<NodeSelector>(yaml).map_err(|e| e.to_string())
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
            let e = selector(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
