//! Row, element-wise and optimizer ops: RMSNorm / LayerNorm, RoPE, SwiGLU / GELU, softmax,
//! fused cross-entropy / log-probs and AdamW, each a WGSL kernel from okapi-kernels.
//!
//! Row reductions run one workgroup per row with fixed-order tree reductions (the row prelude);
//! column sums (dw, db) sum chunks of `ROW_CHUNK` rows into partials, then add the partials in
//! chunk order — the CPU's `column_sums` order, so dw and db are bit-equal to the CPU's. No
//! float atomics. Grids stay under the 65535-per-dimension limit: rows fold into x·y
//! (`groups_fold`), element-wise ops use `groups_1d`.

use super::super::batch::{groups_1d, groups_fold};
use super::super::{WBuf, WIds, WgpuBackend};
use super::{f, u32_of};
use crate::{check, AdamW, LayerNormBwd, LayerNormFwd, NormShape, RmsNormBwd, RmsNormFwd, RopeShape, Rows};
use okapi_kernels::{activation, adamw, norm, rope, softmax, xent, ROW_CHUNK, WGSL_WG};

const WG: u32 = WGSL_WG as u32;

/// One workgroup per row, folded under the 65535 limit.
fn rows_grid(n: usize) -> [u32; 3] {
    groups_fold(n as u64)
}

/// n·c must be addressable by the shaders' u32 indices.
fn check_elems(what: &str, n: usize, c: usize) {
    let total = n.saturating_mul(c);
    u32_of(total, &format!("{what} elements"));
}

/// The params of every norm entry point: n, c, eps, column-sum chunks, RMSNorm's weight shift.
fn norm_params(sh: &NormShape) -> [u32; 5] {
    [sh.n as u32, sh.c as u32, f(sh.eps), sh.n.div_ceil(ROW_CHUNK) as u32, f(sh.w_shift())]
}

