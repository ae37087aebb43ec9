//! Conversational data as TRL reads it, next to Okapi's formats, and how every record becomes
//! tokens.
//!
//! - SFT: `{"messages": [{"role", "content"}, …]}` (loss on every assistant message) or Okapi's
//!   `{"instruction", "input", "output"}`.
//! - Preferences (reward, DPO): `{"prompt", "chosen", "rejected"}`, each a string (TRL's standard
//!   format: raw text, no template) or a message list (conversational); without `prompt`, the
//!   prompt is the longest common start of `chosen` and `rejected` (TRL's implicit prompt,
//!   `extract_prompt`). Okapi's pairs and ranked lists as before.
//!
//! Message lists need a chat template ([`RecordFormat::chat`]); with `instruct_as_chat`, Okapi's
//! records go through it too: the instruction (then a blank line and the input, when there is
//! one) is the user's message, the output the assistant's.

use crate::chat::{encode_chat, ChatLoss, ChatTemplate, Message};
use crate::instruct::{instruct_record, lang_from_path, lang_kept, read_values, short, values_from_str, LoadStats};
use crate::ranking::{rank_record, PromptGroup, RankStats};
use crate::records::{DataError, Origin};
use crate::sft::{encode_text, Example, SftEncoding};
use crate::template::PromptTemplate;
use crate::tokenizer::Tokenizer;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// A training text before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub enum Turns {
    /// Okapi's instruction (+ input) and its response
    Okapi { instruction: String, input: String, output: String },
    /// raw text (TRL's standard format): the prompt with the tokenizer's special tokens, the
    /// completion without, then EOS — as Okapi's records without the template
    Text { prompt: String, completion: String },
    /// a conversation; `field` is the record's field that holds it (for errors)
    Chat { messages: Vec<Message>, loss: ChatLoss, field: &'static str },
}

/// Okapi's instruction and input as one user message: the instruction, then a blank line and
/// the input when there is one (the order and separation of Okapi's template).
pub fn okapi_user_message(instruction: &str, input: &str) -> String {
    if input.is_empty() {
        instruction.to_string()
    } else {
        format!("{instruction}\n\n{input}")
    }
}

/// How records become text: Okapi's prompt template, the model's chat template, or both.
#[derive(Debug)]
pub struct RecordFormat {
    /// Okapi's records, unless `instruct_as_chat`
    pub prompt: PromptTemplate,
    /// conversations (and Okapi's records with `instruct_as_chat`)
    pub chat: Option<ChatTemplate>,
    /// Okapi's records as a user and an assistant message of `chat` (`--template chat`)
    pub instruct_as_chat: bool,
    /// why conversations cannot be used when `chat` is None (the end of their error line)
    pub no_chat: String,
}

impl RecordFormat {
    /// Okapi's records in `prompt`; conversations refused.
    pub fn prompt_only(prompt: PromptTemplate) -> RecordFormat {
        RecordFormat { prompt, chat: None, instruct_as_chat: false, no_chat: "a conversation needs the model's chat template (--template chat)".into() }
    }

    /// Every record through `chat`.
    pub fn chat(chat: ChatTemplate) -> RecordFormat {
        RecordFormat { prompt: PromptTemplate::okapi(), chat: Some(chat), instruct_as_chat: true, no_chat: String::new() }
    }

    /// Tokens and labels of one text; `None` when nothing to learn fits `enc.max_len`. Errors
    /// are messages for the record's location.
    pub fn encode(&self, tok: &Tokenizer, turns: &Turns, enc: &SftEncoding) -> Result<Option<Example>, String> {
        match turns {
            Turns::Okapi { instruction, input, output } => match (&self.chat, self.instruct_as_chat) {
                (Some(chat), true) => {
                    let messages = [Message::new("user", &okapi_user_message(instruction, input)), Message::new("assistant", output)];
                    encode_chat(tok, chat, &messages, ChatLoss::Assistant, enc)
                }
                _ => encode_text(tok, &self.prompt.prompt(instruction, input), output, enc).map_err(|e| e.to_string()),
            },
            Turns::Text { prompt, completion } => encode_text(tok, prompt, completion, enc).map_err(|e| e.to_string()),
            Turns::Chat { messages, loss, field } => match &self.chat {
                Some(chat) => encode_chat(tok, chat, messages, *loss, enc),
                None => Err(format!("field `{field}`: {}", self.no_chat)),
            },
        }
    }
}

