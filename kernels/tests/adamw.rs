//! AdamW: several steps of the f32 kernel vs an f64 re-implementation of
//! `torch.optim.AdamW`'s single-tensor update.

mod common;

use common::*;
use okapi_kernels::adamw::{adamw, AdamW};

/// torch `_single_tensor_adamw`, in f64: decoupled decay, lerp of m, bias-corrected step.
fn adamw_ref(p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64], h: &AdamW) {
    let (lr, b1, b2, eps, wd, gs) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.eps as f64, h.weight_decay as f64, h.grad_scale as f64);
    let t = h.step as i32;
    let bc1 = 1.0 - b1.powi(t);
    let bc2 = 1.0 - b2.powi(t);
    for i in 0..p.len() {
        let gi = g[i] * gs;
        p[i] *= 1.0 - lr * wd;
        m[i] += (1.0 - b1) * (gi - m[i]);
        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
        p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
    }
}

fn run(h0: AdamW, seed: u64) {
    // more than one of the kernel's 8192-element chunks
    let n = 10_007;
    let steps = 6;
    let mut rng = Rng::new(seed);
    let p0 = rng.normal_vec(n, 1.0);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; n], vec![0f32; n]);
    let (mut rp, mut rm, mut rv) = (to_f64(&p0), vec![0f64; n], vec![0f64; n]);
    for step in 1..=steps {
        let mut g = rng.normal_vec(n, 1.0);
        // some tiny gradients, where eps matters in the denominator
        for x in g.iter_mut().step_by(17) {
            *x *= 1e-7;
        }
        let h = AdamW { step, ..h0 };
        adamw(&mut p, &g, &mut m, &mut v, &h);
        adamw_ref(&mut rp, &to_f64(&g), &mut rm, &mut rv, &h);
        let label = format!("adamw gs={} wd={} step {step}", h.grad_scale, h.weight_decay);
        assert_close(&format!("{label}: m"), &m, &rm, 1e-6);
        assert_close(&format!("{label}: v"), &v, &rv, 1e-6);
        assert_close(&format!("{label}: p"), &p, &rp, 1e-6);
        // the update itself, which is small next to p: its error floor is p's f32 rounding,
        // ~2^-24·|p| against |Δ| ≈ step·lr, i.e. ~1e-5 relative at lr = 3e-3
        let delta: Vec<f32> = p.iter().zip(&p0).map(|(a, b)| a - b).collect();
        let want_delta: Vec<f64> = rp.iter().zip(&p0).map(|(a, &b)| a - b as f64).collect();
        assert_close(&format!("{label}: p − p0"), &delta, &want_delta, 5e-5);
    }
}

#[test]
fn adamw_matches_torch_formula_with_grad_scale() {
    run(AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 1, grad_scale: 0.37 }, 1000);
}

#[test]
fn adamw_matches_torch_formula_unscaled_no_decay() {
    run(AdamW { lr: 3e-3, beta1: 0.8, beta2: 0.999, eps: 1e-6, weight_decay: 0.0, step: 1, grad_scale: 1.0 }, 1001);
}

#[test]
fn adamw_first_step_is_sign_like() {
    // step 1 from zero moments: m/√v·√bc2/bc1 = sign(g), so p moves by ≈ lr (after decay)
    let h = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1, grad_scale: 2.0 };
    let mut rng = Rng::new(1002);
    let p0 = rng.normal_vec(101, 1.0);
    let g = rng.normal_vec(101, 1.0);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0f32; 101], vec![0f32; 101]);
    adamw(&mut p, &g, &mut m, &mut v, &h);
    let want: Vec<f64> = p0.iter().zip(&g).map(|(&p, &g)| p as f64 - 1e-2 * (g as f64).signum()).collect();
    assert_close("adamw step 1", &p, &want, 1e-6);
}
