//! `okapi-train ppo`: PPO against a reward model (Okapi's RLHF stage). Every setting flag is
//! optional: unset, it takes okapi-train's default or, with `--recipe okapi`, Okapi's value
//! (okapi-rlhf's `PpoConfig::defaults` / `PpoConfig::okapi`).

use super::outdir;
use super::train_flags::{annotate_arg, f32_value, parse_betas, MemoryFlags, Recipe};
use okapi_data::{load_instructions, okapi_user_message, Message, Tokenizer};
use okapi_model::memory::Need;
use okapi_model::{DType, Model, ModelConfig};
use okapi_rlhf::ppo::{add_value_head, encode_prompt, fit_prompt, Critic, KlControl, LossNorm, PpoIo, PromptEncoding, ValueHeadKind, WhitenScope};
use okapi_rlhf::{run_ppo, AdamWConfig, PpoConfig, PpoModels, TrainError};
use okapi_runtime::{Backend, BackendKind};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct PpoArgs {
    /// The SFT policy to tune (also the frozen reference)
    #[arg(long)]
    pub policy: PathBuf,
    /// The reward model (okapi-train reward's output)
    #[arg(long)]
    pub reward: PathBuf,
    /// RL prompt files, directories or globs: Okapi instruction records (instruction, input;
    /// output ignored)
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// Settings of the flags left unset: default (okapi-train's) or okapi (Okapi's published run)
    #[arg(long, value_enum, default_value_t = Recipe::Default)]
    pub recipe: Recipe,
    /// PPO iterations (rollouts + update)
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Rollouts per iteration
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Sequences generated and scored at once
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Passes over each iteration's rollouts
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// Rollouts per optimizer step
    #[arg(long)]
    pub ppo_batch_size: Option<usize>,
    /// Sampling temperature
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass (1: off)
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Top-k sampling (0: off)
    #[arg(long)]
    pub top_k: Option<usize>,
    /// New tokens per response at most
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Prompts longer than this many tokens are skipped or left-truncated (--prompt-encoding)
    #[arg(long)]
    pub max_prompt_len: Option<usize>,
    /// bos-skip: prompts with special tokens (BOS), longer ones skipped; trlx: without special
    /// tokens, longer ones left-truncated (trlx's PromptPipeline)
    #[arg(long)]
    pub prompt_encoding: Option<String>,
    /// The value head on the policy's trunk: linear (Linear(C, 1)) or mlp (trlx's Linear(C, 2C)
    /// → ReLU → Linear(2C, 1))
    #[arg(long)]
    pub value_head: Option<String>,
    /// Whiten advantages over the whole batch once, or over each minibatch (trlx)
    #[arg(long)]
    pub whiten: Option<String>,
    /// token: the token mean of a minibatch; sequence: each sequence's token mean, averaged (trlx)
    #[arg(long)]
    pub loss_norm: Option<String>,
    /// response-k1: β moves once per iteration on the response's log-ratio; trlx: after every
    /// PPO epoch on trlx's k3 estimate over prompt and response
    #[arg(long)]
    pub kl_control: Option<String>,
    /// With --unfrozen-layers, train BLOOM's word_embeddings_layernorm too (trlx): true or false
    #[arg(long)]
    pub train_embedding_norm: Option<bool>,
    /// Initial KL coefficient β₀
    #[arg(long)]
    pub init_kl_coef: Option<f64>,
    /// Target KL of the adaptive controller, or `none` for a fixed β
    #[arg(long)]
    pub kl_target: Option<String>,
    /// Horizon of the adaptive KL controller
    #[arg(long)]
    pub kl_horizon: Option<f64>,
    /// Discount γ
    #[arg(long)]
    pub gamma: Option<f64>,
    /// GAE λ
    #[arg(long)]
    pub lam: Option<f64>,
    /// Policy ratio clip range
    #[arg(long)]
    pub cliprange: Option<f64>,
    /// Value clip range
    #[arg(long)]
    pub cliprange_value: Option<f64>,
    /// Weight of the value loss
    #[arg(long)]
    pub vf_coef: Option<f64>,
    /// Scores are clipped to ±this
    #[arg(long)]
    pub reward_clip: Option<f32>,
    /// Learning rate
    #[arg(long)]
    pub lr: Option<f64>,
    /// AdamW's B1,B2
    #[arg(long)]
    pub adam_betas: Option<String>,
    /// AdamW's epsilon
    #[arg(long)]
    pub adam_eps: Option<f32>,
    /// Decoupled weight decay, on tensors with ≥ 2 dims only
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Clip the global gradient norm (0 = no clipping)
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Train only the top N blocks, the final norm, the value head
    #[arg(long)]
    pub unfrozen_layers: Option<usize>,
    /// shared: a value head on the policy's trunk (default); separate: a critic from the reward model
    #[arg(long, default_value = "shared")]
    pub critic: String,
    /// Score with a reward model whose tokenizer differs from the policy's by re-tokenizing text
    #[arg(long)]
    pub retokenize: bool,
    /// Only these languages, e.g. vi,ar,hi
    #[arg(long)]
    pub langs: Option<String>,
    /// How prompts become text: `okapi` (Okapi's template), `chat` (the instruction and input
    /// as the user's message in the policy's chat template, with its generation prompt) or a
    /// prompt template file (alpaca-lora JSON) [default: okapi]
    #[arg(long)]
    pub template: Option<PathBuf>,
    /// Seed of the prompt order, the samples and the value head
    #[arg(long)]
    pub seed: Option<u64>,
    /// Checkpoint every N iterations into OUT/checkpoint
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Continue a run from OUT (or OUT/checkpoint) exactly where its last checkpoint stopped
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Replace the run already in OUT (its files are removed once this run's inputs are read)
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Run even when the memory plan says the run does not fit (printed as a warning)
    #[arg(long)]
    pub force: bool,
    /// With --unfrozen-layers N: hydra (trlx's: the reference keeps only the top N blocks and
    /// the head, and runs on the policy's frozen trunk, computed once) or full (a whole copy)
    #[arg(long, default_value = "hydra")]
    pub reference: String,
    #[command(flatten)]
    pub memory: MemoryFlags,
    /// LoRA on the policy: the reference is its base with the adapters off (--reference hydra),
    /// or a separate copy of the base (--reference full)
    #[command(flatten)]
    pub lora: super::lora_flags::LoraFlags,
    /// Write a few samples to samples.jsonl every N iterations
    #[arg(long)]
    pub samples_every: Option<u64>,
    /// dtype of the saved policy: f32, bf16 or f16 (default: the input checkpoint's)
    #[arg(long)]
    pub save_dtype: Option<String>,
    /// Print a progress line every N iterations
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Also write each iteration's metrics (TensorBoard scalars) and samples (text) into DIR
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Data-parallel runs: 1 shards the AdamW moments of the policy (and of a separate critic)
    /// over the ranks (each steps its share of the tensors; the same numbers as 0); 2 also their
    /// blocks' gradients, reduced to their owners as the backward runs (every minibatch must
    /// give each rank rollouts)
    #[arg(long, default_value_t = 0)]
    pub zero: u8,
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

fn base(recipe: Recipe) -> PpoConfig {
    match recipe {
        Recipe::Default => PpoConfig::defaults(),
        Recipe::Okapi => PpoConfig::okapi(),
    }
}

impl PpoArgs {
    /// The recipe with every flag that is set applied over it, each validated.
    fn resolve(&self) -> Result<PpoConfig, String> {
        let r = base(self.recipe);
        let mut c = PpoConfig {
            iterations: self.iterations.unwrap_or(r.iterations),
            rollouts: self.rollouts.unwrap_or(r.rollouts),
            chunk_size: self.chunk_size.unwrap_or(r.chunk_size),
            ppo_epochs: self.ppo_epochs.unwrap_or(r.ppo_epochs),
            minibatch: self.ppo_batch_size.unwrap_or(r.minibatch),
            max_prompt_len: self.max_prompt_len.unwrap_or(r.max_prompt_len),
            gamma: self.gamma.unwrap_or(r.gamma),
            lam: self.lam.unwrap_or(r.lam),
            reward_clip: self.reward_clip.unwrap_or(r.reward_clip),
            lr: self.lr.unwrap_or(r.lr),
            max_grad_norm: self.max_grad_norm.unwrap_or(r.max_grad_norm),
            // with LoRA the recipe's layer freezing gives way to the adapters (the flag does not)
            unfrozen_layers: self.unfrozen_layers.or(r.unfrozen_layers.filter(|_| !self.lora.requested())),
            seed: self.seed.unwrap_or(r.seed),
            save_every: self.save_every.or(r.save_every),
            resume: self.resume.clone(),
            samples_every: self.samples_every.unwrap_or(r.samples_every),
            save_dtype: self.save_dtype.as_deref().map(|s| DType::parse(s).ok_or_else(|| format!("--save-dtype {s}: expected f32, bf16 or f16"))).transpose()?,
            log_every: self.log_every.unwrap_or(r.log_every),
            zero: self.zero,
            ..r.clone()
        };
        let s = &mut c.sampling;
        (s.temperature, s.top_p, s.top_k, s.max_new_tokens) = (self.temperature.unwrap_or(s.temperature), self.top_p.unwrap_or(s.top_p), self.top_k.unwrap_or(s.top_k), self.max_new_tokens.unwrap_or(s.max_new_tokens));
        s.seed = c.seed;
        c.kl.beta = self.init_kl_coef.unwrap_or(r.kl.beta);
        c.kl.horizon = self.kl_horizon.unwrap_or(r.kl.horizon);
        c.kl.target = match self.kl_target.as_deref() {
            None => r.kl.target,
            Some("none") => None,
            Some(s) => Some(s.parse::<f64>().ok().filter(|t| t.is_finite() && *t > 0.0).ok_or_else(|| format!("--kl-target {s}: expected a positive number or `none`"))?),
        };
        c.loss.cliprange = self.cliprange.unwrap_or(r.loss.cliprange);
        c.loss.cliprange_value = self.cliprange_value.unwrap_or(r.loss.cliprange_value);
        c.loss.vf_coef = self.vf_coef.unwrap_or(r.loss.vf_coef);
        self.resolve_choices(&mut c, &r)?;
        let (beta1, beta2) = self.adam_betas.as_deref().map(parse_betas).transpose()?.unwrap_or((r.adam.beta1, r.adam.beta2));
        c.adam = AdamWConfig { beta1, beta2, eps: self.adam_eps.unwrap_or(r.adam.eps), weight_decay: self.weight_decay.unwrap_or(r.adam.weight_decay) };
        c.validate().map_err(err)?;
        Ok(c)
    }
}

impl PpoArgs {
    /// The trlx-or-okapi choices: each flag that is set, else the recipe's; the separate critic
    /// keeps the reward model's linear score head as its value head.
    fn resolve_choices(&self, c: &mut PpoConfig, r: &PpoConfig) -> Result<(), String> {
        c.prompt_encoding = self.prompt_encoding.as_deref().map(PromptEncoding::parse).transpose().map_err(err)?.unwrap_or(r.prompt_encoding);
        c.whiten = self.whiten.as_deref().map(WhitenScope::parse).transpose().map_err(err)?.unwrap_or(r.whiten);
        c.loss.norm = self.loss_norm.as_deref().map(LossNorm::parse).transpose().map_err(err)?.unwrap_or(r.loss.norm);
        c.kl_control = self.kl_control.as_deref().map(KlControl::parse).transpose().map_err(err)?.unwrap_or(r.kl_control);
        c.train_embedding_norm = self.train_embedding_norm.unwrap_or(r.train_embedding_norm);
        c.value_head = match (self.value_head.as_deref().map(ValueHeadKind::parse).transpose().map_err(err)?, self.critic.as_str()) {
            (Some(ValueHeadKind::Mlp), "separate") => return Err("--value-head mlp: the separate critic's value head is the reward model's linear score head (use --critic shared)".into()),
            (_, "separate") => ValueHeadKind::Linear,
            (v, _) => v.unwrap_or(r.value_head),
        };
        Ok(())
    }
}

/// The values `--help` shows, by argument id.
fn shown(c: &PpoConfig) -> Vec<(&'static str, String)> {
    vec![
        ("iterations", c.iterations.to_string()),
        ("rollouts", c.rollouts.to_string()),
        ("chunk_size", c.chunk_size.to_string()),
        ("ppo_epochs", c.ppo_epochs.to_string()),
        ("ppo_batch_size", c.minibatch.to_string()),
        ("temperature", c.sampling.temperature.to_string()),
        ("top_p", c.sampling.top_p.to_string()),
        ("top_k", c.sampling.top_k.to_string()),
        ("max_new_tokens", c.sampling.max_new_tokens.to_string()),
        ("max_prompt_len", c.max_prompt_len.to_string()),
        ("prompt_encoding", c.prompt_encoding.as_str().into()),
        ("value_head", c.value_head.as_str().into()),
        ("whiten", c.whiten.as_str().into()),
        ("loss_norm", c.loss.norm.as_str().into()),
        ("kl_control", c.kl_control.as_str().into()),
        ("train_embedding_norm", c.train_embedding_norm.to_string()),
        ("init_kl_coef", c.kl.beta.to_string()),
        ("kl_target", c.kl.target.map_or("none".into(), |t| t.to_string())),
        ("kl_horizon", c.kl.horizon.to_string()),
        ("gamma", c.gamma.to_string()),
        ("lam", c.lam.to_string()),
        ("cliprange", c.loss.cliprange.to_string()),
        ("cliprange_value", c.loss.cliprange_value.to_string()),
        ("vf_coef", c.loss.vf_coef.to_string()),
        ("reward_clip", c.reward_clip.to_string()),
        ("lr", format!("{:e}", c.lr)),
        ("adam_betas", format!("{},{}", c.adam.beta1, c.adam.beta2)),
        ("adam_eps", format!("{:e}", c.adam.eps)),
        ("weight_decay", c.adam.weight_decay.to_string()),
        ("max_grad_norm", c.max_grad_norm.to_string()),
        ("unfrozen_layers", c.unfrozen_layers.map_or("all".into(), |n| n.to_string())),
        ("seed", c.seed.to_string()),
        ("samples_every", c.samples_every.to_string()),
        ("log_every", c.log_every.to_string()),
    ]
}

/// `ppo --help` with each default and Okapi's value where it differs.
pub fn annotate(mut cmd: clap::Command) -> clap::Command {
    let okapi = shown(&PpoConfig::okapi());
    for ((id, d), (_, o)) in shown(&PpoConfig::defaults()).iter().zip(&okapi) {
        cmd = annotate_arg(cmd, id, d, Some(o));
    }
    cmd
}

pub fn run(mut a: PpoArgs) -> Result<(), String> {
    // the flags, then the prompt paths, before anything is loaded or written
    check_choices(&a)?;
    a.resolve()?;
    a.prompts = okapi_data::expand_data_paths("--prompts", &a.prompts)?;
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

/// The two tokenizers, refusing different ones unless `--retokenize`.
fn tokenizers(a: &PpoArgs) -> Result<(Tokenizer, Tokenizer, bool), String> {
    let tok = Tokenizer::load(&a.policy).map_err(err)?;
    let rm_tok = Tokenizer::load(&a.reward).map_err(err)?;
    // the same tokenizer: same vocabulary, merges, pre- and post-processing
    let same = tok.inner().to_string(false).ok() == rm_tok.inner().to_string(false).ok();
    if !same && !a.retokenize {
        return Err(format!("{}: the reward model's tokenizer differs from the policy's ({}): pass --retokenize to score responses by their text", rm_tok.path.display(), tok.path.display()));
    }
    if !same && a.critic == "separate" {
        return Err("--critic separate needs the reward model to share the policy's tokenizer (the critic reads the policy's tokens)".into());
    }
    Ok((tok, rm_tok, same))
}

/// The templated prompts that fit `policy`'s positions (skipped or left-truncated as
/// `--prompt-encoding` says), with the counts in one line.
fn load_prompts(a: &PpoArgs, cfg: &PpoConfig, tok: &Tokenizer, policy: &ModelConfig) -> Result<Vec<Vec<u32>>, String> {
    let langs = a.langs.as_deref().map(okapi_data::parse_langs).transpose()?;
    let (records, stats) = load_instructions(&a.prompts, langs.as_deref(), false).map_err(err)?;
    let format = super::train_flags::record_format(Some(a.template.as_deref().unwrap_or(Path::new("okapi"))), &a.policy)?;
    let chat = format.chat.as_ref().filter(|_| format.instruct_as_chat);
    let limit = policy.max_positions.map_or(cfg.max_prompt_len, |m| cfg.max_prompt_len.min(m.saturating_sub(1)));
    let (mut prompts, mut too_long) = (Vec::new(), 0);
    for r in &records {
        let (ids, cut) = match chat {
            // the template writes its own special tokens: the ids as apply_chat_template gives them
            Some(chat) => fit_prompt(chat.encode(tok, &[Message::new("user", &okapi_user_message(&r.instruction, &r.input))], true).map_err(|e| format!("{}: {e}", r.origin))?, cfg.prompt_encoding, limit),
            None => encode_prompt(tok, &format.prompt.prompt(&r.instruction, &r.input), cfg.prompt_encoding, limit).map_err(|e| format!("{}: {e}", r.origin))?,
        };
        too_long += usize::from(ids.is_none() || cut);
        prompts.extend(ids.filter(|p| !p.is_empty()));
    }
    let fate = if cfg.prompt_encoding == PromptEncoding::Trlx { "left-truncated" } else { "skipped" };
    eprintln!("ppo: {}; {too_long} prompts longer than {limit} tokens ({fate}); {} prompts", stats.summary(), prompts.len());
    if prompts.is_empty() {
        return Err(format!("no RL prompts after filtering ({too_long} of {} longer than {limit} tokens)", records.len()));
    }
    Ok(prompts)
}

/// The memory options of a PPO run (its flags).
#[derive(Clone, Copy, Debug)]
pub struct PpoMemory<'a> {
    pub separate_critic: bool,
    /// the reference holds only the top --unfrozen-layers blocks (`--reference hydra`)
    pub hydra: bool,
    /// the memory techniques; `--frozen-bf16` also puts every block of the reference and the
    /// reward model in bf16
    pub flags: &'a MemoryFlags,
    /// LoRA on the policy: the adapters and the value head train, and with `hydra` the
    /// reference is the policy's base (no weights of its own)
    pub lora: &'a super::lora_flags::LoraFlags,
    /// with ZeRO-1 or 2 on N > 1 ranks: N (each rank holds about 1/N of the AdamW moments); else 0
    pub zero_ranks: usize,
    /// ZeRO-2: the blocks' gradients sharded too
    pub zero_grads: bool,
}

/// The memory of a PPO run: the policy (trained), its reference, the reward model (and a
/// separate critic from it, trained too), their activations over a chunk of rollouts, and the
/// rollouts' KV cache.
pub fn ppo_need(policy: &ModelConfig, rm: &ModelConfig, cfg: &PpoConfig, longest_prompt: usize, o: PpoMemory) -> Result<Need, String> {
    use okapi_model::memory::{activation_bytes_with, block_linear_params, kv_cache_bytes, training_run_need, weights_bytes_with, Techniques};
    let l = policy.n_layers;
    let top = cfg.unfrozen_layers.unwrap_or(l).min(l);
    let (policy_trained, t) = super::train_flags::trained_params(policy, cfg.unfrozen_layers, o.flags, o.lora)?;
    let t = Techniques { zero_ranks: o.zero_ranks, zero_grads: o.zero_grads, ..t };
    let lora = t.adapters > 0;
    let frozen_bf16 = o.flags.frozen_bf16;
    let all_bf16 = |m: &ModelConfig| if frozen_bf16 { m.n_layers } else { 0 };
    let (separate_critic, hydra) = (o.separate_critic, o.hydra);
    // the reference and the reward model only run forwards: one block's activations each
    let forward_only = Techniques { checkpointed: true, ..t };
    let activation_bytes = |m: &ModelConfig, rows: usize| activation_bytes_with(m, rows, forward_only);
    const CHUNK: &str = "lower --chunk-size, --max-new-tokens or --max-prompt-len";
    const MINIBATCH: &str = "lower --ppo-batch-size, --chunk-size, --max-new-tokens or --max-prompt-len";
    let cap_t = longest_prompt.saturating_add(cfg.sampling.max_new_tokens);
    // as the run sizes its buffers: a chunk or minibatch is at most an iteration's rollouts
    let chunk = cfg.chunk_size.min(cfg.rollouts);
    let rows = chunk.max(cfg.minibatch.min(cfg.rollouts)).saturating_mul(cap_t);
    // the value head trains beside the policy's layers (the separate critic's is its score head)
    let c = policy.hidden_size as u128;
    let (value_params, value_hidden) = match (separate_critic, cfg.value_head) {
        (true, _) => (0, 0),
        (false, ValueHeadKind::Linear) => (c + 1, 0),
        (false, ValueHeadKind::Mlp) => (2 * c * c + 3 * c + 1, 2 * c),
    };
    let trainable = policy_trained.saturating_add(value_params);
    // the value head (like LoRA's adapters) trains beside the base, not in place of its weights
    let t = Techniques { adapters: t.adapters.saturating_add(value_params), ..t };
    let chunk_rows = chunk.saturating_mul(cap_t);
    let reference = match (hydra, cfg.unfrozen_layers) {
        // LoRA: the reference is the policy's base with the adapters off
        (true, _) if lora => 0,
        // the top blocks, the final norm and the head (the embedding when it is the head)
        (true, Some(_)) => {
            let tied = if policy.tie_word_embeddings { policy.vocab_size as u128 * policy.hidden_size as u128 } else { 0 };
            let packed = if frozen_bf16 { block_linear_params(policy) * top as u128 } else { 0 };
            (trainable.saturating_sub(value_params).saturating_add(tied) * 4 - packed * 2).min(u64::MAX as u128) as u64
        }
        _ => weights_bytes_with(policy, all_bf16(policy)),
    };
    let reference_label = match (hydra, cfg.unfrozen_layers.is_some() || lora) {
        (true, true) if lora => "reference model (LoRA: the policy's base, adapters off)",
        (true, true) => "reference model (hydra: top blocks and head)",
        _ => "reference model",
    };
    let mut need = training_run_need(policy, trainable, rows, t, MINIBATCH)
        .device_lowered_by(reference_label, reference, "--unfrozen-layers N with --reference hydra")
        .device_lowered_by("reward model", weights_bytes_with(rm, all_bf16(rm)), if frozen_bf16 { "" } else { "--frozen-bf16" })
        .device_lowered_by("reference and reward activations", activation_bytes(policy, chunk_rows).saturating_add(activation_bytes(rm, chunk_rows)), CHUNK)
        .device_lowered_by("KV cache", kv_cache_bytes(policy, chunk, cap_t, longest_prompt), CHUNK);
    if value_hidden > 0 {
        // pre-activation, post-ReLU and its gradient, f32
        let bytes = value_hidden.saturating_mul(rows as u128).saturating_mul(12).min(u64::MAX as u128) as u64;
        need = need.device_lowered_by("value head activations (MLP hidden layer)", bytes, MINIBATCH);
    }
    if separate_critic {
        let critic_trainable = rm.trainable_count(cfg.unfrozen_layers).map_err(err)?;
        let critic = training_run_need(rm, critic_trainable, rows, t, MINIBATCH);
        let bytes = critic.device.iter().fold(0u64, |a, p| a.saturating_add(p.bytes));
        need = need.device_lowered_by("critic (weights, gradients, AdamW, activations)", bytes, "train fewer layers (--unfrozen-layers) or --critic shared");
    }
    // per rollout token: ids, log-probs (policy, reference), values, advantages, returns
    need = need.host("rollouts", (cfg.rollouts as u64).saturating_mul(cap_t as u64).saturating_mul(24));
    need.what = "PPO".into();
    need.hint = "lower --rollouts, --chunk-size, --ppo-batch-size, --max-new-tokens or --max-prompt-len, or train fewer layers (--unfrozen-layers)".into();
    Ok(need)
}

impl PpoArgs {
    fn memory(&self) -> PpoMemory<'_> {
        let zero_ranks = if self.zero >= 1 { super::ranks::comm().world() } else { 0 };
        PpoMemory { separate_critic: self.critic == "separate", hydra: self.reference == "hydra", flags: &self.memory, lora: &self.lora, zero_ranks, zero_grads: self.zero == 2 }
    }
}

fn check_ppo_memory<B: Backend>(be: &B, need: &Need, force: bool) -> Result<(), String> {
    need.check_or_force(be, force).map_err(err)?;
    eprint!("{}", need.table(be));
    Ok(())
}

/// The flags no setting check covers: one line each.
fn check_choices(a: &PpoArgs) -> Result<(), String> {
    a.memory.validate()?;
    if !matches!(a.reference.as_str(), "hydra" | "full") {
        return Err(format!("--reference {}: expected hydra (top layers on the policy's frozen trunk) or full (a whole copy)", a.reference));
    }
    if !matches!(a.critic.as_str(), "shared" | "separate") {
        return Err(format!("--critic {}: expected shared (a value head on the policy's trunk) or separate (a critic initialised from the reward model)", a.critic));
    }
    if a.zero > 0 && a.memory.offload_optimizer {
        return Err(format!("--zero {} with --offload-optimizer: choose one (the offload keeps the whole AdamW state in host memory)", a.zero));
    }
    Ok(())
}

/// A model of the run, with the memory flags applied.
fn load_model<B: Backend>(be: &B, a: &PpoArgs, dir: &std::path::Path) -> Result<Model<B>, String> {
    let mut m = Model::load(be.clone(), dir).map_err(err)?;
    a.memory.configure(&mut m);
    Ok(m)
}

/// The policy, its reference (`None`: a LoRA policy's own base) and the reward model.
type Trio<B> = (Model<B>, Option<Model<B>>, Model<B>);

/// The policy, its reference and the reward model, loaded and set up as the memory flags say:
/// frozen weights in bf16, the forward-only models with one block's activation arena, the hydra
/// reference holding only the top `--unfrozen-layers` blocks.
fn load_models<B: Backend>(be: &B, a: &PpoArgs, cfg: &PpoConfig) -> Result<Trio<B>, String> {
    let mut policy = load_model(be, a, &a.policy)?;
    a.lora.apply(&mut policy, cfg.seed)?;
    if let Some(p) = policy.adapters.as_ref().map(|ad| ad.cfg.dropout).filter(|&p| p > 0.0) {
        // the update's log-probs must be those of the policy that sampled (trlx, TRL: no dropout)
        return Err(format!("--lora-dropout {p}: PPO trains without dropout (its ratio compares log-probs of the sampling policy); use 0"));
    }
    policy.lm_head().map_err(err)?;
    // with LoRA (and --reference hydra) the reference is the policy's base, its adapters off
    let lora_reference = policy.adapters.is_some() && a.reference == "hydra";
    let mut reference = if lora_reference { None } else { Some(load_model(be, a, &a.policy)?) };
    let mut rm = load_model(be, a, &a.reward)?;
    if rm.score.is_none() {
        return Err(format!("{}: not a reward model (expected *ForSequenceClassification in config.json)", a.reward.display()));
    }
    if a.memory.frozen_bf16 {
        let mask = policy.trainable_mask_with(cfg.unfrozen_layers, cfg.train_embedding_norm).map_err(err)?;
        policy.freeze_in_bf16(&mask);
        // the reference and the reward model never train: every block
        for m in reference.iter_mut().chain([&mut rm]) {
            let none = vec![false; m.info.len()];
            m.freeze_in_bf16(&none);
        }
    }
    rm.grad_checkpointing = true;
    if let Some(r) = reference.as_mut() {
        r.grad_checkpointing = true;
        if let (true, Some(n)) = (a.reference == "hydra", cfg.unfrozen_layers) {
            r.release_below(r.cfg.n_layers - n.min(r.cfg.n_layers));
        }
    }
    Ok((policy, reference, rm))
}

fn run_on<B: Backend>(be: B, a: &PpoArgs) -> Result<(), String> {
    check_choices(a)?;
    let cfg = a.resolve()?;
    // rank 0 writes the run (the only rank of a single process)
    let writes = super::ranks::writes();
    let world = super::ranks::comm().world();
    if cfg.zero == 2 && world > 1 {
        okapi_rlhf::trainer::check_shares(cfg.rollouts, "rollouts of an iteration", cfg.minibatch, "--ppo-batch-size", world).map_err(err)?;
    }
    let out = if writes { Some(outdir::claim(&a.out, &[("--policy", &a.policy), ("--reward", &a.reward)], cfg.resume.as_deref(), a.overwrite)?) } else { None };
    if let Some(dir) = &cfg.resume {
        okapi_rlhf::checkpoint::precheck_resume(dir, "ppo", &cfg.trajectory_settings()).map_err(err)?;
    }
    let (tok, rm_tok, same_tokenizer) = tokenizers(a)?;
    let (policy_cfg, rm_cfg) = (ModelConfig::load(&a.policy).map_err(err)?, ModelConfig::load(&a.reward).map_err(err)?);
    tok.check_fits(policy_cfg.vocab_size, &policy_cfg.path).map_err(err)?;
    rm_tok.check_fits(rm_cfg.vocab_size, &rm_cfg.path).map_err(err)?;
    let eos = policy_cfg.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed", policy_cfg.path.display()))?;
    let prompts = load_prompts(a, &cfg, &tok, &policy_cfg)?;
    okapi_rlhf::ppo::check_resume(&cfg, &policy_cfg, &prompts).map_err(err)?;
    let need = ppo_need(&policy_cfg, &rm_cfg, &cfg, prompts.iter().map(Vec::len).max().unwrap_or(1), a.memory())?;
    check_ppo_memory(&be, &need, a.force)?;
    let (mut policy, reference, rm) = load_models(&be, a, &cfg)?;
    let pad = policy.cfg.pad_token_id.unwrap_or(eos);
    let rm_eos = rm.cfg.eos_token_id.unwrap_or(eos);
    let rm_pad = rm.cfg.pad_token_id.unwrap_or(rm_eos);
    let critic = match a.critic.as_str() {
        "separate" => Some(Critic::from_reward_model(load_model(&be, a, &a.reward)?, cfg.unfrozen_layers).map_err(err)?),
        _ => {
            add_value_head(&mut policy, cfg.value_head, cfg.seed);
            None
        }
    };
    if let Some(out) = &out {
        out.write_args(args_json(a, &cfg))?;
    }
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let rm_ids = |p: &[u32], r: &[u32]| -> Result<Vec<u32>, TrainError> {
        if same_tokenizer {
            return Ok(p.iter().chain(r).copied().collect());
        }
        // by text: the prompt with the RM's special tokens, the response without, EOS if it ended
        let mut ids = rm_tok.encode(&tok.decode(p, true)?, true)?;
        ids.extend(rm_tok.encode(&tok.decode(r, true)?, false)?);
        if r.last() == Some(&eos) {
            ids.push(rm_eos);
        }
        Ok(ids)
    };
    let io = PpoIo { rm_ids: &rm_ids, decode: &decode, eos, pad, rm_pad, tokenizer: Some(&tok.path), tensorboard: a.tensorboard.as_deref().filter(|_| writes), comm: super::ranks::comm() };
    let models = PpoModels { policy, reference: reference.as_ref(), reward: &rm, critic };
    let (_, s) = run_ppo(models, &prompts, &cfg, &io, writes.then_some(a.out.as_path())).map_err(err)?;
    let (first, last) = (|v: &[f64]| v.first().copied(), |v: &[f64]| v.last().copied());
    match (first(&s.scores), last(&s.scores), first(&s.kls), last(&s.kls)) {
        (Some(s0), Some(s1), Some(k0), Some(k1)) => eprintln!("ppo: {} iterations, mean score {s0:.3} → {s1:.3}, KL {k0:.3} → {k1:.3}; policy and value_head.safetensors saved in {}", s.iterations, a.out.display()),
        _ => eprintln!("ppo: {} iterations, none left to train; policy and value_head.safetensors saved in {}", s.iterations, a.out.display()),
    }
    Ok(())
}

/// `args.json`: the command line, the resolved settings, and every flag's value (`flags`).
fn args_json(a: &PpoArgs, c: &PpoConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "command": "ppo", "argv": std::env::args().collect::<Vec<_>>(), "recipe": format!("{:?}", a.recipe).to_lowercase(),
        "policy": a.policy, "reward": a.reward, "prompts": a.prompts, "critic": a.critic,
        "iterations": c.iterations, "rollouts": c.rollouts, "chunk_size": c.chunk_size, "ppo_epochs": c.ppo_epochs, "ppo_batch_size": c.minibatch,
        "temperature": f32_value(c.sampling.temperature), "top_p": f32_value(c.sampling.top_p), "top_k": c.sampling.top_k, "max_new_tokens": c.sampling.max_new_tokens,
        "init_kl_coef": c.kl.beta, "kl_target": c.kl.target, "kl_horizon": c.kl.horizon, "gamma": c.gamma, "lam": c.lam,
        "cliprange": c.loss.cliprange, "cliprange_value": c.loss.cliprange_value, "vf_coef": c.loss.vf_coef, "reward_clip": f32_value(c.reward_clip),
        "lr": c.lr, "adam_betas": [f32_value(c.adam.beta1), f32_value(c.adam.beta2)], "weight_decay": f32_value(c.adam.weight_decay), "max_grad_norm": c.max_grad_norm,
        "unfrozen_layers": c.unfrozen_layers, "seed": c.seed, "lora": a.lora.json(),
        "prompt_encoding": c.prompt_encoding.as_str(), "max_prompt_len": c.max_prompt_len, "value_head": c.value_head.as_str(), "whiten": c.whiten.as_str(),
        "loss_norm": c.loss.norm.as_str(), "kl_control": c.kl_control.as_str(), "train_embedding_norm": c.train_embedding_norm, "reference": a.reference, "memory": a.memory.json(),
    });
    // beside the macro: one more key would pass serde_json's recursion limit
    v["template"] = serde_json::json!(a.template);
    v["tensorboard"] = serde_json::json!(a.tensorboard);
    super::config::add_to_args_json(&mut v);
    v
}
