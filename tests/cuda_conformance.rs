//! The CUDA backend against the CPU backend (the oracle): every `Backend` op on ragged shapes,
//! f32 with tight tolerances and bf16 (matmul / attention on bf16 operands) with loose ones;
//! whole-model logits and every parameter gradient on the `llama_gqa` and `bloom_6h` fixtures;
//! an SFT run whose losses follow the CPU run's.
//!
//! Every test needs an NVIDIA GPU and is `#[ignore]`d; run them on a GPU machine with
//!   cargo test --test cuda_conformance -- --ignored        (or the carried binary, --ignored)
//! Without a driver / device / NVRTC each test prints why and passes, unless
//! `OKAPI_REQUIRE_CUDA=1` (scripts/device_check.sh sets it) makes it fail.

mod common;

use common::fixture;
use okapi::runtime::{AdamW, AttnShape, Backend, CpuBackend, CudaBackend, Gemm, Precision, IGNORE_INDEX};

fn gpu(precision: Precision) -> Option<CudaBackend> {
    match CudaBackend::with_precision(0, precision) {
        Ok(be) => {
            eprintln!("cuda: running on {}", be.name());
            Some(be)
        }
        Err(e) => {
            eprintln!("!!!!!!!! cuda: NO GPU ({e}) — this CUDA test did NOT run !!!!!!!!");
            if std::env::var("OKAPI_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("OKAPI_REQUIRE_CUDA=1 but the CUDA backend cannot start: {e}");
            }
            None
        }
    }
}

/// Deterministic pseudo-random values in [-scale, scale).
fn rand(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}
fn rand_ids(len: usize, seed: u64, bound: u32) -> Vec<u32> {
    rand(len, seed, 1.0).iter().map(|x| (((x + 1.0) * 0.5 * bound as f32) as u32).min(bound - 1)).collect()
}

/// |got − want| ≤ abs + rel·max(|want|, rms(want)); infinities must match.
fn check(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let rms = (want.iter().filter(|x| x.is_finite()).map(|&x| (x as f64) * (x as f64)).sum::<f64>() / want.len().max(1) as f64).sqrt() as f32;
    let (mut bad, mut worst, mut at) = (0usize, 0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_infinite() || g.is_infinite() { g == w } else { (g - w).abs() <= abs + rel * w.abs().max(rms) };
        let e = if w.is_finite() && g.is_finite() { (g - w).abs() } else if ok { 0.0 } else { f32::INFINITY };
        if e > worst {
            worst = e;
            at = i;
        }
        bad += !ok as usize;
    }
    eprintln!("{what}: max abs err {worst:.3e} at [{at}]");
    assert!(bad == 0, "{what}: {bad} of {} elements out of tolerance (abs {abs:e}, rel {rel:e}); worst at [{at}]: got {} want {}", got.len(), got[at], want[at]);
}

/// Runs `$body` on the CPU and on the GPU (`$be` bound to each) and compares every output.
macro_rules! cmp {
    ($what:expr, $gpu:expr, $abs:expr, $rel:expr, |$be:ident| $body:expr) => {{
        let want: Vec<Vec<f32>> = {
            let $be = &CpuBackend;
            $body
        };
        let got: Vec<Vec<f32>> = {
            let $be = $gpu;
            $body
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            check(&format!("{} [output {i}]", $what), g, w, $abs, $rel);
        }
    }};
}

fn rd<B: Backend>(be: &B, b: &B::Buf) -> Vec<f32> {
    be.read(b, be.buf_len(b))
}

// ---- tolerance presets ------------------------------------------------------------------
const EXACT: (f32, f32) = (0.0, 0.0);
const ELEM: (f32, f32) = (1e-6, 2e-5);
const RED: (f32, f32) = (1e-6, 5e-5);
const MM: (f32, f32) = (1e-6, 1e-4);
const ATT: (f32, f32) = (1e-6, 3e-4);
/// bf16 operands (8 significant bits) with fp32 accumulation
const BF16: (f32, f32) = (1e-3, 2e-2);

