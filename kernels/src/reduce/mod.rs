//! Reductions and element-wise helpers: squared norms for gradient clipping, bias add and its
//! gradient, scale / axpy.

use crate::par::column_sums;
use rayon::prelude::*;

/// The GPU sources of the element-wise helpers and reductions.
pub const FAMILY: crate::Family = crate::Family {
    name: "reduce",
    cuda: include_str!("reduce.cu"),
    cuda_kernels: &[
        "fill_f32",
        "copy_f32",
        "scale_f32",
        "axpy_f32",
        "bias_add_f32",
        "col_partial_f32",
        "col_finish_f32",
        "sum_squares_partial",
        "sum_squares_finish",
        "f32_to_bf16",
        "bf16_unpack_f32",
    ],
    wgsl: &[
        ("fill", WGSL_FILL),
        ("scale", WGSL_SCALE),
        ("axpy", WGSL_AXPY),
        ("sum_squares", WGSL_SUM_SQUARES),
        ("bias_add", WGSL_BIAS_ADD),
        ("bias_bwd", WGSL_BIAS_BWD),
        ("unpack_bf16", WGSL_UNPACK_BF16),
    ],
};

pub const WGSL_FILL: &str = include_str!("fill.wgsl");
pub const WGSL_SCALE: &str = include_str!("scale.wgsl");
/// `dst[i]` = bf16 half (i mod 2) of word i/2 of `src`, as f32 ([`unpack_bf16`]).
pub const WGSL_UNPACK_BF16: &str = include_str!("unpack_bf16.wgsl");
pub const WGSL_AXPY: &str = include_str!("axpy.wgsl");
/// Entry points `partial` (one workgroup per [`WGSL_SUMSQ_CHUNK`] elements) and `finish`.
pub const WGSL_SUM_SQUARES: &str = include_str!("sum_squares.wgsl");
pub const WGSL_BIAS_ADD: &str = include_str!("bias_add.wgsl");
/// Entry points `partial` (one thread per (chunk of [`ROW_CHUNK`](crate::ROW_CHUNK) rows,
/// column)) and `finish` (one thread per column): the CPU's summation order.
pub const WGSL_BIAS_BWD: &str = include_str!("bias_bwd.wgsl");

/// Elements one workgroup of sum_squares.wgsl's first pass reduces (256 threads × 16).
pub const WGSL_SUMSQ_CHUNK: usize = 4096;
/// Threads per block of the CUDA element-wise kernels (grid-stride loops).
pub const CUDA_EW_BLOCK: u32 = 256;
/// Rows per chunk of the CUDA column sums (`col_partial_f32` and the norms' partials).
pub const CUDA_COL_CHUNK: usize = 64;
/// Blocks of the first pass of the CUDA sum of squares (fixed, so the sum's order is fixed).
pub const CUDA_SSQ_BLOCKS: usize = 512;

const PAR_CHUNK: usize = 1 << 14;

/// Σ x² in f64 over fixed chunks (deterministic).
pub fn sum_squares(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x.par_chunks(PAR_CHUNK).map(crate::vmath::sum_squares_f64).collect();
    partials.iter().sum()
}

/// x\[n,:\] += bias. x: (N,C) bias: (C)
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

/// bf16 bits of `x`, rounded to nearest even (a NaN stays a NaN).
pub fn bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to bf16 and packed two to an f32 slot (element 2i in the low half of slot i, as
/// bits: the slots are containers, not numbers) — how frozen weights are stored in bf16 on any
/// backend. The inverse is [`unpack_bf16`].
pub fn pack_bf16(x: &[f32]) -> Vec<f32> {
    x.chunks(2).map(|p| f32::from_bits(bf16_bits(p[0]) as u32 | (p.get(1).map_or(0, |&h| bf16_bits(h)) as u32) << 16)).collect()
}

/// `dst[i]` = the bf16 value in half (i mod 2) of slot i/2 of `src`, as f32 (`=`).
pub fn unpack_bf16(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, d)| {
        for (j, out) in d.iter_mut().enumerate() {
            let i = c * PAR_CHUNK + j;
            let w = src[i / 2].to_bits();
            *out = f32::from_bits(if i.is_multiple_of(2) { w << 16 } else { w & 0xffff_0000 });
        }
    });
}

/// dst = src, in parallel chunks.
pub fn copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(PAR_CHUNK).zip(src.par_chunks(PAR_CHUNK)).for_each(|(d, s)| d.copy_from_slice(s));
}
