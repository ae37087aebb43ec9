//! The training loop every objective shares (SFT, reward model, DPO): epochs of seeded
//! permutations, gradient accumulation, global-norm clipping, AdamW with transformers'
//! schedules, metrics, validation, checkpoints with exact resume, NaN handling. An objective
//! ([`Objective`]) supplies the loss and its gradient; [`train`] does the rest.

use crate::checkpoint::{self, TrainerState};
use crate::error::{io, ResumeMismatch};
use crate::optim::{clip_coef, zero, AdamWConfig, Optimizer};
use crate::progress::Progress;
use crate::rundir;
use crate::tensorboard::{self, EventWriter};
use crate::schedule::{LrSchedule, ScheduleKind};
use crate::TrainError;
use okapi_model::{DType, Grads, Model, Rng};
use okapi_runtime::collective::{all_reduce_bufs, shard, Collective, SingleProcess};
use okapi_runtime::Backend;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The settings of a training run (SFT, reward model, DPO). Named recipes — okapi-train's
/// defaults and Okapi's published settings — are constructors in `recipes.rs`
/// ([`TrainConfig::sft`], [`TrainConfig::okapi_sft`], …).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub epochs: u64,
    /// stop after this many optimizer steps (overrides `epochs`)
    pub max_steps: Option<u64>,
    /// items (examples, or prompts for ranking data) per micro-batch
    pub batch_size: usize,
    /// micro-batches per optimizer step
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub adam: AdamWConfig,
    /// clip the global gradient norm (0: no clipping)
    pub max_grad_norm: f64,
    /// tokens per example (prompt + response + EOS), cut from the right
    pub max_len: usize,
    /// loss on the response only (false: the whole sequence, Okapi's SFT)
    pub mask_prompt: bool,
    /// fraction of the items held out for validation
    pub val_fraction: f64,
    /// train only the top N blocks, the final norm and the heads (`None`: everything)
    pub unfrozen_layers: Option<usize>,
    pub seed: u64,
    pub shuffle: bool,
    pub eval_every: Option<u64>,
    pub save_every: Option<u64>,
    /// dtype of the saved model (`None`: the input checkpoint's)
    pub save_dtype: Option<DType>,
    /// without a terminal, a progress line every N steps
    pub log_every: u64,
    /// continue from this output directory's (or this) checkpoint, bit-identically
    pub resume: Option<PathBuf>,
    /// ZeRO stage of a data-parallel run: 0, every rank holds the whole AdamW state; 1, each
    /// rank holds the moments of its share of the tensors and steps them, then the new values
    /// are exchanged (the same numbers, bit for bit); 2, also the blocks' gradients, reduced to
    /// their owners as the backward runs (`grad_shards`; the same numbers up to the order of
    /// the sums)
    pub zero: u8,
}

