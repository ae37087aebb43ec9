//! Scoring the continuations of multiple-choice items with the harness's `loglikelihood`
//! semantics — fast. [`score_items`]: harness v0.3's (those of [`crate::score_loglik`]: context
//! and continuation tokenized separately without special tokens, an empty context becomes
//! `[eos]`); [`score_items_with`]: any [`PairEncoder`]'s pairing (v0.4: joint tokenization,
//! the tokenizer's BOS, the prefix token for an empty context). Either way the window is
//! `(ctx + cont)[-(max_len+1):][:-1]` and loglik = Σ log p(continuation tokens).
//!
//! Fast path (`cache: true`): all choices of an item share its context, so the context runs
//! through the model once and its KV cache serves every choice. B items are scored side by
//! side in the B sequences of one [`KvCache`], in rounds of B:
//! 1. items are ordered so that those sharing a long prefix of context tokens (a fixed
//!    few-shot block — Okapi's v0.4 MMLU —, TruthfulQA's QA prompt) are consecutive, each such
//!    group longest first, then the rest longest first (rounds of similar lengths pad little);
//! 2. a group's shared prefix is computed once, in a one-sequence cache, and its keys and
//!    values copied into each sequence that takes an item of the group ([`Model::cache_copy_prefix`]);
//!    other sequences start empty (a round never reuses what the previous round left, so each
//!    round computes the same numbers on whichever rank of a data-parallel run takes it);
//! 3. each sequence appends the rest of its item's context minus the last token (in chunks of
//!    at most `t_max` tokens per forward, without the LM head: nothing reads those logits);
//! 4. for choice j = 0, 1, …: each sequence appends `[last context token] + choice_j[:-1]` —
//!    row i of that block predicts `choice_j[i]`, so its log-prob comes out of
//!    `token_logprobs` on the device — then rewinds to its context length − 1
//!    ([`KvCache::rewind`]); items with fewer choices pass `n_new = 0`.
//!
//! Results are handed out round by round ([`score_items_streaming`]), so a caller can save
//! them as they come.
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
use std::collections::BTreeMap;
use okapi_runtime::collective::{all_gather_lists_f64, dealt_steps};
use okapi_runtime::{Backend, Collective, SingleProcess, IGNORE_INDEX};

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
    /// rows the cached forwards computed, padding included (≥ their real tokens)
    pub rows: usize,
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
    let mut out: Vec<Option<ItemScore>> = vec![None; items.len()];
    let stats = score_items_streaming(model, tok, items, opts, enc, &SingleProcess, &mut |done| {
        for (i, sc) in done {
            out[i] = Some(sc);
        }
        Ok(())
    })?;
    Ok((out.into_iter().map(|o| o.expect("every item is scored or invalid")).collect(), stats))
}

/// What [`score_items_streaming`] hands its caller: (item index, result) of the items just
/// finished. An error returned stops the scoring.
pub type OnScored<'a> = dyn FnMut(Vec<(usize, ItemScore)>) -> Result<(), ScoreError> + 'a;

