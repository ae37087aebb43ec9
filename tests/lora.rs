//! LoRA against PEFT (tests/fixtures/generate_lora.py): a PEFT adapter loaded onto llama_gqa
//! (GQA) and bloom_6h (fused query_key_value) gives PEFT's logits, loss and every lora_A /
//! lora_B gradient; `okapi-train sft --adapter` runs PEFT's three SFT steps (losses, gradient
//! norms, the saved adapter); what okapi saves it loads again; bad adapters and flags are one
//! clear error with nothing written.

mod common;

use common::*;
use okapi::model::Model;
use okapi::runtime::{Backend, CpuBackend};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

fn tensors(path: &Path) -> HashMap<String, Vec<f32>> {
    okapi::model::weights::read_tensors(path).unwrap().into_iter().map(|(k, v)| (k, v.data)).collect()
}

/// Forward, mean next-token loss over every position (HF's `labels=input_ids`) and backward of
/// `model` on the fixture's ids: (logits, loss, LoRA gradients under PEFT's names).
fn run<B: Backend>(model: &Model<B>, ids: &[u32], b: usize, t: usize) -> (Vec<f32>, f64, HashMap<String, Vec<f32>>) {
    let mask = model.trainable_mask(None).unwrap();
    let (mut acts, mut scratch) = (model.new_acts(b, t), model.new_scratch(b, t));
    let mut grads = model.new_grads(|i| mask[i]);
    let mut bufs = okapi::rlhf::LossBufs::new(&model.be, b * t);
    model.forward(&mut acts, ids, b, t).unwrap();
    let logits = model.be.read(&acts.logits, b * t * model.cfg.vocab_size);
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t == t - 1 { okapi::runtime::IGNORE_INDEX } else { ids[i + 1] }).collect();
    let count = targets.iter().filter(|&&x| x != okapi::runtime::IGNORE_INDEX).count();
    let (sum, _) = okapi::rlhf::lm_loss_and_grad(model, &mut acts, &mut bufs, &targets, 1.0 / count as f32);
    model.backward(&mut acts, &mut scratch, &mut grads);
    let host = |i: usize| grads.bufs[i].as_ref().map(|g| model.be.read(g, model.be.buf_len(g))).unwrap_or_default();
    let g = model.lora_tensors(&host).into_iter().map(|(n, _, v)| (n, v)).collect();
    (logits, sum / count as f64, g)
}

fn logits_and_gradients_match_peft(name: &str) {
    logits_and_gradients_match_peft_on(CpuBackend, name);
}

fn logits_and_gradients_match_peft_on<B: Backend>(be: B, name: &str) {
    let dir = fixture(&format!("lora_{name}"));
    let r = tensors(&dir.join("reference.safetensors"));
    let mut model = Model::load(be, &fixture(name)).unwrap();
    model.load_adapter(&dir.join("adapter_init")).unwrap();
    let ids: Vec<u32> = okapi::model::weights::read_tensors(&dir.join("reference.safetensors")).unwrap()["input_ids"].data.iter().map(|&x| x as u32).collect();
    let (logits, loss, grads) = run(&model, &ids, 2, 11);
    assert_close(&format!("{name} + LoRA logits"), &logits, &r["logits"], &LOGITS_F32);
    assert!((loss - r["loss"][0] as f64).abs() <= 1e-5 * loss.abs(), "{name} loss {loss} vs PEFT {}", r["loss"][0]);
    let mut n = 0;
    for (key, g) in &grads {
        if key.contains("lora_") {
            assert_close(&format!("{name} grad {key}"), g, &r[&format!("grad.{key}")], &GRAD_F32);
            n += 1;
        }
    }
    assert_eq!(n, r.keys().filter(|k| k.starts_with("grad.")).count(), "every PEFT gradient compared");
    // the adapter changes the outputs: the base alone differs
    model.lora_disabled = true;
    let (base, _, _) = run(&model, &ids, 2, 11);
    assert!(errors(&base, &r["logits"]).0 > 1e-3, "{name}: the adapter must move the logits for the test to show anything");
}

#[test]
fn llama_lora_logits_and_gradients_match_peft() {
    logits_and_gradients_match_peft("llama_gqa");
}

#[test]
fn bloom_lora_on_the_fused_qkv_matches_peft() {
    logits_and_gradients_match_peft("bloom_6h");
}