impl TrainConfig {
    /// Refuses settings that cannot train, naming the flag that sets each (one line).
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |setting: &'static str, problem: String| Err(TrainError::Setting { setting, problem });
        for (flag, n) in [("--batch-size", self.batch_size as u64), ("--grad-accum", self.grad_accum as u64), ("--epochs", self.epochs), ("--max-steps", self.max_steps.unwrap_or(1)), ("--log-every", self.log_every)] {
            if n == 0 {
                return bad(flag, "must be at least 1".into());
            }
        }
        for (flag, every) in [("--eval-every", self.eval_every), ("--save-every", self.save_every)] {
            if every == Some(0) {
                return bad(flag, "must be at least 1 (leave it out for never)".into());
            }
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr", format!("{}: expected a finite non-negative number", self.lr));
        }
        self.adam.validate()?;
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad("--max-grad-norm", format!("{}: expected a finite non-negative number (0: no clipping)", self.max_grad_norm));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("--val-fraction", format!("{}: expected a fraction in [0, 1)", self.val_fraction));
        }
        if self.max_len < 2 {
            return bad("--max-len", format!("{}: must be at least 2", self.max_len));
        }
        if self.zero > 2 {
            return bad("--zero", format!("{}: expected 0, 1 or 2", self.zero));
        }
        Ok(())
    }

    /// The settings that decide the run's course, by flag: a resume must keep each (the data's
    /// and the run length's are checked through their fingerprint and the step total).
    pub fn trajectory_settings(&self) -> checkpoint::Settings {
        [
            ("--batch-size", serde_json::json!(self.batch_size)),
            ("--grad-accum", serde_json::json!(self.grad_accum)),
            ("--lr", serde_json::json!(self.lr)),
            ("--lr-schedule", serde_json::json!(format!("{:?}", self.schedule).to_lowercase())),
            ("--warmup-steps", serde_json::json!(self.warmup_steps)),
            ("--max-grad-norm", serde_json::json!(self.max_grad_norm)),
            ("--max-len", serde_json::json!(self.max_len)),
            ("--mask-prompt", serde_json::json!(self.mask_prompt)),
            ("--val-fraction", serde_json::json!(self.val_fraction)),
            ("--unfrozen-layers", serde_json::json!(self.unfrozen_layers)),
            ("--seed", serde_json::json!(self.seed)),
            ("--no-shuffle", serde_json::json!(!self.shuffle)),
        ]
        .into_iter()
        .chain(self.adam.settings())
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Optimizer steps of a run over `n_train` items.
    pub fn total_steps(&self, n_train: usize) -> u64 {
        let micro_per_epoch = n_train.div_ceil(self.batch_size.max(1)) as u64;
        self.max_steps.unwrap_or(self.epochs * micro_per_epoch.div_ceil(self.grad_accum.max(1) as u64))
    }
}

/// Where a run writes: the final model in Hugging Face layout, `metrics.jsonl` and
/// `checkpoint/`; `tokenizer` (a tokenizer.json) is copied beside every saved model. The caller
/// owns the directory policy (see [`crate::rundir::claim`]); [`train`] only refuses a directory
/// with another run's checkpoint when it does not resume.
#[derive(Clone, Copy, Debug)]
pub struct RunDir<'a> {
    pub dir: &'a Path,
    pub tokenizer: Option<&'a Path>,
    /// `--tensorboard DIR`: every metrics line's numbers also as TensorBoard scalars there
    pub tensorboard: Option<&'a Path>,
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
#[derive(Clone, Debug, Default)]
pub struct StepOut {
    /// the step's loss: the summed loss of its items over the step's normaliser
    pub loss: f64,
    /// real (non-pad) tokens processed
    pub tokens: usize,
    /// objective-specific metrics (targets, accuracy, margins, …), each a number additive over a
    /// split of the step's items: a count, or a sum over the step's normaliser
    pub extra: Map<String, Value>,
}

/// A training objective: the loss of a step's micro-batches and its gradient, and validation.
pub trait Objective<B: Backend> {
    /// `sft`, `reward`, `dpo`: written into checkpoints, checked on resume.
    fn command(&self) -> &'static str;
    fn n_train(&self) -> usize;
    /// Fingerprint of the tokenized training and validation data (resume refuses other data).
    fn data_fingerprint(&self) -> String;
    /// The objective's own settings that decide the run's course, by flag (`--margin`,
    /// `--beta`): a resume must keep them.
    fn settings(&self) -> checkpoint::Settings {
        checkpoint::Settings::new()
    }
    /// The loss normaliser of a step over `micro` (SFT: its target tokens; the pairwise
    /// objectives: its pairs): the step's loss is its items' summed loss over it.
    fn normaliser(&self, micro: &[Vec<usize>]) -> f64;
    /// Accumulates into `grads` the gradient of (the summed loss of `micro`'s items) / `norm`
    /// (`micro`: micro-batches of training-item indices, possibly none). With `norm` the whole
    /// step's normaliser, data-parallel ranks that each take a share of the step's items add up
    /// to the step: gradients, loss and every metric of [`StepOut`].
    fn step(&mut self, model: &Model<B>, micro: &[Vec<usize>], norm: f64, grads: &mut Grads<B>) -> Result<StepOut, TrainError>;
    /// Validation metrics (`val_loss`, …), `None` without validation data.
    fn validate(&mut self, model: &Model<B>) -> Result<Option<Map<String, Value>>, TrainError>;
}

