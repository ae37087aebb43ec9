//! The model's `tokenizer.json`, loaded with the `tokenizers` crate.

use crate::records::{one_line, DataError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
}

impl Tokenizer {
    /// Loads `tokenizer.json` from a model directory (or a direct path to the file).
    pub fn load(path: &Path) -> Result<Tokenizer, DataError> {
        if !path.exists() {
            return Err(DataError::File { path: path.to_path_buf(), msg: "model directory not found (expected a directory with config.json, safetensors weights and tokenizer.json, or a tokenizer.json file)".into() });
        }
        let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
        if !file.exists() {
            return Err(DataError::File { path: file, msg: "tokenizer.json not found (every okapi model directory carries one)".into() });
        }
        // as tokenizers' `from_file`: the text, then its JSON (same messages)
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::File { path: file.clone(), msg: format!("cannot load tokenizer: {e}") })?;
        Self::from_json(&text, &file)
    }

    /// A tokenizer from the text of its `tokenizer.json` (`file` names it in errors).
    pub fn from_json(text: &str, file: &Path) -> Result<Tokenizer, DataError> {
        let err = |msg: String| DataError::File { path: file.to_path_buf(), msg: one_line(format!("cannot load tokenizer: {msg}")) };
        // tokenizers 0.22 panics on some malformed files (`expect` in the decoder's and the
        // normalizer's deserializers): a panic here is a bad file, said as an error
        let parsed = catch_unwind(|| text.parse::<tokenizers::Tokenizer>()).map_err(|panic| err(format!("malformed tokenizer.json ({})", panic_text(panic))))?;
        let inner = parsed.map_err(|e| err(e.to_string()))?;
        Ok(Tokenizer { inner, path: file.to_path_buf() })
    }

    /// Token ids of `text`; `special` adds what the post-processor adds (BOS for LLaMA-style).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, DataError> {
        let fail = |msg: String| DataError::Tokenizer(one_line(format!("{}: encoding failed: {msg}", self.path.display())));
        // a file the crate loads can still make it panic here (a template naming a special
        // token the file does not define): an error naming the file, as for a bad file
        let enc = catch_unwind(AssertUnwindSafe(|| self.inner.encode(text, special))).map_err(|panic| fail(panic_text(panic)))?.map_err(|e| fail(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        let fail = |msg: String| DataError::Tokenizer(one_line(format!("{}: decoding failed: {msg}", self.path.display())));
        catch_unwind(AssertUnwindSafe(|| self.inner.decode(ids, skip_special))).map_err(|panic| fail(panic_text(panic)))?.map_err(|e| fail(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// What a panic of the tokenizers crate said.
fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    let what = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("no message");
    format!("the tokenizers crate panicked: {what}")
}
