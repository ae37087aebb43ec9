//! `okapi-train ppo`: PPO against a reward model (Okapi's RLHF stage), or against composed
//! rewards (`--reward rm=1,lang=0.5`). Every setting flag is optional: unset, it takes
//! okapi-train's default or, with `--recipe okapi`, Okapi's value (okapi-rlhf's
//! `PpoConfig::defaults` / `PpoConfig::okapi`). The flags it shares with grpo and rloo, and the
//! run itself, are in `rl_flags.rs`.

use super::rl_flags::{err, run_rl, shown_common, Method, RlArgs};
use super::train_flags::{annotate_arg, MemoryFlags, Recipe};
use okapi_model::memory::Need;
use okapi_model::ModelConfig;
use okapi_rlhf::ppo::{KlControl, LossNorm, ValueHeadKind, WhitenScope};
use okapi_rlhf::PpoConfig;
use okapi_runtime::Backend;

#[derive(clap::Args, Debug)]
pub struct PpoArgs {
    #[command(flatten)]
    pub rl: RlArgs,
    /// Settings of the flags left unset: default (okapi-train's) or okapi (Okapi's published run)
    #[arg(long, value_enum, default_value_t = Recipe::Default)]
    pub recipe: Recipe,
    /// Passes over each iteration's rollouts
    #[arg(long)]
    pub ppo_epochs: Option<usize>,
    /// Rollouts per optimizer step
    #[arg(long)]
    pub ppo_batch_size: Option<usize>,
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
    /// Scores (the summed rewards) are clipped to ±this
    #[arg(long)]
    pub reward_clip: Option<f32>,
    /// shared: a value head on the policy's trunk (default); separate: a critic from the reward model
    #[arg(long, default_value = "shared")]
    pub critic: String,
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
            ppo_epochs: self.ppo_epochs.unwrap_or(r.ppo_epochs),
            minibatch: self.ppo_batch_size.unwrap_or(r.minibatch),
            gamma: self.gamma.unwrap_or(r.gamma),
            lam: self.lam.unwrap_or(r.lam),
            reward_clip: self.reward_clip.unwrap_or(r.reward_clip),
            ..self.rl.apply(&r)?
        };
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
        c.validate().map_err(err)?;
        Ok(c)
    }

    /// The trlx-or-okapi choices: each flag that is set, else the recipe's; the separate critic
    /// keeps the reward model's linear score head as its value head.
    fn resolve_choices(&self, c: &mut PpoConfig, r: &PpoConfig) -> Result<(), String> {
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
    let mut v = shown_common(c);
    v.extend([
        ("ppo_epochs", c.ppo_epochs.to_string()),
        ("ppo_batch_size", c.minibatch.to_string()),
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
    ]);
    v
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
    // the prompt paths, then the flags, before anything is loaded or written
    a.rl.prompts = okapi_data::expand_data_paths("--prompts", &a.rl.prompts)?;
    check_choices(&a)?;
    a.resolve()?;
    super::on_backend!(a.rl.backend, a.rl.precision, |be| run_on(be, &a))
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

/// The memory of a PPO, GRPO or RLOO run: the policy (trained), its reference (none for a group
/// method with β = 0), the reward model (when one scores; a separate critic from it, trained
/// too), their activations over a chunk of rollouts, and the rollouts' KV cache.
pub fn ppo_need(policy: &ModelConfig, rm: Option<&ModelConfig>, cfg: &PpoConfig, longest_prompt: usize, o: PpoMemory) -> Result<Need, String> {
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
    let batch_flag = if cfg.group.is_some() { "--batch-size" } else { "--ppo-batch-size" };
    let minibatch = format!("lower {batch_flag}, --chunk-size, --max-new-tokens or --max-prompt-len");
    let minibatch = minibatch.as_str();
    let cap_t = longest_prompt.saturating_add(cfg.sampling.max_new_tokens);
    // as the run sizes its buffers: a chunk or minibatch is at most an iteration's rollouts
    let chunk = cfg.chunk_size.min(cfg.rollouts);
    let rows = chunk.max(cfg.minibatch.min(cfg.rollouts)).saturating_mul(cap_t);
    // the value head trains beside the policy's layers (the separate critic's is its score head)
    let c = policy.hidden_size as u128;
    let (value_params, value_hidden) = match (separate_critic, cfg.value_head) {
        _ if cfg.group.is_some() => (0, 0),
        (true, _) => (0, 0),
        (false, ValueHeadKind::Linear) => (c + 1, 0),
        (false, ValueHeadKind::Mlp) => (2 * c * c + 3 * c + 1, 2 * c),
    };
    let trainable = policy_trained.saturating_add(value_params);
    // the value head (like LoRA's adapters) trains beside the base, not in place of its weights
    let t = Techniques { adapters: t.adapters.saturating_add(value_params), ..t };
    let chunk_rows = chunk.saturating_mul(cap_t);
    let reference = match (hydra, cfg.unfrozen_layers) {
        _ if !cfg.needs_reference() => 0,
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
        _ if !cfg.needs_reference() => "reference model (none: --beta 0)",
        (true, true) if lora => "reference model (LoRA: the policy's base, adapters off)",
        (true, true) => "reference model (hydra: top blocks and head)",
        _ => "reference model",
    };
    let mut need = training_run_need(policy, trainable, rows, t, minibatch)
        .device_lowered_by(reference_label, reference, "--unfrozen-layers N with --reference hydra")
        .device_lowered_by("reward model", rm.map_or(0, |rm| weights_bytes_with(rm, all_bf16(rm))), if frozen_bf16 || rm.is_none() { "" } else { "--frozen-bf16" })
        .device_lowered_by("reference and reward activations", if cfg.needs_reference() { activation_bytes(policy, chunk_rows) } else { 0 }.saturating_add(rm.map_or(0, |rm| activation_bytes(rm, chunk_rows))), CHUNK)
        .device_lowered_by("KV cache", kv_cache_bytes(policy, chunk, cap_t, longest_prompt), CHUNK);
    if value_hidden > 0 {
        // pre-activation, post-ReLU and its gradient, f32
        let bytes = value_hidden.saturating_mul(rows as u128).saturating_mul(12).min(u64::MAX as u128) as u64;
        need = need.device_lowered_by("value head activations (MLP hidden layer)", bytes, minibatch);
    }
    if let (true, Some(rm)) = (separate_critic, rm) {
        let critic_trainable = rm.trainable_count(cfg.unfrozen_layers).map_err(err)?;
        let critic = training_run_need(rm, critic_trainable, rows, t, minibatch);
        let bytes = critic.device.iter().fold(0u64, |a, p| a.saturating_add(p.bytes));
        need = need.device_lowered_by("critic (weights, gradients, AdamW, activations)", bytes, "train fewer layers (--unfrozen-layers) or --critic shared");
    }
    // per rollout token: ids, log-probs (policy, reference), values, advantages, returns
    need = need.host("rollouts", (cfg.rollouts as u64).saturating_mul(cap_t as u64).saturating_mul(24));
    need.what = cfg.command().to_uppercase();
    need.hint = format!("lower --rollouts, --chunk-size, {batch_flag}, --max-new-tokens or --max-prompt-len, or train fewer layers (--unfrozen-layers)");
    Ok(need)
}

impl PpoArgs {
    fn memory(&self) -> PpoMemory<'_> {
        let zero_ranks = if self.rl.zero >= 1 { super::ranks::comm().world() } else { 0 };
        PpoMemory { separate_critic: self.critic == "separate", hydra: self.rl.reference == "hydra", flags: &self.rl.memory, lora: &self.rl.lora, zero_ranks, zero_grads: self.rl.zero == 2 }
    }
}

