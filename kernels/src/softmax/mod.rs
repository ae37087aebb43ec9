//! Row softmax, forward and backward (attention fuses its own; this one serves sampling and
//! any op that needs probabilities).

use crate::vmath;
use rayon::prelude::*;

/// The GPU sources of the row softmax.
pub const FAMILY: crate::Family = crate::Family {
    name: "softmax",
    cuda: include_str!("softmax.cu"),
    cuda_kernels: &["softmax_fwd", "softmax_bwd"],
    wgsl: &[("softmax", WGSL)],
};

/// softmax.wgsl with the row prelude: entry points `softmax_fwd`, `softmax_bwd`.
pub const WGSL: &str = crate::wgsl_row_module!("softmax.wgsl");

/// out = softmax(x) over rows of width v; x, out: (N,V). `temperature` divides the logits first.
pub fn softmax_fwd(out: &mut [f32], x: &[f32], v: usize, temperature: f32) {
    out.par_chunks_mut(v).zip(x.par_chunks(v)).for_each(|(o, xr)| {
        let inv_t = 1.0 / temperature;
        // max(x/t) = max(x)/t for t > 0
        let max = vmath::max(xr) * inv_t;
        o.copy_from_slice(xr);
        let sum = vmath::exp_affine_sum(o, inv_t, max);
        vmath::scale(o, (1.0 / sum) as f32);
    });
}

/// dx = y ⊙ (dy − Σ y·dy) (`=`), the backward of `softmax_fwd` at temperature 1.
pub fn softmax_bwd(dx: &mut [f32], dy: &[f32], y: &[f32], v: usize) {
    dx.par_chunks_mut(v).zip(dy.par_chunks(v)).zip(y.par_chunks(v)).for_each(|((dx, dy), y)| {
        let dot = vmath::dot(dy, y);
        for ((d, &g), &p) in dx.iter_mut().zip(dy).zip(y) {
            *d = p * (g - dot);
        }
    });
}
