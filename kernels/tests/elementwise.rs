//! SwiGLU, GELU, GeGLU, soft-capping, softmax, bias, embedding and sum of squares: f32 forward
//! vs f64 references, backward vs central differences, `=` / `+=` semantics and determinism.

mod common;

use common::*;
use okapi_kernels::activation::{geglu_bwd, geglu_fwd, gelu_bwd, gelu_fwd, softcap_bwd, softcap_fwd, swiglu_bwd, swiglu_fwd};
use okapi_kernels::embedding::{embedding_bwd, embedding_fwd};
use okapi_kernels::reduce::{bias_add, bias_bwd, sum_squares};
use okapi_kernels::softmax::{softmax_bwd, softmax_fwd};

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn swiglu_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(&g, &u)| g * sigmoid(g) * u).collect()
}

/// BLOOM's `bloom_gelu_forward`, constants as written there.
fn gelu_ref(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&x| x * 0.5 * (1.0 + (0.79788456 * x * (1.0 + 0.044715 * x * x)).tanh())).collect()
}

fn softmax_ref(x: &[f64], v: usize, temperature: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(v) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &a| m.max(a / temperature));
        let e: Vec<f64> = row.iter().map(|&a| (a / temperature - max).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|x| x / s));
    }
    out
}

// ---------------------------------------------------------------- SwiGLU

#[test]
fn swiglu_fwd_matches_f64() {
    let mut rng = Rng::new(1);
    let n = 5 * 13;
    let (gate, up) = (rng.normal_vec(n, 2.0), rng.normal_vec(n, 1.0));
    let mut out = nan_vec(n);
    swiglu_fwd(&mut out, &gate, &up);
    assert_close("swiglu out", &out, &swiglu_ref(&to_f64(&gate), &to_f64(&up)), 1e-6);
}

#[test]
fn swiglu_bwd_grad_check() {
    let mut rng = Rng::new(2);
    let n = 5 * 13;
    let (gate, up, dout) = (rng.normal_vec(n, 2.0), rng.normal_vec(n, 1.0), rng.normal_vec(n, 1.0));
    // `=` outputs: NaN-filled buffers must be fully overwritten
    let (mut dgate, mut dup) = (nan_vec(n), nan_vec(n));
    swiglu_bwd(&mut dgate, &mut dup, &dout, &gate, &up);
    let (g, u, r) = (to_f64(&gate), to_f64(&up), to_f64(&dout));
    assert_close("swiglu dgate", &dgate, &numeric_grad_proj(&g, &r, |gg| swiglu_ref(gg, &u)), 1e-5);
    assert_close("swiglu dup", &dup, &numeric_grad_proj(&u, &r, |uu| swiglu_ref(&g, uu)), 1e-5);
}

// ---------------------------------------------------------------- GELU

#[test]
fn gelu_fwd_matches_f64() {
    let mut rng = Rng::new(3);
    let x = rng.normal_vec(7 * 11, 2.5);
    let mut out = nan_vec(x.len());
    gelu_fwd(&mut out, &x);
    assert_close("gelu out", &out, &gelu_ref(&to_f64(&x)), 1e-6);
}

#[test]
fn gelu_bwd_grad_check() {
    let mut rng = Rng::new(4);
    let x = rng.normal_vec(7 * 11, 2.5);
    let dout = rng.normal_vec(x.len(), 1.0);
    let mut dx = nan_vec(x.len());
    gelu_bwd(&mut dx, &dout, &x);
    let want = numeric_grad_proj(&to_f64(&x), &to_f64(&dout), gelu_ref);
    assert_close("gelu dx", &dx, &want, 1e-5);
}

// ---------------------------------------------------------------- GeGLU

/// PyTorch's `gelu(g, approximate="tanh") · u`, written as PyTorch writes it (√(2/π) exact).
fn geglu_ref(gate: &[f64], up: &[f64]) -> Vec<f64> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    gate.iter().zip(up).map(|(&x, &u)| 0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh()) * u).collect()
}

