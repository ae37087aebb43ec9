//! Vectorisable row primitives shared by softmax, cross-entropy and attention.
//!
//! `f32::exp` is a libm call per element, which blocks vectorisation and dominated the CPU
//! softmax/cross-entropy/attention passes. `exp` below is branch-free (Cephes' `expf`
//! polynomial after an exact Cody–Waite range reduction, ≤ 2 ulp over the range used here), so
//! the loops that call it compile to SIMD. Each primitive exists once for AVX-512 (picked at run
//! time when the CPU has it) and once for the build's baseline target.

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n·LN2_HI is exact for |n| < 2⁹ (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5·2²³: adding it rounds to the nearest integer and leaves that integer in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// Below this, exp gives 0 (the smallest normal is e^−87.34); above, +inf. The top of the f32
/// range (88.38..88.72) is given up so that 2ⁿ stays a normal number (n ≤ 127): softmax-style
/// callers only ever pass x ≤ 0.
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.376_26;

/// e^x, branch-free. Inputs below −87.3 give 0, above 88.7 give +inf, NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    let t = xc * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC; // round(x·log2 e), exact
    let r = xc - n * LN2_HI - n * LN2_LO; // |r| ≤ ln2/2
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    // the fitted coefficient as printed; it rounds to the same f32 as 0.5
    #[allow(clippy::excessive_precision)]
    let c0 = 5.000_000_1e-1;
    p = p * r + c0;
    let e = p * (r * r) + r + 1.0;
    // 2ⁿ from the integer sitting in t's mantissa; n ∈ [−126, 127] here.
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let y = e * f32::from_bits(((n_int + 127) as u32) << 23);
    // the clamp turned ±inf into finite values: restore the limits
    if x < EXP_LO {
        0.0
    } else if x > EXP_HI {
        f32::INFINITY
    } else {
        y
    }
}

/// tanh(x), branch-free, relative error ≤ 3 ulp everywhere (Cephes' `tanhf`): an odd polynomial
/// of |x| below 0.625, where 1 − 2/(e^{2|x|} + 1) would lose the small values to cancellation (a
/// soft-cap c·tanh(s/c) must stay ≈ s there); that form above, saturating to ±1 without NaN.
/// NaN stays NaN. The CUDA prelude's `okapi_tanh` and `tanh.wgsl` compute the same.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let big = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    let z = a * a;
    let small = ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 3.333_328e-1) * z * a + a;
    // |tanh| from |x|, then x's sign: −0 stays −0
    (if a < 0.625 { small } else { big }).copysign(x)
}

macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn imp($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    imp($($arg),*)
                }
                if $crate::vmath::has_avx512() {
                    // SAFETY: the CPU was checked for these features just above.
                    return unsafe { avx512($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}

pub(crate) use multiversion;

/// 0: not probed yet, 1: no AVX-512 (or disabled), 2: AVX-512 in use.
static AVX512: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    use std::sync::atomic::Ordering;
    match AVX512.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("avx512dq");
            AVX512.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// Turns okapi's own AVX-512 paths off (`false`) or back to what the CPU supports (`true`), so
/// that tests on an AVX-512 machine also exercise the portable code every other CPU runs.
/// (The `gemm` crate dispatches on its own.) Returns whether AVX-512 is now in use.
pub fn set_avx512(enabled: bool) -> bool {
    AVX512.store(if enabled { 0 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
    #[cfg(target_arch = "x86_64")]
    return has_avx512();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Lanes of the partial sums: a fixed count, so results do not depend on the SIMD width.
const LANES: usize = 16;

multiversion! {
    /// max over x (−inf for an empty slice; NaN-ignoring like `f32::max`).
    pub fn max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] = acc[l].max(c[l]);
            }
        }
        let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a));
        for &a in rest {
            m = m.max(a);
        }
        m
    }
}

multiversion! {
    /// x\[i\] ← e^(a·x\[i\] − b); returns Σ x\[i\] (16 fixed lanes in f32, then summed in f64).
    pub fn exp_affine_sum(x: &mut [f32], a: f32, b: f32) -> f64 {
        let mut acc = [0f32; LANES];
        let mut chunks = x.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                c[l] = exp(a * c[l] - b);
                acc[l] += c[l];
            }
        }
        let mut s: f64 = acc.iter().map(|&a| a as f64).sum();
        for v in chunks.into_remainder() {
            *v = exp(a * *v - b);
            s += *v as f64;
        }
        s
    }
}

multiversion! {
    /// Σ e^(x\[i\] − b), x untouched (16 fixed lanes in f32, then summed in f64).
    pub fn sum_exp(x: &[f32], b: f32) -> f64 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                acc[l] += exp(c[l] - b);
            }
        }
        let mut s: f64 = acc.iter().map(|&a| a as f64).sum();
        for &v in rest {
            s += exp(v - b) as f64;
        }
        s
    }
}

multiversion! {
    /// y\[i\] ← k·e^(x\[i\] − b) (the softmax/cross-entropy gradient row, before the one-hot).
    pub fn scaled_exp(y: &mut [f32], x: &[f32], k: f32, b: f32) -> () {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = k * exp(x - b);
        }
    }
}