/// One SFT record.
#[derive(Clone, Debug, PartialEq)]
pub struct SftRecord {
    pub turns: Turns,
    pub lang: Option<String>,
    pub origin: Origin,
}

impl SftRecord {
    pub fn encode(&self, tok: &Tokenizer, fmt: &RecordFormat, enc: &SftEncoding) -> Result<Option<Example>, DataError> {
        fmt.encode(tok, &self.turns, enc).map_err(|msg| self.origin.error(msg))
    }
}

/// Loads SFT files (conversations and Okapi's records, mixed freely); `langs` keeps those
/// languages (a record's `lang`, else its file name). Okapi's unusable records are skipped and
/// counted; a malformed conversation is an error naming its file, record and field.
pub fn load_sft_records(paths: &[PathBuf], langs: Option<&[String]>) -> Result<(Vec<SftRecord>, LoadStats), DataError> {
    let mut stats = LoadStats::default();
    let mut out = Vec::new();
    for path in paths {
        add_sft(read_values(path)?, path, langs, &mut out, &mut stats)?;
    }
    stats.kept = out.len();
    Ok((out, stats))
}

/// As [`load_sft_records`] for one file's text (`path` names it, and gives its language).
pub fn parse_sft_records(text: &str, path: &Path, langs: Option<&[String]>) -> Result<(Vec<SftRecord>, LoadStats), DataError> {
    let mut stats = LoadStats::default();
    let mut out = Vec::new();
    add_sft(values_from_str(text, path)?, path, langs, &mut out, &mut stats)?;
    stats.kept = out.len();
    Ok((out, stats))
}

fn add_sft(values: Vec<(Origin, Value)>, path: &Path, langs: Option<&[String]>, out: &mut Vec<SftRecord>, stats: &mut LoadStats) -> Result<(), DataError> {
    if values.is_empty() {
        return Err(DataError::File { path: path.to_path_buf(), msg: "no records (the file is empty)".into() });
    }
    let file_lang = lang_from_path(path);
    for (origin, v) in values {
        stats.read += 1;
        let Some(list) = v.as_object().and_then(|o| o.get("messages")) else {
            let rec = instruct_record(origin.clone(), &v, file_lang.as_deref(), langs, true, stats)?;
            out.extend(rec.map(|r| SftRecord { turns: Turns::Okapi { instruction: r.instruction, input: r.input, output: r.output }, lang: r.lang, origin }));
            continue;
        };
        let messages = parse_messages(list, "messages", &origin)?;
        if !messages.iter().any(|m| m.role == "assistant") {
            return Err(origin.error("field `messages`: no message with role \"assistant\" (expected at least one: the loss is on the assistant's messages)"));
        }
        let lang = record_lang(&v, &origin)?.or_else(|| file_lang.clone());
        if !lang_kept(lang.as_deref(), langs) {
            stats.skipped_lang += 1;
            continue;
        }
        out.push(SftRecord { turns: Turns::Chat { messages, loss: ChatLoss::Assistant, field: "messages" }, lang, origin });
    }
    Ok(())
}

/// A record's `lang` field (a string when present).
fn record_lang(v: &Value, origin: &Origin) -> Result<Option<String>, DataError> {
    match v.get("lang") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(origin.error(format!("field `lang`: expected a language code string, got {}", short(other)))),
    }
}

/// A list of `{"role": string, "content": string}` (other keys are ignored).
fn parse_messages(v: &Value, field: &str, origin: &Origin) -> Result<Vec<Message>, DataError> {
    let expected = "expected a non-empty list of {\"role\": string, \"content\": string}";
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| origin.error(format!("field `{field}`: {expected}, got {}", short(v))))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let get = |key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
        match (get("role"), get("content")) {
            (Some(role), Some(content)) => out.push(Message { role, content }),
            _ => return Err(origin.error(format!("field `{field}`, message {}: {expected}, got {}", i + 1, short(m)))),
        }
    }
    Ok(out)
}

/// One preference record: a prompt's responses, best first (all pairs of them are used).
#[derive(Clone, Debug, PartialEq)]
pub struct PrefRecord {
    pub responses: Vec<Turns>,
    pub lang: Option<String>,
    pub origin: Origin,
}

