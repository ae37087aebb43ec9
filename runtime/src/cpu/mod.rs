//! The CPU backend: f32 `Vec`s, kernels from `okapi-kernels` (gemm crate + rayon).
//! It is the embedded default and the numeric oracle for the GPU backends.

use crate::{check, AdamW, AttnGrads, AttnInputs, AttnShape, Backend, Dropout, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, RmsNormBwd, RmsNormFwd, RopeShape, Rows};
use okapi_kernels as k;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;

    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn device_memory(&self) -> crate::memory::DeviceMemory {
        crate::memory::DeviceMemory::Host
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
        check::len("write", &[("dst", dst)], data.len());
        dst[..data.len()].copy_from_slice(data);
    }
    fn write_ids(&self, dst: &mut Vec<u32>, data: &[u32]) {
        check::len("write_ids", &[("dst", dst)], data.len());
        dst[..data.len()].copy_from_slice(data);
    }
    fn read(&self, src: &Vec<f32>, len: usize) -> Vec<f32> {
        check::len("read", &[("src", src)], len);
        src[..len].to_vec()
    }
    fn read_staged(&self, src: &Vec<f32>, off: usize, stage: &mut crate::HostStage, len: usize) {
        check::staged("read_staged", "src", src, off, len, stage.len());
        k::reduce::copy(&mut stage.as_mut_slice()[..len], &src[off..off + len]);
    }
    fn write_staged(&self, dst: &mut Vec<f32>, off: usize, stage: &crate::HostStage, len: usize) {
        check::staged("write_staged", "dst", &*dst, off, len, stage.len());
        k::reduce::copy(&mut dst[off..off + len], &stage.as_slice()[..len]);
    }
    fn fill(&self, x: &mut Vec<f32>, value: f32, len: usize) {
        check::len("fill", &[("x", x)], len);
        k::reduce::fill(&mut x[..len], value);
    }
    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) {
        check::len("copy", &[("dst", &*dst), ("src", src)], len);
        k::reduce::copy(&mut dst[..len], &src[..len]);
    }
    fn copy_range(&self, dst: &mut Vec<f32>, dst_off: usize, src: &Vec<f32>, src_off: usize, len: usize) {
        check::range("copy_range", "dst", &*dst, dst_off, len);
        check::range("copy_range", "src", src, src_off, len);
        k::reduce::copy(&mut dst[dst_off..dst_off + len], &src[src_off..src_off + len]);
    }
    fn unpack_bf16(&self, dst: &mut Vec<f32>, src: &Vec<f32>, n: usize) {
        check::len("unpack_bf16", &[("dst", &*dst)], n);
        check::len("unpack_bf16", &[("src", src)], n.div_ceil(2));
        k::reduce::unpack_bf16(&mut dst[..n], &src[..n.div_ceil(2)]);
    }
    fn scale(&self, x: &mut Vec<f32>, a: f32, len: usize) {
        check::len("scale", &[("x", x)], len);
        k::reduce::scale(&mut x[..len], a);
    }
    fn axpy(&self, y: &mut Vec<f32>, a: f32, x: &Vec<f32>, len: usize) {
        check::len("axpy", &[("y", &*y), ("x", x)], len);
        k::reduce::axpy(&mut y[..len], a, &x[..len]);
    }
    fn matmul(&self, c: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>, g: &Gemm) {
        check::matmul(c, a, b, g);
        k::matmul::matmul(c, a, b, g);
    }
    fn embedding_fwd(&self, out: &mut Vec<f32>, table: &Vec<f32>, ids: &Vec<u32>, r: Rows) {
        check::embedding("embedding_fwd", out, table, ids, r);
        k::embedding::embedding_fwd(&mut out[..r.len()], table, &ids[..r.n], r.c);
    }
    fn embedding_bwd(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &Vec<u32>, r: Rows) {
        check::embedding("embedding_bwd", dout, dtable, ids, r);
        k::embedding::embedding_bwd(dtable, &dout[..r.len()], &ids[..r.n], r.c);
    }
    fn rmsnorm_fwd(&self, t: RmsNormFwd<'_, Vec<f32>>, sh: &NormShape) {
        t.check(sh);
        let (n, c) = (sh.n, sh.c);
        k::norm::rmsnorm_fwd(&mut t.out[..n * c], &mut t.rstd[..n], &t.x[..n * c], &t.w[..c], sh);
    }
    fn rmsnorm_bwd(&self, t: RmsNormBwd<'_, Vec<f32>>, sh: &NormShape) {
        t.check(sh);
        let (n, c) = (sh.n, sh.c);
        k::norm::rmsnorm_bwd(&mut t.dx[..n * c], &mut t.dw[..c], &t.dy[..n * c], &t.x[..n * c], &t.w[..c], &t.rstd[..n], sh);
    }
    fn layernorm_fwd(&self, t: LayerNormFwd<'_, Vec<f32>>, sh: &NormShape) {
        t.check(sh);
        let (n, c) = (sh.n, sh.c);
        let s = k::norm::LayerNormFwd { out: &mut t.out[..n * c], mean: &mut t.mean[..n], rstd: &mut t.rstd[..n], x: &t.x[..n * c], w: &t.w[..c], b: &t.b[..c] };
        k::norm::layernorm_fwd(s, c, sh.eps);
    }
    fn layernorm_bwd(&self, t: LayerNormBwd<'_, Vec<f32>>, sh: &NormShape) {
        t.check(sh);
        let (n, c) = (sh.n, sh.c);
        let s = k::norm::LayerNormBwd {
            dx: &mut t.dx[..n * c],
            dw: &mut t.dw[..c],
            db: &mut t.db[..c],
            dy: &t.dy[..n * c],
            x: &t.x[..n * c],
            w: &t.w[..c],
            mean: &t.mean[..n],
            rstd: &t.rstd[..n],
        };
        k::norm::layernorm_bwd(s, c);
    }
    fn rope_fwd(&self, x: &mut Vec<f32>, positions: &Vec<u32>, inv_freq: &Vec<f32>, sh: &RopeShape) {
        sh.check("rope_fwd", x, positions, inv_freq);
        k::rope::rope_fwd(&mut x[..sh.len()], sh.n_heads, sh.head_dim, &positions[..sh.n], inv_freq);
    }
    fn rope_bwd(&self, dx: &mut Vec<f32>, positions: &Vec<u32>, inv_freq: &Vec<f32>, sh: &RopeShape) {
        sh.check("rope_bwd", dx, positions, inv_freq);
        k::rope::rope_bwd(&mut dx[..sh.len()], sh.n_heads, sh.head_dim, &positions[..sh.n], inv_freq);
    }
    fn attention_fwd(&self, out: &mut Vec<f32>, lse: &mut Vec<f32>, x: &AttnInputs<'_, Vec<f32>, Vec<u32>>, sh: &AttnShape) {
        x.check("attention_fwd", sh);
        k::attention::check_attn_outputs("attention_fwd", sh, out, lse, None);
        k::attention::attention_fwd(out, lse, &slices(x), sh);
    }
    fn attention_bwd(&self, d: AttnGrads<'_, Vec<f32>>, dout: &Vec<f32>, out: &Vec<f32>, lse: &Vec<f32>, x: &AttnInputs<'_, Vec<f32>, Vec<u32>>, sh: &AttnShape) {
        x.check("attention_bwd", sh);
        k::attention::check_attn_outputs("attention_bwd", sh, out, lse, Some(&d));
        k::attention::check_attn_outputs("attention_bwd", sh, dout, lse, None);
        let grads = AttnGrads { dq: d.dq.as_mut_slice(), dk: d.dk.as_mut_slice(), dv: d.dv.as_mut_slice() };
        k::attention::attention_bwd(grads, dout, out, lse, &slices(x), sh);
    }
    fn kv_write(&self, cache: &mut Vec<f32>, new: &Vec<f32>, pos: &Vec<u32>, sh: &KvShape) {
        sh.check(cache, new, pos);
        k::attention::kv_write(cache, new, pos, sh);
    }
    fn softmax_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, r: Rows, temperature: f32) {
        check::softmax("softmax_fwd", &[("out", &*out), ("x", x)], r);
        k::softmax::softmax_fwd(&mut out[..r.len()], &x[..r.len()], r.c, temperature);
    }
    fn softmax_bwd(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, y: &Vec<f32>, r: Rows) {
        check::softmax("softmax_bwd", &[("dx", &*dx), ("dy", dy), ("y", y)], r);
        k::softmax::softmax_bwd(&mut dx[..r.len()], &dy[..r.len()], &y[..r.len()], r.c);
    }
    fn swiglu_fwd(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        check::len("swiglu_fwd", &[("out", &*out), ("gate", gate), ("up", up)], len);
        k::activation::swiglu_fwd(&mut out[..len], &gate[..len], &up[..len]);
    }
    fn swiglu_bwd(&self, dgate: &mut Vec<f32>, dup: &mut Vec<f32>, dout: &Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        check::len("swiglu_bwd", &[("dgate", &*dgate), ("dup", &*dup), ("dout", dout), ("gate", gate), ("up", up)], len);
        k::activation::swiglu_bwd(&mut dgate[..len], &mut dup[..len], &dout[..len], &gate[..len], &up[..len]);
    }
    fn gelu_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        check::len("gelu_fwd", &[("out", &*out), ("x", x)], len);
        k::activation::gelu_fwd(&mut out[..len], &x[..len]);
    }
    fn gelu_bwd(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, x: &Vec<f32>, len: usize) {
        check::len("gelu_bwd", &[("dx", &*dx), ("dout", dout), ("x", x)], len);
        k::activation::gelu_bwd(&mut dx[..len], &dout[..len], &x[..len]);
    }
    fn geglu_fwd(&self, out: &mut Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        check::len("geglu_fwd", &[("out", &*out), ("gate", gate), ("up", up)], len);
        k::activation::geglu_fwd(&mut out[..len], &gate[..len], &up[..len]);
    }
    fn geglu_bwd(&self, dgate: &mut Vec<f32>, dup: &mut Vec<f32>, dout: &Vec<f32>, gate: &Vec<f32>, up: &Vec<f32>, len: usize) {
        check::len("geglu_bwd", &[("dgate", &*dgate), ("dup", &*dup), ("dout", dout), ("gate", gate), ("up", up)], len);
        k::activation::geglu_bwd(&mut dgate[..len], &mut dup[..len], &dout[..len], &gate[..len], &up[..len]);
    }
    fn softcap_fwd(&self, x: &mut Vec<f32>, len: usize, cap: f32) {
        check::softcap("softcap_fwd", &[("x", &*x)], len, cap);
        k::activation::softcap_fwd(&mut x[..len], cap);
    }
    fn softcap_bwd(&self, dy: &mut Vec<f32>, y: &Vec<f32>, len: usize, cap: f32) {
        check::softcap("softcap_bwd", &[("dy", &*dy), ("y", y)], len, cap);
        k::activation::softcap_bwd(&mut dy[..len], &y[..len], cap);
    }
    fn relu_fwd(&self, out: &mut Vec<f32>, x: &Vec<f32>, len: usize) {
        check::len("relu_fwd", &[("out", &*out), ("x", x)], len);
        k::activation::relu_fwd(&mut out[..len], &x[..len]);
    }
    fn relu_bwd(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, x: &Vec<f32>, len: usize) {
        check::len("relu_bwd", &[("dx", &*dx), ("dout", dout), ("x", x)], len);
        k::activation::relu_bwd(&mut dx[..len], &dout[..len], &x[..len]);
    }
    fn dropout(&self, out: &mut Vec<f32>, x: &Vec<f32>, d: &Dropout, len: usize) {
        check::len("dropout", &[("out", &*out), ("x", x)], len);
        k::activation::dropout(&mut out[..len], &x[..len], d);
    }
    fn bias_add(&self, x: &mut Vec<f32>, bias: &Vec<f32>, r: Rows) {
        check::bias("bias_add", x, bias, r);
        k::reduce::bias_add(&mut x[..r.len()], &bias[..r.c]);
    }
    fn bias_bwd(&self, dbias: &mut Vec<f32>, dy: &Vec<f32>, r: Rows) {
        check::bias("bias_bwd", dy, dbias, r);
        k::reduce::bias_bwd(&mut dbias[..r.c], &dy[..r.len()]);
    }
    fn xent_fwd_bwd(&self, logits: &mut Vec<f32>, losses: &mut Vec<f32>, targets: &Vec<u32>, coef: &Vec<f32>, r: Rows) {
        check::vocab("xent_fwd_bwd", &[("logits", &*logits)], &[("losses", &*losses), ("coef", coef)], targets, r);
        k::xent::xent_fwd_bwd(&mut logits[..r.len()], &mut losses[..r.n], &targets[..r.n], &coef[..r.n], r.c);
    }
    fn token_logprobs(&self, logp: &mut Vec<f32>, greedy: &mut Vec<f32>, logits: &Vec<f32>, targets: &Vec<u32>, r: Rows) {
        check::vocab("token_logprobs", &[("logits", logits)], &[("logp", &*logp), ("greedy", &*greedy)], targets, r);
        k::xent::token_logprobs(&mut logp[..r.n], &mut greedy[..r.n], &logits[..r.len()], &targets[..r.n], r.c);
    }
    fn token_logprobs_bwd(&self, dlogits: &mut Vec<f32>, logits: &Vec<f32>, targets: &Vec<u32>, coef: &Vec<f32>, r: Rows) {
        check::vocab("token_logprobs_bwd", &[("dlogits", &*dlogits), ("logits", logits)], &[("coef", coef)], targets, r);
        k::xent::token_logprobs_bwd(&mut dlogits[..r.len()], &logits[..r.len()], &targets[..r.n], &coef[..r.n], r.c);
    }
    fn adamw(&self, p: &mut Vec<f32>, g: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, h: &AdamW, len: usize) {
        check::len("adamw", &[("p", &*p), ("g", g), ("m", &*m), ("v", &*v)], len);
        k::adamw::adamw(&mut p[..len], &g[..len], &mut m[..len], &mut v[..len], h);
    }
    fn sum_squares(&self, acc: &mut Vec<f32>, slot: usize, x: &Vec<f32>, len: usize) {
        check::len("sum_squares", &[("acc", &*acc)], slot + 1);
        check::len("sum_squares", &[("x", x)], len);
        acc[slot] = k::reduce::sum_squares(&x[..len]) as f32;
    }
}

/// The same inputs as slices (what the CPU kernels take).
fn slices<'a>(x: &AttnInputs<'a, Vec<f32>, Vec<u32>>) -> AttnInputs<'a, [f32], [u32]> {
    AttnInputs { q: x.q, k: x.k, v: x.v, q_pos0: x.q_pos0, kv_len: x.kv_len, alibi: x.alibi.map(|a| a.as_slice()) }
}
