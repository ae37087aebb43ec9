//! Reward model from ranked responses: the trunk plus a score head read at each response's last
//! token (its EOS); loss `−log σ(r_chosen − r_rejected − margin)` averaged over every pair of
//! the step; pairwise accuracy. Batches count prompts; a prompt's responses are encoded once.

use crate::pairwise::{capacity, collate_groups, groups_fingerprint, neg_log_sigmoid, neg_log_sigmoid_grad, pair_count};
use crate::trainer::{Objective, StepOut};
use crate::progress::Meter;
use crate::TrainError;
use okapi_data::{encode_group, PromptGroup, PromptTemplate, RankRecord, SftEncoding, Tokenizer};
use okapi_model::{Acts, Grads, Model, ScoreBufs, Scratch};
use okapi_runtime::collective::{all_gather_varlen_f64, dealt_steps};
use okapi_runtime::{Backend, Collective, SingleProcess};
use serde_json::{Map, Value};

pub struct RewardObjective<B: Backend> {
    train: Vec<PromptGroup>,
    val: Vec<PromptGroup>,
    batch_size: usize,
    bufs: RewardBufs<B>,
}

/// Device buffers and settings of the scoring passes.
pub struct RewardBufs<B: Backend> {
    pad: u32,
    margin: f64,
    acts: Acts<B>,
    scratch: Scratch<B>,
    sb: ScoreBufs<B>,
}

/// Pair statistics of one batch.
#[derive(Default)]
struct PairStats {
    loss_sum: f64,
    correct: usize,
    pairs: usize,
    margin_sum: f64,
}

impl<B: Backend> RewardObjective<B> {
    pub fn new(model: &Model<B>, train: Vec<PromptGroup>, val: Vec<PromptGroup>, batch_size: usize, pad: u32, margin: f64) -> Self {
        let all: Vec<PromptGroup> = train.iter().chain(&val).cloned().collect();
        let bufs = RewardBufs::new(model, &all, batch_size, pad, margin);
        RewardObjective { train, val, batch_size, bufs }
    }
}

impl<B: Backend> RewardBufs<B> {
    /// Sized for micro-batches of `batch_size` of these groups.
    pub fn new(model: &Model<B>, groups: &[PromptGroup], batch_size: usize, pad: u32, margin: f64) -> Self {
        let (cap_b, cap_t) = capacity(groups, batch_size);
        RewardBufs { acts: model.new_acts(cap_b, cap_t), scratch: model.new_scratch(cap_b, cap_t), sb: model.new_score_bufs(cap_b), pad, margin }
    }

    /// Rewards of every response of `groups` (no gradient), in order.
    pub fn rewards(&mut self, model: &Model<B>, groups: &[PromptGroup], batch_size: usize) -> Result<Vec<Vec<f32>>, TrainError> {
        self.rewards_metered(model, groups, batch_size, &SingleProcess, &mut Meter::silent())
    }

    /// [`RewardBufs::rewards`] on the ranks of `comm`, counting the groups on `meter` as their
    /// batches finish: the batches are dealt to the ranks in steps and each step's rewards
    /// gathered, so every rank returns every group's rewards, those of one process bit for bit.
    pub fn rewards_metered(&mut self, model: &Model<B>, groups: &[PromptGroup], batch_size: usize, comm: &dyn Collective, meter: &mut Meter) -> Result<Vec<Vec<f32>>, TrainError> {
        let batches: Vec<&[PromptGroup]> = groups.chunks(batch_size.max(1)).collect();
        let (n, world) = (batches.len(), comm.world());
        let mut out = Vec::with_capacity(groups.len());
        for (s, unit) in dealt_steps(n, comm.rank(), world).enumerate() {
            let mut rewards = Vec::new();
            if let Some(k) = unit {
                let refs: Vec<&PromptGroup> = batches[k].iter().collect();
                rewards = self.run(model, &refs, None, None, &mut PairStats::default())?.1;
            }
            if world > 1 {
                // rank order is batch order: step s holds batches s·world.. (f32 → f64 → f32 is exact)
                let mine: Vec<f64> = rewards.iter().map(|&r| f64::from(r)).collect();
                rewards = all_gather_varlen_f64(comm, &mine)?.concat().into_iter().map(|r| r as f32).collect();
            }
            let mut at = 0;
            for batch in &batches[s * world..((s + 1) * world).min(n)] {
                for g in batch.iter() {
                    out.push(rewards[at..at + g.responses.len()].to_vec());
                    at += g.responses.len();
                }
                meter.advance(batch.len() as u64);
            }
        }
        meter.finish();
        Ok(out)
    }

