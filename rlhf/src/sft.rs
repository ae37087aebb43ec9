//! Supervised fine-tuning: token-level mean cross-entropy over response tokens (or the whole
//! sequence), AdamW with warmup schedules, global-norm clipping, gradient accumulation,
//! validation, checkpoints and exact resume.

use crate::checkpoint::{self, Fnv, TrainerState};
use crate::lm_loss::{lm_loss_and_grad, shift_labels, LossBufs};
use crate::optim::{clip_coef, AdamWConfig, Optimizer};
use crate::progress::Progress;
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::TrainError;
use okapi_data::{collate, Example};
use okapi_model::{Acts, DType, Model, Rng, Scratch};
use okapi_runtime::Backend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The train flags of DESIGN.md §6, resolved.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: u64,
    pub max_steps: Option<u64>,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub adam: AdamWConfig,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub shuffle: bool,
    pub eval_every: Option<u64>,
    pub save_every: Option<u64>,
    pub save_dtype: Option<DType>,
    pub log_every: u64,
    pub resume: Option<PathBuf>,
}

/// Where the micro-batches of an epoch come from: the example order of each epoch is a seeded
/// permutation (or file order), so a data position is just (epoch, micro-batch index).
pub struct EpochOrder {
    pub n: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
}

impl EpochOrder {
    pub fn micro_per_epoch(&self) -> u64 {
        self.n.div_ceil(self.batch_size) as u64
    }
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.n).collect();
        if self.shuffle {
            let mut rng = Rng::new(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ epoch.wrapping_add(1));
            for i in (1..idx.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                idx.swap(i, j);
            }
        }
        idx
    }
}

/// Splits examples into (train, validation) with a seeded shuffle; `fraction` of them
/// (rounded, at least one when > 0) go to validation.
pub fn split_val(examples: Vec<Example>, fraction: f64, seed: u64) -> (Vec<Example>, Vec<Example>) {
    if fraction <= 0.0 || examples.len() < 2 {
        return (examples, vec![]);
    }
    let n_val = ((examples.len() as f64 * fraction).round() as usize).clamp(1, examples.len() - 1);
    let order = EpochOrder { n: examples.len(), batch_size: 1, shuffle: true, seed: seed ^ 0x5641_4c5f_5350_4c54 }.order(0);
    let mut is_val = vec![false; examples.len()];
    order[..n_val].iter().for_each(|&i| is_val[i] = true);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (e, v) in examples.into_iter().zip(is_val) {
        if v {
            val.push(e)
        } else {
            train.push(e)
        }
    }
    (train, val)
}

pub fn data_fingerprint(train: &[Example], val: &[Example]) -> String {
    let mut h = Fnv::default();
    for set in [train, val] {
        h.add(set.len() as u64);
        for e in set {
            h.add(e.ids.len() as u64);
            e.ids.iter().for_each(|&x| h.add(x as u64));
            e.labels.iter().for_each(|&x| h.add(x as u64));
        }
    }
    h.hex()
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct SftSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub val_loss: Option<f64>,
}

struct Buffers<B: Backend> {
    acts: Acts<B>,
    scratch: Scratch<B>,
    loss: LossBufs<B>,
}

/// Mean loss over a set of examples (token-level mean over all their targets).
pub fn eval_loss<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, loss: &mut LossBufs<B>, examples: &[Example], batch_size: usize, pad: u32) -> Result<f64, TrainError> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = collate(&refs, pad);
        model.forward(acts, &batch.ids, batch.b, batch.t)?;
        let targets = shift_labels(&batch.labels, batch.b, batch.t);
        let (s, c) = lm_loss_and_grad(model, acts, loss, &targets, 0.0);
        sum += s;
        count += c;
    }
    Ok(if count > 0 { sum / count as f64 } else { f64::NAN })
}

fn write_metrics(path: &Path, keep_up_to: Option<u64>) -> Result<std::fs::File, TrainError> {
    let io = |e: std::io::Error| TrainError::Msg(format!("{}: {e}", path.display()));
    // On resume, keep the lines of the steps the checkpoint covers: the file then reads as one run.
    let kept = match keep_up_to {
        Some(step) if path.exists() => std::fs::read_to_string(path)
            .map_err(io)?
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("step").and_then(|s| s.as_u64())).is_some_and(|s| s <= step))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        _ => String::new(),
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(kept.as_bytes()).map_err(io)?;
    Ok(f)
}

