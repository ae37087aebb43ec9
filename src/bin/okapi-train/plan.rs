//! `okapi-train plan`: the memory a command will need, by part, before anything is loaded — the
//! same estimate every training command checks (and prints) before it starts. A table for
//! people on stdout, then one JSON line for scripts.

use super::ppo::{ppo_need, PpoMemory};
use super::train_flags::{MemoryFlags, Recipe, Stage};
use okapi_model::memory::{kv_cache_bytes, training_run_need, weights_bytes, Need};
use okapi_model::{preset_config, Arch, ModelConfig};
use okapi_rlhf::{PpoConfig, TrainConfig};
use okapi_runtime::{Backend, BackendKind};
use std::path::PathBuf;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanCommand {
    Sft,
    Reward,
    Dpo,
    Ppo,
    Grpo,
    Rloo,
    Eval,
    Generate,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The command to plan
    #[arg(long, value_enum)]
    pub command: PlanCommand,
    /// A model directory (its config.json is all that is read)
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    pub model: Option<PathBuf>,
    /// Or a preset shape (llama-7b, bloom-7b1, …; see `init`)
    #[arg(long)]
    pub preset: Option<String>,
    /// The preset's architecture: llama, bloom, qwen2, qwen3, mistral or gemma2 (default: the one the preset's shape comes from)
    #[arg(long)]
    pub arch: Option<String>,
    /// PPO / GRPO / RLOO: the reward model's directory or preset (default: the policy's shape)
    #[arg(long)]
    pub reward: Option<String>,
    /// Defaults of this recipe for every flag not given: default or okapi
    #[arg(long, value_enum, default_value_t = Recipe::Default)]
    pub recipe: Recipe,
    /// Sequences per micro-batch (sft / reward / dpo: --batch-size; grpo / rloo: completions per optimizer step; eval / generate: sequences at once)
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per sequence (training: --max-len; eval: context; generate: prompt)
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Train only the top N blocks (and the head)
    #[arg(long)]
    pub unfrozen_layers: Option<usize>,
    /// PPO / GRPO / RLOO: rollouts (completions) per iteration
    #[arg(long)]
    pub rollouts: Option<usize>,
    /// PPO: rollouts generated and scored at once
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// PPO: rollouts per optimizer minibatch
    #[arg(long)]
    pub ppo_batch_size: Option<usize>,
    /// PPO / generate: new tokens per response
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// PPO: the longest prompt
    #[arg(long)]
    pub max_prompt_len: Option<usize>,
    /// PPO: shared (value head on the policy) or separate (a critic from the reward model)
    #[arg(long, default_value = "shared")]
    pub critic: String,
    /// PPO: hydra (the reference holds the top --unfrozen-layers blocks only) or full
    #[arg(long, default_value = "hydra")]
    pub reference: String,
    #[command(flatten)]
    pub memory: MemoryFlags,
    #[command(flatten)]
    pub lora: super::lora_flags::LoraFlags,
    /// The backend whose free memory the plan is compared with: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// f32 or bf16 (GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// Ranks of a data-parallel run (with --zero 1: the plan of one rank)
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// ZeRO stage of the run (1: each rank holds about 1/--ranks of the AdamW moments)
    #[arg(long, default_value_t = 0)]
    pub zero: u8,
}

pub fn run(a: PlanArgs) -> Result<(), String> {
    a.memory.validate()?;
    zero_ranks(&a)?;
    match (a.memory.lm_head_chunk, a.command) {
        (Some(n), c) if !matches!(c, PlanCommand::Sft | PlanCommand::Dpo | PlanCommand::Ppo) => return Err(format!("--lm-head-chunk {n}: only sft, dpo and ppo chunk their LM head")),
        _ => {}
    }
    if !matches!(a.reference.as_str(), "hydra" | "full") || !matches!(a.critic.as_str(), "shared" | "separate") {
        return Err(format!("--reference {} / --critic {}: expected hydra or full / shared or separate", a.reference, a.critic));
    }
    let policy = model_config(a.model.as_ref(), a.preset.as_deref(), a.arch.as_deref())?;
    let need = plan_need(&a, &policy)?;
    super::on_backend!(a.backend, a.precision, |be| report(&be, &a, &need))
}

