//! Okapi's eval files, record by record: m_arc, m_hellaswag, m_mmlu and TruthfulQA mc, in a
//! JSON array or JSONL. A record that cannot be an item of the task (one or zero choices, an
//! answer letter outside its options, a label out of range, another task's format, malformed
//! JSON on a JSONL line) is skipped with a message naming the file, the record and the field;
//! the rest of the file is read.
//!
//! Field names (exactly those of the files Okapi's lm-evaluation-harness fork loads; see
//! laiviet/lm-evaluation-harness `datasets/m_ai2_arc/m_ai2_arc.py`, `datasets/m_hellaswag/
//! m_hellaswag.py`, `lm_eval/tasks/multilingual_truthfulqa.py`, and the harness v0.4 port
//! `lm_eval/tasks/okapi/*`):
//! - m_arc: `{"id", "instruction", "option_a"…"option_e", "answer": "A"…"E"}`; empty or missing
//!   options are dropped (the v0.4 port's `if option`), the answer letter indexes the options
//!   kept. Also ai2_arc's HF layout `{"id", "question", "choices": {"text", "label"},
//!   "answerKey"}` (answer keys "1"…"5" mean "A"…"E", as harness `arc.py` maps them).
//! - m_hellaswag: `{"ind"?, "activity_label", "ctx_a", "ctx_b", "endings": [...], "label"}`,
//!   `label` an integer or a string holding one (the harness's `int(doc["label"])`).
//! - m_mmlu: `question` or `instruction`; `choices: [...]` or `option_a`…`option_d`; `answer`
//!   an index or a letter.
//! - TruthfulQA mc: `{"question", "mc1_targets": {"choices", "labels"}, "mc2_targets": {…}}` or
//!   the flattened `mc1_targets_choices` / `mc1_targets_labels` (same for mc2).
//!
//! Ids: `id` (or HellaSwag's `ind`) when present, else the record's 0-based index in the file.

use serde_json::Value;
use std::fmt;

/// The benchmarks of Okapi's evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Task {
    Arc,
    Hellaswag,
    Mmlu,
    TruthfulQa,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Arc, Task::Hellaswag, Task::Mmlu, Task::TruthfulQa];

    pub fn name(self) -> &'static str {
        match self {
            Task::Arc => "arc",
            Task::Hellaswag => "hellaswag",
            Task::Mmlu => "mmlu",
            Task::TruthfulQa => "truthfulqa",
        }
    }

    pub fn parse(s: &str) -> Result<Task, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "arc" | "m_arc" => Ok(Task::Arc),
            "hellaswag" | "m_hellaswag" => Ok(Task::Hellaswag),
            "mmlu" | "m_mmlu" => Ok(Task::Mmlu),
            "truthfulqa" | "truthfulqa_mc" | "m_truthfulqa" => Ok(Task::TruthfulQa),
            other => Err(format!("unknown task `{other}` (expected arc, hellaswag, mmlu or truthfulqa)")),
        }
    }

    /// Okapi's shot counts: ARC 25, HellaSwag 0, MMLU 25, TruthfulQA 0 (zero-shot only).
    pub fn default_fewshot(self) -> usize {
        match self {
            Task::Arc | Task::Mmlu => 25,
            Task::Hellaswag | Task::TruthfulQa => 0,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A document as the file holds it (before the harness's `_process_doc`).
#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    Arc { question: String, options: Vec<String>, gold: usize },
    Hellaswag { activity_label: String, ctx_a: String, ctx_b: String, endings: Vec<String>, gold: usize },
    Mmlu { question: String, options: Vec<String>, gold: usize },
    TruthfulQa { question: String, mc1: Vec<String>, mc1_gold: usize, mc2: Vec<String>, mc2_true: Vec<bool> },
}

/// One valid record: its id, its 0-based index in the file, the document.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub id: String,
    pub index: usize,
    pub doc: Doc,
}

/// What a file yielded: the valid records and one message per skipped one.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub records: Vec<Record>,
    pub skipped: Vec<String>,
}

