//! Scoring the continuations of multiple-choice items with the harness's `loglikelihood`
//! semantics — fast. [`score_items`]: harness v0.3's (those of [`crate::score_loglik`]: context
//! and continuation tokenized separately without special tokens, an empty context becomes
//! `[eos]`); [`score_items_with`]: any [`PairEncoder`]'s pairing (v0.4: joint tokenization,
//! the tokenizer's BOS, the prefix token for an empty context). Either way the window is
//! `(ctx + cont)[-(max_len+1):][:-1]` and loglik = Σ log p(continuation tokens).
//!
//! Fast path (`cache: true`): all choices of an item share its context, so the context runs
//! through the model once and its KV cache serves every choice. B items are scored side by
//! side in the B sequences of one [`KvCache`]:
//! 1. every sequence holds the prefix P shared by all items' contexts (token-level longest
//!    common prefix; e.g. TruthfulQA's QA prompt or a fixed few-shot block), prefilled once;
//! 2. each sequence appends its item's context minus P and minus its last token (in chunks
//!    of at most `t_max` tokens per forward);
//! 3. for choice j = 0, 1, …: each sequence appends `[last context token] + choice_j[:-1]` —
//!    row i of that block predicts `choice_j[i]`, so its log-prob comes out of
//!    `token_logprobs` on the device — then rewinds to its context length − 1
//!    ([`KvCache::rewind`]); items with fewer choices pass `n_new = 0`;
//! 4. after its last choice a sequence rewinds to |P| and takes the next item.
//!
//! Positions are those of the harness's input, so the results equal [`crate::score_loglik`]'s
//! up to float rounding (tests/eval.rs checks ≤ 1e-4). An item whose context + some choice
//! exceeds the window is truncated from the left per request, i.e. differently per choice: it
//! is scored from scratch (counted as truncated). `cache: false` scores every (context,
//! continuation) pair from scratch (the baseline). From scratch is
//! [`crate::loglik::score_encoded`] on the pairs' tokens.
//!
//! Under v0.4 the context's tokens are the same for every choice too (its trailing whitespace
//! moves to each continuation alike; only the continuations are cut from the joint encoding),
//! so the cache serves both.

use super::harness::{ItemTokens as Enc, PairEncoder};
use crate::loglik::{score_encoded, ScoreError};
use okapi_data::Tokenizer;
use okapi_model::{KvCache, Model};
use okapi_runtime::{Backend, IGNORE_INDEX};

/// One item's requests: a context and its continuations.
#[derive(Clone, Debug)]
pub struct ItemRequest {
    pub context: String,
    pub continuations: Vec<String>,
}

/// One item's result: a loglik per continuation, or why it cannot be scored.
#[derive(Clone, Debug, PartialEq)]
pub enum ItemScore {
    Scored { logliks: Vec<f64>, truncated: bool },
    Invalid(String),
}

#[derive(Clone, Copy, Debug)]
pub struct ScoreOptions {
    /// items scored side by side (KV-cache sequences / requests per forward)
    pub batch_size: usize,
    /// share each context's forward across its choices (false: every request from scratch)
    pub cache: bool,
    /// fast path: tokens per sequence per forward (0: as many as keep the (B·t, V) logits
    /// within 2^26 floats, at most 256); longer contexts and choices take several forwards
    pub chunk: usize,
}

/// What the scorer did (for the CLI's summary and the bench).
#[derive(Clone, Debug, Default)]
pub struct ScoreStats {
    pub items_cached: usize,
    pub items_fallback: usize,
    pub shared_prefix: usize,
    pub forwards: usize,
    /// tokens that went through the model (real, without padding)
    pub tokens: usize,
}

