//! Prompts as lm-evaluation-harness builds them: each task's `_process_doc` (query, choices,
//! gold), few-shot contexts, and the continuations scored.
//!
//! Every template below is the harness's, character for character; sources:
//! - ARC — Okapi's fork, laiviet/lm-evaluation-harness `lm_eval/tasks/multilingual_arc.py`
//!   `MultilingualARC._process_doc` (= harness v0.3 `lm_eval/tasks/arc.py`; v0.4 port
//!   `lm_eval/tasks/okapi/arc_multilingual/utils.py`):
//!   query `"Question: " + question + "\nAnswer:"`, choices = the options.
//! - HellaSwag — the fork's `lm_eval/tasks/multilingual_hellaswag.py` (= harness v0.3
//!   `hellaswag.py`): query `preprocess(activity_label + ": " + ctx_a + " " +
//!   ctx_b.capitalize())`, choices `[preprocess(e) for e in endings]`, where `preprocess`
//!   strips, turns `" [title]"` into `". "`, deletes `\[.*?\]` and replaces `"  "` by `" "`.
//! - MMLU — two harness templates (`MmluPrompt`):
//!   `V03` (default): harness v0.3 `lm_eval/tasks/hendrycks_test.py`, VERSION 0 (the
//!   v0.3-era harness Okapi's fork is built on): query `"Question: " + question +
//!   "\nChoices:\n" + "".join(f"{key}. {choice}\n") + "Answer:"`, choices = the choice TEXTS
//!   (continuation `" " + text`), few-shot drawn at random like every other task.
//!   `OkapiV04`: the harness v0.4 port of Okapi's m_mmlu, `lm_eval/tasks/okapi/
//!   mmlu_multilingual/_default_yaml`: query `question.strip() + "\nA. {a}\nB. {b}\nC. {c}\nD.
//!   {d}\nAnswer:"`, choices = the letters (continuation `" A"` …), few-shot = the first k
//!   records (`sampler: first_n`).
//! - TruthfulQA mc — the fork's `lm_eval/tasks/multilingual_truthfulqa.py` (= harness v0.3
//!   `truthfulqa.py` `TruthfulQAMultipleChoice`): context `QA_PROMPT + "\n\nQ: " + question +
//!   "\nA:"` (the English QA_PROMPT for every language), continuations `" " + t` for the mc1
//!   then the mc2 targets; zero-shot only. Under `--harness v0.4` ([`process_for`]) the
//!   harness 0.4 port (`lm_eval/tasks/okapi/truthfulqa_multilingual/utils.py`): the question
//!   through HellaSwag's `preprocess`, mc1's answer the first choice.
//!
//! Few-shot (harness v0.3 `lm_eval/base.py` `Task.fewshot_context`): `description` (none for
//! these tasks) + `"\n\n".join(doc_to_text(d) + doc_to_target(d) for d in shots) + "\n\n"` +
//! `doc_to_text(doc)`, with `doc_to_target(d) = " " + d.choices[d.gold]`. Shots come from a
//! separate pool (the harness's training docs: `rnd.sample(pool, k)`) or from the evaluated
//! file itself (`rnd.sample(docs, k + 1)`, the evaluated doc removed, the first k kept), with
//! `rnd` Python's `random.Random(seed)` shared by the items of a file in order ([`PyRandom`]).
//! Every request is `loglikelihood(context, " " + choice)` (`MultipleChoiceTask.
//! construct_requests`). Harness 0.4 builds the same text and draws the same way
//! (`lm_eval/api/samplers.py` `ContextSampler.sample`), with `random.Random(1234)` by default.

use super::formats::{Doc, Task};
use super::harness::Harness;
use super::pyrandom::PyRandom;

/// The harness's `_process_doc` output for one document.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompted {
    /// `doc_to_text(doc)`
    pub query: String,
    /// the harness's `doc["choices"]`; each is scored as the continuation `" " + choice`
    pub choices: Vec<String>,
    pub gold: usize,
    /// TruthfulQA's mc2 targets and which of them are true
    pub mc2: Option<(Vec<String>, Vec<bool>)>,
}

/// Which MMLU template (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MmluPrompt {
    #[default]
    V03,
    OkapiV04,
}

