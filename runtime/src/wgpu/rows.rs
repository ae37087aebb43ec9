//! Row, elementwise and optimizer ops of the wgpu backend: RMSNorm / LayerNorm, RoPE, SwiGLU /
//! GELU, softmax, fused cross-entropy / log-probs and AdamW, each a hand-written WGSL kernel
//! beside its CPU twin in okapi-kernels (same semantics: see each CPU kernel's doc comment).
//!
//! Row reductions run one workgroup of 256 threads per row with fixed-order tree reductions;
//! column sums (dw, db) sum chunks of 32 rows into partials, then add the partials in chunk
//! order (the CPU's `par::column_sums` order). No float atomics: every result is deterministic. Grids stay under the 65535-per-dimension limit:
//! rows fold into x·y (`groups_fold`), elementwise ops use `groups_1d`.

use super::{groups_1d, groups_fold, WBuf, WIds, WgpuBackend};
use crate::AdamW;

const NORM: &str = include_str!("../../../kernels/src/norm/norm.wgsl");
const ROPE: &str = include_str!("../../../kernels/src/rope/rope.wgsl");
const ACTIVATION: &str = include_str!("../../../kernels/src/activation/activation.wgsl");
const SOFTMAX: &str = include_str!("../../../kernels/src/softmax/softmax.wgsl");
const XENT: &str = include_str!("../../../kernels/src/xent/xent.wgsl");
const ADAMW: &str = include_str!("../../../kernels/src/adamw/adamw.wgsl");

/// Threads per workgroup of every kernel here (the shaders' `WG`).
const WG: u32 = 256;

/// One workgroup per row, folded under the 65535 limit: the shaders take
/// row = wid.x + wid.y·num_workgroups.x and skip rows ≥ n.
fn rows_grid(n: usize) -> [u32; 3] {
    groups_fold(n as u64)
}

/// Rows per partial of the column sums (dw, db): the CPU's `par::ROW_CHUNK`, so the
/// summation order — and with it the bits — are the CPU kernel's.
const ROW_CHUNK: usize = 32;

fn f(v: f32) -> u32 {
    v.to_bits()
}

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("wgpu: a size exceeds u32")
}

/// n·c must be addressable by the shaders' u32 indices.
fn check_elems(what: &str, n: usize, c: usize) {
    assert!(n.checked_mul(c).is_some_and(|e| e <= u32::MAX as usize), "wgpu {what}: {n}×{c} elements exceed u32 indexing");
}

impl WgpuBackend {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_rmsnorm_fwd(&self, out: &mut WBuf, rstd: &mut WBuf, x: &WBuf, w: &WBuf, n: usize, c: usize, eps: f32) {
        if n == 0 || c == 0 {
            return;
        }
        check_elems("rmsnorm_fwd", n, c);
        self.dispatch("norm.rmsnorm_fwd", NORM, "rmsnorm_fwd", &[u(n), u(c), f(eps)], &[&out.buf, &rstd.buf, &x.buf, &w.buf], rows_grid(n));
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn op_rmsnorm_bwd(&self, dx: &mut WBuf, dw: &mut WBuf, dy: &WBuf, x: &WBuf, w: &WBuf, rstd: &WBuf, n: usize, c: usize) {
        if n == 0 || c == 0 {
            return;
        }
        check_elems("rmsnorm_bwd", n, c);
        let chunks = n.div_ceil(ROW_CHUNK);
        let p = [u(n), u(c), 0, u(chunks)];
        let part = self.scratch(chunks * c);
        self.dispatch(
            "norm.rmsnorm_bwd_dw_partial",
            NORM,
            "rmsnorm_bwd_dw_partial",
            &p,
            &[&part.buf, &dy.buf, &x.buf, &rstd.buf],
            groups_1d((chunks * c) as u64, WG),
        );
        self.colsum_finish(dw, &part, &p, c);
        self.dispatch("norm.rmsnorm_bwd_dx", NORM, "rmsnorm_bwd_dx", &p, &[&dx.buf, &dy.buf, &x.buf, &w.buf, &rstd.buf], rows_grid(n));
    }

