//! Rotary embeddings: rope_fwd vs an f64 rotate-half reference, rope_bwd as the transpose
//! (finite differences and the adjoint identity), and rope_inv_freq vs the formulas of HF
//! transformers (default, linear, and `_compute_llama3_parameters`) written in f64.

mod common;

use common::*;
use okapi_kernels::rope::{rope_bwd, rope_fwd, rope_inv_freq, RopeScaling};
use std::f64::consts::PI;

/// HF rotate-half: `x·cos + rotate_half(x)·sin`, rotate_half(x) = (−x2, x1), per head.
fn rope_ref(x: &[f64], n_heads: usize, head_dim: usize, positions: &[u32], inv_freq: &[f64]) -> Vec<f64> {
    let half = head_dim / 2;
    let mut out = x.to_vec();
    for (n, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let base = (n * n_heads + h) * head_dim;
            for i in 0..half {
                let a = pos as f64 * inv_freq[i];
                let (x1, x2) = (x[base + i], x[base + i + half]);
                out[base + i] = x1 * a.cos() - x2 * a.sin();
                out[base + i + half] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    out
}

/// HF `_compute_default_rope_parameters`: 1 / theta^(arange(0, D, 2) / D).
fn default_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect()
}

/// HF `_compute_llama3_parameters`, line by line in f64.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // written as HF writes it
fn llama3_inv_freq(head_dim: usize, theta: f64, factor: f64, low_freq_factor: f64, high_freq_factor: f64, old_context_len: f64) -> Vec<f64> {
    let low_freq_wavelen = old_context_len / low_freq_factor;
    let high_freq_wavelen = old_context_len / high_freq_factor;
    default_inv_freq(head_dim, theta)
        .into_iter()
        .map(|inv_freq| {
            let wavelen = 2.0 * PI / inv_freq;
            // wavelen < high_freq_wavelen: do nothing; wavelen > low_freq_wavelen: divide by factor
            let inv_freq_llama = if wavelen > low_freq_wavelen { inv_freq / factor } else { inv_freq };
            // otherwise interpolate between the two
            let smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
            let smoothed_inv_freq = (1.0 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama;
            let is_medium_freq = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            if is_medium_freq {
                smoothed_inv_freq
            } else {
                inv_freq_llama
            }
        })
        .collect()
}

struct Case {
    n_heads: usize,
    head_dim: usize,
    positions: Vec<u32>,
    inv_freq: Vec<f32>,
}

fn cases() -> Vec<Case> {
    vec![
        Case { n_heads: 3, head_dim: 6, positions: vec![0, 1, 7, 13, 40], inv_freq: rope_inv_freq(6, 10_000.0, &RopeScaling::None) },
        Case { n_heads: 2, head_dim: 10, positions: vec![5, 2, 31], inv_freq: rope_inv_freq(10, 500_000.0, &RopeScaling::Linear { factor: 4.0 }) },
        // a training batch: positions 0..T repeated per sequence (the kernel's table path)
        Case { n_heads: 2, head_dim: 8, positions: (0..3).flat_map(|_| 0..5u32).collect(), inv_freq: rope_inv_freq(8, 10_000.0, &RopeScaling::None) },
        Case {
            n_heads: 1,
            head_dim: 16,
            positions: vec![3, 100, 17, 0, 9, 64, 11],
            inv_freq: rope_inv_freq(16, 500_000.0, &RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 }),
        },
    ]
}

#[test]
fn rope_fwd_matches_f64() {
    for (s, c) in cases().iter().enumerate() {
        let mut rng = Rng::new(500 + s as u64);
        let x = rng.normal_vec(c.positions.len() * c.n_heads * c.head_dim, 1.0);
        let mut y = x.clone();
        rope_fwd(&mut y, c.n_heads, c.head_dim, &c.positions, &c.inv_freq);
        let want = rope_ref(&to_f64(&x), c.n_heads, c.head_dim, &c.positions, &to_f64(&c.inv_freq));
        assert_close(&format!("rope_fwd case {s}"), &y, &want, 1e-5);
        assert_ne!(y, x, "rope_fwd case {s} did nothing");
    }
}

#[test]
fn rope_bwd_grad_check() {
    for (s, c) in cases().iter().enumerate() {
        let mut rng = Rng::new(600 + s as u64);
        let n = c.positions.len() * c.n_heads * c.head_dim;
        let (x, dy) = (rng.normal_vec(n, 1.0), rng.normal_vec(n, 1.0));
        let mut dx = dy.clone();
        rope_bwd(&mut dx, c.n_heads, c.head_dim, &c.positions, &c.inv_freq);
        let f = to_f64(&c.inv_freq);
        let want = numeric_grad_proj(&to_f64(&x), &to_f64(&dy), |xx| rope_ref(xx, c.n_heads, c.head_dim, &c.positions, &f));
        assert_close(&format!("rope_bwd case {s}"), &dx, &want, 1e-5);
    }
}

#[test]
fn rope_bwd_is_transpose_and_inverse() {
    for (s, c) in cases().iter().enumerate() {
        let mut rng = Rng::new(700 + s as u64);
        let n = c.positions.len() * c.n_heads * c.head_dim;
        let (x, y) = (rng.normal_vec(n, 1.0), rng.normal_vec(n, 1.0));
        let (mut rx, mut rty) = (x.clone(), y.clone());
        rope_fwd(&mut rx, c.n_heads, c.head_dim, &c.positions, &c.inv_freq);
        rope_bwd(&mut rty, c.n_heads, c.head_dim, &c.positions, &c.inv_freq);
        // <R x, y> = <x, Rᵀ y>
        let (lhs, rhs) = (dot(&to_f64(&rx), &to_f64(&y)), dot(&to_f64(&x), &to_f64(&rty)));
        assert!((lhs - rhs).abs() <= 1e-5 * (1.0 + lhs.abs()), "rope case {s}: <Rx,y> = {lhs} but <x,Rᵀy> = {rhs}");
        // Rᵀ R = I
        rope_bwd(&mut rx, c.n_heads, c.head_dim, &c.positions, &c.inv_freq);
        assert_close(&format!("rope RᵀR x case {s}"), &rx, &to_f64(&x), 1e-6);
    }
}

#[test]
fn rope_inv_freq_default_and_linear() {
    for (head_dim, theta) in [(6usize, 10_000.0), (64, 10_000.0), (128, 500_000.0)] {
        let want = default_inv_freq(head_dim, theta);
        assert_elementwise(&format!("inv_freq D={head_dim} θ={theta}"), &rope_inv_freq(head_dim, theta, &RopeScaling::None), &want, 1e-5);
        let factor = 4.0;
        let want_lin: Vec<f64> = want.iter().map(|f| f / factor).collect();
        let got_lin = rope_inv_freq(head_dim, theta, &RopeScaling::Linear { factor: factor as f32 });
        assert_elementwise(&format!("linear inv_freq D={head_dim}"), &got_lin, &want_lin, 1e-5);
    }
}

#[test]
fn rope_inv_freq_llama3_matches_hf() {
    // Llama 3.1 (factor 8) and Llama 3.2 (factor 32): θ = 500000, D = 128, original context 8192
    for factor in [8.0f64, 32.0] {
        let (head_dim, theta, low, high, old) = (128usize, 500_000.0, 1.0, 4.0, 8192usize);
        let scaling = RopeScaling::Llama3 { factor: factor as f32, low_freq_factor: low as f32, high_freq_factor: high as f32, original_max_position_embeddings: old };
        let got = rope_inv_freq(head_dim, theta, &scaling);
        let want = llama3_inv_freq(head_dim, theta, factor, low, high, old as f64);
        assert_elementwise(&format!("llama3 inv_freq factor {factor}"), &got, &want, 1e-5);

        // non-vacuous: all three bands are present
        let base = default_inv_freq(head_dim, theta);
        let wavelen = |f: f64| 2.0 * PI / f;
        let n_high = base.iter().filter(|&&f| wavelen(f) < old as f64 / high).count();
        let n_low = base.iter().filter(|&&f| wavelen(f) > old as f64 / low).count();
        let n_mid = base.len() - n_high - n_low;
        assert!(n_high > 0 && n_mid > 0 && n_low > 0, "bands high {n_high} mid {n_mid} low {n_low}");
        for (i, (&w, &b)) in want.iter().zip(&base).enumerate() {
            if wavelen(b) < old as f64 / high {
                assert_eq!(w, b, "high-frequency entry {i} must be unscaled");
            } else if wavelen(b) > old as f64 / low {
                assert!((w - b / factor).abs() <= 1e-15 * b, "low-frequency entry {i} must be divided by the factor");
            }
        }
    }
}
