//! Optimizer offload (`--offload-optimizer`): fp32 master weights and AdamW moments in host
//! memory, the AdamW step on the CPU. On the CPU backend it runs the same fused kernel on the
//! same values, so every step, every checkpoint and the saved model are bit-identical to the
//! run without it — and so is a run resumed from an offloaded checkpoint.

mod common;

use common::{short_sft, Scratch};

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
