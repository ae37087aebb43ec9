//! GEMM: `matmul` and `matmul_reference` vs a naive f64 loop written here, for the four
//! transpose combinations, strided batches, alpha ≠ 1, beta = 0 (overwrite) and beta = 1
//! (accumulate); and the matmul-built gradients of `C = A·B` vs central differences.

mod common;

use common::*;
use okapi_kernels::matmul::{matmul, matmul_reference, Gemm};

/// Naive `alpha·op(A)·op(B) + beta·C0` of batch `i`, in f64, indexing from the definitions.
fn naive(a: &[f32], b: &[f32], c0: &[f32], g: &Gemm, i: usize) -> Vec<f64> {
    let (m, n, k) = (g.m, g.n, g.k);
    let at = |r: usize, p: usize| a[i * g.stride_a + if g.trans_a { p * m + r } else { r * k + p }] as f64;
    let bt = |p: usize, col: usize| b[i * g.stride_b + if g.trans_b { col * k + p } else { p * n + col }] as f64;
    let mut out = vec![0.0; m * n];
    for r in 0..m {
        for col in 0..n {
            let s: f64 = (0..k).map(|p| at(r, p) * bt(p, col)).sum();
            let prev = if g.beta != 0.0 { g.beta as f64 * c0[i * g.stride_c + r * n + col] as f64 } else { 0.0 };
            out[r * n + col] = g.alpha as f64 * s + prev;
        }
    }
    out
}

/// Runs `kernel` on random operands (padded batch strides), checks each batch against `naive`
/// and that the padding between C's batches is untouched.
fn check(g: Gemm, seed: u64, kernel: fn(&mut [f32], &[f32], &[f32], &Gemm), tol: f64, label: &str) {
    let mut rng = Rng::new(seed);
    let (ea, eb, ec) = g.extents();
    let (a, b) = (rng.normal_vec(ea, 1.0), rng.normal_vec(eb, 1.0));
    // beta = 0 must not read C: fill it with NaN
    let c0 = if g.beta == 0.0 { nan_vec(ec) } else { rng.normal_vec(ec, 1.0) };
    let mut c = c0.clone();
    kernel(&mut c, &a, &b, &g);
    for i in 0..g.batch {
        let want = naive(&a, &b, &c0, &g, i);
        let got = &c[i * g.stride_c..][..g.m * g.n];
        assert_close(&format!("{label} {g:?} batch {i}"), got, &want, tol);
    }
    for (idx, (x, x0)) in c.iter().zip(&c0).enumerate() {
        let in_batch = (0..g.batch).any(|i| (i * g.stride_c..i * g.stride_c + g.m * g.n).contains(&idx));
        if !in_batch {
            assert_eq!(x.to_bits(), x0.to_bits(), "{label} {g:?}: padding element {idx} of C was written");
        }
    }
}

fn configs() -> Vec<Gemm> {
    let mut out = Vec::new();
    // (8, 300, 70) and (16, 260, 48): the skinny x·Wᵀ path with several column tasks
    for (m, n, k) in [(13usize, 7usize, 5usize), (67, 129, 33), (1, 1, 1), (5, 3, 1), (1, 40, 70), (8, 300, 70), (16, 260, 48)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, accumulate) in [(1.0f32, false), (0.75, false), (1.0, true), (-1.5, true)] {
                for batch in [1usize, 3] {
                    let mut g = Gemm::new(m, n, k).alpha(alpha);
                    if ta {
                        g = g.trans_a();
                    }
                    if tb {
                        g = g.trans_b();
                    }
                    if accumulate {
                        g = g.accumulate();
                    }
                    if batch > 1 {
                        // strides larger than the matrices: padding between batches
                        g = g.batched(batch, m * k + 3, k * n + 1, m * n + 2);
                    }
                    out.push(g);
                }
            }
        }
    }
    // shared B across the batch (stride 0), as a weight applied to several inputs
    out.push(Gemm::new(9, 11, 6).trans_b().batched(4, 9 * 6, 0, 9 * 11));
    out
}

#[test]
fn matmul_matches_naive_f64() {
    for (s, g) in configs().into_iter().enumerate() {
        check(g, 900 + s as u64, matmul, 1e-5, "matmul");
    }
}

