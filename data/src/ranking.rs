//! Okapi's ranking data for the reward model and DPO: pairs
//! `{"instruction","input","prefered_output","rejected_output"}` (Okapi's spelling; also
//! `preferred_output`, and `chosen`/`rejected`) and ranked lists
//! `{"instruction","input","responses":[best … worst]}`, which give all K(K−1)/2 pairs of a
//! prompt. A prompt's responses stay together so each is encoded once (InstructGPT).

use crate::instruct::{lang_from_path, lang_kept, read_values, values_from_str};
use crate::records::{DataError, Origin};
use crate::sft::{encode_example, Example, SftEncoding};
use crate::template::PromptTemplate;
use crate::tokenizer::Tokenizer;
use crate::InstructRecord;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A prompt with its responses, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct RankRecord {
    pub instruction: String,
    pub input: String,
    pub responses: Vec<String>,
    pub lang: Option<String>,
    pub origin: String,
}

/// What was skipped, printed as one line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RankStats {
    pub read: usize,
    pub kept: usize,
    pub skipped_fewer_than_two: usize,
    pub skipped_empty: usize,
    pub skipped_identical: usize,
    pub skipped_lang: usize,
    pub skipped_too_long: usize,
}

impl RankStats {
    pub fn summary(&self) -> String {
        format!(
            "{} ranking records read, {} kept; skipped: {} with fewer than 2 responses, {} with an empty response or instruction, {} with identical responses, {} other languages, {} prompts that do not fit --max-len",
            self.read, self.kept, self.skipped_fewer_than_two, self.skipped_empty, self.skipped_identical, self.skipped_lang, self.skipped_too_long
        )
    }
}

pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

/// Loads ranking files; unusable records are skipped and counted, a record of no known shape
/// is an error naming its file and line.
pub fn load_rankings(paths: &[PathBuf], langs: Option<&[String]>) -> Result<(Vec<RankRecord>, RankStats), DataError> {
    let mut stats = RankStats::default();
    let mut out = Vec::new();
    for path in paths {
        let values = read_values(path)?;
        if values.is_empty() {
            return Err(DataError::File { path: path.clone(), msg: "no records (the file is empty)".into() });
        }
        add_rankings(values, path, langs, &mut out, &mut stats)?;
    }
    stats.kept = out.len();
    Ok((out, stats))
}

/// As [`load_rankings`] for one file's text (`path` names it, and gives its language).
pub fn parse_rankings(file_text: &str, path: &Path, langs: Option<&[String]>) -> Result<(Vec<RankRecord>, RankStats), DataError> {
    let mut stats = RankStats::default();
    let mut out = Vec::new();
    add_rankings(values_from_str(file_text, path)?, path, langs, &mut out, &mut stats)?;
    stats.kept = out.len();
    Ok((out, stats))
}

/// The records of one file's values appended to `out`, counted in `stats`.
fn add_rankings(values: Vec<(Origin, Value)>, path: &Path, langs: Option<&[String]>, out: &mut Vec<RankRecord>, stats: &mut RankStats) -> Result<(), DataError> {
    let file_lang = lang_from_path(path);
    for (origin, v) in values {
        stats.read += 1;
        let obj = v.as_object().ok_or_else(|| DataError::File { path: path.to_path_buf(), msg: format!("{origin}: expected a JSON object") })?;
        out.extend(rank_record(origin, obj, file_lang.as_deref(), langs, stats)?);
    }
    Ok(())
}

