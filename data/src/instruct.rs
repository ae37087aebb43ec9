//! Okapi's instruction files (SFT data and RL prompts): a JSON array or JSONL of
//! `{"instruction", "input", "output"}` with optional `lang` / `id`. Okapi's real files hold some
//! non-string values (numbers, lists): they are converted and counted; records that cannot be
//! used are skipped and counted.

use crate::records::{At, DataError, Origin};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// English plus Okapi's 26 languages.
pub const OKAPI_LANGS: &[&str] = &[
    "en", "ru", "de", "zh", "fr", "es", "it", "nl", "vi", "id", "ar", "hu", "ro", "da", "sk", "uk", "ca", "sr", "hr", "hi", "bn", "ta", "ne", "ml", "mr", "te", "kn",
];

#[derive(Clone, Debug, PartialEq)]
pub struct InstructRecord {
    pub instruction: String,
    pub input: String,
    /// empty for RL prompts
    pub output: String,
    pub lang: Option<String>,
    pub id: Option<String>,
    /// `file:line` (or `file:#index` for arrays), for messages
    pub origin: String,
}

/// What loading skipped or converted, printed as one summary line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadStats {
    pub read: usize,
    pub kept: usize,
    pub converted_fields: usize,
    pub skipped_missing: usize,
    pub skipped_lang: usize,
}

impl LoadStats {
    pub fn summary(&self) -> String {
        format!(
            "{} records read, {} kept; {} non-string fields converted; skipped: {} missing/empty instruction or output, {} other languages",
            self.read, self.kept, self.converted_fields, self.skipped_missing, self.skipped_lang
        )
    }
}

/// Parses `--langs vi,ar,…`, rejecting codes that are not Okapi languages.
pub fn parse_langs(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for code in spec.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !OKAPI_LANGS.contains(&code) {
            return Err(format!("--langs: unknown language code `{code}` (expected some of: {})", OKAPI_LANGS.join(",")));
        }
        out.push(code.to_string());
    }
    if out.is_empty() {
        return Err("--langs: no language given".into());
    }
    Ok(out)
}

/// The language of a file from Okapi's naming: `{lang}.json`, `{lang}_…`, `…_{lang}.json`.
pub fn lang_from_path(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let stem = stem.strip_suffix(".json").unwrap_or(stem);
    if OKAPI_LANGS.contains(&stem) {
        return Some(stem.to_string());
    }
    stem.split(['_', '-', '.']).find(|p| OKAPI_LANGS.contains(p)).map(str::to_string)
}

fn field_string(v: Option<&Value>, converted: &mut usize) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => {
            *converted += 1;
            Some(n.to_string())
        }
        Some(Value::Bool(b)) => {
            *converted += 1;
            Some(b.to_string())
        }
        Some(Value::Array(a)) => {
            *converted += 1;
            // lists of strings (seen in some translated files) are joined by newlines
            Some(a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>().join("\n"))
        }
        Some(other) => {
            *converted += 1;
            Some(other.to_string())
        }
    }
}

/// Values of a JSON array or JSONL file with their origins.
pub(crate) fn read_values(path: &Path) -> Result<Vec<(Origin, Value)>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    values_from_str(&text, path)
}

/// As `read_values`, from the file's text.
pub(crate) fn values_from_str(text: &str, path: &Path) -> Result<Vec<(Origin, Value)>, DataError> {
    let origin = |at| Origin { path: path.to_path_buf(), at };
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(trimmed).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line: e.line() + text[..text.len() - trimmed.len()].matches('\n').count(),
            msg: format!("invalid JSON array: {e}"),
        })?;
        Ok(values.into_iter().enumerate().map(|(i, v)| (origin(At::Index(i + 1)), v)).collect())
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| DataError::Line { path: path.to_path_buf(), line: i + 1, msg: format!("malformed JSON: {e}") })?;
            out.push((origin(At::Line(i + 1)), v));
        }
        Ok(out)
    }
}

/// Loads instruction records from several files in order. `need_output` false for RL prompts.
/// `langs`: keep only these languages (a record's `lang` field, else its file's name).
pub fn load_instructions(paths: &[PathBuf], langs: Option<&[String]>, need_output: bool) -> Result<(Vec<InstructRecord>, LoadStats), DataError> {
    let mut stats = LoadStats::default();
    let mut out = Vec::new();
    for path in paths {
        let values = read_values(path)?;
        if values.is_empty() {
            return Err(DataError::File { path: path.clone(), msg: "no records (the file is empty)".into() });
        }
        add_instructions(values, path, langs, need_output, &mut out, &mut stats)?;
    }
    stats.kept = out.len();
    Ok((out, stats))
}

/// As [`load_instructions`] for one file's text (`path` names it, and gives its language).
pub fn parse_instructions(text: &str, path: &Path, langs: Option<&[String]>, need_output: bool) -> Result<(Vec<InstructRecord>, LoadStats), DataError> {
    let mut stats = LoadStats::default();
    let mut out = Vec::new();
    add_instructions(values_from_str(text, path)?, path, langs, need_output, &mut out, &mut stats)?;
    stats.kept = out.len();
    Ok((out, stats))
}

/// The records of one file's values appended to `out`, counted in `stats`.
fn add_instructions(values: Vec<(Origin, Value)>, path: &Path, langs: Option<&[String]>, need_output: bool, out: &mut Vec<InstructRecord>, stats: &mut LoadStats) -> Result<(), DataError> {
    let file_lang = lang_from_path(path);
    for (origin, v) in values {
        stats.read += 1;
        out.extend(instruct_record(origin, &v, file_lang.as_deref(), langs, need_output, stats)?);
    }
    Ok(())
}

/// One value of an instruction file as a record; `None` (counted in `stats`) when it is skipped.
pub(crate) fn instruct_record(origin: Origin, v: &Value, file_lang: Option<&str>, langs: Option<&[String]>, need_output: bool, stats: &mut LoadStats) -> Result<Option<InstructRecord>, DataError> {
    let Some(obj) = v.as_object() else {
        return Err(DataError::File { path: origin.path.clone(), msg: format!("{origin}: expected a JSON object with \"instruction\", \"input\", \"output\", got {}", short(v)) });
    };
    let mut conv = 0;
    let instruction = field_string(obj.get("instruction"), &mut conv).unwrap_or_default();
    let input = field_string(obj.get("input"), &mut conv).unwrap_or_default();
    let output = field_string(obj.get("output"), &mut conv).unwrap_or_default();
    let lang = field_string(obj.get("lang"), &mut conv).or_else(|| file_lang.map(str::to_string));
    let id = field_string(obj.get("id"), &mut conv);
    stats.converted_fields += conv;
    if instruction.trim().is_empty() || (need_output && output.trim().is_empty()) {
        stats.skipped_missing += 1;
        return Ok(None);
    }
    if !lang_kept(lang.as_deref(), langs) {
        stats.skipped_lang += 1;
        return Ok(None);
    }
    Ok(Some(InstructRecord { instruction, input, output, lang, id, origin: origin.to_string() }))
}

/// Whether a record of language `lang` is kept under `--langs`.
pub(crate) fn lang_kept(lang: Option<&str>, langs: Option<&[String]>) -> bool {
    langs.is_none_or(|keep| lang.is_some_and(|l| keep.iter().any(|k| k == l)))
}

pub(crate) fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.char_indices().take_while(|(i, _)| *i < 60).last().map(|(i, c)| i + c.len_utf8()).unwrap_or(0)])
    } else {
        s
    }
}
