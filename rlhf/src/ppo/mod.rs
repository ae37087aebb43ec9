//! PPO as Okapi ran it with trlx: rollouts sampled with the KV cache, scored by the reward model,
//! per-token KL penalty against the frozen initial policy with an adaptive coefficient, GAE,
//! whitened advantages, clipped policy and value losses over several epochs of minibatches.
//! The value head sits on the policy's trunk (or a separate critic) and is saved beside the HF
//! weights.
//!
//! The same loop runs GRPO and RLOO (`PpoConfig::group`, [`group`]): G completions per prompt,
//! a group baseline instead of the critic, the k3 KL in the loss. Rewards of all three come
//! from [`crate::rewards`] (`--reward rm=1,lang=0.5,length=-0.001`).
//!
//! [`Ppo`] runs one phase per method — rollouts, scoring, update, logging, checkpoint — and
//! [`run_ppo`] strings them together; `checkpoint.rs` holds the resume check it shares with the
//! trainer.

pub mod choices;
pub mod gae;
pub mod group;
pub mod kl;
mod run;
pub mod update;

use crate::optim::AdamWConfig;
use crate::{Sampling, TrainError};
pub use choices::{encode_prompt, fit_prompt, KlControl, LossNorm, LossType, PromptEncoding, ScaleRewards, ValueHeadKind, WhitenScope};
use gae::{gae, token_rewards, whiten};
use kl::KlController;
use okapi_model::{DType, Model, Rng};
use okapi_runtime::Backend;
use std::path::Path;
pub use run::{check_resume, run_ppo, Ppo};
pub use update::{PolicyEval, PpoBufs, PpoLossCfg, PpoStats, Rollout};

/// The settings of a PPO run. Named recipes: [`PpoConfig::defaults`] (okapi-train's) and
/// [`PpoConfig::okapi`] (Okapi's published run).
#[derive(Clone, Debug)]
pub struct PpoConfig {
    pub iterations: u64,
    /// rollouts per iteration (Okapi: 128)
    pub rollouts: usize,
    /// sequences generated / scored / evaluated at once
    pub chunk_size: usize,
    pub ppo_epochs: usize,
    /// rollouts per optimizer step
    pub minibatch: usize,
    pub sampling: Sampling,
    /// prompts longer than this many tokens are skipped or left-truncated, as `prompt_encoding` says
    pub max_prompt_len: usize,
    pub prompt_encoding: PromptEncoding,
    pub value_head: ValueHeadKind,
    pub whiten: WhitenScope,
    pub kl_control: KlControl,
    /// BLOOM's `word_embeddings_layernorm` trains under `unfrozen_layers` (trlx froze only the
    /// blocks below and the embeddings)
    pub train_embedding_norm: bool,
    pub kl: KlController,
    pub gamma: f64,
    pub lam: f64,
    pub loss: PpoLossCfg,
    pub reward_clip: f32,
    pub lr: f64,
    pub adam: AdamWConfig,
    pub max_grad_norm: f64,
    /// train only the policy's top N blocks, its final norm and the heads (`None`: everything)
    pub unfrozen_layers: Option<usize>,
    pub seed: u64,
    pub save_every: Option<u64>,
    /// continue from this output directory's (or this) checkpoint, bit-identically
    pub resume: Option<std::path::PathBuf>,
    pub samples_every: u64,
    pub save_dtype: Option<DType>,
    pub log_every: u64,
    /// ZeRO stage of a data-parallel run: 0, every rank holds the whole AdamW state; 1, each
    /// rank holds and steps the moments of its share of the tensors (policy and critic), then
    /// the new values are exchanged (the same numbers, bit for bit); 2, also the blocks'
    /// gradients, reduced to their owners as the backward runs
    pub zero: u8,
    /// what a completion's reward is made of (PPO as Okapi ran it: the reward model alone)
    pub rewards: crate::rewards::RewardSpec,
    /// GRPO or RLOO instead of PPO: completions in groups, no critic, the group baseline
    pub group: Option<group::GroupCfg>,
}

