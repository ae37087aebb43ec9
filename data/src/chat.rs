//! The model's own chat template, rendered and tokenized as transformers'
//! `apply_chat_template(messages, tokenize=True)` does: the Jinja template from the model
//! directory (`chat_template.jinja`, else `chat_template` of `tokenizer_config.json`, a string
//! or Hugging Face's list of `{name, template}` whose "default" is used), the special tokens of
//! `tokenizer_config.json` as variables, the rendered text encoded without adding special
//! tokens (the template writes the BOS itself).
//!
//! Loss masks come from rendering prefixes of the conversation: an assistant message's tokens
//! start where the conversation before it, rendered with `add_generation_prompt`, ends, and end
//! where the conversation through it ends. Both renders must tokenize to a prefix of the whole
//! conversation's tokens; a template that is not prefix-stable (one that rewrites earlier turns)
//! is refused.

use crate::jinja::{environment, RAISED};
use crate::records::{one_line, DataError};
use crate::sft::{Example, SftEncoding, IGNORE_LABEL};
use crate::tokenizer::Tokenizer;
use indexmap::IndexMap;
use minijinja::{Environment, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    fn value(&self) -> Value {
        // role then content, as the messages of a JSON file usually list them
        let map: IndexMap<Value, Value> = [("role", &self.role), ("content", &self.content)].into_iter().map(|(k, v)| (Value::from(k), Value::from(v.as_str()))).collect();
        Value::from_object(map)
    }
}

/// The special-token variables transformers passes to every template (`special_tokens_map`).
const SPECIAL_TOKENS: [&str; 7] = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A chat template ready to render.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// the file it came from (errors name it)
    pub path: PathBuf,
    /// variables every render sees: the special tokens, then [`ChatTemplate::with_var`]'s
    vars: Vec<(String, Value)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// The chat template of a model directory (or of the directory holding a given
    /// `tokenizer.json`); `None` when it has none.
    pub fn load(model: &Path) -> Result<Option<ChatTemplate>, DataError> {
        let dir = if model.is_dir() { model } else { model.parent().unwrap_or(Path::new(".")) };
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| DataError::File { path: config_path.clone(), msg: format!("invalid JSON: {e}") })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Json::Null,
            Err(source) => return Err(DataError::Io { path: config_path, source }),
        };
        let legacy_map: Json = std::fs::read_to_string(dir.join("special_tokens_map.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Json::Null);
        // a separate chat_template.jinja takes priority over the config's entry, as in transformers
        let jinja = dir.join("chat_template.jinja");
        let (source, path) = match std::fs::read_to_string(&jinja) {
            Ok(text) => (text, jinja),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match template_of_config(&config, &config_path)? {
                Some(text) => (text, config_path),
                None => return Ok(None),
            },
            Err(source) => return Err(DataError::Io { path: jinja, source }),
        };
        let specials = SPECIAL_TOKENS.iter().filter_map(|&name| special_token(&config, name).or_else(|| special_token(&legacy_map, name)).map(|t| (name.to_string(), t))).collect();
        ChatTemplate::new(source, specials, &path).map(Some)
    }

    /// A template from its source and the special tokens (`("bos_token", "<s>")`, …); `path`
    /// names it in errors.
    pub fn new(source: String, specials: Vec<(String, String)>, path: &Path) -> Result<ChatTemplate, DataError> {
        let env = environment(source).map_err(|e| DataError::File { path: path.to_path_buf(), msg: one_line(format!("chat template does not parse: {e}")) })?;
        let vars = specials.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        Ok(ChatTemplate { env, path: path.to_path_buf(), vars })
    }

    /// One more variable for every render (`date_string`, …: what `apply_chat_template`'s extra
    /// keyword arguments give the template).
    pub fn with_var(mut self, name: &str, value: &Json) -> ChatTemplate {
        self.vars.push((name.to_string(), json_value(value)));
        self
    }

    /// A special token of the tokenizer config (`"eos_token"`, …) as the template sees it.
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.as_str())
    }

    /// The conversation as text.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, DataError> {
        let mut ctx: IndexMap<Value, Value> = self.vars.iter().map(|(k, v)| (Value::from(k.as_str()), v.clone())).collect();
        ctx.insert(Value::from("messages"), messages.iter().map(Message::value).collect());
        ctx.insert(Value::from("add_generation_prompt"), Value::from(add_generation_prompt));
        ctx.insert(Value::from("tools"), Value::from(()));
        ctx.insert(Value::from("documents"), Value::from(()));
        let tpl = self.env.get_template("chat_template").map_err(|e| self.error(&e))?;
        tpl.render(Value::from_object(ctx)).map_err(|e| self.error(&e))
    }

    fn error(&self, e: &minijinja::Error) -> DataError {
        let detail = e.detail().unwrap_or_default();
        let line = e.line().map(|l| format!(" (template line {l})")).unwrap_or_default();
        let msg = match detail.strip_prefix(RAISED) {
            Some(raised) => format!("the chat template refused the conversation: {raised}{line}"),
            None => format!("the chat template failed: {e}"),
        };
        DataError::File { path: self.path.clone(), msg: one_line(msg) }
    }

    /// Token ids of the rendered conversation, as `apply_chat_template(tokenize=True)`.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>, DataError> {
        tok.encode(&self.render(messages, add_generation_prompt)?, false)
    }
}

