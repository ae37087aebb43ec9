//! Tokenizing instruction records into training examples and collating batches: the prompt
//! (template) encoded with the tokenizer's special tokens, the response without, then EOS; cut at
//! `max_len` from the right; loss on the response only unless `mask_prompt` is off.

use crate::instruct::InstructRecord;
use crate::records::DataError;
use crate::template::PromptTemplate;
use crate::tokenizer::Tokenizer;

/// HF's ignore label.
pub const IGNORE_LABEL: i64 = -100;

/// One tokenized example: ids and HF-style labels (same positions; −100 = no loss).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
    /// prompt tokens before truncation (for messages and statistics)
    pub prompt_len: usize,
}

#[derive(Clone, Debug)]
pub struct SftEncoding {
    pub max_len: usize,
    /// loss on response tokens only (default); false = Okapi's original whole-sequence loss
    pub mask_prompt: bool,
    pub eos: u32,
}

/// prompt = template encoded with special tokens (BOS for LLaMA-style tokenizers); response
/// encoded without, then EOS; concatenated and cut at `max_len` from the right. `None` when the
/// prompt alone fills `max_len` (no response token would remain): the caller skips and counts.
pub fn encode_example(tok: &Tokenizer, tpl: &PromptTemplate, rec: &InstructRecord, enc: &SftEncoding) -> Result<Option<Example>, DataError> {
    encode_text(tok, &tpl.prompt(&rec.instruction, &rec.input), &rec.output, enc)
}

/// As [`encode_example`] for a prompt that is already text (TRL's standard format).
pub fn encode_text(tok: &Tokenizer, prompt: &str, response: &str, enc: &SftEncoding) -> Result<Option<Example>, DataError> {
    let prompt = tok.encode(prompt, true)?;
    if prompt.len() >= enc.max_len {
        return Ok(None);
    }
    let mut response = tok.encode(response, false)?;
    response.push(enc.eos);
    let mut ids = prompt.clone();
    ids.extend_from_slice(&response);
    ids.truncate(enc.max_len);
    let labels = ids.iter().enumerate().map(|(i, &id)| if enc.mask_prompt && i < prompt.len() { IGNORE_LABEL } else { id as i64 }).collect();
    Ok(Some(Example { ids, labels, prompt_len: prompt.len() }))
}

/// A right-padded batch: (b, t) ids and labels, row-major; labels of padding are −100.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub b: usize,
    pub t: usize,
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Batch {
    /// Number of loss targets (labels ≠ −100 after the shift, i.e. excluding each row's first).
    pub fn n_targets(&self) -> usize {
        (0..self.b).map(|r| self.labels[r * self.t + 1..(r + 1) * self.t].iter().filter(|&&l| l != IGNORE_LABEL).count()).sum()
    }
    pub fn n_tokens(&self) -> usize {
        self.b * self.t
    }
}

/// Right-pads examples to the longest one.
pub fn collate(examples: &[&Example], pad: u32) -> Batch {
    let b = examples.len();
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(1);
    let mut ids = vec![pad; b * t];
    let mut labels = vec![IGNORE_LABEL; b * t];
    for (r, e) in examples.iter().enumerate() {
        ids[r * t..r * t + e.ids.len()].copy_from_slice(&e.ids);
        labels[r * t..r * t + e.labels.len()].copy_from_slice(&e.labels);
    }
    Batch { b, t, ids, labels }
}