/// The same on the GPU backends (wgpu on any adapter, CUDA on a device; each says when it did
/// not run).
#[test]
fn lora_on_wgpu_matches_peft() {
    let Some(be) = wgpu_or_skip("lora_on_wgpu_matches_peft") else { return };
    for name in ["llama_gqa", "bloom_6h", "qwen3_gqa", "mistral_swa", "gemma2_swa"] {
        logits_and_gradients_match_peft_on(be.clone(), name);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --test lora -- --ignored"]
fn lora_on_cuda_matches_peft() {
    let Some(be) = cuda_or_skip(okapi::runtime::Precision::F32, "lora_on_cuda_matches_peft") else { return };
    // Qwen3's per-head norms and Mistral's sliding window too: the whole model on the GPU
    for name in ["llama_gqa", "bloom_6h", "qwen3_gqa", "mistral_swa", "gemma2_swa"] {
        logits_and_gradients_match_peft_on(be.clone(), name);
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("okapi-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The fixture's recorded `okapi-train sft … --adapter adapter_init` from the repository root.
fn sft_steps_match_peft(name: &str) {
    let dir = fixture(&format!("lora_{name}"));
    let traj = json(&dir.join("trajectory.json"));
    let out = tmp(&format!("sft-{name}"));
    let o = run_cli(traj["argv"].as_array().unwrap(), &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = metrics(&out);
    for (got, want) in m.iter().zip(traj["steps"].as_array().unwrap()) {
        for key in ["loss", "grad_norm"] {
            let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((g - w).abs() <= 1e-4 * w.abs(), "{name} step {} {key}: {g} vs PEFT {w}", want["step"]);
        }
    }
    assert_eq!(m.len(), 3);
    assert!(!out.join("model.safetensors").exists(), "a LoRA run saves its adapter, not the base");
    let (got, want) = (tensors(&out.join("adapter_model.safetensors")), tensors(&dir.join("adapter_after/adapter_model.safetensors")));
    assert_eq!(got.len(), want.len());
    for (k, w) in &want {
        for (i, (a, b)) in got[k].iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{name} {k}[{i}] = {a}, PEFT {b}");
        }
    }
    let cfg = json(&out.join("adapter_config.json"));
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["lora_alpha"].as_f64(), cfg["task_type"].as_str()), (Some("LORA"), Some(4), Some(8.0), Some("CAUSAL_LM")));
    // what okapi saved, okapi loads: the same logits as the model that saved it
    let mut a = Model::load(CpuBackend, &fixture(name)).unwrap();
    a.load_adapter(&out).unwrap();
    let mut b = Model::load(CpuBackend, &fixture(name)).unwrap();
    b.load_adapter(&dir.join("adapter_after")).unwrap();
    let ids: Vec<u32> = (0..22).map(|i| (i * 37 % 300) as u32 + 4).collect();
    let (la, _, _) = run(&a, &ids, 2, 11);
    let (lb, _, _) = run(&b, &ids, 2, 11);
    assert_close(&format!("{name}: okapi's saved adapter vs PEFT's"), &la, &lb, &LOGITS_F32);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn llama_lora_sft_steps_match_peft() {
    sft_steps_match_peft("llama_gqa");
}

#[test]
fn bloom_lora_sft_steps_match_peft() {
    sft_steps_match_peft("bloom_6h");
}

fn sft(out: &Path, extra: &[&str]) -> std::process::Output {
    let model = fixture("llama_gqa");
    let data = fixture("sft_data.json");
    Command::new(BIN).args(["sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-steps", "1"]).args(extra).output().unwrap()
}


/// A fresh adapter: A drawn, B zero (so the first forward is the base's), only the adapter
/// trains, the saved adapter names the targets; bad flags and adapters are one error line.
#[test]
fn lora_flags_and_bad_adapters() {
    let out = tmp("fresh");
    let o = sft(&out, &["--lora-r", "2", "--lora-targets", "q_proj,down_proj", "--use-rslora", "--warmup-steps", "0", "--lr", "1e-3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = json(&out.join("adapter_config.json"));
    assert_eq!(cfg["target_modules"], serde_json::json!(["down_proj", "q_proj"]));
    assert_eq!(cfg["use_rslora"], true);
    let t = tensors(&out.join("adapter_model.safetensors"));
    assert_eq!(t.len(), 2 * 2 * 2, "A and B of q_proj and down_proj in both layers");
    assert!(t.iter().filter(|(k, _)| k.contains("lora_B")).all(|(_, v)| v.iter().any(|&x| x != 0.0)), "one step moved every B off zero");
    let bad = tmp("bad");
    one_error_line(&sft(&bad, &["--lora-r", "2", "--lora-targets", "query_key_value"]), &["--lora-targets", "`query_key_value` matches no module", "q_proj"]);
    one_error_line(&sft(&bad, &["--lora-r", "0"]), &["--lora-r 0"]);
    one_error_line(&sft(&bad, &["--lora-alpha", "4"]), &["need --lora-r"]);
    one_error_line(&sft(&bad, &["--adapter", fixture("lora_bloom_6h/adapter_init").to_str().unwrap()]), &["adapter_config.json: target_modules", "transformer.h.", "matches no module of this llama model"]);
    one_error_line(&sft(&bad, &["--adapter", fixture("llama_gqa").to_str().unwrap()]), &["adapter_config.json"]);
    let ia3 = tmp("ia3");
    std::fs::create_dir_all(&ia3).unwrap();
    std::fs::write(ia3.join("adapter_config.json"), r#"{"peft_type": "IA3", "target_modules": ["k_proj"]}"#).unwrap();
    one_error_line(&sft(&bad, &["--adapter", ia3.to_str().unwrap()]), &["IA3 adapter", "LoRA"]);
    one_error_line(&sft(&bad, &["--adapter", fixture("lora_llama_gqa/adapter_init").to_str().unwrap(), "--lora-r", "8"]), &["--adapter", "drop the --lora-* flags"]);
    assert!(!bad.join("adapter_model.safetensors").exists() && !bad.join("metrics.jsonl").exists(), "nothing written");
    for d in [out, bad, ia3] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `okapi-train merge` folds the adapter into the weights: the merged model computes what the
/// base with its adapter computed (LLaMA and BLOOM's fused qkv); merging onto the base's own
/// directory is refused.
#[test]
fn merge_gives_the_logits_of_base_plus_adapter() {
    for name in ["llama_gqa", "bloom_6h"] {
        let adapter = fixture(&format!("lora_{name}/adapter_after"));
        let out = tmp(&format!("merged-{name}"));
        let o = Command::new(BIN).args(["merge", "--model", fixture(name).to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "--out", out.to_str().unwrap(), "--save-dtype", "f32"]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut with = Model::load(CpuBackend, &fixture(name)).unwrap();
        with.load_adapter(&adapter).unwrap();
        let merged = Model::load(CpuBackend, &out).unwrap();
        assert!(merged.adapters.is_none() && out.join("tokenizer.json").exists());
        let ids: Vec<u32> = (0..22).map(|i| (i * 53 % 390) as u32 + 4).collect();
        let (a, _, _) = run(&with, &ids, 2, 11);
        let (b, _, _) = run(&merged, &ids, 2, 11);
        assert_close(&format!("{name}: merged vs base + adapter"), &b, &a, &LOGITS_F32);
        let _ = std::fs::remove_dir_all(&out);
    }
    let o = Command::new(BIN).args(["merge", "--model", fixture("llama_gqa").to_str().unwrap(), "--adapter", fixture("lora_llama_gqa/adapter_after").to_str().unwrap(), "--out", fixture("llama_gqa").to_str().unwrap()]).output().unwrap();
    one_error_line(&o, &["--out", "is the --model directory"]);
}

/// An adapter whose tensors do not have the shapes its config and the base imply.
#[test]
fn an_adapter_with_other_shapes_is_refused() {
    let dir = tmp("shapes");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("lora_llama_gqa/adapter_init");
    std::fs::copy(src.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let mut cfg = json(&src.join("adapter_config.json"));
    cfg["r"] = serde_json::json!(2);
    std::fs::write(dir.join("adapter_config.json"), cfg.to_string()).unwrap();
    let mut model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    let e = model.load_adapter(&dir).unwrap_err().to_string();
    assert!(e.contains("adapter_model.safetensors") && e.contains("shape [4, 64], but this base model needs [2, 64]"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reward model and DPO with LoRA: the score head trains beside the adapters (PEFT's
/// `modules_to_save`) and merges into a reward model; DPO's reference is the base with the
/// adapters off, so a fresh adapter (B = 0) starts at loss ln 2 and a trained one does not.
#[test]
fn reward_and_dpo_train_adapters() {
    let model = fixture("llama_gqa");
    let data = fixture("ranking_data.json");
    let (m, d) = (model.to_str().unwrap(), data.to_str().unwrap());
    let rm = tmp("rm");
    let o = Command::new(BIN).args(["reward", "--model", m, "--data", d, "--out", rm.to_str().unwrap(), "--max-steps", "1", "--lora-r", "2", "--warmup-steps", "0", "--lr", "1e-3"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = json(&rm.join("adapter_config.json"));
    assert_eq!((cfg["task_type"].as_str(), cfg["modules_to_save"].clone()), (Some("SEQ_CLS"), serde_json::json!(["score"])));
    assert!(tensors(&rm.join("adapter_model.safetensors")).contains_key("base_model.model.score.weight"));
    let merged = tmp("rm-merged");
    let o = Command::new(BIN).args(["merge", "--model", m, "--adapter", rm.to_str().unwrap(), "--out", merged.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(Model::load(CpuBackend, &merged).unwrap().score.is_some(), "the merged reward model has its score head");
    let dpo = |out: &Path, extra: &[&str]| {
        let o = Command::new(BIN).args(["dpo", "--model", m, "--data", d, "--out", out.to_str().unwrap(), "--max-steps", "1"]).args(extra).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        metrics(out)[0]["loss"].as_f64().unwrap()
    };
    let (fresh, trained) = (tmp("dpo-fresh"), tmp("dpo-trained"));
    assert!((dpo(&fresh, &["--lora-r", "2"]) - std::f64::consts::LN_2).abs() < 1e-6, "a fresh adapter is the reference: loss ln 2");
    let adapter = fixture("lora_llama_gqa/adapter_after");
    let l = dpo(&trained, &["--adapter", adapter.to_str().unwrap()]);
    assert!((l - std::f64::consts::LN_2).abs() > 1e-4, "a trained adapter differs from its base, the reference: loss {l}");
    for dir in [rm, merged, fresh, trained] {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The memory plan's adapter count is what `add_lora` allocates, and a LoRA run's plan trains
/// only the adapters with the whole base frozen.
#[test]
fn the_plan_counts_the_adapters() {
    use okapi::model::lora::{LoraConfig, Targets};
    for (name, targets) in [("llama_gqa", Targets::AllLinear), ("llama_gqa", Targets::Names(vec!["v_proj".into(), "layers.1.mlp.down_proj".into()])), ("bloom_6h", Targets::AllLinear), ("bloom_6h", Targets::Names(vec!["query_key_value".into()]))] {
        let cfg = LoraConfig { r: 3, alpha: 6.0, dropout: 0.0, targets, rslora: false };
        let mut model = Model::load(CpuBackend, &fixture(name)).unwrap();
        model.add_lora(&cfg, 1).unwrap();
        let allocated: usize = model.lora_params().iter().map(|&i| model.info[i].numel()).sum();
        assert_eq!(cfg.param_count(&model.cfg), allocated as u128, "{name} {:?}", cfg.targets);
    }
    let out = tmp("plan");
    let o = sft(&out, &["--lora-r", "4", "--lora-targets", "all-linear"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e = String::from_utf8_lossy(&o.stderr);
    // llama_gqa, all-linear, r 4: 2 layers × 4·(q 64+64, k 64+32, v 64+32, o 64+64, gate and up 64+112, down 112+64)
    let adapters = 2 * 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 112) * 3);
    let kib = |n: usize| format!("{:.1} KiB", (n * 4) as f64 / 1024.0);
    assert!(e.lines().any(|l| l.contains("trainable weights (f32)") && l.contains(&kib(adapters))), "{e}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--adapter` on the inference commands computes what the merged model computes: loglik, greedy
/// generate, score (a reward model's adapter on its causal base) and eval.
#[test]
fn inference_commands_apply_an_adapter() {
    let base = fixture("llama_gqa");
    let adapter = fixture("lora_llama_gqa/adapter_after");
    let dir = tmp("infer");
    std::fs::create_dir_all(&dir).unwrap();
    let merged = dir.join("merged");
    let cmd = |args: &[&str]| {
        let o = Command::new(BIN).args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let p = |x: &Path| x.to_str().unwrap().to_string();
    cmd(&["merge", "--model", &p(&base), "--adapter", &p(&adapter), "--out", &p(&merged), "--save-dtype", "f32"]);
    let numbers = |text: &str| -> Vec<f64> { text.lines().flat_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().as_object().unwrap().values().filter_map(|v| v.as_f64()).collect::<Vec<_>>()).collect() };
    let data = fixture("llama_gqa/loglik.jsonl");
    let (a, b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
    cmd(&["loglik", "--model", &p(&base), "--adapter", &p(&adapter), "--data", &p(&data), "--output", &p(&a)]);
    cmd(&["loglik", "--model", &p(&merged), "--data", &p(&data), "--output", &p(&b)]);
    let (na, nb) = (numbers(&std::fs::read_to_string(&a).unwrap()), numbers(&std::fs::read_to_string(&b).unwrap()));
    assert!(!na.is_empty() && na.len() == nb.len() && na.iter().zip(&nb).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())), "loglik {na:?} vs merged {nb:?}");
    let gen = |model: &Path, extra: &[&str]| String::from_utf8_lossy(&cmd(&[&["generate", "--model", &p(model), "--instruction", "Xin chào", "--temperature", "0", "--max-new-tokens", "8"][..], extra].concat()).stdout).to_string();
    assert_eq!(gen(&base, &["--adapter", &p(&adapter)]), gen(&merged, &[]), "greedy generation");
    assert_ne!(gen(&base, &["--adapter", &p(&adapter)]), gen(&base, &[]), "the adapter changes the greedy text (else the test shows nothing)");
    // eval: the per-item log-likelihoods of base + adapter are the merged model's
    let items = |model: &Path, extra: &[&str], out: &Path| {
        cmd(&[&["eval", "--model", &p(model), "--task", "arc", "--data", &p(&fixture("eval/arc_vi.json")), "--limit", "3", "--num-fewshot", "0", "--output", &p(out)][..], extra].concat());
        numbers(&std::fs::read_to_string(out).unwrap())
    };
    let (ea, eb) = (items(&base, &["--adapter", &p(&adapter)], &dir.join("ea.jsonl")), items(&merged, &[], &dir.join("eb.jsonl")));
    assert!(!ea.is_empty() && ea.len() == eb.len() && ea.iter().zip(&eb).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())), "eval {ea:?} vs merged {eb:?}");
    // score: a reward model's adapter (with its score head) on the causal base
    let rm = dir.join("rm");
    cmd(&["reward", "--model", &p(&base), "--data", &p(&fixture("ranking_data.json")), "--out", &p(&rm), "--max-steps", "1", "--lora-r", "2", "--warmup-steps", "0", "--lr", "1e-2"]);
    let rm_merged = dir.join("rm-merged");
    cmd(&["merge", "--model", &p(&base), "--adapter", &p(&rm), "--out", &p(&rm_merged), "--save-dtype", "f32"]);
    let rewards = |extra: &[&str]| -> Vec<f64> {
        String::from_utf8_lossy(&cmd(&[&["score", "--data", &p(&fixture("ranking_data.json"))][..], extra].concat()).stdout).lines().flat_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rewards"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>()).collect()
    };
    let (ra, rb) = (rewards(&["--model", &p(&base), "--adapter", &p(&rm)]), rewards(&["--model", &p(&rm_merged)]));
    assert!(!ra.is_empty() && ra.iter().zip(&rb).all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs())), "score {ra:?} vs merged {rb:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The recorded command of a PEFT fixture (`lora_rm`, `lora_dpo`): per-step loss and gradient
/// norm, and the saved adapter (with the score head for the reward model) against PEFT's.
fn command_matches_peft(fixture_dir: &str) {
    let dir = fixture(fixture_dir);
    let traj = json(&dir.join("trajectory.json"));
    let out = tmp(fixture_dir);
    run_cli(traj["argv"].as_array().unwrap(), &out, &[]);
    let m = metrics(&out);
    assert_eq!(m.len(), traj["steps"].as_array().unwrap().len());
    for (got, want) in m.iter().zip(traj["steps"].as_array().unwrap()) {
        for key in ["loss", "grad_norm"] {
            let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1e-2), "{fixture_dir} step {} {key}: {g} vs PEFT {w}", want["step"]);
        }
    }
    let (got, want) = (tensors(&out.join("adapter_model.safetensors")), tensors(&dir.join("adapter_after/adapter_model.safetensors")));
    assert_eq!(got.keys().collect::<std::collections::BTreeSet<_>>(), want.keys().collect());
    for (k, w) in &want {
        for (i, (a, b)) in got[k].iter().zip(w).enumerate() {
            assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{fixture_dir} {k}[{i}] = {a}, PEFT {b}");
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn reward_model_lora_step_matches_peft_with_its_score_head() {
    command_matches_peft("lora_rm");
}

#[test]
fn dpo_lora_steps_match_peft_with_the_adapter_off_reference() {
    command_matches_peft("lora_dpo");
}

/// PPO with a LoRA policy: its reference is its own base with the adapters off — no second copy
/// — and gives the run a separate copy of the base gives (`--reference full`), bit for bit; the
/// first iteration's KL is 0 (a fresh adapter is the base); the output is the adapter beside
/// the value head.
#[test]
fn ppo_with_lora_uses_the_base_as_its_reference() {
    let dir = tmp("ppo");
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"instruction\": \"Say hi\", \"input\": \"\"}\n{\"instruction\": \"Đếm đến ba\", \"input\": \"\"}\n").unwrap();
    let (policy, rm) = (fixture("llama_gqa"), fixture("rm_llama_gqa/model"));
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let args = ["ppo", "--policy", policy.to_str().unwrap(), "--reward", rm.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap()];
        // llama_gqa has 64 positions: prompts left-truncated to 40 tokens
        let more = ["--iterations", "3", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5", "--lr", "1e-2", "--lora-r", "2", "--lora-targets", "all-linear", "--save-dtype", "f32", "--prompt-encoding", "trlx", "--max-prompt-len", "40"];
        let o = Command::new(BIN).args(args).args(more).args(extra).output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        (out, String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (own, log) = run("own-base", &[]);
    assert!(log.contains("frozen weights") && !log.contains("reference model"), "the plan holds no weights for the reference: {log}");
    let (copy, _) = run("copy", &["--reference", "full"]);
    let untimed = |d: &Path| -> Vec<serde_json::Value> {
        metrics(d)
            .into_iter()
            .map(|mut v| {
                for k in ["time_generate_s", "time_score_s", "time_update_s", "elapsed_s", "rollout_tokens_per_s"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v
            })
            .collect()
    };
    let m = untimed(&own);
    assert_eq!(m, untimed(&copy), "the base with its adapters off is the reference a copy of the base is");
    assert_eq!(m[0]["kl"].as_f64(), Some(0.0), "a fresh adapter is its base");
    assert!(m.iter().any(|l| l["kl"].as_f64().unwrap() != 0.0), "the policy moves away from its base");
    for f in ["adapter_model.safetensors", "adapter_config.json", "value_head.safetensors"] {
        assert!(std::fs::read(own.join(f)).unwrap() == std::fs::read(copy.join(f)).unwrap(), "{f}");
    }
    assert!(!own.join("model.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A LoRA run's checkpoint holds its adapter (not the base): SFT and PPO killed while writing
/// their second checkpoint and resumed end bit-identical to uninterrupted runs.
#[test]
fn lora_runs_resume_bit_identically() {
    let dir = tmp("resume");
    std::fs::create_dir_all(&dir).unwrap();
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"instruction\": \"Say hi\", \"input\": \"\"}\n{\"instruction\": \"Đếm đến ba\", \"input\": \"\"}\n").unwrap();
    let (model, data, rm) = (fixture("llama_gqa"), fixture("sft_data.json"), fixture("rm_llama_gqa/model"));
    let lora = ["--lora-r", "2", "--lora-targets", "all-linear", "--lr", "1e-2", "--save-dtype", "f32"];
    let commands: [(&str, Vec<&str>, &[&str]); 2] = [
        ("sft", vec!["sft", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--max-steps", "4", "--batch-size", "2", "--warmup-steps", "0"], &["adapter_model.safetensors"]),
        ("ppo", vec!["ppo", "--policy", model.to_str().unwrap(), "--reward", rm.to_str().unwrap(), "--prompts", prompts.to_str().unwrap(), "--iterations", "4", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "4", "--prompt-encoding", "trlx", "--max-prompt-len", "40"], &["adapter_model.safetensors", "value_head.safetensors"]),
    ];
    for (name, args, files) in commands {
        let run = |out: &Path, extra: &[&str], env: &[(&str, &str)]| Command::new(BIN).args(&args).args(["--out", out.to_str().unwrap(), "--save-every", "2"]).args(lora).args(extra).envs(env.iter().copied()).output().unwrap();
        let full = dir.join(format!("{name}-full"));
        let o = run(&full, &[], &[]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let part = dir.join(format!("{name}-part"));
        assert!(!run(&part, &[], &[("OKAPI_TEST_CRASH_AT", "2:1")]).status.success(), "{name}: the run must die writing its second checkpoint");
        assert!(part.join("checkpoint/model/adapter_model.safetensors").exists() && !part.join("checkpoint/model/model.safetensors").exists(), "{name}: the checkpoint holds the adapter");
        let o = run(&part, &["--resume", part.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        for f in files {
            assert!(std::fs::read(part.join(f)).unwrap() == std::fs::read(full.join(f)).unwrap(), "{name}: {f} differs from the uninterrupted run");
        }
        // a resume with other adapters is refused
        let o = run(&dir.join(format!("{name}-x")), &["--resume", part.to_str().unwrap(), "--lora-alpha", "3"], &[]);
        assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("other modules than this run's adapters"), "{name}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// LoRA dropout: off outside training (the outputs of the same adapter without dropout); in
/// training one mask per module and step, the same in the forward and the backward — the
/// analytic gradient of A and B matches central differences of the loss under that mask.
#[test]
fn lora_dropout_masks_the_adapter_input_in_training_only() {
    use okapi::model::lora::{read_adapter_config, LoraConfig};
    let dir = fixture("lora_llama_gqa/adapter_init");
    let cfg = LoraConfig { dropout: 0.3, ..read_adapter_config(&dir).unwrap() };
    let mut model = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    model.add_lora(&cfg, 0).unwrap();
    model.load_adapter_values(&dir).unwrap();
    let mut plain = Model::load(CpuBackend, &fixture("llama_gqa")).unwrap();
    plain.load_adapter(&dir).unwrap();
    let ids: Vec<u32> = (0..22).map(|i| (i * 71 % 390) as u32 + 4).collect();
    let (eval, _, _) = run(&model, &ids, 2, 11);
    assert_eq!(eval, run(&plain, &ids, 2, 11).0, "no dropout outside training");
    (model.training, model.dropout_step) = (true, 5);
    let (train5, loss, grads) = run(&model, &ids, 2, 11);
    assert!(errors(&train5, &eval).0 > 1e-3, "dropout changes the training forward");
    assert_eq!(train5, run(&model, &ids, 2, 11).0, "the same step draws the same masks");
    model.dropout_step = 6;
    assert_ne!(train5, run(&model, &ids, 2, 11).0, "another step draws other masks");
    model.dropout_step = 5;
    // central differences on a few elements of A and B, under step 5's masks
    let loss_at = |m: &Model<CpuBackend>| run(m, &ids, 2, 11).1;
    let params = model.lora_params();
    let mut checked = 0;
    for &i in params.iter().take(6) {
        // LLaMA: an adapter parameter's PEFT key is its name under base_model.model.
        let name = model.info[i].name.clone();
        let g = grads[&format!("base_model.model.{name}")].clone();
        let v0 = model.host_value(i);
        for &e in &[0usize, v0.len() / 2, v0.len() - 1] {
            let eps = 1e-2f32;
            let mut v = v0.clone();
            v[e] = v0[e] + eps;
            model.set_host_value(i, &v);
            let up = loss_at(&model);
            v[e] = v0[e] - eps;
            model.set_host_value(i, &v);
            let down = loss_at(&model);
            model.set_host_value(i, &v0);
            let numeric = (up - down) / (2.0 * eps as f64);
            assert!((numeric - g[e] as f64).abs() <= 2e-3 + 2e-2 * numeric.abs(), "{name}[{e}]: analytic {} vs numeric {numeric}", g[e]);
            checked += 1;
        }
    }
    assert!(checked >= 6 && loss.is_finite(), "checked {checked} elements");
}

#[test]
fn bloom_dpo_lora_steps_match_peft() {
    command_matches_peft("lora_dpo_bloom_6h");
}

/// LoRA on the newer architectures: all-linear adapters around Qwen3's per-head q/k norms, under
/// Mistral's sliding window and in Gemma 2's soft-capped sandwich — logits, every adapter
/// gradient, three SFT steps and two DPO steps as PEFT computes them.
#[test]
fn qwen3_mistral_gemma2_lora_match_peft() {
    for name in ["qwen3_gqa", "mistral_swa", "gemma2_swa"] {
        logits_and_gradients_match_peft(name);
        sft_steps_match_peft(name);
        command_matches_peft(&format!("lora_dpo_{name}"));
    }
}
