//! The PPO loop (GRPO's and RLOO's too), one method per phase: [`Ppo::resume`], then per
//! iteration [`Ppo::rollouts`] (sample; a group method G completions per prompt), [`Ppo::score`]
//! (the `--reward` terms, log-probs, values, advantages: GAE or the group baseline),
//! [`Ppo::update`] (epochs over minibatches), [`Ppo::log`] and [`Ppo::checkpoint`]; and
//! [`Ppo::finish`], which saves the policy and its value head (or the critic).

use super::{compute_advantages, controller_kl, minibatch_rollouts, update_kl_controller, value_head_bytes, Critic, KlControl, PpoConfig, PpoIo, PpoModels, PpoStats, PpoSummary, Rollout};
use crate::checkpoint::{self, MomentSource, TrainerState};
use crate::error::{self, ResumeMismatch};
use crate::generate::{generate, Sampling};
use crate::optim::{clip_coef, zero, Optimizer};
use crate::progress::Meter;
use crate::reward::RewardBufs;
use crate::rundir;
use crate::tensorboard::{self, EventWriter};
use crate::trainer::{ensure_finite, EpochOrder};
use crate::TrainError;
use okapi_data::{Example, PromptGroup};
use okapi_model::{Grads, Model};
use okapi_runtime::collective::{all_gather_lists_f64, all_reduce_bufs, dealt_steps, shard};
use okapi_runtime::{Backend, Collective};
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::kl::KlController;
use super::update::MinibatchSize;
use crate::grad_shards::{global_norm, install_for_stage, take_error, ShardError};
use super::PpoBufs;
use super::update::PolicyEval;
use crate::rewards::RewardFn;

/// A separate critic with its training state.
struct CriticState<B: Backend> {
    model: Model<B>,
    bufs: PpoBufs<B>,
    grads: Grads<B>,
    opt: Optimizer<B>,
    /// with ZeRO-1 or 2: the critic's trainable tensors, whose new values the ranks exchange
    zero_trainable: Option<Vec<bool>>,
    /// with ZeRO-2: where the critic's gradient hook reports a failed reduce
    shard_error: Option<ShardError>,
}


/// Seconds each phase of an iteration took, and the tokens it generated.
#[derive(Default)]
struct Times {
    generate: f64,
    score: f64,
    update: f64,
    tokens: usize,
}

/// One PPO run (see [`run_ppo`]).
pub struct Ppo<'a, B: Backend> {
    policy: Model<B>,
    /// `None`: the policy's base with its LoRA adapters off
    reference: Option<&'a Model<B>>,
    reward: Option<&'a Model<B>>,
    critic: Option<CriticState<B>>,
    prompts: &'a [Vec<u32>],
    cfg: &'a PpoConfig,
    io: &'a PpoIo<'a>,
    out: Option<&'a Path>,
    grads: Grads<B>,
    opt: Optimizer<B>,
    /// with ZeRO-1 or 2: the policy's trainable tensors, whose new values the ranks exchange
    zero_trainable: Option<Vec<bool>>,
    /// with ZeRO-2: where the policy's gradient hook reports a failed reduce
    shard_error: Option<ShardError>,
    pol_bufs: PpoBufs<B>,
    /// `None` when the run needs no reference (a group method with β = 0)
    ref_bufs: Option<PpoBufs<B>>,
    order: EpochOrder,
    kl: KlController,
    /// prompts drawn so far (the data position)
    prompt_pos: usize,
    done: u64,
    /// fingerprint of the prompts and of the settings that decide which rollouts are drawn
    data_fp: String,
    elapsed0: f64,
    started: Instant,
    /// the iteration this process started from (for the rate and ETA)
    started_at: u64,
    summary: PpoSummary,
    /// the last checkpoint of this run on disk and its iteration
    last_checkpoint: Option<(std::path::PathBuf, u64)>,
    /// the iteration of the last checkpoint, on every rank (only rank 0 writes)
    saved_at: Option<u64>,
}

/// Runs PPO on `prompts` (token ids of the templated prompts) and returns the trained policy
/// with a summary. With `out`, writes `metrics.jsonl`, `samples.jsonl`, checkpoints and the
/// final policy with its value head (or `critic/`) there; without, writes nothing.
pub fn run_ppo<'a, B: Backend>(models: PpoModels<'a, B>, prompts: &'a [Vec<u32>], cfg: &'a PpoConfig, io: &'a PpoIo<'a>, out: Option<&'a Path>) -> Result<(Model<B>, PpoSummary), TrainError> {
    let mut ppo = Ppo::new(models, prompts, cfg, io, out)?;
    ppo.resume()?;
    ppo.run()
}

