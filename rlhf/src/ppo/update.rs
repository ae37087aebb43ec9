//! One PPO minibatch: the policy's log-probs and values on (prompt + response) sequences, the
//! clipped policy and value losses (trlx), and their gradient into the model.

use crate::lm_loss::{head_logprobs, head_xent, LossBufs};
use okapi_data::{collate, Example, IGNORE_LABEL};
use super::group::{token_loss, token_weight, GroupLossCfg, GroupStats};
use super::LossNorm;
use okapi_model::{Acts, Grads, Model, ModelError, Scratch, ValueBufs};
use okapi_runtime::{Backend, IGNORE_INDEX};

/// One rollout and everything PPO derives from it (per response token).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Rollout {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// the reward model's score (before clipping)
    pub score: f32,
    pub old_logprobs: Vec<f32>,
    pub ref_logprobs: Vec<f32>,
    pub old_values: Vec<f32>,
    pub rewards: Vec<f64>,
    /// GAE advantages before whitening
    pub raw_advantages: Vec<f64>,
    /// the advantages the loss reads (whitened over the batch, or over the minibatch)
    pub advantages: Vec<f64>,
    pub returns: Vec<f64>,
    /// Σ k3 = (ρ − 1) − log ρ, ρ = π/π_ref, over every real position of prompt and response
    /// (trlx's KL estimate), when the run feeds it to the KL controller
    pub kl_k3: f64,
    /// which of the run's prompts it answers
    pub prompt_index: usize,
    /// the value of each reward function of the run (`--reward`), unweighted, in its order
    pub reward_terms: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
pub struct PpoLossCfg {
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub norm: LossNorm,
}

/// Means over the minibatch's response tokens (each sequence's mean, averaged, under
/// [`LossNorm::Sequence`]).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PpoStats {
    pub pg_loss: f64,
    pub vf_loss: f64,
    pub loss: f64,
    pub approx_kl: f64,
    pub clipfrac: f64,
    pub entropy: f64,
    pub tokens: usize,
    /// GRPO / RLOO: the k3 KL to the reference in the loss, token mean
    pub kl: f64,
    /// GRPO / RLOO: ratios clipped below with a negative advantage, above with a positive one
    pub clip_low: f64,
    pub clip_high: f64,
}

impl PpoStats {
    /// The statistics as one list (to sum over ranks), `tokens` last.
    pub fn values(&self) -> [f64; 10] {
        [self.pg_loss, self.vf_loss, self.loss, self.approx_kl, self.clipfrac, self.entropy, self.kl, self.clip_low, self.clip_high, self.tokens as f64]
    }

    pub fn from_values(n: &[f64; 10]) -> PpoStats {
        PpoStats { pg_loss: n[0], vf_loss: n[1], loss: n[2], approx_kl: n[3], clipfrac: n[4], entropy: n[5], kl: n[6], clip_low: n[7], clip_high: n[8], tokens: n[9].round() as usize }
    }

    /// Adds another minibatch's means (tokens are not summed: `tokens` is per minibatch).
    pub fn add(&mut self, o: &PpoStats) {
        let (mut a, b) = (self.values(), o.values());
        a.iter_mut().zip(b).take(9).for_each(|(x, y)| *x += y);
        *self = PpoStats::from_values(&a);
    }

    /// Every mean times `k` (`tokens` untouched).
    pub fn scale(&mut self, k: f64) {
        let mut a = self.values();
        a.iter_mut().take(9).for_each(|x| *x *= k);
        *self = PpoStats::from_values(&a);
    }
}

impl From<GroupStats> for PpoStats {
    /// A group method's statistics where PPO's are logged: `clipfrac` is the clipped region.
    fn from(g: GroupStats) -> PpoStats {
        PpoStats { loss: g.loss, pg_loss: g.loss, kl: g.kl, clipfrac: g.clip_region, clip_low: g.clip_low, clip_high: g.clip_high, entropy: g.entropy, tokens: g.tokens, ..Default::default() }
    }
}

/// The size of a whole minibatch (of which a rank of a data-parallel run takes a share).
#[derive(Clone, Copy, Debug)]
pub struct MinibatchSize {
    pub rollouts: usize,
    /// response tokens
    pub tokens: usize,
}

impl MinibatchSize {
    pub fn of(rollouts: &[&Rollout]) -> MinibatchSize {
        MinibatchSize { rollouts: rollouts.len(), tokens: rollouts.iter().map(|r| r.response.len()).sum() }
    }
}

/// Device buffers of policy evaluation and PPO updates for up to (cap_b, cap_t).
pub struct PpoBufs<B: Backend> {
    pub acts: Acts<B>,
    scratch: Scratch<B>,
    loss: LossBufs<B>,
    values: ValueBufs<B>,
    pad: u32,
}