#[derive(Clone, Debug, Default)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// the last validation metrics
    pub val: Option<Map<String, Value>>,
    /// the last step's objective metrics
    pub last_extra: Map<String, Value>,
    /// every step's metrics line of this process (what metrics.jsonl holds)
    pub history: Vec<Value>,
}

/// What a resume of a run whose fresh start is `state` expects of the checkpoint.
fn expect<'a>(command: &'static str, state: &'a TrainerState) -> checkpoint::Expect<'a> {
    checkpoint::Expect {
        command,
        model_fingerprint: &state.model_fingerprint,
        data_fingerprint: &state.data_fingerprint,
        data_what: "another data set",
        data_settings: "--data, --langs, --max-len, --val-fraction and --seed",
        total: state.total_steps,
        unit: "steps",
        settings: &state.settings,
    }
}

/// The whole resume check of [`train`] before the model is loaded: `cfg.resume`'s checkpoint
/// must be of `command`, of a model of `model` config, of the data with this
/// `data_fingerprint` and `n_train` items, and of the same settings (`objective`'s included).
/// Nothing is read but `trainer_state.json`.
pub fn check_resume(cfg: &TrainConfig, command: &'static str, model: &okapi_model::ModelConfig, data_fingerprint: String, n_train: usize, objective: checkpoint::Settings) -> Result<(), TrainError> {
    let Some(dir) = &cfg.resume else { return Ok(()) };
    let state = TrainerState {
        command: command.into(),
        step: 0,
        total_steps: cfg.total_steps(n_train),
        epoch: 0,
        micro_in_epoch: 0,
        seed: cfg.seed,
        model_fingerprint: checkpoint::config_fingerprint(model),
        data_fingerprint,
        tokens_seen: 0,
        elapsed_s: 0.0,
        extra: Value::Null,
        settings: cfg.trajectory_settings().into_iter().chain(objective).collect(),
    };
    checkpoint::open_for_resume(dir, &expect(command, &state)).map(|_| ())
}

/// A run that does not resume refuses a directory holding another run's checkpoint: it would
/// sit beside this run's files and a later `--resume` would read it.
pub(crate) fn refuse_other_checkpoint(dir: &Path, resuming: bool) -> Result<(), TrainError> {
    let found: Vec<&str> = ["checkpoint", "checkpoint.old"].into_iter().filter(|c| dir.join(c).exists()).collect();
    if resuming || found.is_empty() {
        return Ok(());
    }
    Err(TrainError::Setting { setting: "--out", problem: format!("{} holds another run's {}: resume it (--resume) or clear it (--overwrite)", dir.display(), found.join(" and ")) })
}

/// Refuses to save parameters that overflowed.
pub fn ensure_finite<B: Backend>(model: &Model<B>, step: u64) -> Result<(), TrainError> {
    for (i, v) in model.values.iter().enumerate() {
        // a bf16-packed weight is frozen: checked when it was loaded
        if model.is_packed(i) {
            continue;
        }
        if !model.be.read(v, model.info[i].numel()).iter().all(|x| x.is_finite()) {
            let what = format!("parameter `{}` is no longer finite", model.info[i].name);
            return Err(TrainError::NotFinite { at: format!("step {step}"), what, checkpoint: None });
        }
    }
    Ok(())
}

/// Trains `model` on `obj` and returns it with a summary. The trainable parameters are those of
/// `cfg.unfrozen_layers`. With `cfg.resume`, the checkpoint's weights, optimizer state and data
/// position replace the start (after its command, model, data and length are checked). With
/// `out`, writes `metrics.jsonl`, checkpoints every `cfg.save_every` steps and, at the end, the
/// model (HF layout, `cfg.save_dtype` or the input's dtype); without, writes nothing.
pub fn train<B: Backend, O: Objective<B>>(model: Model<B>, obj: &mut O, cfg: &TrainConfig, out: Option<RunDir<'_>>) -> Result<(Model<B>, TrainSummary), TrainError> {
    train_data_parallel(model, obj, cfg, out, &SingleProcess)
}

