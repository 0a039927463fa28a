//! One input's text as documents: a YAML stream (`---`-separated, as `helm template` and
//! `kubectl get -o yaml` print) or JSON values (`kubectl get -o json`, one or more).

use serde_json::Value;
use serde_saphyr::{SnippetMode, Spanned};

use super::{Input, ManifestError};

pub(super) struct Document {
    /// 1-based, counting documents that are not empty.
    pub index: usize,
    /// The line its content starts on.
    pub line: Option<usize>,
    pub value: Value,
}

pub(super) fn split(input: &Input) -> Result<Vec<Document>, ManifestError> {
    let trimmed = input.text.trim_start();
    // JSON (as kubectl prints it) opens with `{"` or `[{`; a YAML flow mapping (`{kind: Pod}`)
    // has bare keys and is left to the YAML reader.
    let mut chars = trimmed.chars().filter(|c| !c.is_whitespace());
    let looks_json = matches!(
        (chars.next(), chars.next()),
        (Some('{'), Some('"' | '}')) | (Some('['), Some('{' | '[' | ']' | '"'))
    );
    if looks_json { json(input) } else { yaml(input) }
}

fn json(input: &Input) -> Result<Vec<Document>, ManifestError> {
    let mut stream = serde_json::Deserializer::from_str(&input.text).into_iter::<Value>();
    let mut docs = Vec::new();
    let mut start = 0;
    while let Some(next) = stream.next() {
        let value = next.map_err(|e| {
            let message = format!("invalid JSON: {e}");
            ManifestError::at(&input.name, Some(docs.len() + 1), Some(e.line()), message)
        })?;
        // The value starts after the whitespace that precedes it.
        let skipped = input.text[start..].len() - input.text[start..].trim_start().len();
        let line = input.text[..start + skipped].matches('\n').count() + 1;
        start = stream.byte_offset();
        docs.push(Document {
            index: docs.len() + 1,
            line: Some(line),
            value,
        });
    }
    Ok(docs)
}

fn yaml(input: &Input) -> Result<Vec<Document>, ManifestError> {
    // The default budget is for config files: `helm template` of an umbrella chart has more than
    // its 1,024 documents and `kubectl get -A -o yaml` more than its 250,000 nodes. The input is
    // the operator's own, and memory bounds it anyway.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_events: 100_000_000,
            max_nodes: 20_000_000,
        },
    };
    let docs: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(&input.text, options)
        .map_err(|e| {
            let plain = e
                .without_snippet()
                .render_with_options(serde_saphyr::render_options! { snippets: SnippetMode::Off });
            let line = e.location().map(|l| l.line() as usize);
            let message = format!(
                "invalid YAML: {}",
                plain.trim().trim_start_matches("error: ")
            );
            ManifestError::at(&input.name, None, line, message)
        })?;
    Ok(docs
        .into_iter()
        .filter(|d| !d.value.is_null())
        .enumerate()
        .map(|(i, d)| Document {
            index: i + 1,
            line: Some(d.referenced.line() as usize).filter(|l| *l > 0),
            value: d.value,
        })
        .collect())
}