/// One record of Okapi's ranking format; `None` (counted in `stats`) when it is skipped.
pub(crate) fn rank_record(origin: Origin, obj: &serde_json::Map<String, Value>, file_lang: Option<&str>, langs: Option<&[String]>, stats: &mut RankStats) -> Result<Option<RankRecord>, DataError> {
    let path = origin.path.as_path();
    let responses: Vec<String> = if let Some(list) = obj.get("responses") {
        let arr = list.as_array().ok_or_else(|| DataError::File { path: path.to_path_buf(), msg: format!("{origin}: field `responses`: expected a list of strings, best first") })?;
        arr.iter().map(|x| text(Some(x)).unwrap_or_default()).collect()
    } else {
        let chosen = text(obj.get("prefered_output")).or_else(|| text(obj.get("preferred_output"))).or_else(|| text(obj.get("chosen")));
        let rejected = text(obj.get("rejected_output")).or_else(|| text(obj.get("rejected")));
        match (chosen, rejected) {
            (Some(c), Some(r)) => vec![c, r],
            _ => {
                return Err(DataError::File {
                    path: path.to_path_buf(),
                    msg: format!("{origin}: expected `prefered_output`/`rejected_output` (or `preferred_output`, `chosen`/`rejected`) or a `responses` list"),
                })
            }
        }
    };
    let instruction = text(obj.get("instruction")).unwrap_or_default();
    let input = text(obj.get("input")).unwrap_or_default();
    let lang = text(obj.get("lang")).or_else(|| file_lang.map(str::to_string));
    if responses.len() < 2 {
        stats.skipped_fewer_than_two += 1;
        return Ok(None);
    }
    if instruction.trim().is_empty() || responses.iter().any(|r| r.trim().is_empty()) {
        stats.skipped_empty += 1;
        return Ok(None);
    }
    if (1..responses.len()).any(|i| responses[..i].contains(&responses[i])) {
        stats.skipped_identical += 1;
        return Ok(None);
    }
    if !lang_kept(lang.as_deref(), langs) {
        stats.skipped_lang += 1;
        return Ok(None);
    }
    Ok(Some(RankRecord { instruction, input, responses, lang, origin: origin.to_string() }))
}

/// A tokenized prompt group: every response as an SFT example, and the pairs (better, worse).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptGroup {
    pub responses: Vec<Example>,
    pub pairs: Vec<(usize, usize)>,
}

/// Tokenizes each response like an SFT example; `None` when the prompt does not fit max_len.
pub fn encode_group(tok: &Tokenizer, tpl: &PromptTemplate, rec: &RankRecord, enc: &SftEncoding) -> Result<Option<PromptGroup>, DataError> {
    let mut responses = Vec::with_capacity(rec.responses.len());
    for r in &rec.responses {
        let ir = InstructRecord { instruction: rec.instruction.clone(), input: rec.input.clone(), output: r.clone(), lang: None, id: None, origin: rec.origin.clone() };
        match encode_example(tok, tpl, &ir, enc)? {
            Some(e) => responses.push(e),
            None => return Ok(None),
        }
    }
    let k = responses.len();
    let pairs = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).collect();
    Ok(Some(PromptGroup { responses, pairs }))
}

/// Records for `okapi-train score`: ranking records (all their responses, no pair rules) or
/// instruction records (their `output`), in file order; a record of neither shape is an error.
pub fn load_scoring_records(path: &Path) -> Result<Vec<RankRecord>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    parse_scoring_records(&text, path)
}

/// As [`load_scoring_records`], from the file's text (`path` names it in errors).
pub fn parse_scoring_records(file_text: &str, path: &Path) -> Result<Vec<RankRecord>, DataError> {
    let mut out = Vec::new();
    for (origin, v) in values_from_str(file_text, path)? {
        let obj = v.as_object().ok_or_else(|| DataError::File { path: path.to_path_buf(), msg: format!("{origin}: expected a JSON object") })?;
        let responses: Vec<String> = if let Some(list) = obj.get("responses").and_then(|l| l.as_array()) {
            list.iter().map(|x| text(Some(x)).unwrap_or_default()).collect()
        } else if let Some(c) = text(obj.get("prefered_output")).or_else(|| text(obj.get("preferred_output"))).or_else(|| text(obj.get("chosen"))) {
            let r = text(obj.get("rejected_output")).or_else(|| text(obj.get("rejected")));
            std::iter::once(c).chain(r).collect()
        } else if let Some(o) = text(obj.get("output")) {
            vec![o]
        } else {
            return Err(DataError::File { path: path.to_path_buf(), msg: format!("{origin}: expected `output`, `responses` or a chosen/rejected pair") });
        };
        out.push(RankRecord { instruction: text(obj.get("instruction")).unwrap_or_default(), input: text(obj.get("input")).unwrap_or_default(), responses, lang: None, origin: origin.to_string() });
    }
    if out.is_empty() {
        return Err(DataError::File { path: path.to_path_buf(), msg: "no records (the file is empty)".into() });
    }
    Ok(out)
}