/// What a forward over rollouts gives, per rollout and response token.
pub struct PolicyEval {
    pub logprobs: Vec<Vec<f32>>,
    pub values: Vec<Vec<f32>>,
    pub entropy: Vec<Vec<f64>>,
    /// log-probs of prompt tokens 1.. (read at positions 0..p−1), when asked
    pub prompt_logprobs: Vec<Vec<f32>>,
}

impl<B: Backend> PpoBufs<B> {
    pub fn new(model: &Model<B>, cap_b: usize, cap_t: usize, pad: u32) -> Self {
        let be = &model.be;
        let n = cap_b * cap_t;
        PpoBufs {
            acts: model.new_acts(cap_b, cap_t),
            scratch: model.new_scratch(cap_b, cap_t),
            loss: LossBufs::new(be, n),
            values: model.new_value_bufs(n),
            pad,
        }
    }

    /// Forward over the rollouts' sequences: log-probs (and values when the model has a value
    /// head, entropies when asked) at each response token a_t, read at the position p−1+t that
    /// predicts it. Returns the targets used (flat, (B,T)).
    pub fn eval(&mut self, model: &Model<B>, rollouts: &[&Rollout], entropy: bool) -> Result<(PolicyEval, Vec<u32>, usize), ModelError> {
        self.eval_from(model, rollouts, entropy, false, None)
    }

    /// [`PpoBufs::eval`]; with `from = Some((start, x))` the model runs from block `start` on the
    /// hidden states `x` another model computed over the same rollouts (a hydra reference on
    /// the policy's frozen trunk). With `prompt`, the prompt tokens' log-probs too.
    pub fn eval_from(&mut self, model: &Model<B>, rollouts: &[&Rollout], entropy: bool, prompt: bool, from: Option<(usize, &B::Buf)>) -> Result<(PolicyEval, Vec<u32>, usize), ModelError> {
        let seqs: Vec<Example> = rollouts
            .iter()
            .map(|r| {
                let ids: Vec<u32> = r.prompt.iter().chain(&r.response).copied().collect();
                let labels = ids.iter().enumerate().map(|(i, &x)| if i < r.prompt.len() { IGNORE_LABEL } else { x as i64 }).collect();
                Example { ids, labels, prompt_len: r.prompt.len() }
            })
            .collect();
        let batch = collate(&seqs.iter().collect::<Vec<_>>(), self.pad);
        let (b, t) = (batch.b, batch.t);
        match from {
            None => model.forward_hidden(&mut self.acts, &batch.ids, b, t)?,
            Some((start, x)) => model.forward_hidden_from(&mut self.acts, &batch.ids, b, t, start, x)?,
        }
        let be = &model.be;
        let mut targets = vec![IGNORE_INDEX; b * t];
        for (i, r) in rollouts.iter().enumerate() {
            let first = if prompt { 1 } else { r.prompt.len() };
            for (k, &a) in r.prompt.iter().chain(&r.response).enumerate().skip(first) {
                targets[i * t + k - 1] = a;
            }
        }
        // the response positions: their log-probs, values and (when asked) entropies
        let span = |i: usize, r: &Rollout| i * t + r.prompt.len() - 1..i * t + r.prompt.len() - 1 + r.response.len();
        let in_response = |p: usize| {
            let (i, q) = (p / t, p % t);
            rollouts.get(i).is_some_and(|r| q + 1 >= r.prompt.len() && q + 1 < r.prompt.len() + r.response.len())
        };
        let tl = head_logprobs(model, &mut self.acts, &mut self.loss, &targets, if entropy { Some(&in_response) } else { None })?;
        let vals = if model.value_head.is_some() {
            model.value_fwd(&self.acts, &mut self.values)?;
            Some(be.read(&self.values.values, b * t))
        } else {
            None
        };
        let mut out = PolicyEval { logprobs: vec![], values: vec![], entropy: vec![], prompt_logprobs: vec![] };
        for (i, r) in rollouts.iter().enumerate() {
            out.logprobs.push(tl.logp[span(i, r)].to_vec());
            if let Some(vals) = &vals {
                out.values.push(vals[span(i, r)].to_vec());
            }
            if entropy {
                out.entropy.push(tl.entropy[span(i, r)].to_vec());
            }
            if prompt {
                out.prompt_logprobs.push(tl.logp[i * t..i * t + r.prompt.len() - 1].to_vec());
            }
        }
        Ok((out, targets, t))
    }

