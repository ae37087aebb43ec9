//! Activation arenas: every buffer a forward pass saves for its backward, allocated once for the
//! largest (B, T) and reused by every step (no allocation inside a training step).

use crate::config::ModelConfig;
use okapi_runtime::{Backend, Extent};

/// What one block saves. N = B·T rows.
pub struct LayerActs<B: Backend> {
    /// input norm: out (N,C), mean and rstd (N) (mean unused by RMSNorm)
    pub ln1: B::Buf,
    pub ln1_mean: B::Buf,
    pub ln1_rstd: B::Buf,
    /// With per-head q/k norms: q (N,Hq·D) and k (N,Hkv·D) before them and their rstd (N·H);
    /// empty otherwise
    pub q_pre: B::Buf,
    pub k_pre: B::Buf,
    pub q_rstd: B::Buf,
    pub k_rstd: B::Buf,
    /// q (N,Hq·D) and k (N,Hkv·D) after RoPE, v (N,Hkv·D)
    pub q: B::Buf,
    pub k: B::Buf,
    pub v: B::Buf,
    /// attention output (N,Hq·D) and its log-sum-exp (N,Hq)
    pub att: B::Buf,
    pub lse: B::Buf,
    /// residual after attention (N,C)
    pub x_mid: B::Buf,
    /// With sandwich norms: the attention's output projection and the MLP's down projection
    /// before their norms (N,C), and those norms' rstd (N); empty otherwise
    pub o_out: B::Buf,
    pub o_rstd: B::Buf,
    pub down_out: B::Buf,
    pub down_rstd: B::Buf,
    pub ln2: B::Buf,
    pub ln2_mean: B::Buf,
    pub ln2_rstd: B::Buf,
    /// MLP: SwiGLU's gate (N,F) and up (N,F); GELU's pre-activation in `mlp_a`, `mlp_b` empty
    pub mlp_a: B::Buf,
    pub mlp_b: B::Buf,
    /// MLP hidden after the activation (N,F)
    pub mlp_h: B::Buf,
    /// LoRA's low-rank activations u = x·Aᵀ (N,r) and, with dropout, the dropped input (N,d_in):
    /// scratch of each adapted layer's forward
    pub lora_u: B::Buf,
    pub lora_x: B::Buf,
}

impl<B: Backend> LayerActs<B> {
    pub fn new(be: &B, cfg: &ModelConfig, n: usize) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qw, kw) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        let gated = cfg.features.mlp.gated();
        let qk = if cfg.features.qk_norm { n } else { 0 };
        let sw = if cfg.features.sandwich_norms { n } else { 0 };
        LayerActs {
            ln1: be.zeros(n * c),
            ln1_mean: be.zeros(n),
            ln1_rstd: be.zeros(n),
            q_pre: be.zeros(qk * qw),
            k_pre: be.zeros(qk * kw),
            q_rstd: be.zeros(qk * cfg.n_heads),
            k_rstd: be.zeros(qk * cfg.n_kv_heads),
            q: be.zeros(n * qw),
            k: be.zeros(n * kw),
            v: be.zeros(n * kw),
            att: be.zeros(n * qw),
            lse: be.zeros(n * cfg.n_heads),
            x_mid: be.zeros(n * c),
            o_out: be.zeros(sw * c),
            o_rstd: be.zeros(sw),
            down_out: be.zeros(sw * c),
            down_rstd: be.zeros(sw),
            ln2: be.zeros(n * c),
            ln2_mean: be.zeros(n),
            ln2_rstd: be.zeros(n),
            mlp_a: be.zeros(n * f),
            mlp_b: be.zeros(if gated { n * f } else { 0 }),
            mlp_h: be.zeros(n * f),
            lora_u: be.zeros(n * cfg.lora_rank),
            lora_x: be.zeros(n * cfg.lora_x_width),
        }
    }
}

