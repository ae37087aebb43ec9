//! SwiGLU (LLaMA's MLP), the tanh form of GELU (BLOOM's MLP) and ReLU, forward and backward.

use rayon::prelude::*;

/// The GPU sources of SwiGLU, GELU and ReLU.
pub const FAMILY: crate::Family = crate::Family {
    name: "activation",
    cuda: include_str!("activation.cu"),
    cuda_kernels: &["swiglu_fwd", "swiglu_bwd", "gelu_fwd", "gelu_bwd", "relu_fwd", "relu_bwd"],
    wgsl: &[("activation", WGSL)],
};

/// Entry points `swiglu_fwd`, `swiglu_bwd`, `gelu_fwd`, `gelu_bwd`, `relu_fwd`, `relu_bwd` (one
/// thread per element).
pub const WGSL: &str = include_str!("activation.wgsl");

const PAR_CHUNK: usize = 4096;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::vmath::exp(-x))
}

/// out = silu(gate) · up. All (N,F).
pub fn swiglu_fwd(out: &mut [f32], gate: &[f32], up: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(gate.par_chunks(PAR_CHUNK)).zip(up.par_chunks(PAR_CHUNK)).for_each(|((o, g), u)| swiglu_fwd_chunk(o, g, u));
}

/// dgate = dout·up·silu'(gate), dup = dout·silu(gate)  (both `=`). All (N,F).
pub fn swiglu_bwd(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    dgate
        .par_chunks_mut(PAR_CHUNK)
        .zip(dup.par_chunks_mut(PAR_CHUNK))
        .zip(dout.par_chunks(PAR_CHUNK))
        .zip(gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK)))
        .for_each(|(((dg, du), d), (g, u))| swiglu_bwd_chunk(dg, du, d, g, u));
}

// The chunk loops are zipped (no bounds checks) so they vectorise, and exist in an AVX-512 copy.
crate::vmath::multiversion! {
    fn swiglu_fwd_chunk(o: &mut [f32], g: &[f32], u: &[f32]) -> () {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    }
}

crate::vmath::multiversion! {
    fn swiglu_bwd_chunk(dg: &mut [f32], du: &mut [f32], d: &[f32], g: &[f32], u: &[f32]) -> () {
        for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(d).zip(g).zip(u) {
            let s = sigmoid(g);
            *du = d * g * s;
            *dg = d * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

crate::vmath::multiversion! {
    fn gelu_fwd_chunk(o: &mut [f32], x: &[f32]) -> () {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * 0.5 * (1.0 + tanh(SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)));
        }
    }
}

crate::vmath::multiversion! {
    fn gelu_bwd_chunk(dx: &mut [f32], d: &[f32], x: &[f32]) -> () {
        for ((dx, &d), &x) in dx.iter_mut().zip(d).zip(x) {
            let t = tanh(SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x));
            let ff = 0.5 * x * ((1.0 - t * t) * (SQRT_2_OVER_PI + 0.107_032_24 * x * x)) + 0.5 * (1.0 + t);
            *dx = ff * d;
        }
    }
}

// written as PyTorch writes it; the f32 it rounds to is the one intended
#[allow(clippy::excessive_precision)]
const SQRT_2_OVER_PI: f32 = 0.797_884_56;

/// tanh through the vectorisable exp: 1 − 2/(e^{2u} + 1) (saturates to ±1 without NaN; the
/// absolute error stays at f32 rounding, which is what GELU's `0.5·x·(1 + tanh)` needs).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (crate::vmath::exp(2.0 * u) + 1.0)
}

/// out = x·½·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²))), BLOOM's `bloom_gelu_forward`.
pub fn gelu_fwd(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| gelu_fwd_chunk(o, x));
}

/// dx = dout·gelu'(x) (`=`), BLOOM's `bloom_gelu_back`.
pub fn gelu_bwd(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    dx.par_chunks_mut(PAR_CHUNK).zip(dout.par_chunks(PAR_CHUNK)).zip(x.par_chunks(PAR_CHUNK)).for_each(|((dx, d), x)| gelu_bwd_chunk(dx, d, x));
}

// `x <= 0` is false for NaN: the forward passes NaN through and the backward passes dout, as
// PyTorch's relu (clamp_min) and threshold_backward do.
crate::vmath::multiversion! {
    fn relu_fwd_chunk(o: &mut [f32], x: &[f32]) -> () {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = if x <= 0.0 { 0.0 } else { x };
        }
    }
}

crate::vmath::multiversion! {
    fn relu_bwd_chunk(dx: &mut [f32], d: &[f32], x: &[f32]) -> () {
        for ((dx, &d), &x) in dx.iter_mut().zip(d).zip(x) {
            *dx = if x <= 0.0 { 0.0 } else { d };
        }
    }
}

/// out = max(x, 0) (`=`), NaN kept NaN: PyTorch's `relu`.
pub fn relu_fwd(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).for_each(|(o, x)| relu_fwd_chunk(o, x));
}

/// dx = 0 where x ≤ 0 (x = 0 included), else dout (`=`), PyTorch's `threshold_backward`.
pub fn relu_bwd(dx: &mut [f32], dout: &[f32], x: &[f32]) {
    dx.par_chunks_mut(PAR_CHUNK).zip(dout.par_chunks(PAR_CHUNK)).zip(x.par_chunks(PAR_CHUNK)).for_each(|((dx, d), x)| relu_bwd_chunk(dx, d, x));
}
