//! RMSNorm (LLaMA) and LayerNorm (BLOOM), forward and backward.
//! Statistics are accumulated in f64 and saved per row for the backward pass.
//!
//! GPU sources: `norm.cu` (one block per row; dw/db through column partials finished by
//! reduce.cu's `col_finish_f32`) and `norm.wgsl` (one workgroup per row; column sums in
//! [`ROW_CHUNK`](crate::ROW_CHUNK)-row chunks, the CPU's order).

use crate::par::column_sums;
use crate::shapes::{need, Extent, NormShape};
use rayon::prelude::*;

/// The GPU sources of the norms.
pub const FAMILY: crate::Family = crate::Family {
    name: "norm",
    cuda: include_str!("norm.cu"),
    cuda_kernels: &["rmsnorm_fwd", "rmsnorm_bwd_dx", "rmsnorm_dw_partial", "layernorm_fwd", "layernorm_bwd_dx", "layernorm_dwdb_partial"],
    wgsl: &[("norm", WGSL)],
};

/// norm.wgsl with the row prelude: entry points `rmsnorm_fwd`, `rmsnorm_bwd_dx`,
/// `rmsnorm_bwd_dw_partial`, `layernorm_fwd`, `layernorm_bwd_dx`, `layernorm_bwd_dwdb_partial`,
/// `colsum_finish`.
pub const WGSL: &str = crate::wgsl_row_module!("norm.wgsl");

/// The tensors of RMSNorm's forward (`=`): out (N,C), rstd (N) from x (N,C) and w (C).
pub struct RmsNormFwd<'a, F: ?Sized> {
    pub out: &'a mut F,
    pub rstd: &'a mut F,
    pub x: &'a F,
    pub w: &'a F,
}

/// The tensors of RMSNorm's backward: dx (N,C) `+=`, dw (C) `+=`, from dy, x (N,C), w (C) and
/// the forward's rstd (N).
pub struct RmsNormBwd<'a, F: ?Sized> {
    pub dx: &'a mut F,
    pub dw: &'a mut F,
    pub dy: &'a F,
    pub x: &'a F,
    pub w: &'a F,
    pub rstd: &'a F,
}

/// The tensors of LayerNorm's forward (`=`): out (N,C), mean and rstd (N) from x (N,C), w and
/// b (C).
pub struct LayerNormFwd<'a, F: ?Sized> {
    pub out: &'a mut F,
    pub mean: &'a mut F,
    pub rstd: &'a mut F,
    pub x: &'a F,
    pub w: &'a F,
    pub b: &'a F,
}

/// The tensors of LayerNorm's backward: dx (N,C), dw and db (C), all `+=`, from dy, x (N,C),
/// w (C) and the forward's mean and rstd (N).
pub struct LayerNormBwd<'a, F: ?Sized> {
    pub dx: &'a mut F,
    pub dw: &'a mut F,
    pub db: &'a mut F,
    pub dy: &'a F,
    pub x: &'a F,
    pub w: &'a F,
    pub mean: &'a F,
    pub rstd: &'a F,
}

impl<F: Extent + ?Sized> RmsNormFwd<'_, F> {
    #[track_caller]
    pub fn check(&self, sh: &NormShape) {
        let (op, nc) = ("rmsnorm_fwd", sh.n * sh.c);
        need(op, "out", &*self.out, nc);
        need(op, "rstd", &*self.rstd, sh.n);
        need(op, "x", self.x, nc);
        need(op, "w", self.w, sh.c);
    }
}

impl<F: Extent + ?Sized> RmsNormBwd<'_, F> {
    #[track_caller]
    pub fn check(&self, sh: &NormShape) {
        let (op, nc) = ("rmsnorm_bwd", sh.n * sh.c);
        need(op, "dx", &*self.dx, nc);
        need(op, "dw", &*self.dw, sh.c);
        need(op, "dy", self.dy, nc);
        need(op, "x", self.x, nc);
        need(op, "w", self.w, sh.c);
        need(op, "rstd", self.rstd, sh.n);
    }
}

/// LayerNorm has no weight offset (no model asks for one); refusing it keeps a misconfigured
/// shape from being silently ignored.
#[track_caller]
fn check_no_offset(op: &str, sh: &NormShape) {
    assert!(sh.w_offset == 0.0, "{op}: a weight offset ({}) is RMSNorm's only", sh.w_offset);
}