    /// Rewards of a batch of groups; with `pair_weight` Some, also the backward of the pair
    /// losses scaled by it.
    /// Returns (real tokens, rewards).
    fn run(&mut self, model: &Model<B>, groups: &[&PromptGroup], pair_weight: Option<f64>, grads: Option<&mut Grads<B>>, st: &mut PairStats) -> Result<(usize, Vec<f32>), TrainError> {
        let gb = collate_groups(groups, self.pad);
        model.forward_hidden(&mut self.acts, &gb.batch.ids, gb.batch.b, gb.batch.t)?;
        let r = model.score_fwd(&self.acts, &mut self.sb, &gb.last)?;
        let mut dr = vec![0f32; r.len()];
        for (g, &off) in groups.iter().zip(&gb.offsets) {
            for &(c, j) in &g.pairs {
                let diff = r[off + c] as f64 - r[off + j] as f64;
                let z = diff - self.margin;
                st.loss_sum += neg_log_sigmoid(z);
                st.correct += (diff > 0.0) as usize;
                st.margin_sum += diff;
                st.pairs += 1;
                if let Some(w) = pair_weight {
                    let dz = (neg_log_sigmoid_grad(z) * w) as f32;
                    dr[off + c] += dz;
                    dr[off + j] -= dz;
                }
            }
        }
        if let Some(grads) = grads {
            model.score_bwd(&self.acts, &mut self.scratch, &mut self.sb, grads, &dr)?;
            model.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        }
        Ok((gb.batch.ids.iter().filter(|&&x| x != self.pad).count(), r))
    }
}

impl<B: Backend> Objective<B> for RewardObjective<B> {
    fn command(&self) -> &'static str {
        "reward"
    }
    fn n_train(&self) -> usize {
        self.train.len()
    }
    fn data_fingerprint(&self) -> String {
        groups_fingerprint(&self.train, &self.val)
    }
    fn settings(&self) -> crate::checkpoint::Settings {
        [("--margin".to_string(), Value::from(self.bufs.margin))].into()
    }
    /// The step's pairs.
    fn normaliser(&self, micro: &[Vec<usize>]) -> f64 {
        pair_count(&self.train, micro)
    }
    fn step(&mut self, model: &Model<B>, micro: &[Vec<usize>], norm: f64, grads: &mut Grads<B>) -> Result<StepOut, TrainError> {
        let w = 1.0 / norm.max(1.0);
        let mut st = PairStats::default();
        let mut tokens = 0;
        for idx in micro {
            let refs: Vec<&PromptGroup> = idx.iter().map(|&i| &self.train[i]).collect();
            tokens += self.bufs.run(model, &refs, Some(w), Some(&mut *grads), &mut st)?.0;
        }
        let n = norm.max(1.0);
        let extra = Map::from_iter([
            ("accuracy".to_string(), Value::from(st.correct as f64 / n)),
            ("reward_margin".to_string(), Value::from(st.margin_sum / n)),
            ("pairs".to_string(), Value::from(st.pairs)),
        ]);
        Ok(StepOut { loss: st.loss_sum / n, tokens, extra })
    }
    fn validate(&mut self, model: &Model<B>) -> Result<Option<Map<String, Value>>, TrainError> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let mut st = PairStats::default();
        for chunk in self.val.chunks(self.batch_size) {
            let refs: Vec<&PromptGroup> = chunk.iter().collect();
            self.bufs.run(model, &refs, None, None, &mut st)?;
        }
        let n = st.pairs.max(1) as f64;
        Ok(Some(Map::from_iter([("val_loss".to_string(), Value::from(st.loss_sum / n)), ("val_accuracy".to_string(), Value::from(st.correct as f64 / n))])))
    }
}

/// Rewards of every response of `records` under a reward model, in order: each response is
/// encoded as for training (Okapi's template, the tokenizer's special tokens around the prompt,
/// EOS after the response) and scored at its last token, `batch_size` prompts at a time. A
/// record whose prompt alone exceeds `max_len` is an error naming it.
pub fn score_records<B: Backend>(model: &Model<B>, tok: &Tokenizer, records: &[RankRecord], max_len: usize, batch_size: usize) -> Result<Vec<Vec<f32>>, TrainError> {
    score_records_metered(model, tok, records, max_len, batch_size, &SingleProcess, &mut Meter::silent())
}

/// [`score_records`] on the ranks of `comm` (batches split across them; every rank returns
/// every record's rewards), counting the records on `meter` as their batches finish.
pub fn score_records_metered<B: Backend>(model: &Model<B>, tok: &Tokenizer, records: &[RankRecord], max_len: usize, batch_size: usize, comm: &dyn Collective, meter: &mut Meter) -> Result<Vec<Vec<f32>>, TrainError> {
    if model.score.is_none() {
        return Err(TrainError::Setting { setting: "--model", problem: format!("{}: not a reward model (expected LlamaForSequenceClassification or BloomForSequenceClassification in config.json)", model.cfg.path.display()) });
    }
    let eos = model.cfg.eos_token_id.ok_or_else(|| TrainError::Setting { setting: "config.json", problem: format!("{}: field `eos_token_id` is needed to end responses", model.cfg.path.display()) })?;
    let pad = model.cfg.pad_token_id.unwrap_or(eos);
    let enc = SftEncoding { max_len, mask_prompt: true, eos };
    let tpl = PromptTemplate::okapi();
    let mut groups = Vec::with_capacity(records.len());
    for r in records {
        let g = encode_group(tok, &tpl, r, &enc).map_err(|source| TrainError::Record { origin: r.origin.clone(), source })?;
        groups.push(g.ok_or_else(|| TrainError::Setting { setting: "--max-len", problem: format!("{}: the prompt does not fit {max_len} tokens", r.origin) })?);
    }
    let batch = batch_size.max(1);
    RewardBufs::new(model, &groups, batch, pad, 0.0).rewards_metered(model, &groups, batch, comm, meter)
}
