//! Scaled dot-product attention with a causal mask, grouped-query heads (GQA/MQA), optional
//! ALiBi bias, per-sequence key lengths and query offsets (KV-cache decoding). The forward saves
//! each row's log-sum-exp so the backward recomputes probabilities without storing them.
//!
//! Layouts are token-major, as the projections write them:
//! q, out: (B,Tq,Hq,D)   k, v: (B,Tk,Hkv,D)   lse: (B,Tq,Hq)
//! Query head h reads key/value head h / (Hq/Hkv). Query row i of sequence b sits at position
//! `q_pos0[b] + i` and sees keys j < kv_len[b] (and j ≤ its position when causal).
//! Score: `scale·(q·k_j) + slope_h·j` — HF BLOOM adds `slope·key_position`; by the shift
//! invariance of softmax that is ALiBi's `slope·(j − i)`.

use crate::par::SharedMut;
use crate::vmath;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub tq: usize,
    pub tk: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
}

impl AttnShape {
    fn group(&self) -> usize {
        assert!(self.n_kv_heads > 0 && self.n_heads % self.n_kv_heads == 0, "attention: {} heads not divisible by {} kv heads", self.n_heads, self.n_kv_heads);
        self.n_heads / self.n_kv_heads
    }
    /// Number of keys query row i of sequence b attends to.
    fn visible(&self, q_pos0: u32, kv_len: u32, i: usize) -> usize {
        let kv = (kv_len as usize).min(self.tk);
        if self.causal {
            kv.min(q_pos0 as usize + i + 1)
        } else {
            kv
        }
    }
    pub fn flops_fwd(&self) -> f64 {
        4.0 * (self.batch * self.n_heads * self.tq * self.tk * self.head_dim) as f64 * if self.causal && self.tq == self.tk { 0.5 } else { 1.0 }
    }
}

/// HF's ALiBi slopes (`build_alibi_tensor`), including head counts that are not powers of two:
/// the closest lower power of two gets the geometric series, the rest interleave from the next.
pub fn alibi_slopes(n_heads: usize) -> Vec<f32> {
    // The bases are Python floats (f64) in HF, the powers float32 tensors.
    let cp2 = 1usize << (usize::BITS - 1 - n_heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((cp2 as f64).log2() - 3.0)))) as f32;
    let mut slopes: Vec<f32> = (1..=cp2).map(|p| base.powf(p as f32)).collect();
    if cp2 != n_heads {
        let extra_base = 2f64.powf(-(2f64.powf(-(((2 * cp2) as f64).log2() - 3.0)))) as f32;
        let remaining = (n_heads - cp2).min(cp2);
        slopes.extend((0..remaining).map(|i| extra_base.powf((1 + 2 * i) as f32)));
    }
    slopes
}

/// Query rows per tile. A tile's scores (QT × visible keys) stay in cache and are produced and
/// consumed by GEMMs; with a causal mask, a tile reads keys up to its last row only.
const QT: usize = 64;

/// One strided single-threaded GEMM: dst(m,n) = alpha·lhs(m,k)·rhs(k,n) (+ dst if accumulate).
/// Strides are (row, column) in elements. The tasks calling this are already parallel.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn gemm_st(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, accumulate: bool, lhs: *const f32, lhs_rs: usize, lhs_cs: usize, rhs: *const f32, rhs_rs: usize, rhs_cs: usize, alpha: f32) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::ptr::write_bytes(dst.add(r * dst_rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(m, n, k, dst, 1, dst_rs as isize, accumulate, lhs, lhs_cs as isize, lhs_rs as isize, rhs, rhs_cs as isize, rhs_rs as isize, 1.0, alpha, false, false, false, gemm::Parallelism::None);
}

/// The score tile of query rows i0..i0+rows of (b, h) against keys 0..nk of kv head g:
/// s(rows, nk) = scale·Q·Kᵀ (+ slope·j with ALiBi).
#[allow(clippy::too_many_arguments)]
fn score_tile(s: &mut [f32], q: &[f32], k: &[f32], sh: &AttnShape, b: usize, h: usize, g: usize, i0: usize, rows: usize, nk: usize, slope: f32) {
    let (hq, d) = (sh.n_heads, sh.head_dim);
    let kw = sh.n_kv_heads * d;
    let q0 = ((b * sh.tq + i0) * hq + h) * d;
    let k0 = (b * sh.tk * sh.n_kv_heads + g) * d;
    // SAFETY: q rows i0..i0+rows and k rows 0..nk of this (b, head) lie inside the checked buffers.
    unsafe { gemm_st(rows, nk, d, s.as_mut_ptr(), nk, false, q[q0..].as_ptr(), hq * d, 1, k[k0..].as_ptr(), 1, kw, sh.scale) };
    if slope != 0.0 {
        for row in s[..rows * nk].chunks_exact_mut(nk) {
            for (j, x) in row.iter_mut().enumerate() {
                *x += slope * j as f32;
            }
        }
    }
}

