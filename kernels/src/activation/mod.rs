//! SwiGLU (LLaMA's MLP), the tanh form of GELU (BLOOM's MLP), GeGLU (Gemma's MLP: the same GELU
//! gating an up projection) and ReLU, forward and backward; soft-capping (Gemma 2's logits:
//! cap·tanh(x/cap)); element-wise dropout with a counter-based mask (the same bits on every backend).

use rayon::prelude::*;

/// The GPU sources of SwiGLU, GELU, GeGLU, ReLU, soft-capping and dropout.
pub const FAMILY: crate::Family = crate::Family {
    name: "activation",
    cuda: include_str!("activation.cu"),
    cuda_kernels: &["swiglu_fwd", "swiglu_bwd", "gelu_fwd", "gelu_bwd", "geglu_fwd", "geglu_bwd", "relu_fwd", "relu_bwd", "softcap_fwd", "softcap_bwd", "dropout"],
    wgsl: &[("activation", WGSL)],
};

/// Entry points `swiglu_fwd`, `swiglu_bwd`, `gelu_fwd`, `gelu_bwd`, `geglu_fwd`, `geglu_bwd`,
/// `relu_fwd`, `relu_bwd`, `dropout` (`=`), `dropout_acc` (`+=`), `softcap_fwd` and `softcap_bwd`
/// (in place) (one thread per element), after the shared `tanh.wgsl`.
pub const WGSL: &str = concat!(include_str!("../tanh.wgsl"), "\n", include_str!("activation.wgsl"));

const PAR_CHUNK: usize = 4096;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + crate::vmath::exp(-x))
}

/// The chunk kernels of a gated unit (SwiGLU, GeGLU): (out, gate, up) and
/// (dgate, dup, dout, gate, up).
type GatedFwdChunk = fn(&mut [f32], &[f32], &[f32]);
type GatedBwdChunk = fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32]);

/// A gated unit's forward: `chunk` over chunks in parallel.
fn gated_fwd(out: &mut [f32], gate: &[f32], up: &[f32], chunk: GatedFwdChunk) {
    out.par_chunks_mut(PAR_CHUNK).zip(gate.par_chunks(PAR_CHUNK)).zip(up.par_chunks(PAR_CHUNK)).for_each(|((o, g), u)| chunk(o, g, u));
}

/// A gated unit's backward: `chunk` over chunks in parallel.
fn gated_bwd(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32], chunk: GatedBwdChunk) {
    dgate
        .par_chunks_mut(PAR_CHUNK)
        .zip(dup.par_chunks_mut(PAR_CHUNK))
        .zip(dout.par_chunks(PAR_CHUNK))
        .zip(gate.par_chunks(PAR_CHUNK).zip(up.par_chunks(PAR_CHUNK)))
        .for_each(|(((dg, du), d), (g, u))| chunk(dg, du, d, g, u));
}

/// out = silu(gate) · up. All (N,F).
pub fn swiglu_fwd(out: &mut [f32], gate: &[f32], up: &[f32]) {
    gated_fwd(out, gate, up, swiglu_fwd_chunk);
}

/// dgate = dout·up·silu'(gate), dup = dout·silu(gate)  (both `=`). All (N,F).
pub fn swiglu_bwd(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    gated_bwd(dgate, dup, dout, gate, up, swiglu_bwd_chunk);
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

/// GELU's tanh term t = tanh(√(2/π)·x·(1 + 0.044715·x²)), shared by gelu and gelu' (GeGLU's
/// backward needs both).
#[inline(always)]
fn gelu_t(x: f32) -> f32 {
    tanh(SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x))
}

/// gelu(x) = x·½·(1 + t), t = gelu_t(x).
#[inline(always)]
fn gelu_of(x: f32, t: f32) -> f32 {
    x * 0.5 * (1.0 + t)
}

/// gelu'(x), t = gelu_t(x).
#[inline(always)]
fn gelu_grad_of(x: f32, t: f32) -> f32 {
    0.5 * x * ((1.0 - t * t) * (SQRT_2_OVER_PI + 0.107_032_24 * x * x)) + 0.5 * (1.0 + t)
}

