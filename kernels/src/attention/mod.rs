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

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Scores of one query row against its visible keys into `s`; returns their maximum.
#[allow(clippy::too_many_arguments)]
fn row_scores(s: &mut [f32], qrow: &[f32], k: &[f32], sh: &AttnShape, b: usize, g: usize, slope: f32, n_vis: usize) -> f32 {
    let (d, kw) = (sh.head_dim, sh.n_kv_heads * sh.head_dim);
    let mut max = f32::NEG_INFINITY;
    for (j, sj) in s[..n_vis].iter_mut().enumerate() {
        let krow = &k[(b * sh.tk + j) * kw + g * d..][..d];
        *sj = sh.scale * dot(qrow, krow) + slope * j as f32;
        max = max.max(*sj);
    }
    max
}

/// out = softmax(scores)·v (`=`), lse saved (`=`). Rows with no visible key give 0 and -inf.
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
    assert!(q.len() >= sh.batch * sh.tq * hq * d && k.len() >= sh.batch * sh.tk * kw && v.len() >= sh.batch * sh.tk * kw);
    out.par_chunks_mut(hq * d).zip(lse.par_chunks_mut(hq)).enumerate().for_each_init(
        || vec![0f32; sh.tk],
        |s, (row, (orow, lrow))| {
            let (b, i) = (row / sh.tq, row % sh.tq);
            let n_vis = sh.visible(q_pos0[b], kv_len[b], i);
            for h in 0..hq {
                let g = h / rep;
                let o = &mut orow[h * d..][..d];
                o.iter_mut().for_each(|x| *x = 0.0);
                if n_vis == 0 {
                    lrow[h] = f32::NEG_INFINITY;
                    continue;
                }
                let qrow = &q[row * hq * d + h * d..][..d];
                let slope = alibi.map_or(0.0, |a| a[h]);
                let max = row_scores(s, qrow, k, sh, b, g, slope, n_vis);
                // s[j] ← exp(s_j − max), once; p_j = s[j] / Σ
                let mut sum = 0f64;
                for x in s[..n_vis].iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x as f64;
                }
                lrow[h] = max + sum.ln() as f32;
                let inv = (1.0 / sum) as f32;
                for (j, &e) in s[..n_vis].iter().enumerate() {
                    let p = e * inv;
                    let vrow = &v[(b * sh.tk + j) * kw + g * d..][..d];
                    for (o, &vv) in o.iter_mut().zip(vrow) {
                        *o += p * vv;
                    }
                }
            }
        },
    );
}

/// Backward of `attention_fwd`: dq, dk, dv all `=` (overwritten). Work is split by
/// (sequence, kv head), so each task owns its dk/dv rows and its query heads' dq rows.
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
    // the gradients are written through raw pointers below: check their extents first
    assert!(dq.len() >= sh.batch * sh.tq * hq * d && dk.len() >= sh.batch * sh.tk * kw && dv.len() >= sh.batch * sh.tk * kw, "attention_bwd: gradient buffers too small for {sh:?}");
    let (pdq, pdk, pdv) = (SharedMut(dq.as_mut_ptr()), SharedMut(dk.as_mut_ptr()), SharedMut(dv.as_mut_ptr()));
    (0..sh.batch * sh.n_kv_heads).into_par_iter().for_each(|task| {
        let (b, g) = (task / sh.n_kv_heads, task % sh.n_kv_heads);
        let (pdq, pdk, pdv) = (pdq, pdk, pdv);
        let mut dk_loc = vec![0f32; sh.tk * d];
        let mut dv_loc = vec![0f32; sh.tk * d];
        let mut s = vec![0f32; sh.tk];
        let mut dq_row = vec![0f32; d];
        for h in g * rep..(g + 1) * rep {
            let slope = alibi.map_or(0.0, |a| a[h]);
            for i in 0..sh.tq {
                let row = b * sh.tq + i;
                let n_vis = sh.visible(q_pos0[b], kv_len[b], i);
                let qrow = &q[row * hq * d + h * d..][..d];
                let dorow = &dout[row * hq * d + h * d..][..d];
                let orow = &out[row * hq * d + h * d..][..d];
                dq_row.iter_mut().for_each(|x| *x = 0.0);
                if n_vis > 0 {
                    let l = lse[row * hq + h];
                    row_scores(s.as_mut_slice(), qrow, k, sh, b, g, slope, n_vis);
                    // D_i = Σ_j p_j·(dout·v_j) = dout·out_i
                    let di = dot(dorow, orow);
                    for j in 0..n_vis {
                        let p = (s[j] - l).exp();
                        let (krow, vrow) = (&k[(b * sh.tk + j) * kw + g * d..][..d], &v[(b * sh.tk + j) * kw + g * d..][..d]);
                        let dp = dot(dorow, vrow);
                        let ds = p * (dp - di) * sh.scale;
                        let (dk_j, dv_j) = (&mut dk_loc[j * d..(j + 1) * d], &mut dv_loc[j * d..(j + 1) * d]);
                        for ((((dq, dk), dv), (&kx, &qx)), &dox) in dq_row.iter_mut().zip(dk_j.iter_mut()).zip(dv_j.iter_mut()).zip(krow.iter().zip(qrow)).zip(dorow) {
                            *dq += ds * kx;
                            *dk += ds * qx;
                            *dv += p * dox;
                        }
                    }
                }
                // SAFETY: dq row (b,i,h) belongs to this task alone (h is in group g of sequence b).
                unsafe { std::ptr::copy_nonoverlapping(dq_row.as_ptr(), pdq.0.add(row * hq * d + h * d), d) };
            }
        }
        for j in 0..sh.tk {
            let at = (b * sh.tk + j) * kw + g * d;
            // SAFETY: dk/dv rows (b,j,g) belong to this task alone.
            unsafe {
                std::ptr::copy_nonoverlapping(dk_loc[j * d..].as_ptr(), pdk.0.add(at), d);
                std::ptr::copy_nonoverlapping(dv_loc[j * d..].as_ptr(), pdv.0.add(at), d);
            }
        }
    });
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
