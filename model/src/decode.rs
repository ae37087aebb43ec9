//! Incremental decoding with a KV cache: batched, each sequence with its own length, for
//! generation, PPO rollouts and shared-context scoring.

use crate::acts::LayerActs;
use crate::error::{ModelError, Result};
use crate::forward::{AttnCtx, KvSlot};
use crate::model::Model;
use okapi_runtime::{Backend, Gemm};

/// Keys and values of every layer for `batch` sequences of up to `cap` tokens, plus the
/// scratch of one forward over at most `t_max` new tokens per sequence.
pub struct KvCache<B: Backend> {
    pub batch: usize,
    pub cap: usize,
    pub t_max: usize,
    /// tokens held per sequence
    pub lens: Vec<usize>,
    k: Vec<B::Buf>,
    v: Vec<B::Buf>,
    la: LayerActs<B>,
    x: [B::Buf; 2],
    lnf: B::Buf,
    lnf_mean: B::Buf,
    lnf_rstd: B::Buf,
    emb: B::Buf,
    ids: B::Ids,
    positions: B::Ids,
    q_pos0: B::Ids,
    kv_len: B::Ids,
    /// (batch·t, V) logits of the last `forward_cached` call; (batch, V) after `forward_cached_last`
    pub logits: B::Buf,
    /// row of each sequence's last new token in `lnf`, and those rows gathered (batch, C)
    last_rows: B::Ids,
    lnf_last: B::Buf,
    /// `t` of the last call (logits row of sequence b, new token i: b·t + i)
    pub last_t: usize,
    /// f32 copies of a bf16-packed block's weights
    stage: Option<crate::bf16::Stage<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn reset(&mut self) {
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    /// Forgets sequence `seq`'s tokens from position `len` on (`len` ≤ what it holds): the next
    /// `forward_cached` appends at `len`, overwriting them. Shared-context scoring rewinds to a
    /// context's length after each continuation.
    pub fn rewind(&mut self, seq: usize, len: usize) {
        assert!(len <= self.lens[seq], "rewind sequence {seq} to {len}: it holds only {} tokens", self.lens[seq]);
        self.lens[seq] = len;
    }
}

impl<B: Backend> Model<B> {
    /// A KV cache for `batch` sequences of up to `cap` tokens, fed `t_max` at a time; refused
    /// (before allocating) when it does not fit in the memory left.
    pub fn new_cache(&self, batch: usize, cap: usize, t_max: usize) -> Result<KvCache<B>> {
        let bytes = crate::memory::kv_cache_bytes(&self.cfg, batch, cap, t_max);
        let what = format!("a KV cache of {batch} sequences × {cap} tokens");
        crate::memory::Need::new(what, "lower the new-token count or the batch size").device("KV cache and decoding buffers", bytes).check(&self.be)?;
        let be = &self.be;
        let cfg = &self.cfg;
        let (c, kw, n) = (cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, batch * t_max);
        Ok(KvCache {
            batch,
            cap,
            t_max,
            lens: vec![0; batch],
            k: (0..cfg.n_layers).map(|_| be.zeros(batch * cap * kw)).collect(),
            v: (0..cfg.n_layers).map(|_| be.zeros(batch * cap * kw)).collect(),
            la: LayerActs::new(be, cfg, n),
            x: [be.zeros(n * c), be.zeros(n * c)],
            lnf: be.zeros(n * c),
            lnf_mean: be.zeros(n),
            lnf_rstd: be.zeros(n),
            emb: be.zeros(n * c),
            ids: be.upload_ids(&vec![0; n]),
            positions: be.upload_ids(&vec![0; n]),
            q_pos0: be.upload_ids(&vec![0; batch]),
            kv_len: be.upload_ids(&vec![0; batch]),
            logits: be.zeros(n * cfg.vocab_size),
            last_rows: be.upload_ids(&vec![0; batch]),
            lnf_last: be.zeros(batch * c),
            last_t: 0,
            stage: self.new_stage(),
        })
    }

    /// Appends `n_new[b]` tokens to each sequence b. `tokens` is (batch, t) row-major, each row's
    /// first `n_new[b]` entries real (the rest padding, ignored). Fills `cache.logits` with the
    /// logits of all (batch, t) positions; those of real tokens equal a full forward's.
    pub fn forward_cached(&self, cache: &mut KvCache<B>, tokens: &[u32], t: usize, n_new: &[usize]) -> Result<()> {
        self.forward_cached_rows(cache, tokens, t, n_new, HeadRows::All)
    }

    /// As `forward_cached`, but the LM head runs only on each sequence's last new token:
    /// `cache.logits` row b holds the next-token logits of sequence b (what generation needs; a
    /// prompt of T tokens then costs one (B,V) head instead of (B·T,V)). A sequence with no new
    /// token gets the row of its slot 0 (meaningless; callers skip it).
    pub fn forward_cached_last(&self, cache: &mut KvCache<B>, tokens: &[u32], t: usize, n_new: &[usize]) -> Result<()> {
        self.forward_cached_rows(cache, tokens, t, n_new, HeadRows::Last)
    }

    /// As `forward_cached`, without the final norm and LM head: only the cache advances
    /// (`cache.logits` is left as it was) — a context whose next-token predictions nobody reads
    /// (scoring's contexts) skips its (B·t, V) head.
    pub fn prefill_cached(&self, cache: &mut KvCache<B>, tokens: &[u32], t: usize, n_new: &[usize]) -> Result<()> {
        self.forward_cached_rows(cache, tokens, t, n_new, HeadRows::None)
    }