impl<'a, B: Backend> Ppo<'a, B> {
    /// Buffers, optimizers and the prompt order for a run; the policy must carry a value head
    /// unless `models.critic` is given.
    pub fn new(models: PpoModels<'a, B>, prompts: &'a [Vec<u32>], cfg: &'a PpoConfig, io: &'a PpoIo<'a>, out: Option<&'a Path>) -> Result<Self, TrainError> {
        if prompts.is_empty() {
            return Err(TrainError::NoData { what: "prompts", detail: None });
        }
        cfg.validate()?;
        // (a rank of a data-parallel run other than 0 writes nothing: rank 0 saves)
        if out.is_none() && cfg.save_every.is_some() && io.comm.rank() == 0 {
            return Err(TrainError::Setting { setting: "--save-every", problem: "checkpoints need an output directory".into() });
        }
        if let Some(dir) = out {
            crate::trainer::refuse_other_checkpoint(dir, cfg.resume.is_some())?;
            std::fs::create_dir_all(dir).map_err(error::io(dir))?;
        }
        let PpoModels { policy, reference, reward, critic } = models;
        check_models(cfg, &policy, reward, critic.is_some())?;
        let mask = policy.trainable_mask_with(cfg.unfrozen_layers, cfg.train_embedding_norm)?;
        // a trained embedding norm (trlx's BLOOM) feeds the hydra reference the policy's current
        // trunk, as trlx's hydra heads read it
        let mut trunk_mask = mask.clone();
        policy.emb_ln.iter().flat_map(okapi_model::model::Norm::params).for_each(|i| trunk_mask[i] = false);
        let shared = policy.frozen_trunk_depth(&trunk_mask);
        match reference {
            _ if !cfg.needs_reference() => {}
            Some(r) if r.first_block() > shared => {
                return Err(TrainError::Setting {
                    setting: "--unfrozen-layers",
                    problem: format!("the reference holds only blocks {} and up (hydra), but the policy trains blocks below it (its frozen trunk is {shared} blocks deep)", r.first_block()),
                });
            }
            None if policy.adapters.is_none() => return Err(TrainError::Setting { setting: "reference", problem: "only a LoRA policy can be its own reference (its adapters off)".into() }),
            _ => {}
        }
        let mut grads = policy.new_grads(|i| mask[i]);
        let (opt, zero_trainable) = zero::optimizer(&policy, &grads, cfg.adam, cfg.zero, io.comm);
        // ZeRO-2: every minibatch must give each rank rollouts
        let minibatches = (cfg.rollouts, "rollouts of an iteration", cfg.minibatch, "--ppo-batch-size");
        let shard_error = install_for_stage(&policy, &mut grads, cfg.zero, io.comm, minibatches)?;
        let cap_t = prompts.iter().map(Vec::len).max().unwrap_or(1) + cfg.sampling.max_new_tokens;
        // a chunk or minibatch larger than an iteration's rollouts holds them all
        let chunk = cfg.chunk_size.min(cfg.rollouts);
        let cap_b = chunk.max(cfg.minibatch.min(cfg.rollouts));
        let critic = critic
            .map(|Critic { model, mask }| {
                let mut grads = model.new_grads(|i| mask[i]);
                let (opt, zero_trainable) = zero::optimizer(&model, &grads, cfg.adam, cfg.zero, io.comm);
                let shard_error = install_for_stage(&model, &mut grads, cfg.zero, io.comm, minibatches)?;
                Ok::<_, TrainError>(CriticState { bufs: PpoBufs::new(&model, cap_b, cap_t, io.pad), model, grads, opt, zero_trainable, shard_error })
            })
            .transpose()?;
        Ok(Ppo {
            pol_bufs: PpoBufs::new(&policy, cap_b, cap_t, io.pad),
            ref_bufs: cfg.needs_reference().then(|| PpoBufs::new(reference.unwrap_or(&policy), chunk, cap_t, io.pad)),
            policy,
            reference,
            reward,
            critic,
            prompts,
            cfg,
            io,
            out,
            grads,
            opt,
            zero_trainable,
            shard_error,
            order: EpochOrder { n: prompts.len(), batch_size: 1, shuffle: true, seed: cfg.seed },
            kl: cfg.kl.clone(),
            prompt_pos: 0,
            done: 0,
            data_fp: data_fingerprint(prompts, cfg),
            elapsed0: 0.0,
            started: Instant::now(),
            started_at: 0,
            summary: PpoSummary::default(),
            last_checkpoint: None,
            saved_at: None,
        })
    }

    /// With `cfg.resume`: the policy, its value head (or the critic), the optimizers, β and the
    /// prompt position from the checkpoint, after the shared resume check.
    pub fn resume(&mut self) -> Result<(), TrainError> {
        let Some(dir) = &self.cfg.resume else { return Ok(()) };
        let (model_fp, settings) = (checkpoint::model_fingerprint(&self.policy), self.cfg.trajectory_settings());
        let (ckpt, saved) = checkpoint::open_for_resume(dir, &expect(&model_fp, &self.data_fp, self.cfg, &settings))?;
        let separate = ckpt.join("critic.safetensors").exists();
        if separate != self.critic.is_some() {
            let used = if separate { "separate" } else { "shared" };
            return Err(TrainError::Resume { dir: ckpt, mismatch: ResumeMismatch::Critic { used } });
        }
        self.load_trunk(&ckpt)?;
        match self.critic.as_mut() {
            Some(c) => {
                checkpoint::load_params(&ckpt.join("critic.safetensors"), &mut c.model, true)?;
                checkpoint::load_optimizer_file(&ckpt.join("critic_optimizer.safetensors"), &c.model, &mut c.opt)?;
            }
            None if self.policy.value_head.is_some() => checkpoint::load_params(&ckpt.join("value_head.safetensors"), &mut self.policy, false)?,
            None => {}
        }
        checkpoint::load_optimizer(&ckpt, &self.policy, &mut self.opt)?;
        let beta = saved.extra.get("beta").and_then(|b| b.as_f64());
        self.kl.beta = beta.ok_or_else(|| TrainError::Resume { dir: ckpt.clone(), mismatch: ResumeMismatch::State { field: "extra.beta" } })?;
        self.prompt_pos = saved.micro_in_epoch as usize;
        self.done = saved.step;
        self.elapsed0 = saved.elapsed_s;
        self.summary.iterations = saved.step;
        self.last_checkpoint = Some((ckpt.clone(), saved.step));
        self.saved_at = Some(saved.step);
        if self.done >= self.cfg.iterations {
            eprintln!("{}: the run had finished (iteration {} of {}): nothing left to train; saving its final policy again", ckpt.display(), self.done, self.cfg.iterations);
        } else {
            eprintln!("resuming from {} after iteration {}/{}", ckpt.display(), self.done, self.cfg.iterations);
        }
        Ok(())
    }

