//! wgpu row-wise, element-wise and optimizer ops (norms, RoPE, activations, softmax, cross
//! entropy / log-probs, AdamW). Same arguments as the `Backend` trait methods.

#![allow(unused_variables)]

use super::{WBuf, WIds, WgpuBackend};
use crate::AdamW;

impl WgpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_rmsnorm_fwd(&self, out: &mut WBuf, rstd: &mut WBuf, x: &WBuf, w: &WBuf, n: usize, c: usize, eps: f32) {
        unimplemented!("wgpu rmsnorm_fwd: in progress")
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_rmsnorm_bwd(&self, dx: &mut WBuf, dw: &mut WBuf, dy: &WBuf, x: &WBuf, w: &WBuf, rstd: &WBuf, n: usize, c: usize) {
        unimplemented!("wgpu rmsnorm_bwd: in progress")
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_layernorm_fwd(
        &self,
        out: &mut WBuf,
        mean: &mut WBuf,
        rstd: &mut WBuf,
        x: &WBuf,
        w: &WBuf,
        b: &WBuf,
        n: usize,
        c: usize,
        eps: f32,
    ) {
        unimplemented!("wgpu layernorm_fwd: in progress")
    }
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_layernorm_bwd(
        &self,
        dx: &mut WBuf,
        dw: &mut WBuf,
        db: &mut WBuf,
        dy: &WBuf,
        x: &WBuf,
        w: &WBuf,
        mean: &WBuf,
        rstd: &WBuf,
        n: usize,
        c: usize,
    ) {
        unimplemented!("wgpu layernorm_bwd: in progress")
    }
    pub(crate) fn op_rope_fwd(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        unimplemented!("wgpu rope_fwd: in progress")
    }
    pub(crate) fn op_rope_bwd(&self, dx: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        unimplemented!("wgpu rope_bwd: in progress")
    }
    pub(crate) fn op_softmax_fwd(&self, out: &mut WBuf, x: &WBuf, n: usize, v: usize, temperature: f32) {
        unimplemented!("wgpu softmax_fwd: in progress")
    }
    pub(crate) fn op_softmax_bwd(&self, dx: &mut WBuf, dy: &WBuf, y: &WBuf, n: usize, v: usize) {
        unimplemented!("wgpu softmax_bwd: in progress")
    }
    pub(crate) fn op_swiglu_fwd(&self, out: &mut WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        unimplemented!("wgpu swiglu_fwd: in progress")
    }
    pub(crate) fn op_swiglu_bwd(&self, dgate: &mut WBuf, dup: &mut WBuf, dout: &WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        unimplemented!("wgpu swiglu_bwd: in progress")
    }
    pub(crate) fn op_gelu_fwd(&self, out: &mut WBuf, x: &WBuf, len: usize) {
        unimplemented!("wgpu gelu_fwd: in progress")
    }
    pub(crate) fn op_gelu_bwd(&self, dx: &mut WBuf, dout: &WBuf, x: &WBuf, len: usize) {
        unimplemented!("wgpu gelu_bwd: in progress")
    }
    pub(crate) fn op_xent_fwd_bwd(&self, logits: &mut WBuf, losses: &mut WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        unimplemented!("wgpu xent_fwd_bwd: in progress")
    }
    pub(crate) fn op_token_logprobs(&self, logp: &mut WBuf, greedy: &mut WBuf, logits: &WBuf, targets: &WIds, n: usize, v: usize) {
        unimplemented!("wgpu token_logprobs: in progress")
    }
    pub(crate) fn op_token_logprobs_bwd(&self, dlogits: &mut WBuf, logits: &WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        unimplemented!("wgpu token_logprobs_bwd: in progress")
    }
    pub(crate) fn op_adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: &AdamW, len: usize) {
        unimplemented!("wgpu adamw: in progress")
    }
}