/// [`train`] as one rank of `comm`: every rank holds the model, the data and the optimizer
/// state; each takes its contiguous share of every micro-batch of the same global step, and the
/// gradients, the loss and the metrics are summed over the ranks before the (identical) AdamW
/// step, so the run is the single-process run up to the order of the sums. Only the rank given
/// `out` (rank 0) writes; a rank that fails tells the others, which fail naming it. (`comm`
/// lives as long as the process: ZeRO-2's gradient hook keeps it.)
pub fn train_data_parallel<B: Backend, O: Objective<B>>(model: Model<B>, obj: &mut O, cfg: &TrainConfig, out: Option<RunDir<'_>>, comm: &'static dyn Collective) -> Result<(Model<B>, TrainSummary), TrainError> {
    if out.is_some() && comm.rank() != 0 {
        return Err(TrainError::Setting { setting: "out", problem: format!("rank {} of {}: only rank 0 writes the run", comm.rank(), comm.world()) });
    }
    let result = Trainer::new(model, obj, cfg, out, comm).and_then(|mut t| {
        t.resume()?;
        t.run()
    });
    // the others are waiting in a collective: they fail naming this rank (an agreed stop, or a
    // collective that already failed, ends every rank by itself)
    if let Err(e) = &result {
        if !matches!(e, TrainError::Comm(_) | TrainError::Interrupted { .. }) {
            comm.abort(&e.to_string());
        }
    }
    result
}

/// ZeRO-2 reduces each backward's gradients as it runs, so every rank must run a backward for
/// every micro-batch: each must give every rank at least one item (`n` items — `items` names
/// them — in micro-batches of `batch_size`, set by `batch_flag`, on `world` ranks). Checked by
/// the trainer and PPO; a command checks it before it writes anything.
pub fn check_shares(n: usize, items: &str, batch_size: usize, batch_flag: &str, world: usize) -> Result<(), TrainError> {
    let last = n % batch_size.max(1);
    if batch_size >= world && (last == 0 || last >= world) {
        return Ok(());
    }
    let problem = if batch_size < world {
        format!("2 on {world} ranks needs every micro-batch to give each rank an item: {batch_flag} {batch_size} is smaller than {world}")
    } else {
        format!("2 on {world} ranks needs every micro-batch to give each rank an item: the last micro-batch of an epoch has {last} of the {n} {items}; choose {batch_flag} so that it has none or at least {world}, or use --zero 1")
    };
    Err(TrainError::Setting { setting: "--zero", problem })
}

/// One run of [`train`]: its state between the phases.
struct Trainer<'a, B: Backend, O: Objective<B>> {
    model: Model<B>,
    obj: &'a mut O,
    cfg: &'a TrainConfig,
    out: Option<RunDir<'a>>,
    grads: Grads<B>,
    opt: Optimizer<B>,
    state: TrainerState,
    order: EpochOrder,
    epoch_order: Vec<usize>,
    sched: LrSchedule,
    summary: TrainSummary,
    /// when this process started, and the run's elapsed time before it (a resume)
    started: Instant,
    elapsed0: f64,
    /// the last checkpoint of this run on disk and its step (the message of a failed step
    /// names it; a stop right after it writes no other)
    last_checkpoint: Option<(PathBuf, u64)>,
    comm: &'a dyn Collective,
    /// with ZeRO-1 or 2 (`cfg.zero`, several ranks): the trainable tensors, whose new values
    /// the ranks exchange after each step
    zero_trainable: Option<Vec<bool>>,
    /// with ZeRO-2: where the gradient hook reports a failed reduce
    shard_error: Option<crate::grad_shards::ShardError>,
}

