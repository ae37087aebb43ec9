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
        let parsed = guarded(|| text.parse::<tokenizers::Tokenizer>()).map_err(|panic| err(format!("malformed tokenizer.json ({panic})")))?;
        let inner = parsed.map_err(|e| err(e.to_string()))?;
        Ok(Tokenizer { inner, path: file.to_path_buf() })
    }

    /// Token ids of `text`; `special` adds what the post-processor adds (BOS for LLaMA-style).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>, DataError> {
        let fail = |msg: String| DataError::Tokenizer(one_line(format!("{}: encoding failed: {msg}", self.path.display())));
        // a file the crate loads can still make it panic here (a template naming a special
        // token the file does not define): an error naming the file, as for a bad file
        let enc = guarded(|| self.inner.encode(text, special)).map_err(fail)?.map_err(|e| fail(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, DataError> {
        let fail = |msg: String| DataError::Tokenizer(one_line(format!("{}: decoding failed: {msg}", self.path.display())));
        guarded(|| self.inner.decode(ids, skip_special)).map_err(fail)?.map_err(|e| fail(e.to_string()))
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

    /// One more than the largest token id (ids need not be dense): a model's embedding must have
    /// at least this many rows.
    pub fn id_bound(&self) -> usize {
        self.inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }

    /// Refuses a model whose vocabulary (`vocab_size` of `config`) cannot embed every id of
    /// this tokenizer: the two do not belong together, and training or scoring would read
    /// embeddings that are not there.
    pub fn check_fits(&self, vocab_size: usize, config: &Path) -> Result<(), DataError> {
        let bound = self.id_bound();
        if bound > vocab_size {
            return Err(DataError::File { path: self.path.clone(), msg: format!("token ids go up to {}, but {} has vocab_size {vocab_size}: the tokenizer and the model do not match", bound - 1, config.display()) });
        }
        Ok(())
    }

    /// The first of `names` the vocabulary holds, with its id.
    pub fn find_token<'a>(&self, names: &[&'a str]) -> Option<(&'a str, u32)> {
        names.iter().find_map(|n| self.token_to_id(n).map(|id| (*n, id)))
    }
}

/// End-of-sequence tokens by the names the common tokenizer families give them (okapi's and
/// LLaMA 1/2's, GPT-2's and BLOOM's, LLaMA 3's, Gemma's, ChatML's).
pub const EOS_NAMES: [&str; 5] = ["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"];
/// Beginning-of-sequence tokens (okapi's and LLaMA 1/2's, LLaMA 3's, Gemma's).
pub const BOS_NAMES: [&str; 3] = ["<s>", "<|begin_of_text|>", "<bos>"];
/// Padding tokens.
pub const PAD_NAMES: [&str; 3] = ["<pad>", "<|pad|>", "[PAD]"];

thread_local! {
    /// Whether this thread is inside [`guarded`]: a panic there is caught and reported.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic on this thread now would be caught and reported as an error (a call into the
/// tokenizers crate): a program's panic hook stays quiet then, so the user sees one error line.
pub fn panic_is_caught() -> bool {
    GUARDED.with(std::cell::Cell::get)
}

/// Runs `f`, turning a panic into what it said ("the tokenizers crate failed: …").
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.map_err(|panic| {
        let what = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("no message");
        format!("the tokenizers crate failed: {what}")
    })
}
