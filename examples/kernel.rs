//! okapi as a library, one level down: one op — the fused cross-entropy and its gradient — on a
//! chosen backend, checked against the CPU backend.
//!
//!   cargo run --example kernel              # cpu
//!   cargo run --example kernel -- wgpu      # any Vulkan / Metal / DX12 adapter (WGPU_BACKEND picks)
//!   cargo run --example kernel -- cuda      # an NVIDIA GPU (NVRTC from the CUDA toolkit or PyPI)
//!
//! Exits non-zero when the backend cannot start or disagrees with the CPU.

#[path = "common/mod.rs"]
mod common;

use okapi::runtime::{Backend, CpuBackend, CudaBackend, CudaOptions, Precision, Rows, WgpuBackend, WgpuOptions, IGNORE_INDEX};
use std::error::Error;
use std::process::ExitCode;

/// Losses and logit gradients of `n` rows of `v` logits: (losses, dlogits).
fn xent<B: Backend>(be: &B, logits: &[f32], targets: &[u32], r: Rows) -> (Vec<f32>, Vec<f32>) {
    let mut l = be.upload(logits);
    let mut losses = be.zeros(r.n);
    let coef = be.upload(&vec![1.0 / r.n as f32; r.n]);
    be.xent_fwd_bwd(&mut l, &mut losses, &be.upload_ids(targets), &coef, r);
    (be.read(&losses, r.n), be.read(&l, r.len()))
}

fn run<B: Backend>(be: B) -> Result<(), Box<dyn Error>> {
    println!("backend: {}", be.name());
    let r = Rows::new(33, 5003);
    let mut rng = okapi::model::Rng::new(1);
    let logits: Vec<f32> = (0..r.len()).map(|_| 4.0 * rng.normal() as f32).collect();
    let targets: Vec<u32> = (0..r.n).map(|i| if i % 7 == 3 { IGNORE_INDEX } else { (rng.next_u64() % r.c as u64) as u32 }).collect();
    let (want_loss, want_grad) = xent(&CpuBackend, &logits, &targets, r);
    let (got_loss, got_grad) = xent(&be, &logits, &targets, r);
    let err = |g: &[f32], w: &[f32]| g.iter().zip(w).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0f32, f32::max);
    let (el, eg) = (err(&got_loss, &want_loss), err(&got_grad, &want_grad));
    println!("xent_fwd_bwd {}×{}: mean loss {:.4}; max relative error vs the CPU: losses {el:.2e}, gradient {eg:.2e}", r.n, r.c, got_loss.iter().sum::<f32>() / r.n as f32);
    if el > 1e-4 || eg > 1e-4 {
        return Err("the backend disagrees with the CPU".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    common::exit(match std::env::args().nth(1).as_deref().unwrap_or("cpu") {
        "cpu" => run(CpuBackend),
        "wgpu" => WgpuBackend::with_options(&WgpuOptions::from_env()).map_err(Box::from).and_then(run),
        "cuda" => CudaBackend::with_options(&CudaOptions::from_env(Precision::F32)).map_err(Box::from).and_then(run),
        other => Err(format!("unknown backend `{other}` (expected cpu, wgpu or cuda)").into()),
    })
}
