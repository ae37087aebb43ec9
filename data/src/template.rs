//! Okapi's prompt template (alpaca-lora's, verbatim) and custom templates from a JSON file in
//! alpaca-lora's template format: `{"prompt_input": "...{instruction}...{input}...", "prompt_no_input": "...{instruction}..."}`.

use crate::records::DataError;
use std::path::Path;

pub const OKAPI_PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
pub const OKAPI_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

#[derive(Clone, Debug, PartialEq)]
pub struct PromptTemplate {
    pub prompt_input: String,
    pub prompt_no_input: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self::okapi()
    }
}

impl PromptTemplate {
    pub fn okapi() -> Self {
        PromptTemplate { prompt_input: OKAPI_PROMPT_INPUT.into(), prompt_no_input: OKAPI_PROMPT_NO_INPUT.into() }
    }

    /// Reads a template file (alpaca-lora's JSON format; other keys such as `description` and
    /// `response_split` are ignored).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        Self::from_json(&text, path)
    }

    /// As [`PromptTemplate::load`], from the file's text (`path` names it in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self, DataError> {
        let err = |msg: String| DataError::File { path: path.to_path_buf(), msg };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let field = |k: &str| -> Result<String, DataError> {
            v.get(k).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| err(format!("field `{k}`: missing or not a string (expected a template string)")))
        };
        let t = PromptTemplate { prompt_input: field("prompt_input")?, prompt_no_input: field("prompt_no_input")? };
        if !t.prompt_input.contains("{instruction}") || !t.prompt_input.contains("{input}") {
            return Err(err("field `prompt_input`: must contain {instruction} and {input}".into()));
        }
        if !t.prompt_no_input.contains("{instruction}") {
            return Err(err("field `prompt_no_input`: must contain {instruction}".into()));
        }
        Ok(t)
    }

    /// The prompt for a record: the with-input variant when `input` is non-empty.
    pub fn prompt(&self, instruction: &str, input: &str) -> String {
        // One pass over the template, so braces inside the instruction are never re-expanded.
        let tpl = if input.is_empty() { &self.prompt_no_input } else { &self.prompt_input };
        let mut out = String::with_capacity(tpl.len() + instruction.len() + input.len());
        let mut rest = tpl.as_str();
        while let Some(i) = rest.find('{') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(t) = tail.strip_prefix("{instruction}") {
                out.push_str(instruction);
                rest = t;
            } else if let Some(t) = tail.strip_prefix("{input}") {
                out.push_str(input);
                rest = t;
            } else {
                out.push('{');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn okapi_template_verbatim() {
        let t = PromptTemplate::okapi();
        assert_eq!(
            t.prompt("Say hi", ""),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nSay hi\n\n### Response:\n"
        );
        assert_eq!(
            t.prompt("Translate", "xin chào {input}"),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate\n\n### Input:\nxin chào {input}\n\n### Response:\n"
        );
    }
}