/// An item's tokens under `enc`, or why it cannot be scored.
fn encode_item(tok: &Tokenizer, enc: &PairEncoder, it: &ItemRequest) -> Result<Result<Enc, String>, ScoreError> {
    let e = enc.item(tok, &it.context, &it.continuations)?;
    let max_len = enc.max_length;
    if e.ctx.is_empty() {
        return Ok(Err("the context encodes to no tokens".into()));
    }
    if let Some(j) = e.conts.iter().position(|c| c.is_empty()) {
        return Ok(Err(format!("continuation {j} ({:?}) encodes to no tokens", it.continuations[j])));
    }
    if let Some(j) = e.conts.iter().position(|c| c.len() > max_len) {
        return Ok(Err(format!("continuation {j} has {} tokens, more than the model's window of {max_len}", e.conts[j].len())));
    }
    Ok(Ok(e))
}

/// Scores every item as harness v0.3 does; results in item order.
pub fn score_items<B: Backend>(model: &Model<B>, tok: &Tokenizer, items: &[ItemRequest], opts: ScoreOptions) -> Result<(Vec<ItemScore>, ScoreStats), ScoreError> {
    score_items_with(model, tok, items, opts, &PairEncoder::v03(&model.cfg)?)
}

/// Scores every item with `enc`'s pairing and window; results in item order.
pub fn score_items_with<B: Backend>(model: &Model<B>, tok: &Tokenizer, items: &[ItemRequest], opts: ScoreOptions, enc: &PairEncoder) -> Result<(Vec<ItemScore>, ScoreStats), ScoreError> {
    let max_len = enc.max_length;
    let mut stats = ScoreStats::default();
    let mut out: Vec<Option<ItemScore>> = vec![None; items.len()];
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    let mut encs: Vec<Option<Enc>> = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        match encode_item(tok, enc, it)? {
            Err(msg) => {
                out[i] = Some(ItemScore::Invalid(msg));
                encs.push(None);
            }
            Ok(e) => {
                if opts.cache && !e.over(max_len) {
                    fast.push(i);
                } else {
                    slow.push(i);
                }
                encs.push(Some(e));
            }
        }
    }
    let batch = opts.batch_size.max(1);
    // from scratch: the baseline, and the items truncated to the window
    if !slow.is_empty() {
        let slow_encs: Vec<&Enc> = slow.iter().map(|&i| encs[i].as_ref().unwrap()).collect();
        for (&i, logliks) in slow.iter().zip(score_from_scratch(model, &slow_encs, max_len, batch, &mut stats)?) {
            out[i] = Some(ItemScore::Scored { logliks, truncated: encs[i].as_ref().unwrap().over(max_len) });
        }
        stats.items_fallback = slow.len();
    }
    if !fast.is_empty() {
        let fast_encs: Vec<&Enc> = fast.iter().map(|&i| encs[i].as_ref().unwrap()).collect();
        let logliks = score_cached(model, &fast_encs, batch, opts.chunk, &mut stats)?;
        for (&i, ll) in fast.iter().zip(logliks) {
            out[i] = Some(ItemScore::Scored { logliks: ll, truncated: false });
        }
        stats.items_cached = fast.len();
    }
    Ok((out.into_iter().map(|o| o.expect("every item is scored or invalid")).collect(), stats))
}

/// Every (context, continuation) of `encs` from scratch, `batch` requests per forward; the
/// logliks per item.
fn score_from_scratch<B: Backend>(model: &Model<B>, encs: &[&Enc], max_len: usize, batch: usize, stats: &mut ScoreStats) -> Result<Vec<Vec<f64>>, ScoreError> {
    let pairs: Vec<(&[u32], &[u32])> = encs.iter().flat_map(|e| e.conts.iter().map(move |c| (&e.ctx[..], &c[..]))).collect();
    let res = score_encoded(model, &pairs, max_len, batch)?;
    stats.tokens += pairs.iter().map(|(c, x)| (c.len() + x.len() - 1).min(max_len)).sum::<usize>();
    stats.forwards += pairs.len().div_ceil(batch);
    let mut k = 0;
    Ok(encs
        .iter()
        .map(|e| {
            let n = e.conts.len();
            k += n;
            res[k - n..k].iter().map(|r| r.loglik).collect()
        })
        .collect())
}