impl WgpuBackend {
    pub(crate) fn op_rmsnorm_fwd(&self, t: RmsNormFwd<'_, WBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 || sh.c == 0 {
            return;
        }
        check_elems("rmsnorm_fwd", sh.n, sh.c);
        let bufs = [&t.out.buf, &t.rstd.buf, &t.x.buf, &t.w.buf];
        self.dispatch("norm.rmsnorm_fwd", norm::WGSL, "rmsnorm_fwd", &norm_params(sh), &bufs, rows_grid(sh.n));
    }

    pub(crate) fn op_rmsnorm_bwd(&self, t: RmsNormBwd<'_, WBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 || sh.c == 0 {
            return;
        }
        check_elems("rmsnorm_bwd", sh.n, sh.c);
        let p = norm_params(sh);
        let chunks = sh.n.div_ceil(ROW_CHUNK);
        let part = self.scratch(chunks * sh.c);
        let bufs = [&part.buf, &t.dy.buf, &t.x.buf, &t.rstd.buf];
        self.dispatch("norm.rmsnorm_bwd_dw_partial", norm::WGSL, "rmsnorm_bwd_dw_partial", &p, &bufs, groups_1d((chunks * sh.c) as u64, WG));
        self.colsum_finish(t.dw, &part, &p, sh.c);
        let bufs = [&t.dx.buf, &t.dy.buf, &t.x.buf, &t.w.buf, &t.rstd.buf];
        self.dispatch("norm.rmsnorm_bwd_dx", norm::WGSL, "rmsnorm_bwd_dx", &p, &bufs, rows_grid(sh.n));
    }

    /// acc[j] += Σ_k partial[k, j], k in order (pass 2 of the norms' column sums).
    fn colsum_finish(&self, acc: &mut WBuf, partial: &WBuf, p: &[u32; 5], c: usize) {
        self.dispatch("norm.colsum_finish", norm::WGSL, "colsum_finish", p, &[&acc.buf, &partial.buf], groups_1d(c as u64, WG));
    }

    pub(crate) fn op_layernorm_fwd(&self, t: LayerNormFwd<'_, WBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 || sh.c == 0 {
            return;
        }
        check_elems("layernorm_fwd", sh.n, sh.c);
        let bufs = [&t.out.buf, &t.mean.buf, &t.rstd.buf, &t.x.buf, &t.w.buf, &t.b.buf];
        self.dispatch("norm.layernorm_fwd", norm::WGSL, "layernorm_fwd", &norm_params(sh), &bufs, rows_grid(sh.n));
    }

    pub(crate) fn op_layernorm_bwd(&self, t: LayerNormBwd<'_, WBuf>, sh: &NormShape) {
        t.check(sh);
        if sh.n == 0 || sh.c == 0 {
            return;
        }
        check_elems("layernorm_bwd", sh.n, sh.c);
        let p = norm_params(sh);
        let chunks = sh.n.div_ceil(ROW_CHUNK);
        let (part_w, part_b) = (self.scratch(chunks * sh.c), self.scratch(chunks * sh.c));
        let bufs = [&part_w.buf, &part_b.buf, &t.dy.buf, &t.x.buf, &t.mean.buf, &t.rstd.buf];
        self.dispatch("norm.layernorm_bwd_dwdb_partial", norm::WGSL, "layernorm_bwd_dwdb_partial", &p, &bufs, groups_1d((chunks * sh.c) as u64, WG));
        self.colsum_finish(t.dw, &part_w, &p, sh.c);
        self.colsum_finish(t.db, &part_b, &p, sh.c);
        let bufs = [&t.dx.buf, &t.dy.buf, &t.x.buf, &t.w.buf, &t.mean.buf, &t.rstd.buf];
        self.dispatch("norm.layernorm_bwd_dx", norm::WGSL, "layernorm_bwd_dx", &p, &bufs, rows_grid(sh.n));
    }

    /// RoPE in place; `sign` −1 is the inverse rotation (the backward).
    pub(crate) fn op_rope(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, sh: &RopeShape, sign: f32) {
        sh.check(if sign > 0.0 { "rope_fwd" } else { "rope_bwd" }, x, positions, inv_freq);
        if sh.pairs() == 0 {
            return;
        }
        check_elems("rope", sh.n, sh.n_heads * sh.head_dim);
        let p = [sh.n as u32, sh.n_heads as u32, sh.head_dim as u32, f(sign)];
        self.dispatch("rope.rope", rope::WGSL, "rope", &p, &[&x.buf, &positions.buf, &inv_freq.buf], groups_1d(sh.pairs() as u64, WG));
    }

    /// One thread per element of activation.wgsl's `entry`.
    pub(crate) fn op_elementwise(&self, key: &'static str, entry: &'static str, bufs: &[(&str, &WBuf)], len: usize) {
        check::len(entry, bufs, len);
        self.elementwise(key, entry, bufs, len, 0.0);
    }

    /// A soft-cap entry point of activation.wgsl (in place on the first buffer), with its cap.
    pub(crate) fn op_softcap(&self, key: &'static str, entry: &'static str, bufs: &[(&str, &WBuf)], len: usize, cap: f32) {
        check::softcap(entry, bufs, len, cap);
        self.elementwise(key, entry, bufs, len, cap);
    }

    /// The dispatch of an activation.wgsl entry point over `len` checked elements.
    fn elementwise(&self, key: &'static str, entry: &'static str, bufs: &[(&str, &WBuf)], len: usize, cap: f32) {
        if len == 0 {
            return;
        }
        check_elems(entry, len, 1);
        let raw: Vec<&wgpu::Buffer> = bufs.iter().map(|(_, b)| &b.buf).collect();
        // params: len, then dropout's key / threshold / scale (unused here), the cap
        self.dispatch(key, activation::WGSL, entry, &[len as u32, 0, 0, 0, f(cap)], &raw, groups_1d(len as u64, WG));
    }

    pub(crate) fn op_softmax_fwd(&self, out: &mut WBuf, x: &WBuf, r: Rows, temperature: f32) {
        check::softmax("softmax_fwd", &[("out", &*out), ("x", x)], r);
        if r.is_empty() {
            return;
        }
        check_elems("softmax_fwd", r.n, r.c);
        let p = [r.n as u32, r.c as u32, f(1.0 / temperature)];
        self.dispatch("softmax.softmax_fwd", softmax::WGSL, "softmax_fwd", &p, &[&out.buf, &x.buf], rows_grid(r.n));
    }

    pub(crate) fn op_softmax_bwd(&self, dx: &mut WBuf, dy: &WBuf, y: &WBuf, r: Rows) {
        check::softmax("softmax_bwd", &[("dx", &*dx), ("dy", dy), ("y", y)], r);
        if r.is_empty() {
            return;
        }
        check_elems("softmax_bwd", r.n, r.c);
        self.dispatch("softmax.softmax_bwd", softmax::WGSL, "softmax_bwd", &[r.n as u32, r.c as u32], &[&dx.buf, &dy.buf, &y.buf], rows_grid(r.n));
    }

    /// A row kernel of xent.wgsl over (N, V).
    pub(crate) fn op_xent(&self, entry: &'static str, key: &'static str, bufs: [&wgpu::Buffer; 4], r: Rows) {
        if r.is_empty() {
            return;
        }
        check_elems(entry, r.n, r.c);
        self.dispatch(key, xent::WGSL, entry, &[r.n as u32, r.c as u32], &bufs, rows_grid(r.n));
    }

    pub(crate) fn op_adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: &AdamW, len: usize) {
        check::len("adamw", &[("p", &*p), ("g", g), ("m", &*m), ("v", &*v)], len);
        if len == 0 {
            return;
        }
        check_elems("adamw", len, 1);
        // the CPU kernel's scalars, rounded to f32 the same way
        let (decay, step_size, bc2_sqrt) = h.scalars();
        let params = [len as u32, f(decay), f(step_size), f(bc2_sqrt), f(1.0 - h.beta1), f(h.beta2), f(1.0 - h.beta2), f(h.eps), f(h.grad_scale)];
        self.dispatch("adamw.adamw", adamw::WGSL, "adamw", &params, &[&p.buf, &g.buf, &m.buf, &v.buf], groups_1d(len as u64, WG));
    }
}