/// Everything a training forward saves, for batches up to (cap_b, cap_t).
pub struct Acts<B: Backend> {
    pub cap_b: usize,
    pub cap_t: usize,
    /// current batch shape
    pub b: usize,
    pub t: usize,
    pub ids: B::Ids,
    pub positions: B::Ids,
    pub q_pos0: B::Ids,
    pub kv_len: B::Ids,
    /// With an embedding norm (BLOOM): the raw embedding before it (N,C) and its statistics
    pub emb: B::Buf,
    pub emb_mean: B::Buf,
    pub emb_rstd: B::Buf,
    /// residual stream: x\[0\] embedding output, x[l+1] output of block l; each (N,C)
    pub x: Vec<B::Buf>,
    pub layers: Vec<LayerActs<B>>,
    pub lnf: B::Buf,
    pub lnf_mean: B::Buf,
    pub lnf_rstd: B::Buf,
    /// (R,V) logits of R = `head_rows` rows (N, or a chunk of the chunked LM head); the loss
    /// kernels overwrite them with their gradient in place
    pub logits: B::Buf,
    /// With soft-capped logits: a copy of the capped (R,V) logits, for the cap's backward
    pub logits_capped: B::Buf,
    /// rows `logits` can hold
    pub head_rows: usize,
    /// The rows whose logits `logits` holds now (`None` after a new forward, or once a loss
    /// kernel has turned them into their gradient: [`Acts::logits_consumed`]).
    pub logits_valid: Option<(usize, usize)>,
    /// The chunked LM head's (R,C) copies of a block of `lnf` rows and of their gradient
    /// (empty when the head runs over all N rows at once)
    pub lnf_chunk: B::Buf,
    pub dln_chunk: B::Buf,
    /// Activation checkpointing: `layers` holds one block's activations, shared by every block
    /// (the backward recomputes each block from its input `x[l]`).
    pub checkpointed: bool,
    /// With checkpointing, the block whose activations `layers[0]` holds now.
    pub resident: Option<usize>,
    /// f32 copies of a bf16-packed block's weights (`None` when the model packs nothing).
    pub stage: Option<crate::bf16::Stage<B>>,
}

impl<B: Backend> Acts<B> {
    /// Arenas for batches up to (cap_b, cap_t); `checkpointed`: one block's activations only;
    /// `head_chunk`: the LM head's logits for that many rows at a time.
    pub fn new(be: &B, cfg: &ModelConfig, cap_b: usize, cap_t: usize, checkpointed: bool, head_chunk: Option<usize>) -> Self {
        let n = cap_b * cap_t;
        let c = cfg.hidden_size;
        let lm = cfg.head == crate::config::Head::CausalLm;
        let head_rows = head_chunk.map_or(n, |r| r.clamp(1, n.max(1)));
        let chunked = lm && head_rows < n;
        let emb_norm = cfg.features.embed_norm;
        let kept_layers = if checkpointed { cfg.n_layers.min(1) } else { cfg.n_layers };
        Acts {
            cap_b,
            cap_t,
            b: 0,
            t: 0,
            ids: be.upload_ids(&vec![0; n]),
            positions: be.upload_ids(&vec![0; n]),
            q_pos0: be.upload_ids(&vec![0; cap_b]),
            kv_len: be.upload_ids(&vec![0; cap_b]),
            emb: be.zeros(if emb_norm { n * c } else { 0 }),
            emb_mean: be.zeros(if emb_norm { n } else { 0 }),
            emb_rstd: be.zeros(if emb_norm { n } else { 0 }),
            x: (0..=cfg.n_layers).map(|_| be.zeros(n * c)).collect(),
            layers: (0..kept_layers).map(|_| LayerActs::new(be, cfg, n)).collect(),
            lnf: be.zeros(n * c),
            lnf_mean: be.zeros(n),
            lnf_rstd: be.zeros(n),
            // a reward model has no LM head, hence no logits
            logits: be.zeros(if lm { head_rows * cfg.vocab_size } else { 0 }),
            logits_capped: be.zeros(if lm && cfg.features.final_softcap.is_some() { head_rows * cfg.vocab_size } else { 0 }),
            head_rows: if lm { head_rows } else { 0 },
            logits_valid: None,
            lnf_chunk: be.zeros(if chunked { head_rows * c } else { 0 }),
            dln_chunk: be.zeros(if chunked { head_rows * c } else { 0 }),
            checkpointed,
            resident: None,
            stage: None,
        }
    }

    /// Marks the logits as overwritten (a loss kernel left its gradient in place).
    pub fn logits_consumed(&mut self) {
        self.logits_valid = None;
    }

    /// Where block `l`'s activations live: its own arena, or the shared one when checkpointed.
    pub fn layer_slot(&self, l: usize) -> usize {
        if self.checkpointed {
            0
        } else {
            l
        }
    }

    /// 4-byte elements held per row-sized buffer: every f32 buffer and the token ids and
    /// positions (the per-sequence `q_pos0` / `kv_len` are not counted). The memory plan's
    /// activation estimate is checked against this.
    pub fn floats(&self) -> usize {
        let layer = |l: &LayerActs<B>| {
            [&l.ln1, &l.ln1_mean, &l.ln1_rstd, &l.q_pre, &l.k_pre, &l.q_rstd, &l.k_rstd, &l.q, &l.k, &l.v, &l.att, &l.lse, &l.x_mid, &l.o_out, &l.o_rstd, &l.down_out, &l.down_rstd, &l.ln2, &l.ln2_mean, &l.ln2_rstd, &l.mlp_a, &l.mlp_b, &l.mlp_h, &l.lora_u, &l.lora_x].iter().map(|b| b.extent()).sum::<usize>()
        };
        let trunk = [&self.emb, &self.emb_mean, &self.emb_rstd, &self.lnf, &self.lnf_mean, &self.lnf_rstd, &self.logits, &self.logits_capped, &self.lnf_chunk, &self.dln_chunk].iter().map(|b| b.extent()).sum::<usize>();
        trunk + self.x.iter().map(|b| b.extent()).sum::<usize>() + self.layers.iter().map(layer).sum::<usize>() + self.ids.extent() + self.positions.extent()
    }
}

