//! The wgpu backend end to end. Whole models on the device — logits, loss and every parameter
//! gradient of the fixture models (LLaMA, BLOOM, Qwen2, Qwen3, Mistral, Gemma 2) — against the CPU backend; then every command with
//! `--backend wgpu`: the SFT, reward-model and DPO steps against the PyTorch trajectories the
//! CPU is tested against (losses, gradient norms, every parameter after the steps), a longer SFT
//! loss curve and a PPO run against the CPU's, `loglik` against transformers, `generate`,
//! `score` and `eval` against the CPU, and `bench`.
//!
//!   cargo test --test wgpu_model
//!
//! Without an adapter every test prints "wgpu: NO ADAPTER … did NOT run" and passes, unless
//! `OKAPI_REQUIRE_WGPU=1` (CI sets it; Mesa's lavapipe is the adapter there) makes it fail.
//! `demo --backend wgpu` runs the same commands; on lavapipe it takes too long for CI (a measured
//! run is in benches/RESULTS.md, section "wgsl").

mod common;

use common::*;
use okapi::model::Checkpoint;
use okapi::runtime::{CpuBackend, WgpuBackend};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn wgpu(test: &str) -> Option<WgpuBackend> {
    wgpu_or_skip(test)
}

/// wgpu against the CPU on the same model: sums in another order (tiled matmul, parallel row
/// reductions), so a few roundings apart, never more. Logits: `SAME_F32`.
const WGPU_GRAD: Tol = Tol { name: "wgpu-vs-cpu grad", max_abs: 1e-5, rel_norm: 2e-5 };

fn okapi_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_okapi-train")).current_dir(env!("CARGO_MANIFEST_DIR")).args(args).output().unwrap()
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn saved_params(dir: &Path) -> HashMap<String, Vec<f32>> {
    Checkpoint::load(dir).unwrap().tensors.into_iter().map(|(k, v)| (k, v.data)).collect()
}

// ---- whole model ------------------------------------------------------------------------

fn model_parity(name: &str, b: usize, t: usize) {
    let Some(g) = wgpu(name) else { return };
    let cpu = model_run(CpuBackend, name, b, t);
    let gpu = model_run(g, name, b, t);
    assert_close(&format!("{name} logits"), &gpu.logits, &cpu.logits, &SAME_F32);
    let rel = (gpu.loss - cpu.loss).abs() / cpu.loss;
    assert!(rel <= 1e-6, "{name}: loss wgpu {} vs cpu {} (relative {rel:.1e})", gpu.loss, cpu.loss);
    assert_eq!(gpu.grads.len(), cpu.grads.len());
    let mut worst = (0f64, String::new());
    for ((n, a), (_, c)) in gpu.grads.iter().zip(&cpu.grads) {
        let (_, r) = assert_close(&format!("{name} grad {n}"), a, c, &WGPU_GRAD);
        if r > worst.0 {
            worst = (r, n.clone());
        }
    }
    println!("{name}: logits, loss and {} gradients match the CPU; worst gradient relative error {:.1e} ({})", gpu.grads.len(), worst.0, worst.1);
}

#[test]
fn llama_gqa_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("llama_gqa", 3, 45);
}

#[test]
fn bloom_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("bloom_6h", 2, 70);
}

#[test]
fn llama_rope_scaling_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("llama_rope_llama3", 2, 33);
    model_parity("llama_rope_linear", 2, 33);
}

// the architectures of tests/fixtures/generate_arch.py (random ids; t past Mistral's window)

#[test]
fn qwen2_tied_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("qwen2_tied", 3, 29);
}

#[test]
fn qwen2_untied_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("qwen2_untied", 2, 37);
}

#[test]
fn qwen3_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("qwen3_gqa", 2, 41);
}

#[test]
fn mistral_sliding_window_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("mistral_swa", 2, 50);
}

#[test]
fn gemma2_soft_caps_and_sliding_window_logits_loss_and_every_gradient_match_the_cpu() {
    model_parity("gemma2_swa", 2, 43);
}

// ---- training commands against PyTorch ---------------------------------------------------

