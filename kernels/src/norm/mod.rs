//! RMSNorm (LLaMA) and LayerNorm (BLOOM), forward and backward.
//! Statistics are accumulated in f64 and saved per row for the backward pass.

use crate::par::column_sums;
use rayon::prelude::*;

/// `out = x · rstd · w` with `rstd = 1/sqrt(mean(x²) + eps)`, as HF's `LlamaRMSNorm` in f32.
/// x, out: (N,C)  w: (C)  rstd: (N) saved for backward.
pub fn rmsnorm_fwd(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((o, r), xr)| {
        let ms = crate::vmath::sum_squares_f64(xr) / c as f64;
        let rs = 1.0 / ((ms as f32) + eps).sqrt();
        *r = rs;
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = wv * (xv * rs);
        }
    });
}

/// dx += ∂L/∂x, dw += ∂L/∂w. dx accumulates so the residual stream's gradient flows through
/// the same buffer (`x_out = x + f(norm(x))`).
/// dy, x, dx: (N,C)  w, dw: (C)  rstd: (N)
pub fn rmsnorm_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], c: usize) {
    let n = rstd.len();
    column_sums(dw, n, c, |row, partial| {
        let (dyr, xr, rs) = (&dy[row * c..][..c], &x[row * c..][..c], rstd[row]);
        for ((p, &g), &xv) in partial.iter_mut().zip(dyr).zip(xr) {
            *p += g * xv * rs;
        }
    });
    dx.par_chunks_mut(c).enumerate().for_each(|(row, dxr)| {
        let (dyr, xr, rs) = (&dy[row * c..][..c], &x[row * c..][..c], rstd[row]);
        // mean over the row of dxhat·xhat, with dxhat = dy·w and xhat = x·rstd
        let dot = dyr.iter().zip(w).zip(xr).map(|((&g, &wv), &xv)| (g * wv) as f64 * (xv * rs) as f64).sum::<f64>() / c as f64;
        let dot = dot as f32;
        for (((d, &g), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            *d += rs * (g * wv - xv * rs * dot);
        }
    });
}

/// `out = (x − mean)·rstd·w + b`, as `torch.nn.LayerNorm`. x, out: (N,C)  w, b: (C)
/// mean, rstd: (N) saved for backward.
pub fn layernorm_fwd(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], b: &[f32], c: usize, eps: f32) {
    out.par_chunks_mut(c)
        .zip(mean.par_iter_mut())
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(c))
        .for_each(|(((o, m), r), xr)| {
            let mu = crate::vmath::sum_and_sq_dev_f64(xr, 0.0).0 / c as f64;
            let var = crate::vmath::sum_and_sq_dev_f64(xr, mu).1 / c as f64;
            let rs = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mu = mu as f32;
            *m = mu;
            *r = rs;
            for (((o, &xv), &wv), &bv) in o.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (xv - mu) * rs * wv + bv;
            }
        });
}

/// dx += ∂L/∂x (see `rmsnorm_bwd`), dw += Σ dy·xhat, db += Σ dy.
pub fn layernorm_bwd(
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    mean: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let n = rstd.len();
    column_sums(dw, n, c, |row, partial| {
        let (dyr, xr) = (&dy[row * c..][..c], &x[row * c..][..c]);
        for ((p, &g), &xv) in partial.iter_mut().zip(dyr).zip(xr) {
            *p += g * (xv - mean[row]) * rstd[row];
        }
    });
    column_sums(db, n, c, |row, partial| {
        for (p, &g) in partial.iter_mut().zip(&dy[row * c..][..c]) {
            *p += g;
        }
    });
    dx.par_chunks_mut(c).enumerate().for_each(|(row, dxr)| {
        let (dyr, xr, mu, rs) = (&dy[row * c..][..c], &x[row * c..][..c], mean[row], rstd[row]);
        let mut sum_g = 0f64;
        let mut sum_gx = 0f64;
        for ((&g, &wv), &xv) in dyr.iter().zip(w).zip(xr) {
            let dxhat = (g * wv) as f64;
            sum_g += dxhat;
            sum_gx += dxhat * ((xv - mu) * rs) as f64;
        }
        let (mean_g, mean_gx) = ((sum_g / c as f64) as f32, (sum_gx / c as f64) as f32);
        for (((d, &g), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            let xhat = (xv - mu) * rs;
            *d += rs * (g * wv - mean_g - xhat * mean_gx);
        }
    });
}