/// The flags no setting check covers: one line each.
fn check_choices(a: &PpoArgs) -> Result<(), String> {
    a.rl.check()?;
    if !matches!(a.critic.as_str(), "shared" | "separate") {
        return Err(format!("--critic {}: expected shared (a value head on the policy's trunk) or separate (a critic initialised from the reward model)", a.critic));
    }
    if a.critic == "separate" && !a.rl.rewards()?.0.needs_rm() {
        return Err(format!("--critic separate: the critic starts from the reward model, and --reward {} has no rm term", a.rl.reward));
    }
    Ok(())
}

fn run_on<B: Backend>(be: B, a: &PpoArgs) -> Result<(), String> {
    check_choices(a)?;
    let cfg = a.resolve()?;
    let separate_critic = a.critic == "separate";
    let need = |policy: &ModelConfig, rm: Option<&ModelConfig>, longest: usize| ppo_need(policy, rm, &cfg, longest, a.memory());
    let method = Method { separate_critic, value_head: (!separate_critic).then_some(cfg.value_head), args_json: args_json(a, &cfg), need: &need };
    run_rl(be, &a.rl, &cfg, method)
}

/// `args.json`: the command line, the resolved settings, and every flag's value (`flags`).
fn args_json(a: &PpoArgs, c: &PpoConfig) -> serde_json::Value {
    let mut v = a.rl.args_json("ppo", c);
    let ppo = serde_json::json!({
        "recipe": format!("{:?}", a.recipe).to_lowercase(), "critic": a.critic, "ppo_epochs": c.ppo_epochs, "ppo_batch_size": c.minibatch,
        "init_kl_coef": c.kl.beta, "kl_target": c.kl.target, "kl_horizon": c.kl.horizon, "gamma": c.gamma, "lam": c.lam,
        "cliprange": c.loss.cliprange, "cliprange_value": c.loss.cliprange_value, "vf_coef": c.loss.vf_coef, "reward_clip": super::train_flags::f32_value(c.reward_clip),
        "value_head": c.value_head.as_str(), "whiten": c.whiten.as_str(), "loss_norm": c.loss.norm.as_str(), "kl_control": c.kl_control.as_str(), "train_embedding_norm": c.train_embedding_norm,
    });
    if let (Some(o), serde_json::Value::Object(p)) = (v.as_object_mut(), ppo) {
        o.extend(p);
    }
    super::config::add_to_args_json(&mut v);
    v
}