/// Language codes of Okapi (en + 26) and of the fork's eval sets (eu gu hy pt sv in addition).
pub const EVAL_LANGS: &[&str] = &[
    "en", "ru", "de", "zh", "fr", "es", "it", "nl", "vi", "id", "ar", "hu", "ro", "da", "sk", "uk", "ca", "sr", "hr", "hi", "bn", "ta", "ne", "ml", "mr", "te", "kn", "eu", "gu", "hy", "pt", "sv",
];

/// The language of a file from its name: the first `_`/`-`/`.`-separated part of the file
/// name that is a language code (`vi_validation.json`, `arc_vi.json`, `ar_challenge_test.json`).
pub fn lang_from_name(name: &str) -> Option<String> {
    let file = name.rsplit(['/', '\\']).next().unwrap_or(name);
    file.split(['_', '-', '.']).find(|p| EVAL_LANGS.contains(p)).map(str::to_string)
}

/// Parses a whole file's text as records of `task`. Only an unreadable JSON array (or a file
/// with no records at all) is an error; bad records are skipped with a message.
pub fn parse_records(task: Task, text: &str, source: &str) -> Result<ParsedFile, String> {
    let trimmed = text.trim_start();
    let mut out = ParsedFile::default();
    let values: Vec<(String, Result<Value, String>)> = if trimmed.starts_with('[') {
        let arr: Vec<Value> = serde_json::from_str(trimmed).map_err(|e| format!("{source}: invalid JSON array: {e}"))?;
        arr.into_iter().enumerate().map(|(i, v)| (format!("record {}", i + 1), Ok(v))).collect()
    } else {
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, l)| (format!("line {}", i + 1), serde_json::from_str(l).map_err(|e| format!("malformed JSON: {e}")))).collect()
    };
    if values.is_empty() {
        return Err(format!("{source}: no records (the file is empty)"));
    }
    for (index, (loc, v)) in values.into_iter().enumerate() {
        let v = match v {
            Ok(v) => v,
            Err(e) => {
                out.skipped.push(format!("{source}: {loc}: {e} — skipped"));
                continue;
            }
        };
        let id = record_id(&v).unwrap_or_else(|| index.to_string());
        match parse_doc(task, &v) {
            Ok(doc) => out.records.push(Record { id, index, doc }),
            // the id escaped: the message stays on one line
            Err(e) => out.skipped.push(format!("{source}: {loc} (id {}): {e} — skipped", id.escape_debug())),
        }
    }
    Ok(out)
}

