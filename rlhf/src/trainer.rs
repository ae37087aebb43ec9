//! The training loop every objective shares (SFT, reward model, DPO): epochs of seeded
//! permutations, gradient accumulation, global-norm clipping, AdamW with transformers'
//! schedules, metrics.jsonl, validation, checkpoints with exact resume, NaN handling.

use crate::checkpoint::{self, TrainerState};
use crate::optim::{clip_coef, AdamWConfig, Optimizer};
use crate::progress::Progress;
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::TrainError;
use okapi_model::{DType, Grads, Model, Rng};
use okapi_runtime::Backend;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The train flags of DESIGN.md §6, resolved.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: u64,
    pub max_steps: Option<u64>,
    /// items (examples, or prompts for ranking data) per micro-batch
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

/// The item order of each epoch is a seeded permutation (or file order), so a data position is
/// just (epoch, micro-batch index).
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

/// Splits items into (train, validation) with a seeded shuffle; `fraction` of them (rounded,
/// at least one when > 0) go to validation.
pub fn split_val<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    if fraction <= 0.0 || items.len() < 2 {
        return (items, vec![]);
    }
    let n_val = ((items.len() as f64 * fraction).round() as usize).clamp(1, items.len() - 1);
    let order = EpochOrder { n: items.len(), batch_size: 1, shuffle: true, seed: seed ^ 0x5641_4c5f_5350_4c54 }.order(0);
    let mut is_val = vec![false; items.len()];
    order[..n_val].iter().for_each(|&i| is_val[i] = true);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (e, v) in items.into_iter().zip(is_val) {
        if v {
            val.push(e)
        } else {
            train.push(e)
        }
    }
    (train, val)
}

/// What one optimizer step's loss computation reports.
pub struct StepOut {
    /// the step's loss (mean over its targets / pairs)
    pub loss: f64,
    /// real (non-pad) tokens processed
    pub tokens: usize,
    /// objective-specific metrics (targets, accuracy, margins, …)
    pub extra: Map<String, Value>,
}

/// A training objective: the loss of a step's micro-batches and its gradient, and validation.
pub trait Objective<B: Backend> {
    /// `sft`, `reward`, `dpo`: written into checkpoints, checked on resume.
    fn command(&self) -> &'static str;
    fn n_train(&self) -> usize;
    /// Fingerprint of the tokenized training and validation data (resume refuses other data).
    fn data_fingerprint(&self) -> String;
    /// Accumulates into `grads` the gradient of the step's loss over `micro` (each a list of
    /// training-item indices; the loss is the mean over all of them together).
    fn step(&mut self, model: &Model<B>, micro: &[Vec<usize>], grads: &mut Grads<B>) -> Result<StepOut, TrainError>;
    /// Validation metrics (`val_loss`, …), `None` without validation data.
    fn validate(&mut self, model: &Model<B>) -> Result<Option<Map<String, Value>>, TrainError>;
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// the last validation metrics
    pub val: Option<Map<String, Value>>,
    /// the last step's objective metrics
    pub last_extra: Map<String, Value>,
}

fn open_metrics(path: &Path, keep_up_to: Option<u64>) -> Result<std::fs::File, TrainError> {
    open_log(path, keep_up_to, "step")
}

/// Creates the JSONL log `path`; with `keep_up_to` (a resume) keeps the lines whose `key` is at
/// most that, so the file reads as one run.
pub(crate) fn open_log(path: &Path, keep_up_to: Option<u64>, key: &str) -> Result<std::fs::File, TrainError> {
    let io = |e: std::io::Error| TrainError::Msg(format!("{}: {e}", path.display()));
    let kept = match keep_up_to {
        Some(step) if path.exists() => std::fs::read_to_string(path)
            .map_err(io)?
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v.get(key).and_then(|s| s.as_u64())).is_some_and(|s| s <= step))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        _ => String::new(),
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(kept.as_bytes()).map_err(io)?;
    Ok(f)
}

/// Refuses to save parameters that overflowed.
pub fn ensure_finite<B: Backend>(model: &Model<B>, step: u64) -> Result<(), TrainError> {
    for (i, v) in model.values.iter().enumerate() {
        if !model.be.read(v, model.info[i].numel()).iter().all(|x| x.is_finite()) {
            return Err(TrainError::Msg(format!("step {step}: parameter `{}` is no longer finite: stopping without saving (lower --lr?)", model.info[i].name)));
        }
    }
    Ok(())
}

