//! PPO as Okapi ran it with trlx: rollouts sampled with the KV cache, scored by the reward model,
//! per-token KL penalty against the frozen initial policy with an adaptive coefficient, GAE,
//! whitened advantages, clipped policy and value losses over several epochs of minibatches.
//! The value head sits on the policy's trunk (or a separate critic) and is saved beside the HF
//! weights.
//!
//! [`Ppo`] runs one phase per method — rollouts, scoring, update, logging, checkpoint — and
//! [`run_ppo`] strings them together; `checkpoint.rs` holds the resume check it shares with the
//! trainer.

pub mod gae;
pub mod kl;
mod run;
pub mod update;

use crate::optim::AdamWConfig;
use crate::{Sampling, TrainError};
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
    /// prompts longer than this many tokens are skipped (and counted) when prompts are loaded
    pub max_prompt_len: usize,
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
}

impl PpoConfig {
    /// Refuses settings that cannot run, naming the flag that sets each (one line).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |setting: &'static str, problem: String| Err(TrainError::Setting { setting, problem });
        let counts = [
            ("--iterations", self.iterations),
            ("--rollouts", self.rollouts as u64),
            ("--chunk-size", self.chunk_size as u64),
            ("--ppo-epochs", self.ppo_epochs as u64),
            ("--ppo-batch-size", self.minibatch as u64),
            ("--max-new-tokens", self.sampling.max_new_tokens as u64),
            ("--max-prompt-len", self.max_prompt_len as u64),
            ("--samples-every", self.samples_every),
            ("--log-every", self.log_every),
            ("--save-every", self.save_every.unwrap_or(1)),
        ];
        if let Some((flag, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return bad(flag, "must be at least 1".into());
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
        self.adam.validate()
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
        .map(|(k, v)| (k.to_string(), v))
        .collect()
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

/// The models of a PPO run: the policy (trained), its frozen reference, the reward model, and
/// an optional separate critic (else the policy carries a value head).
pub struct PpoModels<'a, B: Backend> {
    pub policy: Model<B>,
    pub reference: &'a Model<B>,
    pub reward: &'a Model<B>,
    pub critic: Option<Critic<B>>,
}

/// Adds trlx's value head on the policy's trunk: N(0, initializer_range) weights from `seed`,
/// zero bias.
pub fn add_value_head<B: Backend>(policy: &mut Model<B>, seed: u64) {
    let std = policy.cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
    let mut rng = Rng::new(seed ^ 0x7A1E);
    let w: Vec<f32> = (0..policy.cfg.hidden_size).map(|_| (rng.normal() * std) as f32).collect();
    policy.add_value_head(&w, 0.0);
}

/// Rollouts → rewards, advantages, returns (in place); returns the mean KL per rollout.
pub fn compute_advantages(rollouts: &mut [Rollout], beta: f64, gamma: f64, lam: f64, clip: f32) -> f64 {
    let mut advs = Vec::with_capacity(rollouts.len());
    let mut kl_sum = 0.0;
    for r in rollouts.iter_mut() {
        kl_sum += r.old_logprobs.iter().zip(&r.ref_logprobs).map(|(&o, &f)| o as f64 - f as f64).sum::<f64>();
        r.rewards = token_rewards(&r.old_logprobs, &r.ref_logprobs, r.score, beta, clip);
        let (a, ret) = gae(&r.rewards, &r.old_values, gamma, lam);
        r.returns = ret;
        advs.push(a);
    }
    whiten(&mut advs);
    for (r, a) in rollouts.iter_mut().zip(advs) {
        r.advantages = a;
    }
    kl_sum / rollouts.len().max(1) as f64
}

/// `v_head.weight` (1, C) and `v_head.bias` (1) as a safetensors file.
pub fn value_head_bytes<B: Backend>(policy: &Model<B>) -> Result<Vec<u8>, TrainError> {
    let vh = policy.value_head.ok_or_else(|| TrainError::Setting { setting: "value head", problem: "the policy has none".into() })?;
    let b_idx = vh.b.ok_or_else(|| TrainError::Setting { setting: "value head", problem: "it has no bias".into() })?;
    let w: Vec<u8> = policy.host_value(vh.w).iter().flat_map(|x| x.to_le_bytes()).collect();
    let b: Vec<u8> = policy.host_value(b_idx).iter().flat_map(|x| x.to_le_bytes()).collect();
    let ser = |e: safetensors::SafeTensorError| TrainError::Serialize { what: "value head", problem: e.to_string() };
    let views = vec![
        ("v_head.weight".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, policy.cfg.hidden_size], &w).map_err(ser)?),
        ("v_head.bias".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &b).map_err(ser)?),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta)).map_err(ser)
}
