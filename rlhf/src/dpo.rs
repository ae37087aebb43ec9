//! DPO: `−log σ(β[(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))])` averaged over the
//! step's pairs, with sequence log-probabilities summed over the response tokens (EOS included;
//! the SFT label mask). The frozen reference is the initial policy: its log-probabilities are
//! computed once, before training.

use crate::lm_loss::{head_logprobs, head_xent, shift_labels, LossBufs};
use crate::pairwise::{capacity, collate_groups, groups_fingerprint, neg_log_sigmoid, neg_log_sigmoid_grad, pair_count};
use crate::trainer::{Objective, StepOut};
use crate::TrainError;
use okapi_data::PromptGroup;
use okapi_model::{Acts, Grads, Model, Scratch};
use okapi_runtime::{Backend, IGNORE_INDEX};
use serde_json::{Map, Value};

/// Sequence log-probabilities of a batch (sum over each row's targets) after `forward_hidden`,
/// over the LM head's row blocks.
fn per_sequence<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, loss: &mut LossBufs<B>, targets: &[u32]) -> Result<Vec<f64>, TrainError> {
    let (b, t) = (acts.b, acts.t);
    let lp = head_logprobs(model, acts, loss, targets, None)?.logp;
    Ok((0..b).map(|r| lp[r * t..(r + 1) * t].iter().map(|&x| x as f64).sum()).collect())
}

pub struct DpoObjective<B: Backend> {
    train: Vec<PromptGroup>,
    val: Vec<PromptGroup>,
    /// the reference's sequence log-probs per group and response
    ref_train: Vec<Vec<f64>>,
    ref_val: Vec<Vec<f64>>,
    beta: f64,
    pad: u32,
    batch_size: usize,
    acts: Acts<B>,
    scratch: Scratch<B>,
    loss: LossBufs<B>,
}

#[derive(Default)]
struct DpoStats {
    loss_sum: f64,
    pairs: usize,
    chosen: f64,
    rejected: f64,
    correct: usize,
}

impl<B: Backend> DpoObjective<B> {
    /// `model` is the initial policy and so the reference.
    pub fn new(model: &Model<B>, train: Vec<PromptGroup>, val: Vec<PromptGroup>, batch_size: usize, pad: u32, beta: f64) -> Result<Self, TrainError> {
        let all: Vec<PromptGroup> = train.iter().chain(&val).cloned().collect();
        let (cap_b, cap_t) = capacity(&all, batch_size);
        let mut obj = DpoObjective {
            acts: model.new_acts(cap_b, cap_t),
            scratch: model.new_scratch(cap_b, cap_t),
            loss: LossBufs::new(&model.be, cap_b * cap_t),
            ref_train: vec![],
            ref_val: vec![],
            train,
            val,
            beta,
            pad,
            batch_size,
        };
        obj.ref_train = obj.logps_of(model, true)?;
        obj.ref_val = obj.logps_of(model, false)?;
        Ok(obj)
    }

    fn logps_of(&mut self, model: &Model<B>, train: bool) -> Result<Vec<Vec<f64>>, TrainError> {
        let groups = if train { &self.train } else { &self.val };
        let mut out = Vec::with_capacity(groups.len());
        for chunk in groups.chunks(self.batch_size) {
            let refs: Vec<&PromptGroup> = chunk.iter().collect();
            let gb = collate_groups(&refs, self.pad);
            model.forward_hidden(&mut self.acts, &gb.batch.ids, gb.batch.b, gb.batch.t)?;
            let lp = per_sequence(model, &mut self.acts, &mut self.loss, &shift_labels(&gb.batch.labels, gb.batch.b, gb.batch.t))?;
            for (g, &off) in chunk.iter().zip(&gb.offsets) {
                out.push(lp[off..off + g.responses.len()].to_vec());
            }
        }
        Ok(out)
    }