/// Scores every item with `enc`'s pairing and window, handing results to `on_done` as they are
/// finished (the invalid ones first, then those scored from scratch, then round by round —
/// not in item order).
///
/// With several ranks (`comm`), every rank encodes every item; the units of work (a batch from
/// scratch, a round of the fast path) are dealt to the ranks in steps
/// ([`okapi_runtime::collective::dealt_steps`]), and after each step the results are gathered, so
/// every rank's `on_done` sees every item's result — bit for bit those of one process: a unit is
/// computed the same whichever rank takes it. The stats count this rank's work.
pub fn score_items_streaming<B: Backend>(model: &Model<B>, tok: &Tokenizer, items: &[ItemRequest], opts: ScoreOptions, enc: &PairEncoder, comm: &dyn Collective, on_done: &mut OnScored<'_>) -> Result<ScoreStats, ScoreError> {
    let max_len = enc.max_length;
    let mut stats = ScoreStats::default();
    let (mut fast, mut slow, mut invalid) = (Vec::new(), Vec::new(), Vec::new());
    let mut encs: Vec<Option<Enc>> = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        match encode_item(tok, enc, it)? {
            Err(msg) => {
                invalid.push((i, ItemScore::Invalid(msg)));
                encs.push(None);
            }
            Ok(e) => {
                if opts.cache && !e.over(max_len) { &mut fast } else { &mut slow }.push(i);
                encs.push(Some(e));
            }
        }
    }
    if !invalid.is_empty() {
        on_done(invalid)?;
    }
    let batch = opts.batch_size.max(1);
    let enc_of = |i: usize| encs[i].as_ref().expect("valid items are encoded");
    // from scratch: the baseline, and the items truncated to the window
    let slow_groups: Vec<&[usize]> = slow.chunks(batch).collect();
    let fast_encs: Vec<&Enc> = fast.iter().map(|&i| enc_of(i)).collect();
    let mut fast_path = if fast.is_empty() { None } else { Some(FastPath::new(model, fast_encs, batch, opts.chunk, &mut stats)?) };
    let units = slow_groups.len() + fast_path.as_ref().map_or(0, FastPath::rounds);
    for unit in dealt_steps(units, comm.rank(), comm.world()) {
        let done = match unit {
            None => Vec::new(),
            Some(k) if k < slow_groups.len() => {
                let group = slow_groups[k];
                let logliks = score_from_scratch(model, &group.iter().map(|&i| enc_of(i)).collect::<Vec<_>>(), max_len, batch, &mut stats)?;
                group.iter().zip(logliks).map(|(&i, logliks)| (i, ItemScore::Scored { logliks, truncated: enc_of(i).over(max_len) })).collect()
            }
            Some(k) => {
                let path = fast_path.as_mut().expect("fast rounds come from the fast path");
                path.round(model, k - slow_groups.len(), &mut stats)?.into_iter().map(|(f, logliks)| (fast[f], ItemScore::Scored { logliks, truncated: false })).collect()
            }
        };
        let done = gather_scores(comm, &done)?;
        if !done.is_empty() {
            on_done(done)?;
        }
    }
    stats.items_fallback = slow.len();
    stats.items_cached = fast.len();
    Ok(stats)
}

/// Every rank's scored items of one step, on every rank (rank order); one process: its own.
fn gather_scores(comm: &dyn Collective, done: &[(usize, ItemScore)]) -> Result<Vec<(usize, ItemScore)>, ScoreError> {
    // one list per item: its index, whether it was truncated, its logliks
    let mine = done
        .iter()
        .map(|(i, sc)| {
            let ItemScore::Scored { logliks, truncated } = sc else { unreachable!("invalid items are known to every rank and never gathered") };
            [vec![*i as f64, f64::from(u8::from(*truncated))], logliks.clone()].concat()
        })
        .collect();
    Ok(all_gather_lists_f64(comm, mine)?.into_iter().map(|l| (l[0] as usize, ItemScore::Scored { logliks: l[2..].to_vec(), truncated: l[1] != 0.0 })).collect())
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

/// Shortest shared prefix worth computing once for a group of items (tokens).
const MIN_SHARED: usize = 32;

/// Tokens `a` and `b` share at their start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The context part of an item that goes into the cache before its choices: all but the last
/// token (which starts every choice's block).
fn target(e: &Enc) -> &[u32] {
    &e.ctx[..e.ctx.len() - 1]
}

/// The fast path's order (module docs, step 1): at least a round's worth of items (`b`, and
/// two) sharing at least [`MIN_SHARED`] leading tokens form a group whose shared prefix is
/// computed once; groups come first, each longest first, then the ungrouped items longest
/// first. (Smaller groups — ARC items whose random draws happen to start with the same shot —
/// save less than reordering them costs in padding.)
struct Schedule {
    order: Vec<usize>,
    /// the shared prefix length of each item's group (0: none)
    shared: Vec<usize>,
}

impl Schedule {
    fn new(encs: &[&Enc], b: usize) -> Schedule {
        let n = encs.len();
        let mut lex: Vec<usize> = (0..n).collect();
        lex.sort_by(|&a, &b| target(encs[a]).cmp(target(encs[b])));
        // neighbours in lexicographic order share the longest prefixes; a run whose neighbours
        // all share ≥ MIN_SHARED shares their minimum
        let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
        let mut loose = Vec::new();
        let mut k = 0;
        while k < n {
            let (mut e, mut p) = (k, usize::MAX);
            while e + 1 < n {
                let c = common_prefix(target(encs[lex[e]]), target(encs[lex[e + 1]]));
                if c < MIN_SHARED {
                    break;
                }
                p = p.min(c);
                e += 1;
            }
            if e + 1 - k >= b.max(2) {
                groups.push((lex[k..=e].to_vec(), p));
            } else {
                loose.extend(&lex[k..=e]);
            }
            k = e + 1;
        }
        let by_length = |v: &mut Vec<usize>| v.sort_by_key(|&i| (std::cmp::Reverse(encs[i].ctx.len()), i));
        let mut shared = vec![0; n];
        let mut order = Vec::with_capacity(n);
        for (mut members, p) in groups {
            by_length(&mut members);
            members.iter().for_each(|&i| shared[i] = p);
            order.extend(members);
        }
        by_length(&mut loose);
        order.extend(loose);
        Schedule { order, shared }
    }
}

/// The one-sequence cache that computes a group's shared prefix once, and the tokens it holds.
struct PrefixCache<B: Backend> {
    cache: KvCache<B>,
    held: Vec<u32>,
}

impl<B: Backend> PrefixCache<B> {
    /// Makes the cache hold `prefix`, computed from its first token (a group's keys and values
    /// are then the same whichever groups this cache held before, i.e. on any rank).
    fn hold(&mut self, model: &Model<B>, prefix: &[u32], t_max: usize, stats: &mut ScoreStats) -> Result<(), ScoreError> {
        if self.held == prefix {
            return Ok(());
        }
        self.cache.rewind(0, 0);
        for piece in prefix.chunks(t_max) {
            model.prefill_cached(&mut self.cache, piece, piece.len(), &[piece.len()])?;
            stats.forwards += 1;
            stats.tokens += piece.len();
        }
        self.held = prefix.to_vec();
        Ok(())
    }
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
        stats.forwards += 1;
        stats.tokens += n_new.iter().sum::<usize>();
        stats.rows += self.b * t;
        if !any_target {
            // a context: only its keys and values are needed
            model.prefill_cached(cache, &tokens, t, &n_new)?;
            return Ok(None);
        }
        model.forward_cached(cache, &tokens, t, &n_new)?;
        let be = &model.be;
        be.write_ids(&mut self.targets, &targets);
        be.token_logprobs(&mut self.logp, &mut self.greedy, &cache.logits, &self.targets, okapi_runtime::Rows::new(self.b * t, self.v));
        Ok(Some((be.read(&self.logp, self.b * t), t)))
    }
}