/// `chat_template` of a tokenizer_config.json: a string, or the list of `{name, template}`
/// whose "default" is the one used.
fn template_of_config(config: &Json, path: &Path) -> Result<Option<String>, DataError> {
    let err = |msg: String| DataError::File { path: path.to_path_buf(), msg };
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let named = |x: &Json| Some((x.get("name")?.as_str()?.to_string(), x.get("template")?.as_str()?.to_string()));
            let all: Vec<(String, String)> = list.iter().map(named).collect::<Option<_>>().ok_or_else(|| err("field `chat_template`: expected a string or a list of {\"name\", \"template\"}".into()))?;
            match all.iter().find(|(n, _)| n == "default") {
                Some((_, t)) => Ok(Some(t.clone())),
                None => Err(err(format!("field `chat_template`: no template named \"default\" (it has {})", all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")))),
            }
        }
        Some(_) => Err(err("field `chat_template`: expected a string or a list of {\"name\", \"template\"}".into())),
    }
}

/// A special token of a tokenizer config: a string, or an added token's `{"content": …}`.
fn special_token(config: &Json, name: &str) -> Option<String> {
    match config.get(name)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A JSON value as a template value (object keys in file order where serde_json keeps it).
fn json_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => n.as_i64().map(Value::from).or_else(|| n.as_u64().map(Value::from)).unwrap_or_else(|| Value::from(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => a.iter().map(json_value).collect(),
        Json::Object(o) => Value::from_object(o.iter().map(|(k, v)| (Value::from(k.as_str()), json_value(v))).collect::<IndexMap<Value, Value>>()),
    }
}

/// Which tokens of a conversation carry the loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatLoss {
    /// every assistant message (SFT on `messages`)
    Assistant,
    /// everything after the first `n` messages, the prompt (preference completions, as TRL)
    After(usize),
}

/// A conversation tokenized for training: ids as `apply_chat_template` gives them, labels on the
/// loss tokens (all of them when `enc.mask_prompt` is off), cut at `enc.max_len`. `None` when no
/// loss token would remain. Errors are messages for the record's location.
pub fn encode_chat(tok: &Tokenizer, tpl: &ChatTemplate, messages: &[Message], loss: ChatLoss, enc: &SftEncoding) -> Result<Option<Example>, String> {
    let ids = tpl.encode(tok, messages, false).map_err(|e| e.to_string())?;
    let spans = loss_spans(tok, tpl, messages, loss, &ids)?;
    let first = spans.first().map_or(ids.len(), |s| s.0);
    if first >= enc.max_len.min(ids.len()) {
        return Ok(None);
    }
    let mut labels = vec![IGNORE_LABEL; ids.len()];
    for (start, end) in spans {
        labels[start..end].iter_mut().zip(&ids[start..end]).for_each(|(l, &id)| *l = id as i64);
    }
    if !enc.mask_prompt {
        labels = ids.iter().map(|&id| id as i64).collect();
    }
    let mut ex = Example { ids, labels, prompt_len: first };
    ex.ids.truncate(enc.max_len);
    ex.labels.truncate(enc.max_len);
    Ok(Some(ex))
}

/// The token ranges of the loss, in order.
fn loss_spans(tok: &Tokenizer, tpl: &ChatTemplate, messages: &[Message], loss: ChatLoss, ids: &[u32]) -> Result<Vec<(usize, usize)>, String> {
    let prefix = |upto: usize, generation: bool| -> Result<usize, String> {
        if upto == 0 && generation {
            return Ok(0);
        }
        let head = tpl.encode(tok, &messages[..upto], generation).map_err(|e| e.to_string())?;
        if !ids.starts_with(&head) {
            return Err(format!(
                "{}: the chat template is not prefix-stable: the conversation through message {upto}{} does not tokenize to the start of the whole conversation's tokens, so okapi cannot tell which tokens are the assistant's",
                tpl.path.display(),
                if generation { " with the generation prompt" } else { "" }
            ));
        }
        Ok(head.len())
    };
    match loss {
        ChatLoss::After(n) => Ok(vec![(prefix(n, true)?, ids.len())]),
        ChatLoss::Assistant => {
            let mut spans = Vec::new();
            for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
                let start = prefix(i, true)?;
                let end = if i + 1 == messages.len() { ids.len() } else { prefix(i + 1, false)? };
                if end <= start {
                    return Err(format!("message {}: the chat template renders no tokens of this assistant message", i + 1));
                }
                spans.push((start, end));
            }
            Ok(spans)
        }
    }
}