    /// The trunk and LM head from the checkpoint's HF-layout model (a LoRA policy: its adapters).
    fn load_trunk(&mut self, ckpt: &Path) -> Result<(), TrainError> {
        if self.policy.adapters.is_some() {
            return Ok(self.policy.load_adapter_values(&ckpt.join("model"))?);
        }
        let trunk = Model::load(self.policy.be.clone(), &ckpt.join("model"))?;
        for (j, info) in trunk.info.iter().enumerate() {
            let Some(i) = self.policy.info.iter().position(|p| p.name == info.name && p.numel() == info.numel()) else {
                let detail = format!("its `{}` is not a parameter of the policy", info.name);
                return Err(TrainError::Resume { dir: ckpt.to_path_buf(), mismatch: ResumeMismatch::Layout { detail } });
            };
            // (packed again when the policy keeps this frozen weight in bf16)
            self.policy.set_host_value(i, &trunk.host_value(j));
        }
        Ok(())
    }

    /// The remaining iterations, then [`Ppo::finish`].
    pub fn run(mut self) -> Result<(Model<B>, PpoSummary), TrainError> {
        let keep = self.cfg.resume.as_ref().map(|_| self.done);
        self.started_at = self.done;
        let mut logs = match self.out {
            Some(dir) => Some((rundir::reopen_log(&dir.join("metrics.jsonl"), keep, "iteration")?, rundir::reopen_log(&dir.join("samples.jsonl"), keep, "iteration")?)),
            None => None,
        };
        let mut tb = self.io.tensorboard.map(|d| EventWriter::create(d, keep)).transpose().map_err(tensorboard::flag_error)?;
        for it in self.done + 1..=self.cfg.iterations {
            if crate::stop::agreed(self.io.comm)? {
                return Err(self.interrupted(it - 1));
            }
            crate::hooks::step_delay();
            let mut times = Times::default();
            let mut rollouts = self.rollouts(it, &mut times)?;
            let mean_kl = self.score(&mut rollouts, &mut times)?;
            let stats = self.update(it, &rollouts, &mut times)?;
            self.log(it, &rollouts, mean_kl, &stats, &times, logs.as_mut())?;
            if let Some(tb) = tb.as_mut() {
                self.log_tensorboard(tb, it, &rollouts).map_err(tensorboard::flag_error)?;
            }
            self.checkpoint(it)?;
            self.done = it;
        }
        self.finish()
    }

    /// The iteration's metrics line as TensorBoard scalars, and its samples (when samples.jsonl
    /// gets them) as one Markdown text.
    fn log_tensorboard(&self, tb: &mut EventWriter, it: u64, rollouts: &[Rollout]) -> Result<(), String> {
        if let Some(line) = self.summary.history.last() {
            tb.metrics_line(line, "iteration")?;
        }
        if self.cfg.samples_every > 0 && it.is_multiple_of(self.cfg.samples_every) {
            let text: Vec<String> = rollouts.iter().take(4).map(|r| format!("**prompt** {}\n\n**response** {}\n\n**score** {:.4}", (self.io.decode)(&r.prompt), (self.io.decode)(&r.response), r.score)).collect();
            tb.text(it, "samples", &text.join("\n\n---\n\n"))?;
        }
        tb.flush()
    }

    /// Samples this iteration's rollouts from the policy, `chunk_size` prompts at a time.
    fn rollouts(&mut self, it: u64, times: &mut Times) -> Result<Vec<Rollout>, TrainError> {
        let t = Instant::now();
        let n = self.prompts.len();
        // a group method draws rollouts / G prompts and samples each G times, side by side
        let g = self.cfg.group.map_or(1, |g| g.num_generations);
        let draws = self.cfg.rollouts / g;
        let picked: Vec<usize> = (0..draws).map(|k| self.prompt_pos + k).flat_map(|pos| std::iter::repeat_n(self.order.order((pos / n) as u64)[pos % n], g)).collect();
        self.prompt_pos += draws;
        let mut rollouts: Vec<Rollout> = Vec::with_capacity(self.cfg.rollouts);
        let mut meter = Meter::new(&format!("{} iteration {it}/{}: rollouts", self.cfg.command(), self.cfg.iterations), "prompts", picked.len() as u64);
        // chunk c is sampled with its own seed, so it is the same on whichever rank takes it
        let chunks: Vec<&[usize]> = picked.chunks(self.cfg.chunk_size).collect();
        let (comm, eos) = (self.io.comm, self.io.eos);
        for (s, unit) in dealt_steps(chunks.len(), comm.rank(), comm.world()).enumerate() {
            let mut responses = Vec::new();
            if let Some(c) = unit {
                let ps: Vec<Vec<u32>> = chunks[c].iter().map(|&i| self.prompts[i].clone()).collect();
                let sampling = Sampling { seed: self.cfg.seed ^ (it << 20) ^ c as u64, ..self.cfg.sampling.clone() };
                let gens = generate(&self.policy, &ps, &sampling, Some(eos))?;
                responses = gens.into_iter().map(|g| if g.tokens.is_empty() { vec![eos] } else { g.tokens }).collect();
            }
            let responses = gather_lists(comm, responses, |&t| f64::from(t), |x| x as u32)?;
            let step = step_units(&chunks, s, comm.world());
            for (&i, response) in step.iter().flat_map(|c| c.iter()).zip(responses) {
                rollouts.push(Rollout { prompt: self.prompts[i].clone(), response, prompt_index: i, ..Default::default() });
            }
            meter.advance(step.iter().map(|c| c.len() as u64).sum());
        }
        meter.finish();
        times.generate = t.elapsed().as_secs_f64();
        times.tokens = rollouts.iter().map(|r| r.response.len()).sum();
        Ok(rollouts)
    }