multiversion! {
    /// Σ a\[i\]·b\[i\], 16 fixed lanes in f32.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..LANES {
                acc[l] = x[l].mul_add(y[l], acc[l]);
            }
        }
        let mut s = acc.iter().sum::<f32>();
        for (x, y) in ra.iter().zip(rb) {
            s += x * y;
        }
        s
    }
}

multiversion! {
    /// Σ x\[i\]² in f64 (16 fixed f64 lanes: vectorised, and exact enough for a global norm).
    pub fn sum_squares_f64(x: &[f32]) -> f64 {
        let mut acc = [0f64; LANES];
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                let v = c[l] as f64;
                acc[l] = v.mul_add(v, acc[l]);
            }
        }
        let mut s: f64 = acc.iter().sum();
        for &v in rest {
            s += v as f64 * v as f64;
        }
        s
    }
}

multiversion! {
    /// (Σ x\[i\], Σ (x\[i\] − mu)²) in f64 lanes — LayerNorm's statistics (call with mu = 0 for
    /// the plain sum first).
    pub fn sum_and_sq_dev_f64(x: &[f32], mu: f64) -> (f64, f64) {
        let (mut s1, mut s2) = ([0f64; LANES], [0f64; LANES]);
        let chunks = x.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for l in 0..LANES {
                let v = c[l] as f64;
                s1[l] += v;
                s2[l] = (v - mu).mul_add(v - mu, s2[l]);
            }
        }
        let (mut a, mut b): (f64, f64) = (s1.iter().sum(), s2.iter().sum());
        for &v in rest {
            a += v as f64;
            b += (v as f64 - mu) * (v as f64 - mu);
        }
        (a, b)
    }
}

multiversion! {
    /// x\[i\] ← a·x\[i\]
    pub fn scale(x: &mut [f32], a: f32) -> () {
        for v in x.iter_mut() {
            *v *= a;
        }
    }
}

multiversion! {
    /// acc\[i\] ← max(acc\[i\], x\[i\]) — column maxima of a row-major tile, one row at a time.
    pub fn max_into(acc: &mut [f32], x: &[f32]) -> () {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a = a.max(v);
        }
    }
}

multiversion! {
    /// x\[i\] ← e^(x\[i\] − shift\[i\]); acc\[i\] += x\[i\] — one row of a tile whose columns are
    /// softmax rows (attention's transposed score tile); the caller flushes `acc` into f64
    /// every few rows, so each f32 partial sum stays short.
    pub fn exp_shift_acc(x: &mut [f32], shift: &[f32], acc: &mut [f32]) -> () {
        for ((v, &b), a) in x.iter_mut().zip(shift).zip(acc.iter_mut()) {
            *v = exp(*v - b);
            *a += *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_within_2_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        // 2 ulp of f32 is 2·2⁻²³ ≈ 2.4e-7 relative
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_matches_libm_within_3_ulp() {
        let mut worst = 0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let (got, want) = (tanh(x) as f64, (x as f64).tanh());
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731;
        }
        // tiny arguments, where tanh(x) ≈ x: relative error, not absolute, is what a soft-cap needs
        for x in [1e-30f32, -3e-8, 1e-4, -0.0123, 0.624_999, 0.625, -0.625_001] {
            let (got, want) = (tanh(x) as f64, (x as f64).tanh());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3.6e-7, "worst relative error {worst:e}");
        assert_eq!(tanh(0.0).to_bits(), 0f32.to_bits());
        assert_eq!(tanh(-0.0).to_bits(), (-0f32).to_bits());
        assert_eq!((tanh(100.0), tanh(-100.0)), (1.0, -1.0));
        assert_eq!((tanh(f32::INFINITY), tanh(f32::NEG_INFINITY)), (1.0, -1.0));
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn row_primitives_match_scalar_loops() {
        // the portable build and (where the CPU has it) the AVX-512 one
        for avx512 in [false, true] {
            set_avx512(avx512);
            row_primitives_case();
        }
    }

    fn row_primitives_case() {
        let x: Vec<f32> = (0..1037).map(|i| ((i * 7919 % 1000) as f32 / 100.0) - 5.0).collect();
        assert_eq!(max(&x), x.iter().fold(f32::NEG_INFINITY, |m, &a| m.max(a)));
        let want: f64 = x.iter().map(|&v| ((v - 3.0) as f64).exp()).sum();
        assert!((sum_exp(&x, 3.0) - want).abs() / want < 1e-6);
        let mut y = x.clone();
        let s = exp_affine_sum(&mut y, 0.5, 1.0);
        let want: f64 = x.iter().map(|&v| (0.5 * v as f64 - 1.0).exp()).sum();
        assert!((s - want).abs() / want < 1e-6);
        for (a, b) in y.iter().zip(&x) {
            assert!((*a as f64 - (0.5 * *b as f64 - 1.0).exp()).abs() < 1e-6 * (0.5 * *b as f64 - 1.0).exp().max(1.0));
        }
        let d: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot(&x, &y) as f64 - d).abs() < 1e-4 * d.abs().max(1.0));
    }
}
