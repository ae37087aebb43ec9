//! Scalar heads on the trunk's final hidden states: the reward model's score head
//! (`score.weight`, read at each sequence's last real token) and PPO's value head (`v_head`,
//! read at every position).

use crate::acts::{Acts, Grads, Scratch};
use crate::error::{ModelError, Result};
use crate::model::{Linear, Model, Norm, ParamInfo, ParamKind};
use okapi_runtime::{Backend, Gemm};

/// Buffers of the score head for up to `cap` sequences.
pub struct ScoreBufs<B: Backend> {
    /// flat row (b·T + last) of each sequence's scored token
    pub rows: B::Ids,
    /// gathered hidden states (B,C) and their gradient
    pub h: B::Buf,
    pub dh: B::Buf,
    /// rewards (B) and ∂L/∂reward (B)
    pub rewards: B::Buf,
    pub drewards: B::Buf,
}

impl<B: Backend> Model<B> {
    pub fn new_score_bufs(&self, cap: usize) -> ScoreBufs<B> {
        let be = &self.be;
        let c = self.cfg.hidden_size;
        ScoreBufs { rows: be.upload_ids(&vec![0; cap]), h: be.zeros(cap * c), dh: be.zeros(cap * c), rewards: be.zeros(cap), drewards: be.zeros(cap) }
    }

    fn score_head(&self) -> Result<usize> {
        self.score.ok_or_else(|| ModelError::Other(format!("{}: not a reward model (no score head)", self.cfg.path.display())))
    }

    /// rewards\[b\] = score · lnf[b, last\[b\]] after `forward_hidden`; `last\[b\]` is the index of
    /// sequence b's last real token (its EOS). Returns the rewards on the host.
    pub fn score_fwd(&self, acts: &Acts<B>, sb: &mut ScoreBufs<B>, last: &[usize]) -> Result<Vec<f32>> {
        let w = self.score_head()?;
        let (b, t, c) = (acts.b, acts.t, self.cfg.hidden_size);
        assert_eq!(last.len(), b);
        let rows: Vec<u32> = last.iter().enumerate().map(|(i, &l)| (i * t + l) as u32).collect();
        self.be.write_ids(&mut sb.rows, &rows);
        // gather the scored rows with the embedding kernel: the "table" is lnf
        self.be.embedding_fwd(&mut sb.h, &acts.lnf, &sb.rows, okapi_runtime::Rows::new(b, c));
        self.be.matmul(&mut sb.rewards, &sb.h, &self.values[w], &Gemm::new(b, 1, c).trans_b());
        Ok(self.be.read(&sb.rewards, b))
    }

    /// From ∂L/∂rewards: `s.dln` (=) gets dr·w at the scored rows (zero elsewhere), the score
    /// head's gradient accumulates. Follow with `backward_hidden`.
    pub fn score_bwd(&self, acts: &Acts<B>, s: &mut Scratch<B>, sb: &mut ScoreBufs<B>, grads: &mut Grads<B>, drewards: &[f32]) -> Result<()> {
        let w = self.score_head()?;
        let (b, c) = (acts.b, self.cfg.hidden_size);
        let n = acts.b * acts.t;
        self.be.write(&mut sb.drewards, drewards);
        self.be.matmul(&mut sb.dh, &sb.drewards, &self.values[w], &Gemm::new(b, c, 1));
        self.be.fill(&mut s.dln, 0.0, n * c);
        self.be.embedding_bwd(&mut s.dln, &sb.dh, &sb.rows, okapi_runtime::Rows::new(b, c));
        if let Some(gw) = grads.get_mut(w) {
            self.be.matmul(gw, &sb.drewards, &sb.h, &Gemm::new(1, c, b).trans_a().accumulate());
        }
        Ok(())
    }

    /// Adds PPO's value head `v_head` = Linear(C, 1) with bias, with the given values (weight
    /// (1,C) then bias (1)). It is a parameter like any other (trained, clipped, checkpointed)
    /// but not part of the HF weights.
    pub fn add_value_head(&mut self, weight: &[f32], bias: f32) {
        let c = self.cfg.hidden_size;
        self.value_head = Some(self.push_linear("v_head", c, 1, weight, &[bias]));
    }

