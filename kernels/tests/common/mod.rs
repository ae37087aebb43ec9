//! Shared helpers of the kernel tests: a tiny deterministic RNG, central finite differences in
//! f64, and comparisons that report the worst element on failure and refuse vacuous checks.
#![allow(dead_code)]

/// splitmix64, enough for test data; the same seed gives the same stream on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `n` draws of N(0, std²) as f32.
    pub fn normal_vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
    /// `n` draws of U(lo, hi) as f32.
    pub fn uniform_vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| (lo + (hi - lo) * self.uniform()) as f32).collect()
    }
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Finite-difference step: the f64 references are smooth, so central differences with this
/// step are accurate to ~1e-9 relative on O(1) data.
pub const FD_STEP: f64 = 1e-6;

/// ∂f/∂x by central differences, f evaluated in f64.
pub fn numeric_grad(x: &[f64], mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + FD_STEP;
            let fp = f(&xp);
            xp[i] = x0 - FD_STEP;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * FD_STEP)
        })
        .collect()
}

/// Gradient of the projection loss `L(x) = Σ r ⊙ f(x)`.
pub fn numeric_grad_proj(x: &[f64], r: &[f64], mut f: impl FnMut(&[f64]) -> Vec<f64>) -> Vec<f64> {
    numeric_grad(x, |xx| dot(r, &f(xx)))
}

fn norm(x: impl Iterator<Item = f64>) -> f64 {
    x.map(|v| v * v).sum::<f64>().sqrt()
}

/// ‖got − want‖ / ‖want‖ ≤ rel_tol, with a report of the largest element error on failure.
/// Fails on empty or all-zero references (the check would be vacuous) and on non-finite values.
pub fn assert_close_f64(name: &str, got: &[f64], want: &[f64], rel_tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length {} vs reference {}", got.len(), want.len());
    assert!(!want.is_empty(), "{name}: empty comparison");
    let want_norm = norm(want.iter().copied());
    assert!(want_norm.is_finite() && want_norm > 1e-12, "{name}: reference norm {want_norm} (vacuous check)");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{name}: non-finite value {} at index {i} (reference {})", got[i], want[i]);
    }
    let err_norm = norm(got.iter().zip(want).map(|(g, w)| g - w));
    let rel = err_norm / want_norm;
    eprintln!("{name}: relative error {rel:.2e} (tolerance {rel_tol:.0e})");
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // NaN must fail too
    if !(rel <= rel_tol) {
        let (imax, emax) = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs())
            .enumerate()
            .fold((0, 0.0), |acc, (i, e)| if e > acc.1 { (i, e) } else { acc });
        panic!(
            "{name}: relative error {rel:.3e} > {rel_tol:.1e}; max abs error {emax:.3e} at index {imax} \
             (got {}, want {}); ‖want‖ = {want_norm:.3e}, n = {}",
            got[imax],
            want[imax],
            want.len()
        );
    }
}

/// `assert_close_f64` for an f32 result.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], rel_tol: f64) {
    assert_close_f64(name, &to_f64(got), want, rel_tol);
}

/// Elementwise |got − want| ≤ rel_tol·|want| (for data where every element matters on its own).
pub fn assert_elementwise(name: &str, got: &[f32], want: &[f64], rel_tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length {} vs reference {}", got.len(), want.len());
    assert!(!want.is_empty(), "{name}: empty comparison");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= rel_tol * w.abs(), "{name}[{i}]: got {g:e}, want {w:e}, relative error {:.3e} > {rel_tol:.1e}", err / w.abs());
    }
}

/// Bit-for-bit equality (NaNs compare by their bits too).
pub fn assert_bits_eq(name: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: length {} vs {}", got.len(), want.len());
    assert!(!want.is_empty(), "{name}: empty comparison");
    if let Some(i) = got.iter().zip(want).position(|(g, w)| g.to_bits() != w.to_bits()) {
        panic!("{name}: first bit difference at index {i}: {:e} vs {:e}", got[i], want[i]);
    }
}

/// A `+=` output: `result == prefill + fresh`, exactly (each element took one addition).
pub fn assert_accumulates_exactly(name: &str, prefill: &[f32], fresh: &[f32], result: &[f32]) {
    assert!(fresh.iter().any(|&v| v != 0.0), "{name}: fresh gradient is all zero (vacuous check)");
    let want: Vec<f32> = prefill.iter().zip(fresh).map(|(p, f)| p + f).collect();
    assert_bits_eq(name, result, &want);
}

/// A `+=` output whose partial sums are added one by one: `result ≈ prefill + fresh` up to
/// f32 rounding of the reassociation.
pub fn assert_accumulates(name: &str, prefill: &[f32], fresh: &[f32], result: &[f32], rel_tol: f64) {
    assert!(fresh.iter().any(|&v| v != 0.0), "{name}: fresh gradient is all zero (vacuous check)");
    for (i, ((&p, &f), &r)) in prefill.iter().zip(fresh).zip(result).enumerate() {
        let want = p as f64 + f as f64;
        let err = (r as f64 - want).abs();
        let scale = p.abs().max(f.abs()) as f64;
        assert!(err <= rel_tol * scale, "{name}[{i}]: prefill {p:e} + fresh {f:e} = {want:e}, got {r:e}");
    }
}

/// A buffer of NaNs: an `=` output written into it must not keep any of them.
pub fn nan_vec(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}
