//! Fused cross-entropy and per-token log-probabilities over the vocabulary.
//! One pass per row: max, log-sum-exp, the target's log-prob, and (fused) the logits' gradient.

use crate::{vmath, IGNORE_INDEX};
use rayon::prelude::*;

/// The GPU sources of the fused cross-entropy and log-probs.
pub const FAMILY: crate::Family = crate::Family {
    name: "xent",
    cuda: include_str!("xent.cu"),
    cuda_kernels: &["xent_fwd_bwd", "token_logprobs", "token_logprobs_bwd"],
    wgsl: &[("xent", WGSL)],
};

/// xent.wgsl with the row prelude: entry points `xent_fwd_bwd`, `token_logprobs`,
/// `token_logprobs_bwd`.
pub const WGSL: &str = crate::wgsl_row_module!("xent.wgsl");

/// log Σ exp of a row (vectorised exp; 16 lane sums in f32, combined in f64).
fn row_lse(row: &[f32]) -> f32 {
    let max = vmath::max(row);
    max + (vmath::sum_exp(row, max).ln() as f32)
}

/// Cross-entropy forward and backward in one pass, in place on the logits.
/// logits: (N,V) in, overwritten with dlogits = coef\[n\]·(softmax − onehot(target));
/// losses\[n\] = −log p(target\[n\]) (`=`, 0 where the target is `IGNORE_INDEX`, whose rows get a
/// zero gradient). coef: (N) the weight of each token in the loss (e.g. 1/number of targets).
pub fn xent_fwd_bwd(logits: &mut [f32], losses: &mut [f32], targets: &[u32], coef: &[f32], v: usize) {
    logits.par_chunks_mut(v).zip(losses.par_iter_mut()).enumerate().for_each(|(n, (row, loss))| {
        let t = targets[n];
        if t == IGNORE_INDEX {
            *loss = 0.0;
            row.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        // one exp per element: row ← e^(x − max), then scaled by coef/Σ
        let target_logit = row[t as usize];
        let max = vmath::max(row);
        let sum = vmath::exp_affine_sum(row, 1.0, max);
        *loss = max + sum.ln() as f32 - target_logit;
        let k = coef[n];
        vmath::scale(row, (k as f64 / sum) as f32);
        row[t as usize] -= k;
    });
}

/// logp\[n\] = log p(target\[n\]); greedy\[n\] = 1 when the target is the (first) argmax, else 0.
/// Ignored targets give 0 and 0. logits: (N,V)
pub fn token_logprobs(logp: &mut [f32], greedy: &mut [f32], logits: &[f32], targets: &[u32], v: usize) {
    logp.par_iter_mut().zip(greedy.par_iter_mut()).enumerate().for_each(|(n, (lp, gr))| {
        let t = targets[n];
        if t == IGNORE_INDEX {
            *lp = 0.0;
            *gr = 0.0;
            return;
        }
        let row = &logits[n * v..][..v];
        let max = vmath::max(row);
        *lp = row[t as usize] - (max + vmath::sum_exp(row, max).ln() as f32);
        // the first argmax: the first element equal to the (NaN-ignoring) maximum
        let arg = row.iter().position(|&x| x == max).unwrap_or(0);
        *gr = if arg == t as usize { 1.0 } else { 0.0 };
    });
}

/// dlogits = coef\[n\]·(onehot(target) − softmax) (`=`): the backward of Σ coef·logp.
pub fn token_logprobs_bwd(dlogits: &mut [f32], logits: &[f32], targets: &[u32], coef: &[f32], v: usize) {
    dlogits.par_chunks_mut(v).enumerate().for_each(|(n, drow)| {
        let t = targets[n];
        if t == IGNORE_INDEX {
            drow.iter_mut().for_each(|x| *x = 0.0);
            return;
        }
        let row = &logits[n * v..][..v];
        let lse = row_lse(row);
        let k = coef[n];
        vmath::scaled_exp(drow, row, -k, lse);
        drow[t as usize] += k;
    });
}