/// Odd length (no multiple of any SIMD width), gates from the saturated tails to 0.
fn geglu_data(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let n = 7 * 13;
    let mut gate = rng.normal_vec(n, 2.5);
    gate[..5].copy_from_slice(&[-12.0, 12.0, 0.0, -3.5, 30.0]);
    (gate, rng.normal_vec(n, 1.0), rng.normal_vec(n, 1.0))
}

#[test]
fn geglu_fwd_matches_f64() {
    let (gate, up, _) = geglu_data(11);
    let mut out = nan_vec(gate.len());
    geglu_fwd(&mut out, &gate, &up);
    assert_close("geglu out", &out, &geglu_ref(&to_f64(&gate), &to_f64(&up)), 1e-6);
}

#[test]
fn geglu_bwd_grad_check() {
    let (gate, up, dout) = geglu_data(12);
    // `=` outputs: NaN-filled buffers must be fully overwritten
    let (mut dgate, mut dup) = (nan_vec(gate.len()), nan_vec(gate.len()));
    geglu_bwd(&mut dgate, &mut dup, &dout, &gate, &up);
    let (g, u, r) = (to_f64(&gate), to_f64(&up), to_f64(&dout));
    assert_close("geglu dgate", &dgate, &numeric_grad_proj(&g, &r, |gg| geglu_ref(gg, &u)), 1e-5);
    assert_close("geglu dup", &dup, &numeric_grad_proj(&u, &r, |uu| geglu_ref(&g, uu)), 1e-5);
}

/// GeGLU is GELU times up, through the same formula: with up = 1 it is gelu_fwd bit for bit,
/// and its dgate with up = 1 is gelu_bwd's dx.
#[test]
fn geglu_is_gelu_gating() {
    let (gate, _, dout) = geglu_data(13);
    let ones = vec![1f32; gate.len()];
    let (mut a, mut b) = (nan_vec(gate.len()), nan_vec(gate.len()));
    geglu_fwd(&mut a, &gate, &ones);
    gelu_fwd(&mut b, &gate);
    assert_bits_eq("geglu(up = 1) vs gelu", &a, &b);
    let (mut dg, mut du, mut dx) = (nan_vec(gate.len()), nan_vec(gate.len()), nan_vec(gate.len()));
    geglu_bwd(&mut dg, &mut du, &dout, &gate, &ones);
    gelu_bwd(&mut dx, &dout, &gate);
    assert_bits_eq("geglu dgate(up = 1) vs gelu dx", &dg, &dx);
}

// ---------------------------------------------------------------- soft-capping

fn softcap_ref(x: &[f64], cap: f64) -> Vec<f64> {
    x.iter().map(|&v| cap * (v / cap).tanh()).collect()
}

/// Logits from deep in the saturated tails to tiny ones (where cap·tanh(x/cap) ≈ x must keep
/// its relative precision), odd length.
fn softcap_data(seed: u64, cap: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x = rng.normal_vec(5 * 67, 2.0 * cap as f64);
    x[..8].copy_from_slice(&[1e-30, -2e-12, 3e-5, -0.5, 0.0, 40.0 * cap, -40.0 * cap, 0.62 * cap]);
    x
}

#[test]
fn softcap_fwd_matches_f64_elementwise() {
    for cap in [30.0f32, 50.0, 0.7] {
        let x = softcap_data(14, cap);
        let mut y = x.clone();
        softcap_fwd(&mut y, cap);
        let want = softcap_ref(&to_f64(&x), cap as f64);
        // each logit on its own: tanh is within 3 ulp, the division and product add one each
        let (nz_got, nz_want): (Vec<f32>, Vec<f64>) = y.iter().zip(&want).filter(|(_, w)| **w != 0.0).map(|(g, w)| (*g, *w)).unzip();
        assert_elementwise(&format!("softcap {cap}"), &nz_got, &nz_want, 6e-7);
        assert_eq!(y[4].to_bits(), 0, "softcap(0) = +0");
    }
}