impl<'a, B: Backend, O: Objective<B>> Trainer<'a, B, O> {
    fn new(model: Model<B>, obj: &'a mut O, cfg: &'a TrainConfig, out: Option<RunDir<'a>>, comm: &'static dyn Collective) -> Result<Self, TrainError> {
        if obj.n_train() == 0 {
            return Err(TrainError::NoData { what: "training data", detail: None });
        }
        cfg.validate()?;
        // rank 0 writes the checkpoints of a data-parallel run; the other ranks have no directory
        if out.is_none() && cfg.save_every.is_some() && comm.rank() == 0 {
            return Err(TrainError::Setting { setting: "--save-every", problem: "checkpoints need an output directory".into() });
        }
        if let Some(o) = &out {
            refuse_other_checkpoint(o.dir, cfg.resume.is_some())?;
            std::fs::create_dir_all(o.dir).map_err(io(o.dir))?;
        }
        let mask = model.trainable_mask(cfg.unfrozen_layers)?;
        let mut grads = model.new_grads(|i| mask[i]);
        // ZeRO-1 and 2: this rank keeps and steps the moments of its share of the tensors
        let (opt, zero_trainable) = zero::optimizer(&model, &grads, cfg.adam, cfg.zero, comm);
        let shard_error = crate::grad_shards::install_for_stage(&model, &mut grads, cfg.zero, comm, (obj.n_train(), "training items", cfg.batch_size, "--batch-size"))?;
        let order = EpochOrder { n: obj.n_train(), batch_size: cfg.batch_size, shuffle: cfg.shuffle, seed: cfg.seed };
        let total_steps = cfg.total_steps(obj.n_train());
        let sched = LrSchedule { kind: cfg.schedule, base_lr: cfg.lr, warmup: cfg.warmup_steps, total: total_steps };
        let state = TrainerState {
            command: obj.command().into(),
            step: 0,
            total_steps,
            epoch: 0,
            micro_in_epoch: 0,
            seed: cfg.seed,
            model_fingerprint: checkpoint::model_fingerprint(&model),
            data_fingerprint: obj.data_fingerprint(),
            tokens_seen: 0,
            elapsed_s: 0.0,
            extra: Value::Null,
            settings: cfg.trajectory_settings().into_iter().chain(obj.settings()).collect(),
        };
        let epoch_order = order.order(0);
        Ok(Trainer { model, obj, cfg, out, grads, opt, state, order, epoch_order, sched, summary: TrainSummary::default(), started: Instant::now(), elapsed0: 0.0, last_checkpoint: None, comm, zero_trainable, shard_error })
    }

    /// With `cfg.resume`: the checkpoint's weights, optimizer state and position.
    fn resume(&mut self) -> Result<(), TrainError> {
        let Some(dir) = &self.cfg.resume else { return Ok(()) };
        let (ckpt, saved) = checkpoint::open_for_resume(dir, &expect(self.obj.command(), &self.state))?;
        if self.model.adapters.is_some() {
            self.model.load_adapter_values(&ckpt.join("model"))?;
        } else {
            self.load_weights(&ckpt)?;
        }
        checkpoint::load_optimizer(&ckpt, &self.model, &mut self.opt)?;
        self.state = saved;
        self.elapsed0 = self.state.elapsed_s;
        self.epoch_order = self.order.order(self.state.epoch);
        self.summary.steps = self.state.step;
        self.last_checkpoint = Some((ckpt.clone(), self.state.step));
        let finished = self.state.step >= self.state.total_steps;
        match self.comm.rank() {
            0 if finished => eprintln!("{}: the run had finished (step {} of {}): nothing left to train; saving its final model again", ckpt.display(), self.state.step, self.state.total_steps),
            0 => eprintln!("resuming from {} at step {}/{}", ckpt.display(), self.state.step, self.state.total_steps),
            _ => {}
        }
        Ok(())
    }