/// Runs SFT. `model` is the starting point (the `--model` directory); with `cfg.resume`, the
/// checkpoint's weights, optimizer state and data position replace it after the fingerprints
/// are checked. Writes `out/metrics.jsonl`, checkpoints and, at the end, the model.
#[allow(clippy::too_many_arguments)]
pub fn run_sft<B: Backend>(
    mut model: Model<B>,
    tokenizer: &Path,
    train: Vec<Example>,
    val: Vec<Example>,
    cfg: &TrainConfig,
    out: &Path,
    pad: u32,
) -> Result<SftSummary, TrainError> {
    if train.is_empty() {
        return Err(TrainError::Msg("no training examples left after filtering".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Msg(format!("{}: {e}", out.display())))?;
    let data_fp = data_fingerprint(&train, &val);
    let model_fp = checkpoint::model_fingerprint(&model);
    let save_dtype = cfg.save_dtype.unwrap_or(model.cfg.dtype);
    let order = EpochOrder { n: train.len(), batch_size: cfg.batch_size, shuffle: cfg.shuffle, seed: cfg.seed };
    let micro_per_epoch = order.micro_per_epoch();
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum as u64);
    let total_steps = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    let sched = LrSchedule { kind: cfg.schedule, base_lr: cfg.lr, warmup: cfg.warmup_steps, total: total_steps };

    let mut grads = model.new_grads(|_| true);
    let mut opt = Optimizer::new(&model, &grads, cfg.adam);
    let mut state = TrainerState {
        command: "sft".into(),
        step: 0,
        total_steps,
        epoch: 0,
        micro_in_epoch: 0,
        seed: cfg.seed,
        model_fingerprint: model_fp.clone(),
        data_fingerprint: data_fp.clone(),
        tokens_seen: 0,
        elapsed_s: 0.0,
        extra: serde_json::Value::Null,
    };
    if let Some(dir) = &cfg.resume {
        let ckpt = checkpoint::resolve(dir)?;
        let saved = checkpoint::read_state(&ckpt)?;
        if saved.command != "sft" {
            return Err(TrainError::Msg(format!("--resume {}: checkpoint of `{}`, not of sft", ckpt.display(), saved.command)));
        }
        if saved.model_fingerprint != model_fp {
            return Err(TrainError::Msg(format!("--resume {}: checkpoint of another model ({}), --model is {}", ckpt.display(), saved.model_fingerprint, model_fp)));
        }
        if saved.data_fingerprint != data_fp {
            return Err(TrainError::Msg(format!(
                "--resume {}: checkpoint of another data set (fingerprint {} vs {}): use the same --data, --langs, --max-len, --val-fraction and --seed",
                ckpt.display(),
                saved.data_fingerprint,
                data_fp
            )));
        }
        if saved.total_steps != total_steps {
            return Err(TrainError::Msg(format!("--resume {}: the run had {} steps in total, these flags give {total_steps}", ckpt.display(), saved.total_steps)));
        }
        let loaded = Model::load(model.be.clone(), &ckpt.join("model")).map_err(|e| TrainError::Msg(e.to_string()))?;
        for (dst, src) in model.values.iter_mut().zip(loaded.values) {
            *dst = src;
        }
        checkpoint::load_optimizer(&ckpt, &model, &mut opt)?;
        state = saved;
        eprintln!("resuming from {} at step {}/{}", ckpt.display(), state.step, total_steps);
    }
    let mut metrics = write_metrics(&out.join("metrics.jsonl"), cfg.resume.as_ref().map(|_| state.step))?;

    let max_t = train.iter().chain(&val).map(|e| e.ids.len()).max().unwrap_or(1);
    let mut bufs = Buffers { acts: model.new_acts(cfg.batch_size, max_t), scratch: model.new_scratch(cfg.batch_size, max_t), loss: LossBufs::new(&model.be, cfg.batch_size * max_t) };
    let progress = Progress::new(total_steps, state.step, cfg.log_every);
    let started = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut summary = SftSummary { steps: state.step, first_loss: None, last_loss: None, val_loss: None };
    let mut epoch_order = order.order(state.epoch);
    while state.step < total_steps {
        let step_start = Instant::now();
        // this step's micro-batches (never crossing an epoch boundary)
        if state.micro_in_epoch >= micro_per_epoch {
            state.epoch += 1;
            state.micro_in_epoch = 0;
            epoch_order = order.order(state.epoch);
        }
        let first = state.micro_in_epoch as usize;
        let last = (first + cfg.grad_accum).min(micro_per_epoch as usize);
        let batches: Vec<_> = (first..last)
            .map(|m| {
                let idx = &epoch_order[m * cfg.batch_size..((m + 1) * cfg.batch_size).min(train.len())];
                let refs: Vec<&Example> = idx.iter().map(|&i| &train[i]).collect();
                collate(&refs, pad)
            })
            .collect();
        let n_targets: usize = batches.iter().map(|b| b.n_targets()).sum();
        let n_tokens: usize = batches.iter().map(|b| b.ids.iter().filter(|&&x| x != pad).count()).sum();
        model.zero_grads(&mut grads);
        let weight = if n_targets > 0 { 1.0 / n_targets as f32 } else { 0.0 };
        let mut loss_sum = 0f64;
        for batch in &batches {
            model.forward(&mut bufs.acts, &batch.ids, batch.b, batch.t)?;
            let targets = shift_labels(&batch.labels, batch.b, batch.t);
            let (s, _) = lm_loss_and_grad(&model, &mut bufs.acts, &mut bufs.loss, &targets, weight);
            loss_sum += s;
            model.backward(&bufs.acts, &mut bufs.scratch, &mut grads);
        }
        let loss = if n_targets > 0 { loss_sum / n_targets as f64 } else { 0.0 };
        let grad_norm = opt.grad_norm(&model, &grads);
        let step_no = state.step + 1;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Msg(format!(
                "step {step_no}: the loss is {loss} and the gradient norm {grad_norm}: stopping (lower --lr?); the last checkpoint in {} is intact",
                out.join("checkpoint").display()
            )));
        }
        let lr = sched.lr(state.step);
        opt.step(&mut model, &grads, lr as f32, clip_coef(grad_norm, cfg.max_grad_norm));
        state.step = step_no;
        state.micro_in_epoch = last as u64;
        state.tokens_seen += n_tokens as u64;
        let dt = step_start.elapsed().as_secs_f64();
        state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
        let epoch_f = state.epoch as f64 + state.micro_in_epoch as f64 / micro_per_epoch as f64;
        let mut line = serde_json::json!({
            "step": state.step, "epoch": epoch_f, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": n_tokens, "targets": n_targets, "tokens_per_s": n_tokens as f64 / dt.max(1e-9), "elapsed_s": state.elapsed_s,
        });
        if cfg.eval_every.is_some_and(|e| state.step % e == 0) && !val.is_empty() {
            let v = eval_loss(&model, &mut bufs.acts, &mut bufs.loss, &val, cfg.batch_size, pad)?;
            line["val_loss"] = v.into();
            summary.val_loss = Some(v);
            progress.println(&format!("step {}: val_loss {v:.4}", state.step));
        }
        writeln!(metrics, "{line}").and_then(|_| metrics.flush()).map_err(|e| TrainError::Msg(format!("metrics.jsonl: {e}")))?;
        progress.step(state.step, loss, lr, n_tokens as f64 / dt.max(1e-9));
        summary.first_loss.get_or_insert(loss);
        summary.last_loss = Some(loss);
        summary.steps = state.step;
        if cfg.save_every.is_some_and(|e| state.step % e == 0) {
            ensure_finite(&model, state.step)?;
            checkpoint::save(out, &model, &opt, &state, tokenizer)?;
        }
        if std::env::var("OKAPI_TEST_EXIT_AFTER_STEP").ok().and_then(|s| s.parse::<u64>().ok()) == Some(state.step) {
            progress.finish();
            return Err(TrainError::Msg(format!("stopped after step {} (OKAPI_TEST_EXIT_AFTER_STEP)", state.step)));
        }
    }
    progress.finish();
    ensure_finite(&model, state.step)?;
    model.save(out, save_dtype, okapi_model::DEFAULT_MAX_SHARD_BYTES, Some(tokenizer)).map_err(|e| TrainError::Msg(e.to_string()))?;
    Ok(summary)
}

/// Refuses to save parameters that overflowed.
fn ensure_finite<B: Backend>(model: &Model<B>, step: u64) -> Result<(), TrainError> {
    for (i, v) in model.values.iter().enumerate() {
        if !model.be.read(v, model.info[i].numel()).iter().all(|x| x.is_finite()) {
            return Err(TrainError::Msg(format!("step {step}: parameter `{}` is no longer finite: stopping without saving (lower --lr?)", model.info[i].name)));
        }
    }
    Ok(())
}