/// out = softmax(scores)·v (`=`), lse saved (`=`). Rows with no visible key give 0 and -inf.
/// Tasks are (sequence, query head, tile of QT query rows); each computes its score tile with
/// one GEMM, the softmax in place, and its output rows with a second GEMM.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_pos0: &[u32],
    kv_len: &[u32],
    alibi: Option<&[f32]>,
    sh: &AttnShape,
) {
    let (hq, d, rep) = (sh.n_heads, sh.head_dim, sh.group());
    let kw = sh.n_kv_heads * d;
    assert!(q.len() >= sh.batch * sh.tq * hq * d && k.len() >= sh.batch * sh.tk * kw && v.len() >= sh.batch * sh.tk * kw, "attention_fwd: inputs too small for {sh:?}");
    assert!(out.len() >= sh.batch * sh.tq * hq * d && lse.len() >= sh.batch * sh.tq * hq, "attention_fwd: outputs too small for {sh:?}");
    let tiles = sh.tq.div_ceil(QT);
    let (pout, plse) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..sh.batch * hq * tiles).into_par_iter().for_each_init(Vec::new, |s: &mut Vec<f32>, task| {
        let (pout, plse) = (pout, plse);
        let (b, h, tile) = (task / (hq * tiles), task / tiles % hq, task % tiles);
        let g = h / rep;
        let i0 = tile * QT;
        let rows = QT.min(sh.tq - i0);
        let row_out = |r: usize| ((b * sh.tq + i0 + r) * hq + h) * d;
        let row_lse = |r: usize| (b * sh.tq + i0 + r) * hq + h;
        // visible keys grow with the row under a causal mask: the tile's last row sees the most
        let nk = sh.visible(q_pos0[b], kv_len[b], i0 + rows - 1);
        if nk == 0 {
            for r in 0..rows {
                // SAFETY: rows (b, i0+r, h) of out and lse belong to this task alone.
                unsafe {
                    std::ptr::write_bytes(pout.0.add(row_out(r)), 0, d);
                    *plse.0.add(row_lse(r)) = f32::NEG_INFINITY;
                }
            }
            return;
        }
        if s.len() < rows * nk {
            s.resize(rows * nk, 0.0);
        }
        let slope = alibi.map_or(0.0, |a| a[h]);
        score_tile(s, q, k, sh, b, h, g, i0, rows, nk, slope);
        for r in 0..rows {
            let n_vis = sh.visible(q_pos0[b], kv_len[b], i0 + r);
            let row = &mut s[r * nk..(r + 1) * nk];
            let (vis, hidden) = row.split_at_mut(n_vis);
            hidden.iter_mut().for_each(|x| *x = 0.0);
            // SAFETY: as above.
            let l = unsafe { &mut *plse.0.add(row_lse(r)) };
            if n_vis == 0 {
                *l = f32::NEG_INFINITY;
                continue;
            }
            let max = vmath::max(vis);
            let sum = vmath::exp_affine_sum(vis, 1.0, max);
            *l = max + sum.ln() as f32;
            vmath::scale(vis, (1.0 / sum) as f32);
        }
        let v0 = (b * sh.tk * sh.n_kv_heads + g) * d;
        // out rows (rows, d) = P (rows, nk) · V (nk, d)
        // SAFETY: the out rows of this task are disjoint from every other task's; v rows 0..nk exist.
        unsafe { gemm_st(rows, d, nk, pout.0.add(row_out(0)), hq * d, false, s.as_ptr(), nk, 1, v[v0..].as_ptr(), kw, 1, 1.0) };
    });
}