#[test]
fn softcap_bwd_grad_check() {
    for cap in [30.0f32, 0.7] {
        let x = softcap_data(15, cap);
        let mut y = x.clone();
        softcap_fwd(&mut y, cap);
        let dy = Rng::new(16).normal_vec(x.len(), 1.0);
        let mut dx = dy.clone();
        softcap_bwd(&mut dx, &y, cap);
        let want = numeric_grad_proj(&to_f64(&x), &to_f64(&dy), |xx| softcap_ref(xx, cap as f64));
        assert_close(&format!("softcap {cap} dx"), &dx, &want, 1e-5);
    }
}

#[test]
#[should_panic(expected = "softcap_fwd: the soft-cap must be positive and finite, got 0")]
fn softcap_of_zero_is_refused() {
    softcap_fwd(&mut [1.0, 2.0], 0.0);
}

// ---------------------------------------------------------------- softmax

#[test]
fn softmax_fwd_matches_f64() {
    let mut rng = Rng::new(5);
    for (v, temperature) in [(11usize, 1.0f32), (11, 0.7), (257, 1.3)] {
        let x = rng.normal_vec(5 * v, 3.0);
        let mut out = nan_vec(x.len());
        softmax_fwd(&mut out, &x, v, temperature);
        let want = softmax_ref(&to_f64(&x), v, temperature as f64);
        assert_close(&format!("softmax v={v} T={temperature}"), &out, &want, 1e-6);
    }
}

#[test]
fn softmax_bwd_grad_check() {
    let mut rng = Rng::new(6);
    let v = 11;
    let x = rng.normal_vec(5 * v, 2.0);
    let dy = rng.normal_vec(x.len(), 1.0);
    let mut y = vec![0f32; x.len()];
    softmax_fwd(&mut y, &x, v, 1.0);
    let mut dx = nan_vec(x.len());
    softmax_bwd(&mut dx, &dy, &y, v);
    let want = numeric_grad_proj(&to_f64(&x), &to_f64(&dy), |xx| softmax_ref(xx, v, 1.0));
    assert_close("softmax dx", &dx, &want, 1e-5);
}

// ---------------------------------------------------------------- bias

#[test]
fn bias_add_matches_f64() {
    let mut rng = Rng::new(7);
    let (n, c) = (5, 7);
    let (x, bias) = (rng.normal_vec(n * c, 1.0), rng.normal_vec(c, 1.0));
    let mut out = x.clone();
    bias_add(&mut out, &bias);
    let want: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v as f64 + bias[i % c] as f64).collect();
    assert_close("bias_add", &out, &want, 1e-7);
}

#[test]
fn bias_bwd_grad_check_and_accumulates() {
    for (n, c) in [(5usize, 7usize), (70, 3)] {
        let mut rng = Rng::new(8 + n as u64);
        let (x, bias, dy) = (rng.normal_vec(n * c, 1.0), rng.normal_vec(c, 1.0), rng.normal_vec(n * c, 1.0));
        let mut fresh = vec![0f32; c];
        bias_bwd(&mut fresh, &dy);
        let (x64, r) = (to_f64(&x), to_f64(&dy));
        let want = numeric_grad_proj(&to_f64(&bias), &r, |b| x64.iter().enumerate().map(|(i, v)| v + b[i % c]).collect());
        assert_close(&format!("bias dbias ({n},{c})"), &fresh, &want, 1e-5);

        let pre = rng.normal_vec(c, 1.0);
        let mut acc = pre.clone();
        bias_bwd(&mut acc, &dy);
        if n <= 32 {
            assert_accumulates_exactly("bias dbias +=", &pre, &fresh, &acc);
        } else {
            assert_accumulates("bias dbias +=", &pre, &fresh, &acc, 1e-6);
        }
    }
}

// ---------------------------------------------------------------- embedding