fn record_id(v: &Value) -> Option<String> {
    let id = v.get("id").or_else(|| v.get("ind"))?;
    match id {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The task a record's keys look like (`None` when they fit none); m_arc and m_mmlu share
/// their keys, so `option_a` without `option_e` says "arc or mmlu".
pub fn guess_format(v: &Value) -> Option<&'static str> {
    let has = |k: &str| v.get(k).is_some();
    if has("endings") && (has("ctx_a") || has("ctx")) {
        Some("hellaswag")
    } else if has("mc1_targets") || has("mc1_targets_choices") {
        Some("truthfulqa")
    } else if has("answerKey") || has("option_e") || v.get("choices").is_some_and(Value::is_object) {
        Some("arc")
    } else if has("option_a") {
        Some("arc or mmlu")
    } else if v.get("choices").is_some_and(Value::is_array) {
        Some("mmlu")
    } else {
        None
    }
}

fn parse_doc(task: Task, v: &Value) -> Result<Doc, String> {
    if !v.is_object() {
        return Err(format!("expected a JSON object, found {}", kind(v)));
    }
    let res = match task {
        Task::Arc => parse_arc(v),
        Task::Hellaswag => parse_hellaswag(v),
        Task::Mmlu => parse_mmlu(v),
        Task::TruthfulQa => parse_truthfulqa(v),
    };
    res.map_err(|e| match guess_format(v) {
        Some(g) if !g.contains(task.name()) => format!("{e} (the record looks like a {g} item, not {task}: mixed formats?)"),
        _ => e,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("`{key}` must be a string, found {}", kind(other))),
        None => Err(format!("missing `{key}`")),
    }
}

fn first_string(v: &Value, keys: &[&str]) -> Result<String, String> {
    match keys.iter().find(|k| v.get(**k).is_some()) {
        Some(k) => string(v, k),
        None => Err(format!("missing `{}`", keys.join("` or `"))),
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    let arr = v.as_array().ok_or_else(|| format!("`{what}` must be an array of strings, found {}", kind(v)))?;
    arr.iter().enumerate().map(|(i, x)| x.as_str().map(str::to_string).ok_or_else(|| format!("`{what}`[{i}] must be a string, found {}", kind(x)))).collect()
}

fn need_choices(n: usize, what: &str) -> Result<(), String> {
    if n < 2 {
        return Err(format!("{n} {what} — a multiple-choice item needs at least 2"));
    }
    Ok(())
}

fn letter_index(answer: &str, n: usize, what: &str) -> Result<usize, String> {
    let a = answer.trim();
    let idx = match a.as_bytes() {
        [c @ b'A'..=b'Z'] => (c - b'A') as usize,
        _ => return Err(format!("`{what}` {answer:?} is not a letter A, B, C, …")),
    };
    if idx >= n {
        let last = (b'A' + n as u8 - 1) as char;
        return Err(format!("`{what}` {a:?} is outside the options (A–{last}, {n} choices)"));
    }
    Ok(idx)
}

fn index_in_range(x: i64, n: usize, what: &str) -> Result<usize, String> {
    if x < 0 || x as usize >= n {
        return Err(format!("`{what}` {x} is out of range ({n} choices: 0–{})", n - 1));
    }
    Ok(x as usize)
}

const OPTION_KEYS: [&str; 5] = ["option_a", "option_b", "option_c", "option_d", "option_e"];

/// option_a… as a list: empty/missing/null dropped; a gap before a later option is an error
/// (the answer letter would point at the wrong option once the list is compacted).
fn options(v: &Value, keys: &[&str]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut gap: Option<&str> = None;
    for k in keys {
        let s = match v.get(*k) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("`{k}` must be a string, found {}", kind(other))),
        };
        if s.is_empty() {
            gap.get_or_insert(k);
            continue;
        }
        if let Some(g) = gap {
            return Err(format!("`{g}` is empty but `{k}` is not: the answer letters would shift"));
        }
        out.push(s);
    }
    Ok(out)
}

fn parse_arc(v: &Value) -> Result<Doc, String> {
    if let Some(ch) = v.get("choices").filter(|c| c.is_object()) {
        // ai2_arc (HF): choices {text, label}, answerKey letter or "1"…"5"
        let question = string(v, "question")?;
        let options = strings(ch.get("text").unwrap_or(&Value::Null), "choices.text")?;
        need_choices(options.len(), "choices")?;
        let key = string(v, "answerKey")?;
        let key = match key.trim() {
            "1" => "A",
            "2" => "B",
            "3" => "C",
            "4" => "D",
            "5" => "E",
            k => k,
        }
        .to_string();
        let gold = letter_index(&key, options.len(), "answerKey")?;
        return Ok(Doc::Arc { question, options, gold });
    }
    let question = first_string(v, &["instruction", "question"])?;
    let options = options(v, &OPTION_KEYS)?;
    need_choices(options.len(), "non-empty options")?;
    let answer = match v.get("answer") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("`answer` must be a letter string, found {}", kind(other))),
        None => return Err("missing `answer`".into()),
    };
    let gold = letter_index(&answer, options.len(), "answer")?;
    Ok(Doc::Arc { question, options, gold })
}