    /// A separate critic's values at each response token (trunk + value head, no LM head).
    /// Returns them with the padded length T.
    pub fn critic_values(&mut self, critic: &Model<B>, rollouts: &[&Rollout]) -> Result<(Vec<Vec<f32>>, usize), ModelError> {
        let ids: Vec<Example> = rollouts.iter().map(|r| Example { ids: r.prompt.iter().chain(&r.response).copied().collect(), labels: vec![], prompt_len: r.prompt.len() }).collect();
        let batch = collate(&ids.iter().collect::<Vec<_>>(), self.pad);
        let t = batch.t;
        critic.forward_hidden(&mut self.acts, &batch.ids, batch.b, t)?;
        critic.value_fwd(&self.acts, &mut self.values)?;
        let vals = critic.be.read(&self.values.values, batch.b * t);
        Ok((rollouts.iter().enumerate().map(|(i, r)| vals[i * t + r.prompt.len() - 1..i * t + r.prompt.len() - 1 + r.response.len()].to_vec()).collect(), t))
    }

    /// Backward of the value loss into a separate critic, after `critic_values` on these bufs.
    fn critic_bwd(&mut self, critic: &Model<B>, dvalues: &[f32], grads: &mut Grads<B>) -> Result<(), ModelError> {
        let be = &critic.be;
        let n = self.acts.b * self.acts.t;
        be.fill(&mut self.scratch.dln, 0.0, n * critic.cfg.hidden_size);
        be.write(&mut self.values.dvalues, dvalues);
        critic.value_bwd(&self.acts, &mut self.scratch, grads, &mut self.values)?;
        critic.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        Ok(())
    }

    /// Loss of one minibatch under the current policy, and its gradient accumulated into `grads`
    /// (the value loss into the policy's value head, or into a separate critic).
    pub fn minibatch(&mut self, model: &Model<B>, rollouts: &[&Rollout], cfg: &PpoLossCfg, grads: &mut Grads<B>) -> Result<PpoStats, ModelError> {
        self.minibatch_with(model, rollouts, cfg, grads, None)
    }

    pub fn minibatch_with(&mut self, model: &Model<B>, rollouts: &[&Rollout], cfg: &PpoLossCfg, grads: &mut Grads<B>, critic: Option<(&Model<B>, &mut PpoBufs<B>, &mut Grads<B>)>) -> Result<PpoStats, ModelError> {
        self.minibatch_share(model, rollouts, MinibatchSize::of(rollouts), cfg, grads, critic)
    }

    /// [`PpoBufs::minibatch_with`] on a rank's share of a minibatch of size `whole`: every mean is
    /// taken over the whole minibatch, so the shares' losses, statistics and gradients add up
    /// over the ranks to the whole minibatch's.
    pub fn minibatch_share(&mut self, model: &Model<B>, rollouts: &[&Rollout], whole: MinibatchSize, cfg: &PpoLossCfg, grads: &mut Grads<B>, critic: Option<(&Model<B>, &mut PpoBufs<B>, &mut Grads<B>)>) -> Result<PpoStats, ModelError> {
        let (mut ev, targets, t) = self.eval(model, rollouts, true)?;
        let mut critic = critic;
        if let Some((cm, cb, _)) = critic.as_mut() {
            ev.values = cb.critic_values(cm, rollouts)?.0;
        }
        let b = rollouts.len();
        let n_tok: usize = rollouts.iter().map(|r| r.response.len()).sum();
        let mut st = PpoStats { tokens: n_tok, ..Default::default() };
        let mut coef = vec![0f32; b * t];
        let mut dvalues = vec![0f32; b * t];
        for (i, r) in rollouts.iter().enumerate() {
            // each token's weight in the minibatch's mean
            let inv = match cfg.norm {
                LossNorm::Token => 1.0 / whole.tokens.max(1) as f64,
                LossNorm::Sequence => 1.0 / (whole.rollouts * r.response.len().max(1)) as f64,
            };
            for k in 0..r.response.len() {
                let (lp, old, a) = (ev.logprobs[i][k] as f64, r.old_logprobs[k] as f64, r.advantages[k]);
                let log_ratio = lp - old;
                let ratio = log_ratio.exp();
                let unclipped = -a * ratio;
                let clipped = -a * ratio.clamp(1.0 - cfg.cliprange, 1.0 + cfg.cliprange);
                st.pg_loss += unclipped.max(clipped) * inv;
                // ∂/∂logπ of max(−Aρ, −A·clip(ρ)): the unclipped branch when it is the max
                // (the clipped one is flat wherever it is strictly larger)
                let dlp = if unclipped >= clipped { -a * ratio * inv } else { 0.0 };
                st.approx_kl += ((ratio - 1.0) - log_ratio) * inv;
                st.clipfrac += ((ratio - 1.0).abs() > cfg.cliprange) as u8 as f64 * inv;
                st.entropy += ev.entropy[i][k] * inv;
                let (v, v_old, ret) = (ev.values[i][k] as f64, r.old_values[k] as f64, r.returns[k]);
                let v_clipped = v_old + (v - v_old).clamp(-cfg.cliprange_value, cfg.cliprange_value);
                let (l1, l2) = ((v - ret).powi(2), (v_clipped - ret).powi(2));
                st.vf_loss += 0.5 * l1.max(l2) * inv;
                let dv = if l1 >= l2 {
                    v - ret
                } else if (v - v_old).abs() < cfg.cliprange_value {
                    v_clipped - ret
                } else {
                    0.0
                };
                let p = i * t + r.prompt.len() - 1 + k;
                // the cross-entropy kernel with weight −∂L/∂logπ leaves ∂L/∂logits
                coef[p] = -dlp as f32;
                dvalues[p] = (cfg.vf_coef * dv * inv) as f32;
            }
        }
        st.loss = st.pg_loss + cfg.vf_coef * st.vf_loss;
        let be = &model.be;
        head_xent(model, &mut self.acts, &mut self.loss, &targets, &coef, Some((&mut self.scratch, &mut *grads)))?;
        match critic {
            None => {
                be.write(&mut self.values.dvalues, &dvalues);
                model.value_bwd(&self.acts, &mut self.scratch, grads, &mut self.values)?;
            }
            Some((cm, cb, cgrads)) => {
                // the critic's batch has the same (B, T) layout: same rollouts, same padding
                cb.critic_bwd(cm, &dvalues, cgrads)?;
            }
        }
        model.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        Ok(st)
    }
}

