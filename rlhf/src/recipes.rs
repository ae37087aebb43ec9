//! Training settings as named recipes: okapi-train's defaults for each command, and the
//! settings Okapi published (its scripts supervised_finetuning.py, reward_modeling.py and
//! rl_training.py with trlx, on 8 GPUs) so a run can reproduce them. Where the two differ the
//! difference is deliberate and listed here; `okapi-train --recipe okapi` picks Okapi's.
//!
//! What Okapi did that a setting cannot express is documented rather than hidden: its SFT loss
//! is the mean of per-device token means (micro-batches of 2 on 8 GPUs), okapi's the token mean
//! of the whole step; its reward model reads the score at the last non-pad token of
//! prompt + response without an appended EOS; its PPO ran 7 processes (docs/trlx-differences.md:
//! what one process reproduces of trlx, and what it cannot).

use crate::optim::AdamWConfig;
use crate::ppo::kl::KlController;
use crate::ppo::{KlControl, LossNorm, PpoConfig, PpoLossCfg, PromptEncoding, ValueHeadKind, WhitenScope};
use crate::ppo::group::{Algo, GroupCfg, GroupLossCfg, LossType, ScaleRewards};
use crate::schedule::ScheduleKind;
use crate::trainer::TrainConfig;
use crate::Sampling;

/// The AdamW of Okapi's SFT and PPO (β₂ 0.95); its reward model used the HF Trainer's (0.999).
const ADAM_095: AdamWConfig = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.0 };

impl TrainConfig {
    /// `okapi-train sft`'s defaults. Differences from [`TrainConfig::okapi_sft`]: batch 8 (Okapi:
    /// 16 = 2 per GPU × 8), the loss on the response only (Okapi: the whole sequence), no
    /// validation split (Okapi: 10 %, every 200 steps), seed 42 (Okapi: 0).
    pub fn sft() -> TrainConfig {
        TrainConfig {
            epochs: 3,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            lr: 1e-5,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 300,
            adam: AdamWConfig { weight_decay: 0.05, ..ADAM_095 },
            max_grad_norm: 1.0,
            max_len: 512,
            mask_prompt: true,
            val_fraction: 0.0,
            unfrozen_layers: None,
            seed: 42,
            shuffle: true,
            eval_every: None,
            save_every: None,
            save_dtype: None,
            log_every: 10,
            resume: None,
            zero: 0,
        }
    }

    /// Okapi's SFT (supervised_finetuning.py): 3 epochs, 16 sequences per step, AdamW lr 1e-5
    /// (β 0.9, 0.95, weight decay 0.05), cosine with 300 warmup steps, clip 1.0, 512 tokens,
    /// loss on the whole sequence, 10 % held out and evaluated every 200 steps, seed 0.
    pub fn okapi_sft() -> TrainConfig {
        TrainConfig { batch_size: 16, mask_prompt: false, val_fraction: 0.1, eval_every: Some(200), seed: 0, ..TrainConfig::sft() }
    }

    /// `okapi-train reward`'s defaults. Differences from [`TrainConfig::okapi_reward`]: 1 epoch
    /// (Okapi: 3), 8 prompts per step (Okapi: 64 pairs), every layer trains (Okapi: the top
    /// 12), no validation split (Okapi: 10 %, every 500 steps), seed 42 (Okapi: 0).
    pub fn reward() -> TrainConfig {
        TrainConfig {
            epochs: 1,
            lr: 3e-5,
            warmup_steps: 50,
            adam: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4 },
            max_len: 768,
            ..TrainConfig::sft()
        }
    }

    /// Okapi's reward model (reward_modeling.py): 3 epochs, 64 pairs per step (8 × 8
    /// accumulated), AdamW lr 3e-5 (β 0.9, 0.999, weight decay 1e-4), cosine with 50 warmup
    /// steps, 768 tokens, the top 12 layers (and the head) trained, 10 % held out and evaluated
    /// every 500 steps, seed 0.
    pub fn okapi_reward() -> TrainConfig {
        TrainConfig { epochs: 3, grad_accum: 8, unfrozen_layers: Some(12), val_fraction: 0.1, eval_every: Some(500), seed: 0, ..TrainConfig::reward() }
    }

    /// `okapi-train dpo`'s defaults, TRL's `DPOConfig` (DPO is not part of Okapi): 1 epoch, lr
    /// 1e-6 linear without warmup, no weight decay, 768 tokens.
    pub fn dpo() -> TrainConfig {
        TrainConfig {
            epochs: 1,
            lr: 1e-6,
            schedule: ScheduleKind::Linear,
            warmup_steps: 0,
            adam: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            max_len: 768,
            ..TrainConfig::sft()
        }
    }
}