impl PpoConfig {
    /// Refuses settings that cannot run, naming the flag that sets each (one line).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |setting: &'static str, problem: String| Err(TrainError::Setting { setting, problem });
        // (a group method names PPO's epochs and minibatches as TRL does)
        let (epochs, batch) = if self.group.is_some() { ("--num-iterations", "--batch-size") } else { ("--ppo-epochs", "--ppo-batch-size") };
        let counts = [
            ("--iterations", self.iterations),
            ("--rollouts", self.rollouts as u64),
            ("--chunk-size", self.chunk_size as u64),
            (epochs, self.ppo_epochs as u64),
            (batch, self.minibatch as u64),
            ("--max-new-tokens", self.sampling.max_new_tokens as u64),
            ("--max-prompt-len", self.max_prompt_len as u64),
            ("--samples-every", self.samples_every),
            ("--log-every", self.log_every),
            ("--save-every", self.save_every.unwrap_or(1)),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return bad(flag, "must be at least 1".into());
        }
        if self.zero > 2 {
            return bad("--zero", format!("{}: expected 0, 1 or 2", self.zero));
        }
        if let Err(e) = self.sampling.validate() {
            let flag = if e.starts_with("--temperature") { "--temperature" } else { "--top-p" };
            return bad(flag, e.split_once(' ').map_or(e.clone(), |(_, rest)| rest.to_string()));
        }
        let finite = |flag: &'static str, x: f64, ok: bool, expected: &str| if x.is_finite() && ok { Ok(()) } else { bad(flag, format!("{x}: expected {expected}")) };
        finite("--init-kl-coef", self.kl.beta, self.kl.beta >= 0.0, "a finite number ≥ 0")?;
        finite("--kl-target", self.kl.target.unwrap_or(1.0), self.kl.target.is_none_or(|t| t > 0.0), "a positive number or `none`")?;
        finite("--kl-horizon", self.kl.horizon, self.kl.horizon > 0.0, "a positive number")?;
        finite("--gamma", self.gamma, (0.0..=1.0).contains(&self.gamma), "a number in [0, 1]")?;
        finite("--lam", self.lam, (0.0..=1.0).contains(&self.lam), "a number in [0, 1]")?;
        finite("--cliprange", self.loss.cliprange, self.loss.cliprange > 0.0, "a positive number")?;
        finite("--cliprange-value", self.loss.cliprange_value, self.loss.cliprange_value > 0.0, "a positive number")?;
        finite("--vf-coef", self.loss.vf_coef, self.loss.vf_coef >= 0.0, "a finite number ≥ 0")?;
        finite("--reward-clip", self.reward_clip as f64, self.reward_clip > 0.0, "a positive number")?;
        finite("--lr", self.lr, self.lr >= 0.0, "a finite number ≥ 0")?;
        finite("--max-grad-norm", self.max_grad_norm, self.max_grad_norm >= 0.0, "a finite number ≥ 0 (0: no clipping)")?;
        if let Some(g) = &self.group {
            if g.num_generations < 2 {
                return bad("--num-generations", format!("{}: expected at least 2 (the baseline is the group's other completions)", g.num_generations));
            }
            if !self.rollouts.is_multiple_of(g.num_generations) {
                return bad("--rollouts", format!("{}: expected a multiple of --num-generations {} (whole groups)", self.rollouts, g.num_generations));
            }
            g.loss.validate()?;
        }
        self.adam.validate()
    }

    /// The command that runs these settings: ppo, grpo or rloo.
    pub fn command(&self) -> &'static str {
        self.group.map_or("ppo", |g| g.algo.as_str())
    }

    /// Whether the run needs the frozen reference: PPO's KL penalty, or β > 0.
    pub fn needs_reference(&self) -> bool {
        self.group.is_none_or(|g| g.loss.beta != 0.0)
    }

    /// Whether the update reads log-probs of the sampling policy computed apart: not when every
    /// iteration takes one optimizer step (the policy that sampled is the one updated, ρ = 1,
    /// as TRL leaves `old_per_token_logps` out).
    pub fn needs_old_logprobs(&self) -> bool {
        self.group.is_none() || self.ppo_epochs > 1 || self.minibatch < self.rollouts
    }

    /// The settings that decide the run's course, by flag: a resume must keep each.
    pub fn trajectory_settings(&self) -> crate::checkpoint::Settings {
        let s = &self.sampling;
        [
            ("--rollouts", serde_json::json!(self.rollouts)),
            ("--chunk-size", serde_json::json!(self.chunk_size)),
            ("--ppo-epochs", serde_json::json!(self.ppo_epochs)),
            ("--ppo-batch-size", serde_json::json!(self.minibatch)),
            ("--temperature", serde_json::json!(s.temperature)),
            ("--top-p", serde_json::json!(s.top_p)),
            ("--top-k", serde_json::json!(s.top_k)),
            ("--max-new-tokens", serde_json::json!(s.max_new_tokens)),
            ("--max-prompt-len", serde_json::json!(self.max_prompt_len)),
            (PromptEncoding::FLAG, serde_json::json!(self.prompt_encoding.as_str())),
            (ValueHeadKind::FLAG, serde_json::json!(self.value_head.as_str())),
            (WhitenScope::FLAG, serde_json::json!(self.whiten.as_str())),
            (LossNorm::FLAG, serde_json::json!(self.loss.norm.as_str())),
            (KlControl::FLAG, serde_json::json!(self.kl_control.as_str())),
            ("--train-embedding-norm", serde_json::json!(self.train_embedding_norm)),
            ("--init-kl-coef", serde_json::json!(self.kl.beta)),
            ("--kl-target", serde_json::json!(self.kl.target)),
            ("--kl-horizon", serde_json::json!(self.kl.horizon)),
            ("--gamma", serde_json::json!(self.gamma)),
            ("--lam", serde_json::json!(self.lam)),
            ("--cliprange", serde_json::json!(self.loss.cliprange)),
            ("--cliprange-value", serde_json::json!(self.loss.cliprange_value)),
            ("--vf-coef", serde_json::json!(self.loss.vf_coef)),
            ("--reward-clip", serde_json::json!(self.reward_clip)),
            ("--lr", serde_json::json!(self.lr)),
            ("--max-grad-norm", serde_json::json!(self.max_grad_norm)),
            ("--unfrozen-layers", serde_json::json!(self.unfrozen_layers)),
            ("--seed", serde_json::json!(self.seed)),
        ]
        .into_iter()
        .chain(self.adam.settings())
        .chain(self.group_settings())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The settings only a group method or a composed reward has (none for PPO on a reward
    /// model, so its older checkpoints resume).
    fn group_settings(&self) -> Vec<(&'static str, serde_json::Value)> {
        let mut v = Vec::new();
        if !self.rewards.is_rm_only() {
            v.push(("--reward", serde_json::json!(self.rewards.to_flag())));
        }
        if let Some(g) = &self.group {
            v.extend([
                ("--num-generations", serde_json::json!(g.num_generations)),
                (ScaleRewards::FLAG, serde_json::json!(g.scale_rewards.as_str())),
                (LossType::FLAG, serde_json::json!(g.loss.loss_type.as_str())),
                ("--beta", serde_json::json!(g.loss.beta)),
                ("--epsilon", serde_json::json!(g.loss.epsilon)),
            ]);
        }
        v
    }
}

/// Reward-model input ids for (prompt, response).
pub type RmIds<'a> = &'a dyn Fn(&[u32], &[u32]) -> Result<Vec<u32>, TrainError>;

/// How the caller turns tokens into reward-model inputs and text.
pub struct PpoIo<'a> {
    /// reward-model input ids for (prompt, response) — the same ids, or re-tokenized text
    pub rm_ids: RmIds<'a>,
    pub decode: &'a dyn Fn(&[u32]) -> String,
    pub eos: u32,
    pub pad: u32,
    pub rm_pad: u32,
    /// a tokenizer.json copied beside every saved model
    pub tokenizer: Option<&'a Path>,
    /// `--tensorboard DIR`: each iteration's metrics as scalars, its samples as text
    pub tensorboard: Option<&'a Path>,
    /// the ranks of a data-parallel run (one process: `&SingleProcess`): rollouts, scoring and
    /// each minibatch's share split across them, every rank holding every rollout (it lives as
    /// long as the process: ZeRO-2's gradient hook keeps it)
    pub comm: &'static dyn okapi_runtime::Collective,
    /// each prompt's language (`None`: unknown), for the `lang` reward
    pub prompt_langs: &'a [Option<&'static str>],
}

