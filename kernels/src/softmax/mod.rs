//! Row softmax, forward and backward (attention fuses its own; this one serves sampling and
//! any op that needs probabilities).

use rayon::prelude::*;

/// out = softmax(x) over rows of width v; x, out: (N,V). `temperature` divides the logits first.
pub fn softmax_fwd(out: &mut [f32], x: &[f32], v: usize, temperature: f32) {
    out.par_chunks_mut(v).zip(x.par_chunks(v)).for_each(|(o, xr)| {
        let inv_t = 1.0 / temperature;
        let max = xr.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a * inv_t));
        let mut sum = 0f64;
        for (o, &a) in o.iter_mut().zip(xr) {
            *o = (a * inv_t - max).exp();
            sum += *o as f64;
        }
        let inv = (1.0 / sum) as f32;
        o.iter_mut().for_each(|o| *o *= inv);
    });
}

/// dx = y ⊙ (dy − Σ y·dy) (`=`), the backward of `softmax_fwd` at temperature 1.
pub fn softmax_bwd(dx: &mut [f32], dy: &[f32], y: &[f32], v: usize) {
    dx.par_chunks_mut(v).zip(dy.par_chunks(v)).zip(y.par_chunks(v)).for_each(|((dx, dy), y)| {
        let dot = dy.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
        for ((d, &g), &p) in dx.iter_mut().zip(dy).zip(y) {
            *d = p * (g - dot);
        }
    });
}