impl PrefRecord {
    /// Each response tokenized like an SFT example and the pairs (better, worse); `None` when one
    /// does not fit `enc.max_len`.
    pub fn encode(&self, tok: &Tokenizer, fmt: &RecordFormat, enc: &SftEncoding) -> Result<Option<PromptGroup>, DataError> {
        let mut responses = Vec::with_capacity(self.responses.len());
        for turns in &self.responses {
            match fmt.encode(tok, turns, enc).map_err(|msg| self.origin.error(msg))? {
                Some(e) => responses.push(e),
                None => return Ok(None),
            }
        }
        let k = responses.len();
        let pairs = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).collect();
        Ok(Some(PromptGroup { responses, pairs }))
    }
}

/// Loads preference files: TRL's `{prompt, chosen, rejected}` records and Okapi's ranking
/// records, mixed freely; skipped records are counted as for Okapi's.
pub fn load_preferences(paths: &[PathBuf], langs: Option<&[String]>) -> Result<(Vec<PrefRecord>, RankStats), DataError> {
    let mut stats = RankStats::default();
    let mut out = Vec::new();
    for path in paths {
        add_preferences(read_values(path)?, path, langs, &mut out, &mut stats)?;
    }
    stats.kept = out.len();
    Ok((out, stats))
}

/// As [`load_preferences`] for one file's text.
pub fn parse_preferences(text: &str, path: &Path, langs: Option<&[String]>) -> Result<(Vec<PrefRecord>, RankStats), DataError> {
    let mut stats = RankStats::default();
    let mut out = Vec::new();
    add_preferences(values_from_str(text, path)?, path, langs, &mut out, &mut stats)?;
    stats.kept = out.len();
    Ok((out, stats))
}

fn add_preferences(values: Vec<(Origin, Value)>, path: &Path, langs: Option<&[String]>, out: &mut Vec<PrefRecord>, stats: &mut RankStats) -> Result<(), DataError> {
    if values.is_empty() {
        return Err(DataError::File { path: path.to_path_buf(), msg: "no records (the file is empty)".into() });
    }
    let file_lang = lang_from_path(path);
    for (origin, v) in values {
        stats.read += 1;
        let obj = v.as_object().ok_or_else(|| origin.error(format!("expected a JSON object, got {}", short(&v))))?;
        if is_trl_preference(obj) {
            out.extend(trl_preference(origin, &v, file_lang.as_deref(), langs, stats)?);
        } else if let Some(r) = rank_record(origin.clone(), obj, file_lang.as_deref(), langs, stats)? {
            let responses = r.responses.into_iter().map(|output| Turns::Okapi { instruction: r.instruction.clone(), input: r.input.clone(), output }).collect();
            out.push(PrefRecord { responses, lang: r.lang, origin });
        }
    }
    Ok(())
}

/// TRL's preference records: a `prompt`, message lists, or a chosen/rejected pair without an
/// instruction (Okapi's records always have one).
fn is_trl_preference(obj: &Map<String, Value>) -> bool {
    let listed = |k: &str| obj.get(k).is_some_and(Value::is_array);
    obj.contains_key("prompt") || listed("chosen") || listed("rejected") || (!obj.contains_key("instruction") && !obj.contains_key("responses") && obj.contains_key("chosen") && obj.contains_key("rejected"))
}

/// A prompt or completion of TRL's format.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Messages(Vec<Message>),
}

impl Part {
    fn kind(&self) -> &'static str {
        match self {
            Part::Text(_) => "string",
            Part::Messages(_) => "message list",
        }
    }
}

fn part(v: &Value, field: &str, origin: &Origin) -> Result<Part, DataError> {
    match v {
        Value::String(s) => Ok(Part::Text(s.clone())),
        Value::Array(_) => parse_messages(v, field, origin).map(Part::Messages),
        other => Err(origin.error(format!("field `{field}`: expected a string or a list of messages, got {}", short(other)))),
    }
}

