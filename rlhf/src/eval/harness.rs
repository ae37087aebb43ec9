//! Which lm-evaluation-harness the numbers reproduce (`--harness v0.3|v0.4`), and how each turns
//! a (context, continuation) pair into tokens. docs/eval-harness-versions.md lists every
//! difference with the harness source it was read from.
//!
//! - [`Harness::V03`] (the default): the v0.3-era fork Okapi used — context and continuation
//!   encoded separately without special tokens, an empty context becomes `[eos]`, the window
//!   is `max_position_embeddings` (2048 without one).
//! - [`Harness::V04`]: lm-evaluation-harness 0.4.13's `HFLM` (read from the released package):
//!   - special tokens (`HFLM.tok_encode`, `add_bos_token=None`): the tokenizer's default,
//!     i.e. its post-processor (BOS for LLaMA / Gemma / Mistral tokenizers, nothing for
//!     GPT-2 / BLOOM / Qwen ones), except for a text that already starts with the prefix
//!     token's text, encoded without;
//!   - a pair (`TemplateLM._encode_pair`): the context's trailing whitespace (Python's
//!     `str.rstrip`) moves to the front of the continuation, then whole = encode(context +
//!     continuation), context_enc = encode(context), continuation_enc = whole\[len(context_enc)..\];
//!   - an empty context (`TemplateLM.loglikelihood`): the continuation encoded without special
//!     tokens after `[prefix]`, prefix = the tokenizer's BOS (`bos_token` of
//!     tokenizer_config.json), else its EOS (`HFLM.prefix_token_id`); a continuation that
//!     already opens with the prefix token gives that token as the context (the same
//!     context, one token less to score);
//!   - the window (`resolve_max_length`): the config's position limit, else the tokenizer's
//!     `model_max_length` unless unset ("infinite"), else 2048.
//!
//! Both then score `(context_enc + continuation_enc)[-(window+1):][:-1]` the same way.

use super::prompts::py_rstrip;
use crate::loglik::ScoreError;
use okapi_data::{DataError, Tokenizer};
use okapi_model::ModelConfig;
use serde_json::Value;

/// The harness version whose semantics a run reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Harness {
    #[default]
    V03,
    V04,
}