/// Backward scratch shared by all layers.
pub struct Scratch<B: Backend> {
    /// gradient of the residual stream (N,C), updated in place layer by layer
    pub dres: B::Buf,
    /// gradient of a norm's output (N,C)
    pub dln: B::Buf,
    pub datt: B::Buf,
    pub dq: B::Buf,
    pub dk: B::Buf,
    pub dv: B::Buf,
    /// With per-head q/k norms: ∂L/∂q or ∂L/∂k before the norm (N,Hq·D), one after the other
    pub dqk: B::Buf,
    /// With sandwich norms: ∂L/∂ of a sublayer's output before its norm (N,C)
    pub dsub: B::Buf,
    /// MLP gradients (N,F)
    pub dh: B::Buf,
    pub da: B::Buf,
    pub db: B::Buf,
    /// LoRA's u = x·Aᵀ and ∂L/∂u (N,r), and with dropout the dropped input (N,d_in): scratch of
    /// each adapted layer's backward
    pub lora_u: B::Buf,
    pub lora_du: B::Buf,
    pub lora_x: B::Buf,
}

impl<B: Backend> Scratch<B> {
    pub fn new(be: &B, cfg: &ModelConfig, n: usize) -> Self {
        let (c, f) = (cfg.hidden_size, cfg.intermediate_size);
        let (qw, kw) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
        Scratch {
            dres: be.zeros(n * c),
            dln: be.zeros(n * c),
            datt: be.zeros(n * qw),
            dq: be.zeros(n * qw),
            dk: be.zeros(n * kw),
            dv: be.zeros(n * kw),
            dqk: be.zeros(if cfg.features.qk_norm { n * qw } else { 0 }),
            dsub: be.zeros(if cfg.features.sandwich_norms { n * c } else { 0 }),
            dh: be.zeros(n * f),
            da: be.zeros(n * f),
            db: be.zeros(n * f),
            lora_u: be.zeros(n * cfg.lora_rank),
            lora_du: be.zeros(n * cfg.lora_rank),
            lora_x: be.zeros(n * cfg.lora_x_width),
        }
    }

    /// f32 elements held.
    pub fn floats(&self) -> usize {
        [&self.dres, &self.dln, &self.datt, &self.dq, &self.dk, &self.dv, &self.dqk, &self.dsub, &self.dh, &self.da, &self.db, &self.lora_u, &self.lora_du, &self.lora_x].iter().map(|b| b.extent()).sum()
    }
}

/// Parameter gradients, one buffer per parameter; `None` for frozen parameters, which get
/// neither gradients nor their weight-gradient matmuls — and, with a [`GradHook`] (ZeRO-2),
/// for a block's parameters outside that block's backward.
pub struct Grads<B: Backend> {
    pub bufs: Vec<Option<B::Buf>>,
    /// which parameters train (what the backward decides by; under a hook a trainable
    /// parameter's buffer may be lent only while its block's backward runs)
    pub trainable: Vec<bool>,
    pub hook: Option<Box<dyn GradHook<B>>>,
}

/// Called by [`crate::Model::backward_hidden`] around each block's backward (top block first)
/// and at its end: ZeRO-2 lends a block's gradient buffers before the block and hands the
/// block's gradients to their owner ranks after it, so no rank holds every gradient at once.
pub trait GradHook<B: Backend> {
    /// Before block `l`'s backward: every trainable parameter of the block must have its
    /// buffer in `bufs` (zeroed if lent).
    fn before_block(&mut self, be: &B, bufs: &mut [Option<B::Buf>], l: usize);
    /// After block `l`'s backward: its gradients of this backward are complete.
    fn after_block(&mut self, be: &B, bufs: &mut [Option<B::Buf>], l: usize);
    /// At the end of the backward (the embedding's, the norms' and the heads' gradients are
    /// complete too).
    fn after_backward(&mut self, be: &B, bufs: &mut [Option<B::Buf>]);
}

impl<B: Backend> Grads<B> {
    pub fn get_mut(&mut self, i: usize) -> Option<&mut B::Buf> {
        self.bufs[i].as_mut()
    }
}