    /// The checkpoint's HF-layout weights into the model.
    fn load_weights(&mut self, ckpt: &Path) -> Result<(), TrainError> {
        let mut loaded = Model::load(self.model.be.clone(), &ckpt.join("model"))?;
        if loaded.info.len() != self.model.info.len() {
            let detail = format!("{} parameters, this model has {}", loaded.info.len(), self.model.info.len());
            return Err(TrainError::Resume { dir: ckpt.to_path_buf(), mismatch: ResumeMismatch::Layout { detail } });
        }
        for i in 0..loaded.info.len() {
            if self.model.is_packed(i) {
                // a frozen weight kept in bf16: packed again from the checkpoint's values
                self.model.set_host_value(i, &loaded.host_value(i));
            } else {
                std::mem::swap(&mut self.model.values[i], &mut loaded.values[i]);
            }
        }
        Ok(())
    }

    fn run(mut self) -> Result<(Model<B>, TrainSummary), TrainError> {
        let keep = self.cfg.resume.as_ref().map(|_| self.state.step);
        let metrics_path = self.out.map(|o| o.dir.join("metrics.jsonl"));
        let mut metrics = metrics_path.as_deref().map(|p| rundir::reopen_log(p, keep, "step")).transpose()?;
        let mut tb = self.out.and_then(|o| o.tensorboard).map(|d| EventWriter::create(d, keep)).transpose().map_err(tensorboard::flag_error)?;
        let progress = if self.comm.rank() == 0 { Progress::new(self.state.total_steps, self.state.step, self.cfg.log_every) } else { Progress::silent() };
        while self.state.step < self.state.total_steps {
            if self.stop_requested()? {
                progress.finish();
                return Err(self.interrupted());
            }
            let (line, loss, lr, tokens_per_s) = self.step(&progress)?;
            if let (Some(f), Some(p)) = (metrics.as_mut(), metrics_path.as_deref()) {
                writeln!(f, "{line}").and_then(|_| f.flush()).map_err(io(p))?;
            }
            if let Some(tb) = tb.as_mut() {
                tb.metrics_line(&line, "step").and_then(|_| tb.flush()).map_err(tensorboard::flag_error)?;
            }
            progress.step(self.state.step, loss, lr, tokens_per_s);
            self.summary.history.push(line);
            self.checkpoint()?;
            if crate::hooks::stop_after_step(self.state.step) {
                progress.finish();
                return Err(TrainError::Stopped { step: self.state.step });
            }
        }
        progress.finish();
        self.finish()
    }

    /// The next step's micro-batches (item indices), never crossing an epoch boundary.
    fn next_micro(&mut self) -> Vec<Vec<usize>> {
        let micro_per_epoch = self.order.micro_per_epoch();
        if self.state.micro_in_epoch >= micro_per_epoch {
            self.state.epoch += 1;
            self.state.micro_in_epoch = 0;
            self.epoch_order = self.order.order(self.state.epoch);
        }
        let (bs, n) = (self.cfg.batch_size, self.order.n);
        let first = self.state.micro_in_epoch as usize;
        let last = (first + self.cfg.grad_accum).min(micro_per_epoch as usize);
        self.state.micro_in_epoch = last as u64;
        (first..last).map(|m| self.epoch_order[m * bs..((m + 1) * bs).min(n)].to_vec()).collect()
    }