    /// Rewards, log-probs under the policy and the reference, values, then advantages and
    /// returns (PPO's GAE, or the group baseline); returns the mean KL.
    fn score(&mut self, rollouts: &mut [Rollout], times: &mut Times) -> Result<f64, TrainError> {
        let t = Instant::now();
        self.rewards(rollouts)?;
        let k3 = self.cfg.kl_control == KlControl::Trlx && self.cfg.group.is_none();
        let layout = self.eval_layout(k3);
        let all: Vec<usize> = (0..rollouts.len()).collect();
        let chunks: Vec<&[usize]> = all.chunks(self.cfg.chunk_size).collect();
        let comm = self.io.comm;
        for (s, unit) in dealt_steps(chunks.len(), comm.rank(), comm.world()).enumerate() {
            let mine = match unit {
                Some(c) => self.evaluate_chunk(rollouts, chunks[c], layout)?,
                None => Vec::new(),
            };
            let evaluated = gather_lists(comm, mine, |&x| x, |x| x)?;
            for (&i, v) in step_units(&chunks, s, comm.world()).iter().flat_map(|c| c.iter()).zip(evaluated) {
                layout.unpack(&mut rollouts[i], &v);
            }
        }
        let mean_kl = match self.cfg.group {
            None => compute_advantages(rollouts, self.kl.beta, self.cfg.gamma, self.cfg.lam, self.cfg.reward_clip, self.cfg.whiten),
            Some(g) => {
                super::group::set_group_advantages(rollouts, g.num_generations, g.algo, g.scale_rewards);
                let with_both = rollouts.iter().filter(|r| !r.old_logprobs.is_empty() && !r.ref_logprobs.is_empty());
                with_both.map(super::response_kl).fold(0.0, |a, b| a + b) / rollouts.len().max(1) as f64
            }
        };
        times.score = t.elapsed().as_secs_f64();
        Ok(mean_kl)
    }

    /// Each rollout's reward: the `--reward` terms (the reward model's scores computed in chunks
    /// across the ranks), weighted and summed into `score`.
    fn rewards(&mut self, rollouts: &mut [Rollout]) -> Result<(), TrainError> {
        let spec = &self.cfg.rewards;
        let rm_scores = match self.reward.filter(|_| spec.needs_rm()) {
            Some(rm) => {
                let groups: Vec<PromptGroup> = rollouts
                    .iter()
                    .map(|r| Ok(PromptGroup { responses: vec![Example { labels: vec![], prompt_len: 0, ids: (self.io.rm_ids)(&r.prompt, &r.response)? }], pairs: vec![] }))
                    .collect::<Result<_, TrainError>>()?;
                let chunk = self.cfg.chunk_size;
                let mut meter = Meter::new(&format!("{} iteration {}/{}: scoring", self.cfg.command(), self.done + 1, self.cfg.iterations), "rollouts", groups.len() as u64);
                let scores = RewardBufs::new(rm, &groups, chunk, self.io.rm_pad, 0.0).rewards_metered(rm, &groups, chunk, self.io.comm, &mut meter)?;
                scores.into_iter().map(|s| s[0]).collect()
            }
            None => Vec::new(),
        };
        for (k, r) in rollouts.iter_mut().enumerate() {
            r.reward_terms = spec.terms.iter().map(|(f, _)| self.reward_term(*f, r, rm_scores.get(k).copied())).collect::<Result<_, _>>()?;
            // (the reward model's score alone stays the f32 it was: 1.0 · s is exact)
            r.score = spec.total(&r.reward_terms) as f32;
        }
        Ok(())
    }

    /// One reward function's value for rollout `r` (`rm`: its reward-model score).
    fn reward_term(&self, f: RewardFn, r: &Rollout, rm: Option<f32>) -> Result<f64, TrainError> {
        Ok(match f {
            RewardFn::Rm => f64::from(rm.expect("scored above when the spec has rm")),
            RewardFn::Length => r.response.iter().filter(|&&t| t != self.io.eos).count() as f64,
            RewardFn::Lang => {
                let lang = self.io.prompt_langs.get(r.prompt_index).copied().flatten().ok_or_else(|| TrainError::Setting { setting: "--reward", problem: format!("lang: the language of prompt {} is unknown (no `lang` field or language file name, and none detected)", r.prompt_index) })?;
                crate::rewards::lang_consistency(lang, &(self.io.decode)(&r.response))
            }
        })
    }

    /// What a chunk's evaluation computes under these settings.
    fn eval_layout(&self, k3: bool) -> EvalLayout {
        EvalLayout { old: self.cfg.needs_old_logprobs(), values: self.cfg.group.is_none(), reference: self.cfg.needs_reference(), k3 }
    }

    /// The policy's log-probs and values and the reference's log-probs of the rollouts `idx`,
    /// each packed as `layout` says.
    fn evaluate_chunk(&mut self, rollouts: &[Rollout], idx: &[usize], layout: EvalLayout) -> Result<Vec<Vec<f64>>, TrainError> {
        let refs: Vec<&Rollout> = idx.iter().map(|&i| &rollouts[i]).collect();
        // the policy's forward also gives the hydra reference its frozen trunk
        let hydra = self.reference.is_some_and(|r| r.first_block() > 0);
        let mut pe = if layout.old || layout.values || (layout.reference && hydra) { Some(self.pol_bufs.eval_from(&self.policy, &refs, false, layout.k3, None)?.0) } else { None };
        let re = match (self.ref_bufs.as_mut(), self.reference) {
            (None, _) => None,
            (Some(bufs), Some(reference)) => {
                // a hydra reference starts from the policy's frozen trunk, computed once above
                let from = match reference.first_block() {
                    0 => None,
                    start => Some((start, &self.pol_bufs.acts.x[start])),
                };
                Some(bufs.eval_from(reference, &refs, false, layout.k3, from)?.0)
            }
            // LoRA: the policy's base is the reference, no second copy of the weights
            (Some(bufs), None) => Some(self.policy.with_adapters_off(|base| bufs.eval_from(base, &refs, false, layout.k3, None))?.0),
        };
        if let (Some(c), Some(pe)) = (self.critic.as_mut(), pe.as_mut()) {
            pe.values = c.bufs.critic_values(&c.model, &refs)?.0;
        }
        Ok((0..idx.len()).map(|k| layout.pack(pe.as_ref(), re.as_ref(), k)).collect())
    }