/// A config.json directory, or a preset's shape.
fn model_config(dir: Option<&PathBuf>, preset: Option<&str>, arch: Option<&str>) -> Result<ModelConfig, String> {
    if let Some(dir) = dir {
        return ModelConfig::load(dir).map_err(|e| e.to_string());
    }
    let name = preset.ok_or("--model or --preset is needed")?;
    let arch: Arch = match arch {
        Some(a) => a.parse().map_err(|e| format!("--arch: {e}"))?,
        // the architecture the preset's shape comes from
        None => okapi_model::find_preset(name).map_err(|e| format!("--preset: {e}"))?.arch,
    };
    let mut cfg = preset_config(arch, name, None, 4096).map_err(|e| format!("--preset: {e}"))?;
    cfg.path = PathBuf::from(format!("preset:{name}"));
    Ok(cfg)
}

/// The reward model of a PPO plan: a directory, a preset, or the policy's shape; a score head.
fn reward_config(a: &PlanArgs, policy: &ModelConfig) -> Result<ModelConfig, String> {
    let mut rm = match &a.reward {
        None => policy.clone(),
        Some(r) if std::path::Path::new(r).join("config.json").is_file() => model_config(Some(&PathBuf::from(r)), None, None)?,
        Some(r) => model_config(None, Some(r), None).map_err(|e| format!("--reward {r}: not a model directory, and {e}"))?,
    };
    rm.head = okapi_model::Head::Score;
    Ok(rm)
}

fn train_defaults(a: &PlanArgs) -> Result<TrainConfig, String> {
    let stage = match a.command {
        PlanCommand::Sft => Stage::Sft,
        PlanCommand::Reward => Stage::Reward,
        _ => Stage::Dpo,
    };
    let mut cfg = stage.config(a.recipe)?;
    cfg.batch_size = a.batch_size.unwrap_or(cfg.batch_size);
    cfg.max_len = a.max_len.unwrap_or(cfg.max_len);
    cfg.unfrozen_layers = a.unfrozen_layers.or(cfg.unfrozen_layers);
    Ok(cfg)
}

fn ppo_defaults(a: &PlanArgs) -> PpoConfig {
    let mut cfg = match (a.command, a.recipe) {
        (PlanCommand::Grpo, _) => PpoConfig::grpo(),
        (PlanCommand::Rloo, _) => PpoConfig::rloo(),
        (_, Recipe::Default) => PpoConfig::defaults(),
        (_, Recipe::Okapi) => PpoConfig::okapi(),
    };
    cfg.rollouts = a.rollouts.unwrap_or(cfg.rollouts);
    cfg.chunk_size = a.chunk_size.unwrap_or(cfg.chunk_size);
    // a group method's optimizer step is --batch-size completions
    cfg.minibatch = if cfg.group.is_some() { a.batch_size } else { a.ppo_batch_size }.unwrap_or(cfg.minibatch);
    cfg.sampling.max_new_tokens = a.max_new_tokens.unwrap_or(cfg.sampling.max_new_tokens);
    cfg.max_prompt_len = a.max_prompt_len.unwrap_or(cfg.max_prompt_len);
    cfg.unfrozen_layers = a.unfrozen_layers.or(cfg.unfrozen_layers);
    cfg
}

/// `--zero 1` or `2` over `--ranks N`: N (the plan of one rank, holding about 1/N of the
/// AdamW moments, and with 2 of the blocks' gradients); otherwise 0.
fn zero_ranks(a: &PlanArgs) -> Result<usize, String> {
    let command = format!("{:?}", a.command).to_lowercase();
    match (a.zero, a.ranks) {
        (_, 0) => Err("--ranks 0: expected at least 1 rank".into()),
        (0, _) => Ok(0),
        (z, _) if z > 2 => Err(format!("--zero {z}: expected 0, 1 or 2")),
        (z, n) if a.memory.offload_optimizer => Err(format!("--zero {z} with --offload-optimizer ({n} ranks): choose one (the offload keeps the whole AdamW state in host memory)")),
        (z, n) if matches!(a.command, PlanCommand::Eval | PlanCommand::Generate) => Err(format!("--zero {z} ({n} ranks): {command} holds no optimizer state")),
        (_, 1) => Ok(0),
        (_, n) => Ok(n),
    }
}

