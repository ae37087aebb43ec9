//! Reductions and element-wise helpers: squared norms for gradient clipping, bias add and its
//! gradient, scale / axpy.

use crate::par::column_sums;
use rayon::prelude::*;

const PAR_CHUNK: usize = 1 << 14;

/// Σ x² in f64 over fixed chunks (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x.par_chunks(PAR_CHUNK).map(crate::vmath::sum_squares_f64).collect();
    partials.iter().sum()
}

/// x[n,:] += bias. x: (N,C) bias: (C)
pub fn bias_add(x: &mut [f32], bias: &[f32]) {
    let c = bias.len();
    x.par_chunks_mut(c).for_each(|row| row.iter_mut().zip(bias).for_each(|(x, b)| *x += b));
}

/// dbias += Σ_rows dy. dy: (N,C) dbias: (C)
pub fn bias_bwd(dbias: &mut [f32], dy: &[f32]) {
    let c = dbias.len();
    column_sums(dbias, dy.len() / c, c, |row, partial| {
        partial.iter_mut().zip(&dy[row * c..][..c]).for_each(|(p, g)| *p += g);
    });
}

/// x *= a
pub fn scale(x: &mut [f32], a: f32) {
    x.par_chunks_mut(PAR_CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v *= a));
}

/// y += a·x
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x));
}

/// x = value, in parallel chunks (gradients are zeroed every step: a single-threaded memset of
/// 134 MB took ~20 ms of a bench-33m step).
pub fn fill(x: &mut [f32], value: f32) {
    x.par_chunks_mut(PAR_CHUNK).for_each(|c| c.fill(value));
}

/// dst = src, in parallel chunks.
pub fn copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(PAR_CHUNK).zip(src.par_chunks(PAR_CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}
