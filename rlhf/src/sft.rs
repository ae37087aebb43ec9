//! Supervised fine-tuning: token-level mean cross-entropy over the response tokens (or the
//! whole sequence when `mask_prompt` is off), the objective the shared trainer runs; and the
//! loading of Okapi's instruction files into training examples.

use crate::checkpoint::Fnv;
use crate::lm_loss::{lm_loss_blocks, shift_labels, LossBufs};
use crate::trainer::{self, Objective, RunDir, StepOut, TrainConfig, TrainSummary};
use crate::TrainError;
use okapi_data::{collate, load_sft_records, Example, PromptTemplate, RecordFormat, SftEncoding, Tokenizer, IGNORE_LABEL};
use okapi_model::{Acts, Grads, Model, Scratch};
use okapi_runtime::Backend;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Instruction data tokenized for SFT, with the counts a user sees in one line.
pub struct SftData {
    pub examples: Vec<Example>,
    /// records read, converted, skipped (and why), and examples kept
    pub summary: String,
}

/// Loads Okapi instruction files (JSON array or JSONL of `{"instruction","input","output"}`),
/// keeps the languages `langs` (a record's `lang`, else its file name `{lang}.json`), and
/// tokenizes each record with `template` as `cfg.max_len` and `cfg.mask_prompt` say; a record
/// whose prompt alone does not fit is skipped and counted. `eos` ends every response.
/// Conversations (`{"messages": …}`) are refused: [`load_sft_examples`] takes a chat template.
pub fn load_sft_data(files: &[PathBuf], langs: Option<&[String]>, template: &PromptTemplate, tok: &Tokenizer, eos: u32, cfg: &TrainConfig) -> Result<SftData, TrainError> {
    load_sft_examples(files, langs, &RecordFormat::prompt_only(template.clone()), tok, eos, cfg)
}

/// As [`load_sft_data`] for Okapi's records and conversations (`{"messages": […]}`, loss on
/// every assistant message), each put into text as `format` says.
pub fn load_sft_examples(files: &[PathBuf], langs: Option<&[String]>, format: &RecordFormat, tok: &Tokenizer, eos: u32, cfg: &TrainConfig) -> Result<SftData, TrainError> {
    let enc = SftEncoding { max_len: cfg.max_len, mask_prompt: cfg.mask_prompt, eos };
    let (records, stats) = load_sft_records(files, langs)?;
    let mut examples = Vec::with_capacity(records.len());
    let mut too_long = 0;
    for r in &records {
        match r.encode(tok, format, &enc)? {
            Some(e) => examples.push(e),
            None => too_long += 1,
        }
    }
    let summary = format!("{}; {} prompts do not fit --max-len {} (skipped); {} examples", stats.summary(), too_long, enc.max_len, examples.len());
    if examples.is_empty() {
        return Err(TrainError::NoData { what: "training examples", detail: Some(summary) });
    }
    Ok(SftData { examples, summary })
}

/// The padding id of `model`'s batches: `pad_token_id`, else `eos_token_id`.
pub fn pad_id<B: Backend>(model: &Model<B>) -> Result<u32, TrainError> {
    model.cfg.pad_token_id.or(model.cfg.eos_token_id).ok_or_else(|| TrainError::Setting {
        setting: "config.json",
        problem: format!("{}: needs `pad_token_id` or `eos_token_id` to pad batches", model.cfg.path.display()),
    })
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

/// Mean loss over a set of examples (token-level mean over all their targets).
pub fn eval_loss<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, loss: &mut LossBufs<B>, examples: &[Example], batch_size: usize, pad: u32) -> Result<f64, TrainError> {
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = collate(&refs, pad);
        model.forward_hidden(acts, &batch.ids, batch.b, batch.t)?;
        let targets = shift_labels(&batch.labels, batch.b, batch.t);
        let (s, c) = lm_loss_blocks(model, acts, loss, &targets, 0.0, None)?;
        sum += s;
        count += c;
    }
    Ok(if count > 0 { sum / count as f64 } else { f64::NAN })
}

pub struct SftObjective<B: Backend> {
    train: Vec<Example>,
    val: Vec<Example>,
    pad: u32,
    batch_size: usize,
    acts: Acts<B>,
    scratch: Scratch<B>,
    loss: LossBufs<B>,
}