impl<F: Extent + ?Sized> LayerNormFwd<'_, F> {
    #[track_caller]
    pub fn check(&self, sh: &NormShape) {
        let (op, nc) = ("layernorm_fwd", sh.n * sh.c);
        check_no_offset(op, sh);
        need(op, "out", &*self.out, nc);
        need(op, "mean", &*self.mean, sh.n);
        need(op, "rstd", &*self.rstd, sh.n);
        need(op, "x", self.x, nc);
        need(op, "w", self.w, sh.c);
        need(op, "b", self.b, sh.c);
    }
}

impl<F: Extent + ?Sized> LayerNormBwd<'_, F> {
    #[track_caller]
    pub fn check(&self, sh: &NormShape) {
        let (op, nc) = ("layernorm_bwd", sh.n * sh.c);
        check_no_offset(op, sh);
        need(op, "dx", &*self.dx, nc);
        need(op, "dw", &*self.dw, sh.c);
        need(op, "db", &*self.db, sh.c);
        need(op, "dy", self.dy, nc);
        need(op, "x", self.x, nc);
        need(op, "w", self.w, sh.c);
        need(op, "mean", self.mean, sh.n);
        need(op, "rstd", self.rstd, sh.n);
    }
}

/// `out = x · rstd · (w + shift)` with `rstd = 1/sqrt(mean(x²) + eps)`, as HF's `LlamaRMSNorm`
/// in f32 (shift [`NormShape::w_shift`]: −0.0 for none; Gemma's `(1 + w)` is shift 1).
/// x, out: (N,C)  w: (C)  rstd: (N) saved for backward.
pub fn rmsnorm_fwd(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], sh: &NormShape) {
    let (c, eps, shift) = (sh.c, sh.eps, sh.w_shift());
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(x.par_chunks(c)).for_each(|((o, r), xr)| {
        let ms = crate::vmath::sum_squares_f64(xr) / c as f64;
        let rs = 1.0 / ((ms as f32) + eps).sqrt();
        *r = rs;
        for ((o, &xv), &wv) in o.iter_mut().zip(xr).zip(w) {
            *o = (wv + shift) * (xv * rs);
        }
    });
}

/// dx += ∂L/∂x, dw += ∂L/∂w. dx accumulates so the residual stream's gradient flows through
/// the same buffer (`x_out = x + f(norm(x))`). The weight offset enters dx only (as w + shift);
/// dw = Σ dy·x·rstd either way.
/// dy, x, dx: (N,C)  w, dw: (C)  rstd: (N)
pub fn rmsnorm_bwd(dx: &mut [f32], dw: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], rstd: &[f32], sh: &NormShape) {
    let (n, c, shift) = (rstd.len(), sh.c, sh.w_shift());
    column_sums(dw, n, c, |row, partial| {
        let (dyr, xr, rs) = (&dy[row * c..][..c], &x[row * c..][..c], rstd[row]);
        for ((p, &g), &xv) in partial.iter_mut().zip(dyr).zip(xr) {
            *p += g * xv * rs;
        }
    });
    dx.par_chunks_mut(c).enumerate().for_each(|(row, dxr)| {
        let (dyr, xr, rs) = (&dy[row * c..][..c], &x[row * c..][..c], rstd[row]);
        // mean over the row of dxhat·xhat, with dxhat = dy·w and xhat = x·rstd
        let dot = dyr.iter().zip(w).zip(xr).map(|((&g, &wv), &xv)| (g * (wv + shift)) as f64 * (xv * rs) as f64).sum::<f64>() / c as f64;
        let dot = dot as f32;
        for (((d, &g), &wv), &xv) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
            *d += rs * (g * (wv + shift) - xv * rs * dot);
        }
    });
}

/// `out = (x − mean)·rstd·w + b`, as `torch.nn.LayerNorm`. x, out: (N,C)  w, b: (C)
/// mean, rstd: (N) saved for backward.
pub fn layernorm_fwd(t: LayerNormFwd<'_, [f32]>, c: usize, eps: f32) {
    let LayerNormFwd { out, mean, rstd, x, w, b } = t;
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
pub fn layernorm_bwd(t: LayerNormBwd<'_, [f32]>, c: usize) {
    let LayerNormBwd { dx, dw, db, dy, x, w, mean, rstd } = t;
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
