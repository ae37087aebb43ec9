//! `okapi-train plan` and the memory plan every training command prints before it starts: the
//! table and its JSON line, the parts adding up, the run's own plan, and `--force`.

mod common;

use common::{fixture, Scratch, SHORT_SFT_RECORDS, SHORT_TEMPLATE};
use serde_json::Value;
use std::process::{Command, Output};

fn okapi(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_okapi-train"));
    c.args(args).env_remove("OKAPI_MEMORY_LIMIT");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn last_json(o: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(stdout.lines().last().expect("plan prints a JSON line last")).unwrap()
}

#[test]
fn plan_prints_a_table_then_one_json_line_whose_parts_add_up() {
    let model = fixture("llama_gqa");
    let o = okapi(&["plan", "--command", "sft", "--model", model.to_str().unwrap(), "--batch-size", "2", "--max-len", "24"], &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.starts_with("memory plan for sft:\n  host memory:\n"), "{stdout}");
    let j = last_json(&o);
    let parts = ["trainable_weights_f32", "frozen_weights_f32", "gradients", "adamw_moments", "activations", "logits", "workspace", "saving_tensor_copies_encoded_file", "optimizer_file_one_moment_at_a_time"];
    let sum: u64 = parts.iter().map(|k| j[k].as_u64().unwrap_or_else(|| panic!("no {k} in {j}"))).sum();
    assert_eq!(j["total_bytes"].as_u64(), Some(sum), "{j}");
    assert_eq!(j["fits"], Value::Bool(true));
    assert!(j["device_bytes"].as_u64().unwrap() > 0);
    // the other choice of --grad-checkpointing is shown, not counted
    let with = j["activations_with_checkpointing"].as_u64().unwrap();
    assert!(with > 0 && with < j["activations"].as_u64().unwrap(), "{j}");
    let o = okapi(&["plan", "--command", "sft", "--model", model.to_str().unwrap(), "--batch-size", "2", "--max-len", "24", "--grad-checkpointing"], &[]);
    let c = last_json(&o);
    assert_eq!(c["activations_checkpointed"].as_u64(), Some(with));
    assert_eq!(c["activations_without_checkpointing"], j["activations"]);
    assert_eq!(c["total_bytes"].as_u64().unwrap() + j["activations"].as_u64().unwrap(), j["total_bytes"].as_u64().unwrap() + with);
    // every parameter trains: gradients = weights, moments = 2 × weights; no frozen weights
    assert_eq!(j["gradients"], j["trainable_weights_f32"]);
    assert_eq!(j["adamw_moments"].as_u64(), j["gradients"].as_u64().map(|g| 2 * g));
    assert_eq!(j["frozen_weights_f32"].as_u64(), Some(0));
    // the logits are B·T·V f32 (vocabulary of the fixture from its config)
    let vocab = common::json(&model.join("config.json"))["vocab_size"].as_u64().unwrap();
    assert_eq!(j["logits"].as_u64(), Some(2 * 24 * vocab * 4));
    // the chunked head holds one chunk's logits and its two (rows, hidden) copies
    let o = okapi(&["plan", "--command", "sft", "--model", model.to_str().unwrap(), "--batch-size", "2", "--max-len", "24", "--lm-head-chunk", "5"], &[]);
    let hidden = common::json(&model.join("config.json"))["hidden_size"].as_u64().unwrap();
    assert_eq!(last_json(&o)["logits_chunked"].as_u64(), Some(4 * (5 * vocab + 2 * 5 * hidden)));
    // with the top layer only trainable, the rest moves to frozen weights
    let o = okapi(&["plan", "--command", "reward", "--model", model.to_str().unwrap(), "--unfrozen-layers", "1"], &[]);
    let r = last_json(&o);
    assert!(r["frozen_weights_f32"].as_u64().unwrap() > 0 && r["logits"].as_u64() == Some(0), "a reward model has no logits: {r}");
    assert_eq!(r["gradients"], r["trainable_weights_f32"]);
    // --frozen-bf16: the frozen block's linear weights at half their bytes, plus one block staged
    let o = okapi(&["plan", "--command", "reward", "--model", model.to_str().unwrap(), "--unfrozen-layers", "1", "--frozen-bf16"], &[]);
    let h = last_json(&o);
    let (f32_before, f32_after, bf16) = (r["frozen_weights_f32"].as_u64().unwrap(), h["frozen_weights_f32"].as_u64().unwrap(), h["frozen_weights_bf16"].as_u64().unwrap());
    assert!(bf16 > 0 && f32_after + 2 * bf16 == f32_before, "{r}\n{h}");
    assert_eq!(h["bf16_staging_one_block_f32"].as_u64(), Some(2 * bf16), "one frozen block: its staging is its f32 size");
}

#[test]
fn the_7b_ppo_plan_names_every_model_and_the_kv_cache() {
    // does not fit this machine: the JSON line comes anyway, then the one-line refusal
    let o = okapi(&["plan", "--command", "ppo", "--preset", "llama-7b", "--recipe", "okapi", "--critic", "separate"], &[("OKAPI_MEMORY_LIMIT", "64G")]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).starts_with("error: not enough memory for PPO"));
    let j = last_json(&o);
    assert_eq!(j["fits"], Value::Bool(false));
    for k in ["reference_model_hydra_top_blocks_and_head", "reward_model", "reference_and_reward_activations", "kv_cache", "critic_weights_gradients_adamw_activations", "rollouts"] {
        assert!(j[k].as_u64().is_some_and(|b| b > 0), "no {k}: {j}");
    }
    // Okapi's 5 unfrozen layers: most of the policy is frozen, and the hydra reference holds
    // only those 5 blocks and the head: a fraction of the full copy
    assert!(j["frozen_weights_f32"].as_u64() > j["trainable_weights_f32"].as_u64(), "{j}");
    let o = okapi(&["plan", "--command", "ppo", "--preset", "llama-7b", "--recipe", "okapi", "--critic", "separate", "--reference", "full"], &[("OKAPI_MEMORY_LIMIT", "64G")]);
    let full = last_json(&o);
    let (hydra, whole) = (j["reference_model_hydra_top_blocks_and_head"].as_u64().unwrap(), full["reference_model"].as_u64().unwrap());
    assert!(hydra * 4 < whole, "hydra {hydra} vs full {whole}");
}