/// What a PPO run did, per iteration.
#[derive(Clone, Debug, Default)]
pub struct PpoSummary {
    pub iterations: u64,
    /// mean score of each iteration's rollouts
    pub scores: Vec<f64>,
    pub kls: Vec<f64>,
    /// every iteration's metrics line of this process (what metrics.jsonl holds)
    pub history: Vec<serde_json::Value>,
}

/// A critic separate from the policy (`--critic separate`): a reward model's trunk with a value
/// head, and which of its parameters train.
pub struct Critic<B: Backend> {
    pub model: Model<B>,
    pub mask: Vec<bool>,
}

impl<B: Backend> Critic<B> {
    /// trlx's separate critic: the reward model's trunk, its score head copied into a value
    /// head (zero bias); the score head itself is frozen, the trunk as `unfrozen_layers` says.
    pub fn from_reward_model(mut rm: Model<B>, unfrozen_layers: Option<usize>) -> Result<Critic<B>, TrainError> {
        let score = rm.score.ok_or_else(|| TrainError::Setting { setting: "--critic separate", problem: format!("{}: not a reward model", rm.cfg.path.display()) })?;
        let w = rm.host_value(score);
        rm.add_value_head(&w, 0.0);
        let mut mask = rm.trainable_mask(unfrozen_layers)?;
        mask[score] = false;
        Ok(Critic { model: rm, mask })
    }
}

