//! Cross-entropy and token log-probabilities: losses / log-probs vs f64 references, the fused
//! dlogits vs central differences of Σ coef·loss (Σ coef·logp), IGNORE_INDEX rows, greedy flags.

mod common;

use common::*;
use okapi_kernels::xent::{token_logprobs, token_logprobs_bwd, xent_fwd_bwd};
use okapi_kernels::IGNORE_INDEX;

fn logsumexp(row: &[f64]) -> f64 {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// log p(target) per row, 0 for ignored rows.
fn logprob_ref(logits: &[f64], targets: &[u32], v: usize) -> Vec<f64> {
    logits
        .chunks(v)
        .zip(targets)
        .map(|(row, &t)| if t == IGNORE_INDEX { 0.0 } else { row[t as usize] - logsumexp(row) })
        .collect()
}

fn first_argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for i in 1..row.len() {
        if row[i] > row[best] {
            best = i;
        }
    }
    best
}

struct Case {
    n: usize,
    v: usize,
    logits: Vec<f32>,
    targets: Vec<u32>,
    coef: Vec<f32>,
}

/// vocab 11, 7 tokens of which 2 are ignored; coefficients differ per token.
fn case(seed: u64) -> Case {
    let (n, v) = (7, 11);
    let mut rng = Rng::new(seed);
    let logits = rng.normal_vec(n * v, 2.0);
    let mut targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    targets[2] = IGNORE_INDEX;
    targets[5] = IGNORE_INDEX;
    let coef = rng.uniform_vec(n, 0.2, 1.5);
    Case { n, v, logits, targets, coef }
}

#[test]
fn xent_losses_match_f64() {
    for (n, v, std) in [(7usize, 11usize, 2.0), (3, 1000, 10.0)] {
        let mut rng = Rng::new(800 + v as u64);
        let logits = rng.normal_vec(n * v, std);
        let mut targets: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
        targets[1] = IGNORE_INDEX;
        let coef = vec![1.0 / (n - 1) as f32; n];
        let mut work = logits.clone();
        let mut losses = nan_vec(n);
        xent_fwd_bwd(&mut work, &mut losses, &targets, &coef, v);
        let want: Vec<f64> = logprob_ref(&to_f64(&logits), &targets, v).iter().map(|lp| -lp).collect();
        assert_eq!(losses[1], 0.0, "ignored token's loss");
        assert_close(&format!("xent losses V={v}"), &losses, &want, 1e-6);
    }
}

#[test]
fn xent_dlogits_grad_check() {
    let c = case(810);
    let mut dlogits = c.logits.clone();
    let mut losses = vec![0f32; c.n];
    xent_fwd_bwd(&mut dlogits, &mut losses, &c.targets, &c.coef, c.v);
    let coef = to_f64(&c.coef);
    // L = Σ_n coef_n · loss_n
    let want = numeric_grad(&to_f64(&c.logits), |x| -dot(&coef, &logprob_ref(x, &c.targets, c.v)));
    assert_close("xent dlogits", &dlogits, &want, 1e-5);
    for n in [2usize, 5] {
        assert!(dlogits[n * c.v..][..c.v].iter().all(|&g| g == 0.0), "ignored row {n} must get a zero gradient");
    }
}

#[test]
fn token_logprobs_match_f64() {
    let c = case(820);
    let (mut logp, mut greedy) = (nan_vec(c.n), nan_vec(c.n));
    token_logprobs(&mut logp, &mut greedy, &c.logits, &c.targets, c.v);
    assert_close("token_logprobs", &logp, &logprob_ref(&to_f64(&c.logits), &c.targets, c.v), 1e-6);
    for n in [2usize, 5] {
        assert_eq!((logp[n], greedy[n]), (0.0, 0.0), "ignored token {n}");
    }
}

#[test]
fn token_logprobs_greedy_is_first_argmax() {
    let v = 11;
    let mut rng = Rng::new(830);
    let mut logits = rng.normal_vec(8 * v, 2.0);
    let mut targets = vec![0u32; 8];
    // rows 0–1: target is the argmax; rows 2–3: target is not
    for n in 0..4 {
        let am = first_argmax(&logits[n * v..][..v]);
        targets[n] = if n < 2 { am as u32 } else { ((am + 1 + n) % v) as u32 };
    }
    // rows 4–5: the same row, with a tie for the max at indices 2 and 5; the first one counts
    logits[4 * v + 2] = 9.0;
    logits[4 * v + 5] = 9.0;
    logits.copy_within(4 * v..5 * v, 5 * v);
    targets[4] = 2;
    targets[5] = 5;
    // row 6: target is the argmax at the last index; row 7: ignored
    logits[6 * v + v - 1] = 9.5;
    targets[6] = (v - 1) as u32;
    targets[7] = IGNORE_INDEX;

    let (mut logp, mut greedy) = (nan_vec(8), nan_vec(8));
    token_logprobs(&mut logp, &mut greedy, &logits, &targets, v);
    assert_eq!(greedy, vec![1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    for n in 0..7 {
        let expect = (targets[n] as usize == first_argmax(&logits[n * v..][..v])) as u32 as f32;
        assert_eq!(greedy[n], expect, "greedy flag of row {n}");
    }
    // tie rows: same log-prob (both targets hold the max), different flags
    assert_eq!(logp[4], logp[5]);
}

#[test]
fn token_logprobs_bwd_grad_check() {
    let c = case(840);
    let mut dlogits = nan_vec(c.n * c.v);
    token_logprobs_bwd(&mut dlogits, &c.logits, &c.targets, &c.coef, c.v);
    let coef = to_f64(&c.coef);
    let want = numeric_grad(&to_f64(&c.logits), |x| dot(&coef, &logprob_ref(x, &c.targets, c.v)));
    assert_close("token_logprobs dlogits", &dlogits, &want, 1e-5);
    for n in [2usize, 5] {
        assert!(dlogits[n * c.v..][..c.v].iter().all(|&g| g == 0.0), "ignored row {n} must get a zero gradient");
    }
    // the backward of Σ coef·logp is minus the cross-entropy gradient of Σ coef·loss
    let mut xent = c.logits.clone();
    xent_fwd_bwd(&mut xent, &mut vec![0f32; c.n], &c.targets, &c.coef, c.v);
    let neg: Vec<f64> = xent.iter().map(|&g| -(g as f64)).collect();
    assert_close("token_logprobs_bwd vs -xent", &dlogits, &neg, 1e-6);
}