fn parse_hellaswag(v: &Value) -> Result<Doc, String> {
    let activity_label = string(v, "activity_label")?;
    let ctx_a = string(v, "ctx_a")?;
    let ctx_b = string(v, "ctx_b")?;
    let endings = strings(v.get("endings").ok_or("missing `endings`")?, "endings")?;
    need_choices(endings.len(), "endings")?;
    let label = match v.get("label") {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("`label` {n} is not an integer"))?,
        Some(Value::String(s)) => s.trim().parse::<i64>().map_err(|_| format!("`label` {s:?} is not an integer"))?,
        Some(other) => return Err(format!("`label` must be an integer, found {}", kind(other))),
        None => return Err("missing `label`".into()),
    };
    let gold = index_in_range(label, endings.len(), "label")?;
    Ok(Doc::Hellaswag { activity_label, ctx_a, ctx_b, endings, gold })
}

fn parse_mmlu(v: &Value) -> Result<Doc, String> {
    let question = first_string(v, &["question", "instruction"])?;
    let options = match v.get("choices") {
        Some(c) => strings(c, "choices")?,
        None => options(v, &OPTION_KEYS[..4])?,
    };
    need_choices(options.len(), "choices")?;
    if options.len() > 26 {
        return Err(format!("{} choices — at most 26 (A–Z) can be lettered", options.len()));
    }
    let gold = match v.get("answer") {
        Some(Value::Number(n)) => index_in_range(n.as_i64().ok_or_else(|| format!("`answer` {n} is not an integer"))?, options.len(), "answer")?,
        Some(Value::String(s)) => letter_index(s, options.len(), "answer")?,
        Some(other) => return Err(format!("`answer` must be an index or a letter, found {}", kind(other))),
        None => return Err("missing `answer`".into()),
    };
    Ok(Doc::Mmlu { question, options, gold })
}

/// (choices, labels) of `mc1_targets` / `mc2_targets`, nested or flattened.
fn targets(v: &Value, name: &str) -> Result<(Vec<String>, Vec<bool>), String> {
    let (c, l) = match v.get(name) {
        Some(t) if t.is_object() => (t.get("choices"), t.get("labels")),
        Some(other) => return Err(format!("`{name}` must be an object with `choices` and `labels`, found {}", kind(other))),
        None => (v.get(format!("{name}_choices")), v.get(format!("{name}_labels"))),
    };
    let choices = strings(c.ok_or_else(|| format!("missing `{name}.choices`"))?, &format!("{name}.choices"))?;
    let labels = l.ok_or_else(|| format!("missing `{name}.labels`"))?.as_array().ok_or_else(|| format!("`{name}.labels` must be an array of 0/1"))?;
    let labels: Vec<bool> = labels
        .iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => Ok(n.as_i64() == Some(1)),
            other => Err(format!("`{name}.labels`[{i}] must be 0 or 1, found {other}")),
        })
        .collect::<Result<_, _>>()?;
    if labels.len() != choices.len() {
        return Err(format!("`{name}` has {} choices but {} labels", choices.len(), labels.len()));
    }
    need_choices(choices.len(), &format!("{name} choices"))?;
    Ok((choices, labels))
}

