//! PPO as Okapi ran it with trlx: rollouts sampled with the KV cache, scored by the reward model,
//! per-token KL penalty against the frozen initial policy with an adaptive coefficient, GAE,
//! whitened advantages, clipped policy and value losses over several epochs of minibatches.
//! The value head sits on the policy's trunk and is saved beside the HF weights.

pub mod gae;
pub mod kl;
pub mod update;

use crate::checkpoint::{self, TrainerState};
use crate::generate::{generate, Sampling};
use crate::optim::{clip_coef, AdamWConfig, Optimizer};
use crate::reward::RewardBufs;
use crate::trainer::{ensure_finite, open_log, EpochOrder};
use crate::TrainError;
use gae::{gae, token_rewards, whiten};
use kl::KlController;
use okapi_data::{Example, PromptGroup};
use okapi_model::{DType, Model};
use okapi_runtime::Backend;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::Instant;
pub use update::{PolicyEval, PpoBufs, PpoLossCfg, PpoStats, Rollout};

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
    pub kl: KlController,
    pub gamma: f64,
    pub lam: f64,
    pub loss: PpoLossCfg,
    pub reward_clip: f32,
    pub lr: f64,
    pub adam: AdamWConfig,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub save_every: Option<u64>,
    /// continue from this output directory's (or this) checkpoint, bit-identically
    pub resume: Option<std::path::PathBuf>,
    pub samples_every: u64,
    pub save_dtype: Option<DType>,
    pub log_every: u64,
}

/// How the CLI turns tokens into reward-model inputs and text.
pub struct PpoIo<'a> {
    /// reward-model input ids for (prompt, response) — the same ids, or re-tokenized text
    pub rm_ids: &'a dyn Fn(&[u32], &[u32]) -> Result<Vec<u32>, TrainError>,
    pub decode: &'a dyn Fn(&[u32]) -> String,
    pub eos: u32,
    pub pad: u32,
    pub rm_pad: u32,
    pub tokenizer: &'a Path,
}

pub struct PpoSummary {
    pub iterations: u64,
    /// mean score of each iteration's rollouts
    pub scores: Vec<f64>,
    pub kls: Vec<f64>,
}

/// Rollouts → rewards, advantages, returns (in place), returns (mean KL, KL per rollout).
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

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().sum::<f64>() / n;
    (m, (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt())
}

/// A critic separate from the policy (`--critic separate`): a reward model's trunk with a value
/// head, and which of its parameters train.
pub struct Critic<B: Backend> {
    pub model: Model<B>,
    pub mask: Vec<bool>,
}