    /// One optimizer step: its metrics line, loss, learning rate and throughput.
    fn step(&mut self, progress: &Progress) -> Result<(Value, f64, f64, f64), TrainError> {
        let step_start = Instant::now();
        crate::hooks::step_delay();
        let micro = self.next_micro();
        let norm = self.obj.normaliser(&micro);
        let (rank, world) = (self.comm.rank(), self.comm.world());
        // this rank's contiguous share of each micro-batch
        let mine: Vec<Vec<usize>> = micro.iter().map(|m| m[shard(m.len(), rank, world)].to_vec()).filter(|m| !m.is_empty()).collect();
        self.model.zero_grads(&mut self.grads);
        // training mode (LoRA's dropout) for this step's forward and backward only
        (self.model.training, self.model.dropout_step) = (true, self.state.step);
        let so = self.obj.step(&self.model, &mine, norm, &mut self.grads);
        self.model.training = false;
        crate::grad_shards::take_error(&self.shard_error.iter().collect::<Vec<_>>())?;
        let reduce_start = Instant::now();
        let so = self.sum_over_ranks(so?)?;
        let reduce_s = reduce_start.elapsed().as_secs_f64();
        let grad_norm = self.grad_norm()?;
        let step_no = self.state.step + 1;
        if !so.loss.is_finite() || !grad_norm.is_finite() {
            let checkpoint = self.last_checkpoint.as_ref().map(|(p, _)| p.clone());
            return Err(TrainError::NotFinite { at: format!("step {step_no}"), what: format!("the loss is {} and the gradient norm {grad_norm}", so.loss), checkpoint });
        }
        let lr = self.sched.lr(self.state.step);
        self.opt.step(&mut self.model, &self.grads, lr as f32, clip_coef(grad_norm, self.cfg.max_grad_norm));
        if let Some(trainable) = &self.zero_trainable {
            zero::share_params(&self.opt, &mut self.model, self.comm, trainable)?;
        }
        self.state.step = step_no;
        self.state.tokens_seen += so.tokens as u64;
        let dt = step_start.elapsed().as_secs_f64();
        self.state.elapsed_s = self.elapsed0 + self.started.elapsed().as_secs_f64();
        let epoch_f = self.state.epoch as f64 + self.state.micro_in_epoch as f64 / self.order.micro_per_epoch() as f64;
        let tokens_per_s = so.tokens as f64 / dt.max(1e-9);
        let mut line = serde_json::json!({
            "step": self.state.step, "epoch": epoch_f, "loss": so.loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": so.tokens, "tokens_per_s": tokens_per_s, "elapsed_s": self.state.elapsed_s,
        });
        let fields = line.as_object_mut().expect("a JSON object");
        fields.extend(so.extra.clone());
        if self.comm.world() > 1 {
            // this rank's wait for the others and the exchange of the step's gradients and metrics
            fields.insert("time_allreduce_s".into(), reduce_s.into());
        }
        if self.cfg.eval_every.is_some_and(|e| self.state.step.is_multiple_of(e)) {
            if let Some(v) = self.obj.validate(&self.model)? {
                progress.println(&format!("step {}: {}", self.state.step, v.iter().map(|(k, x)| format!("{k} {}", fmt_num(x))).collect::<Vec<_>>().join(", ")));
                fields.extend(v.clone());
                self.summary.val = Some(v);
            }
        }
        self.summary.first_loss.get_or_insert(so.loss);
        self.summary.last_loss = Some(so.loss);
        self.summary.last_extra = so.extra;
        self.summary.steps = self.state.step;
        Ok((line, so.loss, lr, tokens_per_s))
    }

    /// The global gradient norm (with ZeRO-2 each rank holds its owned tensors' gradients: the
    /// squares are summed over the ranks).
    fn grad_norm(&mut self) -> Result<f64, TrainError> {
        let local = self.opt.grad_norm(&self.model, &self.grads);
        Ok(crate::grad_shards::global_norm(local, self.shard_error.is_some(), self.comm)?)
    }

