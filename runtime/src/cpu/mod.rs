//! The CPU backend: f32 `Vec`s, kernels from `okapi-kernels` (gemm crate + rayon).
//! It is the embedded default and the numeric oracle for the GPU backends.

use crate::{AdamW, AttnShape, Backend, Gemm};
use okapi_kernels as k;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn upload_ids(&self, data: &[u32]) -> Vec<u32> {
        data.to_vec()
    }
    fn write(&self, dst: &mut Vec<f32>, data: &[f32]) {
        dst[..data.len()].copy_from_slice(data);
    }
    fn write_ids(&self, dst: &mut Vec<u32>, data: &[u32]) {
        dst[..data.len()].copy_from_slice(data);
    }
    fn read(&self, src: &Vec<f32>, len: usize) -> Vec<f32> {
        src[..len].to_vec()
    }
    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn fill(&self, x: &mut Vec<f32>, value: f32, len: usize) {
        k::reduce::fill(&mut x[..len], value);
    }
    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) {
        k::reduce::copy(&mut dst[..len], &src[..len]);
    }
    fn scale(&self, x: &mut Vec<f32>, a: f32, len: usize) {
        k::reduce::scale(&mut x[..len], a);
    }
    fn axpy(&self, y: &mut Vec<f32>, a: f32, x: &Vec<f32>, len: usize) {
        k::reduce::axpy(&mut y[..len], a, &x[..len]);
    }
    fn matmul(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, g: &Gemm) {
        k::matmul::matmul(c, a, b, g);
    }
    fn embedding_fwd(&self, out: &mut Vec<f32>, table: &Vec<f32>, ids: &Vec<u32>, n: usize, c: usize) {
        k::embedding::embedding_fwd(&mut out[..n * c], table, &ids[..n], c);
    }
    fn embedding_bwd(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &Vec<u32>, n: usize, c: usize) {
        k::embedding::embedding_bwd(dtable, &dout[..n * c], &ids[..n], c);
    }
    fn rmsnorm_fwd(&self, out: &mut Vec<f32>, rstd: &mut Vec<f32>, x: &Vec<f32>, w: &Vec<f32>, n: usize, c: usize, eps: f32) {
        k::norm::rmsnorm_fwd(&mut out[..n * c], &mut rstd[..n], &x[..n * c], &w[..c], c, eps);
    }
    fn rmsnorm_bwd(&self, dx: &mut Vec<f32>, dw: &mut Vec<f32>, dy: &Vec<f32>, x: &Vec<f32>, w: &Vec<f32>, rstd: &Vec<f32>, n: usize, c: usize) {
        k::norm::rmsnorm_bwd(&mut dx[..n * c], &mut dw[..c], &dy[..n * c], &x[..n * c], &w[..c], &rstd[..n], c);
    }
    fn layernorm_fwd(&self, out: &mut Vec<f32>, mean: &mut Vec<f32>, rstd: &mut Vec<f32>, x: &Vec<f32>, w: &Vec<f32>, b: &Vec<f32>, n: usize, c: usize, eps: f32) {
        k::norm::layernorm_fwd(&mut out[..n * c], &mut mean[..n], &mut rstd[..n], &x[..n * c], &w[..c], &b[..c], c, eps);
    }
    fn layernorm_bwd(
        &self,
        dx: &mut Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dy: &Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        n: usize,
        c: usize,
    ) {
        k::norm::layernorm_bwd(&mut dx[..n * c], &mut dw[..c], &mut db[..c], &dy[..n * c], &x[..n * c], &w[..c], &mean[..n], &rstd[..n], c);
    }
    fn rope_fwd(&self, x: &mut Vec<f32>, positions: &Vec<u32>, inv_freq: &Vec<f32>, n: usize, n_heads: usize, head_dim: usize) {
        k::rope::rope_fwd(&mut x[..n * n_heads * head_dim], n_heads, head_dim, &positions[..n], inv_freq);
    }
    fn rope_bwd(&self, dx: &mut Vec<f32>, positions: &Vec<u32>, inv_freq: &Vec<f32>, n: usize, n_heads: usize, head_dim: usize) {
        k::rope::rope_bwd(&mut dx[..n * n_heads * head_dim], n_heads, head_dim, &positions[..n], inv_freq);
    }
    fn attention_fwd(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        q: &Vec<f32>,
        kk: &Vec<f32>,
        v: &Vec<f32>,
        q_pos0: &Vec<u32>,
        kv_len: &Vec<u32>,
        alibi: Option<&Vec<f32>>,
        sh: &AttnShape,
    ) {
        let rows = sh.batch * sh.tq;
        k::attention::attention_fwd(
            &mut out[..rows * sh.n_heads * sh.head_dim],
            &mut lse[..rows * sh.n_heads],
            q,
            kk,
            v,
            q_pos0,
            kv_len,
            alibi.map(|a| a.as_slice()),
            sh,
        );
    }
    fn attention_bwd(
        &self,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        dout: &Vec<f32>,
        q: &Vec<f32>,
        kk: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        q_pos0: &Vec<u32>,
        kv_len: &Vec<u32>,
        alibi: Option<&Vec<f32>>,
        sh: &AttnShape,
    ) {
        assert!(dq.len() >= sh.batch * sh.tq * sh.n_heads * sh.head_dim);
        assert!(dk.len() >= sh.batch * sh.tk * sh.n_kv_heads * sh.head_dim && dv.len() >= sh.batch * sh.tk * sh.n_kv_heads * sh.head_dim);
        k::attention::attention_bwd(dq, dk, dv, dout, q, kk, v, out, lse, q_pos0, kv_len, alibi.map(|a| a.as_slice()), sh);
    }
    fn kv_write(&self, cache: &mut Vec<f32>, new: &Vec<f32>, pos: &Vec<u32>, batch: usize, t_new: usize, t_cap: usize, width: usize) {
        k::attention::kv_write(cache, new, pos, batch, t_new, t_cap, width);
    }
    fn softmax_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, n: usize, v: usize, temperature: f32) {
        k::softmax::softmax_fwd(&mut out[..n * v], &x[..n * v], v, temperature);
    }
    fn softmax_bwd(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, y: &Vec<f32>, n: usize, v: usize) {
        k::softmax::softmax_bwd(&mut dx[..n * v], &dy[..n * v], &y[..n * v], v);
    }
    fn swiglu_fwd(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        k::activation::swiglu_fwd(&mut out[..len], &gate[..len], &up[..len]);
    }
    fn swiglu_bwd(&self, dgate: &mut Vec<f32>, dup: &mut Vec<f32>, dout: &Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        k::activation::swiglu_bwd(&mut dgate[..len], &mut dup[..len], &dout[..len], &gate[..len], &up[..len]);
    }
    fn gelu_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        k::activation::gelu_fwd(&mut out[..len], &x[..len]);
    }
    fn gelu_bwd(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, x: &Vec<f32>, len: usize) {
        k::activation::gelu_bwd(&mut dx[..len], &dout[..len], &x[..len]);
    }
    fn bias_add(&self, x: &mut Vec<f32>, bias: &Vec<f32>, n: usize, c: usize) {
        k::reduce::bias_add(&mut x[..n * c], &bias[..c]);
    }
    fn bias_bwd(&self, dbias: &mut Vec<f32>, dy: &Vec<f32>, n: usize, c: usize) {
        k::reduce::bias_bwd(&mut dbias[..c], &dy[..n * c]);
    }
    fn xent_fwd_bwd(&self, logits: &mut Vec<f32>, losses: &mut Vec<f32>, targets: &Vec<u32>, coef: &Vec<f32>, n: usize, v: usize) {
        k::xent::xent_fwd_bwd(&mut logits[..n * v], &mut losses[..n], &targets[..n], &coef[..n], v);
    }
    fn token_logprobs(&self, logp: &mut Vec<f32>, greedy: &mut Vec<f32>, logits: &Vec<f32>, targets: &Vec<u32>, n: usize, v: usize) {
        k::xent::token_logprobs(&mut logp[..n], &mut greedy[..n], &logits[..n * v], &targets[..n], v);
    }
    fn token_logprobs_bwd(&self, dlogits: &mut Vec<f32>, logits: &Vec<f32>, targets: &Vec<u32>, coef: &Vec<f32>, n: usize, v: usize) {
        k::xent::token_logprobs_bwd(&mut dlogits[..n * v], &logits[..n * v], &targets[..n], &coef[..n], v);
    }
    fn adamw(&self, p: &mut Vec<f32>, g: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, h: &AdamW, len: usize) {
        k::adamw::adamw(&mut p[..len], &g[..len], &mut m[..len], &mut v[..len], h);
    }
    fn sum_squares(&self, acc: &mut Vec<f32>, slot: usize, x: &Vec<f32>, len: usize) {
        acc[slot] = k::reduce::sum_squares(&x[..len]) as f32;
    }
}
