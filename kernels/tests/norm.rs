//! RMSNorm (with and without Gemma's weight offset) and LayerNorm: f32 forward vs an f64
//! reference, backward vs central differences of the f64 reference, the `+=` semantics of every
//! gradient, and offset 0 computing the plain formula bit for bit.

mod common;

use common::*;
use okapi_kernels::norm::{layernorm_bwd, layernorm_fwd, rmsnorm_bwd, rmsnorm_fwd, LayerNormBwd, LayerNormFwd};
use okapi_kernels::NormShape;

/// Shapes: odd widths, and one with more rows than a column-reduction chunk (32).
const SHAPES: [(usize, usize); 3] = [(5, 7), (3, 16), (67, 9)];

/// Weight offsets: none (LLaMA) and Gemma's `(1 + w)`.
const OFFSETS: [f32; 2] = [0.0, 1.0];

/// x·rstd·(w + offset), rstd = 1/√(mean(x²) + eps).
fn rmsnorm_ref(x: &[f64], w: &[f64], c: usize, eps: f64, offset: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (o, xr) in out.chunks_mut(c).zip(x.chunks(c)) {
        let ms = xr.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for i in 0..c {
            o[i] = (w[i] + offset) * xr[i] * r;
        }
    }
    out
}

fn layernorm_ref(x: &[f64], w: &[f64], b: &[f64], c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (o, xr) in out.chunks_mut(c).zip(x.chunks(c)) {
        let mu = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let r = 1.0 / (var + eps).sqrt();
        for i in 0..c {
            o[i] = (xr[i] - mu) * r * w[i] + b[i];
        }
    }
    out
}

struct RmsCase {
    sh: NormShape,
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
}

impl RmsCase {
    /// With weight offset `offset`: the effective weights w + offset spread around 1 either way
    /// (Gemma stores w − 1, around 0).
    fn new(seed: u64, n: usize, c: usize, offset: f32) -> Self {
        let mut rng = Rng::new(seed);
        // offset rows so the mean is not ~0 for every row
        let x = rng.normal_vec(n * c, 1.0).iter().enumerate().map(|(i, v)| v + 0.3 * ((i / c) % 3) as f32).collect();
        let w = rng.normal_vec(c, 0.5).iter().map(|v| 1.0 - offset + v).collect();
        let dy = rng.normal_vec(n * c, 1.0);
        RmsCase { sh: NormShape::new(n, c, 1e-6).weight_offset(offset), x, w, dy }
    }
    fn forward(&self) -> (Vec<f32>, Vec<f32>) {
        let (mut out, mut rstd) = (vec![0f32; self.sh.n * self.sh.c], vec![0f32; self.sh.n]);
        rmsnorm_fwd(&mut out, &mut rstd, &self.x, &self.w, &self.sh);
        (out, rstd)
    }
    /// (dx, dw) accumulated onto the given buffers.
    fn backward(&self, mut dx: Vec<f32>, mut dw: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        let (_, rstd) = self.forward();
        rmsnorm_bwd(&mut dx, &mut dw, &self.dy, &self.x, &self.w, &rstd, &self.sh);
        (dx, dw)
    }
    fn label(&self, what: &str) -> String {
        format!("rmsnorm {what} ({},{}) offset {}", self.sh.n, self.sh.c, self.sh.w_offset)
    }
}

#[test]
fn rmsnorm_fwd_matches_f64() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        for offset in OFFSETS {
            let case = RmsCase::new(10 + s as u64, n, c, offset);
            let (out, rstd) = case.forward();
            let eps = case.sh.eps as f64;
            let want = rmsnorm_ref(&to_f64(&case.x), &to_f64(&case.w), c, eps, offset as f64);
            assert_close(&case.label("out"), &out, &want, 1e-6);
            let want_rstd: Vec<f64> = to_f64(&case.x).chunks(c).map(|r| 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt()).collect();
            assert_close(&case.label("rstd"), &rstd, &want_rstd, 1e-6);
        }
    }
}

#[test]
fn rmsnorm_bwd_grad_check() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        for offset in OFFSETS {
            let case = RmsCase::new(20 + s as u64, n, c, offset);
            let (dx, dw) = case.backward(vec![0.0; n * c], vec![0.0; c]);
            let (x, w, r, eps, off) = (to_f64(&case.x), to_f64(&case.w), to_f64(&case.dy), case.sh.eps as f64, offset as f64);
            let dx_ref = numeric_grad_proj(&x, &r, |xx| rmsnorm_ref(xx, &w, c, eps, off));
            let dw_ref = numeric_grad_proj(&w, &r, |ww| rmsnorm_ref(&x, ww, c, eps, off));
            assert_close(&case.label("dx"), &dx, &dx_ref, 1e-5);
            assert_close(&case.label("dw"), &dw, &dw_ref, 1e-5);
        }
    }
}