/// The fast path (module docs) over `encs`: its schedule, caches and scratch; [`FastPath::round`]
/// scores one round.
struct FastPath<'e, B: Backend> {
    encs: Vec<&'e Enc>,
    plan: Schedule,
    /// sequences per round
    b: usize,
    cache: KvCache<B>,
    prefix: Option<PrefixCache<B>>,
    feed: Feed<B>,
}

impl<'e, B: Backend> FastPath<'e, B> {
    fn new(model: &Model<B>, encs: Vec<&'e Enc>, batch: usize, chunk: usize, stats: &mut ScoreStats) -> Result<Self, ScoreError> {
        let v = model.cfg.vocab_size;
        let b = batch.min(encs.len());
        let plan = Schedule::new(&encs, b);
        let longest_shared = plan.shared.iter().copied().max().unwrap_or(0);
        stats.shared_prefix = stats.shared_prefix.max(longest_shared);
        // sequence capacity: the longest context − 1 + its longest choice (≤ the window)
        let cap = encs.iter().map(|e| e.ctx.len() - 1 + e.conts.iter().map(Vec::len).max().unwrap_or(0)).max().unwrap_or(1);
        // tokens per sequence per forward: bounded so that the (B·t, V) logits stay ≤ 2^26 floats
        // (longer pieces, choices included, go through in several forwards)
        let auto = ((1usize << 26) / (b * v).max(1)).clamp(1, 256);
        let t_max = if chunk > 0 { chunk } else { auto }.min(cap);
        let cache = model.new_cache(b, cap, t_max)?;
        let prefix = match longest_shared {
            0 => None,
            p => Some(PrefixCache { cache: model.new_cache(1, p, t_max.min(p))?, held: Vec::new() }),
        };
        let eos = model.cfg.eos_token_id.unwrap_or(0);
        let be = &model.be;
        let feed = Feed::<B> { b, t_max, pad: model.cfg.pad_token_id.unwrap_or(eos).min(v as u32 - 1), v, targets: be.upload_ids(&vec![IGNORE_INDEX; b * t_max]), logp: be.zeros(b * t_max), greedy: be.zeros(b * t_max) };
        Ok(FastPath { encs, plan, b, cache, prefix, feed })
    }

    fn rounds(&self) -> usize {
        self.plan.order.len().div_ceil(self.b)
    }