    /// acc[j] += Σ_k partial[k, j], k in order (pass 2 of the norms' column sums).
    fn colsum_finish(&self, acc: &mut WBuf, partial: &WBuf, p: &[u32; 4], c: usize) {
        self.dispatch("norm.colsum_finish", NORM, "colsum_finish", p, &[&acc.buf, &partial.buf], groups_1d(c as u64, WG));
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
        if n == 0 || c == 0 {
            return;
        }
        check_elems("layernorm_fwd", n, c);
        self.dispatch(
            "norm.layernorm_fwd",
            NORM,
            "layernorm_fwd",
            &[u(n), u(c), f(eps)],
            &[&out.buf, &mean.buf, &rstd.buf, &x.buf, &w.buf, &b.buf],
            rows_grid(n),
        );
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
        if n == 0 || c == 0 {
            return;
        }
        check_elems("layernorm_bwd", n, c);
        let chunks = n.div_ceil(ROW_CHUNK);
        let p = [u(n), u(c), 0, u(chunks)];
        let (part_w, part_b) = (self.scratch(chunks * c), self.scratch(chunks * c));
        self.dispatch(
            "norm.layernorm_bwd_dwdb_partial",
            NORM,
            "layernorm_bwd_dwdb_partial",
            &p,
            &[&part_w.buf, &part_b.buf, &dy.buf, &x.buf, &mean.buf, &rstd.buf],
            groups_1d((chunks * c) as u64, WG),
        );
        self.colsum_finish(dw, &part_w, &p, c);
        self.colsum_finish(db, &part_b, &p, c);
        self.dispatch(
            "norm.layernorm_bwd_dx",
            NORM,
            "layernorm_bwd_dx",
            &p,
            &[&dx.buf, &dy.buf, &x.buf, &w.buf, &mean.buf, &rstd.buf],
            rows_grid(n),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn rope(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize, sign: f32) {
        let pairs = n * n_heads * (head_dim / 2);
        if pairs == 0 {
            return;
        }
        check_elems("rope", n, n_heads * head_dim);
        self.dispatch(
            "rope.rope",
            ROPE,
            "rope",
            &[u(n), u(n_heads), u(head_dim), f(sign)],
            &[&x.buf, &positions.buf, &inv_freq.buf],
            groups_1d(pairs as u64, WG),
        );
    }

    pub(crate) fn op_rope_fwd(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        self.rope(x, positions, inv_freq, n, n_heads, head_dim, 1.0);
    }

    pub(crate) fn op_rope_bwd(&self, dx: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        self.rope(dx, positions, inv_freq, n, n_heads, head_dim, -1.0);
    }

    fn elementwise(&self, key: &'static str, entry: &'static str, bufs: &[&wgpu::Buffer], len: usize) {
        if len == 0 {
            return;
        }
        check_elems(entry, len, 1);
        self.dispatch(key, ACTIVATION, entry, &[u(len)], bufs, groups_1d(len as u64, WG));
    }

    pub(crate) fn op_swiglu_fwd(&self, out: &mut WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.elementwise("activation.swiglu_fwd", "swiglu_fwd", &[&out.buf, &gate.buf, &up.buf], len);
    }

    pub(crate) fn op_swiglu_bwd(&self, dgate: &mut WBuf, dup: &mut WBuf, dout: &WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.elementwise("activation.swiglu_bwd", "swiglu_bwd", &[&dgate.buf, &dup.buf, &dout.buf, &gate.buf, &up.buf], len);
    }

    pub(crate) fn op_gelu_fwd(&self, out: &mut WBuf, x: &WBuf, len: usize) {
        self.elementwise("activation.gelu_fwd", "gelu_fwd", &[&out.buf, &x.buf], len);
    }

    pub(crate) fn op_gelu_bwd(&self, dx: &mut WBuf, dout: &WBuf, x: &WBuf, len: usize) {
        self.elementwise("activation.gelu_bwd", "gelu_bwd", &[&dx.buf, &dout.buf, &x.buf], len);
    }

    pub(crate) fn op_softmax_fwd(&self, out: &mut WBuf, x: &WBuf, n: usize, v: usize, temperature: f32) {
        if n == 0 || v == 0 {
            return;
        }
        check_elems("softmax_fwd", n, v);
        let inv_t = 1.0 / temperature;
        self.dispatch("softmax.softmax_fwd", SOFTMAX, "softmax_fwd", &[u(n), u(v), f(inv_t)], &[&out.buf, &x.buf], rows_grid(n));
    }

    pub(crate) fn op_softmax_bwd(&self, dx: &mut WBuf, dy: &WBuf, y: &WBuf, n: usize, v: usize) {
        if n == 0 || v == 0 {
            return;
        }
        check_elems("softmax_bwd", n, v);
        self.dispatch("softmax.softmax_bwd", SOFTMAX, "softmax_bwd", &[u(n), u(v)], &[&dx.buf, &dy.buf, &y.buf], rows_grid(n));
    }

    pub(crate) fn op_xent_fwd_bwd(&self, logits: &mut WBuf, losses: &mut WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        if n == 0 || v == 0 {
            return;
        }
        check_elems("xent_fwd_bwd", n, v);
        self.dispatch(
            "xent.xent_fwd_bwd",
            XENT,
            "xent_fwd_bwd",
            &[u(n), u(v)],
            &[&logits.buf, &losses.buf, &targets.buf, &coef.buf],
            rows_grid(n),
        );
    }

    pub(crate) fn op_token_logprobs(&self, logp: &mut WBuf, greedy: &mut WBuf, logits: &WBuf, targets: &WIds, n: usize, v: usize) {
        if n == 0 || v == 0 {
            return;
        }
        check_elems("token_logprobs", n, v);
        self.dispatch(
            "xent.token_logprobs",
            XENT,
            "token_logprobs",
            &[u(n), u(v)],
            &[&logp.buf, &greedy.buf, &logits.buf, &targets.buf],
            rows_grid(n),
        );
    }

    pub(crate) fn op_token_logprobs_bwd(&self, dlogits: &mut WBuf, logits: &WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        if n == 0 || v == 0 {
            return;
        }
        check_elems("token_logprobs_bwd", n, v);
        self.dispatch(
            "xent.token_logprobs_bwd",
            XENT,
            "token_logprobs_bwd",
            &[u(n), u(v)],
            &[&dlogits.buf, &logits.buf, &targets.buf, &coef.buf],
            rows_grid(n),
        );
    }

    pub(crate) fn op_adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: &AdamW, len: usize) {
        if len == 0 {
            return;
        }
        check_elems("adamw", len, 1);
        // the CPU kernel's scalars, rounded to f32 the same way
        let (decay, step_size, bc2_sqrt) = h.scalars();
        let params = [
            u(len),
            f(decay),
            f(step_size),
            f(bc2_sqrt),
            f(1.0 - h.beta1),
            f(h.beta2),
            f(1.0 - h.beta2),
            f(h.eps),
            f(h.grad_scale),
        ];
        self.dispatch("adamw.adamw", ADAMW, "adamw", &params, &[&p.buf, &g.buf, &m.buf, &v.buf], groups_1d(len as u64, WG));
    }
}
