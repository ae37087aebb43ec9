//! `okapi-train bench train|generate` through the binary: the last stdout line is one JSON
//! object with finite, positive, self-consistent numbers; bad input is one clear error.

use serde_json::Value;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).arg("bench").args(args).output().unwrap()
}

/// The last stdout line, parsed, of a run that must succeed.
fn result(args: &[&str]) -> Value {
    let o = run(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench {args:?} failed: {stderr}");
    let stdout = String::from_utf8(o.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no stdout; stderr: {stderr}"));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last}"))
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

fn positive(v: &Value, keys: &[&str]) {
    for k in keys {
        let x = num(v, k);
        assert!(x.is_finite() && x > 0.0, "`{k}` = {x} is not finite and positive in {v}");
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

fn check_train(arch: &str) {
    let (b, t, steps) = (2usize, 16usize, 2u64);
    let v = result(&["train", "--arch", arch, "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--threads", "2"]);
    assert_eq!(v["mode"], "train");
    assert_eq!(v["arch"], arch);
    assert_eq!(v["preset"], "tiny");
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["precision"], "f32");
    assert_eq!(v["threads"].as_u64(), Some(2));
    assert_eq!(v["batch_size"].as_u64(), Some(b as u64));
    assert_eq!(v["seq_len"].as_u64(), Some(t as u64));
    assert_eq!(v["steps"].as_u64(), Some(steps));
    positive(&v, &["params", "step_ms_median", "step_ms_min", "tokens_per_s", "gflop_per_step", "gflops", "fwd_ms_median", "bwd_ms_median", "opt_ms_median", "loss_first", "loss_last"]);
    let med = num(&v, "step_ms_median");
    assert!(num(&v, "step_ms_min") <= med + 1e-9);
    let expect = (b * t) as f64 / (med / 1000.0);
    assert!(close(num(&v, "tokens_per_s"), expect, 0.01), "tokens_per_s {} vs B·T/median {expect}", num(&v, "tokens_per_s"));
    let gflops = num(&v, "gflop_per_step") / (med / 1000.0);
    assert!(close(num(&v, "gflops"), gflops, 0.01), "gflops {} vs {gflops}", num(&v, "gflops"));
    // random init over a 4096 vocabulary: the loss is about ln 4096 ≈ 8.3
    let loss = num(&v, "loss_last");
    assert!(loss.is_finite() && (4.0..12.0).contains(&loss), "loss_last {loss}");
}

#[test]
fn train_llama_tiny() {
    check_train("llama");
}

#[test]
fn train_bloom_tiny() {
    check_train("bloom");
}

/// `--lora-r`: only the adapters (all-linear, r·(d_in + d_out) per linear) train; the peak
/// memory is reported.
#[test]
fn train_with_lora_trains_the_adapters_only() {
    let full = result(&["train", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--threads", "2"]);
    let lora = result(&["train", "--preset", "tiny", "--batch-size", "2", "--seq-len", "16", "--steps", "2", "--warmup", "1", "--threads", "2", "--lora-r", "4"]);
    assert_eq!(num(&full, "trainable_params"), num(&full, "params"));
    // tiny: C 128, F 344, 4 layers, MHA: q, k, v, o 128 + 128; gate, up 128 + 344; down 344 + 128
    let adapters = 4.0 * 4.0 * (4.0 * 256.0 + 3.0 * 472.0);
    assert_eq!(num(&lora, "trainable_params"), adapters);
    assert_eq!(num(&lora, "params"), num(&full, "params") + adapters);
    positive(&lora, &["peak_rss_mib", "tokens_per_s", "loss_last"]);
    assert_eq!(lora["lora_r"].as_u64(), Some(4));
}

#[test]
fn generate_llama_tiny() {
    let (b, t, k) = (2usize, 8usize, 6usize);
    let v = result(&["generate", "--arch", "llama", "--preset", "tiny", "--batch-size", "2", "--seq-len", "8", "--new-tokens", "6", "--steps", "2", "--warmup", "1"]);
    assert_eq!(v["mode"], "generate");
    assert_eq!(v["arch"], "llama");
    assert_eq!(v["batch_size"].as_u64(), Some(b as u64));
    assert_eq!(v["prompt_len"].as_u64(), Some(t as u64));
    assert_eq!(v["new_tokens"].as_u64(), Some(k as u64));
    assert_eq!(v["steps"].as_u64(), Some(2));
    positive(&v, &["threads", "params", "prefill_ms_median", "run_ms_median", "decode_tokens_per_s", "tokens_per_s_total"]);
    let run_ms = num(&v, "run_ms_median");
    let expect = (b * k) as f64 / (run_ms / 1000.0);
    assert!(close(num(&v, "tokens_per_s_total"), expect, 0.01), "tokens_per_s_total {} vs {expect}", num(&v, "tokens_per_s_total"));
}

fn one_line_error(o: &Output, needles: &[&str]) {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected a failure: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].starts_with("error:"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in {}", lines[0]);
    }
    assert!(o.stdout.is_empty(), "nothing on stdout on failure");
}

#[test]
fn bad_input_is_one_line() {
    one_line_error(&run(&["train", "--arch", "llama", "--preset", "no-such-preset", "--steps", "1"]), &["no-such-preset", "bench-5m"]);
    one_line_error(&run(&["train", "--arch", "gpt", "--preset", "tiny"]), &["--arch", "gpt"]);
    one_line_error(&run(&["train", "--preset", "tiny", "--batch-size", "0"]), &["--batch-size"]);
    one_line_error(&run(&["generate", "--preset", "tiny", "--new-tokens", "0"]), &["--new-tokens"]);
    one_line_error(&run(&["sample", "--preset", "tiny"]), &["sample", "train", "generate"]);
}
