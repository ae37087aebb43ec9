//! GRPO and RLOO: several completions per prompt, a group baseline instead of a critic, the
//! clipped surrogate over completion tokens with an optional k3 KL to the reference in the
//! loss — TRL's `GRPOTrainer` formulas (`loss_type`, `scale_rewards`, ε, β).
//!
//! An iteration's completions are laid out group by group: the `G` completions of a prompt
//! are consecutive. Each completion's advantage is one number, given to every one of its
//! tokens.

pub use super::choices::{LossType, ScaleRewards};
use super::update::Rollout;
use crate::TrainError;

/// The group method: how rewards become advantages (PPO is `PpoConfig::group == None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    /// the group mean as baseline, scaled as `--scale-rewards` says
    Grpo,
    /// the mean of the group's other completions as baseline
    Rloo,
}

impl Algo {
    /// The command that runs it.
    pub fn as_str(self) -> &'static str {
        match self {
            Algo::Grpo => "grpo",
            Algo::Rloo => "rloo",
        }
    }
}

/// TRL's ε in the denominator of the scaled advantages.
pub const STD_EPS: f64 = 1e-4;

/// Mean and standard deviation with Bessel's correction (`torch.std`; NaN for one value).
pub fn mean_std_unbiased(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    (m, (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0)).sqrt())
}

/// GRPO's advantages of rewards laid out in groups of `g`: r − mean(group), divided by
/// std + 1e-4 of the group or of the whole batch, or not at all.
pub fn grpo_advantages(rewards: &[f64], g: usize, scale: ScaleRewards) -> Vec<f64> {
    let batch_std = mean_std_unbiased(rewards).1;
    rewards
        .chunks(g)
        .flat_map(|group| {
            let (mean, std) = mean_std_unbiased(group);
            let denom = match scale {
                ScaleRewards::None => 1.0,
                ScaleRewards::Group => std + STD_EPS,
                ScaleRewards::Batch => batch_std + STD_EPS,
            };
            group.iter().map(move |r| (r - mean) / denom)
        })
        .collect()
}

/// RLOO's advantages: r_i − the mean of the group's other rewards, (Σ_j r_j − r_i)/(G − 1).
pub fn rloo_advantages(rewards: &[f64], g: usize) -> Vec<f64> {
    rewards
        .chunks(g)
        .flat_map(|group| {
            let sum: f64 = group.iter().sum();
            let others = (group.len() - 1) as f64;
            group.iter().map(move |r| r - (sum - r) / others)
        })
        .collect()
}

/// What an iteration's groups say before the update: the fraction of groups whose rewards do
/// not spread (GRPO learns nothing from them) and the mean of the groups' standard deviations.
#[derive(Clone, Copy, Debug, Default)]
pub struct GroupSpread {
    pub frac_zero_std: f64,
    pub mean_std: f64,
}

/// The spread of rewards laid out in groups of `g` (TRL: a group's std close to 0 counts).
pub fn group_spread(rewards: &[f64], g: usize) -> GroupSpread {
    let stds: Vec<f64> = rewards.chunks(g).map(|c| mean_std_unbiased(c).1).collect();
    let n = stds.len().max(1) as f64;
    GroupSpread { frac_zero_std: stds.iter().filter(|s| s.abs() <= 1e-8).count() as f64 / n, mean_std: stds.iter().sum::<f64>() / n }
}

/// Sets each rollout's advantages (its sequence advantage on every response token) from the
/// scores, for `algo` over groups of `g`.
pub fn set_group_advantages(rollouts: &mut [Rollout], g: usize, algo: Algo, scale: ScaleRewards) {
    let rewards: Vec<f64> = rollouts.iter().map(|r| r.score as f64).collect();
    let adv = match algo {
        Algo::Rloo => rloo_advantages(&rewards, g),
        Algo::Grpo => grpo_advantages(&rewards, g, scale),
    };
    for (r, a) in rollouts.iter_mut().zip(adv) {
        r.raw_advantages = vec![a; r.response.len()];
        r.advantages = r.raw_advantages.clone();
    }
}

/// The settings of a GRPO or RLOO run (beside [`super::PpoConfig`]'s rollouts, sampling,
/// optimizer and minibatches; `ppo_epochs` is TRL's `num_iterations`).
#[derive(Clone, Copy, Debug)]
pub struct GroupCfg {
    pub algo: Algo,
    /// completions per prompt (G ≥ 2)
    pub num_generations: usize,
    /// GRPO's reward scaling (RLOO: unused)
    pub scale_rewards: ScaleRewards,
    pub loss: GroupLossCfg,
}

/// The loss settings of a group method.
#[derive(Clone, Copy, Debug)]
pub struct GroupLossCfg {
    /// the ratio's clip range [1 − ε, 1 + ε]
    pub epsilon: f64,
    /// weight of the k3 KL to the reference in the loss (0: no reference)
    pub beta: f64,
    pub loss_type: LossType,
    /// `--max-new-tokens`: dr_grpo's constant denominator
    pub max_completion_len: usize,
}

impl GroupLossCfg {
    /// Refuses settings that cannot run, naming the flag (one line).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |setting: &'static str, problem: String| Err(TrainError::Setting { setting, problem });
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return bad("--epsilon", format!("{}: expected a positive number", self.epsilon));
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad("--beta", format!("{}: expected a finite number ≥ 0 (0: no reference model)", self.beta));
        }
        Ok(())
    }
}