/// Offset 0 is the plain `w·(x·rstd)` and its backward, to the bit — −0.0 weights included
/// (adding +0.0 would have turned them into +0.0).
#[test]
fn rmsnorm_offset_zero_is_the_plain_formula_bit_for_bit() {
    let (n, c) = (5, 7);
    let mut case = RmsCase::new(25, n, c, 0.0);
    case.w[2] = -0.0;
    case.x[2] = 0.5;
    let (out, rstd) = case.forward();
    let (dx, _) = case.backward(vec![0.0; n * c], vec![0.0; c]);
    let (mut want_out, mut want_dx) = (vec![0f32; n * c], vec![0f32; n * c]);
    for row in 0..n {
        let (xr, dyr, rs) = (&case.x[row * c..][..c], &case.dy[row * c..][..c], rstd[row]);
        let dot = (dyr.iter().zip(&case.w).zip(xr).map(|((&g, &wv), &xv)| (g * wv) as f64 * (xv * rs) as f64).sum::<f64>() / c as f64) as f32;
        for i in 0..c {
            want_out[row * c + i] = case.w[i] * (xr[i] * rs);
            want_dx[row * c + i] = 0.0 + rs * (dyr[i] * case.w[i] - xr[i] * rs * dot);
        }
    }
    assert_eq!(out[2].to_bits(), (-0f32).to_bits(), "a −0.0 weight times a positive x·rstd");
    assert_bits_eq("rmsnorm out, offset 0", &out, &want_out);
    assert_bits_eq("rmsnorm dx, offset 0", &dx, &want_dx);
}

#[test]
fn rmsnorm_bwd_accumulates() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        let case = RmsCase::new(30 + s as u64, n, c, 1.0);
        let mut rng = Rng::new(99);
        let (pre_dx, pre_dw) = (rng.normal_vec(n * c, 1.0), rng.normal_vec(c, 1.0));
        let (fresh_dx, fresh_dw) = case.backward(vec![0.0; n * c], vec![0.0; c]);
        let (dx, dw) = case.backward(pre_dx.clone(), pre_dw.clone());
        assert_accumulates_exactly("rmsnorm dx +=", &pre_dx, &fresh_dx, &dx);
        if n <= 32 {
            // one column-reduction chunk: a single addition onto the buffer
            assert_accumulates_exactly("rmsnorm dw +=", &pre_dw, &fresh_dw, &dw);
        } else {
            assert_accumulates("rmsnorm dw +=", &pre_dw, &fresh_dw, &dw, 1e-6);
        }
    }
}

#[test]
fn rmsnorm_bwd_deterministic() {
    let case = RmsCase::new(40, 300, 33, 1.0);
    let (dx1, dw1) = case.backward(vec![0.0; 300 * 33], vec![0.0; 33]);
    let (dx2, dw2) = case.backward(vec![0.0; 300 * 33], vec![0.0; 33]);
    assert_bits_eq("rmsnorm dx rerun", &dx2, &dx1);
    assert_bits_eq("rmsnorm dw rerun", &dw2, &dw1);
}

struct LnCase {
    n: usize,
    c: usize,
    eps: f32,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

impl LnCase {
    fn new(seed: u64, n: usize, c: usize) -> Self {
        let mut rng = Rng::new(seed);
        let x = rng.normal_vec(n * c, 1.0).iter().enumerate().map(|(i, v)| v + 0.5 * ((i / c) % 4) as f32 - 0.7).collect();
        let w = rng.normal_vec(c, 0.5).iter().map(|v| 1.0 + v).collect();
        let b = rng.normal_vec(c, 0.5);
        let dy = rng.normal_vec(n * c, 1.0);
        LnCase { n, c, eps: 1e-5, x, w, b, dy }
    }
    fn forward(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (mut out, mut mean, mut rstd) = (vec![0f32; self.n * self.c], vec![0f32; self.n], vec![0f32; self.n]);
        layernorm_fwd(LayerNormFwd { out: &mut out, mean: &mut mean, rstd: &mut rstd, x: &self.x, w: &self.w, b: &self.b }, self.c, self.eps);
        (out, mean, rstd)
    }
    fn backward(&self, mut dx: Vec<f32>, mut dw: Vec<f32>, mut db: Vec<f32>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (_, mean, rstd) = self.forward();
        layernorm_bwd(LayerNormBwd { dx: &mut dx, dw: &mut dw, db: &mut db, dy: &self.dy, x: &self.x, w: &self.w, mean: &mean, rstd: &rstd }, self.c);
        (dx, dw, db)
    }
    fn zeros(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        (vec![0.0; self.n * self.c], vec![0.0; self.c], vec![0.0; self.c])
    }
}

#[test]
fn layernorm_fwd_matches_f64() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        let case = LnCase::new(50 + s as u64, n, c);
        let (out, mean, rstd) = case.forward();
        let x = to_f64(&case.x);
        let want = layernorm_ref(&x, &to_f64(&case.w), &to_f64(&case.b), c, case.eps as f64);
        assert_close(&format!("layernorm out ({n},{c})"), &out, &want, 1e-6);
        let want_mean: Vec<f64> = x.chunks(c).map(|r| r.iter().sum::<f64>() / c as f64).collect();
        let want_rstd: Vec<f64> = x
            .chunks(c)
            .zip(&want_mean)
            .map(|(r, mu)| 1.0 / (r.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64 + case.eps as f64).sqrt())
            .collect();
        assert_close(&format!("layernorm mean ({n},{c})"), &mean, &want_mean, 1e-6);
        assert_close(&format!("layernorm rstd ({n},{c})"), &rstd, &want_rstd, 1e-6);
    }
}

