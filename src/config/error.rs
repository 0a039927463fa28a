//! [`ConfigError`]: what is wrong with a config, at `file:line:column`, for people and editors.

use std::path::{Path, PathBuf};

use serde_saphyr::SnippetMode;

/// A config that could not be read or is invalid. Boxed: it travels through every `?`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.headline())]
pub struct ConfigError(Box<ConfigErrorDetails>);

#[derive(Debug, Clone)]
pub struct ConfigErrorDetails {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Path of the offending field, e.g. `images[2].tag`.
    pub field: Option<String>,
    pub message: String,
    /// The offending lines with a marker, for people.
    pub snippet: Option<String>,
}

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetails;
    fn deref(&self) -> &ConfigErrorDetails {
        &self.0
    }
}

impl From<ConfigErrorDetails> for ConfigError {
    fn from(d: ConfigErrorDetails) -> Self {
        ConfigError(Box::new(d))
    }
}

impl ConfigError {
    /// An error about a whole file (or directory), without a position.
    pub(crate) fn whole_file(file: &Path, message: String) -> Self {
        ConfigError::setting(file, None, message)
    }

    /// An error about a setting (`field`) as a whole, e.g. after merging several files.
    pub(crate) fn setting(file: &Path, field: Option<&str>, message: String) -> Self {
        ConfigErrorDetails {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: field.map(str::to_string),
            message,
            snippet: None,
        }
        .into()
    }

    /// An error about one entry, at its line, found after the file was read.
    pub(super) fn at_line(file: &Path, line: usize, field: &str, message: String) -> Self {
        ConfigErrorDetails {
            file: file.to_path_buf(),
            line: Some(line),
            column: None,
            field: Some(field.to_string()),
            message,
            snippet: None,
        }
        .into()
    }

    /// An error of the YAML reader (syntax, or a value our types refused), at its position.
    pub(crate) fn yaml(e: serde_saphyr::Error, field: Option<String>, source: &Path) -> Self {
        let location = e.location();
        let name = source.display().to_string();
        let plain = e
            .without_snippet()
            .render_with_options(serde_saphyr::render_options! { snippets: SnippetMode::Off });
        let snippet =
            e.render_with_options(serde_saphyr::render_options! { source_name: Some(&name) });
        ConfigErrorDetails {
            file: source.to_path_buf(),
            line: location.map(|l| l.line() as usize),
            column: location.map(|l| l.column() as usize),
            field,
            message: strip_location(&plain),
            snippet: (snippet != plain).then(|| code_frame(&snippet)).flatten(),
        }
        .into()
    }

    /// A file whose top level is not a mapping (empty, a list, a single value): what the
    /// YAML reader says about it ("expected mapping start", "unexpected end of input") does
    /// not tell what the file should hold.
    pub(super) fn not_a_mapping(file: &Path, line: Option<usize>, found: TopLevel) -> Self {
        let message = match found {
            TopLevel::Empty => {
                "the file is empty; it needs an `images:` list, e.g. `images: [nginx:1.25]`"
            }
            TopLevel::List => {
                "the top level is a list; the file needs an `images:` list: write `images:` \
                 on a line above the entries and indent them under it"
            }
            TopLevel::Value => {
                "the top level is a single value; the file needs an `images:` list, \
                 e.g. `images: [nginx:1.25]`"
            }
        };
        ConfigErrorDetails {
            file: file.to_path_buf(),
            line,
            column: line.map(|_| 1),
            field: None,
            message: message.to_string(),
            snippet: None,
        }
        .into()
    }

    /// Appends what to check to the message.
    pub(super) fn with_hint(mut self, hint: &str) -> Self {
        self.0.message = format!("{} ({hint})", self.0.message);
        self
    }

    /// One line: `file:line:column: field `x`: message`.
    pub fn headline(&self) -> String {
        let mut s = self.file.display().to_string();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
            if let Some(col) = self.column {
                s.push_str(&format!(":{col}"));
            }
        }
        s.push_str(": ");
        if let Some(field) = &self.field {
            s.push_str(&format!("field `{field}`: "));
        }
        s.push_str(&self.message);
        s
    }

    /// The headline followed by the snippet, for a terminal.
    pub fn render(&self) -> String {
        match &self.snippet {
            Some(snippet) => format!("{}\n{snippet}", self.headline()),
            None => self.headline(),
        }
    }
}

/// What the top level of a file that is not a mapping holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TopLevel {
    /// Nothing but blank lines and comments.
    Empty,
    List,
    Value,
}

/// The snippet without serde-saphyr's own first line (`error: line L column C: message`) and
/// the message after the `^` marker: the headline says it, and it would be printed thrice.
fn code_frame(snippet: &str) -> Option<String> {
    let start = snippet.find(" --> ")?;
    let lines: Vec<&str> = snippet[start..]
        .trim_end()
        .lines()
        .map(|line| match line.find('^') {
            Some(caret) if line[..caret].trim_end().ends_with('|') => {
                let end = caret
                    + line[caret..]
                        .find(|c| c != '^')
                        .unwrap_or(line.len() - caret);
                &line[..end]
            }
            _ => line,
        })
        .collect();
    Some(lines.join("\n"))
}

/// serde-saphyr puts "line L column C: " (or " at line L column C") into its plain messages;
/// we print the location ourselves, in the `file:line:col` form editors understand.
fn strip_location(message: &str) -> String {
    let mut m = message.trim().trim_start_matches("error: ").to_string();
    if let Some(rest) = m.strip_prefix("line ")
        && let Some(idx) = rest.find(": ")
    {
        m = rest[idx + 2..].to_string();
    }
    if let Some(idx) = m.rfind(" at line ") {
        m.truncate(idx);
    }
    m
}
