//! The model's `tokenizer.json`, loaded with the `tokenizers` crate.

use crate::records::{one_line, DataError};
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
        let err = |msg: String| DataError::File { path: file.to_path_buf(), msg };
        // tokenizers 0.22 panics on some malformed files (`expect` in the decoder's and the
        // normalizer's deserializers): a panic here is a bad file, said as an error
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>()).map_err(|panic| {
            let what = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("unknown error");
            err(one_line(format!("cannot load tokenizer: malformed tokenizer.json ({what})")))
        })?;
        let inner = parsed.map_err(|e| err(one_line(format!("cannot load tokenizer: {e}"))))?;
        Ok(Tokenizer { inner, path: file.to_path_buf() })
    }

    /// Token ids of `text`; `special` adds what the post-processor adds (BOS for LLaMA-style).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, DataError> {
        let enc = self.inner.encode(text, special).map_err(|e| DataError::Tokenizer(format!("{}: encoding failed: {e}", self.path.display())))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        self.inner.decode(ids, skip_special).map_err(|e| DataError::Tokenizer(format!("{}: decoding failed: {e}", self.path.display())))
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
