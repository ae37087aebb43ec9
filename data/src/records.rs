//! Reading record files: JSONL (one object per line) or a JSON array, every error naming the
//! file, the line and the field.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: PathBuf, line: usize, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{0}")]
    Tokenizer(String),
}

/// Where a record is: its file and line (JSONL) or its index in the file's array (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub at: At,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    Line(usize),
    Index(usize),
}

impl std::fmt::Display for Origin {
    /// `file:line`, or `file:#index` for a record of an array
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            At::Line(l) => write!(f, "{}:{l}", self.path.display()),
            At::Index(i) => write!(f, "{}:#{i}", self.path.display()),
        }
    }
}

impl Origin {
    /// An error about this record: `file:line: msg` or `file: record N: msg`.
    pub fn error(&self, msg: impl Into<String>) -> DataError {
        let msg = one_line(msg.into());
        match self.at {
            At::Line(line) => DataError::Line { path: self.path.clone(), line, msg },
            At::Index(i) => DataError::File { path: self.path.clone(), msg: format!("record {i}: {msg}") },
        }
    }
}

/// One `loglik` request: lm-evaluation-harness's `loglikelihood(context, continuation)`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoglikRequest {
    pub context: String,
    pub continuation: String,
}

/// Reads records from a JSONL file (blank lines skipped) or, when the file starts with `[`, a
/// JSON array. An empty file is an error: a run on nothing is almost always a wrong path.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    records_from_str(&text, path)
}

/// As [`read_records`], from the file's text (`path` names it in errors).
pub fn records_from_str<T: DeserializeOwned>(text: &str, path: &Path) -> Result<Vec<T>, DataError> {
    let trimmed = text.trim_start();
    let records = if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(trimmed).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line: e.line() + (text.len() - trimmed.len() > 0) as usize * text[..text.len() - trimmed.len()].matches('\n').count(),
            msg: format!("invalid JSON array: {e}"),
        })?;
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| serde_json::from_value(v).map_err(|e| DataError::File { path: path.to_path_buf(), msg: one_line(format!("record {}: {e}", i + 1)) }))
            .collect::<Result<Vec<T>, _>>()?
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let rec = serde_json::from_str(line).map_err(|e| DataError::Line { path: path.to_path_buf(), line: i + 1, msg: describe(&e) })?;
            out.push(rec);
        }
        out
    };
    if records.is_empty() {
        return Err(DataError::File { path: path.to_path_buf(), msg: "no records (the file is empty)".into() });
    }
    Ok(records)
}

fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    one_line(match e.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {e}"),
        Category::Data => format!("unexpected record: {e}"),
        Category::Io => e.to_string(),
    })
}

/// `msg` on one line: serde and the tokenizers crate quote some input verbatim (an unknown
/// field's name, a token), line breaks included.
pub(crate) fn one_line(msg: String) -> String {
    if msg.contains(['\n', '\r']) {
        msg.replace('\n', "\\n").replace('\r', "\\r")
    } else {
        msg
    }
}