/// Means over an optimizer step's completion tokens (the loss as `loss_type` aggregates it).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct GroupStats {
    /// the step's loss (surrogate + β·KL), aggregated as `loss_type` says
    pub loss: f64,
    /// the KL term k3 = e^(ref − logπ) − (ref − logπ) − 1, token mean
    pub kl: f64,
    /// tokens whose ratio fell below 1 − ε with a negative advantage, token mean
    pub clip_low: f64,
    /// tokens whose ratio rose above 1 + ε with a positive advantage, token mean
    pub clip_high: f64,
    /// tokens clipped low or high (as above), token mean
    pub clip_region: f64,
    pub entropy: f64,
    pub tokens: usize,
}

/// One completion token's loss and its derivative in log π: −min(ρA, clip(ρ, 1 ± ε)A) + β·k3,
/// ρ = e^(log π − log π_old), k3 = e^(ref − log π) − (ref − log π) − 1.
#[derive(Clone, Copy, Debug)]
pub struct TokenLoss {
    pub loss: f64,
    pub dlogp: f64,
    pub kl: f64,
    pub ratio: f64,
}

pub fn token_loss(logp: f64, old: f64, reference: Option<f64>, adv: f64, cfg: &GroupLossCfg) -> TokenLoss {
    let ratio = (logp - old).exp();
    let (unclipped, clipped) = (ratio * adv, ratio.clamp(1.0 - cfg.epsilon, 1.0 + cfg.epsilon) * adv);
    // the unclipped branch carries the gradient when it is the min (the clipped one is flat
    // wherever it is strictly smaller)
    let mut dlogp = if unclipped <= clipped { -adv * ratio } else { 0.0 };
    let mut loss = -unclipped.min(clipped);
    let mut kl = 0.0;
    if let (Some(r), true) = (reference, cfg.beta != 0.0) {
        let d = r - logp;
        kl = d.exp() - d - 1.0;
        loss += cfg.beta * kl;
        // ∂k3/∂logπ = 1 − e^(ref − logπ)
        dlogp += cfg.beta * (1.0 - d.exp());
    }
    TokenLoss { loss, dlogp, kl, ratio }
}

/// The weight of a token of a completion of `len` tokens in the step's loss under `loss_type`
/// (`whole`: the step's completions and tokens over every rank).
pub fn token_weight(loss_type: LossType, len: usize, whole_rollouts: usize, whole_tokens: usize, max_completion_len: usize) -> f64 {
    match loss_type {
        LossType::Grpo => 1.0 / (whole_rollouts * len.max(1)) as f64,
        LossType::Bnpo => 1.0 / whole_tokens.max(1) as f64,
        LossType::DrGrpo => 1.0 / (whole_rollouts * max_completion_len.max(1)) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_advantages_centre_and_scale_each_group() {
        let r = [1.0, 2.0, 4.0, 0.0, 0.0, 3.0];
        let a = grpo_advantages(&r, 3, ScaleRewards::None);
        let want = [1.0 - 7.0 / 3.0, 2.0 - 7.0 / 3.0, 4.0 - 7.0 / 3.0, -1.0, -1.0, 2.0];
        a.iter().zip(want).for_each(|(x, y)| assert!((x - y).abs() < 1e-12, "{x} vs {y}"));
        let g = grpo_advantages(&r, 3, ScaleRewards::Group);
        // group 2: std (N−1) of [0, 0, 3] = √3
        assert!((g[5] - 2.0 / (3f64.sqrt() + 1e-4)).abs() < 1e-12);
        let b = grpo_advantages(&r, 3, ScaleRewards::Batch);
        let (_, s) = mean_std_unbiased(&r);
        assert!((b[0] - (1.0 - 7.0 / 3.0) / (s + 1e-4)).abs() < 1e-12);
    }

    #[test]
    fn rloo_baseline_leaves_the_completion_out() {
        let a = rloo_advantages(&[1.0, 2.0, 6.0, 5.0, 5.0, 5.0], 3);
        let want = [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5, 0.0, 0.0, 0.0];
        a.iter().zip(want).for_each(|(x, y)| assert!((x - y).abs() < 1e-12, "{x} vs {y}"));
        let s = group_spread(&[1.0, 2.0, 6.0, 5.0, 5.0, 5.0], 3);
        assert_eq!(s.frac_zero_std, 0.5);
    }

    #[test]
    fn token_loss_gradient_matches_a_finite_difference() {
        let cfg = GroupLossCfg { epsilon: 0.2, beta: 0.07, loss_type: LossType::Grpo, max_completion_len: 8 };
        for (old, adv) in [(-1.0, 0.8), (-1.0, -0.8), (-1.5, 0.8), (-0.6, -0.8), (-1.3, -0.5)] {
            let lp = -1.1;
            let h = 1e-6;
            let f = |x: f64| token_loss(x, old, Some(-0.9), adv, &cfg).loss;
            let numeric = (f(lp + h) - f(lp - h)) / (2.0 * h);
            let t = token_loss(lp, old, Some(-0.9), adv, &cfg);
            assert!((t.dlogp - numeric).abs() < 1e-6, "old {old} adv {adv}: {} vs {numeric}", t.dlogp);
        }
    }
}