fn memory_ops(g: &CudaBackend) {
    for n in [1usize, 7, 1000, 300_001] {
        let x = rand(n, 1, 3.0);
        let y = rand(n, 2, 3.0);
        cmp!(format!("fill/copy/scale/axpy n={n}"), g, EXACT.0, 1e-7, |be| {
            let (mut a, bb) = (be.upload(&x), be.upload(&y));
            let mut c = be.zeros(n);
            be.copy(&mut c, &bb, n);
            let copied = rd(be, &c);
            be.scale(&mut a, 0.5, n);
            be.axpy(&mut a, -2.0, &bb, n);
            let ax = rd(be, &a);
            be.fill(&mut c, 1.25, n);
            vec![copied, ax, rd(be, &c)]
        });
        cmp!(format!("sum_squares n={n}"), g, RED.0, RED.1, |be| {
            let mut acc = be.zeros(3);
            be.sum_squares(&mut acc, 1, &be.upload(&x), n);
            vec![rd(be, &acc)]
        });
    }
    for (n, c) in [(1usize, 7usize), (33, 300), (130, 4099)] {
        let x = rand(n * c, 3, 2.0);
        let bias = rand(c, 4, 1.0);
        cmp!(format!("bias_add/bias_bwd {n}x{c}"), g, RED.0, RED.1, |be| {
            let mut xb = be.upload(&x);
            be.bias_add(&mut xb, &be.upload(&bias), n, c);
            let mut db = be.upload(&bias);
            be.bias_bwd(&mut db, &be.upload(&x), n, c);
            vec![rd(be, &xb), rd(be, &db)]
        });
        let v = 50;
        let mut ids = rand_ids(n, 5, v as u32);
        ids[0] = (v - 1) as u32;
        let table = rand(v * c, 6, 1.0);
        cmp!(format!("embedding {n}x{c}"), g, RED.0, RED.1, |be| {
            let idb = be.upload_ids(&ids);
            let mut out = be.zeros(n * c);
            be.embedding_fwd(&mut out, &be.upload(&table), &idb, n, c);
            let mut dt = be.upload(&table);
            be.embedding_bwd(&mut dt, &be.upload(&x), &idb, n, c);
            vec![rd(be, &out), rd(be, &dt)]
        });
    }
    let (b, tn, tcap, w) = (3usize, 5usize, 9usize, 24usize);
    let pos = vec![0u32, 4, 7];
    let new = rand(b * tn * w, 7, 1.0);
    cmp!("kv_write", g, 0.0, 0.0, |be| {
        let mut cache = be.upload(&rand(b * tcap * w, 8, 1.0));
        be.kv_write(&mut cache, &be.upload(&new), &be.upload_ids(&pos), b, tn, tcap, w);
        vec![rd(be, &cache)]
    });
}

fn matmuls(g: &CudaBackend, tol: (f32, f32)) {
    for &(m, n, k) in &[(1usize, 1usize, 1usize), (7, 33, 67), (64, 64, 64), (130, 70, 257), (300, 129, 96), (513, 1024, 768)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (beta, batch) in [(0.0f32, 1usize), (1.0, 1), (0.0, 3)] {
                let mut gm = Gemm::new(m, n, k).alpha(0.75);
                if ta {
                    gm = gm.trans_a();
                }
                if tb {
                    gm = gm.trans_b();
                }
                if beta == 1.0 {
                    gm = gm.accumulate();
                }
                if batch > 1 {
                    gm = gm.batched(batch, m * k, k * n, m * n);
                }
                let a = rand(m * k * batch, 11, 1.0);
                let bm = rand(k * n * batch, 12, 1.0);
                // beta = 0 must not read C: start from NaN
                let c0 = if beta == 0.0 { vec![f32::NAN; m * n * batch] } else { rand(m * n * batch, 13, 1.0) };
                cmp!(format!("matmul m{m} n{n} k{k} ta{ta} tb{tb} beta{beta} batch{batch}"), g, tol.0, tol.1, |be| {
                    let mut c = be.upload(&c0);
                    be.matmul(&mut c, &be.upload(&a), &be.upload(&bm), &gm);
                    vec![rd(be, &c)]
                });
            }
        }
    }
}

fn attn_cases() -> Vec<(AttnShape, Vec<u32>, Vec<u32>, bool)> {
    let mk = |batch, tq, tk, n_heads, n_kv_heads, head_dim: usize, causal| AttnShape { batch, tq, tk, n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), causal };
    vec![
        (mk(2, 37, 37, 4, 2, 64, true), vec![0, 0], vec![37, 20], false),
        (mk(1, 70, 70, 6, 6, 80, true), vec![0], vec![70], true),
        (mk(2, 1, 45, 8, 2, 128, true), vec![44, 30], vec![45, 31], false),
        (mk(1, 33, 33, 2, 1, 256, false), vec![0], vec![33], true),
        (mk(2, 5, 40, 4, 4, 32, true), vec![35, 10], vec![40, 15], false),
        (mk(1, 130, 130, 4, 1, 128, true), vec![0], vec![130], false),
    ]
}

