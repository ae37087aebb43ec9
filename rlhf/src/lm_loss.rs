//! Causal-LM cross-entropy on a model's logits, fused with its gradient: the SFT loss
//! (token-level mean over every unmasked target of the batch, as transformers computes it).

use okapi_model::{Acts, Grads, Model, Scratch};
use okapi_runtime::{Backend, IGNORE_INDEX};

/// Device buffers for the loss of batches up to `n` positions.
pub struct LossBufs<B: Backend> {
    targets: B::Ids,
    coef: B::Buf,
    losses: B::Buf,
}

impl<B: Backend> LossBufs<B> {
    pub fn new(be: &B, n: usize) -> Self {
        LossBufs { targets: be.upload_ids(&vec![IGNORE_INDEX; n]), coef: be.zeros(n), losses: be.zeros(n) }
    }
}

impl<B: Backend> LossBufs<B> {
    /// The per-token weights of the next `xent_in_place`.
    pub fn coef_mut(&mut self) -> &mut B::Buf {
        &mut self.coef
    }

    /// Cross-entropy with the weights already in `coef_mut()`, in place on `acts.logits`
    /// (which become `Σ coef·∂(−log p)/∂logits`); `targets` already uploaded.
    pub fn xent_in_place(&mut self, model: &Model<B>, acts: &mut Acts<B>, targets: &B::Ids, n: usize) {
        model.be.xent_fwd_bwd(&mut acts.logits, &mut self.losses, targets, &self.coef, okapi_runtime::Rows::new(n, model.cfg.vocab_size));
    }
}

/// Next-token targets for a (B,T) batch: `targets[b,t] = labels[b,t+1]`, the last position and
/// every label < 0 (HF's -100) ignored — exactly the shift inside `LlamaForCausalLM`'s loss.
pub fn shift_labels(labels: &[i64], b: usize, t: usize) -> Vec<u32> {
    let mut out = vec![IGNORE_INDEX; b * t];
    for r in 0..b {
        for p in 0..t.saturating_sub(1) {
            let l = labels[r * t + p + 1];
            if l >= 0 {
                out[r * t + p] = l as u32;
            }
        }
    }
    out
}

/// Cross-entropy of the last forward (`acts`) against `targets`, fused with its gradient: leaves
/// `weight · ∂(Σ losses)/∂logits` in `acts.logits`, ready for `Model::backward`. With
/// `weight = 1/(targets in the whole step)` this is the token-level mean of transformers (also
/// across gradient-accumulation micro-batches). Returns (Σ losses over targets, number of targets).
pub fn lm_loss_and_grad<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, bufs: &mut LossBufs<B>, targets: &[u32], weight: f32) -> (f64, usize) {
    let be = &model.be;
    let n = acts.b * acts.t;
    assert_eq!(targets.len(), n, "one target per position");
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    be.write_ids(&mut bufs.targets, targets);
    be.write(&mut bufs.coef, &vec![weight; n]);
    be.xent_fwd_bwd(&mut acts.logits, &mut bufs.losses, &bufs.targets, &bufs.coef, okapi_runtime::Rows::new(n, model.cfg.vocab_size));
    let losses = be.read(&bufs.losses, n);
    (losses.iter().map(|&l| l as f64).sum(), count)
}

/// The LM head, the cross-entropy and (with `backward = Some((scratch, grads))`) the head's
/// backward over the head's row blocks ([`Model::head_blocks`]), after `Model::forward_hidden`:
/// with a chunked head no (B·T, V) logits exist; unchunked, one block does exactly what
/// `Model::forward` + [`lm_loss_and_grad`] + `Model::lm_head_bwd` do. Leaves ∂L/∂lnf in
/// `scratch.dln` for `Model::backward_hidden`. Returns (Σ losses over targets, number of targets).
pub fn lm_loss_blocks<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, bufs: &mut LossBufs<B>, targets: &[u32], weight: f32, mut backward: Option<(&mut Scratch<B>, &mut Grads<B>)>) -> Result<(f64, usize), okapi_model::ModelError> {
    let be = &model.be;
    let n = acts.b * acts.t;
    assert_eq!(targets.len(), n, "one target per position");
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let mut sum = 0f64;
    for (r0, r1) in model.head_blocks(acts) {
        let rows = r1 - r0;
        model.head_rows_fwd(acts, (r0, r1))?;
        be.write_ids(&mut bufs.targets, &targets[r0..r1]);
        be.write(&mut bufs.coef, &vec![weight; rows]);
        be.xent_fwd_bwd(&mut acts.logits, &mut bufs.losses, &bufs.targets, &bufs.coef, okapi_runtime::Rows::new(rows, model.cfg.vocab_size));
        sum += be.read(&bufs.losses, rows).iter().map(|&l| l as f64).sum::<f64>();
        if let Some((s, g)) = backward.as_mut() {
            model.head_rows_bwd(acts, s, g, (r0, r1));
        }
    }
    Ok((sum, count))
}
