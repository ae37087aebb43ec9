//! wgpu matmul and attention (kernels/src/matmul/matmul.wgsl, kernels/src/attention/*.wgsl)
//! against the CPU backend on the shapes that stress them: tile edges, transposes, strided
//! batches with gaps, beta accumulate, k = 0; attention with GQA/MQA, ALiBi, causal + kv_len
//! padding, KV-cache decoding (tq = 1, q_pos0 > 0, tk = capacity > kv_len), chunked prefill,
//! sequences that see no key, head_dim 6 / 11 / 64 / 128 / 200, Tq = Tk = 150.
//! Each comparison prints its max relative error and index. Without an adapter the tests say so
//! loudly and pass, unless OKAPI_REQUIRE_WGPU=1.

use okapi_runtime::{AttnShape, Backend, CpuBackend, Gemm, WgpuBackend};

fn backend() -> Option<WgpuBackend> {
    match WgpuBackend::new() {
        Ok(be) => {
            println!("wgpu adapter: {}", be.adapter_name());
            Some(be)
        }
        Err(e) => {
            eprintln!("!!!!!!!! NO WGPU ADAPTER: wgpu matmul/attention tests NOT RUN ({e}) !!!!!!!!");
            if std::env::var("OKAPI_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("OKAPI_REQUIRE_WGPU=1 but no wgpu adapter: {e}");
            }
            None
        }
    }
}

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Max of |got − want| / (1 + |want|); elements NaN in both (untouched gaps) are equal, NaN in
/// one only is an infinite error. Prints the worst element; returns whether it is within `tol`.
fn compare(name: &str, got: &[f32], want: &[f32], tol: f32) -> bool {
    assert_eq!(got.len(), want.len(), "{name}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_nan() && w.is_nan() || g == w {
            0.0
        } else {
            let e = (g - w).abs() / (1.0 + w.abs());
            if e.is_nan() {
                f32::INFINITY
            } else {
                e
            }
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    let ok = worst.0 <= tol;
    println!("{} {name}: max rel err {:.2e} at index {} (wgpu {} cpu {})", if ok { "ok  " } else { "FAIL" }, worst.0, worst.1, got[worst.1.min(got.len().saturating_sub(1))], want[worst.1.min(want.len().saturating_sub(1))]);
    ok
}

fn matmul_case(be: &WgpuBackend, rng: &mut Rng, g: Gemm, name: &str) -> bool {
    let (ea, eb, ec) = g.extents();
    let (a, b) = (rng.vec(ea), rng.vec(eb));
    // beta = 0 must not read C: start it as NaN
    let c0 = if g.beta == 0.0 { vec![f32::NAN; ec] } else { rng.vec(ec) };
    let mut c = c0.clone();
    CpuBackend.matmul(&mut c, &a, &b, &g);
    let mut wc = be.upload(&c0);
    be.matmul(&mut wc, &be.upload(&a), &be.upload(&b), &g);
    compare(&format!("matmul {name} {g:?}"), &be.read(&wc, ec), &c, 1e-4)
}

#[test]
fn wgpu_matmul_matches_cpu() {
    let Some(be) = backend() else { return };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases = [
        (Gemm::new(1, 1, 1), "1x1x1"),
        (Gemm::new(67, 129, 33), "67x129x33"),
        (Gemm::new(130, 7, 300), "130x7x300"),
        (Gemm::new(130, 7, 300).trans_a(), "130x7x300 trans_a"),
        (Gemm::new(130, 7, 300).trans_b(), "130x7x300 trans_b"),
        (Gemm::new(67, 129, 33).trans_a().trans_b().alpha(0.5).accumulate(), "trans_a trans_b alpha beta=1"),
        (Gemm::new(64, 64, 64).accumulate(), "exact tile, accumulate"),
        (Gemm::new(5, 3, 0), "k=0 overwrite"),
        (Gemm::new(5, 3, 0).accumulate(), "k=0 accumulate"),
        (Gemm::new(3, 200, 70).trans_b(), "skinny x·Wᵀ (decode)"),
        (Gemm::new(17, 19, 23).batched(3, 17 * 23 + 5, 0, 17 * 19 + 3), "batch, odd strides with gaps, shared B"),
        (Gemm::new(16, 40, 70).trans_b().batched(4, 16 * 70, 40 * 70 + 1, 16 * 40).accumulate(), "batch trans_b accumulate"),
        (Gemm::new(9, 65, 31).trans_a().batched(2, 9 * 31, 31 * 65, 9 * 65).alpha(-2.0), "batch trans_a alpha"),
    ];
    let mut ok = true;
    for (g, name) in cases {
        ok &= matmul_case(&be, &mut rng, g, name);
    }
    assert!(ok, "wgpu matmul differs from the CPU backend (see the FAIL lines)");
}

#[allow(clippy::too_many_arguments)]
fn attention_case(be: &WgpuBackend, rng: &mut Rng, sh: AttnShape, q_pos0: &[u32], kv_len: &[u32], alibi: bool, name: &str) -> bool {
    let (hq, d) = (sh.n_heads, sh.head_dim);
    let kw = sh.n_kv_heads * d;
    let (nq, nk, nl) = (sh.batch * sh.tq * hq * d, sh.batch * sh.tk * kw, sh.batch * sh.tq * hq);
    let (q, k, v, dout) = (rng.vec(nq), rng.vec(nk), rng.vec(nk), rng.vec(nq));
    let slopes = okapi_kernels::attention::alibi_slopes(hq);
    let (qp, kl) = (q_pos0.to_vec(), kv_len.to_vec());
    let cpu = CpuBackend;
    let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; nl]);
    cpu.attention_fwd(&mut out, &mut lse, &q, &k, &v, &qp, &kl, alibi.then_some(&slopes), &sh);
    // outputs start as NaN: every element must be written
    let (mut dq, mut dk, mut dv) = (vec![f32::NAN; nq], vec![f32::NAN; nk], vec![f32::NAN; nk]);
    cpu.attention_bwd(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &qp, &kl, alibi.then_some(&slopes), &sh);

    let (wq, wk, wv, wdo) = (be.upload(&q), be.upload(&k), be.upload(&v), be.upload(&dout));
    let (wqp, wkl, wsl) = (be.upload_ids(&qp), be.upload_ids(&kl), be.upload(&slopes));
    let (mut wout, mut wlse) = (be.upload(&vec![f32::NAN; nq]), be.upload(&vec![f32::NAN; nl]));
    be.attention_fwd(&mut wout, &mut wlse, &wq, &wk, &wv, &wqp, &wkl, alibi.then_some(&wsl), &sh);
    let mut ok = compare(&format!("attention_fwd {name}: out"), &be.read(&wout, nq), &out, 1e-4);
    ok &= compare(&format!("attention_fwd {name}: lse"), &be.read(&wlse, nl), &lse, 1e-4);
    // the backward from the CPU's saved tensors, so it is tested on its own
    let (wout_c, wlse_c) = (be.upload(&out), be.upload(&lse));
    let (mut wdq, mut wdk, mut wdv) = (be.upload(&vec![f32::NAN; nq]), be.upload(&vec![f32::NAN; nk]), be.upload(&vec![f32::NAN; nk]));
    be.attention_bwd(&mut wdq, &mut wdk, &mut wdv, &wdo, &wq, &wk, &wv, &wout_c, &wlse_c, &wqp, &wkl, alibi.then_some(&wsl), &sh);
    ok &= compare(&format!("attention_bwd {name}: dq"), &be.read(&wdq, nq), &dq, 2e-4);
    ok &= compare(&format!("attention_bwd {name}: dk"), &be.read(&wdk, nk), &dk, 2e-4);
    ok &= compare(&format!("attention_bwd {name}: dv"), &be.read(&wdv, nk), &dv, 2e-4);
    ok
}