/// Longest common prefix of all contexts, leaving every context at least one token.
fn shared_prefix(encs: &[&Enc]) -> usize {
    let first = &encs[0].ctx;
    let mut p = first.len();
    for e in &encs[1..] {
        p = p.min(first.iter().zip(&e.ctx).take_while(|(a, b)| a == b).count());
    }
    p.min(encs.iter().map(|e| e.ctx.len() - 1).min().unwrap())
}

/// Per-forward scratch: tokens, targets and n_new of the B sequences, and the device buffers
/// `token_logprobs` writes.
struct Feed<B: Backend> {
    b: usize,
    t_max: usize,
    pad: u32,
    v: usize,
    targets: B::Ids,
    logp: B::Buf,
    greedy: B::Buf,
}

impl<B: Backend> Feed<B> {
    /// One forward of `pieces[s]` (tokens, optional targets) for every sequence s; returns the
    /// log-prob of each target (row-major (B, t), 0 where there is none).
    fn run(&mut self, model: &Model<B>, cache: &mut KvCache<B>, pieces: &[(&[u32], Option<&[u32]>)], stats: &mut ScoreStats) -> Result<Option<(Vec<f32>, usize)>, ScoreError> {
        let t = pieces.iter().map(|p| p.0.len()).max().unwrap_or(0);
        if t == 0 {
            return Ok(None);
        }
        debug_assert!(t <= self.t_max);
        let mut tokens = vec![self.pad; self.b * t];
        let mut targets = vec![IGNORE_INDEX; self.b * t];
        let mut n_new = vec![0; self.b];
        let mut any_target = false;
        for (s, (toks, tg)) in pieces.iter().enumerate() {
            tokens[s * t..s * t + toks.len()].copy_from_slice(toks);
            n_new[s] = toks.len();
            if let Some(tg) = tg {
                targets[s * t..s * t + tg.len()].copy_from_slice(tg);
                any_target = true;
            }
        }
        model.forward_cached(cache, &tokens, t, &n_new)?;
        stats.forwards += 1;
        stats.tokens += n_new.iter().sum::<usize>();
        if !any_target {
            return Ok(None);
        }
        let be = &model.be;
        be.write_ids(&mut self.targets, &targets);
        be.token_logprobs(&mut self.logp, &mut self.greedy, &cache.logits, &self.targets, okapi_runtime::Rows::new(self.b * t, self.v));
        Ok(Some((be.read(&self.logp, self.b * t), t)))
    }
}

/// The fast path (module docs): logliks of every choice of every item, in order.
fn score_cached<B: Backend>(model: &Model<B>, encs: &[&Enc], batch: usize, chunk: usize, stats: &mut ScoreStats) -> Result<Vec<Vec<f64>>, ScoreError> {
    let v = model.cfg.vocab_size;
    let p = shared_prefix(encs);
    stats.shared_prefix = p;
    let b = batch.min(encs.len());
    // sequence capacity: the longest context − 1 + its longest choice (≤ the window)
    let cap = encs.iter().map(|e| e.ctx.len() - 1 + e.conts.iter().map(Vec::len).max().unwrap_or(0)).max().unwrap_or(1);
    // tokens per sequence per forward: bounded so that the (B·t, V) logits stay ≤ 2^26 floats
    // (longer pieces, choices included, go through in several forwards)
    let auto = ((1usize << 26) / (b * v).max(1)).clamp(1, 256);
    let t_max = if chunk > 0 { chunk } else { auto }.min(cap);
    let mut cache = model.new_cache(b, cap, t_max)?;
    let eos = model.cfg.eos_token_id.unwrap_or(0);
    let be = &model.be;
    let mut feed = Feed::<B> { b, t_max, pad: model.cfg.pad_token_id.unwrap_or(eos).min(v as u32 - 1), v, targets: be.upload_ids(&vec![IGNORE_INDEX; b * t_max]), logp: be.zeros(b * t_max), greedy: be.zeros(b * t_max) };
    let mut results: Vec<Vec<f64>> = encs.iter().map(|e| vec![0.0; e.conts.len()]).collect();
    // 1. the shared prefix, once per sequence
    for chunk in encs[0].ctx[..p].chunks(t_max) {
        let pieces: Vec<(&[u32], Option<&[u32]>)> = vec![(chunk, None); b];
        feed.run(model, &mut cache, &pieces, stats)?;
    }
    // items longest first: rounds of B with little padding
    let mut order: Vec<usize> = (0..encs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(encs[i].ctx.len()));
    for round in order.chunks(b) {
        for s in 0..b {
            cache.rewind(s, p);
        }
        feed_contexts(model, &mut cache, &mut feed, encs, round, p, stats)?;
        score_choices(model, &mut cache, &mut feed, encs, round, &mut results, stats)?;
    }
    Ok(results)
}

