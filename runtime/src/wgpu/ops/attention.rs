//! Attention forward and backward, and the KV-cache write: kernels/src/attention/*.wgsl.

use super::super::batch::{groups_1d, MAX_GROUPS_PER_DIM};
use super::super::{WBuf, WIds, WgpuBackend};
use super::u32_of;
use crate::{AttnGrads, AttnInputs, AttnShape, KvShape};
use okapi_kernels::attention::{self as ka, check_attn_outputs, WgslAttnVariant, WGSL_PREP_WG, WGSL_ROWS_PER_GROUP};

fn variant(d: usize) -> &'static WgslAttnVariant {
    ka::wgsl_variant(d).unwrap_or_else(|| panic!("attention (wgpu): head_dim {d} exceeds the kernels' maximum {}", ka::MAX_HEAD_DIM))
}

/// A (rows-per-group tiles, heads, batch) grid, checked against the per-dimension limit.
fn grid(rows: usize, heads: usize, batch: usize, what: &str) -> [u32; 3] {
    let g = [rows.div_ceil(WGSL_ROWS_PER_GROUP), heads, batch];
    assert!(g.iter().all(|&x| x <= MAX_GROUPS_PER_DIM as usize), "{what} (wgpu): grid {g:?} exceeds {MAX_GROUPS_PER_DIM} workgroups per dimension");
    g.map(|x| x as u32)
}

/// The kernels' `window`, clamped: positions there are u32, so a wider window changes nothing.
fn window(sh: &AttnShape) -> u32 {
    sh.window.min(u32::MAX as usize) as u32
}

/// Every index the kernels form must fit in u32.
fn check_indices(sh: &AttnShape, what: &str) {
    u32_of(sh.batch * sh.tq.max(sh.tk) * sh.n_heads.max(sh.n_kv_heads) * sh.head_dim.max(2), what);
}

impl WgpuBackend {
    /// Flash-style forward (attention_fwd.wgsl): out and lse `=`.
    pub(crate) fn op_attention_fwd(&self, out: &mut WBuf, lse: &mut WBuf, x: &AttnInputs<'_, WBuf, WIds>, sh: &AttnShape) {
        x.check("attention_fwd", sh);
        check_attn_outputs("attention_fwd", sh, out, lse, None);
        check_indices(sh, "attention_fwd");
        if sh.batch == 0 || sh.tq == 0 || sh.n_heads == 0 {
            return;
        }
        let var = variant(sh.head_dim);
        self.check_loop_budget(var.fwd_key, ka::wgsl_loop_iterations(sh).0);
        let params = [
            sh.batch as u32,
            sh.tq as u32,
            sh.tk as u32,
            sh.n_heads as u32,
            sh.n_kv_heads as u32,
            sh.head_dim as u32,
            sh.scale.to_bits(),
            sh.causal as u32,
            x.alibi.is_some() as u32,
            f32::NEG_INFINITY.to_bits(),
            window(sh),
            sh.softcap.to_bits(),
        ];
        // without ALiBi the slot is bound to q (never read)
        let al = x.alibi.map_or(&x.q.buf, |a| &a.buf);
        let bufs = [&x.q.buf, &x.k.buf, &x.v.buf, &x.q_pos0.buf, &x.kv_len.buf, al, &out.buf, &lse.buf];
        self.dispatch(var.fwd_key, var.fwd, "main", &params, &bufs, grid(sh.tq, sh.n_heads, sh.batch, "attention_fwd"));
    }

    /// Backward: dq, dk, dv `=`, in three deterministic passes (no atomics): prep (lse and
    /// D = rowsum(dout ⊙ out) per row, plus a small table of q_pos0 / kv_len / slopes), dk·dv
    /// (one thread per key), dq (one thread per query row).
    pub(crate) fn op_attention_bwd(&self, d: AttnGrads<'_, WBuf>, dout: &WBuf, out: &WBuf, lse: &WBuf, x: &AttnInputs<'_, WBuf, WIds>, sh: &AttnShape) {
        x.check("attention_bwd", sh);
        check_attn_outputs("attention_bwd", sh, out, lse, Some(&d));
        check_attn_outputs("attention_bwd", sh, dout, lse, None);
        check_indices(sh, "attention_bwd");
        if sh.batch == 0 || sh.n_heads == 0 {
            return;
        }
        let var = variant(sh.head_dim);
        let (_, dkdv_iters, dq_iters) = ka::wgsl_loop_iterations(sh);
        self.check_loop_budget(var.dkdv_key, dkdv_iters);
        self.check_loop_budget(var.dq_key, dq_iters);
        let rows = sh.batch * sh.tq * sh.n_heads;
        let stat = self.scratch(2 * rows);
        let info = self.scratch(2 * sh.batch + sh.n_heads);
        let al = x.alibi.map_or(&x.q.buf, |a| &a.buf);
        let prep = [sh.batch as u32, sh.tq as u32, sh.tk as u32, sh.n_heads as u32, sh.head_dim as u32, x.alibi.is_some() as u32];
        let n_prep = rows.max(2 * sh.batch + sh.n_heads);
        let prep_bufs = [&dout.buf, &out.buf, &lse.buf, &x.q_pos0.buf, &x.kv_len.buf, al, &stat.buf, &info.buf];
        self.dispatch("attention_bwd_prep", ka::WGSL_BWD_PREP, "main", &prep, &prep_bufs, groups_1d(n_prep as u64, WGSL_PREP_WG));
        let params = [sh.batch as u32, sh.tq as u32, sh.tk as u32, sh.n_heads as u32, sh.n_kv_heads as u32, sh.head_dim as u32, sh.scale.to_bits(), sh.causal as u32, window(sh), sh.softcap.to_bits()];
        let (q, k, v) = (&x.q.buf, &x.k.buf, &x.v.buf);
        if sh.tk > 0 {
            let g = grid(sh.tk, sh.n_kv_heads, sh.batch, "attention_bwd");
            self.dispatch(var.dkdv_key, var.bwd, "dkdv", &params, &[q, k, v, &dout.buf, &stat.buf, &info.buf, &d.dk.buf, &d.dv.buf], g);
        }
        if sh.tq > 0 {
            let g = grid(sh.tq, sh.n_heads, sh.batch, "attention_bwd");
            self.dispatch(var.dq_key, var.bwd, "dq", &params, &[q, k, v, &dout.buf, &stat.buf, &info.buf, &d.dq.buf], g);
        }
    }

    pub(crate) fn op_kv_write(&self, cache: &mut WBuf, new: &WBuf, pos: &WIds, sh: &KvShape) {
        sh.check(cache, new, pos);
        let total = sh.batch * sh.t_new * sh.width;
        u32_of(sh.batch * sh.t_cap * sh.width, "kv_write cache");
        let p = [sh.batch as u32, sh.t_new as u32, sh.t_cap as u32, sh.width as u32];
        self.dispatch("kv_write", ka::WGSL_KV_WRITE, "main", &p, &[&cache.buf, &new.buf, &pos.buf], groups_1d(total as u64, okapi_kernels::WGSL_WG as u32));
    }
}