    /// Round `k`: the logliks of every choice of its items, as (index into `encs`, logliks).
    /// Each sequence starts empty — or from its group's shared prefix, copied — rather than
    /// from what the previous round left in it, so a round's numbers do not depend on which
    /// rounds ran before it on this rank.
    fn round(&mut self, model: &Model<B>, k: usize, stats: &mut ScoreStats) -> Result<Vec<(usize, Vec<f64>)>, ScoreError> {
        let round = &self.plan.order[k * self.b..((k + 1) * self.b).min(self.plan.order.len())];
        let t_max = self.feed.t_max;
        let mut start = vec![0; self.b];
        for (s, &i) in round.iter().enumerate() {
            let p = self.plan.shared[i];
            let keep = match self.prefix.as_mut().filter(|_| p > 0) {
                Some(pc) => {
                    pc.hold(model, &target(self.encs[i])[..p], t_max.min(p), stats)?;
                    model.cache_copy_prefix(&mut self.cache, s, &pc.cache, 0, p)?;
                    p
                }
                None => 0,
            };
            self.cache.rewind(s, keep);
            start[s] = keep;
        }
        feed_contexts(model, &mut self.cache, &mut self.feed, &self.encs, round, &start, stats)?;
        let mut results: BTreeMap<usize, Vec<f64>> = round.iter().map(|&i| (i, vec![0.0; self.encs[i].conts.len()])).collect();
        score_choices(model, &mut self.cache, &mut self.feed, &self.encs, round, &mut results, stats)?;
        Ok(results.into_iter().collect())
    }
}

/// Step 3 of the fast path: the contexts of a round from each sequence's `start` to their
/// last token (excluded), `t_max` tokens per sequence per forward.
fn feed_contexts<B: Backend>(model: &Model<B>, cache: &mut KvCache<B>, feed: &mut Feed<B>, encs: &[&Enc], round: &[usize], start: &[usize], stats: &mut ScoreStats) -> Result<(), ScoreError> {
    let b = feed.b;
    let mut off = start.to_vec();
    loop {
        let pieces: Vec<(&[u32], Option<&[u32]>)> = (0..b)
            .map(|s| match round.get(s) {
                Some(&i) => {
                    let want = target(encs[i]);
                    let end = (off[s] + feed.t_max).min(want.len());
                    (&want[off[s]..end], None)
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

/// Step 4 of the fast path: the choices of a round, one per sequence per step: \[last context
/// token\] + choice\[:-1\], predicting choice\[..\]; each sequence's cache is rewound to its
/// context after each choice.
fn score_choices<B: Backend>(model: &Model<B>, cache: &mut KvCache<B>, feed: &mut Feed<B>, encs: &[&Enc], round: &[usize], results: &mut BTreeMap<usize, Vec<f64>>, stats: &mut ScoreStats) -> Result<(), ScoreError> {
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
    // step j feeds each sequence's j-th longest choice: the blocks of one forward have similar
    // lengths, so little of it is padding
    let ranked: Vec<Vec<usize>> = round
        .iter()
        .map(|&i| {
            let mut r: Vec<usize> = (0..encs[i].conts.len()).collect();
            r.sort_by_key(|&c| std::cmp::Reverse(encs[i].conts[c].len()));
            r
        })
        .collect();
    for j in 0..n_choices {
        let mut done = vec![0usize; b];
        let choice = |s: usize| ranked.get(s).and_then(|r| r.get(j)).copied();
        loop {
            let pieces: Vec<(&[u32], Option<&[u32]>)> = (0..b)
                .map(|s| match (round.get(s), choice(s)) {
                    (Some(&i), Some(c)) => {
                        let f = &fed[s][c];
                        let end = (done[s] + feed.t_max).min(f.len());
                        (&f[done[s]..end], Some(&encs[i].conts[c][done[s]..end]))
                    }
                    _ => (&[][..], None),
                })
                .collect();
            let Some((lp, t)) = feed.run(model, cache, &pieces, stats)? else { break };
            for (s, pc) in pieces.iter().enumerate().filter(|(_, pc)| !pc.0.is_empty()) {
                let c = choice(s).expect("a sequence with a piece has a choice");
                results.get_mut(&round[s]).expect("a result per item of the round")[c] += lp[s * t..s * t + pc.0.len()].iter().map(|&x| x as f64).sum::<f64>();
                done[s] += pc.0.len();
            }
        }
        for (s, &i) in round.iter().enumerate() {
            if choice(s).is_some() {
                cache.rewind(s, encs[i].ctx.len() - 1);
            }
        }
    }
    Ok(())
}
