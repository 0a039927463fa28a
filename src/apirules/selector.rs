//! Label selectors as kube-apiserver parses and matches them:
//! staging/src/k8s.io/apimachinery/pkg/labels/selector.go (`Parse`, `Lexer`, `Parser`,
//! `NewRequirement`, `Requirement.Matches`). Terms are ANDed; `!=` and `notin` also match an
//! object without the key; `in`/`notin` need a non-empty list; keys and values are validated.

use std::collections::BTreeMap;

use super::Refusal;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    LeftPar,
    RightPar,
    Comma,
    In,
    NotIn,
}

/// selector.go `Lexer.Lex`: identifiers run until whitespace or one of `!=(),<>`.
fn lex(s: &str) -> Vec<Token> {
    let special = |c: char| "!=(),<>".contains(c);
    let mut tokens = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if special(c) {
            chars.next();
            let next = chars.peek().copied();
            tokens.push(match (c, next) {
                ('=', Some('=')) => {
                    chars.next();
                    Token::DoubleEq
                }
                ('!', Some('=')) => {
                    chars.next();
                    Token::NotEq
                }
                ('=', _) => Token::Eq,
                ('!', _) => Token::Not,
                ('(', _) => Token::LeftPar,
                (')', _) => Token::RightPar,
                (',', _) => Token::Comma,
                ('<', _) => Token::Lt,
                _ => Token::Gt,
            });
        } else {
            let mut ident = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || special(c) {
                    break;
                }
                ident.push(c);
                chars.next();
            }
            tokens.push(match ident.as_str() {
                "in" => Token::In,
                "notin" => Token::NotIn,
                _ => Token::Ident(ident),
            });
        }
    }
    tokens
}

fn bad(selector: &str, why: String) -> Refusal {
    Refusal {
        code: 400,
        reason: "BadRequest",
        message: format!("unable to parse requirement: {why} (selector {selector:?})"),
    }
}

/// apimachinery/pkg/util/validation/validation.go `IsQualifiedName`: `[prefix/]name`, the
/// name 1-63 characters of `[A-Za-z0-9_.-]` starting and ending alphanumeric, the prefix a
/// DNS subdomain.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