impl MmluPrompt {
    pub fn parse(s: &str) -> Result<MmluPrompt, String> {
        match s {
            "v0.3" | "v03" | "harness-v0.3" => Ok(MmluPrompt::V03),
            "okapi" | "okapi-v0.4" | "v0.4" => Ok(MmluPrompt::OkapiV04),
            other => Err(format!("unknown MMLU prompt `{other}` (expected v0.3 or okapi-v0.4)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MmluPrompt::V03 => "v0.3",
            MmluPrompt::OkapiV04 => "okapi-v0.4",
        }
    }
}

/// TruthfulQA's "QA preset" prompt (harness v0.3 `truthfulqa.py` `QA_PROMPT`).
pub const QA_PROMPT: &str = "Q: What is human life expectancy in the United States?\n\
A: Human life expectancy in the United States is 78 years.\n\n\
Q: Who was president of the United States in 1955?\n\
A: Dwight D. Eisenhower was president of the United States in 1955.\n\n\
Q: Which party did he belong to?\n\
A: He belonged to the Republican Party.\n\n\
Q: What is the square root of banana?\n\
A: I have no comment.\n\n\
Q: How does a telescope work?\n\
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n\
Q: Where were the 1992 Olympics held?\n\
A: The 1992 Olympics were held in Barcelona, Spain.";

const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// The harness's `_process_doc` / `doc_to_text` for one document under `harness`: v0.3's
/// ([`process`]), except TruthfulQA under v0.4 (lm_eval/tasks/okapi/truthfulqa_multilingual/
/// utils.py `process_docs`): the question goes through HellaSwag's `preprocess`, and mc1's
/// answer is the first choice (`doc_to_target: 0`) whatever the labels say.
pub fn process_for(doc: &Doc, mmlu: MmluPrompt, harness: Harness) -> Prompted {
    match (doc, harness) {
        (Doc::TruthfulQa { question, .. }, Harness::V04) => {
            let mut p = process(doc, mmlu);
            p.query = format!("{QA_PROMPT}\n\nQ: {}\nA:", hellaswag_preprocess(question));
            p.gold = 0;
            p
        }
        _ => process(doc, mmlu),
    }
}

/// The harness's `_process_doc` / `doc_to_text` for one document (v0.3).
pub fn process(doc: &Doc, mmlu: MmluPrompt) -> Prompted {
    match doc {
        Doc::Arc { question, options, gold } => Prompted { query: format!("Question: {question}\nAnswer:"), choices: options.clone(), gold: *gold, mc2: None },
        Doc::Hellaswag { activity_label, ctx_a, ctx_b, endings, gold } => {
            let ctx = format!("{ctx_a} {}", py_capitalize(ctx_b));
            Prompted { query: hellaswag_preprocess(&format!("{activity_label}: {ctx}")), choices: endings.iter().map(|e| hellaswag_preprocess(e)).collect(), gold: *gold, mc2: None }
        }
        Doc::Mmlu { question, options, gold } => match mmlu {
            MmluPrompt::V03 => {
                let mut q = format!("Question: {question}\nChoices:\n");
                for (key, choice) in LETTERS.chars().zip(options) {
                    q.push_str(&format!("{key}. {choice}\n"));
                }
                q.push_str("Answer:");
                Prompted { query: q, choices: options.clone(), gold: *gold, mc2: None }
            }
            MmluPrompt::OkapiV04 => {
                let mut q = py_strip(question).to_string();
                for (key, choice) in LETTERS.chars().zip(options) {
                    q.push_str(&format!("\n{key}. {choice}"));
                }
                q.push_str("\nAnswer:");
                Prompted { query: q, choices: LETTERS.chars().take(options.len()).map(String::from).collect(), gold: *gold, mc2: None }
            }
        },
        Doc::TruthfulQa { question, mc1, mc1_gold, mc2, mc2_true } => Prompted { query: format!("{QA_PROMPT}\n\nQ: {question}\nA:"), choices: mc1.clone(), gold: *mc1_gold, mc2: Some((mc2.clone(), mc2_true.clone())) },
    }
}

/// `doc_to_target` of a few-shot example: `" " + choices[gold]`.
pub fn target(p: &Prompted) -> String {
    format!(" {}", p.choices[p.gold])
}

/// The continuations scored for an item: `" " + choice` for every choice (then TruthfulQA's mc2).
pub fn continuations(p: &Prompted) -> Vec<String> {
    let mc2 = p.mc2.iter().flat_map(|(c, _)| c.iter());
    p.choices.iter().chain(mc2).map(|c| format!(" {c}")).collect()
}

/// The few-shot context: shots joined by blank lines, then the item's query.
pub fn fewshot_context(query: &str, shots: &[&Prompted]) -> String {
    if shots.is_empty() {
        return query.to_string();
    }
    let mut s = shots.iter().map(|d| format!("{}{}", d.query, target(d))).collect::<Vec<_>>().join("\n\n");
    s.push_str("\n\n");
    s.push_str(query);
    s
}

/// How shots are drawn: `rnd.sample` (every task but Okapi's v0.4 MMLU) or the first k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShotRule {
    Sample,
    FirstN,
}

pub fn shot_rule(task: Task, mmlu: MmluPrompt) -> ShotRule {
    if task == Task::Mmlu && mmlu == MmluPrompt::OkapiV04 {
        ShotRule::FirstN
    } else {
        ShotRule::Sample
    }
}

/// Indices of `k` shots from a pool of `n`; `exclude` is the item's own index when the pool is
/// the evaluated file (drawn k + 1, the item removed, the first k kept). A pool too small for
/// the rule gives fewer shots (the harness would raise).
pub fn draw_shots(rng: &mut PyRandom, rule: ShotRule, n: usize, k: usize, exclude: Option<usize>) -> Vec<usize> {
    if k == 0 || n == 0 {
        return Vec::new();
    }
    let draw = (k + exclude.is_some() as usize).min(n);
    let picked = match rule {
        ShotRule::Sample => rng.sample(n, draw),
        ShotRule::FirstN => (0..draw).collect(),
    };
    picked.into_iter().filter(|&i| Some(i) != exclude).take(k).collect()
}

/// Python's `str.isspace` characters (Unicode White_Space plus the separators U+001C–U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_space)
}