/// One TRL preference record; `None` (counted) when skipped.
fn trl_preference(origin: Origin, v: &Value, file_lang: Option<&str>, langs: Option<&[String]>, stats: &mut RankStats) -> Result<Option<PrefRecord>, DataError> {
    let required = |field: &str| v.get(field).filter(|x| !x.is_null()).ok_or_else(|| origin.error(format!("field `{field}`: missing (expected a string or a list of messages)")));
    let chosen = part(required("chosen")?, "chosen", &origin)?;
    let rejected = part(required("rejected")?, "rejected", &origin)?;
    let prompt = v.get("prompt").filter(|x| !x.is_null()).map(|p| part(p, "prompt", &origin)).transpose()?;
    let lead = prompt.as_ref().unwrap_or(&chosen);
    for (field, p) in [("chosen", &chosen), ("rejected", &rejected)] {
        if p.kind() != lead.kind() {
            return Err(origin.error(format!("field `{field}`: a {}, but `{}` is a {}: expected all strings or all message lists", p.kind(), if prompt.is_some() { "prompt" } else { "chosen" }, lead.kind())));
        }
    }
    let (field, (prompt, chosen, rejected)) = match prompt {
        Some(p) => ("prompt", (p, chosen, rejected)),
        None => ("chosen", extract_prompt(chosen, rejected)),
    };
    let lang = record_lang(v, &origin)?.or_else(|| file_lang.map(str::to_string));
    let empty = |p: &Part| match p {
        Part::Text(s) => s.trim().is_empty(),
        Part::Messages(m) => m.is_empty(),
    };
    if empty(&chosen) || empty(&rejected) {
        stats.skipped_empty += 1;
        return Ok(None);
    }
    if chosen == rejected {
        stats.skipped_identical += 1;
        return Ok(None);
    }
    if !lang_kept(lang.as_deref(), langs) {
        stats.skipped_lang += 1;
        return Ok(None);
    }
    let responses = [chosen, rejected].into_iter().map(|completion| pref_turns(&prompt, completion, field)).collect();
    Ok(Some(PrefRecord { responses, lang, origin }))
}

/// A prompt and one completion as one text (the parts are of one kind, checked by the caller).
fn pref_turns(prompt: &Part, completion: Part, field: &'static str) -> Turns {
    match (prompt, completion) {
        (Part::Text(p), Part::Text(c)) => Turns::Text { prompt: p.clone(), completion: c },
        (Part::Messages(p), Part::Messages(c)) => Turns::Chat { loss: ChatLoss::After(p.len()), messages: p.iter().cloned().chain(c).collect(), field },
        _ => unreachable!("the prompt and completions are of one kind"),
    }
}