fn attention(g: &CudaBackend, tol: (f32, f32)) {
    for (i, (sh, q_pos0, kv_len, alibi)) in attn_cases().into_iter().enumerate() {
        let (d, hq, hkv) = (sh.head_dim, sh.n_heads, sh.n_kv_heads);
        let q = rand(sh.batch * sh.tq * hq * d, 20 + i as u64, 1.5);
        let k = rand(sh.batch * sh.tk * hkv * d, 40 + i as u64, 1.5);
        let v = rand(sh.batch * sh.tk * hkv * d, 60 + i as u64, 1.0);
        let dout = rand(sh.batch * sh.tq * hq * d, 80 + i as u64, 1.0);
        let slopes = okapi::kernels::attention::alibi_slopes(hq);
        cmp!(format!("attention case {i} {sh:?} alibi={alibi}"), g, tol.0, tol.1, |be| {
            let (qb, kb, vb) = (be.upload(&q), be.upload(&k), be.upload(&v));
            let (p0, kl) = (be.upload_ids(&q_pos0), be.upload_ids(&kv_len));
            let al = be.upload(&slopes);
            let alo = if alibi { Some(&al) } else { None };
            let mut out = be.zeros(q.len());
            let mut lse = be.zeros(sh.batch * sh.tq * hq);
            be.attention_fwd(&mut out, &mut lse, &qb, &kb, &vb, &p0, &kl, alo, &sh);
            let (mut dq, mut dk, mut dv) = (be.upload(&vec![f32::NAN; q.len()]), be.upload(&vec![f32::NAN; k.len()]), be.upload(&vec![f32::NAN; v.len()]));
            be.attention_bwd(&mut dq, &mut dk, &mut dv, &be.upload(&dout), &qb, &kb, &vb, &out, &lse, &p0, &kl, alo, &sh);
            vec![rd(be, &out), rd(be, &lse), rd(be, &dq), rd(be, &dk), rd(be, &dv)]
        });
    }
}

