//! Forward and backward passes, explicit per layer (llm.c style): the forward saves what the
//! backward needs in `Acts`; the backward walks the layers in reverse, overwriting (`=`) its
//! scratch gradients and accumulating (`+=`) parameter gradients and the residual stream's.

use crate::lora::LayerIn;
use crate::acts::{Acts, Grads, LayerActs, Scratch};
use crate::bf16::Stage;
use crate::error::{ModelError, Result};
use crate::arch::MlpKind;
use crate::model::{Block, Linear, Model, Norm};
use okapi_runtime::{AttnGrads, AttnInputs, AttnShape, Backend, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, RmsNormBwd, RmsNormFwd, RopeShape, Rows};

/// Where a block's attention reads its positions and keys.
pub(crate) struct AttnCtx<'a, B: Backend> {
    pub positions: &'a B::Ids,
    pub q_pos0: &'a B::Ids,
    pub kv_len: &'a B::Ids,
    pub b: usize,
    pub t: usize,
    /// the block's bf16-packed weights, unpacked (`None`: nothing packed)
    pub stage: Option<&'a Stage<B>>,
}

/// A layer's KV cache slot: keys and values (B,cap,Hkv·D) written at each sequence's length.
pub(crate) struct KvSlot<'a, B: Backend> {
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub cap: usize,
}

/// A gradient output that an op overwrites (`=`) or accumulates into (`+=`).
pub(crate) enum Out<'a, B: Backend> {
    Set(&'a mut B::Buf),
    Add(&'a mut B::Buf),
}

/// What a norm's backward reads from its forward: the input x (N,C) and the saved statistics
/// (`mean` is LayerNorm's; RMSNorm ignores it).
pub(crate) struct NormSaved<'a, B: Backend> {
    pub x: &'a B::Buf,
    pub mean: &'a B::Buf,
    pub rstd: &'a B::Buf,
}

impl<B: Backend> Model<B> {
    /// Activation arenas for batches up to (cap_b, cap_t), checkpointed when
    /// [`Model::grad_checkpointing`](crate::Model::grad_checkpointing) is on.
    pub fn new_acts(&self, cap_b: usize, cap_t: usize) -> Acts<B> {
        let mut acts = Acts::new(&self.be, &self.cfg, cap_b, cap_t, self.grad_checkpointing, self.head_chunk);
        acts.stage = self.new_stage();
        acts
    }

    pub fn new_scratch(&self, cap_b: usize, cap_t: usize) -> Scratch<B> {
        Scratch::new(&self.be, &self.cfg, cap_b * cap_t)
    }

    /// Zeroed gradients for every parameter (`trainable(i)` false → frozen, no buffer).
    pub fn new_grads(&self, trainable: impl Fn(usize) -> bool) -> Grads<B> {
        let trainable: Vec<bool> = (0..self.info.len()).map(trainable).collect();
        Grads { bufs: self.info.iter().zip(&trainable).map(|(p, &t)| t.then(|| self.be.zeros(p.numel()))).collect(), trainable, hook: None }
    }