crate::vmath::multiversion! {
    fn gelu_fwd_chunk(o: &mut [f32], x: &[f32]) -> () {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = gelu_of(x, gelu_t(x));
        }
    }
}

crate::vmath::multiversion! {
    fn gelu_bwd_chunk(dx: &mut [f32], d: &[f32], x: &[f32]) -> () {
        for ((dx, &d), &x) in dx.iter_mut().zip(d).zip(x) {
            *dx = gelu_grad_of(x, gelu_t(x)) * d;
        }
    }
}

crate::vmath::multiversion! {
    fn geglu_fwd_chunk(o: &mut [f32], g: &[f32], u: &[f32]) -> () {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = gelu_of(g, gelu_t(g)) * u;
        }
    }
}

crate::vmath::multiversion! {
    fn geglu_bwd_chunk(dg: &mut [f32], du: &mut [f32], d: &[f32], g: &[f32], u: &[f32]) -> () {
        for ((((dg, du), &d), &g), &u) in dg.iter_mut().zip(du.iter_mut()).zip(d).zip(g).zip(u) {
            let t = gelu_t(g);
            *du = d * gelu_of(g, t);
            *dg = d * u * gelu_grad_of(g, t);
        }
    }
}

// written as PyTorch writes it; the f32 it rounds to is the one intended
#[allow(clippy::excessive_precision)]
const SQRT_2_OVER_PI: f32 = 0.797_884_56;

/// tanh through the vectorisable exp: 1 − 2/(e^{2u} + 1) (saturates to ±1 without NaN; the
/// absolute error stays at f32 rounding, which is what GELU's `0.5·x·(1 + tanh)` needs; the
/// soft-cap, which needs a small relative error, uses `vmath::tanh`).
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

/// out = gelu(gate) · up (`=`), gelu the tanh form above (PyTorch's `gelu(approximate="tanh")`):
/// Gemma's MLP. All (N,F).
pub fn geglu_fwd(out: &mut [f32], gate: &[f32], up: &[f32]) {
    gated_fwd(out, gate, up, geglu_fwd_chunk);
}

/// dgate = dout·up·gelu'(gate), dup = dout·gelu(gate)  (both `=`). All (N,F).
pub fn geglu_bwd(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    gated_bwd(dgate, dup, dout, gate, up, geglu_bwd_chunk);
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

/// Whether `cap` can soft-cap (`c·tanh(x/c)` needs a positive, finite c); panics naming `op`.
#[track_caller]
pub fn check_softcap(op: &str, cap: f32) {
    assert!(cap > 0.0 && cap.is_finite(), "{op}: the soft-cap must be positive and finite, got {cap}");
}

crate::vmath::multiversion! {
    /// x ← cap·tanh(x/cap), one slice on the calling thread (the attention tiles use it too).
    pub(crate) fn softcap_chunk(x: &mut [f32], cap: f32) -> () {
        for v in x.iter_mut() {
            *v = cap * crate::vmath::tanh(*v / cap);
        }
    }
}

crate::vmath::multiversion! {
    /// x ← cap·tanh(x/cap) as [`softcap_chunk`] (the same bits), and dcap ← 1 − tanh²(x/cap),
    /// the derivative, from the input x.
    pub(crate) fn softcap_grad_chunk(x: &mut [f32], dcap: &mut [f32], cap: f32) -> () {
        for (v, d) in x.iter_mut().zip(dcap.iter_mut()) {
            let t = crate::vmath::tanh(*v / cap);
            *v = cap * t;
            *d = 1.0 - t * t;
        }
    }
}

crate::vmath::multiversion! {
    fn softcap_bwd_chunk(dy: &mut [f32], y: &[f32], cap: f32) -> () {
        for (d, &y) in dy.iter_mut().zip(y) {
            let t = y / cap;
            *d *= 1.0 - t * t;
        }
    }
}

/// x = cap·tanh(x/cap) in place (Gemma 2's `final_logit_softcapping`: logits / cap, tanh, · cap).
/// cap > 0.
pub fn softcap_fwd(x: &mut [f32], cap: f32) {
    check_softcap("softcap_fwd", cap);
    x.par_chunks_mut(PAR_CHUNK).for_each(|x| softcap_chunk(x, cap));
}

/// dy *= 1 − (y/cap)² in place, y = softcap_fwd's output (the derivative of cap·tanh(x/cap) is
/// 1 − tanh², and tanh = y/cap: the capped logits are all the backward needs).
pub fn softcap_bwd(dy: &mut [f32], y: &[f32], cap: f32) {
    check_softcap("softcap_bwd", cap);
    dy.par_chunks_mut(PAR_CHUNK).zip(y.par_chunks(PAR_CHUNK)).for_each(|(d, y)| softcap_bwd_chunk(d, y, cap));
}

/// Element-wise dropout. Element i (0-based, as u32) is kept iff h(i) ≥ `threshold`, where, in
/// wrapping u32 arithmetic,
/// `mix(x) = { x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 }` and
/// `h(i) = mix(i ^ key)`, `key = mix((seed as u32) ^ mix((seed >> 32) as u32))` ([`Dropout::key`],
/// computed once on the host: the GPU kernels get `key`, not the seed). A kept element becomes
/// x·`scale`, a dropped one exactly +0 whatever x holds (NaN and ±∞ too: x·0 is never computed);
/// the result is written (`=`) or, with `accumulate`, added (`+=`, the rounded product added).
/// The mask depends on the seed and the index only, so it is the same bit for bit on every
/// backend, and a backward pass reuses the forward's `Dropout` on dout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub seed: u64,
    /// The u32 nearest p·2³² (at most `u32::MAX`): a fraction p of the hashes falls below it.
    pub threshold: u32,
    /// 1/(1 − p), computed in f64 and rounded to f32.
    pub scale: f32,
    /// `+=` into out instead of `=`.
    pub accumulate: bool,
}