/// The models of a PPO run: the policy (trained), its frozen reference (or, with LoRA, the
/// policy's own base), the reward model, and an optional separate critic (else the policy
/// carries a value head).
pub struct PpoModels<'a, B: Backend> {
    pub policy: Model<B>,
    /// the frozen reference; `None` with a LoRA policy: its base, the adapters switched off
    pub reference: Option<&'a Model<B>>,
    /// `None` when no reward is the reward model's (`--reward lang=1`, say)
    pub reward: Option<&'a Model<B>>,
    pub critic: Option<Critic<B>>,
}

/// Adds the value head `kind` on the policy's trunk, drawn from `seed`: trlx's MLP with
/// PyTorch's default init (weights and biases U(±1/√fan_in)), or a linear head with
/// N(0, initializer_range) weights and zero bias.
pub fn add_value_head<B: Backend>(policy: &mut Model<B>, kind: ValueHeadKind, seed: u64) {
    let c = policy.cfg.hidden_size;
    let mut rng = Rng::new(seed ^ 0x7A1E);
    match kind {
        ValueHeadKind::Linear => {
            let std = policy.cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
            let w: Vec<f32> = (0..c).map(|_| (rng.normal() * std) as f32).collect();
            policy.add_value_head(&w, 0.0);
        }
        ValueHeadKind::Mlp => {
            let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..n).map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32).collect()
            };
            let (up_w, up_b) = (uniform(2 * c * c, c), uniform(2 * c, c));
            let (down_w, down_b) = (uniform(2 * c, 2 * c), uniform(1, 2 * c));
            policy.add_value_head_mlp(&up_w, &up_b, &down_w, down_b[0]);
        }
    }
}

/// Rollouts → rewards, GAE advantages and returns (in place), the advantages whitened over the
/// whole batch when `whiten` is `Batch` (else per minibatch, [`minibatch_rollouts`]); returns
/// the mean over rollouts of the summed log-ratio over the response (the KL okapi logs).
pub fn compute_advantages(rollouts: &mut [Rollout], beta: f64, gamma: f64, lam: f64, clip: f32, scope: WhitenScope) -> f64 {
    let mut kl_sum = 0.0;
    for r in rollouts.iter_mut() {
        kl_sum += response_kl(r);
        r.rewards = token_rewards(&r.old_logprobs, &r.ref_logprobs, r.score, beta, clip);
        let (a, ret) = gae(&r.rewards, &r.old_values, gamma, lam);
        r.returns = ret;
        r.raw_advantages = a;
    }
    let mut advs: Vec<Vec<f64>> = rollouts.iter().map(|r| r.raw_advantages.clone()).collect();
    if scope == WhitenScope::Batch {
        whiten(&mut advs);
    }
    for (r, a) in rollouts.iter_mut().zip(advs) {
        r.advantages = a;
    }
    kl_sum / rollouts.len().max(1) as f64
}

