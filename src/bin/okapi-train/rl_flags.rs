//! What `okapi-train ppo`, `grpo` and `rloo` share: the flags of the models, prompts, rewards,
//! sampling, optimizer, memory, LoRA and run directory, and the run itself (tokenizers,
//! prompts with their languages, the models, the reward, `run_ppo`).

use super::outdir;
use super::train_flags::{f32_value, parse_betas, MemoryFlags};
use okapi_data::{load_instructions, okapi_user_message, Message, Tokenizer};
use okapi_model::{DType, Model, ModelConfig};
use okapi_rlhf::ppo::{encode_prompt, fit_prompt, Critic, PpoIo, PromptEncoding};
use okapi_rlhf::rewards::RewardSpec;
use okapi_rlhf::{run_ppo, AdamWConfig, PpoConfig, PpoModels, TrainError};
use okapi_runtime::{Backend, BackendKind};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct RlArgs {
    /// The SFT policy to tune (also the frozen reference)
    #[arg(long)]
    pub policy: PathBuf,
    /// The reward: a reward model's directory (okapi-train reward's output), or weighted reward
    /// functions `rm=1.0,lang=0.5,length=-0.001` — rm: the reward model of --reward-model; lang:
    /// 1 when the completion is in the prompt's language, else 0; length: completion tokens
    #[arg(long)]
    pub reward: String,
    /// The reward model of an `rm` term in --reward
    #[arg(long)]
    pub reward_model: Option<PathBuf>,
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
    /// Iterations (rollouts + update)
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Rollouts (completions) per iteration
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// Sequences generated and scored at once
    #[arg(long)]
    pub chunk_size: Option<usize>,
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
    /// Train only the top N blocks, the final norm (and PPO's value head)
    #[arg(long)]
    pub unfrozen_layers: Option<usize>,
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
    /// Seed of the prompt order, the samples (and PPO's value head)
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

pub fn err(e: impl ToString) -> String {
    e.to_string()
}

impl RlArgs {
    /// The reward functions and the reward model's directory (when one scores): `--reward DIR`
    /// is the reward model alone; a list takes its model from `--reward-model`.
    pub fn rewards(&self) -> Result<(RewardSpec, Option<PathBuf>), String> {
        let given = Path::new(&self.reward);
        if given.is_dir() {
            if let Some(m) = &self.reward_model {
                return Err(format!("--reward-model {}: --reward {} is already the reward model (give one, or --reward rm=1,...)", m.display(), self.reward));
            }
            return Ok((RewardSpec::rm(), Some(given.to_path_buf())));
        }
        if !self.reward.contains('=') {
            return Err(format!("--reward {}: not a directory (a reward model) nor reward functions name=weight,... (rm, lang, length)", self.reward));
        }
        let spec = RewardSpec::parse(&self.reward).map_err(err)?;
        match (&self.reward_model, spec.needs_rm()) {
            (None, true) => Err(format!("--reward {}: the rm term needs --reward-model DIR", self.reward)),
            (Some(m), false) => Err(format!("--reward-model {}: --reward {} has no rm term", m.display(), self.reward)),
            (m, _) => Ok((spec, m.clone())),
        }
    }

    /// `base` with every shared flag that is set applied over it (not validated yet).
    pub fn apply(&self, base: &PpoConfig) -> Result<PpoConfig, String> {
        let r = base;
        let mut c = PpoConfig {
            iterations: self.iterations.unwrap_or(r.iterations),
            rollouts: self.rollouts.unwrap_or(r.rollouts),
            chunk_size: self.chunk_size.unwrap_or(r.chunk_size),
            max_prompt_len: self.max_prompt_len.unwrap_or(r.max_prompt_len),
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
            rewards: self.rewards()?.0,
            ..r.clone()
        };
        let s = &mut c.sampling;
        (s.temperature, s.top_p, s.top_k, s.max_new_tokens) = (self.temperature.unwrap_or(s.temperature), self.top_p.unwrap_or(s.top_p), self.top_k.unwrap_or(s.top_k), self.max_new_tokens.unwrap_or(s.max_new_tokens));
        s.seed = c.seed;
        c.prompt_encoding = self.prompt_encoding.as_deref().map(PromptEncoding::parse).transpose().map_err(err)?.unwrap_or(r.prompt_encoding);
        let (beta1, beta2) = self.adam_betas.as_deref().map(parse_betas).transpose()?.unwrap_or((r.adam.beta1, r.adam.beta2));
        c.adam = AdamWConfig { beta1, beta2, eps: self.adam_eps.unwrap_or(r.adam.eps), weight_decay: self.weight_decay.unwrap_or(r.adam.weight_decay) };
        Ok(c)
    }

    /// The flags no setting check covers: one line each.
    pub fn check(&self) -> Result<(), String> {
        self.memory.validate()?;
        if !matches!(self.reference.as_str(), "hydra" | "full") {
            return Err(format!("--reference {}: expected hydra (top layers on the policy's frozen trunk) or full (a whole copy)", self.reference));
        }
        if self.zero > 0 && self.memory.offload_optimizer {
            return Err(format!("--zero {} with --offload-optimizer: choose one (the offload keeps the whole AdamW state in host memory)", self.zero));
        }
        self.rewards().map(|_| ())
    }

    /// The settings every method's args.json records.
    pub fn args_json(&self, command: &str, c: &PpoConfig) -> serde_json::Value {
        serde_json::json!({
            "command": command, "argv": std::env::args().collect::<Vec<_>>(),
            "policy": self.policy, "reward": self.reward, "reward_model": self.reward_model, "prompts": self.prompts,
            "iterations": c.iterations, "rollouts": c.rollouts, "chunk_size": c.chunk_size,
            "temperature": f32_value(c.sampling.temperature), "top_p": f32_value(c.sampling.top_p), "top_k": c.sampling.top_k, "max_new_tokens": c.sampling.max_new_tokens,
            "lr": c.lr, "adam_betas": [f32_value(c.adam.beta1), f32_value(c.adam.beta2)], "weight_decay": f32_value(c.adam.weight_decay), "max_grad_norm": c.max_grad_norm,
            "unfrozen_layers": c.unfrozen_layers, "seed": c.seed, "lora": self.lora.json(),
            "prompt_encoding": c.prompt_encoding.as_str(), "max_prompt_len": c.max_prompt_len, "reference": self.reference, "memory": self.memory.json(),
            "template": self.template, "tensorboard": self.tensorboard,
        })
    }
}

/// The values `--help` shows for the shared flags, by argument id.
pub fn shown_common(c: &PpoConfig) -> Vec<(&'static str, String)> {
    vec![
        ("iterations", c.iterations.to_string()),
        ("rollouts", c.rollouts.to_string()),
        ("chunk_size", c.chunk_size.to_string()),
        ("temperature", c.sampling.temperature.to_string()),
        ("top_p", c.sampling.top_p.to_string()),
        ("top_k", c.sampling.top_k.to_string()),
        ("max_new_tokens", c.sampling.max_new_tokens.to_string()),
        ("max_prompt_len", c.max_prompt_len.to_string()),
        ("prompt_encoding", c.prompt_encoding.as_str().into()),
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

/// The policy's tokenizer and the reward model's (when one scores), refusing different ones
/// unless `--retokenize`; the flag says whether they are the same.
fn tokenizers(a: &RlArgs, rm_dir: Option<&Path>, separate_critic: bool) -> Result<(Tokenizer, Option<Tokenizer>, bool), String> {
    let tok = Tokenizer::load(&a.policy).map_err(err)?;
    let Some(rm_dir) = rm_dir else { return Ok((tok, None, true)) };
    let rm_tok = Tokenizer::load(rm_dir).map_err(err)?;
    // the same tokenizer: same vocabulary, merges, pre- and post-processing
    let same = tok.inner().to_string(false).ok() == rm_tok.inner().to_string(false).ok();
    if !same && !a.retokenize {
        return Err(format!("{}: the reward model's tokenizer differs from the policy's ({}): pass --retokenize to score responses by their text", rm_tok.path.display(), tok.path.display()));
    }
    if !same && separate_critic {
        return Err("--critic separate needs the reward model to share the policy's tokenizer (the critic reads the policy's tokens)".into());
    }
    Ok((tok, Some(rm_tok), same))
}

/// The RL prompts of a run: token ids of the templated prompts, and each one's language.
pub struct Prompts {
    pub ids: Vec<Vec<u32>>,
    pub langs: Vec<Option<&'static str>>,
}

/// The templated prompts that fit `policy`'s positions (skipped or left-truncated as
/// `--prompt-encoding` says), with the counts in one line; each with its record's language
/// (or the one detected in its instruction and input).
fn load_prompts(a: &RlArgs, cfg: &PpoConfig, tok: &Tokenizer, policy: &ModelConfig) -> Result<Prompts, String> {
    let langs = a.langs.as_deref().map(okapi_data::parse_langs).transpose()?;
    let (records, stats) = load_instructions(&a.prompts, langs.as_deref(), false).map_err(err)?;
    let format = super::train_flags::record_format(Some(a.template.as_deref().unwrap_or(Path::new("okapi"))), &a.policy)?;
    let chat = format.chat.as_ref().filter(|_| format.instruct_as_chat);
    let limit = policy.max_positions.map_or(cfg.max_prompt_len, |m| cfg.max_prompt_len.min(m.saturating_sub(1)));
    let (mut prompts, mut too_long) = (Prompts { ids: Vec::new(), langs: Vec::new() }, 0);
    for r in &records {
        let (ids, cut) = match chat {
            // the template writes its own special tokens: the ids as apply_chat_template gives them
            Some(chat) => fit_prompt(chat.encode(tok, &[Message::new("user", &okapi_user_message(&r.instruction, &r.input))], true).map_err(|e| format!("{}: {e}", r.origin))?, cfg.prompt_encoding, limit),
            None => encode_prompt(tok, &format.prompt.prompt(&r.instruction, &r.input), cfg.prompt_encoding, limit).map_err(|e| format!("{}: {e}", r.origin))?,
        };
        too_long += usize::from(ids.is_none() || cut);
        if let Some(ids) = ids.filter(|p| !p.is_empty()) {
            let lang = okapi_rlhf::rewards::prompt_language(r.lang.as_deref(), &format!("{}\n{}", r.instruction, r.input));
            if lang.is_none() && cfg.rewards.has(okapi_rlhf::rewards::RewardFn::Lang) {
                return Err(format!("{}: the prompt's language is unknown (no `lang` field, no language file name, none detected in its text): the lang reward needs it", r.origin));
            }
            prompts.ids.push(ids);
            prompts.langs.push(lang);
        }
    }
    let fate = if cfg.prompt_encoding == PromptEncoding::Trlx { "left-truncated" } else { "skipped" };
    eprintln!("{}: {}; {too_long} prompts longer than {limit} tokens ({fate}); {} prompts", cfg.command(), stats.summary(), prompts.ids.len());
    if prompts.ids.is_empty() {
        return Err(format!("no RL prompts after filtering ({too_long} of {} longer than {limit} tokens)", records.len()));
    }
    Ok(prompts)
}

/// A model of the run, with the memory flags applied.
pub fn load_model<B: Backend>(be: &B, a: &RlArgs, dir: &Path) -> Result<Model<B>, String> {
    let mut m = Model::load(be.clone(), dir).map_err(err)?;
    a.memory.configure(&mut m);
    Ok(m)
}

/// The policy, its reference (`None`: a LoRA policy's own base, or no reference at all) and
/// the reward model (when one scores).
type Trio<B> = (Model<B>, Option<Model<B>>, Option<Model<B>>);

/// The policy, its reference and the reward model, loaded and set up as the memory flags say:
/// frozen weights in bf16, the forward-only models with one block's activation arena, the hydra
/// reference holding only the top `--unfrozen-layers` blocks.
fn load_models<B: Backend>(be: &B, a: &RlArgs, cfg: &PpoConfig, rm_dir: Option<&Path>) -> Result<Trio<B>, String> {
    let mut policy = load_model(be, a, &a.policy)?;
    a.lora.apply(&mut policy, cfg.seed)?;
    if let Some(p) = policy.adapters.as_ref().map(|ad| ad.cfg.dropout).filter(|&p| p > 0.0) {
        // the update's log-probs must be those of the policy that sampled (trlx, TRL: no dropout)
        return Err(format!("--lora-dropout {p}: {} trains without dropout (its ratio compares log-probs of the sampling policy); use 0", cfg.command()));
    }
    policy.lm_head().map_err(err)?;
    // with LoRA (and --reference hydra) the reference is the policy's base, its adapters off
    let lora_reference = policy.adapters.is_some() && a.reference == "hydra";
    let mut reference = if lora_reference || !cfg.needs_reference() { None } else { Some(load_model(be, a, &a.policy)?) };
    let mut rm = rm_dir.map(|d| load_model(be, a, d)).transpose()?;
    if let Some(rm) = &rm {
        if rm.score.is_none() {
            return Err(format!("{}: not a reward model (expected *ForSequenceClassification in config.json)", rm.cfg.path.display()));
        }
    }
    if a.memory.frozen_bf16 {
        let mask = policy.trainable_mask_with(cfg.unfrozen_layers, cfg.train_embedding_norm).map_err(err)?;
        policy.freeze_in_bf16(&mask);
        // the reference and the reward model never train: every block
        for m in reference.iter_mut().chain(rm.iter_mut()) {
            let none = vec![false; m.info.len()];
            m.freeze_in_bf16(&none);
        }
    }
    for m in reference.iter_mut().chain(rm.iter_mut()) {
        m.grad_checkpointing = true;
    }
    if let (Some(r), true, Some(n)) = (reference.as_mut(), a.reference == "hydra", cfg.unfrozen_layers) {
        r.release_below(r.cfg.n_layers - n.min(r.cfg.n_layers));
    }
    Ok((policy, reference, rm))
}

/// What the method adds to the shared run: PPO's value head or separate critic, its memory
/// plan, its args.json.
pub struct Method<'a> {
    pub separate_critic: bool,
    /// the value head on the policy's trunk (PPO with a shared critic)
    pub value_head: Option<okapi_rlhf::ppo::ValueHeadKind>,
    pub args_json: serde_json::Value,
    /// the memory plan of the run, from the policy's and the reward model's configs and the
    /// longest prompt
    pub need: PlanFn<'a>,
}

/// The memory plan of a run from the policy's config, the reward model's and the longest prompt.
pub type PlanFn<'a> = &'a dyn Fn(&ModelConfig, Option<&ModelConfig>, usize) -> Result<okapi_model::memory::Need, String>;

/// Runs `cfg` (PPO, GRPO or RLOO) with the shared flags `a`, writing into `--out` on rank 0.
pub fn run_rl<B: Backend>(be: B, a: &RlArgs, cfg: &PpoConfig, method: Method<'_>) -> Result<(), String> {
    let (_, rm_dir) = a.rewards()?;
    // rank 0 writes the run (the only rank of a single process)
    let writes = super::ranks::writes();
    let world = super::ranks::comm().world();
    if cfg.zero == 2 && world > 1 {
        okapi_rlhf::trainer::check_shares(cfg.rollouts, "rollouts of an iteration", cfg.minibatch, if cfg.group.is_some() { "--batch-size" } else { "--ppo-batch-size" }, world).map_err(err)?;
    }
    let inputs: Vec<(&str, &Path)> = [("--policy", a.policy.as_path())].into_iter().chain(rm_dir.as_deref().map(|d| (if a.reward_model.is_some() { "--reward-model" } else { "--reward" }, d))).collect();
    let out = if writes { Some(outdir::claim(&a.out, &inputs, cfg.resume.as_deref(), a.overwrite)?) } else { None };
    if let Some(dir) = &cfg.resume {
        okapi_rlhf::checkpoint::precheck_resume(dir, cfg.command(), &cfg.trajectory_settings()).map_err(err)?;
    }
    let (tok, rm_tok, same_tokenizer) = tokenizers(a, rm_dir.as_deref(), method.separate_critic)?;
    let policy_cfg = ModelConfig::load(&a.policy).map_err(err)?;
    let rm_cfg = rm_dir.as_deref().map(ModelConfig::load).transpose().map_err(err)?;
    tok.check_fits(policy_cfg.vocab_size, &policy_cfg.path).map_err(err)?;
    if let (Some(t), Some(c)) = (&rm_tok, &rm_cfg) {
        t.check_fits(c.vocab_size, &c.path).map_err(err)?;
    }
    let eos = policy_cfg.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed", policy_cfg.path.display()))?;
    let prompts = load_prompts(a, cfg, &tok, &policy_cfg)?;
    okapi_rlhf::ppo::check_resume(cfg, &policy_cfg, &prompts.ids).map_err(err)?;
    let need = (method.need)(&policy_cfg, rm_cfg.as_ref(), prompts.ids.iter().map(Vec::len).max().unwrap_or(1))?;
    need.check_or_force(&be, a.force).map_err(err)?;
    eprint!("{}", need.table(&be));
    let (mut policy, reference, rm) = load_models(&be, a, cfg, rm_dir.as_deref())?;
    let pad = policy.cfg.pad_token_id.unwrap_or(eos);
    let rm_eos = rm.as_ref().and_then(|m| m.cfg.eos_token_id).unwrap_or(eos);
    let rm_pad = rm.as_ref().and_then(|m| m.cfg.pad_token_id).unwrap_or(rm_eos);
    let critic = match (method.separate_critic, &rm_dir) {
        (true, Some(d)) => Some(Critic::from_reward_model(load_model(&be, a, d)?, cfg.unfrozen_layers).map_err(err)?),
        // (`ppo` refuses this before anything is written; a library caller gets the same line)
        (true, None) => return Err("--critic separate: the critic starts from the reward model, and --reward has no rm term".into()),
        (false, _) => None,
    };
    if let Some(kind) = method.value_head {
        okapi_rlhf::ppo::add_value_head(&mut policy, kind, cfg.seed);
    }
    if let Some(out) = &out {
        out.write_args(method.args_json)?;
    }
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let rm_ids = |p: &[u32], r: &[u32]| -> Result<Vec<u32>, TrainError> {
        let rm_tok = match &rm_tok {
            Some(t) if !same_tokenizer => t,
            _ => return Ok(p.iter().chain(r).copied().collect()),
        };
        // by text: the prompt with the RM's special tokens, the response without, EOS if it ended
        let mut ids = rm_tok.encode(&tok.decode(p, true)?, true)?;
        ids.extend(rm_tok.encode(&tok.decode(r, true)?, false)?);
        if r.last() == Some(&eos) {
            ids.push(rm_eos);
        }
        Ok(ids)
    };
    let io = PpoIo { rm_ids: &rm_ids, decode: &decode, eos, pad, rm_pad, tokenizer: Some(&tok.path), tensorboard: a.tensorboard.as_deref().filter(|_| writes), comm: super::ranks::comm(), prompt_langs: &prompts.langs };
    let models = PpoModels { policy, reference: reference.as_ref(), reward: rm.as_ref(), critic };
    let (_, s) = run_ppo(models, &prompts.ids, cfg, &io, writes.then_some(a.out.as_path())).map_err(err)?;
    let (first, last) = (|v: &[f64]| v.first().copied(), |v: &[f64]| v.last().copied());
    let saved = if method.value_head.is_some() { "policy and value_head.safetensors" } else { "policy" };
    match (first(&s.scores), last(&s.scores), first(&s.kls), last(&s.kls)) {
        (Some(s0), Some(s1), Some(k0), Some(k1)) => eprintln!("{}: {} iterations, mean score {s0:.3} → {s1:.3}, KL {k0:.3} → {k1:.3}; {saved} saved in {}", cfg.command(), s.iterations, a.out.display()),
        _ => eprintln!("{}: {} iterations, none left to train; {saved} saved in {}", cfg.command(), s.iterations, a.out.display()),
    }
    Ok(())
}