#[test]
fn matmul_reference_matches_naive_f64() {
    // f64 accumulation then one rounding: within an f32 half-ulp
    for (s, g) in configs().into_iter().enumerate() {
        check(g, 900 + s as u64, matmul_reference, 1e-7, "matmul_reference");
    }
}

#[test]
fn matmul_matches_matmul_reference() {
    for (s, g) in configs().into_iter().enumerate() {
        let mut rng = Rng::new(1900 + s as u64);
        let (ea, eb, ec) = g.extents();
        let (a, b, c0) = (rng.normal_vec(ea, 1.0), rng.normal_vec(eb, 1.0), rng.normal_vec(ec, 1.0));
        let (mut c, mut c_ref) = (c0.clone(), c0.clone());
        matmul(&mut c, &a, &b, &g);
        matmul_reference(&mut c_ref, &a, &b, &g);
        assert_close(&format!("matmul vs matmul_reference {g:?}"), &c, &to_f64(&c_ref), 1e-5);
    }
}

#[test]
fn matmul_accumulates_onto_prefill() {
    let g = Gemm::new(13, 7, 5).trans_a();
    let mut rng = Rng::new(950);
    let (ea, eb, ec) = g.extents();
    let (a, b, pre) = (rng.normal_vec(ea, 1.0), rng.normal_vec(eb, 1.0), rng.normal_vec(ec, 1.0));
    let mut fresh = nan_vec(ec);
    matmul(&mut fresh, &a, &b, &g);
    let mut acc = pre.clone();
    matmul(&mut acc, &a, &b, &g.accumulate());
    assert_accumulates("matmul beta=1", &pre, &fresh, &acc, 1e-6);
}

#[test]
fn matmul_empty_k() {
    // k = 0: the product is zero; beta = 0 overwrites (C not read), beta = 1 keeps C
    let g = Gemm::new(3, 4, 0);
    let mut c = nan_vec(12);
    matmul(&mut c, &[], &[], &g);
    assert_bits_eq("matmul k=0 beta=0", &c, &[0.0; 12]);
    let pre = Rng::new(951).normal_vec(12, 1.0);
    let mut c = pre.clone();
    matmul(&mut c, &[], &[], &g.accumulate());
    assert_bits_eq("matmul k=0 beta=1", &c, &pre);
}

/// The training-time use: for `C = A·B` (A (m,k), B (k,n)), `dA = dC·Bᵀ` and `dB = Aᵀ·dC`
/// through the transpose flags, against central differences of the f64 product.
#[test]
fn matmul_gradients_grad_check() {
    let (m, n, k) = (7usize, 5usize, 6usize);
    let mut rng = Rng::new(960);
    let (a, b, dc) = (rng.normal_vec(m * k, 1.0), rng.normal_vec(k * n, 1.0), rng.normal_vec(m * n, 1.0));
    let product = |a: &[f64], b: &[f64]| -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for r in 0..m {
            for col in 0..n {
                c[r * n + col] = (0..k).map(|p| a[r * k + p] * b[p * n + col]).sum();
            }
        }
        c
    };
    let (mut da, mut db) = (nan_vec(m * k), nan_vec(k * n));
    matmul(&mut da, &dc, &b, &Gemm::new(m, k, n).trans_b());
    matmul(&mut db, &a, &dc, &Gemm::new(k, n, m).trans_a());
    let (a64, b64, r) = (to_f64(&a), to_f64(&b), to_f64(&dc));
    assert_close("matmul dA", &da, &numeric_grad_proj(&a64, &r, |aa| product(aa, &b64)), 1e-5);
    assert_close("matmul dB", &db, &numeric_grad_proj(&b64, &r, |bb| product(&a64, bb)), 1e-5);
}

/// The same products through the portable code paths (okapi's skinny kernel without AVX-512),
/// which every CPU without AVX-512 runs.
#[test]
fn matmul_portable_paths_match_naive_f64() {
    let was = okapi_kernels::vmath::set_avx512(false);
    for (i, g) in configs().into_iter().enumerate() {
        check(g, 900 + i as u64, matmul, 1e-5, "matmul (portable)");
    }
    okapi_kernels::vmath::set_avx512(true);
    eprintln!("AVX-512 paths on this CPU: {}", if was { "present (also tested)" } else { "absent" });
}