    /// `ppo_epochs` passes over seeded minibatches: an optimizer step of the critic (when
    /// separate) and of the policy each; returns the minibatches' mean statistics.
    fn update(&mut self, it: u64, rollouts: &[Rollout], times: &mut Times) -> Result<PpoStats, TrainError> {
        let t = Instant::now();
        let (mut agg, mut n_mb) = (PpoStats::default(), 0usize);
        let mb_order = EpochOrder { n: rollouts.len(), batch_size: self.cfg.minibatch, shuffle: true, seed: self.cfg.seed ^ it };
        for epoch in 0..self.cfg.ppo_epochs {
            for mb in mb_order.order(epoch as u64).chunks(self.cfg.minibatch) {
                // (a group method's advantages are final: nothing is whitened)
                let scope = if self.cfg.group.is_some() { super::WhitenScope::Batch } else { self.cfg.whiten };
                let mb = minibatch_rollouts(&mb.iter().map(|&i| &rollouts[i]).collect::<Vec<_>>(), scope);
                let whole = MinibatchSize::of(&mb.iter().collect::<Vec<_>>());
                // this rank's share (one process: all of it)
                let share = &mb[shard(mb.len(), self.io.comm.rank(), self.io.comm.world())];
                let st = self.minibatch_step(it, &share.iter().collect::<Vec<_>>(), whole)?;
                agg.add(&st);
                n_mb += 1;
            }
        }
        agg.scale(1.0 / n_mb.max(1) as f64);
        times.update = t.elapsed().as_secs_f64();
        Ok(agg)
    }

    /// One minibatch (this rank's share `refs` of a minibatch of size `whole`): gradients of
    /// the policy (and critic), summed over the ranks, and their clipped AdamW steps.
    fn minibatch_step(&mut self, it: u64, refs: &[&Rollout], whole: MinibatchSize) -> Result<PpoStats, TrainError> {
        let (cfg, policy) = (self.cfg, &mut self.policy);
        policy.zero_grads(&mut self.grads);
        let critic = self.critic.as_mut().map(|c| {
            c.model.zero_grads(&mut c.grads);
            (&c.model, &mut c.bufs, &mut c.grads)
        });
        // a rank whose share is empty (a minibatch smaller than the world) adds zeros (not under
        // ZeRO-2, which gives every rank rollouts)
        let st = match (refs.is_empty(), &cfg.group) {
            (true, _) => PpoStats::default(),
            (false, None) => self.pol_bufs.minibatch_share(policy, refs, whole, &cfg.loss, &mut self.grads, critic)?,
            (false, Some(g)) => self.pol_bufs.group_minibatch_share(policy, refs, whole, &g.loss, &mut self.grads)?.0.into(),
        };
        let critic_error = self.critic.as_ref().and_then(|c| c.shard_error.as_ref());
        take_error(&[self.shard_error.as_ref(), critic_error].into_iter().flatten().collect::<Vec<_>>())?;
        let st = self.sum_over_ranks(st)?;
        let (comm, sharded) = (self.io.comm, self.shard_error.is_some());
        let policy = &mut self.policy;
        if let Some(c) = self.critic.as_mut() {
            let cnorm = global_norm(c.opt.grad_norm(&c.model, &c.grads), sharded, comm)?;
            if cnorm.is_finite() {
                c.opt.step(&mut c.model, &c.grads, cfg.lr as f32, clip_coef(cnorm, cfg.max_grad_norm));
                if let Some(trainable) = &c.zero_trainable {
                    zero::share_params(&c.opt, &mut c.model, self.io.comm, trainable)?;
                }
            }
        }
        let norm = global_norm(self.opt.grad_norm(policy, &self.grads), sharded, comm)?;
        if !st.loss.is_finite() || !norm.is_finite() {
            let checkpoint = self.last_checkpoint.as_ref().map(|(p, _)| p.clone());
            return Err(TrainError::NotFinite { at: format!("iteration {it}"), what: format!("the {} loss is {} and the gradient norm {norm}", self.cfg.command().to_uppercase(), st.loss), checkpoint });
        }
        self.opt.step(policy, &self.grads, cfg.lr as f32, clip_coef(norm, cfg.max_grad_norm));
        if let Some(trainable) = &self.zero_trainable {
            zero::share_params(&self.opt, policy, self.io.comm, trainable)?;
        }
        Ok(st)
    }

    /// A minibatch's shares summed over the ranks: the policy's and the critic's gradients (one
    /// message; ZeRO-2 reduced them to their owners during the backward) and the statistics.
    fn sum_over_ranks(&mut self, st: PpoStats) -> Result<PpoStats, TrainError> {
        let comm = self.io.comm;
        if comm.world() == 1 {
            return Ok(st);
        }
        if self.shard_error.is_none() {
            let info = &self.policy.info;
            let mut bufs: Vec<(&mut B::Buf, usize)> = self.grads.bufs.iter_mut().enumerate().filter_map(|(i, g)| g.as_mut().map(|g| (g, info[i].numel()))).collect();
            if let Some(c) = self.critic.as_mut() {
                let info = &c.model.info;
                bufs.extend(c.grads.bufs.iter_mut().enumerate().filter_map(|(i, g)| g.as_mut().map(|g| (g, info[i].numel()))));
            }
            all_reduce_bufs(comm, &self.policy.be, &mut bufs)?;
        }
        let mut n = st.values();
        comm.all_reduce_sum_f64(&mut n)?;
        Ok(PpoStats::from_values(&n))
    }