/// The rollouts of one optimizer-step minibatch as the loss reads them: with `Minibatch`
/// scope, copies whose advantages are whitened over the minibatch (biased variance); with
/// `Batch`, as they are.
pub fn minibatch_rollouts(rollouts: &[&Rollout], scope: WhitenScope) -> Vec<Rollout> {
    let mut mb: Vec<Rollout> = rollouts.iter().map(|&r| r.clone()).collect();
    if scope == WhitenScope::Minibatch {
        let mut advs: Vec<Vec<f64>> = mb.iter().map(|r| r.raw_advantages.clone()).collect();
        gae::whiten_pooled(&mut advs);
        for (r, a) in mb.iter_mut().zip(advs) {
            r.advantages = a;
        }
    }
    mb
}

/// The KL the adaptive controller is fed for an iteration's rollouts (scored in chunks of
/// `chunk`): okapi's mean response log-ratio, or trlx's chunked k3 estimate
/// ([`KlControl::Trlx`]).
pub fn controller_kl(rollouts: &[Rollout], chunk: usize, control: KlControl) -> f64 {
    let mean = |xs: &mut dyn Iterator<Item = f64>, n: usize| xs.sum::<f64>() / n.max(1) as f64;
    match control {
        KlControl::ResponseK1 => mean(&mut rollouts.iter().map(response_kl), rollouts.len()),
        KlControl::Trlx => {
            let chunks: Vec<&[Rollout]> = rollouts.chunks(chunk.max(1)).collect();
            let roots = mean(&mut chunks.iter().map(|c| mean(&mut c.iter().map(|r| r.kl_k3), c.len()).max(0.0).sqrt()), chunks.len());
            roots * roots
        }
    }
}

/// Σ (log π_old − log π_ref) over a rollout's response (k1, the KL in its rewards).
fn response_kl(r: &Rollout) -> f64 {
    r.old_logprobs.iter().zip(&r.ref_logprobs).map(|(&o, &f)| o as f64 - f as f64).sum()
}

/// Σ k3 over rollout `k`'s prompt and response positions from the policy's and the
/// reference's log-probs (both evaluated with the prompt).
pub fn k3_sum(policy: &PolicyEval, reference: &PolicyEval, k: usize) -> f64 {
    let pairs = policy.prompt_logprobs[k].iter().zip(&reference.prompt_logprobs[k]).chain(policy.logprobs[k].iter().zip(&reference.logprobs[k]));
    pairs
        .map(|(&p, &r)| {
            let d = p as f64 - r as f64;
            d.exp() - 1.0 - d
        })
        .sum()
}

/// Moves β after an iteration as `control` says: once with n_steps = the rollouts, or (trlx)
/// after each of the `ppo_epochs` epochs with n_steps = the minibatch size.
pub fn update_kl_controller(kl: &mut KlController, current: f64, cfg: &PpoConfig) {
    match cfg.kl_control {
        KlControl::ResponseK1 => kl.update(current, cfg.rollouts),
        KlControl::Trlx => (0..cfg.ppo_epochs).for_each(|_| kl.update(current, cfg.minibatch)),
    }
}

/// The value head's parameters by name (`v_head.weight`, `v_head.bias`, or trlx's
/// `v_head.0.*` / `v_head.2.*`) as a safetensors file.
pub fn value_head_bytes<B: Backend>(policy: &Model<B>) -> Result<Vec<u8>, TrainError> {
    if policy.value_head.is_none() {
        return Err(TrainError::Setting { setting: "value head", problem: "the policy has none".into() });
    }
    let ser = |e: safetensors::SafeTensorError| TrainError::Serialize { what: "value head", problem: e.to_string() };
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = policy
        .value_head_params()
        .map(|i| (policy.info[i].name.clone(), policy.info[i].shape.clone(), policy.host_value(i).iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map_err(ser)?)))
        .collect::<Result<Vec<_>, TrainError>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta)).map_err(ser)
}
