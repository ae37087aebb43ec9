use super::sft::write_json;
use super::train_flags::TrainFlags;
use okapi_data::{load_instructions, PromptTemplate, Tokenizer};
use okapi_model::{DType, Model, Rng};
use okapi_rlhf::ppo::kl::KlController;
use okapi_rlhf::ppo::{run_ppo, PpoConfig, PpoIo, PpoLossCfg};
use okapi_rlhf::{AdamWConfig, Sampling, TrainError};
use okapi_runtime::{Backend, BackendKind};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct PpoArgs {
    /// The SFT policy to tune (also the frozen reference)
    #[arg(long)]
    pub policy: PathBuf,
    /// The reward model (okapi-train reward's output)
    #[arg(long)]
    pub reward: PathBuf,
    /// RL prompt files: Okapi instruction records (instruction, input; output ignored)
    #[arg(long, num_args = 1.., required = true)]
    pub prompts: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// PPO iterations (rollouts + update)
    #[arg(long, default_value_t = 100)]
    pub iterations: u64,
    /// Rollouts per iteration (Okapi: 128)
    #[arg(long, default_value_t = 128)]
    pub rollouts: usize,
    /// Sequences generated and scored at once
    #[arg(long, default_value_t = 16)]
    pub chunk_size: usize,
    #[arg(long, default_value_t = 4)]
    pub ppo_epochs: usize,
    /// Rollouts per optimizer step
    #[arg(long, default_value_t = 8)]
    pub ppo_batch_size: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompts longer than this many tokens are skipped (and counted)
    #[arg(long, default_value_t = 512)]
    pub max_prompt_len: usize,
    /// Initial KL coefficient β₀
    #[arg(long, default_value_t = 0.1)]
    pub init_kl_coef: f64,
    /// Target KL of the adaptive controller, or `none` for a fixed β
    #[arg(long, default_value = "6")]
    pub kl_target: String,
    #[arg(long, default_value_t = 10000.0)]
    pub kl_horizon: f64,
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    #[arg(long, default_value_t = 0.95)]
    pub lam: f64,
    #[arg(long, default_value_t = 0.2)]
    pub cliprange: f64,
    #[arg(long, default_value_t = 0.2)]
    pub cliprange_value: f64,
    #[arg(long, default_value_t = 1.0)]
    pub vf_coef: f64,
    /// Scores are clipped to ±this
    #[arg(long, default_value_t = 10.0)]
    pub reward_clip: f32,
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    #[arg(long, default_value = "0.9,0.95")]
    pub adam_betas: String,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f32,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Train only the top N blocks, the final norm, the value head (Okapi's recipe: 5)
    #[arg(long)]
    pub unfrozen_layers: Option<usize>,
    /// shared: a value head on the policy's trunk (default); separate: a critic from the reward model
    #[arg(long, default_value = "shared")]
    pub critic: String,
    /// Score with a reward model whose tokenizer differs from the policy's by re-tokenizing text
    #[arg(long)]
    pub retokenize: bool,
    #[arg(long)]
    pub langs: Option<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Checkpoint every N iterations into OUT/checkpoint
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Continue a run from OUT (or OUT/checkpoint) exactly where its last checkpoint stopped
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write a few samples to samples.jsonl every N iterations
    #[arg(long, default_value_t = 1)]
    pub samples_every: u64,
    #[arg(long)]
    pub save_dtype: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub log_every: u64,
}

fn err(e: impl ToString) -> String {
    e.to_string()
}

pub fn run(a: PpoArgs) -> Result<(), String> {
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

fn run_on<B: Backend>(be: B, a: &PpoArgs) -> Result<(), String> {
    if !matches!(a.critic.as_str(), "shared" | "separate") {
        return Err(format!("--critic {}: expected shared (a value head on the policy's trunk) or separate (a critic initialised from the reward model)", a.critic));
    }
    let kl_target = match a.kl_target.as_str() {
        "none" => None,
        s => Some(s.parse::<f64>().ok().filter(|t| *t > 0.0).ok_or_else(|| format!("--kl-target {s}: expected a positive number or `none`"))?),
    };
    let betas = TrainFlags::parse_betas(&a.adam_betas)?;
    let sampling = Sampling { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, max_new_tokens: a.max_new_tokens, seed: a.seed };
    sampling.validate().map_err(|e| format!("--{e}"))?;
    if a.rollouts == 0 || a.chunk_size == 0 || a.ppo_batch_size == 0 || a.ppo_epochs == 0 || a.iterations == 0 {
        return Err("--rollouts, --chunk-size, --ppo-batch-size, --ppo-epochs and --iterations must be at least 1".into());
    }
    let save_dtype = a.save_dtype.as_deref().map(|s| DType::parse(s).ok_or_else(|| format!("--save-dtype {s}: expected f32, bf16 or f16"))).transpose()?;
    let tok = Tokenizer::load(&a.policy).map_err(err)?;
    let rm_tok = Tokenizer::load(&a.reward).map_err(err)?;
    // the same tokenizer: same vocabulary, merges, pre- and post-processing
    let same_tokenizer = tok.inner().to_string(false).ok() == rm_tok.inner().to_string(false).ok();
    if !same_tokenizer && !a.retokenize {
        return Err(format!(
            "{}: the reward model's tokenizer differs from the policy's ({}): pass --retokenize to score responses by their text",
            rm_tok.path.display(),
            tok.path.display()
        ));
    }
    let mut policy = Model::load(be.clone(), &a.policy).map_err(err)?;
    policy.lm_head().map_err(err)?;
    let reference = Model::load(be.clone(), &a.policy).map_err(err)?;
    let rm = Model::load(be.clone(), &a.reward).map_err(err)?;
    if rm.score.is_none() {
        return Err(format!("{}: not a reward model (expected *ForSequenceClassification in config.json)", a.reward.display()));
    }
    let eos = policy.cfg.eos_token_id.ok_or_else(|| format!("{}: field `eos_token_id` is needed", policy.cfg.path.display()))?;
    let pad = policy.cfg.pad_token_id.unwrap_or(eos);
    let rm_eos = rm.cfg.eos_token_id.unwrap_or(eos);
    let rm_pad = rm.cfg.pad_token_id.unwrap_or(rm_eos);
    // the value head: N(0, initializer_range) weights, zero bias
    let critic = if a.critic == "separate" {
        // a critic initialised from the reward model: its trunk, its score head as the value head
        let mut c = Model::load(be.clone(), &a.reward).map_err(err)?;
        let score = c.host_value(c.score.expect("checked above"));
        c.add_value_head(&score, 0.0);
        let mut mask = c.trainable_mask(a.unfrozen_layers).map_err(err)?;
        mask[c.score.unwrap()] = false;
        Some(okapi_rlhf::ppo::Critic { model: c, mask })
    } else {
        let std = policy.cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
        let mut rng = Rng::new(a.seed ^ 0x7A1E);
        let w: Vec<f32> = (0..policy.cfg.hidden_size).map(|_| (rng.normal() * std) as f32).collect();
        policy.add_value_head(&w, 0.0);
        None
    };
    if critic.is_some() && !same_tokenizer {
        return Err("--critic separate needs the reward model to share the policy's tokenizer (the critic reads the policy's tokens)".into());
    }
    let mask = policy.trainable_mask(a.unfrozen_layers).map_err(err)?;
    // prompts
    let langs = a.langs.as_deref().map(okapi_data::parse_langs).transpose()?;
    let (records, stats) = load_instructions(&a.prompts, langs.as_deref(), false).map_err(err)?;
    let tpl = PromptTemplate::okapi();
    let mut prompts = Vec::new();
    let mut too_long = 0;
    for r in &records {
        let ids = tok.encode(&tpl.prompt(&r.instruction, &r.input), true).map_err(err)?;
        let limit = policy.cfg.max_positions.map_or(a.max_prompt_len, |m| a.max_prompt_len.min(m.saturating_sub(1)));
        if ids.len() > limit {
            too_long += 1;
        } else {
            prompts.push(ids);
        }
    }
    eprintln!("ppo: {}; {too_long} prompts longer than {} tokens (skipped); {} prompts", stats.summary(), a.max_prompt_len, prompts.len());
    if prompts.is_empty() {
        return Err("no RL prompts after filtering".into());
    }
    let cfg = PpoConfig {
        iterations: a.iterations,
        rollouts: a.rollouts,
        chunk_size: a.chunk_size,
        ppo_epochs: a.ppo_epochs,
        minibatch: a.ppo_batch_size,
        sampling,
        kl: KlController { beta: a.init_kl_coef, target: kl_target, horizon: a.kl_horizon },
        gamma: a.gamma,
        lam: a.lam,
        loss: PpoLossCfg { cliprange: a.cliprange, cliprange_value: a.cliprange_value, vf_coef: a.vf_coef },
        reward_clip: a.reward_clip,
        lr: a.lr,
        adam: AdamWConfig { beta1: betas.0, beta2: betas.1, eps: a.adam_eps, weight_decay: a.weight_decay },
        max_grad_norm: a.max_grad_norm,
        seed: a.seed,
        save_every: a.save_every,
        resume: a.resume.clone(),
        samples_every: a.samples_every,
        save_dtype,
        log_every: a.log_every,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    write_json(&a.out.join("args.json"), &serde_json::json!({ "command": "ppo", "argv": std::env::args().collect::<Vec<_>>(), "policy": a.policy, "reward": a.reward, "prompts": a.prompts, "iterations": a.iterations, "rollouts": a.rollouts, "ppo_epochs": a.ppo_epochs, "ppo_batch_size": a.ppo_batch_size, "init_kl_coef": a.init_kl_coef, "kl_target": kl_target, "kl_horizon": a.kl_horizon, "gamma": a.gamma, "lam": a.lam, "cliprange": a.cliprange, "cliprange_value": a.cliprange_value, "vf_coef": a.vf_coef, "lr": a.lr, "seed": a.seed, "unfrozen_layers": a.unfrozen_layers }))?;
    let decode = |ids: &[u32]| tok.decode(ids, true).unwrap_or_default();
    let rm_ids = |p: &[u32], r: &[u32]| -> Result<Vec<u32>, TrainError> {
        if same_tokenizer {
            return Ok(p.iter().chain(r).copied().collect());
        }
        // by text: the prompt with the RM's special tokens, the response without, EOS if it ended
        let mut ids = rm_tok.encode(&tok.decode(p, true)?, true)?;
        let ended = r.last() == Some(&eos);
        ids.extend(rm_tok.encode(&tok.decode(r, true)?, false)?);
        if ended {
            ids.push(rm_eos);
        }
        Ok(ids)
    };
    let io = PpoIo { rm_ids: &rm_ids, decode: &decode, eos, pad, rm_pad, tokenizer: &tok.path };
    let (_, s) = run_ppo(policy, &mask, &reference, &rm, &prompts, &cfg, &io, &a.out, critic).map_err(err)?;
    eprintln!(
        "ppo: {} iterations, mean score {:.3} → {:.3}, KL {:.3} → {:.3}; policy and value_head.safetensors saved in {}",
        s.iterations,
        s.scores.first().unwrap_or(&f64::NAN),
        s.scores.last().unwrap_or(&f64::NAN),
        s.kls.first().unwrap_or(&f64::NAN),
        s.kls.last().unwrap_or(&f64::NAN),
        a.out.display()
    );
    Ok(())
}