    /// Adapts β, writes the iteration's metrics line and samples, prints progress.
    fn log(&mut self, it: u64, rollouts: &[Rollout], mean_kl: f64, st: &PpoStats, times: &Times, logs: Option<&mut (File, File)>) -> Result<(), TrainError> {
        let (score_mean, score_std) = mean_std(&rollouts.iter().map(|r| r.score as f64).collect::<Vec<_>>());
        let tok_s = times.tokens as f64 / times.generate.max(1e-9);
        let (mut line, progress) = match self.cfg.group {
            None => self.ppo_line(rollouts, mean_kl, st),
            Some(g) => group_line(rollouts, g, st, mean_kl, self.io.eos),
        };
        let common = json!({
            "iteration": it, "step": it, "score_mean": score_mean, "score_std": score_std,
            "response_len": times.tokens as f64 / rollouts.len().max(1) as f64, "rollout_tokens_per_s": tok_s,
            "time_generate_s": times.generate, "time_score_s": times.score, "time_update_s": times.update, "elapsed_s": self.elapsed0 + self.started.elapsed().as_secs_f64(),
        });
        merge_json(&mut line, common);
        if !self.cfg.rewards.is_rm_only() {
            merge_json(&mut line, self.term_means(rollouts));
        }
        if let (Some((metrics, samples)), Some(dir)) = (logs, self.out) {
            writeln!(metrics, "{line}").and_then(|_| metrics.flush()).map_err(error::io(&dir.join("metrics.jsonl")))?;
            if self.cfg.samples_every > 0 && it.is_multiple_of(self.cfg.samples_every) {
                for r in rollouts.iter().take(4) {
                    let mut s = json!({ "iteration": it, "prompt": (self.io.decode)(&r.prompt), "response": (self.io.decode)(&r.response), "score": r.score });
                    if !self.cfg.rewards.is_rm_only() {
                        s["rewards"] = self.cfg.rewards.terms.iter().zip(&r.reward_terms).map(|((f, _), v)| (f.name().to_string(), json!(v))).collect::<serde_json::Map<_, _>>().into();
                    }
                    writeln!(samples, "{s}").map_err(error::io(&dir.join("samples.jsonl")))?;
                }
            }
        }
        if self.cfg.log_every > 0 && (it.is_multiple_of(self.cfg.log_every) || it == 1 || it == self.cfg.iterations) {
            let (_, left) = crate::progress::rate_eta(self.started, self.started_at, it, self.cfg.iterations);
            eprintln!("{} iteration {it}/{}: score {score_mean:.3} ± {score_std:.3}, {progress}, {tok_s:.0} tok/s, ETA {}", self.cfg.command(), self.cfg.iterations, crate::progress::eta(left));
        }
        self.summary.scores.push(score_mean);
        // (a group method's KL is the one in its loss)
        self.summary.kls.push(if self.cfg.group.is_some() { st.kl } else { mean_kl });
        self.summary.iterations = it;
        self.summary.history.push(line);
        Ok(())
    }

    /// PPO's own metrics (it moves β here) and its part of the progress line.
    fn ppo_line(&mut self, rollouts: &[Rollout], mean_kl: f64, st: &PpoStats) -> (serde_json::Value, String) {
        let beta_used = self.kl.beta;
        let kl_in = controller_kl(rollouts, self.cfg.chunk_size, self.cfg.kl_control);
        update_kl_controller(&mut self.kl, kl_in, self.cfg);
        let line = json!({
            "kl": mean_kl, "kl_controller_input": kl_in, "beta": beta_used, "beta_next": self.kl.beta,
            "entropy": st.entropy, "pg_loss": st.pg_loss, "vf_loss": st.vf_loss, "loss": st.loss, "clipfrac": st.clipfrac, "approx_kl": st.approx_kl,
        });
        (line, format!("KL {mean_kl:.3}, β {beta_used:.4}, pg {:.4}, vf {:.4}", st.pg_loss, st.vf_loss))
    }