/// validation.go `IsValidLabelValue`: empty, or up to 63 of `[A-Za-z0-9_.-]` starting and
/// ending alphanumeric.
pub fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// validation.go `IsDNS1123Subdomain`: up to 253 of `[a-z0-9.-]`, each dot-separated label
/// starting and ending alphanumeric.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl Selector {
    /// selector.go `Parse`.
    pub fn parse(selector: &str) -> Result<Selector, Refusal> {
        let tokens = lex(selector);
        let mut at = 0;
        let mut reqs = Vec::new();
        if tokens.is_empty() {
            return Ok(Selector(reqs));
        }
        loop {
            let (req, next) = requirement(selector, &tokens, at)?;
            reqs.push(req);
            at = next;
            match tokens.get(at) {
                None => break,
                Some(Token::Comma) if at + 1 < tokens.len() => at += 1,
                Some(t) => {
                    return Err(bad(
                        selector,
                        format!("found '{t:?}', expected: ',' or 'end of string'"),
                    ));
                }
            }
        }
        Ok(Selector(reqs))
    }

    /// `Requirement.Matches` of every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let value = labels.get(&r.key);
            let among = || value.is_some_and(|v| r.values.contains(v));
            let number = || value.and_then(|v| v.parse::<i64>().ok());
            let bound = || r.values[0].parse::<i64>().unwrap_or_default();
            match r.op {
                Op::Equals | Op::In => among(),
                Op::NotEquals | Op::NotIn => !among(),
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::GreaterThan => number().is_some_and(|n| n > bound()),
                Op::LessThan => number().is_some_and(|n| n < bound()),
            }
        })
    }

    /// [`Self::matches`] on an object's `metadata.labels` (JSON; absent: none).
    pub fn matches_json(&self, labels: &serde_json::Value) -> bool {
        let labels: BTreeMap<String, String> = labels
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

/// selector.go `parseRequirement` and `NewRequirement`: one term from `tokens[at..]`.
fn requirement(
    selector: &str,
    tokens: &[Token],
    mut at: usize,
) -> Result<(Requirement, usize), Refusal> {
    let negated = tokens.get(at) == Some(&Token::Not);
    if negated {
        at += 1;
    }
    let key = match tokens.get(at) {
        Some(Token::Ident(k)) => k.clone(),
        t => {
            return Err(bad(
                selector,
                format!("found '{t:?}', expected: identifier"),
            ));
        }
    };
    at += 1;
    if !is_qualified_name(&key) {
        return Err(bad(selector, format!("key: Invalid value: {key:?}")));
    }
    let end_of_term = matches!(tokens.get(at), None | Some(Token::Comma));
    if negated || end_of_term {
        if negated && !end_of_term {
            return Err(bad(selector, "'!' takes a key alone".into()));
        }
        let op = if negated {
            Op::DoesNotExist
        } else {
            Op::Exists
        };
        return Ok((
            Requirement {
                key,
                op,
                values: vec![],
            },
            at,
        ));
    }
    let op = match &tokens[at] {
        Token::Eq | Token::DoubleEq => Op::Equals,
        Token::NotEq => Op::NotEquals,
        Token::In => Op::In,
        Token::NotIn => Op::NotIn,
        Token::Gt => Op::GreaterThan,
        Token::Lt => Op::LessThan,
        t => {
            return Err(bad(
                selector,
                format!("found '{t:?}', expected an operator"),
            ));
        }
    };
    at += 1;
    let mut values = Vec::new();
    if matches!(op, Op::In | Op::NotIn) {
        if tokens.get(at) != Some(&Token::LeftPar) {
            return Err(bad(selector, "expected '(' after in/notin".into()));
        }
        at += 1;
        loop {
            match tokens.get(at) {
                Some(Token::Ident(v)) => {
                    values.push(v.clone());
                    at += 1;
                }
                Some(Token::Comma) => values.push(String::new()),
                _ => {}
            }
            match tokens.get(at) {
                Some(Token::Comma) => at += 1,
                Some(Token::RightPar) => {
                    at += 1;
                    break;
                }
                t => {
                    return Err(bad(
                        selector,
                        format!("found '{t:?}', expected: ',' or ')'"),
                    ));
                }
            }
        }
        if values.is_empty() {
            return Err(bad(
                selector,
                "for 'in', 'notin' operators, values set can't be empty".into(),
            ));
        }
    } else {
        // `key=` selects the empty value.
        match tokens.get(at) {
            Some(Token::Ident(v)) => {
                values.push(v.clone());
                at += 1;
            }
            None | Some(Token::Comma) => values.push(String::new()),
            t => {
                return Err(bad(
                    selector,
                    format!("found '{t:?}', expected: identifier"),
                ));
            }
        }
        if matches!(op, Op::GreaterThan | Op::LessThan) && values[0].parse::<i64>().is_err() {
            return Err(bad(
                selector,
                "for 'Gt', 'Lt' operators, the value must be an integer".into(),
            ));
        }
    }
    if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
        return Err(bad(selector, format!("values: Invalid value: {v:?}")));
    }
    Ok((Requirement { key, op, values }, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn terms_are_matched_by_key_and_operator() {
        let l = labels(&[
            ("prepuller.dev/fleet", "slot"),
            ("prepuller.dev/registry", "abc"),
        ]);
        let yes = [
            "",
            "prepuller.dev/fleet=slot,prepuller.dev/registry=abc",
            "prepuller.dev/fleet==slot",
            "prepuller.dev/registry in (x, abc)",
            "prepuller.dev/registry notin (x,y)",
            "prepuller.dev/fleet",
            "!other",
            "other!=abc",
            "other notin (abc)",
        ];
        for s in yes {
            assert!(Selector::parse(s).unwrap().matches(&l), "{s}");
        }
        let no = [
            // The value alone is not enough: the key must carry it.
            "other=abc",
            "prepuller.dev/fleet=abc",
            "prepuller.dev/fleet=slot,prepuller.dev/registry=abd",
            "prepuller.dev/registry!=abc",
            "prepuller.dev/registry notin (abc)",
            "prepuller.dev/registry in (x)",
            "other",
            "!prepuller.dev/fleet",
            "other in (abc)",
        ];
        for s in no {
            assert!(!Selector::parse(s).unwrap().matches(&l), "{s}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused_with_400() {
        for s in [
            "a in ()", "a in x", "=x", "a=b=c", "a,", "a b", "!a=b", "-a=b", "a>b",
        ] {
            let e = Selector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}: {e}");
        }
    }
}