    /// Makes sequence `to` of `dst` hold the first `len` positions of sequence `from` of `src`
    /// (keys and values of every layer copied; `dst` may be `src`'s twin of another batch
    /// size): a prefix computed once serves several sequences. Positions past `len` in `to` are
    /// forgotten.
    pub fn cache_copy_prefix(&self, dst: &mut KvCache<B>, to: usize, src: &KvCache<B>, from: usize, len: usize) -> Result<()> {
        if len > src.lens[from] || len > dst.cap || to >= dst.batch {
            return Err(ModelError::Other(format!("cache_copy_prefix: {len} positions of sequence {from} (holding {}) into sequence {to} of a cache of {} × {}", src.lens[from], dst.batch, dst.cap)));
        }
        let kw = self.cfg.n_kv_heads * self.cfg.head_dim;
        for (d, s) in dst.k.iter_mut().zip(&src.k).chain(dst.v.iter_mut().zip(&src.v)) {
            self.be.copy_range(d, to * dst.cap * kw, s, from * src.cap * kw, len * kw);
        }
        dst.lens[to] = len;
        Ok(())
    }

    fn forward_cached_rows(&self, cache: &mut KvCache<B>, tokens: &[u32], t: usize, n_new: &[usize], head_rows: HeadRows) -> Result<()> {
        let be = &self.be;
        let cfg = &self.cfg;
        let b = cache.batch;
        if t > cache.t_max || tokens.len() != b * t || n_new.len() != b {
            return Err(ModelError::Other(format!("forward_cached: {} tokens as ({b},{t}) do not fit the cache's ({b},{})", tokens.len(), cache.t_max)));
        }
        for (s, (&len, &nn)) in cache.lens.iter().zip(n_new).enumerate() {
            if nn > t || len + nn > cache.cap {
                return Err(ModelError::Other(format!("sequence {s}: {len} cached + {nn} new tokens exceed the cache capacity {}", cache.cap)));
            }
        }
        self.check_tokens(tokens)?;
        let head = self.lm_head()?;
        let n = b * t;
        let c = cfg.hidden_size;
        be.write_ids(&mut cache.ids, tokens);
        let positions: Vec<u32> = (0..n).map(|i| (cache.lens[i / t] + i % t) as u32).collect();
        be.write_ids(&mut cache.positions, &positions);
        be.write_ids(&mut cache.q_pos0, &cache.lens.iter().map(|&l| l as u32).collect::<Vec<_>>());
        be.write_ids(&mut cache.kv_len, &cache.lens.iter().zip(n_new).map(|(&l, &nn)| (l + nn) as u32).collect::<Vec<_>>());
        let KvCache { k, v, la, x, lnf, lnf_mean, lnf_rstd, emb, ids, positions, q_pos0, kv_len, logits, cap, last_rows, lnf_last, stage, .. } = cache;
        let [x0, x1] = x;
        // an embedding norm's statistics land in the final norm's (free until the end)
        self.embed_rows(x0, [emb, lnf_mean, lnf_rstd], ids, n);
        for (l, blk) in self.blocks.iter().enumerate() {
            let (x_in, x_out) = if l % 2 == 0 { (&*x0, &mut *x1) } else { (&*x1, &mut *x0) };
            let slot = KvSlot { k: &mut k[l], v: &mut v[l], cap: *cap };
            self.stage_block(blk, stage);
            let ctx = AttnCtx { positions: &*positions, q_pos0: &*q_pos0, kv_len: &*kv_len, b, t, stage: stage.as_ref() };
            self.block_fwd(blk, la, x_in, x_out, &ctx, Some(slot));
        }
        let x_last = if cfg.n_layers.is_multiple_of(2) { &*x0 } else { &*x1 };
        match head_rows {
            HeadRows::None => {}
            HeadRows::Last => {
                self.norm_fwd(&self.ln_f, lnf, lnf_mean, lnf_rstd, x_last, n);
                // gather each sequence's last new row (an embedding lookup with lnf as the table)
                let rows: Vec<u32> = n_new.iter().enumerate().map(|(s, &nn)| (s * t + nn.max(1) - 1) as u32).collect();
                be.write_ids(last_rows, &rows);
                be.embedding_fwd(lnf_last, lnf, last_rows, okapi_runtime::Rows::new(b, c));
                be.matmul(logits, lnf_last, &self.values[head], &Gemm::new(b, cfg.vocab_size, c).trans_b());
                self.softcap_fwd(logits, b * cfg.vocab_size);
            }
            HeadRows::All => {
                self.norm_fwd(&self.ln_f, lnf, lnf_mean, lnf_rstd, x_last, n);
                be.matmul(logits, lnf, &self.values[head], &Gemm::new(n, cfg.vocab_size, c).trans_b());
                self.softcap_fwd(logits, n * cfg.vocab_size);
            }
        }
        for (len, &nn) in cache.lens.iter_mut().zip(n_new) {
            *len += nn;
        }
        if head_rows != HeadRows::None {
            cache.last_t = t;
        }
        Ok(())
    }
}

/// Which rows of a cached forward go through the final norm and the LM head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeadRows {
    All,
    Last,
    None,
}