    /// Each reward function's mean and standard deviation over the iteration's rollouts.
    fn term_means(&self, rollouts: &[Rollout]) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, (f, _)) in self.cfg.rewards.terms.iter().enumerate() {
            let (mean, std) = mean_std(&rollouts.iter().map(|r| r.reward_terms[k]).collect::<Vec<_>>());
            m.insert(format!("reward_{}_mean", f.name()), json!(mean));
            m.insert(format!("reward_{}_std", f.name()), json!(std));
        }
        m.into()
    }

    /// A checkpoint every `save_every` iterations (written by rank 0; with ZeRO every rank
    /// hands in its share of the AdamW state as it is written).
    fn checkpoint(&mut self, it: u64) -> Result<(), TrainError> {
        match self.cfg.save_every {
            Some(every) if it.is_multiple_of(every) => {
                self.saved_at = Some(it);
                self.save_or_hand_in(it).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Rank 0 writes the checkpoint of iteration `it` (its path returned); the others hand in
    /// their ZeRO shares of the policy's (and critic's) moments as it is written.
    fn save_or_hand_in(&mut self, it: u64) -> Result<Option<PathBuf>, TrainError> {
        if let Some(out) = self.out {
            return self.save_checkpoint(out, it).map(|_| Some(out.join("checkpoint")));
        }
        let (policy, critic) = self.moment_sources();
        checkpoint::hand_in_moments(&self.policy, &self.opt, &policy)?;
        if let (Some(c), Some(moments)) = (&self.critic, critic) {
            checkpoint::hand_in_moments(&c.model, &c.opt, &moments)?;
        }
        Ok(None)
    }

    /// Where the checkpoint's moments of the policy and of a separate critic come from: each
    /// rank's share under ZeRO, else this process.
    fn moment_sources(&self) -> (MomentSource<'_>, Option<MomentSource<'_>>) {
        let comm = self.io.comm;
        (MomentSource::of(comm, &self.zero_trainable), self.critic.as_ref().map(|c| MomentSource::of(comm, &c.zero_trainable)))
    }

    /// Writes the checkpoint of iteration `it` into `out`: the policy, its optimizer, β, the
    /// prompt position and the value head (or the whole critic and its optimizer).
    fn save_checkpoint(&mut self, out: &Path, it: u64) -> Result<(), TrainError> {
        let state = TrainerState {
            command: self.cfg.command().into(),
            step: it,
            total_steps: self.cfg.iterations,
            epoch: 0,
            micro_in_epoch: self.prompt_pos as u64,
            seed: self.cfg.seed,
            model_fingerprint: checkpoint::model_fingerprint(&self.policy),
            data_fingerprint: self.data_fp.clone(),
            tokens_seen: 0,
            elapsed_s: self.elapsed0 + self.started.elapsed().as_secs_f64(),
            extra: json!({ "beta": self.kl.beta }),
            settings: self.cfg.trajectory_settings(),
        };
        let (policy_moments, critic_moments) = self.moment_sources();
        if let Err(e) = ensure_finite(&self.policy, it) {
            checkpoint::hand_in_moments(&self.policy, &self.opt, &policy_moments)?;
            if let (Some(c), Some(moments)) = (&self.critic, &critic_moments) {
                checkpoint::hand_in_moments(&c.model, &c.opt, moments)?;
            }
            return Err(e);
        }
        let extra = match &self.critic {
            Some(c) => vec![("value_head.safetensors".into(), value_head_bytes(&c.model)?), ("critic.safetensors".into(), checkpoint::params_bytes(&c.model)?)],
            None if self.policy.value_head.is_some() => vec![("value_head.safetensors".into(), value_head_bytes(&self.policy)?)],
            None => vec![],
        };
        let critic_optimizer: Vec<(&str, checkpoint::Optimized<B>)> = match (&self.critic, &critic_moments) {
            (Some(c), Some(moments)) => vec![("critic_optimizer.safetensors", (&c.model, &c.opt, moments))],
            _ => vec![],
        };
        checkpoint::save_with(out, (&self.policy, &self.opt, &policy_moments), &state, self.io.tokenizer, &extra, &critic_optimizer)?;
        self.last_checkpoint = Some((out.join("checkpoint"), it));
        Ok(())
    }

    /// A requested stop after iteration `done`: a checkpoint of it (unless the last one is),
    /// then the error that says where it is.
    fn interrupted(&mut self, done: u64) -> TrainError {
        // the stop is agreed: every rank is here, and hands in its ZeRO share while rank 0
        // writes the checkpoint (`saved_at` is the same on every rank)
        let checkpoint = if done == 0 {
            None
        } else if self.saved_at == Some(done) {
            self.last_checkpoint.as_ref().filter(|(_, it)| *it == done).map(|(path, _)| path.clone())
        } else {
            match self.save_or_hand_in(done) {
                Ok(path) => path,
                Err(e) => return e,
            }
        };
        TrainError::Interrupted { unit: "iteration", done, total: self.cfg.iterations, checkpoint }
    }

    /// Refuses a non-finite policy; with an output directory saves it in HF layout with its
    /// value head beside it, or the critic (HF layout, score head untouched) in `critic/`.
    pub fn finish(self) -> Result<(Model<B>, PpoSummary), TrainError> {
        ensure_finite(&self.policy, self.cfg.iterations)?;
        let Some(out) = self.out else { return Ok((self.policy, self.summary)) };
        let dtype = self.cfg.save_dtype.unwrap_or(self.policy.cfg.dtype);
        let max_shard = okapi_model::DEFAULT_MAX_SHARD_BYTES;
        match self.policy.adapters {
            // a LoRA policy's result is its adapter (PEFT's layout) beside the value head
            Some(_) => self.policy.save_adapter(out, &self.policy.cfg.path, self.io.tokenizer)?,
            None => self.policy.save(out, dtype, max_shard, self.io.tokenizer)?,
        }
        match &self.critic {
            Some(c) => {
                let dir = out.join("critic");
                c.model.save(&dir, dtype, max_shard, self.io.tokenizer)?;
                okapi_model::weights::write_atomic(&dir.join("value_head.safetensors"), &value_head_bytes(&c.model)?)?;
            }
            None if self.policy.value_head.is_some() => okapi_model::weights::write_atomic(&out.join("value_head.safetensors"), &value_head_bytes(&self.policy)?)?,
            None => {}
        }
        Ok((self.policy, self.summary))
    }
}

/// What a resume of a PPO run expects of the checkpoint.
fn expect<'a>(model_fp: &'a str, data_fp: &'a str, cfg: &PpoConfig, settings: &'a checkpoint::Settings) -> checkpoint::Expect<'a> {
    checkpoint::Expect {
        command: cfg.command(),
        model_fingerprint: model_fp,
        data_fingerprint: data_fp,
        data_what: "other prompts or rollout settings",
        data_settings: "--prompts, --langs, --rollouts, --chunk-size, --ppo-epochs and --ppo-batch-size",
        total: cfg.iterations,
        unit: "iterations",
        settings,
    }
}

/// The whole resume check of [`run_ppo`] before any model is loaded: `cfg.resume`'s
/// checkpoint must be a PPO run's with a policy of `policy` config, these `prompts` and the
/// same settings. Nothing is read but `trainer_state.json`.
pub fn check_resume(cfg: &PpoConfig, policy: &okapi_model::ModelConfig, prompts: &[Vec<u32>]) -> Result<(), TrainError> {
    let Some(dir) = &cfg.resume else { return Ok(()) };
    let (model_fp, data_fp, settings) = (checkpoint::config_fingerprint(policy), data_fingerprint(prompts, cfg), cfg.trajectory_settings());
    checkpoint::open_for_resume(dir, &expect(&model_fp, &data_fp, cfg, &settings)).map(|_| ())
}