    /// Adds trlx's value head: `v_head.0` = Linear(C, 2C) → ReLU → `v_head.2` = Linear(2C, 1),
    /// weights (out, in) row-major as PyTorch stores them.
    pub fn add_value_head_mlp(&mut self, up_w: &[f32], up_b: &[f32], down_w: &[f32], down_b: f32) {
        let c = self.cfg.hidden_size;
        self.value_mlp = Some(self.push_linear("v_head.0", c, 2 * c, up_w, up_b));
        self.value_head = Some(self.push_linear("v_head.2", 2 * c, 1, down_w, &[down_b]));
    }

    /// A trainable `Linear(d_in, d_out)` with bias outside the HF weights, named `prefix.weight`
    /// / `prefix.bias`.
    fn push_linear(&mut self, prefix: &str, d_in: usize, d_out: usize, w: &[f32], b: &[f32]) -> Linear {
        assert_eq!((w.len(), b.len()), (d_in * d_out, d_out), "{prefix}: weight ({d_out},{d_in}) and bias ({d_out})");
        let w = self.push_param(format!("{prefix}.weight"), vec![d_out, d_in], w);
        let b = self.push_param(format!("{prefix}.bias"), vec![d_out], b);
        Linear { w, b: Some(b), d_in, d_out, lora: None }
    }

    /// A trainable f32 parameter outside the HF weights (a matrix, or a 1-D bias).
    pub(crate) fn push_param(&mut self, name: String, shape: Vec<usize>, data: &[f32]) -> usize {
        let kind = if shape.len() >= 2 { ParamKind::Matrix } else { ParamKind::Bias };
        self.info.push(ParamInfo { name, shape, kind });
        self.values.push(self.be.upload(data));
        self.packed.push(false);
        self.info.len() - 1
    }

    /// The value head's parameters (both layers of the MLP head).
    pub fn value_head_params(&self) -> impl Iterator<Item = usize> + '_ {
        [self.value_mlp, self.value_head].into_iter().flatten().flat_map(|l| l.params())
    }

    /// Buffers of the value head for up to `rows` positions (the MLP's hidden layer when the
    /// head has one).
    pub fn new_value_bufs(&self, rows: usize) -> ValueBufs<B> {
        let be = &self.be;
        let hidden = self.value_mlp.map(|l| [be.zeros(rows * l.d_out), be.zeros(rows * l.d_out), be.zeros(rows * l.d_out)]);
        ValueBufs { values: be.zeros(rows), dvalues: be.zeros(rows), hidden }
    }

    /// `vb.values` (B·T) = v_head(lnf) at every position, after `forward_hidden`.
    pub fn value_fwd(&self, acts: &Acts<B>, vb: &mut ValueBufs<B>) -> Result<()> {
        let vh = self.value_head.ok_or_else(|| ModelError::Other("the policy has no value head".into()))?;
        let n = acts.b * acts.t;
        match (self.value_mlp, vb.hidden.as_mut()) {
            (None, _) => self.linear_fwd(&mut vb.values, &acts.lnf, &vh, n),
            (Some(up), Some([pre, post, _])) => {
                // (N,C) → pre (N,2C) → post = relu(pre) → values (N,1)
                self.linear_fwd(pre, &acts.lnf, &up, n);
                self.be.relu_fwd(post, pre, n * up.d_out);
                self.linear_fwd(&mut vb.values, post, &vh, n);
            }
            (Some(_), None) => return Err(ModelError::Other("value buffers made before the MLP value head was added".into())),
        }
        Ok(())
    }

    /// From `vb.dvalues`: `s.dln` += ∂L/∂lnf (call after `lm_head_bwd`, which sets `s.dln`), the
    /// value head's gradients accumulate. Needs the `value_fwd` of the same positions.
    pub fn value_bwd(&self, acts: &Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>, vb: &mut ValueBufs<B>) -> Result<()> {
        let vh = self.value_head.ok_or_else(|| ModelError::Other("the policy has no value head".into()))?;
        let n = acts.b * acts.t;
        match (self.value_mlp, vb.hidden.as_mut()) {
            (None, _) => self.linear_bwd(crate::forward::Out::Add(&mut s.dln), &vb.dvalues, &acts.lnf, &vh, n, grads),
            (Some(up), Some([pre, post, dpost])) => {
                self.linear_bwd(crate::forward::Out::Set(dpost), &vb.dvalues, post, &vh, n, grads);
                // ∂L/∂pre (=) into `post`, which the backward no longer needs
                self.be.relu_bwd(post, dpost, pre, n * up.d_out);
                self.linear_bwd(crate::forward::Out::Add(&mut s.dln), post, &acts.lnf, &up, n, grads);
            }
            (Some(_), None) => return Err(ModelError::Other("value buffers made before the MLP value head was added".into())),
        }
        Ok(())
    }
}