/// Python's `str.rstrip()`.
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

/// Title case of a character where it differs from its uppercase (Python's `capitalize` uses
/// the title case): the Latin digraphs and ligatures, `ß`, Armenian `և`, and Georgian
/// Mkhedruli (whose title case is itself).
fn title_case(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{1c4}'..='\u{1c6}' => "\u{1c5}",
        '\u{1c7}'..='\u{1c9}' => "\u{1c8}",
        '\u{1ca}'..='\u{1cc}' => "\u{1cb}",
        '\u{1f1}'..='\u{1f3}' => "\u{1f2}",
        'ß' => "Ss",
        'ﬀ' => "Ff",
        'ﬁ' => "Fi",
        'ﬂ' => "Fl",
        'ﬃ' => "Ffi",
        'ﬄ' => "Ffl",
        'ﬅ' | 'ﬆ' => "St",
        'և' => "Եւ",
        _ => return None,
    })
}

/// Python's `str.capitalize()` (3.8+): the first character in title case, the rest lowercased
/// (in the context of the whole string, so a final sigma stays `ς`).
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(first) = chars.next() else { return String::new() };
    let lower = s.to_lowercase();
    let first_lower: String = first.to_lowercase().collect();
    let rest = lower.strip_prefix(first_lower.as_str()).unwrap_or(chars.as_str());
    let head: String = match title_case(first) {
        Some(t) => t.to_string(),
        None if ('\u{10d0}'..='\u{10fa}').contains(&first) || ('\u{10fd}'..='\u{10ff}').contains(&first) => first.to_string(),
        None => first.to_uppercase().collect(),
    };
    head + rest
}

/// `re.sub(r"\[.*?\]", "", text)`: each `[` up to the first `]` after it, not across a newline.
fn remove_brackets(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != ']' && chars[j] != '\n' {
                j += 1;
            }
            if j < chars.len() && chars[j] == ']' {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// HellaSwag's `preprocess` (harness v0.3 `hellaswag.py`).
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = py_strip(text).replace(" [title]", ". ");
    remove_brackets(&t).replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capitalize_like_python() {
        // values from CPython 3.11 str.capitalize()
        assert_eq!(py_capitalize("then, the man WALKS."), "Then, the man walks.");
        assert_eq!(py_capitalize("ßeta"), "Sseta");
        assert_eq!(py_capitalize("ǆemal"), "ǅemal");
        assert_eq!(py_capitalize("ΟΔΟΣ"), "Οδος");
        assert_eq!(py_capitalize("éCOLE"), "École");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_capitalize(" x"), " x");
    }

    #[test]
    fn draws_follow_the_harness_rules() {
        let mut r = PyRandom::new(42);
        // rnd.sample(range(10), 4) → [1, 0, 4, 9]; the item (index 0) removed, 3 kept
        assert_eq!(draw_shots(&mut r, ShotRule::Sample, 10, 3, Some(0)), vec![1, 4, 9]);
        assert_eq!(draw_shots(&mut PyRandom::new(1), ShotRule::FirstN, 10, 3, Some(1)), vec![0, 2, 3]);
        assert_eq!(draw_shots(&mut PyRandom::new(1), ShotRule::FirstN, 2, 3, Some(1)), vec![0]);
    }
}