    /// The step summed over the ranks: gradients (one message; ZeRO-2 reduced them to their
    /// owners during the backward), loss, tokens and metrics.
    fn sum_over_ranks(&mut self, so: StepOut) -> Result<StepOut, TrainError> {
        if self.comm.world() == 1 {
            return Ok(so);
        }
        if self.shard_error.is_none() {
            let info = &self.model.info;
            let mut bufs: Vec<(&mut B::Buf, usize)> = self.grads.bufs.iter_mut().enumerate().filter_map(|(i, g)| g.as_mut().map(|g| (g, info[i].numel()))).collect();
            all_reduce_bufs(self.comm, &self.model.be, &mut bufs)?;
        }
        let keys: Vec<String> = so.extra.keys().cloned().collect();
        let mut numbers: Vec<f64> = [so.loss, so.tokens as f64].into_iter().chain(so.extra.values().map(|v| v.as_f64().unwrap_or(f64::NAN))).collect();
        self.comm.all_reduce_sum_f64(&mut numbers)?;
        let extra = keys.into_iter().zip(&numbers[2..]).map(|(k, &x)| {
            // counts stay integers in metrics.jsonl
            let v = if so.extra[&k].is_u64() { Value::from(x.round() as u64) } else { Value::from(x) };
            (k, v)
        });
        Ok(StepOut { loss: numbers[0], tokens: numbers[1].round() as usize, extra: extra.collect() })
    }

    /// Whether to stop before the next step: Ctrl-C / SIGTERM on any rank stops every rank at
    /// the same step.
    fn stop_requested(&self) -> Result<bool, TrainError> {
        Ok(crate::stop::agreed(self.comm)?)
    }

    /// A checkpoint every `save_every` steps (written by rank 0; with ZeRO-1 every rank first
    /// hands in its share of the AdamW state).
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        let Some(every) = self.cfg.save_every else { return Ok(()) };
        if !self.state.step.is_multiple_of(every) {
            return Ok(());
        }
        self.save_checkpoint()?;
        self.last_checkpoint = self.out.map(|out| (out.dir.join("checkpoint"), self.state.step));
        Ok(())
    }

    /// Saves a checkpoint of the steps done into the output directory (rank 0), the AdamW state
    /// gathered from the ranks first under ZeRO-1 (every rank takes part).
    fn save_checkpoint(&mut self) -> Result<(), TrainError> {
        let moments = checkpoint::MomentSource::of(self.comm, &self.zero_trainable);
        let Some(out) = self.out else { return checkpoint::hand_in_moments(&self.model, &self.opt, &moments) };
        if let Err(e) = ensure_finite(&self.model, self.state.step) {
            checkpoint::hand_in_moments(&self.model, &self.opt, &moments)?;
            return Err(e);
        }
        checkpoint::save(out.dir, &self.model, &self.opt, &moments, &self.state, out.tokenizer)
    }

    /// A requested stop: a checkpoint of the steps done (unless the last one holds them), then
    /// the error that says where it is.
    fn interrupted(&mut self) -> TrainError {
        let step = self.state.step;
        let held = self.last_checkpoint.as_ref().filter(|(_, s)| *s == step).map(|(p, _)| p.clone());
        // the same answer on every rank: this step's checkpoint exists (its save_every, or the
        // one the run resumed from), or every rank takes part in saving it (ZeRO-1 gathers)
        let saved_already = held.is_some() || self.cfg.save_every.is_some_and(|e| step.is_multiple_of(e));
        let checkpoint = if step == 0 || saved_already {
            held
        } else {
            if let Err(e) = self.save_checkpoint() {
                return e;
            }
            self.out.map(|o| o.dir.join("checkpoint"))
        };
        TrainError::Interrupted { unit: "step", done: self.state.step, total: self.state.total_steps, checkpoint }
    }

    /// Refuses a non-finite model; saves it when the run has an output directory.
    fn finish(self) -> Result<(Model<B>, TrainSummary), TrainError> {
        ensure_finite(&self.model, self.state.step)?;
        if let Some(out) = self.out {
            let dtype = self.cfg.save_dtype.unwrap_or(self.model.cfg.dtype);
            match self.model.adapters {
                // a LoRA run's result is its adapter (PEFT's layout), the base untouched
                Some(_) => self.model.save_adapter(out.dir, &self.model.cfg.path, out.tokenizer)?,
                None => self.model.save(out.dir, dtype, okapi_model::DEFAULT_MAX_SHARD_BYTES, out.tokenizer)?,
            }
        }
        Ok((self.model, self.summary))
    }
}

fn fmt_num(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| v.to_string())
}