impl<B: Backend> PpoBufs<B> {
    /// GRPO / RLOO on a rank's share of an optimizer step of size `whole`: the clipped
    /// surrogate over completion tokens plus β·k3 to the reference, aggregated as
    /// `cfg.loss_type` says over the whole step (so the shares add up over the ranks), and its
    /// gradient accumulated into `grads`. Returns the statistics and each completion's
    /// per-token losses (before aggregation).
    pub fn group_minibatch_share(&mut self, model: &Model<B>, rollouts: &[&Rollout], whole: MinibatchSize, cfg: &GroupLossCfg, grads: &mut Grads<B>) -> Result<(GroupStats, Vec<Vec<f64>>), ModelError> {
        let (ev, targets, t) = self.eval(model, rollouts, true)?;
        let mut st = GroupStats { tokens: rollouts.iter().map(|r| r.response.len()).sum(), ..Default::default() };
        let mut coef = vec![0f32; rollouts.len() * t];
        let mut per_token = Vec::with_capacity(rollouts.len());
        let per_tok = 1.0 / whole.tokens.max(1) as f64;
        for (i, r) in rollouts.iter().enumerate() {
            let w = token_weight(cfg.loss_type, r.response.len(), whole.rollouts, whole.tokens, cfg.max_completion_len);
            let mut losses = Vec::with_capacity(r.response.len());
            for k in 0..r.response.len() {
                let reference = r.ref_logprobs.get(k).map(|&x| x as f64);
                let lp = ev.logprobs[i][k] as f64;
                // no old log-probs: the policy that sampled is this one (ρ = 1 exactly)
                let old = r.old_logprobs.get(k).map_or(lp, |&x| x as f64);
                let tl = token_loss(lp, old, reference, r.advantages[k], cfg);
                st.loss += tl.loss * w;
                st.kl += tl.kl * per_tok;
                // clipped where the clip takes the gradient away (TRL's clip ratios)
                let low = tl.ratio < 1.0 - cfg.epsilon && r.advantages[k] < 0.0;
                let high = tl.ratio > 1.0 + cfg.epsilon && r.advantages[k] > 0.0;
                st.clip_low += low as u8 as f64 * per_tok;
                st.clip_high += high as u8 as f64 * per_tok;
                st.clip_region += (low || high) as u8 as f64 * per_tok;
                st.entropy += ev.entropy[i][k] * per_tok;
                // the cross-entropy kernel with weight −∂L/∂logπ leaves ∂L/∂logits
                coef[i * t + r.prompt.len() - 1 + k] = -(tl.dlogp * w) as f32;
                losses.push(tl.loss);
            }
            per_token.push(losses);
        }
        head_xent(model, &mut self.acts, &mut self.loss, &targets, &coef, Some((&mut self.scratch, &mut *grads)))?;
        model.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        Ok((st, per_token))
    }
}