/// Step 2 of the fast path: the contexts of a round minus the shared prefix `p` and their last
/// token, `t_max` tokens per sequence per forward.
fn feed_contexts<B: Backend>(model: &Model<B>, cache: &mut KvCache<B>, feed: &mut Feed<B>, encs: &[&Enc], round: &[usize], p: usize, stats: &mut ScoreStats) -> Result<(), ScoreError> {
    let b = feed.b;
    let mut off = vec![p; b];
    loop {
        let pieces: Vec<(&[u32], Option<&[u32]>)> = (0..b)
            .map(|s| match round.get(s) {
                Some(&i) => {
                    let ctx = &encs[i].ctx;
                    let end = (off[s] + feed.t_max).min(ctx.len() - 1);
                    (&ctx[off[s]..end], None)
                }
                None => (&[][..], None),
            })
            .collect();
        if pieces.iter().all(|p| p.0.is_empty()) {
            return Ok(());
        }
        for (s, pc) in pieces.iter().enumerate() {
            off[s] += pc.0.len();
        }
        feed.run(model, cache, &pieces, stats)?;
    }
}

/// Step 3 of the fast path: the choices of a round, one at a time: \[last context token\] +
/// choice\[:-1\], predicting choice\[..\]; each sequence's cache is rewound to its context after
/// each choice.
#[allow(clippy::needless_range_loop)]
fn score_choices<B: Backend>(model: &Model<B>, cache: &mut KvCache<B>, feed: &mut Feed<B>, encs: &[&Enc], round: &[usize], results: &mut [Vec<f64>], stats: &mut ScoreStats) -> Result<(), ScoreError> {
    let b = feed.b;
    let n_choices = round.iter().map(|&i| encs[i].conts.len()).max().unwrap_or(0);
    let fed: Vec<Vec<Vec<u32>>> = round
        .iter()
        .map(|&i| {
            let e = encs[i];
            let last = *e.ctx.last().expect("contexts are never empty");
            e.conts.iter().map(|c| std::iter::once(last).chain(c[..c.len() - 1].iter().copied()).collect()).collect()
        })
        .collect();
    for j in 0..n_choices {
        let mut done = vec![0usize; b];
        loop {
            let pieces: Vec<(&[u32], Option<&[u32]>)> = (0..b)
                .map(|s| match (round.get(s), fed.get(s).and_then(|f| f.get(j))) {
                    (Some(&i), Some(f)) => {
                        let end = (done[s] + feed.t_max).min(f.len());
                        (&f[done[s]..end], Some(&encs[i].conts[j][done[s]..end]))
                    }
                    _ => (&[][..], None),
                })
                .collect();
            let Some((lp, t)) = feed.run(model, cache, &pieces, stats)? else { break };
            for (s, pc) in pieces.iter().enumerate().filter(|(_, pc)| !pc.0.is_empty()) {
                results[round[s]][j] += lp[s * t..s * t + pc.0.len()].iter().map(|&x| x as f64).sum::<f64>();
                done[s] += pc.0.len();
            }
        }
        for (s, &i) in round.iter().enumerate() {
            if j < encs[i].conts.len() {
                cache.rewind(s, encs[i].ctx.len() - 1);
            }
        }
    }
    Ok(())
}