impl Dropout {
    /// Drops each element with probability `p` (in [0, 1)) and scales the rest by 1/(1 − p);
    /// overwrites out. p = 0 keeps every element, scaled by 1.
    pub fn new(seed: u64, p: f32) -> Dropout {
        assert!((0.0..1.0).contains(&p), "dropout: p = {p} is outside [0, 1)");
        let threshold = (p as f64 * 4_294_967_296.0).round().min(u32::MAX as f64) as u32;
        Dropout { seed, threshold, scale: (1.0 / (1.0 - p as f64)) as f32, accumulate: false }
    }
    /// Accumulate into out (`+=`).
    pub fn accumulate(mut self) -> Self {
        self.accumulate = true;
        self
    }
    /// The seed folded to the 32 bits the mask hashes with: h(i) = mix(i ^ key).
    pub fn key(&self) -> u32 {
        mix(self.seed as u32 ^ mix((self.seed >> 32) as u32))
    }
    /// Whether element `i` is kept.
    pub fn keeps(&self, i: u32) -> bool {
        mix(i ^ self.key()) >= self.threshold
    }
}

/// The mask's 32-bit integer hash (xorshift-multiply rounds).
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

// `i0` is the chunk's first element index; indices wrap at 2³² (as the GPU kernels' u32 index).
crate::vmath::multiversion! {
    fn dropout_chunk(o: &mut [f32], x: &[f32], i0: u32, key: u32, d: &Dropout) -> () {
        let (t, s) = (d.threshold, d.scale);
        let kept = |j: usize| mix(i0.wrapping_add(j as u32) ^ key) >= t;
        if d.accumulate {
            for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                *o += if kept(j) { x * s } else { 0.0 };
            }
        } else {
            for (j, (o, &x)) in o.iter_mut().zip(x).enumerate() {
                *o = if kept(j) { x * s } else { 0.0 };
            }
        }
    }
}

/// out = x·scale where kept, else 0 (`=`, or `+=` with `d.accumulate`); see [`Dropout`].
pub fn dropout(out: &mut [f32], x: &[f32], d: &Dropout) {
    let key = d.key();
    out.par_chunks_mut(PAR_CHUNK).zip(x.par_chunks(PAR_CHUNK)).enumerate().for_each(|(c, (o, x))| dropout_chunk(o, x, (c * PAR_CHUNK) as u32, key, d));
}