fn rows(g: &CudaBackend) {
    for (n, c) in [(1usize, 7usize), (33, 300), (17, 4099), (64, 768)] {
        let x = rand(n * c, 100, 2.0);
        let w = rand(c, 101, 1.0);
        let b = rand(c, 102, 0.5);
        let dy = rand(n * c, 103, 1.0);
        let dx0 = rand(n * c, 104, 0.3);
        cmp!(format!("rmsnorm {n}x{c}"), g, RED.0, RED.1, |be| {
            let (xb, wb) = (be.upload(&x), be.upload(&w));
            let (mut out, mut rstd) = (be.zeros(n * c), be.zeros(n));
            be.rmsnorm_fwd(&mut out, &mut rstd, &xb, &wb, n, c, 1e-5);
            let (mut dx, mut dw) = (be.upload(&dx0), be.upload(&w));
            be.rmsnorm_bwd(&mut dx, &mut dw, &be.upload(&dy), &xb, &wb, &rstd, n, c);
            vec![rd(be, &out), rd(be, &rstd), rd(be, &dx), rd(be, &dw)]
        });
        cmp!(format!("layernorm {n}x{c}"), g, RED.0, RED.1, |be| {
            let (xb, wb, bb) = (be.upload(&x), be.upload(&w), be.upload(&b));
            let (mut out, mut mean, mut rstd) = (be.zeros(n * c), be.zeros(n), be.zeros(n));
            be.layernorm_fwd(&mut out, &mut mean, &mut rstd, &xb, &wb, &bb, n, c, 1e-5);
            let (mut dx, mut dw, mut db) = (be.upload(&dx0), be.upload(&w), be.upload(&b));
            be.layernorm_bwd(&mut dx, &mut dw, &mut db, &be.upload(&dy), &xb, &wb, &mean, &rstd, n, c);
            vec![rd(be, &out), rd(be, &mean), rd(be, &rstd), rd(be, &dx), rd(be, &dw), rd(be, &db)]
        });
        cmp!(format!("swiglu/gelu {n}x{c}"), g, ELEM.0, ELEM.1, |be| {
            let len = n * c;
            let (xb, yb, db) = (be.upload(&x), be.upload(&dy), be.upload(&dx0));
            let mut o = be.zeros(len);
            be.swiglu_fwd(&mut o, &xb, &yb, len);
            let (mut dg, mut du) = (be.zeros(len), be.zeros(len));
            be.swiglu_bwd(&mut dg, &mut du, &db, &xb, &yb, len);
            let mut go = be.zeros(len);
            be.gelu_fwd(&mut go, &xb, len);
            let mut gd = be.zeros(len);
            be.gelu_bwd(&mut gd, &db, &xb, len);
            vec![rd(be, &o), rd(be, &dg), rd(be, &du), rd(be, &go), rd(be, &gd)]
        });
        let mut targets = rand_ids(n, 105, c as u32);
        if n > 2 {
            targets[1] = IGNORE_INDEX;
        }
        let coef = rand(n, 106, 1.0);
        cmp!(format!("softmax/xent/logprobs {n}x{c}"), g, RED.0, RED.1, |be| {
            let xb = be.upload(&x);
            let mut sm = be.zeros(n * c);
            be.softmax_fwd(&mut sm, &xb, n, c, 0.7);
            let mut sm1 = be.zeros(n * c);
            be.softmax_fwd(&mut sm1, &xb, n, c, 1.0);
            let mut sdx = be.zeros(n * c);
            be.softmax_bwd(&mut sdx, &be.upload(&dy), &sm1, n, c);
            let tb = be.upload_ids(&targets);
            let cb = be.upload(&coef);
            let (mut lp, mut gr) = (be.zeros(n), be.zeros(n));
            be.token_logprobs(&mut lp, &mut gr, &xb, &tb, n, c);
            let mut dl = be.zeros(n * c);
            be.token_logprobs_bwd(&mut dl, &xb, &tb, &cb, n, c);
            let mut logits = be.upload(&x);
            let mut losses = be.zeros(n);
            be.xent_fwd_bwd(&mut logits, &mut losses, &tb, &cb, n, c);
            vec![rd(be, &sm), rd(be, &sdx), rd(be, &lp), rd(be, &gr), rd(be, &dl), rd(be, &logits), rd(be, &losses)]
        });
    }
    for (n, h, d) in [(5usize, 3usize, 64usize), (33, 4, 128), (7, 2, 80)] {
        let x = rand(n * h * d, 110, 1.0);
        let pos: Vec<u32> = (0..n as u32).map(|i| i * 37 % 4000).collect();
        let inv = okapi::kernels::rope::rope_inv_freq(d, 10000.0, &okapi::kernels::rope::RopeScaling::None);
        cmp!(format!("rope n{n} h{h} d{d}"), g, 1e-5, 1e-4, |be| {
            let (pb, ib) = (be.upload_ids(&pos), be.upload(&inv));
            let mut a = be.upload(&x);
            be.rope_fwd(&mut a, &pb, &ib, n, h, d);
            let fwd = rd(be, &a);
            be.rope_bwd(&mut a, &pb, &ib, n, h, d);
            vec![fwd, rd(be, &a)]
        });
    }
    for len in [1usize, 1000, 100_003] {
        let p = rand(len, 120, 1.0);
        let gr = rand(len, 121, 0.1);
        let m = rand(len, 122, 0.01);
        let v: Vec<f32> = rand(len, 123, 0.001).iter().map(|x| x.abs()).collect();
        let h = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 7, grad_scale: 0.5 };
        cmp!(format!("adamw len {len}"), g, ELEM.0, ELEM.1, |be| {
            let (mut pb, mut mb, mut vb) = (be.upload(&p), be.upload(&m), be.upload(&v));
            be.adamw(&mut pb, &be.upload(&gr), &mut mb, &mut vb, &h, len);
            vec![rd(be, &pb), rd(be, &mb), rd(be, &vb)]
        });
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn f32_memory_reductions_embedding_kv() {
    let Some(g) = gpu(Precision::F32) else { return };
    memory_ops(&g);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn f32_matmul() {
    let Some(g) = gpu(Precision::F32) else { return };
    matmuls(&g, MM);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn f32_attention() {
    let Some(g) = gpu(Precision::F32) else { return };
    attention(&g, ATT);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn f32_row_ops_rope_adamw() {
    let Some(g) = gpu(Precision::F32) else { return };
    rows(&g);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn bf16_matmul() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    matmuls(&g, BF16);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn bf16_attention() {
    let Some(g) = gpu(Precision::Bf16) else { return };
    attention(&g, BF16);
}

/// Deterministic parameter gradients: the same inputs give the same bits twice.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn deterministic_parameter_gradients() {
    let Some(g) = gpu(Precision::F32) else { return };
    let (n, c, v) = (4096usize, 768usize, 100usize);
    let ids = rand_ids(n, 7, v as u32);
    let dy = rand(n * c, 8, 1.0);
    let x = rand(n * c, 9, 1.0);
    let run = || {
        let mut dt = g.zeros(v * c);
        g.embedding_bwd(&mut dt, &g.upload(&dy), &g.upload_ids(&ids), n, c);
        let mut db = g.zeros(c);
        g.bias_bwd(&mut db, &g.upload(&dy), n, c);
        let (mut out, mut rstd) = (g.zeros(n * c), g.zeros(n));
        let (xb, wb) = (g.upload(&x), g.upload(&vec![1.0; c]));
        g.rmsnorm_fwd(&mut out, &mut rstd, &xb, &wb, n, c, 1e-5);
        let (mut dx, mut dw) = (g.zeros(n * c), g.zeros(c));
        g.rmsnorm_bwd(&mut dx, &mut dw, &g.upload(&dy), &xb, &wb, &rstd, n, c);
        (rd(&g, &dt), rd(&g, &db), rd(&g, &dw))
    };
    assert!(run() == run(), "parameter gradients differ between two identical runs");
}

// ---- whole model ------------------------------------------------------------------------

fn model_parity(name: &str, precision: Precision, tol: (f32, f32), loss_rel: f64) {
    let Some(g) = gpu(precision) else { return };
    let cpu = common::model_run(CpuBackend, name, 2, 24);
    let gpu = common::model_run(g, name, 2, 24);
    check(&format!("{name} {precision} logits"), &gpu.logits, &cpu.logits, tol.0, tol.1);
    let rel = (gpu.loss - cpu.loss).abs() / cpu.loss.abs();
    eprintln!("{name} {precision}: loss cuda {:.7} cpu {:.7} (relative {rel:.1e})", gpu.loss, cpu.loss);
    assert!(rel <= loss_rel, "{name} {precision}: loss relative error {rel:.2e} > {loss_rel:e}");
    for ((n, a), (_, b)) in gpu.grads.iter().zip(&cpu.grads) {
        check(&format!("{name} {precision} grad {n}"), a, b, tol.0 * 10.0, tol.1 * 10.0);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn model_llama_gqa_f32_logits_loss_and_gradients() {
    model_parity("llama_gqa", Precision::F32, (1e-5, 1e-4), 1e-5);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn model_bloom_6h_f32_logits_loss_and_gradients() {
    model_parity("bloom_6h", Precision::F32, (1e-5, 1e-4), 1e-5);
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn model_llama_gqa_bf16_logits_loss_and_gradients() {
    model_parity("llama_gqa", Precision::Bf16, (2e-2, 5e-2), 2e-2);
}

// ---- SFT run ----------------------------------------------------------------------------

/// The CLI binary: `OKAPI_TRAIN_BIN` when set (the device machine runs carried binaries from
/// another path), else the one cargo built beside this test.
fn bin() -> String {
    std::env::var("OKAPI_TRAIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_okapi-train").to_string())
}

fn sft_losses(backend: &str, precision: &str, out: &std::path::Path, data: &std::path::Path) -> Vec<f64> {
    let o = std::process::Command::new(bin())
        .args(["sft", "--model"])
        .arg(fixture("llama_gqa"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--batch-size", "2", "--lr", "1e-3", "--lr-schedule", "cosine", "--warmup-steps", "1", "--log-every", "1", "--epochs", "3", "--no-shuffle"])
        .args(["--backend", backend, "--precision", precision])
        .output()
        .unwrap();
    assert!(o.status.success(), "sft --backend {backend}: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64())
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn sft_losses_follow_the_cpu_run() {
    let Some(_g) = gpu(Precision::F32) else { return };
    let dir = common::Scratch::new("cuda-sft");
    let data = dir.root.join("data.jsonl");
    std::fs::write(
        &data,
        [
            r#"{"instruction": "Chào bằng tiếng Việt.", "input": "", "output": "Xin chào bạn!"}"#,
            r#"{"instruction": "Translate to Russian", "input": "good morning", "output": "Доброе утро"}"#,
            r#"{"instruction": "Name a colour.", "input": "", "output": "Blue."}"#,
            r#"{"instruction": "Summarize", "input": "The cat sat on the mat all day long.", "output": "A cat rested on a mat."}"#,
            r#"{"instruction": "اكتب كلمة عربية.", "input": "", "output": "مرحبا"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let cpu = sft_losses("cpu", "f32", &dir.root.join("cpu"), &data);
    for (precision, tol) in [("f32", 1e-4), ("bf16", 3e-2)] {
        let cuda = sft_losses("cuda", precision, &dir.root.join(format!("cuda-{precision}")), &data);
        assert_eq!(cuda.len(), cpu.len(), "number of logged steps");
        for (i, (a, b)) in cuda.iter().zip(&cpu).enumerate() {
            let rel = (a - b).abs() / b.abs();
            eprintln!("sft {precision} step {i}: cuda {a:.6} cpu {b:.6} (relative {rel:.1e})");
            assert!(rel <= tol, "sft {precision} step {i}: cuda loss {a} vs cpu {b}: relative {rel:.2e} > {tol:e}");
        }
    }
}
