//! The model's `tokenizer.json`, loaded with the `tokenizers` crate.

use crate::records::DataError;
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
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| DataError::File { path: file.clone(), msg: format!("cannot load tokenizer: {e}") })?;
        Ok(Tokenizer { inner, path: file })
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
