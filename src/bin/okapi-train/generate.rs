//! `okapi-train generate`: one response to an instruction (and optional input) in Okapi's prompt
//! template, sampled with the KV cache. Defaults are Okapi's chat settings (alpaca-lora's
//! `evaluate`): temperature 0.1, top-p 0.75, top-k 40, 256 new tokens. Those also set
//! `num_beams=4`; beam search is not implemented here — this command samples (temperature 0 is
//! greedy decoding).
//!
//! A prompt that, with `--max-new-tokens`, would not fit a LLaMA model's
//! `max_position_embeddings` is left-truncated (BOS kept) to the larger of the room that leaves
//! and half the window, with a warning on stderr; the response stops at the position limit.
//! Only the response is printed on stdout (special tokens skipped, EOS stripped).
//!
//! `--template chat` puts the instruction (and input) as the user's message into the model's
//! chat template with the generation prompt, tokenized as `apply_chat_template` does; the
//! template's `eos_token` (its end of turn) then ends the response.

use okapi_data::{okapi_user_message, Message, Tokenizer};
use okapi_model::memory::{kv_cache_bytes, weights_bytes, Need};
use okapi_rlhf::{generate, Sampling};
use okapi_runtime::{Backend, BackendKind};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json)
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) applied to the model
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The instruction (Okapi's prompt template)
    #[arg(long)]
    pub instruction: String,
    /// Optional input giving further context (selects the template's with-input variant)
    #[arg(long, default_value = "")]
    pub input: String,
    /// `okapi` (Okapi's prompt template), `chat` (the model's chat template) or a prompt
    /// template file (alpaca-lora JSON) [default: okapi]
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Sampling temperature; 0 = greedy decoding
    #[arg(long, default_value_t = 0.1)]
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 = off
    #[arg(long, default_value_t = 0.75)]
    pub top_p: f32,
    /// Sample among the k most likely tokens; 0 = off
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// At most this many new tokens (fewer when the model's max_position_embeddings is reached)
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Random seed of the sampler
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
}

pub fn run(a: GenerateArgs) -> Result<(), String> {
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &GenerateArgs) -> Result<(), String> {
    let s = Sampling { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, max_new_tokens: a.max_new_tokens, seed: a.seed };
    s.validate()?;
    if s.max_new_tokens == 0 {
        return Err("--max-new-tokens 0: must be at least 1".into());
    }
    let tok = Tokenizer::load(&a.model).map_err(|e| e.to_string())?;
    let model_cfg = okapi_model::ModelConfig::load(&a.model).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    let (mut ids, template_eos) = prompt_ids(a, &tok)?;
    // generation stops at a LLaMA's position limit; BLOOM's is the budget
    let cap = ids.len().saturating_add(a.max_new_tokens).min(model_cfg.max_positions.unwrap_or(usize::MAX));
    let need = Need::new("generate", "lower --max-new-tokens").device("weights", weights_bytes(&model_cfg)).device("KV cache", kv_cache_bytes(&model_cfg, 1, cap, ids.len()));
    need.check(&be).map_err(|e| e.to_string())?;
    let device = be.name();
    let model = super::lora_flags::load_with_adapter(be, &a.model, a.adapter.as_deref())?;
    eprintln!("okapi-train generate: {} ({} params) on {device}, prompt of {} tokens", a.model.display(), model.n_params(), ids.len());
    if let Some(mp) = model.cfg.max_positions {
        let n = ids.len();
        if let Some(kept) = truncate_prompt(&mut ids, mp, a.max_new_tokens, model.cfg.bos_token_id) {
            eprintln!("okapi-train generate: warning: the prompt ({n} tokens) and --max-new-tokens {} exceed max_position_embeddings {mp}: kept its last {kept} tokens", a.max_new_tokens);
        }
    }
    let eos = template_eos.or(model.cfg.eos_token_id);
    let mut g = generate(&model, &[ids], &s, eos).map_err(|e| e.to_string())?.remove(0);
    if g.finished {
        g.tokens.pop();
    }
    let text = tok.decode(&g.tokens, true).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

/// The prompt's ids in `--template`'s format, and with the chat template its end-of-turn id.
fn prompt_ids(a: &GenerateArgs, tok: &Tokenizer) -> Result<(Vec<u32>, Option<u32>), String> {
    // `chat` is the only way a generation uses the chat template: an instruction is not a conversation
    let explicit = a.template.as_deref().or(Some(std::path::Path::new("okapi")));
    let format = super::train_flags::record_format(explicit, &a.model)?;
    match format.chat.as_ref().filter(|_| format.instruct_as_chat) {
        Some(chat) => {
            let messages = [Message::new("user", &okapi_user_message(&a.instruction, &a.input))];
            let ids = chat.encode(tok, &messages, true).map_err(|e| e.to_string())?;
            Ok((ids, chat.special_token("eos_token").and_then(|t| tok.token_to_id(t))))
        }
        None => Ok((tok.encode(&format.prompt.prompt(&a.instruction, &a.input), true).map_err(|e| e.to_string())?, None)),
    }
}

/// Left-truncates a prompt that, with `max_new` new tokens, would not fit `max_positions`: keeps
/// its last `max(max_positions − max_new, max_positions / 2)` tokens (the end of the template,
/// "### Response:", matters most), BOS first if it started with one. Returns the kept count when
/// it truncated. The response then gets the room left (generation stops at `max_positions`).
fn truncate_prompt(ids: &mut Vec<u32>, max_positions: usize, max_new: usize, bos: Option<u32>) -> Option<usize> {
    let n = ids.len();
    if n + max_new <= max_positions {
        return None;
    }
    let keep = max_positions.saturating_sub(max_new).max(max_positions / 2).max(1);
    if keep >= n {
        return None;
    }
    let lead = usize::from(bos.is_some() && ids.first().copied() == bos && keep > 1);
    let tail = ids.split_off(n - (keep - lead));
    ids.truncate(lead);
    ids.extend(tail);
    Some(ids.len())
}

#[cfg(test)]
mod tests {
    use super::truncate_prompt;

    #[test]
    fn truncation_keeps_bos_and_the_end() {
        let mut ids: Vec<u32> = (1..=120).collect();
        assert_eq!(truncate_prompt(&mut ids, 64, 8, Some(1)), Some(56));
        assert_eq!(ids[0], 1);
        assert_eq!(ids[1..], (66..=120).collect::<Vec<u32>>()[..]);
        // a long response still leaves half the window to the prompt
        let mut ids: Vec<u32> = (1..=120).collect();
        assert_eq!(truncate_prompt(&mut ids, 64, 256, Some(7)), Some(32));
        assert_eq!(ids, (89..=120).collect::<Vec<u32>>());
        // fits: untouched (even when the response will be cut by the limit)
        let mut ids: Vec<u32> = (1..=10).collect();
        assert_eq!(truncate_prompt(&mut ids, 64, 60, Some(1)), None);
        assert_eq!(truncate_prompt(&mut ids, 64, 20, Some(1)), None);
        assert_eq!(ids.len(), 10);
    }
}