    pub fn zero_grads(&self, g: &mut Grads<B>) {
        for (i, buf) in g.bufs.iter_mut().enumerate() {
            if let Some(buf) = buf {
                self.be.fill(buf, 0.0, self.info[i].numel());
            }
        }
    }

    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Other(format!("token id {bad} is outside the model's vocabulary of {} (tokenizer and model do not match)", self.cfg.vocab_size)));
        }
        Ok(())
    }

    // ---- layer primitives -----------------------------------------------------------------

    /// out (N,d_out) = x (N,d_in) · Wᵀ + b
    pub(crate) fn linear_fwd(&self, out: &mut B::Buf, x: &B::Buf, lin: &Linear, n: usize) {
        self.linear_fwd_staged(out, x, lin, n, None);
    }

    /// [`Model::linear_fwd`] reading a bf16-packed weight from the block's stage.
    pub(crate) fn linear_fwd_staged(&self, out: &mut B::Buf, x: &B::Buf, lin: &Linear, n: usize, stage: Option<&Stage<B>>) {
        self.be.matmul(out, x, self.weight(lin.w, stage), &Gemm::new(n, lin.d_out, lin.d_in).trans_b());
        if let Some(b) = lin.b {
            self.be.bias_add(out, &self.values[b], Rows::new(n, lin.d_out));
        }
    }

    /// [`Model::linear_fwd_staged`] plus the layer's LoRA adapter, if any (`work`: its scratch u, xd).
    fn adapted_fwd(&self, out: &mut B::Buf, x: &B::Buf, lin: &Linear, n: usize, stage: Option<&Stage<B>>, work: [&mut B::Buf; 2]) {
        self.linear_fwd_staged(out, x, lin, n, stage);
        self.lora_fwd(out, x, lin, n, work);
    }

    /// [`Model::linear_bwd`] plus the layer's LoRA adapter, if any (`work`: its scratch u, du, xd).
    fn adapted_bwd(&self, dx: Out<'_, B>, dy: &B::Buf, layer: LayerIn<'_, B>, grads: &mut Grads<B>, work: [&mut B::Buf; 3]) {
        let LayerIn { x, lin, n } = layer;
        let dx = match dx {
            Out::Set(b) => {
                self.linear_bwd(Out::Set(&mut *b), dy, x, lin, n, grads);
                b
            }
            Out::Add(b) => {
                self.linear_bwd(Out::Add(&mut *b), dy, x, lin, n, grads);
                b
            }
        };
        self.lora_bwd(dx, dy, layer, grads, work);
    }

    /// dx (`=` or `+=`, as `dx` says) = dy·W;  dW += dyᵀ·x;  db += Σ dy. dy (N,d_out), x (N,d_in).
    pub(crate) fn linear_bwd(&self, dx: Out<'_, B>, dy: &B::Buf, x: &B::Buf, lin: &Linear, n: usize, grads: &mut Grads<B>) {
        let g = Gemm::new(n, lin.d_in, lin.d_out);
        let (dx, g) = match dx {
            Out::Set(b) => (b, g),
            Out::Add(b) => (b, g.accumulate()),
        };
        self.be.matmul(dx, dy, &self.values[lin.w], &g);
        if let Some(gw) = grads.get_mut(lin.w) {
            self.be.matmul(gw, dy, x, &Gemm::new(lin.d_out, lin.d_in, n).trans_a().accumulate());
        }
        if let Some(gb) = lin.b.and_then(|b| grads.get_mut(b)) {
            self.be.bias_bwd(gb, dy, Rows::new(n, lin.d_out));
        }
    }

    /// A hidden-width norm over n rows (Gemma's scale by 1 + w).
    fn norm_shape(&self, n: usize) -> NormShape {
        let sh = NormShape::new(n, self.cfg.hidden_size, self.cfg.norm_eps);
        if self.cfg.features.norm_plus_one {
            sh.weight_offset(1.0)
        } else {
            sh
        }
    }

    /// out (N,C) = norm(x); the statistics (`mean` only for LayerNorm) are saved for backward.
    pub(crate) fn norm_fwd(&self, nm: &Norm, out: &mut B::Buf, mean: &mut B::Buf, rstd: &mut B::Buf, x: &B::Buf, n: usize) {
        self.norm_fwd_shaped(nm, out, mean, rstd, x, &self.norm_shape(n));
    }

    /// [`Model::norm_fwd`] over rows of another width (Qwen3's per-head q/k norms: N·H rows of D).
    fn norm_fwd_shaped(&self, nm: &Norm, out: &mut B::Buf, mean: &mut B::Buf, rstd: &mut B::Buf, x: &B::Buf, sh: &NormShape) {
        let (w, sh) = (&self.values[nm.w], *sh);
        match nm.b {
            None => self.be.rmsnorm_fwd(RmsNormFwd { out, rstd, x, w }, &sh),
            Some(b) => self.be.layernorm_fwd(LayerNormFwd { out, mean, rstd, x, w, b: &self.values[b] }, &sh),
        }
    }

    /// dx += ∂L/∂x; parameter gradients += (into a throw-away buffer when frozen). `saved` =
    /// the forward's input x and statistics (mean, rstd).
    pub(crate) fn norm_bwd(&self, nm: &Norm, dx: &mut B::Buf, dy: &B::Buf, saved: NormSaved<'_, B>, n: usize, grads: &mut Grads<B>) {
        self.norm_bwd_shaped(nm, dx, dy, saved, &self.norm_shape(n), grads);
    }

    /// [`Model::norm_bwd`] over rows of another width (see [`Model::norm_fwd_shaped`]).
    fn norm_bwd_shaped(&self, nm: &Norm, dx: &mut B::Buf, dy: &B::Buf, saved: NormSaved<'_, B>, sh: &NormShape, grads: &mut Grads<B>) {
        let (c, sh, w) = (sh.c, *sh, &self.values[nm.w]);
        let NormSaved { x, mean, rstd } = saved;
        let (mut spare_w, mut spare_b) = (None, None);
        match nm.b {
            None => {
                let gw = match grads.bufs[nm.w].as_mut() {
                    Some(g) => g,
                    None => spare_w.insert(self.be.zeros(c)),
                };
                self.be.rmsnorm_bwd(RmsNormBwd { dx, dw: gw, dy, x, w, rstd }, &sh);
            }
            Some(bi) => {
                // the bias is registered right after the weight: split the table between them
                let (lo, hi) = grads.bufs.split_at_mut(bi);
                let gw = match lo[nm.w].as_mut() {
                    Some(g) => g,
                    None => spare_w.insert(self.be.zeros(c)),
                };
                let gb = match hi[0].as_mut() {
                    Some(g) => g,
                    None => spare_b.insert(self.be.zeros(c)),
                };
                self.be.layernorm_bwd(LayerNormBwd { dx, dw: gw, db: gb, dy, x, w, mean, rstd }, &sh);
            }
        }
    }

    /// Block `blk`'s attention over `tk` keys (its sliding window, if any).
    fn attn_shape(&self, blk: &Block, b: usize, t: usize, tk: usize) -> AttnShape {
        let c = &self.cfg;
        AttnShape { batch: b, tq: t, tk, n_heads: c.n_heads, n_kv_heads: c.n_kv_heads, head_dim: c.head_dim, scale: c.features.attn_scale, causal: true, window: blk.window, softcap: c.features.attn_softcap.unwrap_or(0.0) }
    }

    /// Rows of one head's q or k for the per-head norms: N·H rows of D.
    fn head_norm_shape(&self, rows: usize) -> NormShape {
        NormShape::new(rows, self.cfg.head_dim, self.cfg.norm_eps)
    }

    // ---- block ----------------------------------------------------------------------------

    pub(crate) fn block_fwd(&self, blk: &Block, la: &mut LayerActs<B>, x_in: &B::Buf, x_out: &mut B::Buf, ctx: &AttnCtx<B>, kv: Option<KvSlot<B>>) {
        let st = ctx.stage;
        let be = &self.be;
        let cfg = &self.cfg;
        let n = ctx.b * ctx.t;
        let (hq, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        self.norm_fwd(&blk.ln1, &mut la.ln1, &mut la.ln1_mean, &mut la.ln1_rstd, x_in, n);
        match blk.q_norm.zip(blk.k_norm) {
            None => {
                self.adapted_fwd(&mut la.q, &la.ln1, &blk.q, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.adapted_fwd(&mut la.k, &la.ln1, &blk.k, n, st, [&mut la.lora_u, &mut la.lora_x]);
            }
            Some((qn, kn)) => {
                // q = norm(q_pre), k = norm(k_pre) per head, before RoPE
                self.adapted_fwd(&mut la.q_pre, &la.ln1, &blk.q, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.adapted_fwd(&mut la.k_pre, &la.ln1, &blk.k, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.norm_fwd_shaped(&qn, &mut la.q, &mut la.ln1_mean, &mut la.q_rstd, &la.q_pre, &self.head_norm_shape(n * hq));
                self.norm_fwd_shaped(&kn, &mut la.k, &mut la.ln1_mean, &mut la.k_rstd, &la.k_pre, &self.head_norm_shape(n * hkv));
            }
        }
        self.adapted_fwd(&mut la.v, &la.ln1, &blk.v, n, st, [&mut la.lora_u, &mut la.lora_x]);
        if let Some(inv_freq) = &self.rope_inv_freq {
            be.rope_fwd(&mut la.q, ctx.positions, inv_freq, &RopeShape::new(n, hq, d));
            be.rope_fwd(&mut la.k, ctx.positions, inv_freq, &RopeShape::new(n, hkv, d));
        }
        match kv {
            None => {
                let sh = self.attn_shape(blk, ctx.b, ctx.t, ctx.t);
                let x = AttnInputs { q: &la.q, k: &la.k, v: &la.v, q_pos0: ctx.q_pos0, kv_len: ctx.kv_len, alibi: self.alibi.as_ref() };
                be.attention_fwd(&mut la.att, &mut la.lse, &x, &sh);
            }
            Some(slot) => {
                let kv_sh = KvShape { batch: ctx.b, t_new: ctx.t, t_cap: slot.cap, width: hkv * d };
                be.kv_write(slot.k, &la.k, ctx.q_pos0, &kv_sh);
                be.kv_write(slot.v, &la.v, ctx.q_pos0, &kv_sh);
                let sh = self.attn_shape(blk, ctx.b, ctx.t, slot.cap);
                let x = AttnInputs { q: &la.q, k: &*slot.k, v: &*slot.v, q_pos0: ctx.q_pos0, kv_len: ctx.kv_len, alibi: self.alibi.as_ref() };
                be.attention_fwd(&mut la.att, &mut la.lse, &x, &sh);
            }
        }
        // x_mid = x_in + o(att)   (sandwich norms: x_in + norm(o(att)); the norm's mean slot is
        // ln2's, unused by an RMSNorm and rewritten by ln2 below)
        match blk.post_attn_norm {
            None => self.adapted_fwd(&mut la.x_mid, &la.att, &blk.o, n, st, [&mut la.lora_u, &mut la.lora_x]),
            Some(pn) => {
                self.adapted_fwd(&mut la.o_out, &la.att, &blk.o, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.norm_fwd(&pn, &mut la.x_mid, &mut la.ln2_mean, &mut la.o_rstd, &la.o_out, n);
            }
        }
        be.axpy(&mut la.x_mid, 1.0, x_in, n * cfg.hidden_size);
        self.norm_fwd(&blk.ln2, &mut la.ln2, &mut la.ln2_mean, &mut la.ln2_rstd, &la.x_mid, n);
        let nf = n * cfg.intermediate_size;
        match (&blk.gate, cfg.features.mlp) {
            (Some(gate), kind) => {
                self.adapted_fwd(&mut la.mlp_a, &la.ln2, gate, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.adapted_fwd(&mut la.mlp_b, &la.ln2, &blk.up, n, st, [&mut la.lora_u, &mut la.lora_x]);
                if kind == MlpKind::GeGlu {
                    be.geglu_fwd(&mut la.mlp_h, &la.mlp_a, &la.mlp_b, nf);
                } else {
                    be.swiglu_fwd(&mut la.mlp_h, &la.mlp_a, &la.mlp_b, nf);
                }
            }
            (None, _) => {
                self.adapted_fwd(&mut la.mlp_a, &la.ln2, &blk.up, n, st, [&mut la.lora_u, &mut la.lora_x]);
                be.gelu_fwd(&mut la.mlp_h, &la.mlp_a, nf);
            }
        }
        // x_out = x_mid + down(h)   (sandwich norms: x_mid + norm(down(h)))
        match blk.post_ffn_norm {
            None => self.adapted_fwd(x_out, &la.mlp_h, &blk.down, n, st, [&mut la.lora_u, &mut la.lora_x]),
            Some(pn) => {
                self.adapted_fwd(&mut la.down_out, &la.mlp_h, &blk.down, n, st, [&mut la.lora_u, &mut la.lora_x]);
                self.norm_fwd(&pn, x_out, &mut la.ln1_mean, &mut la.down_rstd, &la.down_out, n);
            }
        }
        be.axpy(x_out, 1.0, &la.x_mid, n * cfg.hidden_size);
    }

    /// On entry `s.dres` = ∂L/∂x_out; on exit ∂L/∂x_in. Parameter gradients accumulate.
    pub(crate) fn block_bwd(&self, blk: &Block, la: &LayerActs<B>, x_in: &B::Buf, s: &mut Scratch<B>, ctx: &AttnCtx<B>, grads: &mut Grads<B>) {
        let be = &self.be;
        let cfg = &self.cfg;
        let n = ctx.b * ctx.t;
        let (hq, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let nf = n * cfg.intermediate_size;
        // MLP branch (through the sandwich norm into `dsub` first, when there is one)
        if let Some(pn) = blk.post_ffn_norm {
            be.fill(&mut s.dsub, 0.0, n * cfg.hidden_size);
            self.norm_bwd(&pn, &mut s.dsub, &s.dres, NormSaved { x: &la.down_out, mean: &la.ln1_mean, rstd: &la.down_rstd }, n, grads);
        }
        let dy = if blk.post_ffn_norm.is_some() { &s.dsub } else { &s.dres };
        self.adapted_bwd(Out::Set(&mut s.dh), dy, LayerIn { x: &la.mlp_h, lin: &blk.down, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
        match &blk.gate {
            Some(gate) => {
                if cfg.features.mlp == MlpKind::GeGlu {
                    be.geglu_bwd(&mut s.da, &mut s.db, &s.dh, &la.mlp_a, &la.mlp_b, nf);
                } else {
                    be.swiglu_bwd(&mut s.da, &mut s.db, &s.dh, &la.mlp_a, &la.mlp_b, nf);
                }
                self.adapted_bwd(Out::Set(&mut s.dln), &s.da, LayerIn { x: &la.ln2, lin: gate, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
                self.adapted_bwd(Out::Add(&mut s.dln), &s.db, LayerIn { x: &la.ln2, lin: &blk.up, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
            }
            None => {
                be.gelu_bwd(&mut s.da, &s.dh, &la.mlp_a, nf);
                self.adapted_bwd(Out::Set(&mut s.dln), &s.da, LayerIn { x: &la.ln2, lin: &blk.up, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
            }
        }
        self.norm_bwd(&blk.ln2, &mut s.dres, &s.dln, NormSaved { x: &la.x_mid, mean: &la.ln2_mean, rstd: &la.ln2_rstd }, n, grads);
        // attention branch
        if let Some(pn) = blk.post_attn_norm {
            be.fill(&mut s.dsub, 0.0, n * cfg.hidden_size);
            self.norm_bwd(&pn, &mut s.dsub, &s.dres, NormSaved { x: &la.o_out, mean: &la.ln2_mean, rstd: &la.o_rstd }, n, grads);
        }
        let dy = if blk.post_attn_norm.is_some() { &s.dsub } else { &s.dres };
        self.adapted_bwd(Out::Set(&mut s.datt), dy, LayerIn { x: &la.att, lin: &blk.o, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
        let sh = self.attn_shape(blk, ctx.b, ctx.t, ctx.t);
        let x = AttnInputs { q: &la.q, k: &la.k, v: &la.v, q_pos0: ctx.q_pos0, kv_len: ctx.kv_len, alibi: self.alibi.as_ref() };
        be.attention_bwd(AttnGrads { dq: &mut s.dq, dk: &mut s.dk, dv: &mut s.dv }, &s.datt, &la.att, &la.lse, &x, &sh);
        if let Some(inv_freq) = &self.rope_inv_freq {
            be.rope_bwd(&mut s.dq, ctx.positions, inv_freq, &RopeShape::new(n, hq, d));
            be.rope_bwd(&mut s.dk, ctx.positions, inv_freq, &RopeShape::new(n, hkv, d));
        }
        match blk.q_norm.zip(blk.k_norm) {
            None => {
                self.adapted_bwd(Out::Set(&mut s.dln), &s.dq, LayerIn { x: &la.ln1, lin: &blk.q, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
                self.adapted_bwd(Out::Add(&mut s.dln), &s.dk, LayerIn { x: &la.ln1, lin: &blk.k, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
            }
            Some((qn, kn)) => {
                // through the per-head norms into `dqk` (=), q's then k's, each before its projection
                be.fill(&mut s.dqk, 0.0, n * hq * d);
                self.norm_bwd_shaped(&qn, &mut s.dqk, &s.dq, NormSaved { x: &la.q_pre, mean: &la.ln1_mean, rstd: &la.q_rstd }, &self.head_norm_shape(n * hq), grads);
                self.adapted_bwd(Out::Set(&mut s.dln), &s.dqk, LayerIn { x: &la.ln1, lin: &blk.q, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
                be.fill(&mut s.dqk, 0.0, n * hkv * d);
                self.norm_bwd_shaped(&kn, &mut s.dqk, &s.dk, NormSaved { x: &la.k_pre, mean: &la.ln1_mean, rstd: &la.k_rstd }, &self.head_norm_shape(n * hkv), grads);
                self.adapted_bwd(Out::Add(&mut s.dln), &s.dqk, LayerIn { x: &la.ln1, lin: &blk.k, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
            }
        }
        self.adapted_bwd(Out::Add(&mut s.dln), &s.dv, LayerIn { x: &la.ln1, lin: &blk.v, n }, grads, [&mut s.lora_u, &mut s.lora_du, &mut s.lora_x]);
        self.norm_bwd(&blk.ln1, &mut s.dres, &s.dln, NormSaved { x: x_in, mean: &la.ln1_mean, rstd: &la.ln1_rstd }, n, grads);
    }

    // ---- whole model ----------------------------------------------------------------------

    /// Embedding (+ BLOOM's embedding LayerNorm) of `acts.ids` into x[0].
    fn embed_fwd(&self, acts: &mut Acts<B>, n: usize) {
        let Acts { x, emb, emb_mean, emb_rstd, ids, .. } = acts;
        self.embed_rows(&mut x[0], [emb, emb_mean, emb_rstd], ids, n);
    }

    /// out (N,C) = the embedding rows of `ids`, then (as the features say) BLOOM's embedding norm
    /// — `saved`: the raw rows and the norm's statistics — or Gemma's √C scale. Shared by the
    /// training forward and KV-cache decoding.
    pub(crate) fn embed_rows(&self, out: &mut B::Buf, saved: [&mut B::Buf; 3], ids: &B::Ids, n: usize) {
        let c = self.cfg.hidden_size;
        let [emb, mean, rstd] = saved;
        match &self.emb_ln {
            None => self.be.embedding_fwd(out, &self.values[self.embed], ids, Rows::new(n, c)),
            Some(ln) => {
                self.be.embedding_fwd(emb, &self.values[self.embed], ids, Rows::new(n, c));
                self.norm_fwd(ln, out, mean, rstd, emb, n);
            }
        }
        if self.cfg.features.embed_scale {
            self.be.scale(out, self.embed_scale(), n * c);
        }
    }

    /// Gemma's embedding scale √C, rounded to f32 as transformers rounds it to the hidden dtype.
    fn embed_scale(&self) -> f32 {
        (self.cfg.hidden_size as f64).sqrt() as f32
    }

    /// The trunk's forward of a (B,T) batch of token ids (row-major) up to the final norm's
    /// output `acts.lnf` (B·T, C). Sequences may be right-padded: with the causal mask, padding
    /// never changes the positions before it.
    pub fn forward_hidden(&self, acts: &mut Acts<B>, tokens: &[u32], b: usize, t: usize) -> Result<()> {
        if self.first_block > 0 {
            return Err(ModelError::Other(format!("{}: this copy holds only blocks {} and up (a hydra reference): use forward_from", self.cfg.path.display(), self.first_block)));
        }
        self.set_batch(acts, tokens, b, t)?;
        self.embed_fwd(acts, b * t);
        self.blocks_and_norm_fwd(acts, 0);
        Ok(())
    }

    /// The trunk from block `start` on, given block `start`'s input `x_start` (B·T, C) — another
    /// model's `acts.x[start]` over the same batch: trlx's hydra reference, whose frozen bottom
    /// blocks are the policy's. Up to `acts.lnf`, as [`Model::forward_hidden`].
    pub fn forward_hidden_from(&self, acts: &mut Acts<B>, tokens: &[u32], b: usize, t: usize, start: usize, x_start: &B::Buf) -> Result<()> {
        if start < self.first_block || start > self.cfg.n_layers {
            return Err(ModelError::Other(format!("forward_from block {start}: this model runs blocks {} to {}", self.first_block, self.cfg.n_layers)));
        }
        self.set_batch(acts, tokens, b, t)?;
        self.be.copy(&mut acts.x[start], x_start, b * t * self.cfg.hidden_size);
        self.blocks_and_norm_fwd(acts, start);
        Ok(())
    }

    /// Checks a batch against the arenas and writes its ids, positions and lengths (the logits
    /// of an earlier batch are no longer valid).
    fn set_batch(&self, acts: &mut Acts<B>, tokens: &[u32], b: usize, t: usize) -> Result<()> {
        if b > acts.cap_b || t > acts.cap_t || tokens.len() != b * t {
            return Err(ModelError::Other(format!("batch ({b},{t}) with {} tokens does not fit activations sized ({},{})", tokens.len(), acts.cap_b, acts.cap_t)));
        }
        self.check_tokens(tokens)?;
        let be = &self.be;
        let n = b * t;
        acts.b = b;
        acts.t = t;
        acts.logits_valid = None;
        be.write_ids(&mut acts.ids, tokens);
        let positions: Vec<u32> = (0..n).map(|i| (i % t) as u32).collect();
        be.write_ids(&mut acts.positions, &positions);
        be.write_ids(&mut acts.q_pos0, &vec![0; b]);
        be.write_ids(&mut acts.kv_len, &vec![t as u32; b]);
        Ok(())
    }

    /// Blocks `start..L` from `acts.x[start]`, then the final norm into `acts.lnf`.
    fn blocks_and_norm_fwd(&self, acts: &mut Acts<B>, start: usize) {
        let (b, t) = (acts.b, acts.t);
        let slots: Vec<usize> = (0..self.cfg.n_layers).map(|l| acts.layer_slot(l)).collect();
        let Acts { x, layers, positions, q_pos0, kv_len, stage, .. } = acts;
        for (l, blk) in self.blocks.iter().enumerate().skip(start) {
            let (lo, hi) = x.split_at_mut(l + 1);
            self.stage_block(blk, stage);
            let ctx = AttnCtx { positions, q_pos0, kv_len, b, t, stage: stage.as_ref() };
            self.block_fwd(blk, &mut layers[slots[l]], &lo[l], &mut hi[0], &ctx, None);
        }
        acts.resident = self.cfg.n_layers.checked_sub(1);
        let last = self.cfg.n_layers;
        self.norm_fwd(&self.ln_f, &mut acts.lnf, &mut acts.lnf_mean, &mut acts.lnf_rstd, &acts.x[last], b * t);
    }

    /// The LM head's weight, or an error for a model without one (a reward model).
    pub fn lm_head(&self) -> Result<usize> {
        self.lm_head.ok_or_else(|| ModelError::Other(format!("{}: a reward model (ForSequenceClassification) has no LM head; this command needs a causal LM", self.cfg.path.display())))
    }

    /// Full forward into `acts.logits` (B·T, V).
    pub fn forward(&self, acts: &mut Acts<B>, tokens: &[u32], b: usize, t: usize) -> Result<()> {
        self.lm_head()?;
        self.forward_hidden(acts, tokens, b, t)?;
        self.head_fwd(acts)
    }

    /// [`Model::forward`] from block `start`'s input (see [`Model::forward_hidden_from`]).
    pub fn forward_from(&self, acts: &mut Acts<B>, tokens: &[u32], b: usize, t: usize, start: usize, x_start: &B::Buf) -> Result<()> {
        self.lm_head()?;
        self.forward_hidden_from(acts, tokens, b, t, start, x_start)?;
        self.head_fwd(acts)
    }

    /// The head over every row at once (refused when the logits are chunked).
    fn head_fwd(&self, acts: &mut Acts<B>) -> Result<()> {
        let n = acts.b * acts.t;
        if n > acts.head_rows {
            return Err(ModelError::Other(format!("the logits hold {} rows (--lm-head-chunk) but this forward needs all {n}: it runs over row blocks (Model::head_blocks) or without chunking", acts.head_rows)));
        }
        self.head_rows_fwd(acts, (0, n))
    }

    /// The LM head's backward: `s.dln` = ∂L/∂lnf (=) from `acts.logits` holding ∂L/∂logits,
    /// and its weight gradient (+=; into the embedding's when tied).
    pub fn lm_head_bwd(&self, acts: &mut Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>) {
        self.softcap_bwd(acts, acts.b * acts.t);
        let head = Linear { w: self.lm_head.expect("forward checked the LM head"), b: None, d_in: self.cfg.hidden_size, d_out: self.cfg.vocab_size, lora: None };
        self.linear_bwd(Out::Set(&mut s.dln), &acts.logits, &acts.lnf, &head, acts.b * acts.t, grads);
    }

    /// With checkpointing: block `l`'s activations recomputed from its saved input `x[l]` into
    /// the shared arena (the same kernels on the same inputs: bit-identical to the forward's).
    fn recompute_block(&self, acts: &mut Acts<B>, l: usize) {
        if !acts.checkpointed || acts.resident == Some(l) {
            return;
        }
        let (b, t) = (acts.b, acts.t);
        let Acts { x, layers, positions, q_pos0, kv_len, stage, .. } = acts;
        // x[l + 1] is rewritten with the values it already holds (only block l + 1 read it)
        let (lo, hi) = x.split_at_mut(l + 1);
        self.stage_block(&self.blocks[l], stage);
        let ctx = AttnCtx { positions, q_pos0, kv_len, b, t, stage: stage.as_ref() };
        self.block_fwd(&self.blocks[l], &mut layers[0], &lo[l], &mut hi[0], &ctx, None);
        acts.resident = Some(l);
    }

    /// Backward of the trunk from `s.dln` = ∂L/∂lnf: every trunk parameter's gradient (+=).
    /// `acts` is mutable for checkpointing's recomputation only.
    pub fn backward_hidden(&self, acts: &mut Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>) {
        self.backward_blocks_and_embedding(acts, s, grads);
        if let Some(hook) = grads.hook.as_mut() {
            hook.after_backward(&self.be, &mut grads.bufs);
        }
    }

    /// [`Model::backward_hidden`] without its end hook.
    fn backward_blocks_and_embedding(&self, acts: &mut Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>) {
        let be = &self.be;
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let c = self.cfg.hidden_size;
        be.fill(&mut s.dres, 0.0, n * c);
        let last = self.cfg.n_layers;
        self.norm_bwd(&self.ln_f, &mut s.dres, &s.dln, NormSaved { x: &acts.x[last], mean: &acts.lnf_mean, rstd: &acts.lnf_rstd }, n, grads);
        // Frozen bottom blocks (--unfrozen-layers) need no backward at all once nothing below
        // them trains: stop at the lowest block with a trainable parameter.
        let Some(lowest) = self.lowest_trainable_block(grads) else { return };
        for (l, blk) in self.blocks.iter().enumerate().rev() {
            if l < lowest {
                return;
            }
            self.recompute_block(acts, l);
            let ctx = AttnCtx { positions: &acts.positions, q_pos0: &acts.q_pos0, kv_len: &acts.kv_len, b, t, stage: None };
            if let Some(hook) = grads.hook.as_mut() {
                hook.before_block(be, &mut grads.bufs, l);
            }
            self.block_bwd(blk, &acts.layers[acts.layer_slot(l)], &acts.x[l], s, &ctx, grads);
            if let Some(hook) = grads.hook.as_mut() {
                hook.after_block(be, &mut grads.bufs, l);
            }
        }
        if self.cfg.features.embed_scale {
            be.scale(&mut s.dres, self.embed_scale(), n * c);
        }
        match &self.emb_ln {
            None => {
                if let Some(ge) = grads.get_mut(self.embed) {
                    be.embedding_bwd(ge, &s.dres, &acts.ids, Rows::new(n, c));
                }
            }
            Some(ln) => {
                if !grads.trainable[ln.w] && !grads.trainable[self.embed] {
                    return;
                }
                be.fill(&mut s.dln, 0.0, n * c);
                self.norm_bwd(ln, &mut s.dln, &s.dres, NormSaved { x: &acts.emb, mean: &acts.emb_mean, rstd: &acts.emb_rstd }, n, grads);
                if let Some(ge) = grads.get_mut(self.embed) {
                    be.embedding_bwd(ge, &s.dln, &acts.ids, Rows::new(n, c));
                }
            }
        }
    }

    /// Backward of the last `forward`, from `acts.logits` holding ∂L/∂logits (as the loss
    /// kernels leave it). Parameter gradients accumulate into `grads`.
    pub fn backward(&self, acts: &mut Acts<B>, s: &mut Scratch<B>, grads: &mut Grads<B>) {
        self.lm_head_bwd(acts, s, grads);
        self.backward_hidden(acts, s, grads);
    }

    /// The lowest block that has a trainable parameter; `Some(0)` also when the embedding trains.
    fn lowest_trainable_block(&self, grads: &Grads<B>) -> Option<usize> {
        let below_trains = grads.trainable[self.embed] || self.emb_ln.is_some_and(|ln| grads.trainable[ln.w]);
        if below_trains {
            return Some(0);
        }
        self.blocks.iter().position(|blk| blk.params().any(|i| grads.trainable[i]))
    }
}