/// Runs PPO. `policy` carries a value head unless `critic` is given; `mask` says which of the
/// policy's parameters train.
#[allow(clippy::too_many_arguments)]
pub fn run_ppo<B: Backend>(
    mut policy: Model<B>,
    mask: &[bool],
    reference: &Model<B>,
    rm: &Model<B>,
    prompts: &[Vec<u32>],
    cfg: &PpoConfig,
    io: &PpoIo,
    out: &Path,
    mut critic: Option<Critic<B>>,
) -> Result<(Model<B>, PpoSummary), TrainError> {
    if prompts.is_empty() {
        return Err(TrainError::Msg("no prompts left after filtering".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Msg(format!("{}: {e}", out.display())))?;
    let mut grads = policy.new_grads(|i| mask[i]);
    let mut opt = Optimizer::new(&policy, &grads, cfg.adam);
    let max_prompt = prompts.iter().map(Vec::len).max().unwrap_or(1);
    let cap_t = max_prompt + cfg.sampling.max_new_tokens;
    let mut pol_bufs = PpoBufs::new(&policy, cfg.chunk_size.max(cfg.minibatch), cap_t, io.pad);
    let mut ref_bufs = PpoBufs::new(reference, cfg.chunk_size, cap_t, io.pad);
    let mut critic_state = critic.as_ref().map(|c| {
        let g = c.model.new_grads(|i| c.mask[i]);
        let o = Optimizer::new(&c.model, &g, cfg.adam);
        (PpoBufs::new(&c.model, cfg.chunk_size.max(cfg.minibatch), cap_t, io.pad), g, o)
    });
    let order = EpochOrder { n: prompts.len(), batch_size: 1, shuffle: true, seed: cfg.seed };
    let mut kl = cfg.kl.clone();
    let mut prompt_pos = 0usize;
    let mut done = 0u64;
    let mut elapsed0 = 0.0;
    // the prompts and the settings that decide which rollouts an iteration draws
    let data_fp = {
        let mut f = checkpoint::Fnv::default();
        for p in prompts {
            f.add(p.len() as u64);
            p.iter().for_each(|&x| f.add(x as u64));
        }
        [cfg.rollouts, cfg.chunk_size, cfg.ppo_epochs, cfg.minibatch].iter().for_each(|&x| f.add(x as u64));
        f.hex()
    };
    if let Some(dir) = &cfg.resume {
        let ckpt = checkpoint::resolve(dir)?;
        let saved = checkpoint::read_state(&ckpt)?;
        let at = ckpt.display();
        let model_fp = checkpoint::model_fingerprint(&policy);
        if saved.command != "ppo" {
            return Err(TrainError::Msg(format!("--resume {at}: checkpoint of `{}`, not of ppo", saved.command)));
        }
        if saved.model_fingerprint != model_fp {
            return Err(TrainError::Msg(format!("--resume {at}: checkpoint of another policy ({}), --policy is {model_fp}", saved.model_fingerprint)));
        }
        if saved.data_fingerprint != data_fp {
            return Err(TrainError::Msg(format!("--resume {at}: checkpoint of other prompts or rollout settings: use the same --prompts, --langs, --rollouts, --chunk-size, --ppo-epochs and --ppo-batch-size")));
        }
        if saved.total_steps != cfg.iterations {
            return Err(TrainError::Msg(format!("--resume {at}: the run had {} iterations in total, --iterations is {}", saved.total_steps, cfg.iterations)));
        }
        let separate = ckpt.join("critic.safetensors").exists();
        if separate != critic.is_some() {
            return Err(TrainError::Msg(format!("--resume {at}: the run used --critic {}", if separate { "separate" } else { "shared" })));
        }
        // the trunk and LM head from the HF-layout model, the value head (or the critic) beside it
        let trunk = Model::load(policy.be.clone(), &ckpt.join("model")).map_err(|e| TrainError::Msg(e.to_string()))?;
        for (info, value) in trunk.info.iter().zip(trunk.values) {
            let i = policy.info.iter().position(|p| p.name == info.name && p.numel() == info.numel());
            let i = i.ok_or_else(|| TrainError::Msg(format!("--resume {at}: the checkpoint's `{}` is not a parameter of the policy", info.name)))?;
            policy.values[i] = value;
        }
        match (critic.as_mut(), critic_state.as_mut()) {
            (Some(c), Some((_, _, copt))) => {
                checkpoint::load_params(&ckpt.join("critic.safetensors"), &mut c.model, true)?;
                checkpoint::load_optimizer_file(&ckpt.join("critic_optimizer.safetensors"), &c.model, copt)?;
            }
            _ => checkpoint::load_params(&ckpt.join("value_head.safetensors"), &mut policy, false)?,
        }
        checkpoint::load_optimizer(&ckpt, &policy, &mut opt)?;
        kl.beta = saved.extra.get("beta").and_then(|b| b.as_f64()).ok_or_else(|| TrainError::Msg(format!("--resume {at}: trainer_state.json has no `extra.beta`")))?;
        prompt_pos = saved.micro_in_epoch as usize;
        done = saved.step;
        elapsed0 = saved.elapsed_s;
        eprintln!("resuming from {at} after iteration {done}/{}", cfg.iterations);
    }
    let keep = cfg.resume.as_ref().map(|_| done);
    let mut metrics = open_log(&out.join("metrics.jsonl"), keep, "iteration")?;
    let mut samples = open_log(&out.join("samples.jsonl"), keep, "iteration")?;
    let mut summary = PpoSummary { iterations: done, scores: vec![], kls: vec![] };
    let started = Instant::now();
    for it in done + 1..=cfg.iterations {
        // 1. rollouts: sample, score, evaluate under the policy and the reference
        let t_gen = Instant::now();
        let picked: Vec<usize> = (0..cfg.rollouts)
            .map(|k| {
                let pos = prompt_pos + k;
                order.order((pos / prompts.len()) as u64)[pos % prompts.len()]
            })
            .collect();
        prompt_pos += cfg.rollouts;
        let mut rollouts: Vec<Rollout> = Vec::with_capacity(cfg.rollouts);
        for (c, chunk) in picked.chunks(cfg.chunk_size).enumerate() {
            let ps: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let s = Sampling { seed: cfg.seed ^ (it << 20) ^ c as u64, ..cfg.sampling.clone() };
            let gens = generate(&policy, &ps, &s, Some(io.eos))?;
            for (p, g) in ps.into_iter().zip(gens) {
                let response = if g.tokens.is_empty() { vec![io.eos] } else { g.tokens };
                rollouts.push(Rollout { prompt: p, response, ..Default::default() });
            }
        }
        let gen_s = t_gen.elapsed().as_secs_f64();
        let gen_tokens: usize = rollouts.iter().map(|r| r.response.len()).sum();
        let t_score = Instant::now();
        let groups: Vec<PromptGroup> = rollouts
            .iter()
            .map(|r| {
                let ids = (io.rm_ids)(&r.prompt, &r.response)?;
                Ok(PromptGroup { responses: vec![Example { labels: vec![], prompt_len: 0, ids }], pairs: vec![] })
            })
            .collect::<Result<_, TrainError>>()?;
        let scores = RewardBufs::new(rm, &groups, cfg.chunk_size, io.rm_pad, 0.0).rewards(rm, &groups, cfg.chunk_size)?;
        for (r, s) in rollouts.iter_mut().zip(&scores) {
            r.score = s[0];
        }
        for chunk in (0..rollouts.len()).collect::<Vec<_>>().chunks(cfg.chunk_size) {
            let refs: Vec<&Rollout> = chunk.iter().map(|&i| &rollouts[i]).collect();
            let (mut pe, _, _) = pol_bufs.eval(&policy, &refs, false)?;
            let (re, _, _) = ref_bufs.eval(reference, &refs, false)?;
            if let (Some(c), Some((cb, _, _))) = (critic.as_ref(), critic_state.as_mut()) {
                pe.values = cb.critic_values(&c.model, &refs)?.0;
            }
            for (k, &i) in chunk.iter().enumerate() {
                rollouts[i].old_logprobs = pe.logprobs[k].clone();
                rollouts[i].old_values = pe.values[k].clone();
                rollouts[i].ref_logprobs = re.logprobs[k].clone();
            }
        }
        let mean_kl = compute_advantages(&mut rollouts, kl.beta, cfg.gamma, cfg.lam, cfg.reward_clip);
        let score_s = t_score.elapsed().as_secs_f64();
        // 2. PPO epochs over minibatches
        let t_upd = Instant::now();
        let mut agg = PpoStats::default();
        let mut n_mb = 0;
        let mb_order = EpochOrder { n: rollouts.len(), batch_size: cfg.minibatch, shuffle: true, seed: cfg.seed ^ it };
        for epoch in 0..cfg.ppo_epochs {
            for mb in mb_order.order(epoch as u64).chunks(cfg.minibatch) {
                let refs: Vec<&Rollout> = mb.iter().map(|&i| &rollouts[i]).collect();
                policy.zero_grads(&mut grads);
                let st = match (critic.as_mut(), critic_state.as_mut()) {
                    (Some(c), Some((cb, cg, copt))) => {
                        c.model.zero_grads(cg);
                        let st = pol_bufs.minibatch_with(&policy, &refs, &cfg.loss, &mut grads, Some((&c.model, &mut *cb, &mut *cg)))?;
                        let cnorm = copt.grad_norm(&c.model, cg);
                        if cnorm.is_finite() {
                            copt.step(&mut c.model, cg, cfg.lr as f32, clip_coef(cnorm, cfg.max_grad_norm));
                        }
                        st
                    }
                    _ => pol_bufs.minibatch(&policy, &refs, &cfg.loss, &mut grads)?,
                };
                let norm = opt.grad_norm(&policy, &grads);
                if !st.loss.is_finite() || !norm.is_finite() {
                    return Err(TrainError::Msg(format!(
                        "iteration {it}: the PPO loss is {} and the gradient norm {norm}: stopping; the last checkpoint in {} is intact",
                        st.loss,
                        out.join("checkpoint").display()
                    )));
                }
                opt.step(&mut policy, &grads, cfg.lr as f32, clip_coef(norm, cfg.max_grad_norm));
                for (a, b) in [(&mut agg.pg_loss, st.pg_loss), (&mut agg.vf_loss, st.vf_loss), (&mut agg.loss, st.loss), (&mut agg.approx_kl, st.approx_kl), (&mut agg.clipfrac, st.clipfrac), (&mut agg.entropy, st.entropy)] {
                    *a += b;
                }
                n_mb += 1;
            }
        }
        let upd_s = t_upd.elapsed().as_secs_f64();
        let k = n_mb.max(1) as f64;
        let beta_used = kl.beta;
        kl.update(mean_kl, cfg.rollouts);
        let sc: Vec<f64> = rollouts.iter().map(|r| r.score as f64).collect();
        let (score_mean, score_std) = mean_std(&sc);
        let line = json!({
            "iteration": it, "step": it, "score_mean": score_mean, "score_std": score_std, "kl": mean_kl, "beta": beta_used, "beta_next": kl.beta,
            "entropy": agg.entropy / k, "pg_loss": agg.pg_loss / k, "vf_loss": agg.vf_loss / k, "loss": agg.loss / k,
            "clipfrac": agg.clipfrac / k, "approx_kl": agg.approx_kl / k,
            "response_len": gen_tokens as f64 / rollouts.len().max(1) as f64, "rollout_tokens_per_s": gen_tokens as f64 / gen_s.max(1e-9),
            "time_generate_s": gen_s, "time_score_s": score_s, "time_update_s": upd_s, "elapsed_s": elapsed0 + started.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}").and_then(|_| metrics.flush()).map_err(|e| TrainError::Msg(format!("metrics.jsonl: {e}")))?;
        if cfg.log_every > 0 && (it % cfg.log_every == 0 || it == 1 || it == cfg.iterations) {
            eprintln!("ppo iteration {it}/{}: score {score_mean:.3} ± {score_std:.3}, KL {mean_kl:.3}, β {beta_used:.4}, pg {:.4}, vf {:.4}, {:.0} tok/s", cfg.iterations, agg.pg_loss / k, agg.vf_loss / k, gen_tokens as f64 / gen_s.max(1e-9));
        }
        if cfg.samples_every > 0 && it % cfg.samples_every == 0 {
            for r in rollouts.iter().take(4) {
                let s = json!({ "iteration": it, "prompt": (io.decode)(&r.prompt), "response": (io.decode)(&r.response), "score": r.score });
                writeln!(samples, "{s}").map_err(|e| TrainError::Msg(format!("samples.jsonl: {e}")))?;
            }
        }
        summary.scores.push(score_mean);
        summary.kls.push(mean_kl);
        summary.iterations = it;
        if cfg.save_every.is_some_and(|e| it % e == 0) {
            ensure_finite(&policy, it)?;
            let state = TrainerState {
                command: "ppo".into(),
                step: it,
                total_steps: cfg.iterations,
                epoch: 0,
                micro_in_epoch: prompt_pos as u64,
                seed: cfg.seed,
                model_fingerprint: checkpoint::model_fingerprint(&policy),
                data_fingerprint: data_fp.clone(),
                tokens_seen: 0,
                elapsed_s: elapsed0 + started.elapsed().as_secs_f64(),
                extra: json!({ "beta": kl.beta }),
            };
            let extra = match (&critic, &critic_state) {
                // a separate critic: all of it (trunk, score and value heads) and its optimizer
                (Some(c), Some((_, _, copt))) => vec![
                    ("value_head.safetensors".into(), value_head_bytes(&c.model)?),
                    ("critic.safetensors".into(), checkpoint::params_bytes(&c.model)?),
                    ("critic_optimizer.safetensors".into(), checkpoint::optimizer_bytes(&c.model, copt)?),
                ],
                _ => vec![("value_head.safetensors".into(), value_head_bytes(&policy)?)],
            };
            checkpoint::save_with(out, &policy, &opt, &state, io.tokenizer, &extra)?;
        }
    }
    ensure_finite(&policy, cfg.iterations)?;
    let dtype = cfg.save_dtype.unwrap_or(policy.cfg.dtype);
    policy.save(out, dtype, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(io.tokenizer)).map_err(|e| TrainError::Msg(e.to_string()))?;
    match &critic {
        // the critic in HF layout (its score head untouched) with its value head beside it
        Some(c) => {
            let dir = out.join("critic");
            c.model.save(&dir, dtype, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(io.tokenizer)).map_err(|e| TrainError::Msg(e.to_string()))?;
            okapi_model::weights::write_atomic(&dir.join("value_head.safetensors"), &value_head_bytes(&c.model)?).map_err(|e| TrainError::Msg(e.to_string()))?;
        }
        None => okapi_model::weights::write_atomic(&out.join("value_head.safetensors"), &value_head_bytes(&policy)?).map_err(|e| TrainError::Msg(e.to_string()))?,
    }
    Ok((policy, summary))
}

/// `v_head.weight` (1, C) and `v_head.bias` (1) as a safetensors file.
pub fn value_head_bytes<B: Backend>(policy: &Model<B>) -> Result<Vec<u8>, TrainError> {
    let vh = policy.value_head.ok_or_else(|| TrainError::Msg("the policy has no value head".into()))?;
    let w: Vec<u8> = policy.host_value(vh.w).iter().flat_map(|x| x.to_le_bytes()).collect();
    let b: Vec<u8> = policy.host_value(vh.b.unwrap()).iter().flat_map(|x| x.to_le_bytes()).collect();
    let views = vec![
        ("v_head.weight".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, policy.cfg.hidden_size], &w).unwrap()),
        ("v_head.bias".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &b).unwrap()),
    ];
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(meta)).map_err(|e| TrainError::Msg(format!("value head: {e}")))
}
