//! Batched sampling with the KV cache: the text generation of `okapi-train generate` and the
//! rollouts of PPO.
//!
//! Semantics are those of transformers' `generate(do_sample=True, temperature, top_k, top_p)`:
//! the next-token logits are divided by `temperature`, filtered to the `top_k` largest, then to
//! the nucleus of `top_p` (HF's `TopPLogitsWarper`: sorted descending, the smallest prefix whose
//! cumulative probability reaches `top_p`, never fewer than one token), renormalised, and one
//! token drawn. `temperature == 0` is greedy decoding (the first maximum of the raw logits;
//! `top_k`/`top_p` are then irrelevant). Differences from HF, all deliberate:
//! - top-k keeps exactly `k` tokens; among equal logits at the boundary the lower ids win (HF
//!   keeps every token tied with the k-th largest);
//! - beam search is not implemented;
//! - the random numbers come from one seeded [`Rng`] (splitmix64), one uniform draw per sampled
//!   token, consumed in a fixed order (sequences 0..B at each step, finished ones skipped,
//!   nothing drawn when greedy), so a seed reproduces a batch exactly on every platform — but
//!   not torch's samples.
//!
//! `Generation::logprobs` holds, for every generated token, its log-probability under the
//! POLICY — `log_softmax(raw logits)[token]`, temperature 1, before any top-k/top-p filtering —
//! whatever the sampling settings: this is the `log π_old(a_t)` that PPO's ratio needs, and it
//! equals what a full forward over prompt + generated tokens gives at that position.
//!
//! Prompts of different lengths are prefilled in one `forward_cached` call (right-padded, each
//! with its own `n_new`), then every unfinished sequence advances one token per step (finished
//! ones pass `n_new = 0`). A sequence stops at `eos` (kept in `tokens`, `finished = true`) or
//! after its token budget; generation stops when all have stopped.
//!
//! Position limit: a model with `max_positions` (LLaMA's `max_position_embeddings`; BLOOM has
//! none) never sees a sequence longer than that — a sequence's budget is
//! `min(max_new_tokens, max_positions − prompt_len)` (it then ends with `finished = false`, as
//! on reaching `max_new_tokens`), and a prompt that leaves no room (`prompt_len ≥
//! max_positions`) is an error naming the sequence: callers truncate their prompts.
//!
//! Memory: the prefill's logits are (B·T_prompt, V) floats (the cache is sized for one forward
//! of the longest prompt); the cache holds B·(T_prompt + max_new_tokens) keys and values.

use okapi_model::{Model, ModelError, Rng};
use okapi_runtime::Backend;
use std::cmp::Ordering;

/// Sampling settings (HF `generate` names).
#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax, first maximum on ties); otherwise > 0
    pub temperature: f32,
    /// nucleus mass in (0, 1]; 1 = off
    pub top_p: f32,
    /// 0 = off
    pub top_k: usize,
    /// at most this many new tokens per sequence (EOS included)
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for Sampling {
    /// Greedy, 256 new tokens, seed 0.
    fn default() -> Self {
        Sampling { temperature: 0.0, top_p: 1.0, top_k: 0, max_new_tokens: 256, seed: 0 }
    }
}

impl Sampling {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Sampling { max_new_tokens, ..Default::default() }
    }

    /// Checks the settings; the message names the offending field and its allowed range.
    /// Refuses settings that cannot sample; the message starts with the CLI flag at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("--temperature {}: expected a finite number ≥ 0 (0 = greedy)", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p {}: expected a number in (0, 1] (1 = off)", self.top_p));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// One sequence's continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// the new tokens, EOS included when produced
    pub tokens: Vec<u32>,
    /// `log_softmax(raw logits)[token]` of each new token: the policy's log-probability at
    /// temperature 1, before filtering, whatever the sampling settings (see the module doc)
    pub logprobs: Vec<f32>,
    /// true when the sequence ended with EOS (false: budget or position limit reached)
    pub finished: bool,
}

// ---- pure helpers on one row of logits -------------------------------------------------------