fn embedding_ref(table: &[f64], ids: &[u32], c: usize) -> Vec<f64> {
    ids.iter().flat_map(|&id| table[id as usize * c..][..c].iter().copied()).collect()
}

/// The documented order: each table row gets its tokens' gradients added in position order.
fn embedding_bwd_sequential(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    for (n, &id) in ids.iter().enumerate() {
        for x in 0..c {
            dtable[id as usize * c + x] += dout[n * c + x];
        }
    }
}

#[test]
fn embedding_fwd_gathers() {
    let mut rng = Rng::new(9);
    let (v, c) = (11, 7);
    let table = rng.normal_vec(v * c, 1.0);
    let ids: Vec<u32> = vec![3, 0, 10, 3, 3, 7];
    let mut out = nan_vec(ids.len() * c);
    embedding_fwd(&mut out, &table, &ids, c);
    let want: Vec<f32> = ids.iter().flat_map(|&id| table[id as usize * c..][..c].iter().copied()).collect();
    assert_bits_eq("embedding out", &out, &want);
}

#[test]
fn embedding_bwd_grad_check_and_accumulates() {
    let mut rng = Rng::new(10);
    let (v, c) = (11, 7);
    let table = rng.normal_vec(v * c, 1.0);
    // repeated ids, unsorted; rows 1, 4, 6, 8 unused
    let ids: Vec<u32> = vec![3, 0, 10, 3, 3, 7, 0, 2, 9, 3, 5, 10, 7];
    let dout = rng.normal_vec(ids.len() * c, 1.0);

    let mut fresh = vec![0f32; v * c];
    embedding_bwd(&mut fresh, &dout, &ids, c);
    let want = numeric_grad_proj(&to_f64(&table), &to_f64(&dout), |t| embedding_ref(t, &ids, c));
    assert_close("embedding dtable", &fresh, &want, 1e-5);
    for unused in [1usize, 4, 6, 8] {
        assert!(fresh[unused * c..][..c].iter().all(|&g| g == 0.0), "embedding: unused row {unused} got a gradient");
    }

    let pre = rng.normal_vec(v * c, 1.0);
    let mut acc = pre.clone();
    embedding_bwd(&mut acc, &dout, &ids, c);
    let mut seq = pre.clone();
    embedding_bwd_sequential(&mut seq, &dout, &ids, c);
    assert_bits_eq("embedding dtable += (position order)", &acc, &seq);
    assert_accumulates("embedding dtable +=", &pre, &fresh, &acc, 1e-6);
}

#[test]
fn embedding_bwd_deterministic() {
    let mut rng = Rng::new(11);
    let (v, c, n) = (11, 64, 5000);
    let ids: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
    let dout = rng.normal_vec(n * c, 1.0);
    let pre = rng.normal_vec(v * c, 1.0);
    let run = || {
        let mut d = pre.clone();
        embedding_bwd(&mut d, &dout, &ids, c);
        d
    };
    let (first, second) = (run(), run());
    assert_bits_eq("embedding_bwd rerun", &second, &first);
    let mut seq = pre.clone();
    embedding_bwd_sequential(&mut seq, &dout, &ids, c);
    assert_bits_eq("embedding_bwd vs position-order sum", &first, &seq);
}

// ---------------------------------------------------------------- sum of squares

#[test]
fn sum_squares_matches_f64() {
    let mut rng = Rng::new(12);
    // several of the kernel's 16384-element chunks, and a ragged tail
    for n in [1usize, 7, 50_003] {
        let x = rng.normal_vec(n, 1.5);
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = sum_squares(&x);
        assert!(want > 0.0);
        assert!((got - want).abs() <= 1e-12 * want, "sum_squares n={n}: got {got}, want {want}");
        assert_eq!(sum_squares(&x).to_bits(), got.to_bits(), "sum_squares n={n} not deterministic");
    }
    assert_eq!(sum_squares(&[]), 0.0);
}