/// The need the command itself would check, from the flags (or the recipe's defaults) as upper
/// bounds: every batch full, every sequence at the longest length.
fn plan_need(a: &PlanArgs, policy: &ModelConfig) -> Result<Need, String> {
    let need = match a.command {
        PlanCommand::Sft | PlanCommand::Reward | PlanCommand::Dpo => {
            let cfg = train_defaults(a)?;
            cfg.validate().map_err(|e| e.to_string())?;
            let mut model = policy.clone();
            if a.command == PlanCommand::Reward {
                model.head = okapi_model::Head::Score;
            }
            let (trainable, mut t) = super::train_flags::trained_params(&model, cfg.unfrozen_layers, &a.memory, &a.lora)?;
            t.zero_ranks = zero_ranks(a)?;
            t.zero_grads = a.zero == 2;
            // DPO holds a chosen and a rejected sequence per pair
            let per_pair = if a.command == PlanCommand::Dpo { 2 } else { 1 };
            let need = training_run_need(&model, trainable, cfg.batch_size.saturating_mul(per_pair).saturating_mul(cfg.max_len), t, "lower --batch-size or --max-len");
            Need { what: format!("{:?}", a.command).to_lowercase(), ..need }
        }
        PlanCommand::Ppo | PlanCommand::Grpo | PlanCommand::Rloo => {
            let cfg = ppo_defaults(a);
            cfg.validate().map_err(|e| e.to_string())?;
            ppo_need(policy, Some(&reward_config(a, policy)?), &cfg, cfg.max_prompt_len, PpoMemory { separate_critic: a.critic == "separate", hydra: a.reference == "hydra", flags: &a.memory, lora: &a.lora, zero_ranks: zero_ranks(a)?, zero_grads: a.zero == 2 })?
        }
        PlanCommand::Eval | PlanCommand::Generate => {
            let (b, t) = (a.batch_size.unwrap_or(1), a.max_len.unwrap_or(512));
            let new = if a.command == PlanCommand::Generate { a.max_new_tokens.unwrap_or(256) } else { 0 };
            Need::new(format!("{:?}", a.command).to_lowercase(), "lower --batch-size or --max-len")
                .device_lowered_by("weights", weights_bytes(policy), "use a smaller model")
                .device_lowered_by("KV cache", kv_cache_bytes(policy, b, t.saturating_add(new), t), "lower --batch-size, --max-len or --max-new-tokens")
        }
    };
    Ok(need)
}

/// The table and the JSON line (last on stdout); an error when the need does not fit.
fn report<B: Backend>(be: &B, a: &PlanArgs, need: &Need) -> Result<(), String> {
    print!("{}", need.table(be));
    let fits = need.fits(be);
    let total = fits.iter().fold(0u64, |s, f| s.saturating_add(f.total()));
    let device = &fits[0];
    let verdict = need.check(be);
    let mut json = serde_json::json!({
        "command": format!("{:?}", a.command).to_lowercase(),
        "model": need_model(a),
        "backend": be.name(),
        "total_bytes": total,
        "device_bytes": device.budget.as_ref().map(|b| b.bytes),
        "fits": verdict.is_ok(),
    });
    for part in fits.iter().flat_map(|f| &f.parts).chain(&need.info) {
        let key = part.key();
        let old = json.get(&key).and_then(|v| v.as_u64()).unwrap_or(0);
        json[key] = serde_json::json!(old.saturating_add(part.bytes));
    }
    println!("{json}");
    // a plan that does not fit is the command's refusal: one line, a non-zero exit
    verdict.map_err(|e| e.to_string())
}

fn need_model(a: &PlanArgs) -> String {
    match (&a.model, &a.preset) {
        (Some(m), _) => m.display().to_string(),
        (None, Some(p)) => format!("preset:{p}"),
        _ => String::new(),
    }
}
