//! Optimizer offload (`--offload-optimizer`): fp32 master weights and AdamW moments in host
//! memory, the AdamW step on the CPU. On the CPU backend it runs the same fused kernel on the
//! same values, so every step, every checkpoint and the saved model are bit-identical to the
//! run without it — and so is a run resumed from an offloaded checkpoint.

mod common;

use common::{fixture, short_sft, Scratch};
use okapi::model::{Model, Rng};
use okapi::rlhf::{AdamWConfig, Optimizer};
use okapi::runtime::{Backend, CpuBackend};

fn sft(dir: &Scratch, out: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let args = [&["--max-steps", "4", "--batch-size", "2", "--max-len", "40", "--lr", "1e-3", "--weight-decay", "0.1", "--no-shuffle", "--save-every", "2", "--save-dtype", "f32"][..], extra].concat();
    short_sft(&dir.root, "bloom_6h", &dir.root.join(out), &args, env)
}

#[test]
fn offloaded_sft_is_bit_identical_and_resumes_exactly() {
    let dir = Scratch::new("offload");
    for (out, extra) in [("plain", &[][..]), ("offload", &["--offload-optimizer"][..])] {
        let o = sft(&dir, out, extra, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let read = |p: &str| std::fs::read(dir.root.join(p)).unwrap();
    assert!(read("plain/model.safetensors") == read("offload/model.safetensors"), "saved models differ");
    assert!(read("plain/checkpoint/optimizer.safetensors") == read("offload/checkpoint/optimizer.safetensors"), "checkpointed moments differ");
    let losses = |p: &str| -> Vec<serde_json::Value> { String::from_utf8(read(p)).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].clone()).collect() };
    assert_eq!(losses("plain/metrics.jsonl"), losses("offload/metrics.jsonl"));
    // offloaded, stopped after step 3, resumed from the step-2 checkpoint
    let o = sft(&dir, "part", &["--offload-optimizer"], &[("OKAPI_TEST_EXIT_AFTER_STEP", "3")]);
    assert!(!o.status.success());
    let part = dir.root.join("part");
    let o = sft(&dir, "part", &["--offload-optimizer", "--resume", part.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(read("plain/model.safetensors") == read("part/model.safetensors"), "the resumed offloaded run differs");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("AdamW moments (offloaded)") && stderr.contains("master weights (offloaded)"), "{stderr}");
}

// ---- the offloaded step's pipeline, in process -----------------------------------------------

/// Three AdamW steps of the `llama_gqa` fixture on `be` with made-up gradients of real spread
/// (the second step clipped by ½): every parameter after each step. `piece`: the state
/// offloaded, its pipeline cutting tensors into pieces of that many elements; `None`: the
/// state on the device.
fn adamw_steps<B: Backend>(be: B, piece: Option<usize>) -> Vec<Vec<Vec<f32>>> {
    let mut model = Model::load(be, &fixture("llama_gqa")).unwrap();
    model.offload_optimizer = piece.is_some();
    let grads = model.new_grads(|_| true);
    let mut opt = Optimizer::new(&model, &grads, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    if let (Some(p), Some(off)) = (piece, opt.offload.as_mut()) {
        off.piece = p;
    }
    let mut grads = grads;
    let mut rng = Rng::new(11);
    (0..3)
        .map(|step| {
            for (i, g) in grads.bufs.iter_mut().enumerate() {
                let values: Vec<f32> = (0..model.info[i].numel()).map(|_| (rng.normal() * 0.05) as f32).collect();
                if let Some(g) = g {
                    model.be.write(g, &values);
                }
            }
            opt.step(&mut model, &grads, 1e-2, if step == 1 { 0.5 } else { 1.0 });
            (0..model.info.len()).map(|i| model.be.read(&model.values[i], model.info[i].numel())).collect()
        })
        .collect()
}

fn assert_bit_identical(what: &str, got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f32>>]) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let differ = a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert!(a.len() == b.len() && differ == 0, "{what}: step {}, parameter {i}: {differ} of {} elements differ", step + 1, b.len());
        }
    }
}

#[test]
fn the_pipeline_in_pieces_steps_exactly_as_the_device_state() {
    let on_device = adamw_steps(CpuBackend, None);
    // 7: tensors cut into many pieces, most of them ending inside a tensor's last piece
    for piece in [7, 1000, okapi::rlhf::optim::OFFLOAD_PIECE] {
        assert_bit_identical(&format!("cpu, pieces of {piece}"), &adamw_steps(CpuBackend, Some(piece)), &on_device);
    }
    // every parameter moved in the first step (the comparison above is not between two copies
    // of the loaded weights)
    let loaded = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    for (i, after) in on_device[0].iter().enumerate() {
        assert!(loaded.be.read(&loaded.values[i], after.len()) != *after, "parameter {i} did not move");
    }
}

/// On wgpu the stages are plain vectors and the copies at an offset go through `copy_range`;
/// the AdamW step runs on the CPU either way, so the result is the CPU's bit for bit.
#[test]
fn the_pipeline_on_wgpu_steps_exactly_as_on_the_cpu() {
    let Some(be) = common::wgpu_or_skip("the offloaded step on wgpu") else { return };
    assert_bit_identical("wgpu, pieces of 7", &adamw_steps(be, Some(7)), &adamw_steps(CpuBackend, Some(7)));
}

/// On CUDA the stages are page-locked and the copies are queued on the stream while the CPU
/// steps the previous piece; the AdamW step is the CPU's, so the result must be the CPU's bit
/// for bit. Needs a GPU (`scripts/device_check.sh` runs it with --ignored).
#[test]
#[ignore]
fn the_pipeline_on_cuda_steps_exactly_as_on_the_cpu() {
    let Some(be) = common::cuda_or_skip(okapi::runtime::Precision::F32, "the offloaded step on CUDA") else { return };
    assert!(be.host_stage(4).is_pinned(), "a CUDA stage is not page-locked");
    let want = adamw_steps(CpuBackend, Some(7));
    assert_bit_identical("cuda, pieces of 7", &adamw_steps(be.clone(), Some(7)), &want);
    assert_bit_identical("cuda, pieces of 1000", &adamw_steps(be, Some(1000)), &want);
}