/// Trains `model` (the parameters for which `trainable` is true) on `obj`. With `cfg.resume`,
/// the checkpoint's weights, optimizer state and data position replace the start after the
/// command, model and data fingerprints are checked. Writes `out/metrics.jsonl`, checkpoints and,
/// at the end, the model (HF layout, `cfg.save_dtype` or the input's dtype).
pub fn train<B: Backend, O: Objective<B>>(
    mut model: Model<B>,
    trainable: &dyn Fn(usize) -> bool,
    obj: &mut O,
    cfg: &TrainConfig,
    out: &Path,
    tokenizer: &Path,
) -> Result<(Model<B>, TrainSummary), TrainError> {
    if obj.n_train() == 0 {
        return Err(TrainError::Msg("no training data left after filtering".into()));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::Msg(format!("{}: {e}", out.display())))?;
    let data_fp = obj.data_fingerprint();
    let model_fp = checkpoint::model_fingerprint(&model);
    let save_dtype = cfg.save_dtype.unwrap_or(model.cfg.dtype);
    let order = EpochOrder { n: obj.n_train(), batch_size: cfg.batch_size, shuffle: cfg.shuffle, seed: cfg.seed };
    let micro_per_epoch = order.micro_per_epoch();
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.grad_accum as u64);
    let total_steps = cfg.max_steps.unwrap_or(cfg.epochs * steps_per_epoch);
    let sched = LrSchedule { kind: cfg.schedule, base_lr: cfg.lr, warmup: cfg.warmup_steps, total: total_steps };

    let mut grads = model.new_grads(trainable);
    let mut opt = Optimizer::new(&model, &grads, cfg.adam);
    let mut state = TrainerState {
        command: obj.command().into(),
        step: 0,
        total_steps,
        epoch: 0,
        micro_in_epoch: 0,
        seed: cfg.seed,
        model_fingerprint: model_fp.clone(),
        data_fingerprint: data_fp.clone(),
        tokens_seen: 0,
        elapsed_s: 0.0,
        extra: Value::Null,
    };
    if let Some(dir) = &cfg.resume {
        let ckpt = checkpoint::resolve(dir)?;
        let saved = checkpoint::read_state(&ckpt)?;
        let at = ckpt.display();
        if saved.command != obj.command() {
            return Err(TrainError::Msg(format!("--resume {at}: checkpoint of `{}`, not of {}", saved.command, obj.command())));
        }
        if saved.model_fingerprint != model_fp {
            return Err(TrainError::Msg(format!("--resume {at}: checkpoint of another model ({}), --model is {model_fp}", saved.model_fingerprint)));
        }
        if saved.data_fingerprint != data_fp {
            return Err(TrainError::Msg(format!(
                "--resume {at}: checkpoint of another data set (fingerprint {} vs {data_fp}): use the same --data, --langs, --max-len, --val-fraction and --seed",
                saved.data_fingerprint
            )));
        }
        if saved.total_steps != total_steps {
            return Err(TrainError::Msg(format!("--resume {at}: the run had {} steps in total, these flags give {total_steps}", saved.total_steps)));
        }
        let loaded = Model::load(model.be.clone(), &ckpt.join("model")).map_err(|e| TrainError::Msg(e.to_string()))?;
        if loaded.info.len() != model.info.len() {
            return Err(TrainError::Msg(format!("--resume {at}: the checkpoint's model has another parameter layout")));
        }
        for (dst, src) in model.values.iter_mut().zip(loaded.values) {
            *dst = src;
        }
        checkpoint::load_optimizer(&ckpt, &model, &mut opt)?;
        state = saved;
        eprintln!("resuming from {at} at step {}/{total_steps}", state.step);
    }
    let mut metrics = open_metrics(&out.join("metrics.jsonl"), cfg.resume.as_ref().map(|_| state.step))?;
    let progress = Progress::new(total_steps, state.step, cfg.log_every);
    let started = Instant::now();
    let elapsed0 = state.elapsed_s;
    let mut summary = TrainSummary { steps: state.step, first_loss: None, last_loss: None, val: None, last_extra: Map::new() };
    let mut epoch_order = order.order(state.epoch);
    while state.step < total_steps {
        let step_start = Instant::now();
        if state.micro_in_epoch >= micro_per_epoch {
            state.epoch += 1;
            state.micro_in_epoch = 0;
            epoch_order = order.order(state.epoch);
        }
        // this step's micro-batches, never crossing an epoch boundary
        let first = state.micro_in_epoch as usize;
        let last = (first + cfg.grad_accum).min(micro_per_epoch as usize);
        let micro: Vec<Vec<usize>> = (first..last).map(|m| epoch_order[m * cfg.batch_size..((m + 1) * cfg.batch_size).min(order.n)].to_vec()).collect();
        model.zero_grads(&mut grads);
        let so = obj.step(&model, &micro, &mut grads)?;
        let grad_norm = opt.grad_norm(&model, &grads);
        let step_no = state.step + 1;
        if !so.loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Msg(format!(
                "step {step_no}: the loss is {} and the gradient norm {grad_norm}: stopping (lower --lr?); the last checkpoint in {} is intact",
                so.loss,
                out.join("checkpoint").display()
            )));
        }
        let lr = sched.lr(state.step);
        opt.step(&mut model, &grads, lr as f32, clip_coef(grad_norm, cfg.max_grad_norm));
        state.step = step_no;
        state.micro_in_epoch = last as u64;
        state.tokens_seen += so.tokens as u64;
        let dt = step_start.elapsed().as_secs_f64();
        state.elapsed_s = elapsed0 + started.elapsed().as_secs_f64();
        let epoch_f = state.epoch as f64 + state.micro_in_epoch as f64 / micro_per_epoch as f64;
        let mut line = serde_json::json!({
            "step": state.step, "epoch": epoch_f, "loss": so.loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": so.tokens, "tokens_per_s": so.tokens as f64 / dt.max(1e-9), "elapsed_s": state.elapsed_s,
        });
        line.as_object_mut().unwrap().extend(so.extra.clone());
        if cfg.eval_every.is_some_and(|e| state.step % e == 0) {
            if let Some(v) = obj.validate(&model)? {
                progress.println(&format!("step {}: {}", state.step, v.iter().map(|(k, x)| format!("{k} {}", fmt_num(x))).collect::<Vec<_>>().join(", ")));
                line.as_object_mut().unwrap().extend(v.clone());
                summary.val = Some(v);
            }
        }
        writeln!(metrics, "{line}").and_then(|_| metrics.flush()).map_err(|e| TrainError::Msg(format!("metrics.jsonl: {e}")))?;
        progress.step(state.step, so.loss, lr, so.tokens as f64 / dt.max(1e-9));
        summary.first_loss.get_or_insert(so.loss);
        summary.last_loss = Some(so.loss);
        summary.last_extra = so.extra;
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
    Ok((model, summary))
}

fn fmt_num(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| v.to_string())
}
