//! The CUDA backend on whole models and training runs (each op on its own is in
//! tests/conformance.rs, stamped `cuda` and `cuda_bf16`): the logits, loss and every parameter
//! gradient of the `llama_gqa` and `bloom_6h` fixtures against the CPU backend, in f32 and bf16,
//! and an SFT run whose losses follow the CPU run's.
//!
//! Every test needs an NVIDIA GPU and is `#[ignore]`d; run them on a GPU machine with
//!   cargo test --test cuda_conformance -- --ignored        (or the carried binary, --ignored)
//! Without a driver / device / NVRTC each test prints why and passes, unless
//! `OKAPI_REQUIRE_CUDA=1` (scripts/device_check.sh sets it) makes it fail.

mod common;

use common::fixture;
use okapi::runtime::{CpuBackend, Precision};

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