/// Backward of `attention_fwd`: dq, dk, dv all `=` (overwritten). Tasks are (sequence, kv
/// head), so each owns its dk/dv rows and the dq rows of its query heads. Per tile of query
/// rows the probabilities are recomputed from the saved lse (no (T,T) tensor is stored):
///   P = exp(S − lse)        dP = dO·Vᵀ        dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale
///   dQ = dS·K (`=`)         dK += dSᵀ·Q       dV += Pᵀ·dO     (over the heads of the group)
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    q_pos0: &[u32],
    kv_len: &[u32],
    alibi: Option<&[f32]>,
    sh: &AttnShape,
) {
    let (hq, d, rep) = (sh.n_heads, sh.head_dim, sh.group());
    let kw = sh.n_kv_heads * d;
    assert!(q.len() >= sh.batch * sh.tq * hq * d && k.len() >= sh.batch * sh.tk * kw && v.len() >= sh.batch * sh.tk * kw, "attention_bwd: inputs too small for {sh:?}");
    assert!(dout.len() >= sh.batch * sh.tq * hq * d && out.len() >= sh.batch * sh.tq * hq * d && lse.len() >= sh.batch * sh.tq * hq, "attention_bwd: saved tensors too small for {sh:?}");
    // the gradients are written through raw pointers below: check their extents first
    assert!(dq.len() >= sh.batch * sh.tq * hq * d && dk.len() >= sh.batch * sh.tk * kw && dv.len() >= sh.batch * sh.tk * kw, "attention_bwd: gradient buffers too small for {sh:?}");
    let (pdq, pdk, pdv) = (SharedMut(dq.as_mut_ptr()), SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
    (0..sh.batch * sh.n_kv_heads).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(p, ds): &mut (Vec<f32>, Vec<f32>), task| {
            let (b, g) = (task / sh.n_kv_heads, task % sh.n_kv_heads);
            let (pdq, pdk, pdv) = (pdq, pdk, pdv);
            let kv0 = (b * sh.tk * sh.n_kv_heads + g) * d;
            for j in 0..sh.tk {
                // SAFETY: dk/dv rows (b, j, g) belong to this task alone.
                unsafe {
                    std::ptr::write_bytes(pdk.0.add(kv0 + j * kw), 0, d);
                    std::ptr::write_bytes(pdv.0.add(kv0 + j * kw), 0, d);
                }
            }
            for h in g * rep..(g + 1) * rep {
                let slope = alibi.map_or(0.0, |a| a[h]);
                for i0 in (0..sh.tq).step_by(QT) {
                    let rows = QT.min(sh.tq - i0);
                    let row0 = ((b * sh.tq + i0) * hq + h) * d;
                    let nk = sh.visible(q_pos0[b], kv_len[b], i0 + rows - 1);
                    if nk == 0 {
                        for r in 0..rows {
                            // SAFETY: dq row (b, i0+r, h) belongs to this task alone.
                            unsafe { std::ptr::write_bytes(pdq.0.add(row0 + r * hq * d), 0, d) };
                        }
                        continue;
                    }
                    if p.len() < rows * nk {
                        p.resize(rows * nk, 0.0);
                        ds.resize(rows * nk, 0.0);
                    }
                    score_tile(p, q, k, sh, b, h, g, i0, rows, nk, slope);
                    // dP (rows, nk) = dO (rows, d) · Vᵀ (d, nk)
                    // SAFETY: dout rows of this tile and v rows 0..nk exist (checked above).
                    unsafe { gemm_st(rows, nk, d, ds.as_mut_ptr(), nk, false, dout[row0..].as_ptr(), hq * d, 1, v[kv0..].as_ptr(), 1, kw, 1.0) };
                    for r in 0..rows {
                        let i = i0 + r;
                        let n_vis = sh.visible(q_pos0[b], kv_len[b], i);
                        let (prow, dsrow) = (&mut p[r * nk..(r + 1) * nk], &mut ds[r * nk..(r + 1) * nk]);
                        if n_vis == 0 {
                            prow.iter_mut().for_each(|x| *x = 0.0);
                            dsrow.iter_mut().for_each(|x| *x = 0.0);
                            continue;
                        }
                        let l = lse[(b * sh.tq + i) * hq + h];
                        vmath::exp_affine_sum(&mut prow[..n_vis], 1.0, l);
                        prow[n_vis..].iter_mut().for_each(|x| *x = 0.0);
                        // D_i = Σ_j p_j·(dout·v_j) = dout_i·out_i
                        let o = row0 + r * hq * d;
                        let di = vmath::dot(&dout[o..o + d], &out[o..o + d]);
                        for (x, &pj) in dsrow[..n_vis].iter_mut().zip(prow.iter()) {
                            *x = pj * (*x - di) * sh.scale;
                        }
                        dsrow[n_vis..].iter_mut().for_each(|x| *x = 0.0);
                    }
                    // SAFETY: dq rows of this tile and dk/dv rows 0..nk of (b, g) belong to this
                    // task alone; every read operand lies inside the checked buffers.
                    unsafe {
                        // dQ (rows, d) = dS (rows, nk) · K (nk, d)
                        gemm_st(rows, d, nk, pdq.0.add(row0), hq * d, false, ds.as_ptr(), nk, 1, k[kv0..].as_ptr(), kw, 1, 1.0);
                        // dK (nk, d) += dSᵀ (nk, rows) · Q (rows, d)
                        gemm_st(nk, d, rows, pdk.0.add(kv0), kw, true, ds.as_ptr(), 1, nk, q[row0..].as_ptr(), hq * d, 1, 1.0);
                        // dV (nk, d) += Pᵀ (nk, rows) · dO (rows, d)
                        gemm_st(nk, d, rows, pdv.0.add(kv0), kw, true, p.as_ptr(), 1, nk, dout[row0..].as_ptr(), hq * d, 1, 1.0);
                    }
                }
            }
        },
    );
}

/// Writes new keys or values into a cache: cache[b, pos[b]+i, :] = new[b, i, :] for i < Tn
/// (rows past the capacity are dropped). cache: (B,Tcap,W) new: (B,Tn,W)
pub fn kv_write(cache: &mut [f32], new: &[f32], pos: &[u32], batch: usize, t_new: usize, t_cap: usize, width: usize) {
    cache.par_chunks_mut(t_cap * width).take(batch).enumerate().for_each(|(b, cb)| {
        for i in 0..t_new {
            let t = pos[b] as usize + i;
            if t < t_cap {
                cb[t * width..][..width].copy_from_slice(&new[(b * t_new + i) * width..][..width]);
            }
        }
    });
}
