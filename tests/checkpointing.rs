//! Activation checkpointing (`--grad-checkpointing`): the backward recomputes each block from its
//! saved input, so on the CPU every gradient, the loss and the logits are the same bits as
//! without it — for LLaMA and BLOOM, every parameter trainable or only the top block — and whole
//! training runs through the CLI save the same model bytes.

mod common;

use common::{fixture, model_run_with, short_sft, Scratch};
use okapi::runtime::CpuBackend;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn gradients_are_bit_identical_with_checkpointing() {
    for name in ["llama_gqa", "bloom_6h"] {
        for unfrozen in [None, Some(1)] {
            let plain = model_run_with(CpuBackend, name, 3, 11, false, unfrozen);
            let ckpt = model_run_with(CpuBackend, name, 3, 11, true, unfrozen);
            assert_eq!(plain.loss.to_bits(), ckpt.loss.to_bits(), "{name} {unfrozen:?}: loss");
            assert_eq!(bits(&plain.logits), bits(&ckpt.logits), "{name} {unfrozen:?}: logits");
            let mut nonzero = 0;
            for ((n, a), (_, b)) in plain.grads.iter().zip(&ckpt.grads) {
                assert_eq!(bits(a), bits(b), "{name} {unfrozen:?}: gradient of {n}");
                nonzero += a.iter().any(|&x| x != 0.0) as usize;
            }
            assert!(nonzero > 2, "{name} {unfrozen:?}: the gradients must not be all zero");
        }
    }
}

#[test]
fn checkpointed_arenas_keep_one_block() {
    let mut model = okapi::model::Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let full = model.new_acts(2, 8);
    model.grad_checkpointing = true;
    let ckpt = model.new_acts(2, 8);
    assert_eq!((full.layers.len(), ckpt.layers.len()), (model.cfg.n_layers, 1));
    assert!(ckpt.floats() < full.floats());
}

fn sft(dir: &Scratch, out: &str, extra: &[&str]) {
    let args = [&["--max-steps", "3", "--batch-size", "2", "--max-len", "40", "--lr", "1e-3", "--no-shuffle"][..], extra].concat();
    let o = short_sft(&dir.root, "bloom_6h", &dir.root.join(out), &args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn an_sft_run_saves_the_same_model_bytes_with_checkpointing() {
    let dir = Scratch::new("ckpt-sft");
    sft(&dir, "plain", &[]);
    sft(&dir, "ckpt", &["--grad-checkpointing", "--unfrozen-layers", "1"]);
    sft(&dir, "plain1", &["--unfrozen-layers", "1"]);
    sft(&dir, "ckpt-all", &["--grad-checkpointing"]);
    let read = |d: &str| std::fs::read(dir.root.join(d).join("model.safetensors")).unwrap();
    assert!(read("plain") == read("ckpt-all"), "every layer trainable: the saved models differ");
    assert!(read("plain1") == read("ckpt"), "top layer trainable: the saved models differ");
    assert!(read("plain") != read("plain1"), "the two settings must train differently (else the test shows nothing)");
    let metrics = |d: &str| std::fs::read_to_string(dir.root.join(d).join("metrics.jsonl")).unwrap();
    let losses = |m: String| m.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].clone()).collect::<Vec<_>>();
    assert_eq!(losses(metrics("plain")), losses(metrics("ckpt-all")));
}