impl<B: Backend> SftObjective<B> {
    pub fn new(model: &Model<B>, train: Vec<Example>, val: Vec<Example>, batch_size: usize, pad: u32) -> Self {
        let max_t = train.iter().chain(&val).map(|e| e.ids.len()).max().unwrap_or(1);
        // a batch never holds more examples than a split has
        let cap_b = batch_size.min(train.len().max(val.len())).max(1);
        SftObjective {
            acts: model.new_acts(cap_b, max_t),
            scratch: model.new_scratch(cap_b, max_t),
            loss: LossBufs::new(&model.be, cap_b * max_t),
            train,
            val,
            pad,
            batch_size,
        }
    }
}

impl<B: Backend> Objective<B> for SftObjective<B> {
    fn command(&self) -> &'static str {
        "sft"
    }
    fn n_train(&self) -> usize {
        self.train.len()
    }
    fn data_fingerprint(&self) -> String {
        data_fingerprint(&self.train, &self.val)
    }
    /// The step's target tokens (the labels after the shift, as the collated batch counts them).
    fn normaliser(&self, micro: &[Vec<usize>]) -> f64 {
        micro.iter().flatten().map(|&i| self.train[i].labels.iter().skip(1).filter(|&&l| l != IGNORE_LABEL).count()).sum::<usize>() as f64
    }
    fn step(&mut self, model: &Model<B>, micro: &[Vec<usize>], norm: f64, grads: &mut Grads<B>) -> Result<StepOut, TrainError> {
        let batches: Vec<_> = micro.iter().map(|idx| collate(&idx.iter().map(|&i| &self.train[i]).collect::<Vec<_>>(), self.pad)).collect();
        let n_targets: usize = batches.iter().map(|b| b.n_targets()).sum();
        let tokens: usize = batches.iter().map(|b| b.ids.iter().filter(|&&x| x != self.pad).count()).sum();
        // norm is a whole number of targets: 1/norm in f32 as 1/n_targets always was
        let weight = if norm > 0.0 { 1.0 / norm as f32 } else { 0.0 };
        let mut loss_sum = 0f64;
        for batch in &batches {
            model.forward_hidden(&mut self.acts, &batch.ids, batch.b, batch.t)?;
            let targets = shift_labels(&batch.labels, batch.b, batch.t);
            loss_sum += lm_loss_blocks(model, &mut self.acts, &mut self.loss, &targets, weight, Some((&mut self.scratch, &mut *grads)))?.0;
            model.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        }
        let mut extra = Map::new();
        extra.insert("targets".into(), n_targets.into());
        Ok(StepOut { loss: if norm > 0.0 { loss_sum / norm } else { 0.0 }, tokens, extra })
    }
    fn validate(&mut self, model: &Model<B>) -> Result<Option<Map<String, Value>>, TrainError> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let v = eval_loss(model, &mut self.acts, &mut self.loss, &self.val, self.batch_size, self.pad)?;
        Ok(Some(Map::from_iter([("val_loss".to_string(), Value::from(v))])))
    }
}

/// Runs SFT on tokenized examples (`val` may be empty) and returns the trained model with a
/// summary of the run. With `out`, writes the model, `metrics.jsonl` and checkpoints there
/// (see [`trainer::train`]).
pub fn run_sft<B: Backend>(model: Model<B>, train: Vec<Example>, val: Vec<Example>, cfg: &TrainConfig, out: Option<RunDir<'_>>) -> Result<(Model<B>, TrainSummary), TrainError> {
    run_sft_data_parallel(model, train, val, cfg, out, &okapi_runtime::SingleProcess)
}

/// [`run_sft`] as one rank of a data-parallel run (see [`trainer::train_data_parallel`]).
pub fn run_sft_data_parallel<B: Backend>(model: Model<B>, train: Vec<Example>, val: Vec<Example>, cfg: &TrainConfig, out: Option<RunDir<'_>>, comm: &'static dyn okapi_runtime::Collective) -> Result<(Model<B>, TrainSummary), TrainError> {
    let pad = pad_id(&model)?;
    let mut obj = SftObjective::new(&model, train, val, cfg.batch_size, pad);
    trainer::train_data_parallel(model, &mut obj, cfg, out, comm)
}
