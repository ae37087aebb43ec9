//! The CUDA backend on whole models and training runs (each op on its own is in
//! tests/conformance.rs, stamped `cuda` and `cuda_bf16`): the logits, loss and every parameter
//! gradient of the `llama_gqa` and `bloom_6h` fixtures against the CPU backend, in f32 and bf16,
//! an SFT run whose losses follow the CPU run's, grids past the 65 535 limit of grid.y / grid.z,
//! and the device-side id checks (a bad token id fails at the next synchronisation, naming the
//! kernel).
//!
//! Every test needs an NVIDIA GPU and is `#[ignore]`d; run them on a GPU machine with
//!   cargo test --test cuda_conformance -- --ignored        (or the carried binary, --ignored)
//! Without a driver / device / NVRTC each test prints why and passes, unless
//! `OKAPI_REQUIRE_CUDA=1` (scripts/device_check.sh sets it) makes it fail.

mod common;

use common::fixture;
use okapi::runtime::{AttnInputs, AttnShape, Backend, CpuBackend, Gemm, Precision, Rows};

fn gpu(precision: Precision) -> Option<okapi::runtime::CudaBackend> {
    common::cuda_or_skip(precision, "this CUDA test")
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

// ---- launch limits and device-side checks -------------------------------------------------

fn seeded(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = okapi::model::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// The ops whose grids put rows, tiles, heads or batches in y / z, at sizes past 65 535 there:
/// (name, output) per op, on any backend.
fn past_grid_limits<B: Backend>(be: &B) -> Vec<(&'static str, Vec<f32>)> {
    let mut out = Vec::new();
    // matmul: 70 000 batches of (3×2)·(2×3), and M = 4 194 400 rows (65 538 tiles of 64)
    for (name, m, batch) in [("matmul 70000 batches", 3, 70_000), ("matmul M 4194400", 4_194_400, 1)] {
        let (n, k) = (3, 2);
        let (a, b) = (be.upload(&seeded(batch * m * k, 1)), be.upload(&seeded(batch * k * n, 2)));
        let mut c = be.zeros(batch * m * n);
        let g = Gemm { m, n, k, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, batch, stride_a: m * k, stride_b: k * n, stride_c: m * n };
        be.matmul(&mut c, &a, &b, &g);
        out.push((name, be.read(&c, batch * m * n)));
    }
    // column sums over 65 537 chunks of 64 rows (bias gradient)
    let (rows, cols) = (64 * 65_537 + 3, 2);
    let dy = be.upload(&seeded(rows * cols, 3));
    let mut db = be.upload(&[0.5, -0.25]);
    be.bias_bwd(&mut db, &dy, Rows::new(rows, cols));
    out.push(("bias_bwd 4194371 rows", be.read(&db, cols)));
    // attention over 65 537 one-token sequences, 2 heads of 8
    let sh = AttnShape { batch: 65_537, tq: 1, tk: 1, n_heads: 2, n_kv_heads: 1, head_dim: 8, scale: 0.35, causal: true, window: 0, softcap: 0.0 };
    let (nq, nk) = (sh.batch * 2 * 8, sh.batch * 8);
    let (q, k, v) = (be.upload(&seeded(nq, 4)), be.upload(&seeded(nk, 5)), be.upload(&seeded(nk, 6)));
    let (p0, len) = (be.upload_ids(&vec![0; sh.batch]), be.upload_ids(&vec![1; sh.batch]));
    let (mut o, mut lse) = (be.zeros(nq), be.zeros(sh.batch * 2));
    be.attention_fwd(&mut o, &mut lse, &AttnInputs { q: &q, k: &k, v: &v, q_pos0: &p0, kv_len: &len, alibi: None }, &sh);
    out.push(("attention 65537 sequences", be.read(&o, nq)));
    out
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn grids_past_the_y_z_limit_launch_and_match_the_cpu() {
    let Some(g) = gpu(Precision::F32) else { return };
    for ((name, got), (_, want)) in past_grid_limits(&g).into_iter().zip(past_grid_limits(&CpuBackend)) {
        check(name, &got, &want, 1e-5, 1e-5);
    }
}

/// After an op launched with a bad id, the read that follows must panic with one message naming
/// the kernel, the id, its row and the bound; the report is cleared and the backend stays usable.
fn expect_device_error(g: &okapi::runtime::CudaBackend, read: impl FnOnce(), want: &str) {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).expect_err("a bad id must fail at the next synchronisation");
    let msg = err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
    eprintln!("device error: {msg}");
    assert_eq!(msg, want);
    g.synchronize(); // cleared: no second report
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test cuda_conformance -- --ignored"]
fn bad_token_ids_fail_at_the_next_synchronisation_naming_the_kernel() {
    let Some(g) = gpu(Precision::F32) else { return };
    let (v, c) = (50, 4);
    let table = g.upload(&seeded(v * c, 7));
    let ids = g.upload_ids(&[3, 49, 57, 1]);
    let mut out = g.zeros(4 * c);
    g.embedding_fwd(&mut out, &table, &ids, Rows::new(4, c));
    expect_device_error(&g, || drop(g.read(&out, 4 * c)), "cuda: kernel `embedding_fwd`: token id 57 at row 2 is outside the embedding table's rows (50 entries)");
    let targets = g.upload_ids(&[7, okapi::runtime::IGNORE_INDEX, 50]);
    let logits = g.upload(&seeded(3 * v, 8));
    let coef = g.upload(&[1.0, 1.0, 1.0]);
    let (mut lg, mut losses) = (g.upload(&seeded(3 * v, 8)), g.zeros(3));
    g.xent_fwd_bwd(&mut lg, &mut losses, &targets, &coef, Rows::new(3, v));
    expect_device_error(&g, || drop(g.read(&losses, 3)), "cuda: kernel `xent_fwd_bwd`: target id 50 at row 2 is outside the vocabulary (50 entries)");
    let (mut lp, mut greedy) = (g.zeros(3), g.zeros(3));
    g.token_logprobs(&mut lp, &mut greedy, &logits, &targets, Rows::new(3, v));
    expect_device_error(&g, || drop(g.read(&lp, 3)), "cuda: kernel `token_logprobs`: target id 50 at row 2 is outside the vocabulary (50 entries)");
    let mut dl = g.zeros(3 * v);
    g.token_logprobs_bwd(&mut dl, &logits, &targets, &coef, Rows::new(3, v));
    expect_device_error(&g, || drop(g.read(&dl, 3 * v)), "cuda: kernel `token_logprobs_bwd`: target id 50 at row 2 is outside the vocabulary (50 entries)");
    // the good rows were computed as on the CPU, and the backend goes on working
    let cpu = CpuBackend;
    let (ct, cl) = (cpu.upload_ids(&[7, okapi::runtime::IGNORE_INDEX, 0]), cpu.upload(&seeded(3 * v, 8)));
    let (mut clp, mut cg) = (cpu.zeros(3), cpu.zeros(3));
    cpu.token_logprobs(&mut clp, &mut cg, &cl, &ct, Rows::new(3, v));
    let good = g.upload_ids(&[7, okapi::runtime::IGNORE_INDEX, 0]);
    g.token_logprobs(&mut lp, &mut greedy, &logits, &good, Rows::new(3, v));
    check("token_logprobs after a reported error", &g.read(&lp, 3), &cpu.read(&clp, 3), 1e-6, 1e-5);
}
