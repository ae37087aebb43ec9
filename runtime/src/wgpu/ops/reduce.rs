//! Element-wise helpers and reductions (fill, scale, axpy, sum of squares, bias and its
//! gradient) and the embedding gather / scatter-add: kernels/src/{reduce,embedding}/*.wgsl.

use super::super::batch::{groups_1d, groups_fold};
use super::super::{WBuf, WIds, WgpuBackend};
use super::{f, u32_of};
use crate::{check, Rows};
use okapi_kernels::reduce::{self as kr, WGSL_SUMSQ_CHUNK};
use okapi_kernels::{embedding, ROW_CHUNK, WGSL_WG};

const WG: u32 = WGSL_WG as u32;

impl WgpuBackend {
    pub(crate) fn op_fill(&self, x: &mut WBuf, value: f32, len: usize) {
        check::len("fill", &[("x", &*x)], len);
        if len == 0 {
            return;
        }
        if value.to_bits() == 0 {
            self.record_clear(&x.buf, Some(len as u64 * 4));
            return;
        }
        self.dispatch("fill", kr::WGSL_FILL, "main", &[u32_of(len, "fill"), f(value)], &[&x.buf], groups_1d(len as u64, WG));
    }

    pub(crate) fn op_scale(&self, x: &mut WBuf, a: f32, len: usize) {
        check::len("scale", &[("x", &*x)], len);
        self.dispatch("scale", kr::WGSL_SCALE, "main", &[u32_of(len, "scale"), f(a)], &[&x.buf], groups_1d(len as u64, WG));
    }

    pub(crate) fn op_unpack_bf16(&self, dst: &mut WBuf, src: &WBuf, n: usize) {
        check::len("unpack_bf16", &[("dst", &*dst)], n);
        check::len("unpack_bf16", &[("src", src)], n.div_ceil(2));
        self.dispatch("unpack_bf16", kr::WGSL_UNPACK_BF16, "main", &[u32_of(n, "unpack_bf16")], &[&dst.buf, &src.buf], groups_1d(n as u64, WG));
    }

    pub(crate) fn op_axpy(&self, y: &mut WBuf, a: f32, x: &WBuf, len: usize) {
        check::len("axpy", &[("y", &*y), ("x", x)], len);
        self.dispatch("axpy", kr::WGSL_AXPY, "main", &[u32_of(len, "axpy"), f(a)], &[&y.buf, &x.buf], groups_1d(len as u64, WG));
    }

    /// acc[slot] = Σ x²: pass 1 writes one partial per WGSL_SUMSQ_CHUNK elements (per-thread
    /// strided sums, then a fixed tree); pass 2 folds the partials the same way (one workgroup).
    pub(crate) fn op_sum_squares(&self, acc: &mut WBuf, slot: usize, x: &WBuf, len: usize) {
        check::len("sum_squares", &[("acc", &*acc)], slot + 1);
        check::len("sum_squares", &[("x", x)], len);
        let chunks = len.div_ceil(WGSL_SUMSQ_CHUNK);
        let p = [u32_of(len, "sum_squares"), chunks as u32, slot as u32];
        self.with_partials(chunks, |partial| {
            self.dispatch("sum_squares_partial", kr::WGSL_SUM_SQUARES, "partial", &p, &[&acc.buf, &x.buf, &partial.buf], groups_fold(chunks as u64));
            self.dispatch("sum_squares_final", kr::WGSL_SUM_SQUARES, "finish", &p, &[&acc.buf, &x.buf, &partial.buf], [1, 1, 1]);
        });
    }

    pub(crate) fn op_bias_add(&self, x: &mut WBuf, bias: &WBuf, r: Rows) {
        check::bias("bias_add", x, bias, r);
        let p = [u32_of(r.len(), "bias_add"), r.c as u32];
        self.dispatch("bias_add", kr::WGSL_BIAS_ADD, "main", &p, &[&x.buf, &bias.buf], groups_1d(r.len() as u64, WG));
    }

    /// dbias += Σ_rows dy: pass 1 sums each chunk of ROW_CHUNK rows (in row order) into a
    /// partial, pass 2 adds the partials in chunk order — the CPU's exact summation order.
    pub(crate) fn op_bias_bwd(&self, dbias: &mut WBuf, dy: &WBuf, r: Rows) {
        check::bias("bias_bwd", dy, dbias, r);
        if r.is_empty() {
            return;
        }
        let chunks = r.n.div_ceil(ROW_CHUNK);
        let p = [u32_of(r.n, "bias_bwd rows"), u32_of(r.c, "bias_bwd columns"), chunks as u32, ROW_CHUNK as u32];
        self.with_partials(chunks * r.c, |partial| {
            self.dispatch("bias_bwd_partial", kr::WGSL_BIAS_BWD, "partial", &p, &[&dbias.buf, &dy.buf, &partial.buf], groups_1d((chunks * r.c) as u64, WG));
            self.dispatch("bias_bwd_final", kr::WGSL_BIAS_BWD, "finish", &p, &[&dbias.buf, &dy.buf, &partial.buf], groups_1d(r.c as u64, WG));
        });
    }

    pub(crate) fn op_embedding_fwd(&self, out: &mut WBuf, table: &WBuf, ids: &WIds, r: Rows) {
        check::embedding("embedding_fwd", out, table, ids, r);
        if r.c == 0 {
            return;
        }
        let p = [u32_of(r.n, "embedding_fwd"), r.c as u32, (table.len / r.c) as u32];
        self.dispatch("embedding_fwd", embedding::WGSL_FWD, "main", &p, &[&out.buf, &table.buf, &ids.buf], groups_1d(r.len() as u64, WG));
    }

    pub(crate) fn op_embedding_bwd(&self, dtable: &mut WBuf, dout: &WBuf, ids: &WIds, r: Rows) {
        check::embedding("embedding_bwd", dout, dtable, ids, r);
        if r.c == 0 {
            return;
        }
        self.check_loop_budget("embedding_bwd", r.n as u64);
        let p = [u32_of(r.n, "embedding_bwd"), r.c as u32, (dtable.len / r.c) as u32];
        self.dispatch("embedding_bwd", embedding::WGSL_BWD, "main", &p, &[&dtable.buf, &dout.buf, &ids.buf], groups_1d(r.c as u64, 64));
    }
}
