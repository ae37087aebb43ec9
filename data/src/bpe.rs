//! Training a byte-level BPE tokenizer (`okapi-train tokenizer`): GPT-2-style byte-level
//! pre-tokenization (every script and every byte representable), special tokens
//! `<unk> <s> </s> <pad>` with ids 0–3, and a post-processor that adds BOS like LLaMA's.

use crate::records::DataError;
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

pub const SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];

/// The largest vocabulary `train_bpe` makes (16× the largest published ones, ~256k): the
/// trainer reserves room for the whole vocabulary up front.
pub const MAX_VOCAB: usize = 1 << 22;

/// Trains on `texts` up to `vocab_size` tokens (specials and the 256 byte symbols included).
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer, DataError> {
    let min = SPECIAL_TOKENS.len() + 256;
    if vocab_size < min {
        return Err(DataError::Tokenizer(format!("--vocab-size {vocab_size} is too small: byte-level BPE needs at least {min} (4 special tokens + 256 bytes)")));
    }
    if vocab_size > MAX_VOCAB {
        return Err(DataError::Tokenizer(format!("--vocab-size {vocab_size}: at most {MAX_VOCAB}")));
    }
    let err = |e: tokenizers::Error| DataError::Tokenizer(format!("tokenizer training failed: {e}"));
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter()).map_err(err)?;
    let bos = tok.token_to_id("<s>").expect("special token added by the trainer");
    let post = TemplateProcessing::builder()
        .try_single("<s> $A")
        .and_then(|b| b.try_pair("<s> $A <s> $B"))
        .map_err(|e| DataError::Tokenizer(format!("post-processor: {e}")))?
        .special_tokens(vec![("<s>", bos)])
        .build()
        .map_err(|e| DataError::Tokenizer(format!("post-processor: {e}")))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// Writes the tokenizer as `tokenizer.json` (temporary file + rename).
pub fn save_tokenizer(tok: &tokenizers::Tokenizer, path: &Path) -> Result<(), DataError> {
    let json = tok.to_string(true).map_err(|e| DataError::Tokenizer(format!("serializing tokenizer: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|source| DataError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}