fn shape(batch: usize, tq: usize, tk: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize, causal: bool) -> AttnShape {
    AttnShape { batch, tq, tk, n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), causal }
}

#[test]
fn wgpu_attention_matches_cpu() {
    let Some(be) = backend() else { return };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut ok = true;
    ok &= attention_case(&be, &mut rng, shape(2, 9, 9, 4, 2, 6, true), &[0, 0], &[9, 5], false, "GQA causal kv_len padding D=6");
    ok &= attention_case(&be, &mut rng, shape(2, 70, 70, 3, 3, 11, false), &[0, 0], &[70, 33], true, "ALiBi non-causal padding D=11");
    ok &= attention_case(&be, &mut rng, shape(2, 20, 20, 4, 4, 16, true), &[0, 0], &[20, 13], true, "ALiBi causal padding");
    ok &= attention_case(&be, &mut rng, shape(1, 150, 150, 2, 1, 64, true), &[0], &[150], false, "Tq=Tk=150 MQA causal D=64");
    ok &= attention_case(&be, &mut rng, shape(3, 1, 40, 4, 2, 64, true), &[7, 30, 0], &[8, 31, 1], false, "KV-cache decode tq=1 cap=40");
    ok &= attention_case(&be, &mut rng, shape(2, 5, 12, 2, 1, 8, true), &[3, 0], &[8, 0], true, "chunked prefill + a sequence with no key");
    ok &= attention_case(&be, &mut rng, shape(1, 33, 33, 2, 2, 128, true), &[0], &[33], false, "D=128");
    ok &= attention_case(&be, &mut rng, shape(1, 12, 12, 1, 1, 200, false), &[0], &[12], false, "D=200");
    assert!(ok, "wgpu attention differs from the CPU backend (see the FAIL lines)");
}