fn parse_truthfulqa(v: &Value) -> Result<Doc, String> {
    let question = string(v, "question")?;
    let (mc1, l1) = targets(v, "mc1_targets")?;
    let golds: Vec<usize> = l1.iter().enumerate().filter(|(_, &t)| t).map(|(i, _)| i).collect();
    if golds.len() != 1 {
        return Err(format!("`mc1_targets.labels` must mark exactly one true answer, found {}", golds.len()));
    }
    let (mc2, mc2_true) = targets(v, "mc2_targets")?;
    if !mc2_true.contains(&true) || !mc2_true.contains(&false) {
        return Err("`mc2_targets.labels` needs at least one true (1) and one false (0) answer".into());
    }
    Ok(Doc::TruthfulQa { question, mc1, mc1_gold: golds[0], mc2, mc2_true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_from_file_names() {
        assert_eq!(lang_from_name("data/vi_validation.json").as_deref(), Some("vi"));
        assert_eq!(lang_from_name("arc_ru.jsonl").as_deref(), Some("ru"));
        assert_eq!(lang_from_name("/x/ar_challenge_test.json").as_deref(), Some("ar"));
        assert_eq!(lang_from_name("hellaswag_validation.json"), None);
    }

    #[test]
    fn arc_options_and_answers() {
        let text = r#"[{"id":"q1","instruction":"Q?","option_a":"x","option_b":"y","option_c":"z","option_d":"","option_e":"","answer":"C"},
            {"id":"q2","instruction":"Q?","option_a":"x","option_b":"y","option_c":"","answer":"C"},
            {"id":"q3","instruction":"Q?","option_a":"x","option_b":"","answer":"A"},
            {"id":"q4","instruction":"Q?","option_a":"x","option_b":"","option_c":"z","answer":"A"},
            {"activity_label":"a","ctx_a":"b","ctx_b":"c","endings":["d","e"],"label":1}]"#;
        let p = parse_records(Task::Arc, text, "f.json").unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].doc, Doc::Arc { question: "Q?".into(), options: vec!["x".into(), "y".into(), "z".into()], gold: 2 });
        assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
        assert!(p.skipped[0].contains("outside the options"), "{}", p.skipped[0]);
        assert!(p.skipped[1].contains("at least 2"), "{}", p.skipped[1]);
        assert!(p.skipped[2].contains("answer letters would shift"), "{}", p.skipped[2]);
        assert!(p.skipped[3].contains("looks like a hellaswag item"), "{}", p.skipped[3]);
    }

    #[test]
    fn hellaswag_labels_and_ids() {
        let text = "{\"ind\":7,\"activity_label\":\"A\",\"ctx_a\":\"b\",\"ctx_b\":\"c\",\"endings\":[\"d\",\"e\"],\"label\":\"1\"}\n\n{\"activity_label\":\"A\",\"ctx_a\":\"b\",\"ctx_b\":\"c\",\"endings\":[\"d\",\"e\"],\"label\":2}\nnot json\n";
        let p = parse_records(Task::Hellaswag, text, "h.jsonl").unwrap();
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.records[0].id, "7");
        assert!(p.skipped[0].contains("line 3") && p.skipped[0].contains("out of range"), "{}", p.skipped[0]);
        assert!(p.skipped[1].contains("line 4") && p.skipped[1].contains("malformed JSON"), "{}", p.skipped[1]);
    }

    #[test]
    fn mmlu_and_truthfulqa_layouts() {
        let m = parse_records(Task::Mmlu, r#"[{"question":"q","choices":["a","b","c","d"],"answer":3},{"instruction":"q","option_a":"a","option_b":"b","option_c":"c","option_d":"d","answer":"B"}]"#, "m").unwrap();
        assert_eq!(m.records.len(), 2);
        assert!(matches!(m.records[1].doc, Doc::Mmlu { gold: 1, .. }));
        assert_eq!(m.records[1].id, "1");
        let t = parse_records(Task::TruthfulQa, r#"[{"question":"q","mc1_targets":{"choices":["a","b"],"labels":[1,0]},"mc2_targets":{"choices":["a","c","b"],"labels":[1,1,0]}},{"question":"q","mc1_targets_choices":["a","b"],"mc1_targets_labels":[0,1],"mc2_targets_choices":["a"],"mc2_targets_labels":[1]}]"#, "t").unwrap();
        assert_eq!(t.records.len(), 1);
        assert!(t.skipped[0].contains("mc2_targets choices"), "{:?}", t.skipped);
    }
}