/// The prompts and the settings that decide which rollouts an iteration draws.
fn data_fingerprint(prompts: &[Vec<u32>], cfg: &PpoConfig) -> String {
    let mut f = checkpoint::Fnv::default();
    for p in prompts {
        f.add(p.len() as u64);
        p.iter().for_each(|&x| f.add(x as u64));
    }
    [cfg.rollouts, cfg.chunk_size, cfg.ppo_epochs, cfg.minibatch].iter().for_each(|&x| f.add(x as u64));
    if let Some(g) = &cfg.group {
        f.add(g.num_generations as u64);
    }
    f.hex()
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len().max(1) as f64;
    let m = x.iter().sum::<f64>() / n;
    (m, (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n).sqrt())
}

/// The units of step `s` of [`dealt_steps`] over `world` ranks: every rank's, in rank order.
fn step_units<T>(units: &[T], s: usize, world: usize) -> &[T] {
    &units[s * world..((s + 1) * world).min(units.len())]
}

/// Every rank's lists on every rank (each rank's in order, the ranks in rank order), through
/// f64 — exact for u32 and f32 values. One process: `mine`, unconverted.
fn gather_lists<T>(comm: &dyn Collective, mine: Vec<Vec<T>>, to: impl Fn(&T) -> f64, from: impl Fn(f64) -> T) -> Result<Vec<Vec<T>>, TrainError> {
    if comm.world() == 1 {
        return Ok(mine);
    }
    let lists = mine.iter().map(|l| l.iter().map(&to).collect()).collect();
    Ok(all_gather_lists_f64(comm, lists)?.into_iter().map(|l| l.into_iter().map(&from).collect()).collect())
}

/// What the run's settings ask of its models: a reward model for the `rm` reward, no critic
/// and no value head for a group method.
fn check_models<B: Backend>(cfg: &PpoConfig, policy: &Model<B>, reward: Option<&Model<B>>, critic: bool) -> Result<(), TrainError> {
    if cfg.rewards.needs_rm() && reward.is_none() {
        return Err(TrainError::Setting { setting: "--reward", problem: format!("{}: the `rm` reward needs a reward model", cfg.rewards.to_flag()) });
    }
    if cfg.group.is_some() && (critic || policy.value_head.is_some()) {
        return Err(TrainError::Setting { setting: "critic", problem: format!("{} trains no critic (its baseline is the group's)", cfg.command()) });
    }
    if cfg.group.is_none() && !critic && policy.value_head.is_none() {
        return Err(TrainError::Setting { setting: "critic", problem: "PPO needs a value head on the policy or a separate critic".into() });
    }
    Ok(())
}

/// What the evaluation of a chunk of rollouts holds per rollout, in this order: the policy's
/// log-probs (`old`), its values, the reference's log-probs (a response's length each), Σ k3.
/// Every rank knows it from the settings, so the gathered lists unpack alike.
#[derive(Clone, Copy)]
struct EvalLayout {
    old: bool,
    values: bool,
    reference: bool,
    k3: bool,
}

impl EvalLayout {
    fn pack(self, policy: Option<&PolicyEval>, reference: Option<&PolicyEval>, k: usize) -> Vec<f64> {
        let as_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        let mut out = Vec::new();
        if let (true, Some(p)) = (self.old, policy) {
            out.extend(as_f64(&p.logprobs[k]));
        }
        if let (true, Some(p)) = (self.values, policy) {
            out.extend(as_f64(&p.values[k]));
        }
        if let (true, Some(r)) = (self.reference, reference) {
            out.extend(as_f64(&r.logprobs[k]));
        }
        if self.k3 {
            out.push(match (policy, reference) {
                (Some(p), Some(r)) => super::k3_sum(p, r, k),
                _ => 0.0,
            });
        }
        out
    }

    fn unpack(self, r: &mut Rollout, v: &[f64]) {
        let n = r.response.len();
        let mut parts = v.chunks(n.max(1));
        let mut next = |on: bool| if on { parts.next().map(|p| p.iter().map(|&x| x as f32).collect()).unwrap_or_default() } else { Vec::new() };
        r.old_logprobs = next(self.old);
        r.old_values = next(self.values);
        r.ref_logprobs = next(self.reference);
        r.kl_k3 = if self.k3 { v[v.len() - 1] } else { 0.0 };
    }
}

/// A group method's metrics (TRL's names where it has them) and its part of the progress line.
fn group_line(rollouts: &[Rollout], g: super::group::GroupCfg, st: &PpoStats, mean_kl: f64, eos: u32) -> (serde_json::Value, String) {
    let scores: Vec<f64> = rollouts.iter().map(|r| r.score as f64).collect();
    let spread = super::group::group_spread(&scores, g.num_generations);
    let lens: Vec<usize> = rollouts.iter().map(|r| r.response.len()).collect();
    let (min, max) = (lens.iter().min().copied().unwrap_or(0), lens.iter().max().copied().unwrap_or(0));
    // completions cut at --max-new-tokens: no EOS at their end
    let clipped = rollouts.iter().filter(|r| r.response.last() != Some(&eos)).count() as f64 / rollouts.len().max(1) as f64;
    let line = json!({
        "kl": st.kl, "response_kl": mean_kl, "beta": g.loss.beta, "loss": st.loss, "entropy": st.entropy,
        "clip_ratio_low": st.clip_low, "clip_ratio_high": st.clip_high, "clip_ratio_region": st.clipfrac,
        "reward_group_std": spread.mean_std, "frac_reward_zero_std": spread.frac_zero_std,
        "completion_len_min": min, "completion_len_max": max, "completion_clipped_ratio": clipped,
    });
    (line, format!("KL {:.4}, loss {:.4}, clipped {:.3}, zero-spread groups {:.2}", st.kl, st.loss, st.clipfrac, spread.frac_zero_std))
}

/// Adds `extra`'s keys to the object `line`.
fn merge_json(line: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(l), serde_json::Value::Object(e)) = (line.as_object_mut(), extra) {
        l.extend(e);
    }
}
