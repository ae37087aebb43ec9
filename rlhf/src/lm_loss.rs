//! Causal-LM cross-entropy on a model's logits, fused with its gradient: the SFT loss
//! (token-level mean over every unmasked target of the batch, as transformers computes it).

use okapi_model::{Acts, Grads, Model, ModelError, Scratch};
use okapi_runtime::{Backend, IGNORE_INDEX};

/// Device buffers for the loss (and per-token log-probs) of batches up to `n` positions.
pub struct LossBufs<B: Backend> {
    targets: B::Ids,
    coef: B::Buf,
    losses: B::Buf,
    logp: B::Buf,
    greedy: B::Buf,
}

impl<B: Backend> LossBufs<B> {
    pub fn new(be: &B, n: usize) -> Self {
        LossBufs { targets: be.upload_ids(&vec![IGNORE_INDEX; n]), coef: be.zeros(n), losses: be.zeros(n), logp: be.zeros(n), greedy: be.zeros(n) }
    }
}

/// Per-position results of [`head_logprobs`] (IGNORE_INDEX targets give 0).
pub struct TokenLogprobs {
    pub logp: Vec<f32>,
    /// 1 where the target is the first argmax
    pub greedy: Vec<f32>,
    /// −Σ p log p of the rows asked for (0 elsewhere)
    pub entropy: Vec<f64>,
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
    // the logits `forward` left are used as they are (one block of every row)
    lm_loss_blocks(model, acts, bufs, targets, weight, None).expect("`forward` checked the LM head")
}

/// The LM head, the cross-entropy and (with `backward = Some((scratch, grads))`) the head's
/// backward over the head's row blocks ([`Model::head_blocks`]), after `Model::forward_hidden`:
/// with a chunked head no (B·T, V) logits exist; unchunked, one block does exactly what
/// `Model::forward` + [`lm_loss_and_grad`] + `Model::lm_head_bwd` do. Leaves ∂L/∂lnf in
/// `scratch.dln` for `Model::backward_hidden`. Returns (Σ losses over targets, number of targets).
pub fn lm_loss_blocks<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, bufs: &mut LossBufs<B>, targets: &[u32], weight: f32, backward: Option<(&mut Scratch<B>, &mut Grads<B>)>) -> Result<(f64, usize), ModelError> {
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let sum = head_xent(model, acts, bufs, targets, &vec![weight; targets.len()], backward)?;
    Ok((sum, count))
}

/// The cross-entropy of `targets` with per-position weights `coef` over the head's row blocks
/// (logits the last [`head_logprobs`] left are reused, not recomputed), fused with its gradient
/// `Σ coef·∂(−log p)/∂logits`, and with `backward` the head's backward into `scratch.dln` (=)
/// and the head weight's gradient (+=). Returns Σ losses (unweighted).
pub fn head_xent<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, bufs: &mut LossBufs<B>, targets: &[u32], coef: &[f32], mut backward: Option<(&mut Scratch<B>, &mut Grads<B>)>) -> Result<f64, ModelError> {
    let be = &model.be;
    assert!(targets.len() == acts.b * acts.t && coef.len() == targets.len(), "one target and weight per position");
    let mut sum = 0f64;
    for (r0, r1) in model.head_blocks(acts) {
        let rows = r1 - r0;
        model.head_rows_fwd(acts, (r0, r1))?;
        be.write_ids(&mut bufs.targets, &targets[r0..r1]);
        be.write(&mut bufs.coef, &coef[r0..r1]);
        be.xent_fwd_bwd(&mut acts.logits, &mut bufs.losses, &bufs.targets, &bufs.coef, okapi_runtime::Rows::new(rows, model.cfg.vocab_size));
        acts.logits_consumed();
        sum += be.read(&bufs.losses, rows).iter().map(|&l| l as f64).sum::<f64>();
        if let Some((s, g)) = backward.as_mut() {
            model.head_rows_bwd(acts, s, g, (r0, r1));
        }
    }
    Ok(sum)
}

/// Log-probabilities and greedy flags of `targets` at every position over the head's row blocks
/// (after `Model::forward_hidden` or `forward_hidden_from`), and the entropy of the positions
/// `entropy_of` selects (their logits rows are read back; nothing else leaves the device).
pub fn head_logprobs<B: Backend>(model: &Model<B>, acts: &mut Acts<B>, bufs: &mut LossBufs<B>, targets: &[u32], entropy_of: Option<&dyn Fn(usize) -> bool>) -> Result<TokenLogprobs, ModelError> {
    let be = &model.be;
    let (n, v) = (acts.b * acts.t, model.cfg.vocab_size);
    assert_eq!(targets.len(), n, "one target per position");
    let mut out = TokenLogprobs { logp: Vec::with_capacity(n), greedy: Vec::with_capacity(n), entropy: vec![0.0; n] };
    for (r0, r1) in model.head_blocks(acts) {
        let rows = r1 - r0;
        model.head_rows_fwd(acts, (r0, r1))?;
        be.write_ids(&mut bufs.targets, &targets[r0..r1]);
        be.token_logprobs(&mut bufs.logp, &mut bufs.greedy, &acts.logits, &bufs.targets, okapi_runtime::Rows::new(rows, v));
        out.logp.extend(be.read(&bufs.logp, rows));
        out.greedy.extend(be.read(&bufs.greedy, rows));
        if let Some(want) = entropy_of {
            if (r0..r1).any(want) {
                let logits = be.read(&acts.logits, rows * v);
                for p in (r0..r1).filter(|&p| want(p)) {
                    out.entropy[p] = row_entropy(&logits[(p - r0) * v..(p - r0 + 1) * v]);
                }
            }
        }
    }
    Ok(out)
}

/// −Σ p log p of a logits row.
pub fn row_entropy(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lz = z.ln();
    row.iter()
        .map(|&x| {
            let lp = x as f64 - max - lz;
            -lp.exp() * lp
        })
        .sum()
}