    /// Loss of a batch of groups (`idx` into train or val); with `weight`, its gradient too.
    fn run(&mut self, model: &Model<B>, idx: &[usize], train: bool, weight: Option<f64>, grads: Option<&mut Grads<B>>, st: &mut DpoStats) -> Result<usize, TrainError> {
        let (groups, refs) = if train { (&self.train, &self.ref_train) } else { (&self.val, &self.ref_val) };
        let batch_groups: Vec<&PromptGroup> = idx.iter().map(|&i| &groups[i]).collect();
        let gb = collate_groups(&batch_groups, self.pad);
        let (b, t) = (gb.batch.b, gb.batch.t);
        model.forward_hidden(&mut self.acts, &gb.batch.ids, b, t)?;
        let targets = shift_labels(&gb.batch.labels, b, t);
        let lp = per_sequence(model, &mut self.acts, &mut self.loss, &targets)?;
        let mut dseq = vec![0f64; b];
        for (k, &gi) in idx.iter().enumerate() {
            let off = gb.offsets[k];
            for &(c, r) in &groups[gi].pairs {
                let rc = self.beta * (lp[off + c] - refs[gi][c]);
                let rr = self.beta * (lp[off + r] - refs[gi][r]);
                let z = rc - rr;
                st.loss_sum += neg_log_sigmoid(z);
                st.chosen += rc;
                st.rejected += rr;
                st.correct += (rc > rr) as usize;
                st.pairs += 1;
                if let Some(w) = weight {
                    let dz = neg_log_sigmoid_grad(z) * w;
                    dseq[off + c] += self.beta * dz;
                    dseq[off + r] -= self.beta * dz;
                }
            }
        }
        if let Some(grads) = grads {
            // ∂L/∂logits = Σ_tokens dseq·(onehot − softmax): the cross-entropy kernel with
            // per-token weight −dseq gives exactly that, in place
            let coef: Vec<f32> = (0..b * t).map(|p| if targets[p] == IGNORE_INDEX { 0.0 } else { -dseq[p / t] as f32 }).collect();
            head_xent(model, &mut self.acts, &mut self.loss, &targets, &coef, Some((&mut self.scratch, &mut *grads)))?;
            model.backward_hidden(&mut self.acts, &mut self.scratch, grads);
        }
        Ok(gb.batch.ids.iter().filter(|&&x| x != self.pad).count())
    }
}

/// The statistics as means over `n` pairs (the step's normaliser in training: additive over
/// data-parallel shards).
fn stats_map(st: &DpoStats, prefix: &str, n: f64) -> Map<String, Value> {
    Map::from_iter([
        (format!("{prefix}rewards_chosen"), Value::from(st.chosen / n)),
        (format!("{prefix}rewards_rejected"), Value::from(st.rejected / n)),
        (format!("{prefix}reward_accuracy"), Value::from(st.correct as f64 / n)),
        (format!("{prefix}reward_margin"), Value::from((st.chosen - st.rejected) / n)),
    ])
}

impl<B: Backend> Objective<B> for DpoObjective<B> {
    fn command(&self) -> &'static str {
        "dpo"
    }
    fn n_train(&self) -> usize {
        self.train.len()
    }
    fn data_fingerprint(&self) -> String {
        groups_fingerprint(&self.train, &self.val)
    }
    fn settings(&self) -> crate::checkpoint::Settings {
        [("--beta".to_string(), serde_json::Value::from(self.beta))].into()
    }
    /// The step's pairs.
    fn normaliser(&self, micro: &[Vec<usize>]) -> f64 {
        pair_count(&self.train, micro)
    }
    fn step(&mut self, model: &Model<B>, micro: &[Vec<usize>], norm: f64, grads: &mut Grads<B>) -> Result<StepOut, TrainError> {
        let w = 1.0 / norm.max(1.0);
        let mut st = DpoStats::default();
        let mut tokens = 0;
        for idx in micro {
            tokens += self.run(model, idx, true, Some(w), Some(&mut *grads), &mut st)?;
        }
        let n = norm.max(1.0);
        let mut extra = stats_map(&st, "", n);
        extra.insert("pairs".into(), st.pairs.into());
        Ok(StepOut { loss: st.loss_sum / n, tokens, extra })
    }
    fn validate(&mut self, model: &Model<B>) -> Result<Option<Map<String, Value>>, TrainError> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let mut st = DpoStats::default();
        let all: Vec<usize> = (0..self.val.len()).collect();
        for idx in all.chunks(self.batch_size) {
            self.run(model, idx, false, None, None, &mut st)?;
        }
        let n = st.pairs.max(1) as f64;
        let mut m = stats_map(&st, "val_", n);
        m.insert("val_loss".into(), (st.loss_sum / n).into());
        Ok(Some(m))
    }
}