#[test]
fn layernorm_bwd_grad_check() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        let case = LnCase::new(60 + s as u64, n, c);
        let (z_dx, z_dw, z_db) = case.zeros();
        let (dx, dw, db) = case.backward(z_dx, z_dw, z_db);
        let (x, w, b, r, eps) = (to_f64(&case.x), to_f64(&case.w), to_f64(&case.b), to_f64(&case.dy), case.eps as f64);
        let dx_ref = numeric_grad_proj(&x, &r, |xx| layernorm_ref(xx, &w, &b, c, eps));
        let dw_ref = numeric_grad_proj(&w, &r, |ww| layernorm_ref(&x, ww, &b, c, eps));
        let db_ref = numeric_grad_proj(&b, &r, |bb| layernorm_ref(&x, &w, bb, c, eps));
        assert_close(&format!("layernorm dx ({n},{c})"), &dx, &dx_ref, 1e-5);
        assert_close(&format!("layernorm dw ({n},{c})"), &dw, &dw_ref, 1e-5);
        assert_close(&format!("layernorm db ({n},{c})"), &db, &db_ref, 1e-5);
    }
}

#[test]
fn layernorm_bwd_accumulates() {
    for (s, &(n, c)) in SHAPES.iter().enumerate() {
        let case = LnCase::new(70 + s as u64, n, c);
        let mut rng = Rng::new(98);
        let (pre_dx, pre_dw, pre_db) = (rng.normal_vec(n * c, 1.0), rng.normal_vec(c, 1.0), rng.normal_vec(c, 1.0));
        let (z_dx, z_dw, z_db) = case.zeros();
        let (fresh_dx, fresh_dw, fresh_db) = case.backward(z_dx, z_dw, z_db);
        let (dx, dw, db) = case.backward(pre_dx.clone(), pre_dw.clone(), pre_db.clone());
        assert_accumulates_exactly("layernorm dx +=", &pre_dx, &fresh_dx, &dx);
        if n <= 32 {
            assert_accumulates_exactly("layernorm dw +=", &pre_dw, &fresh_dw, &dw);
            assert_accumulates_exactly("layernorm db +=", &pre_db, &fresh_db, &db);
        } else {
            assert_accumulates("layernorm dw +=", &pre_dw, &fresh_dw, &dw, 1e-6);
            assert_accumulates("layernorm db +=", &pre_db, &fresh_db, &db, 1e-6);
        }
    }
}

#[test]
fn layernorm_bwd_deterministic() {
    let case = LnCase::new(80, 300, 33);
    let (z_dx, z_dw, z_db) = case.zeros();
    let first = case.backward(z_dx.clone(), z_dw.clone(), z_db.clone());
    let second = case.backward(z_dx, z_dw, z_db);
    assert_bits_eq("layernorm dx rerun", &second.0, &first.0);
    assert_bits_eq("layernorm dw rerun", &second.1, &first.1);
    assert_bits_eq("layernorm db rerun", &second.2, &first.2);
}

#[test]
#[should_panic(expected = "layernorm_fwd: a weight offset (1) is RMSNorm's only")]
fn layernorm_refuses_a_weight_offset() {
    let case = LnCase::new(70, 2, 3);
    let (mut out, mut mean, mut rstd) = (vec![0f32; 6], vec![0f32; 2], vec![0f32; 2]);
    let t = LayerNormFwd { out: &mut out[..], mean: &mut mean[..], rstd: &mut rstd[..], x: &case.x[..], w: &case.w[..], b: &case.b[..] };
    t.check(&NormShape::new(2, 3, 1e-5).weight_offset(1.0));
}