fn sft_args(data: &str, tpl: &str, out: &str) -> Vec<String> {
    let model = fixture("llama_gqa");
    ["sft", "--model", model.to_str().unwrap(), "--data", data, "--template", tpl, "--out", out, "--max-steps", "1", "--max-len", "40"].iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_training_run_prints_its_plan_and_force_runs_past_a_refusal() {
    let dir = Scratch::new("plan-sft");
    let (data, tpl) = (dir.root.join("sft.jsonl"), dir.root.join("template.json"));
    std::fs::write(&data, SHORT_SFT_RECORDS).unwrap();
    std::fs::write(&tpl, SHORT_TEMPLATE).unwrap();
    let (d, t) = (data.to_str().unwrap(), tpl.to_str().unwrap());
    let out = dir.root.join("run");
    let args = sft_args(d, t, out.to_str().unwrap());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = okapi(&argv, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("memory plan for training:\n  host memory:\n    trainable weights (f32)"), "{stderr}");
    // too little memory: refused in one line …
    let out2 = dir.root.join("run2");
    let args = sft_args(d, t, out2.to_str().unwrap());
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = okapi(&argv, &[("OKAPI_MEMORY_LIMIT", "64K")]);
    assert!(!o.status.success());
    assert!(!out2.join("model.safetensors").exists());
    // … and run anyway with --force, every later check (loading the model) warning too
    argv.push("--force");
    let o = okapi(&argv, &[("OKAPI_MEMORY_LIMIT", "64K")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("warning: not enough memory for training") && stderr.contains("running anyway (--force)"), "{stderr}");
    assert!(stderr.contains("warning: not enough memory for loading"), "{stderr}");
    assert!(out2.join("model.safetensors").exists() || out2.join("model.safetensors.index.json").exists());
}

/// `--ranks N --zero 1`: the plan of one rank, holding about 1/N of the AdamW moments (tensors
/// are owned whole: the plan rounds up), and a checkpoint one moment at a time; PPO's policy
/// and critic alike. Bad combinations are one line each.
#[test]
fn plan_shows_one_ranks_share_under_zero_1() {
    let base = ["plan", "--command", "sft", "--preset", "llama-7b"];
    let whole = last_json(&okapi(&base, &[("OKAPI_MEMORY_LIMIT", "4T")]));
    let moments = whole["adamw_moments"].as_u64().unwrap();
    let sharded = last_json(&okapi(&[&base[..], &["--ranks", "4", "--zero", "1"]].concat(), &[("OKAPI_MEMORY_LIMIT", "4T")]));
    assert_eq!(sharded["adamw_moments_zero_1_1_4"].as_u64(), Some(moments.div_ceil(4)), "{sharded}");
    // a checkpoint gathers one moment at a time (the embedding is the largest, f32 and bytes)
    assert_eq!(sharded["optimizer_file_one_moment_at_a_time"].as_u64(), Some(2 * 4 * 32_000 * 4096), "{sharded}");
    assert_eq!(whole["optimizer_file_one_moment_at_a_time"], sharded["optimizer_file_one_moment_at_a_time"]);
    assert!(sharded.get("adamw_moments").is_none());
    // one rank, or --zero 0: the whole state, no gather
    let one = last_json(&okapi(&[&base[..], &["--ranks", "1", "--zero", "1"]].concat(), &[("OKAPI_MEMORY_LIMIT", "4T")]));
    assert_eq!(one["adamw_moments"].as_u64(), Some(moments));
    // --zero 2: the gradients too — a share of the blocks', the embedding and head whole, one
    // block lent — and the moments as with 1
    let z2 = last_json(&okapi(&[&base[..], &["--ranks", "4", "--zero", "2"]].concat(), &[("OKAPI_MEMORY_LIMIT", "4T")]));
    let grads = whole["gradients"].as_u64().unwrap();
    let sharded_grads = z2["gradients_zero_2_1_4_of_the_blocks_one_lent"].as_u64().unwrap_or_else(|| panic!("{z2}"));
    assert!(sharded_grads < grads / 3 && sharded_grads > grads / 4, "{sharded_grads} of {grads}");
    assert_eq!(z2["adamw_moments_zero_2_1_4"].as_u64(), Some(moments.div_ceil(4)));
    let p2 = last_json(&okapi(&["plan", "--command", "ppo", "--preset", "llama-7b", "--ranks", "2", "--zero", "2"], &[("OKAPI_MEMORY_LIMIT", "4T")]));
    assert!(p2["gradients_zero_2_1_2_of_the_blocks_one_lent"].as_u64().is_some_and(|b| b > 0), "{p2}");
    let ppo = ["plan", "--command", "ppo", "--preset", "llama-7b", "--recipe", "okapi", "--critic", "separate", "--ranks", "2", "--zero", "1"];
    let p = last_json(&okapi(&ppo, &[("OKAPI_MEMORY_LIMIT", "4T")]));
    assert!(p["adamw_moments_zero_1_1_2"].as_u64().is_some_and(|b| b > 0), "{p}");
    for (args, needle) in [
        (vec!["--ranks", "2", "--zero", "3"], "--zero 3: expected 0, 1 or 2"),
        (vec!["--ranks", "0"], "--ranks 0: expected at least 1 rank"),
        (vec!["--ranks", "2", "--zero", "1", "--offload-optimizer"], "--zero 1 with --offload-optimizer"),
    ] {
        let o = okapi(&[&base[..], &args[..]].concat(), &[]);
        common::one_error_line(&o, &[needle]);
    }
    let o = okapi(&["plan", "--command", "eval", "--preset", "llama-7b", "--ranks", "2", "--zero", "1"], &[]);
    common::one_error_line(&o, &["--zero 1 (2 ranks): eval holds no optimizer state"]);
}