impl Harness {
    pub fn parse(s: &str) -> Result<Harness, String> {
        match s {
            "v0.3" | "0.3" | "v03" => Ok(Harness::V03),
            "v0.4" | "0.4" | "v04" => Ok(Harness::V04),
            other => Err(format!("unknown harness `{other}` (expected v0.3 or v0.4)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Harness::V03 => "v0.3",
            Harness::V04 => "v0.4",
        }
    }

    /// The seed of the shots' `random.Random` when none is given: Okapi's 42 (the v0.3
    /// evaluator's), or 0.4's `fewshot_random_seed` default 1234 (lm_eval/defaults.py).
    pub fn default_seed(self) -> u64 {
        match self {
            Harness::V03 => 42,
            Harness::V04 => 1234,
        }
    }

    /// The MMLU template when none is given: v0.4 defines Okapi's m_mmlu with letters and the
    /// first k shots (lm_eval/tasks/okapi/mmlu_multilingual/_default_yaml).
    pub fn default_mmlu_prompt(self) -> super::MmluPrompt {
        match self {
            Harness::V03 => super::MmluPrompt::V03,
            Harness::V04 => super::MmluPrompt::OkapiV04,
        }
    }
}

/// How a model's (context, continuation) pairs become token ids under one harness.
#[derive(Clone, Debug)]
pub struct PairEncoder {
    pub harness: Harness,
    /// v0.3: the EOS that stands for an empty context; v0.4: the prefix token (BOS, else EOS)
    pub prefix: u32,
    /// v0.4: the prefix token's text; a text starting with it gets no special tokens
    prefix_text: String,
    /// the window: at most `max_length` input positions
    pub max_length: usize,
}

/// `tokenizer_config.json` beside the tokenizer (Null when there is none or it is unreadable:
/// transformers then has no special tokens from it either).
fn tokenizer_config(tok: &Tokenizer) -> Value {
    let Some(dir) = tok.path.parent() else { return Value::Null };
    std::fs::read_to_string(dir.join("tokenizer_config.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null)
}

/// The id of a special token named in tokenizer_config.json (a string or an AddedToken object).
fn special_id(tok: &Tokenizer, cfg: &Value, key: &str) -> Option<u32> {
    let v = &cfg[key];
    let name = v.as_str().or_else(|| v["content"].as_str())?;
    tok.token_to_id(name)
}

impl PairEncoder {
    pub fn new(harness: Harness, cfg: &ModelConfig, tok: &Tokenizer) -> Result<PairEncoder, ScoreError> {
        match harness {
            Harness::V03 => Self::v03(cfg),
            Harness::V04 => Self::v04(cfg, tok),
        }
    }

    /// The v0.3 encoder (the default): the model's `eos_token_id` is needed for empty contexts.
    pub fn v03(cfg: &ModelConfig) -> Result<PairEncoder, ScoreError> {
        let eos = cfg.eos_token_id.ok_or_else(|| ScoreError::Other(format!("{}: `eos_token_id` is needed to score an empty context", cfg.path.display())))?;
        Ok(PairEncoder { harness: Harness::V03, prefix: eos, prefix_text: String::new(), max_length: cfg.max_length() })
    }

    fn v04(cfg: &ModelConfig, tok: &Tokenizer) -> Result<PairEncoder, ScoreError> {
        let tc = tokenizer_config(tok);
        let prefix = special_id(tok, &tc, "bos_token").or_else(|| special_id(tok, &tc, "eos_token")).or(cfg.eos_token_id);
        let prefix = prefix.ok_or_else(|| ScoreError::Other(format!("{}: no bos_token or eos_token in tokenizer_config.json and no `eos_token_id`: harness v0.4 needs one to score an empty context", cfg.path.display())))?;
        let prefix_text = tok.decode(&[prefix], false)?;
        // an unset model_max_length is transformers' 1e30 ("infinite")
        let tok_max = tc["model_max_length"].as_f64().filter(|m| *m >= 1.0 && *m < 1e18).map(|m| m as usize);
        let max_length = cfg.max_positions.or(tok_max).unwrap_or(2048);
        Ok(PairEncoder { harness: Harness::V04, prefix, prefix_text, max_length })
    }

    /// v0.4's `tok_encode` without an explicit choice: the tokenizer's special tokens unless the
    /// text already starts with the prefix token's text.
    fn encode_default(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>, DataError> {
        tok.encode(text, !text.starts_with(&self.prefix_text))
    }

    /// The (context, continuation) token ids of one request.
    pub fn pair(&self, tok: &Tokenizer, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>), DataError> {
        let t = self.item(tok, context, &[continuation.to_string()])?;
        Ok((t.ctx, t.conts.into_iter().next().unwrap_or_default()))
    }

    /// The tokens of an item's requests: one context, several continuations (the context is
    /// encoded once).
    pub fn item(&self, tok: &Tokenizer, context: &str, conts: &[String]) -> Result<ItemTokens, DataError> {
        match self.harness {
            Harness::V03 => {
                let ctx = if context.is_empty() { vec![self.prefix] } else { tok.encode(context, false)? };
                let conts = conts.iter().map(|c| tok.encode(c, false)).collect::<Result<_, _>>()?;
                Ok(ItemTokens { ctx, conts })
            }
            Harness::V04 if context.is_empty() => {
                let mut out = Vec::with_capacity(conts.len());
                for c in conts {
                    let mut ids = tok.encode(c, false)?;
                    // a continuation that already opens with the prefix token supplies the
                    // context itself: the same [prefix], and one token less to score
                    if ids.first() == Some(&self.prefix) {
                        ids.remove(0);
                    }
                    out.push(ids);
                }
                Ok(ItemTokens { ctx: vec![self.prefix], conts: out })
            }
            Harness::V04 => {
                let kept = py_rstrip(context);
                let moved = &context[kept.len()..];
                let ctx = self.encode_default(tok, kept)?;
                let mut out = Vec::with_capacity(conts.len());
                for c in conts {
                    let whole = self.encode_default(tok, &format!("{kept}{moved}{c}"))?;
                    // the joined text's tokens past the context's length (none when it encodes
                    // shorter: an empty continuation, which the scorer refuses)
                    out.push(whole.get(ctx.len()..).unwrap_or_default().to_vec());
                }
                Ok(ItemTokens { ctx, conts: out })
            }
        }
    }
}

/// One item's tokens: the context's (shared by its continuations under either harness) and
/// each continuation's.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemTokens {
    pub ctx: Vec<u32>,
    pub conts: Vec<Vec<u32>>,
}

impl ItemTokens {
    /// Whether some (context, continuation) exceeds a window of `max_len` positions.
    pub fn over(&self, max_len: usize) -> bool {
        self.conts.iter().any(|c| self.ctx.len() + c.len() > max_len + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_defaults() {
        assert_eq!(Harness::parse("v0.4").unwrap(), Harness::V04);
        assert_eq!(Harness::parse("v0.3").unwrap().name(), "v0.3");
        assert!(Harness::parse("v0.5").unwrap_err().contains("expected v0.3 or v0.4"));
        assert_eq!((Harness::V03.default_seed(), Harness::V04.default_seed()), (42, 1234));
    }
}