/// TRL's `extract_prompt`: the common start of chosen and rejected (characters or messages)
/// is the prompt; a space before the first difference stays with the completions. When one is
/// a prefix of the other, the last shared item stays in the completions (as TRL's loop leaves it).
fn extract_prompt(chosen: Part, rejected: Part) -> (Part, Part, Part) {
    fn split<T: PartialEq + Clone>(c: &[T], r: &[T], is_space: impl Fn(&T) -> bool) -> usize {
        let n = c.len().min(r.len());
        match (0..n).find(|&i| c[i] != r[i]) {
            Some(i) if i > 0 && is_space(&c[i - 1]) => i - 1,
            Some(i) => i,
            None => n.saturating_sub(1),
        }
    }
    match (chosen, rejected) {
        (Part::Text(c), Part::Text(r)) => {
            let (cc, rc): (Vec<char>, Vec<char>) = (c.chars().collect(), r.chars().collect());
            let at = split(&cc, &rc, |ch| *ch == ' ');
            let s = |v: &[char]| v.iter().collect::<String>();
            (Part::Text(s(&cc[..at])), Part::Text(s(&cc[at..])), Part::Text(s(&rc[at..])))
        }
        (Part::Messages(c), Part::Messages(r)) => {
            let at = split(&c, &r, |_| false);
            (Part::Messages(c[..at].to_vec()), Part::Messages(c[at..].to_vec()), Part::Messages(r[at..].to_vec()))
        }
        (c, r) => (Part::Text(String::new()), c, r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pref(line: &str) -> Result<(Vec<PrefRecord>, RankStats), DataError> {
        parse_preferences(line, Path::new("vi.jsonl"), None)
    }

    fn text_turns(prompt: &str, completion: &str) -> Turns {
        Turns::Text { prompt: prompt.into(), completion: completion.into() }
    }

    #[test]
    fn implicit_prompts_as_trl_extracts_them() {
        // strings: the common start; the space before the first difference stays with the completions
        let (recs, _) = parse_pref(r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#).unwrap();
        assert_eq!(recs[0].responses, vec![text_turns("The sky is", " blue."), text_turns("The sky is", " green.")]);
        // one a prefix of the other: the last shared character stays in the completions
        let (recs, _) = parse_pref(r#"{"chosen": "abc", "rejected": "abcd"}"#).unwrap();
        assert_eq!(recs[0].responses, vec![text_turns("ab", "c"), text_turns("ab", "cd")]);
        // message lists: the shared messages are the prompt, the completions carry the loss
        let (recs, _) = parse_pref(r#"{"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}], "lang": "en"}"#).unwrap();
        let Turns::Chat { messages, loss, field } = &recs[0].responses[1] else { panic!("{:?}", recs[0]) };
        assert_eq!((messages.as_slice(), *loss, *field), (&[Message::new("user", "2+2?"), Message::new("assistant", "5")][..], ChatLoss::After(1), "chosen"));
        assert_eq!(recs[0].lang.as_deref(), Some("en"));
    }

    #[test]
    fn okapi_and_trl_records_side_by_side() {
        let file = [
            r#"{"instruction": "Chào", "input": "", "chosen": "Xin chào!", "rejected": "Không."}"#,
            r#"{"prompt": "P", "chosen": " a", "rejected": " b"}"#,
            r#"{"instruction": "Rank", "input": "", "responses": ["x", "y", "z"]}"#,
            r#"{"prompt": "P", "chosen": " a", "rejected": " a"}"#,
            r#"{"prompt": "P", "chosen": " ", "rejected": " b"}"#,
        ]
        .join("\n");
        let (recs, stats) = parse_pref(&file).unwrap();
        assert_eq!(recs.iter().map(|r| r.responses.len()).collect::<Vec<_>>(), vec![2, 2, 3]);
        assert!(matches!(recs[0].responses[0], Turns::Okapi { .. }) && recs[1].responses[0] == text_turns("P", " a"));
        assert_eq!((stats.read, stats.skipped_identical, stats.skipped_empty), (5, 1, 1));
        assert_eq!(recs[0].lang.as_deref(), Some("vi"), "the file's language");
    }

    #[test]
    fn sft_records_and_their_errors() {
        let file = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"assistant\", \"content\": \"b\", \"name\": \"x\"}]}\n{\"instruction\": \"i\", \"input\": \"\", \"output\": \"o\"}\n{\"instruction\": \"\", \"output\": \"skipped\"}\n";
        let (recs, stats) = parse_sft_records(file, Path::new("ar.jsonl"), Some(&["ar".to_string()])).unwrap();
        assert_eq!((recs.len(), stats.read, stats.skipped_missing), (2, 3, 1));
        assert_eq!(recs[0].origin.to_string(), "ar.jsonl:1");
        let err = |text: &str| parse_sft_records(text, Path::new("d.json"), None).unwrap_err().to_string();
        assert_eq!(err(r#"[{"messages": []}]"#), "d.json: record 1: field `messages`: expected a non-empty list of {\"role\": string, \"content\": string}, got []");
        assert!(err(r#"[{"messages": [{"role": "user"}]}]"#).contains("field `messages`, message 1:"));
        assert!(err(r#"[{"messages": [{"role": "user", "content": "x"}], "lang": 3}]"#).contains("no message with role \"assistant\""));
        assert!(err(r#"[{"messages": [{"role": "assistant", "content": "x"}], "lang": 3}]"#).contains("field `lang`"));
    }

    #[test]
    fn okapi_records_in_the_chat_template_and_conversations_refused_without_it() {
        assert_eq!(okapi_user_message("Dịch.", ""), "Dịch.");
        assert_eq!(okapi_user_message("Dịch.", "Xin chào"), "Dịch.\n\nXin chào");
        let fmt = RecordFormat::prompt_only(PromptTemplate::okapi());
        let tok = Tokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama_gqa")).unwrap();
        let enc = SftEncoding { max_len: 512, mask_prompt: true, eos: 2 };
        let chat = Turns::Chat { messages: vec![Message::new("user", "a")], loss: ChatLoss::Assistant, field: "messages" };
        assert_eq!(fmt.encode(&tok, &chat, &enc).unwrap_err(), "field `messages`: a conversation needs the model's chat template (--template chat)");
        // raw text: the prompt with the tokenizer's BOS, the completion then EOS, loss on the completion
        let ex = fmt.encode(&tok, &text_turns("The sky is", " blue."), &enc).unwrap().unwrap();
        assert_eq!(ex.ids[0], 1);
        assert_eq!(*ex.ids.last().unwrap(), 2);
        assert_eq!(ex.labels.iter().filter(|&&l| l != -100).count(), ex.ids.len() - ex.prompt_len);
    }
}