/// Index of the largest value, the first one on ties (NaN never wins unless all are NaN).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// `log_softmax(x)[i]` (vectorised exp, the sum of the exponentials combined in f64).
pub fn log_softmax_at(x: &[f32], i: usize) -> f32 {
    let m = okapi_kernels::vmath::max(x);
    let sum = okapi_kernels::vmath::sum_exp(x, m);
    (x[i] as f64 - m as f64 - sum.ln()) as f32
}

/// Probabilities `softmax(x)` in f64 (entries at −∞ get 0); they sum to 1.
pub fn softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Descending by value, ascending by index among equals (a total order for non-NaN values).
fn desc(x: &[f32]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| x[b].partial_cmp(&x[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// Keeps exactly the `k` largest logits (lower ids first among equals), sets the others to −∞.
/// `k == 0` or `k ≥ len` keeps everything.
pub fn top_k_filter(x: &mut [f32], k: usize) {
    if k == 0 || k >= x.len() {
        return;
    }
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.select_nth_unstable_by(k - 1, desc(x));
    for &i in &idx[k..] {
        x[i] = f32::NEG_INFINITY;
    }
}

/// Nucleus filter (HF `TopPLogitsWarper`): over `softmax(x)` sorted descending, keeps the
/// smallest prefix whose cumulative probability reaches `p` — a token is kept when the mass
/// strictly before it is below `p` — and always the largest; sets the others to −∞.
/// `p ≥ 1` keeps everything.
pub fn top_p_filter(x: &mut [f32], p: f32) {
    if p >= 1.0 {
        return;
    }
    let probs = softmax(x);
    let mut idx: Vec<usize> = (0..x.len()).filter(|&i| x[i] > f32::NEG_INFINITY).collect();
    idx.sort_unstable_by(desc(x));
    let mut before = 0.0f64;
    let mut keep = 0;
    for &i in &idx {
        if keep > 0 && before >= p as f64 {
            break;
        }
        before += probs[i];
        keep += 1;
    }
    for &i in &idx[keep..] {
        x[i] = f32::NEG_INFINITY;
    }
}

/// The index whose cumulative probability (in index order) first exceeds `u` ∈ [0, 1): inverse
/// CDF sampling. `probs` need not be normalised exactly; rounding never picks a zero entry.
pub fn sample_categorical(probs: &[f64], u: f64) -> usize {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p <= 0.0 {
            continue;
        }
        acc += p;
        last = i;
        if target < acc {
            return i;
        }
    }
    last
}

/// The sampling distribution of one row of raw logits: `softmax(top_p(top_k(x / temperature)))`
/// (temperature > 0).
pub fn sampling_probs(logits: &[f32], s: &Sampling) -> Vec<f64> {
    let mut x: Vec<f32> = logits.iter().map(|&v| v / s.temperature).collect();
    top_k_filter(&mut x, s.top_k);
    top_p_filter(&mut x, s.top_p);
    softmax(&x)
}

/// Picks the next token of one row of raw logits; draws one uniform from `rng` unless greedy.
/// Returns (token, log_softmax(raw logits)\[token\]).
pub fn next_token(logits: &[f32], s: &Sampling, rng: &mut Rng) -> (u32, f32) {
    let tok = if s.is_greedy() { argmax(logits) } else { sample_categorical(&sampling_probs(logits, s), rng.uniform()) };
    (tok as u32, log_softmax_at(logits, tok))
}

// ---- batched generation -----------------------------------------------------------------------

/// Continues every prompt (see the module doc for the semantics). Errors: invalid settings, an
/// empty prompt, a prompt that leaves no room under `max_positions`, an id outside the
/// vocabulary.
pub fn generate<B: Backend>(model: &Model<B>, prompts: &[Vec<u32>], s: &Sampling, eos: Option<u32>) -> Result<Vec<Generation>, ModelError> {
    s.validate().map_err(|e| ModelError::Other(format!("generate: {e}")))?;
    let cfg = &model.cfg;
    let v = cfg.vocab_size;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Other(format!("generate: prompt {i} is empty (at least one token, e.g. BOS, is needed)")));
    }
    let b = prompts.len();
    let mut out: Vec<Generation> = (0..b).map(|_| Generation { tokens: vec![], logprobs: vec![], finished: false }).collect();
    if b == 0 || s.max_new_tokens == 0 {
        return Ok(out);
    }
    let budget: Vec<usize> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| match cfg.max_positions {
            Some(mp) if p.len() >= mp => Err(ModelError::Other(format!(
                "generate: prompt {i} has {} tokens, leaving no room under the model's max_position_embeddings {mp} (truncate it)",
                p.len()
            ))),
            Some(mp) => Ok(s.max_new_tokens.min(mp - p.len())),
            None => Ok(s.max_new_tokens),
        })
        .collect::<Result<_, _>>()?;
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let t_prompt = *lens.iter().max().unwrap();
    // the last generated token is never fed back: prompt + budget − 1 positions are cached
    let cap = (0..b).map(|i| lens[i] + budget[i] - 1).max().unwrap();
    let mut cache = model.new_cache(b, cap, t_prompt)?;
    let pad = cfg.pad_token_id.or(cfg.eos_token_id).unwrap_or(0).min(v as u32 - 1);
    let mut tokens = vec![pad; b * t_prompt];
    for (i, p) in prompts.iter().enumerate() {
        tokens[i * t_prompt..i * t_prompt + p.len()].copy_from_slice(p);
    }
    // the LM head only on each sequence's last token: row i of the logits is sequence i's next
    model.forward_cached_last(&mut cache, &tokens, t_prompt, &lens)?;
    let mut rng = Rng::new(s.seed);
    let mut done = vec![false; b];
    loop {
        let logits = model.be.read(&cache.logits, b * v);
        for i in 0..b {
            if done[i] {
                continue;
            }
            let (tok, lp) = next_token(&logits[i * v..][..v], s, &mut rng);
            let g = &mut out[i];
            g.tokens.push(tok);
            g.logprobs.push(lp);
            if eos == Some(tok) {
                g.finished = true;
                done[i] = true;
            } else if g.tokens.len() >= budget[i] {
                done[i] = true;
            }
        }
        if done.iter().all(|&d| d) {
            return Ok(out);
        }
        let step: Vec<u32> = (0..b).map(|i| if done[i] { pad } else { *out[i].tokens.last().unwrap() }).collect();
        let n_new: Vec<usize> = done.iter().map(|&d| usize::from(!d)).collect();
        model.forward_cached_last(&mut cache, &step, 1, &n_new)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(x: &[f32]) -> Vec<usize> {
        (0..x.len()).filter(|&i| x[i] > f32::NEG_INFINITY).collect()
    }

    #[test]
    fn argmax_first_on_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(argmax(&[5.0, 5.0]), 0);
        assert_eq!(argmax(&[-1.0]), 0);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.7, 0.7]), 2);
    }

    #[test]
    fn top_k_keeps_exactly_k() {
        let x0 = [0.1f32, 2.0, -1.0, 2.0, 0.5, 3.0, 2.0];
        for k in 1..=x0.len() {
            let mut x = x0;
            top_k_filter(&mut x, k);
            assert_eq!(kept(&x).len(), k, "k={k}");
            // kept values unchanged; every kept one ≥ every dropped one
            for i in kept(&x) {
                assert_eq!(x[i], x0[i]);
            }
            let min_kept = kept(&x).iter().map(|&i| x0[i]).fold(f32::INFINITY, f32::min);
            assert!((0..x.len()).filter(|i| !kept(&x).contains(i)).all(|i| x0[i] <= min_kept));
        }
        // ties at the boundary: lower ids first
        let mut x = x0;
        top_k_filter(&mut x, 2);
        assert_eq!(kept(&x), vec![1, 5]);
        let mut x = x0;
        top_k_filter(&mut x, 0);
        assert_eq!(kept(&x).len(), x0.len());
    }

    #[test]
    fn top_p_keeps_the_minimal_nucleus() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (as logits: ln p)
        let x0: Vec<f32> = [0.125f32, 0.5, 0.125, 0.25].iter().map(|p| p.ln()).collect();
        let cases: [(f32, Vec<usize>); 7] = [
            (0.1, vec![1]),
            (0.5, vec![1]),
            (0.51, vec![1, 3]),
            (0.75, vec![1, 3]),
            (0.8, vec![0, 1, 3]), // tie 0/2 at the boundary: the lower id
            (0.99, vec![0, 1, 2, 3]),
            (1.0, vec![0, 1, 2, 3]),
        ];
        for (p, want) in cases {
            let mut x = x0.clone();
            top_p_filter(&mut x, p);
            assert_eq!(kept(&x), want, "p={p}");
            // minimal: dropping the smallest kept one would fall below p
            let probs = softmax(&x0);
            let mass: f64 = want.iter().map(|&i| probs[i]).sum();
            let smallest = want.iter().map(|&i| probs[i]).fold(1.0, f64::min);
            assert!(mass >= p as f64 - 1e-9 || p >= 1.0);
            assert!(want.len() == 1 || mass - smallest < p as f64 - 1e-9, "p={p}: not minimal");
        }
        // at least one token even for a tiny p; −∞ entries (after top-k) never come back
        let mut x = vec![0.0f32, f32::NEG_INFINITY, 0.0];
        top_p_filter(&mut x, 1e-6);
        assert_eq!(kept(&x), vec![0]);
        let mut x = vec![0.0f32, f32::NEG_INFINITY, 0.0];
        top_p_filter(&mut x, 0.9);
        assert_eq!(kept(&x), vec![0, 2]);
    }

    #[test]
    fn probabilities_sum_to_one() {
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..1000).map(|_| (rng.normal() * 4.0) as f32).collect();
        for (t, k, p) in [(1.0, 0, 1.0), (0.1, 40, 0.75), (1.5, 0, 0.9), (0.7, 5, 1.0), (2.0, 1, 0.5)] {
            let s = Sampling { temperature: t, top_k: k, top_p: p, ..Default::default() };
            let probs = sampling_probs(&x, &s);
            let sum: f64 = probs.iter().sum();
            assert!((sum - 1.0).abs() < 1e-12, "t={t} k={k} p={p}: sum {sum}");
            let nz = probs.iter().filter(|&&q| q > 0.0).count();
            if k > 0 {
                assert!(nz <= k);
            }
            if k == 1 {
                assert_eq!(probs[argmax(&x)], 1.0);
            }
        }
        let total: f64 = (0..x.len()).map(|i| (log_softmax_at(&x, i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
    }

    #[test]
    fn sample_frequencies_match_probabilities() {
        let probs = [0.1f64, 0.0, 0.4, 0.2, 0.3];
        let mut rng = Rng::new(42);
        let n = 200_000;
        let mut counts = [0usize; 5];
        for _ in 0..n {
            counts[sample_categorical(&probs, rng.uniform())] += 1;
        }
        assert_eq!(counts[1], 0, "a zero-probability entry was drawn");
        for (i, &p) in probs.iter().enumerate() {
            let f = counts[i] as f64 / n as f64;
            // 5 standard deviations of a binomial frequency
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((f - p).abs() <= 5.0 * sd + 1e-12, "index {i}: frequency {f} vs probability {p}");
        }
        // the edges of [0, 1)
        assert_eq!(sample_categorical(&probs, 0.0), 0);
        assert_eq!(sample_categorical(&probs, 0.999_999_999_999), 4);
        assert_eq!(sample_categorical(&[0.0, 1.0, 0.0], 0.999_999_999_999), 1);
    }

    #[test]
    fn next_token_through_the_filters() {
        let x = [1.0f32, 3.0, 2.0, 3.0];
        let mut rng = Rng::new(1);
        let greedy = Sampling::greedy(1);
        assert_eq!(next_token(&x, &greedy, &mut rng).0, 1);
        let k1 = Sampling { temperature: 1.5, top_k: 1, ..Default::default() };
        for _ in 0..20 {
            let (t, lp) = next_token(&x, &k1, &mut rng);
            assert_eq!(t, 1);
            assert!((lp - log_softmax_at(&x, 1)).abs() < 1e-7, "logprob is the raw policy's");
        }
    }

    #[test]
    fn validation() {
        let ok = Sampling::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Sampling { top_p: 0.0, ..ok.clone() },
            Sampling { top_p: 1.5, ..ok.clone() },
            Sampling { top_p: f32::NAN, ..ok.clone() },
            Sampling { temperature: -0.1, ..ok.clone() },
            Sampling { temperature: f32::INFINITY, ..ok.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