/// Values, their gradient, and the MLP value head's hidden layer (pre-activation, post-ReLU,
/// and its gradient), for up to a given number of positions.
pub struct ValueBufs<B: Backend> {
    pub values: B::Buf,
    pub dvalues: B::Buf,
    hidden: Option<[B::Buf; 3]>,
}

impl<B: Backend> Model<B> {
    /// Which parameters train under `--unfrozen-layers n`: the top `n` blocks, the final norm,
    /// the heads (score, value, an untied LM head); the embedding (and a head tied to it) and
    /// every block below stay frozen. `None`: everything trains.
    pub fn trainable_mask(&self, unfrozen_layers: Option<usize>) -> Result<Vec<bool>> {
        self.trainable_mask_with(unfrozen_layers, false)
    }

    /// [`Model::trainable_mask`]; with `embedding_norm`, BLOOM's `word_embeddings_layernorm`
    /// trains too (trlx froze only the blocks below and the embeddings).
    pub fn trainable_mask_with(&self, unfrozen_layers: Option<usize>, embedding_norm: bool) -> Result<Vec<bool>> {
        if self.adapters.is_some() {
            return self.lora_mask(unfrozen_layers);
        }
        let Some(n) = unfrozen_layers else { return Ok(vec![true; self.info.len()]) };
        let l = self.blocks.len();
        if n > l {
            return Err(ModelError::Other(format!("--unfrozen-layers {n}: the model has only {l} layers")));
        }
        let mut mask = vec![false; self.info.len()];
        let mut set = |i: usize| mask[i] = true;
        self.blocks[l - n..].iter().flat_map(crate::model::Block::params).for_each(&mut set);
        self.ln_f.params().for_each(&mut set);
        self.score.into_iter().for_each(&mut set);
        self.value_head_params().for_each(&mut set);
        if embedding_norm {
            self.emb_ln.iter().flat_map(Norm::params).for_each(&mut set);
        }
        if let Some(h) = self.lm_head.filter(|&h| h != self.embed) {
            set(h);
        }
        Ok(mask)
    }

    /// With LoRA adapters: the adapters and, as PEFT's `modules_to_save`, the score and value
    /// heads train; the base stays frozen.
    fn lora_mask(&self, unfrozen_layers: Option<usize>) -> Result<Vec<bool>> {
        if let Some(n) = unfrozen_layers {
            return Err(ModelError::Other(format!("--unfrozen-layers {n}: with LoRA only the adapters (and the score or value head) train")));
        }
        let mut mask = vec![false; self.info.len()];
        self.lora_params().into_iter().chain(self.score).chain(self.value_head_params()).for_each(|i| mask[i] = true);
        Ok(mask)
    }

    /// How many bottom blocks `mask` (a [`Model::trainable_mask`]) leaves wholly frozen, with the
    /// embedding and its norm frozen too (0 when those train): the depth a hydra reference can
    /// share with this model.
    pub fn frozen_trunk_depth(&self, mask: &[bool]) -> usize {
        if mask[self.embed] || self.emb_ln.iter().flat_map(Norm::params).any(|i| mask[i]) {
            return 0;
        }
        self.blocks.iter().position(|blk| blk.params().any(|i| mask[i])).unwrap_or(self.blocks.len())
    }
}