impl PpoConfig {
    /// `okapi-train ppo`'s defaults. Differences from [`PpoConfig::okapi`]: lr 1e-5 (Okapi:
    /// 1e-6), no weight decay (Okapi: 1e-6), every layer trains (Okapi: the top 5), 8 rollouts
    /// per optimizer step (Okapi: 2 per process), seed 42 (Okapi: 0); and where trlx made a
    /// choice (docs/trlx-differences.md): a linear value head (trlx: an MLP), advantages
    /// whitened over the whole batch (trlx: per minibatch), the token mean of the minibatch
    /// (trlx: each sequence's mean, averaged), β moved once per iteration on the response's
    /// log-ratio (trlx: after every PPO epoch on its k3 estimate), prompts with BOS and skipped
    /// beyond 512 tokens (trlx: no special tokens, left-truncated to 256), BLOOM's embedding
    /// norm frozen with the embeddings (trlx: trained).
    pub fn defaults() -> PpoConfig {
        PpoConfig {
            zero: 0,
            iterations: 100,
            rollouts: 128,
            chunk_size: 16,
            ppo_epochs: 4,
            minibatch: 8,
            sampling: Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: 256, seed: 42 },
            max_prompt_len: 512,
            prompt_encoding: PromptEncoding::BosSkip,
            value_head: ValueHeadKind::Linear,
            whiten: WhitenScope::Batch,
            kl_control: KlControl::ResponseK1,
            train_embedding_norm: false,
            kl: KlController { beta: 0.1, target: Some(6.0), horizon: 10000.0 },
            gamma: 1.0,
            lam: 0.95,
            loss: PpoLossCfg { cliprange: 0.2, cliprange_value: 0.2, vf_coef: 1.0, norm: LossNorm::Token },
            reward_clip: 10.0,
            lr: 1e-5,
            adam: ADAM_095,
            max_grad_norm: 1.0,
            unfrozen_layers: None,
            seed: 42,
            save_every: None,
            resume: None,
            samples_every: 1,
            save_dtype: None,
            log_every: 1,
            rewards: crate::rewards::RewardSpec::rm(),
            group: None,
        }
    }

    /// `okapi-train grpo`'s defaults, TRL's `GRPOConfig` where it has one: 8 completions per
    /// prompt, 64 per iteration in chunks of 16, 16 per optimizer step (4 steps), one pass
    /// (`num_iterations` 1), ε 0.2, advantages scaled by the group's std, the token mean of each
    /// optimizer step (`bnpo`), temperature 1, at most 256 new tokens, AdamW lr 1e-6 (β 0.9,
    /// 0.999, no weight decay), clip 1.0. β = 0.04 (TRL's default is now 0, made for verifiable
    /// rewards): against a learned reward model the KL keeps the policy near its SFT start.
    pub fn grpo() -> PpoConfig {
        let base = PpoConfig::defaults();
        PpoConfig {
            rollouts: 64,
            chunk_size: 16,
            ppo_epochs: 1,
            minibatch: 16,
            lr: 1e-6,
            adam: AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            group: Some(GroupCfg {
                algo: Algo::Grpo,
                num_generations: 8,
                scale_rewards: ScaleRewards::Group,
                loss: GroupLossCfg { epsilon: 0.2, beta: 0.04, loss_type: LossType::Bnpo, max_completion_len: base.sampling.max_new_tokens },
            }),
            ..base
        }
    }

    /// `okapi-train rloo`'s defaults: [`PpoConfig::grpo`]'s, with 4 completions per prompt (so
    /// 16 prompts per iteration) and β 0.05 (TRL's RLOO KL coefficient).
    pub fn rloo() -> PpoConfig {
        let base = PpoConfig::grpo();
        let g = base.group.expect("grpo() sets it");
        PpoConfig { group: Some(GroupCfg { algo: Algo::Rloo, num_generations: 4, loss: GroupLossCfg { beta: 0.05, ..g.loss }, ..g }), ..base }
    }

    /// Okapi's PPO (rl_training.py with trlx, per process): 128 rollouts in chunks of 16, 4 PPO
    /// epochs over minibatches of 2, AdamW lr 1e-6 (β 0.9, 0.95, weight decay 1e-6), clip 1.0,
    /// the top 5 layers trained, adaptive KL (β₀ 0.1, target 6, horizon 10000), γ 1, λ 0.95,
    /// clip ranges 0.2, vf_coef 1, scores clipped to ±10, sampling at temperature 1 without
    /// top-k / top-p, at most 256 new tokens, seed 0; trlx's choices: its MLP value head,
    /// whitening per minibatch, each sequence's loss mean, its KL controller, prompts without
    /// special tokens left-truncated to 256 tokens (seq_length 512 − 256 new tokens), BLOOM's
    /// embedding norm trained.
    pub fn okapi() -> PpoConfig {
        let base = PpoConfig::defaults();
        PpoConfig {
            minibatch: 2,
            max_prompt_len: 256,
            prompt_encoding: PromptEncoding::Trlx,
            value_head: ValueHeadKind::Mlp,
            whiten: WhitenScope::Minibatch,
            kl_control: KlControl::Trlx,
            train_embedding_norm: true,
            loss: PpoLossCfg { norm: LossNorm::Sequence, ..base.loss },
            lr: 1e-6,
            adam: AdamWConfig { weight_decay: 1e-6, ..ADAM_095 },
            unfrozen_layers: Some(5),
            seed: 0,
            sampling: Sampling { seed: 0, ..base.sampling.clone() },
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published values, one by one (a change here must be a deliberate one).
    #[test]
    fn okapi_recipes_hold_okapis_published_settings() {
        let s = TrainConfig::okapi_sft();
        assert_eq!((s.epochs, s.batch_size * s.grad_accum, s.lr, s.warmup_steps, s.max_len), (3, 16, 1e-5, 300, 512));
        assert_eq!((s.adam.beta1, s.adam.beta2, s.adam.weight_decay, s.max_grad_norm), (0.9, 0.95, 0.05, 1.0));
        assert_eq!((s.schedule, s.mask_prompt, s.val_fraction, s.eval_every, s.seed), (ScheduleKind::Cosine, false, 0.1, Some(200), 0));
        let r = TrainConfig::okapi_reward();
        assert_eq!((r.epochs, r.batch_size * r.grad_accum, r.lr, r.warmup_steps, r.max_len), (3, 64, 3e-5, 50, 768));
        assert_eq!((r.adam.beta2, r.adam.weight_decay, r.unfrozen_layers, r.val_fraction, r.seed), (0.999, 1e-4, Some(12), 0.1, 0));
        let p = PpoConfig::okapi();
        assert_eq!((p.rollouts, p.chunk_size, p.ppo_epochs, p.minibatch, p.lr, p.adam.weight_decay), (128, 16, 4, 2, 1e-6, 1e-6));
        assert_eq!((p.unfrozen_layers, p.kl.beta, p.kl.target, p.kl.horizon, p.gamma, p.lam), (Some(5), 0.1, Some(6.0), 10000.0, 1.0, 0.95));
        assert_eq!((p.loss.cliprange, p.loss.cliprange_value, p.loss.vf_coef, p.reward_clip, p.sampling.max_new_tokens, p.seed), (0.2, 0.2, 1.0, 10.0, 256, 0));
        assert_eq!((p.max_prompt_len, p.prompt_encoding, p.value_head, p.whiten, p.loss.norm, p.kl_control, p.train_embedding_norm), (256, PromptEncoding::Trlx, ValueHeadKind::Mlp, WhitenScope::Minibatch, LossNorm::Sequence, KlControl::Trlx, true));
    }
}