/// A fixture's recorded command with `--backend wgpu`: each step's loss and gradient norm
/// against PyTorch's, and every parameter after the steps.
fn trajectory_on_wgpu(name: &str) {
    let Some(_) = wgpu(name) else { return };
    let dir = fixture(name);
    let traj = json(&dir.join("trajectory.json"));
    let scratch = Scratch::new(name);
    let out = scratch.root.join("out");
    let o = run_cli(traj["argv"].as_array().unwrap(), &out, &["--backend", "wgpu"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("wgpu adapter: "), "the adapter is printed");
    let got = metrics(&out);
    // the reward-model fixture records its one step at the top level
    let want: Vec<Value> = traj["steps"].as_array().cloned().unwrap_or_else(|| vec![traj.clone()]);
    assert_eq!(got.len(), want.len(), "{name}: number of steps");
    for (g, w) in got.iter().zip(&want) {
        for (k, rel) in [("loss", 1e-4), ("grad_norm", 1e-4), ("lr", 1e-9)] {
            let (a, b) = (g[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!((a - b).abs() <= rel * b.abs().max(1e-3), "{name} step {}: {k} on wgpu {a} vs torch {b}", g["step"]);
        }
    }
    check_params(&format!("{name} on wgpu"), &saved_params(&out), &dir.join("params_after.safetensors"), &traj["param_check"]);
    println!("{name}: {} steps on wgpu match torch", got.len());
}

#[test]
fn sft_llama_steps_on_wgpu_match_pytorch() {
    trajectory_on_wgpu("sft_llama_gqa");
}

#[test]
fn sft_bloom_steps_on_wgpu_match_pytorch() {
    trajectory_on_wgpu("sft_bloom_6h");
}

#[test]
fn reward_model_step_on_wgpu_matches_pytorch() {
    trajectory_on_wgpu("rm_llama_gqa");
}

#[test]
fn dpo_steps_on_wgpu_match_pytorch() {
    trajectory_on_wgpu("dpo_llama_gqa");
}

// ---- training runs against the CPU ---------------------------------------------------------

fn column(m: &[Value], key: &str) -> Vec<f64> {
    m.iter().filter_map(|l| l[key].as_f64()).collect()
}

fn follows(what: &str, gpu: &[f64], cpu: &[f64], rel: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: number of values");
    assert!(!cpu.is_empty(), "{what}: nothing logged");
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        assert!((a - b).abs() <= rel * b.abs().max(1e-2), "{what} #{i}: wgpu {a} vs cpu {b} (relative tolerance {rel:e})");
    }
}

#[test]
fn sft_loss_curve_on_wgpu_follows_the_cpu() {
    let Some(_) = wgpu("sft loss curve") else { return };
    let dir = Scratch::new("wgpu-sft-curve");
    let (model, data) = (fixture("bloom_6h"), fixture("sft_data.json"));
    let run = |backend: &str| {
        let out = dir.root.join(backend);
        let args = ["sft", "--model", p(&model), "--data", p(&data), "--out", p(&out), "--max-steps", "12", "--batch-size", "2"];
        let flags = ["--lr", "3e-3", "--lr-schedule", "cosine", "--warmup-steps", "2", "--log-every", "1", "--save-dtype", "f32", "--seed", "5", "--backend", backend];
        ok(okapi_train(&[&args[..], &flags[..]].concat()), &format!("sft --backend {backend}"));
        (metrics(&out), saved_params(&out))
    };
    let (mc, pc) = run("cpu");
    let (mg, pg) = run("wgpu");
    let losses = column(&mc, "loss");
    assert_eq!(losses.len(), 12);
    assert!(losses[11] < losses[0] - 0.5, "the run learns: {losses:?}");
    follows("sft loss", &column(&mg, "loss"), &losses, 1e-4);
    follows("sft grad_norm", &column(&mg, "grad_norm"), &column(&mc, "grad_norm"), 1e-3);
    // after 12 steps the weights agree to a few lr-sized Adam moves on noise-level gradients
    for (name, c) in &pc {
        let g = &pg[name];
        let (max, at, _) = errors(g, c);
        assert!(max <= 12.0 * 3e-3, "{name}: max difference {max:.2e} at {at} after 12 steps");
    }
    println!("sft on wgpu follows the cpu: losses {:.4} → {:.4}", losses[0], losses[11]);
}

#[test]
fn ppo_on_wgpu_follows_the_cpu() {
    let Some(_) = wgpu("ppo") else { return };
    let dir = Scratch::new("wgpu-ppo");
    // a policy whose positions fit the Okapi prompt, and a reward model on its tokenizer
    let policy = dir.root.join("policy");
    let tokenizer = fixture("llama_gqa").join("tokenizer.json");
    ok(okapi_train(&["init", "--arch", "llama", "--preset", "tiny", "--tokenizer", p(&tokenizer), "--out", p(&policy), "--seed", "3"]), "init");
    let rm = dir.root.join("rm");
    let rankings = fixture("ranking_data.json");
    ok(okapi_train(&["reward", "--model", p(&policy), "--data", p(&rankings), "--out", p(&rm), "--max-steps", "1", "--backend", "wgpu"]), "reward --backend wgpu");
    let prompts = dir.root.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"instruction\": \"Say hi\", \"input\": \"\"}\n{\"instruction\": \"Đếm đến ba\", \"input\": \"\"}\n").unwrap();
    let run = |backend: &str, recipe: &str, extra: &[&str]| {
        let out = dir.root.join(format!("ppo-{backend}-{recipe}"));
        let args = ["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "2", "--rollouts", "4", "--chunk-size", "2"];
        let flags = ["--ppo-batch-size", "2", "--max-new-tokens", "6", "--seed", "9", "--backend", backend, "--recipe", recipe];
        ok(okapi_train(&[&args[..], &flags[..], extra].concat()), &format!("ppo --backend {backend} --recipe {recipe}"));
        (metrics(&out), std::fs::read_to_string(out.join("samples.jsonl")).unwrap())
    };
    // okapi's defaults, and trlx's choices (MLP value head with its ReLU kernels, per-minibatch
    // whitening, per-sequence loss mean, trlx's KL controller, prompts left-truncated)
    for (recipe, extra) in [("default", &[][..]), ("okapi", &["--unfrozen-layers", "1", "--max-prompt-len", "12", "--lr", "1e-4"][..])] {
        let (mc, sc) = run("cpu", recipe, extra);
        let (mg, sg) = run("wgpu", recipe, extra);
        assert_eq!(mg.len(), 2);
        let samples = |s: &str| -> Vec<Value> { s.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).map(|v| v["response"].clone()).collect() };
        assert_eq!(samples(&sg), samples(&sc), "{recipe}: the sampled responses (same seed, logits equal to rounding)");
        for key in ["score_mean", "kl", "entropy", "vf_loss", "response_len", "kl_controller_input", "beta_next"] {
            follows(&format!("ppo {recipe} {key}"), &column(&mg, key), &column(&mc, key), 1e-3);
        }
        for key in ["pg_loss", "approx_kl"] {
            // both near zero; compared in absolute terms
            for (a, b) in column(&mg, key).iter().zip(column(&mc, key)) {
                assert!((a - b).abs() <= 1e-4, "ppo {recipe} {key}: wgpu {a} vs cpu {b}");
            }
        }
        println!("ppo --recipe {recipe} on wgpu follows the cpu over {} iterations", mg.len());
    }
}

// ---- inference commands ------------------------------------------------------------------

#[test]
fn loglik_on_wgpu_matches_transformers() {
    let Some(_) = wgpu("loglik") else { return };
    let dir = Scratch::new("wgpu-loglik");
    for name in ["llama_gqa", "bloom_6h"] {
        let out = dir.root.join(format!("{name}.jsonl"));
        let data = fixture(name).join("loglik.jsonl");
        ok(okapi_train(&["loglik", "--model", p(&fixture(name)), "--data", p(&data), "--output", p(&out), "--backend", "wgpu"]), "loglik");
        let got: Vec<Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let want: Vec<Value> = std::fs::read_to_string(fixture(name).join("loglik_expected.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let (a, b) = (g["loglik"].as_f64().unwrap(), w["loglik"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-3, "{name} request {i}: loglik on wgpu {a} vs transformers {b}");
            assert_eq!(g["is_greedy"], w["is_greedy"], "{name} request {i}: is_greedy");
        }
    }
}

#[test]
fn generate_score_and_eval_on_wgpu_equal_the_cpu() {
    let Some(_) = wgpu("generate/score/eval") else { return };
    let stdout = |args: &[&str], backend: &str| String::from_utf8(ok(okapi_train(&[args, &["--backend", backend]].concat()), args[0]).stdout).unwrap();
    // generate: greedy, and seeded sampling, on both architectures
    let bloom = fixture("bloom_6h");
    for sampling in [&["--temperature", "0"][..], &["--temperature", "0.9", "--top-p", "0.9", "--seed", "4"][..]] {
        let args = [&["generate", "--model", p(&bloom), "--instruction", "Translate to French", "--input", "good morning", "--max-new-tokens", "12"][..], sampling].concat();
        assert_eq!(stdout(&args, "wgpu"), stdout(&args, "cpu"), "generate {sampling:?}");
    }
    // score: rewards of a reward model
    let rm = fixture("rm_llama_gqa").join("model");
    let data = fixture("ranking_data.json");
    let rewards = |s: String| -> Vec<f64> { s.lines().flat_map(|l| serde_json::from_str::<Value>(l).unwrap()["rewards"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>()).collect() };
    let args = ["score", "--model", p(&rm), "--data", p(&data)];
    let (g, c) = (rewards(stdout(&args, "wgpu")), rewards(stdout(&args, "cpu")));
    assert_eq!(g.len(), 8);
    for (a, b) in g.iter().zip(&c) {
        assert!((a - b).abs() <= 1e-4 + 1e-5 * b.abs(), "score: wgpu {a} vs cpu {b}");
    }
    // eval: every item's log-likelihoods and the metrics line — ARC, and v0.4's MMLU, whose
    // items share their shots: the prefix is computed once and its keys and values copied
    let dir = Scratch::new("wgpu-eval");
    let arc = fixture("eval").join("arc_vi.json");
    let mmlu = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/assets/eval/m_mmlu/vi_validation.json");
    for args in [&["--task", "arc", "--data", p(&arc), "--num-fewshot", "2"][..], &["--task", "mmlu", "--data", p(&mmlu), "--num-fewshot", "3", "--harness", "v0.4", "--batch-size", "3"][..]] {
        let mut logliks = vec![];
        let mut summary = vec![];
        for backend in ["cpu", "wgpu"] {
            let items = dir.root.join(format!("{backend}.jsonl"));
            let args = [&["eval", "--model", p(&bloom), "--output", p(&items)][..], args].concat();
            let o = ok(okapi_train(&[&args[..], &["--backend", backend]].concat()), "eval");
            let (out, err) = (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap());
            if args.contains(&"mmlu") {
                assert!(!err.contains("(0 prefix tokens shared)"), "v0.4 MMLU shares its shots: {err}");
            }
            let mut line: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
            line.as_object_mut().unwrap().remove("model");
            summary.push(line);
            logliks.push(std::fs::read_to_string(&items).unwrap().lines().flat_map(|l| serde_json::from_str::<Value>(l).unwrap()["logliks"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>()).collect::<Vec<_>>());
        }
        assert_eq!(summary[1], summary[0], "eval metrics on wgpu and cpu ({args:?})");
        assert!(logliks[0].len() >= 10);
        follows("eval loglik", &logliks[1], &logliks[0], 1e-5);
    }
}

#[test]
fn bench_runs_on_wgpu_and_says_so() {
    let Some(_) = wgpu("bench") else { return };
    for mode in [&["train", "--steps", "1", "--warmup", "1"][..], &["generate", "--steps", "1", "--warmup", "1", "--new-tokens", "3"][..]] {
        let args = [&["bench"][..], mode, &["--arch", "bloom", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--backend", "wgpu"]].concat();
        let o = ok(okapi_train(&args), "bench");
        let last: Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
        assert_eq!(last["backend"], "wgpu", "{last}");
        assert!(last["device"].as_str().unwrap().starts_with("wgpu ("), "{last}");
        let key = if mode[0] == "train" { "tokens_per_s" } else { "decode_tokens_per_s" };
        assert!(last[key].as_f64().is_some_and(|x| x.is_finite() && x > 0.0), "{last}");
    }
}
