//! `reward`, `dpo`, `ppo` and `score` through the binary: skipped records counted, bad input as
//! one clear error, a reward model with another tokenizer, divergence.

mod common;
// grpo, rloo and composed rewards through the binary (one test binary with ppo's)
#[path = "rlhf/grpo_cli.rs"]
mod grpo_cli;

use common::{fixture, one_error_line};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("okapi-rlhfcli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}


fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Ranking records that must be skipped, and ones that train.
fn messy_rankings(dir: &Path) -> PathBuf {
    let f = dir.join("vi.jsonl");
    std::fs::write(
        &f,
        [
            r#"{"instruction": "Chào", "input": "", "prefered_output": "Xin chào bạn!", "rejected_output": "Không."}"#,
            r#"{"instruction": "Same", "input": "", "chosen": "A", "rejected": "A"}"#,
            r#"{"instruction": "Empty", "input": "", "chosen": "", "rejected": "B"}"#,
            r#"{"instruction": "One", "input": "", "responses": ["only one"]}"#,
            r#"{"instruction": "Rank", "input": "", "responses": ["best answer", "ok", "bad", "wrong"]}"#,
            r#"{"instruction": "Long", "input": "an input makes this prompt longer than the max length", "chosen": "x", "rejected": "y"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    f
}

#[test]
fn reward_counts_what_it_skips_and_trains_on_the_rest() {
    let dir = tmp("rm-skip");
    let data = messy_rankings(&dir);
    let out = dir.join("rm");
    let o = run(&["reward", "--model", p(&fixture("llama_gqa")), "--data", p(&data), "--out", p(&out), "--max-steps", "1", "--max-len", "150", "--lr", "1e-4"]);
    assert!(o.status.success(), "{}", err(&o));
    let e = err(&o);
    let line = e.lines().find(|l| l.starts_with("reward: 6 ranking records read")).unwrap_or_else(|| panic!("{e}"));
    for want in ["2 kept", "1 with fewer than 2 responses", "1 with an empty response", "1 with identical responses", "1 prompts that do not fit --max-len", "7 pairs"] {
        assert!(line.contains(want), "`{want}` not in {line}");
    }
    let m: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(m["pairs"], 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_ranking_input_is_one_clear_error() {
    let dir = tmp("rm-bad");
    let only_bad = dir.join("bad.json");
    std::fs::write(&only_bad, r#"[{"instruction": "Same", "input": "", "chosen": "A", "rejected": "A"}]"#).unwrap();
    one_error_line(&run(&["reward", "--model", p(&fixture("llama_gqa")), "--data", p(&only_bad), "--out", p(&dir.join("o"))]), &["no ranking data after filtering", "identical"]);
    let shapeless = dir.join("shape.json");
    std::fs::write(&shapeless, r#"[{"instruction": "x", "input": "", "output": "y"}]"#).unwrap();
    one_error_line(&run(&["dpo", "--model", p(&fixture("llama_gqa")), "--data", p(&shapeless), "--out", p(&dir.join("o"))]), &["shape.json", "#1", "prefered_output"]);
    let data = messy_rankings(&dir);
    one_error_line(&run(&["dpo", "--model", p(&fixture("llama_gqa")), "--data", p(&data), "--out", p(&dir.join("o")), "--beta", "0"]), &["--beta"]);
    one_error_line(&run(&["reward", "--model", p(&fixture("llama_gqa")), "--data", p(&data), "--out", p(&dir.join("o")), "--unfrozen-layers", "9"]), &["--unfrozen-layers 9", "2 layers"]);
    one_error_line(&run(&["score", "--model", p(&fixture("llama_gqa")), "--data", p(&data)]), &["not a reward model"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tiny policy whose positions fit the Okapi prompt, and a reward model with the BLOOM
/// fixture's tokenizer (no BOS post-processor: another tokenizer).
fn policy_and_foreign_rm(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let policy = dir.join("policy");
    let o = run(&["init", "--arch", "llama", "--preset", "tiny", "--tokenizer", p(&fixture("llama_gqa").join("tokenizer.json")), "--out", p(&policy), "--seed", "3"]);
    assert!(o.status.success(), "{}", err(&o));
    let rm = dir.join("rm");
    let o = run(&["reward", "--model", p(&fixture("bloom_6h")), "--data", p(&fixture("ranking_data.json")), "--out", p(&rm), "--max-steps", "1"]);
    assert!(o.status.success(), "{}", err(&o));
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"instruction\": \"Say hi\", \"input\": \"\"}\n{\"instruction\": \"Đếm đến ba\", \"input\": \"\"}\n").unwrap();
    (policy, rm, prompts)
}

/// The tiny policy and its prompts, with a reward model trained from the policy itself (the
/// same tokenizer, as `--critic separate` needs).
fn policy_and_own_rm(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (policy, _, prompts) = policy_and_foreign_rm(dir);
    let rm = dir.join("rm-same");
    let o = run(&["reward", "--model", p(&policy), "--data", p(&fixture("ranking_data.json")), "--out", p(&rm), "--max-steps", "1"]);
    assert!(o.status.success(), "{}", err(&o));
    (policy, rm, prompts)
}

#[test]
fn ppo_refuses_a_reward_model_with_another_tokenizer_unless_retokenize() {
    let dir = tmp("ppo-tok");
    let (policy, rm, prompts) = policy_and_foreign_rm(&dir);
    let out = dir.join("ppo");
    let base = ["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "6"];
    one_error_line(&run(&base), &["tokenizer differs", "--retokenize"]);
    let mut args = base.to_vec();
    args.push("--retokenize");
    let o = run(&args);
    assert!(o.status.success(), "{}", err(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for key in ["score_mean", "score_std", "kl", "beta", "entropy", "pg_loss", "vf_loss", "clipfrac", "approx_kl", "response_len", "rollout_tokens_per_s", "time_generate_s", "time_score_s", "time_update_s"] {
        assert!(lines[1][key].as_f64().is_some_and(f64::is_finite), "metrics.jsonl lacks {key}: {}", lines[1]);
    }
    assert!(out.join("value_head.safetensors").exists() && out.join("model.safetensors").exists() && out.join("samples.jsonl").exists());
    // the saved policy is a plain HF causal LM: the value head is beside it, not inside
    let m = okapi::model::Model::load(okapi::runtime::CpuBackend, &out).unwrap();
    assert!(m.value_head.is_none() && m.lm_head.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ppo_divergence_stops_with_a_clear_message() {
    let dir = tmp("ppo-nan");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    let out = dir.join("ppo");
    let o = run(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "3", "--rollouts", "4", "--chunk-size", "4", "--ppo-batch-size", "2", "--max-new-tokens", "4", "--lr", "1e30", "--max-grad-norm", "0"]);
    one_error_line(&o, &["iteration", "stopping"]);
    assert!(!out.join("model.safetensors").exists(), "no model from a diverged run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ppo_with_a_separate_critic_from_the_reward_model() {
    let dir = tmp("ppo-critic");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    let out = dir.join("ppo");
    let o = run(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5", "--critic", "separate", "--unfrozen-layers", "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let last: serde_json::Value = serde_json::from_str(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().last().unwrap()).unwrap();
    assert!(last["vf_loss"].as_f64().is_some_and(|v| v.is_finite() && v > 0.0), "{last}");
    // the critic is saved as a reward-model directory with its value head; the policy has none
    let critic = okapi::model::Model::load(okapi::runtime::CpuBackend, &out.join("critic")).unwrap();
    assert!(critic.score.is_some() && out.join("critic/value_head.safetensors").exists());
    assert!(!out.join("value_head.safetensors").exists());
    // the critic's trunk moved (it trains), its score head did not
    let rm0 = okapi::model::Model::load(okapi::runtime::CpuBackend, &rm).unwrap();
    assert_eq!(critic.host_value(critic.score.unwrap()), rm0.host_value(rm0.score.unwrap()));
    assert_ne!(critic.host_value(critic.ln_f.w), rm0.host_value(rm0.ln_f.w));
    let _ = std::fs::remove_dir_all(&dir);
}

/// PPO killed while writing its iteration-4 checkpoint and resumed from the iteration-2 one ends
/// exactly where an uninterrupted run ends: the same metrics (but the timings), samples, policy
/// and value head (shared critic) or critic (separate), bit for bit.
#[test]
fn ppo_resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tmp("ppo-resume");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    for critic in ["shared", "separate"] {
        let ppo = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
            let args = ["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(out), "--iterations", "4", "--rollouts", "4"];
            let more = ["--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5", "--save-every", "2", "--critic", critic, "--save-dtype", "f32"];
            Command::new(BIN).args(args).args(more).args(extra).envs(env.iter().copied()).output().unwrap()
        };
        let full = dir.join(format!("full-{critic}"));
        let o = ppo(&full, &[], &[]);
        assert!(o.status.success(), "{}", err(&o));
        let part = dir.join(format!("part-{critic}"));
        let o = ppo(&part, &[], &[("OKAPI_TEST_CRASH_AT", "2:1")]);
        assert!(!o.status.success(), "the run must die while writing the iteration-4 checkpoint");
        assert_eq!(std::fs::read_to_string(part.join("metrics.jsonl")).unwrap().lines().count(), 4, "four iterations ran before the kill");
        let o = ppo(&part, &["--resume", p(&part)], &[]);
        assert!(o.status.success(), "{}", err(&o));
        assert!(err(&o).contains("resuming from") && err(&o).contains("after iteration 2/4"), "{}", err(&o));
        assert_eq!(untimed_metrics(&part), untimed_metrics(&full), "{critic}: metrics.jsonl");
        let files: &[&str] = if critic == "shared" { &["model.safetensors", "value_head.safetensors", "samples.jsonl"] } else { &["model.safetensors", "critic/model.safetensors", "critic/value_head.safetensors", "samples.jsonl"] };
        for f in files {
            assert!(std::fs::read(part.join(f)).unwrap() == std::fs::read(full.join(f)).unwrap(), "{critic}: {f} differs from the uninterrupted run");
        }
        // another setting that changes which rollouts an iteration draws is refused
        let o = Command::new(BIN)
            .args(["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&dir.join("x")), "--iterations", "4", "--rollouts", "8"])
            .args(["--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5", "--critic", critic, "--resume", p(&part)])
            .output()
            .unwrap();
        one_error_line(&o, &["--resume", "--rollouts 4", "--rollouts 8", "keeps every setting"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGINT in the middle of PPO (iterations slowed to 150 ms by the test hook): the run stops after
/// the iteration in progress with a checkpoint of it, exit 130; resuming ends exactly where an
/// uninterrupted run ends.
#[cfg(unix)]
#[test]
fn ppo_stops_on_sigint_with_a_checkpoint_and_resumes_exactly() {
    let dir = tmp("ppo-sigint");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    let args = |out: &Path| -> Vec<String> {
        let a = ["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(out), "--iterations", "12", "--rollouts", "2", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "3", "--save-dtype", "f32"];
        a.iter().map(|s| s.to_string()).collect()
    };
    let full = dir.join("full");
    assert!(run(&args(&full).iter().map(String::as_str).collect::<Vec<_>>()).status.success());
    let out = dir.join("stopped");
    let child = Command::new(BIN).args(args(&out)).env("OKAPI_TEST_STEP_DELAY_MS", "150").stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0) < 2 {
        assert!(t0.elapsed().as_secs() < 60, "the run did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    common::send_signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    let e = err(&o);
    assert_eq!(o.status.code(), Some(130), "{e}");
    let done = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count();
    assert!(e.lines().last().unwrap().starts_with(&format!("error: interrupted after iteration {done} of 12: checkpoint saved in")), "{e}");
    let mut resume = args(&out);
    resume.extend(["--resume".to_string(), p(&out).to_string()]);
    let o = run(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", err(&o));
    for f in ["model.safetensors", "value_head.safetensors"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(full.join(f)).unwrap(), "{f} differs from the uninterrupted run");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Short PPO runs (2 iterations of 4 rollouts, 5 new tokens) of one `(policy, reward model,
/// prompts)`, one per `(name, flags)` into `dir/name`; each must succeed. Their output
/// directories and stderr, in order.
fn ppo_variants(dir: &Path, (policy, rm, prompts): &(PathBuf, PathBuf, PathBuf), variants: &[(&str, &[&str])]) -> Vec<(PathBuf, String)> {
    variants
        .iter()
        .map(|(name, extra)| {
            let out = dir.join(name);
            let mut a = vec!["ppo", "--policy", p(policy), "--reward", p(rm), "--prompts", p(prompts), "--out", p(&out)];
            a.extend(["--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5"]);
            a.extend(*extra);
            let o = run(&a);
            assert!(o.status.success(), "{name}: {}", err(&o));
            (out, err(&o))
        })
        .collect()
}

/// Asserts that each of `files` that exists in run `a` exists byte-identical in run `b`;
/// returns how many were compared.
fn same_files(a: &Path, b: &Path, files: &[&str], what: &str) -> usize {
    let mut compared = 0;
    for f in files.iter().filter(|f| a.join(f).exists()) {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs {what}");
        compared += 1;
    }
    compared
}

/// The lines of a run's metrics.jsonl.
/// The JSON lines of a file (metrics.jsonl, samples.jsonl).
fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn metric_lines(out: &Path) -> Vec<serde_json::Value> {
    jsonl(&out.join("metrics.jsonl"))
}

/// A run's metrics without the timings (what a resumed run must repeat exactly).
fn untimed_metrics(out: &Path) -> Vec<serde_json::Value> {
    let mut lines = metric_lines(out);
    for v in &mut lines {
        for k in ["time_generate_s", "time_score_s", "time_update_s", "elapsed_s", "rollout_tokens_per_s"] {
            v.as_object_mut().unwrap().remove(k);
        }
    }
    lines
}

/// `--grad-checkpointing` in PPO (policy with a shared value head, and a separate critic): the
/// same saved policy, value head and critic, bit for bit, and the same metrics but the timings.
#[test]
fn ppo_with_grad_checkpointing_is_bit_identical() {
    let dir = tmp("ppo-ckpt");
    let models = policy_and_own_rm(&dir);
    for critic in ["shared", "separate"] {
        let base = ["--critic", critic, "--save-dtype", "f32"];
        let ckpt = ["--critic", critic, "--save-dtype", "f32", "--grad-checkpointing"];
        let runs = ppo_variants(&dir.join(critic), &models, &[("plain", &base), ("ckpt", &ckpt)]);
        let files = ["model.safetensors", "value_head.safetensors", "critic/model.safetensors", "critic/value_head.safetensors"];
        let compared = same_files(&runs[0].0, &runs[1].0, &files, &format!("with --grad-checkpointing ({critic} critic)"));
        assert!(compared >= 2, "{critic}: only {compared} files compared");
        let strip = |o: &PathBuf| -> Vec<serde_json::Value> {
            metric_lines(o)
                .into_iter()
                .map(|mut v| {
                    v.as_object_mut().unwrap().retain(|k, _| !k.contains("time") && !k.ends_with("_s") && !k.contains("per_s"));
                    v
                })
                .collect()
        };
        assert_eq!(strip(&runs[0].0), strip(&runs[1].0), "{critic}: metrics");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// trlx's hydra reference (`--reference hydra`, the default with `--unfrozen-layers`): the top
/// blocks and head on the policy's frozen trunk give the same reference log-probs as a whole
/// copy, so the run is bit-identical to `--reference full`.
#[test]
fn ppo_hydra_reference_matches_a_full_copy_bit_for_bit() {
    let dir = tmp("ppo-hydra");
    let common = ["--unfrozen-layers", "1", "--save-dtype", "f32", "--reference"];
    let runs = ppo_variants(&dir, &policy_and_own_rm(&dir), &[("hydra", &[&common[..], &["hydra"]].concat()), ("full", &[&common[..], &["full"]].concat())]);
    assert!(runs[0].1.contains("reference model (hydra: top blocks and head)"), "{}", runs[0].1);
    assert_eq!(same_files(&runs[0].0, &runs[1].0, &["model.safetensors", "value_head.safetensors"], "between hydra and full references"), 2);
    let kl = |o: &PathBuf| -> Vec<serde_json::Value> { metric_lines(o).into_iter().map(|v| v["kl"].clone()).collect() };
    let (a, b) = (kl(&runs[0].0), kl(&runs[1].0));
    assert!(a.iter().any(|k| k.as_f64().is_some_and(|x| x != 0.0)), "the KL must move for the test to show anything: {a:?}");
    assert_eq!(a, b);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--lm-head-chunk` in PPO: the rollouts are the same (generation does not use it), the policy's
/// and the reference's log-probs agree to float rounding, and so do the metrics of the run.
#[test]
fn ppo_with_a_chunked_head_follows_the_whole_one() {
    let dir = tmp("ppo-head-chunk");
    let runs = ppo_variants(&dir, &policy_and_own_rm(&dir), &[("whole", &["--unfrozen-layers", "1"]), ("chunked", &["--unfrozen-layers", "1", "--lm-head-chunk", "3"])]);
    let (a, b) = (metric_lines(&runs[0].0), metric_lines(&runs[1].0));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        for k in ["score_mean", "kl", "pg_loss", "vf_loss", "entropy", "response_len", "approx_kl"] {
            let (u, v) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((u - v).abs() <= 1e-4 * u.abs().max(1e-2), "{k}: {u} vs {v}\n{x}\n{y}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--frozen-bf16` in PPO: the policy's frozen blocks, the reference and the reward model in
/// bf16; the hydra reference (from the policy's packed frozen trunk) still matches a whole
/// packed copy bit for bit, and the run trains.
#[test]
fn ppo_with_frozen_bf16_weights_runs_and_its_hydra_reference_is_exact() {
    let dir = tmp("ppo-bf16");
    let common = ["--unfrozen-layers", "1", "--frozen-bf16", "--save-dtype", "f32", "--reference"];
    let runs = ppo_variants(&dir, &policy_and_own_rm(&dir), &[("hydra", &[&common[..], &["hydra"]].concat()), ("full", &[&common[..], &["full"]].concat())]);
    for (_, stderr) in &runs {
        assert!(stderr.contains("frozen weights (bf16)"), "{stderr}");
    }
    assert_eq!(same_files(&runs[0].0, &runs[1].0, &["model.safetensors", "value_head.safetensors"], "between hydra and full bf16 references"), 2);
    let m = metric_lines(&runs[0].0);
    assert!(m.iter().all(|v| v["loss"].as_f64().is_some_and(f64::is_finite)), "{m:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--offload-optimizer` in PPO (the policy's and a separate critic's AdamW on the host): on the
/// CPU backend the same kernel on the same values, so the run is bit-identical.
#[test]
fn ppo_with_the_optimizer_offloaded_is_bit_identical() {
    let dir = tmp("ppo-offload");
    let base = ["--critic", "separate", "--save-dtype", "f32"];
    let runs = ppo_variants(&dir, &policy_and_own_rm(&dir), &[("plain", &base), ("offload", &[&base[..], &["--offload-optimizer"]].concat())]);
    let files = ["model.safetensors", "critic/model.safetensors", "critic/value_head.safetensors"];
    assert_eq!(same_files(&runs[0].0, &runs[1].0, &files, "with the optimizer offloaded"), files.len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--recipe okapi` takes trlx's choices: the MLP value head (saved as trlx names it), prompts
/// without BOS left-truncated to --max-prompt-len, the KL controller moved after every PPO epoch
/// on trlx's k3 estimate; a run killed mid-way and resumed ends bit-identical.
#[test]
fn ppo_recipe_okapi_runs_trlxs_choices_and_resumes_exactly() {
    let dir = tmp("ppo-okapi");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    let ppo = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let args = ["ppo", "--recipe", "okapi", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(out), "--iterations", "4"];
        let more = ["--rollouts", "4", "--chunk-size", "2", "--ppo-epochs", "3", "--max-new-tokens", "5", "--max-prompt-len", "12", "--unfrozen-layers", "1", "--save-every", "2", "--save-dtype", "f32", "--lr", "1e-3"];
        Command::new(BIN).args(args).args(more).args(extra).envs(env.iter().copied()).output().unwrap()
    };
    let full = dir.join("full");
    let o = ppo(&full, &[], &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("2 prompts longer than 12 tokens (left-truncated); 2 prompts"), "{}", err(&o));
    let args: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(full.join("args.json")).unwrap()).unwrap();
    for (k, v) in [("value_head", "mlp"), ("whiten", "minibatch"), ("loss_norm", "sequence"), ("kl_control", "trlx"), ("prompt_encoding", "trlx")] {
        assert_eq!(args[k], v, "args.json {k}");
    }
    let bytes = std::fs::read(full.join("value_head.safetensors")).unwrap();
    let vh = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<(String, Vec<usize>)> = vh.tensors().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    names.sort();
    let c = okapi::model::ModelConfig::load(&policy).unwrap().hidden_size;
    assert_eq!(names, [("v_head.0.bias".into(), vec![2 * c]), ("v_head.0.weight".into(), vec![2 * c, c]), ("v_head.2.bias".into(), vec![1]), ("v_head.2.weight".into(), vec![1, 2 * c])]);
    for line in metric_lines(&full) {
        // trlx: β moves after each of the 3 PPO epochs, n_steps = the minibatch (2), on the k3 KL
        let (beta, kl) = (line["beta"].as_f64().unwrap(), line["kl_controller_input"].as_f64().unwrap());
        let step = 1.0 + (kl / 6.0 - 1.0).clamp(-0.2, 0.2) * 2.0 / 10000.0;
        assert!(kl >= 0.0 && (line["beta_next"].as_f64().unwrap() - beta * step.powi(3)).abs() < 1e-15, "{line}");
    }
    let part = dir.join("part");
    assert!(!ppo(&part, &[], &[("OKAPI_TEST_CRASH_AT", "2:1")]).status.success(), "the run must die while writing the iteration-4 checkpoint");
    let o = ppo(&part, &["--resume", p(&part)], &[]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(same_files(&part, &full, &["model.safetensors", "value_head.safetensors", "samples.jsonl"], "after a resume"), 3);
    // a resume keeps every trlx choice
    let o = ppo(&dir.join("x"), &["--resume", p(&part), "--whiten", "batch"], &[]);
    one_error_line(&o, &["--resume", "--whiten"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// BLOOM under `--recipe okapi` with the hydra reference: trlx trains `word_embeddings_layernorm`
/// (and the top block) but not the embeddings; `--train-embedding-norm false` keeps it frozen.
#[test]
fn ppo_recipe_okapi_trains_blooms_embedding_norm() {
    let dir = tmp("ppo-bloom-ln");
    let (_, rm, prompts) = policy_and_foreign_rm(&dir);
    let bloom = fixture("bloom_6h");
    let before = okapi::model::Model::load(okapi::runtime::CpuBackend, &bloom).unwrap();
    for (name, flag) in [("trained", "true"), ("frozen", "false")] {
        let out = dir.join(name);
        let mut a = vec!["ppo", "--recipe", "okapi", "--policy", p(&bloom), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out)];
        a.extend(["--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--max-new-tokens", "5", "--unfrozen-layers", "1", "--lr", "1e-2", "--save-dtype", "f32", "--train-embedding-norm", flag]);
        let o = run(&a);
        assert!(o.status.success(), "{name}: {}", err(&o));
        let after = okapi::model::Model::load(okapi::runtime::CpuBackend, &out).unwrap();
        let (ln, emb) = (before.emb_ln.unwrap().w, before.embed);
        assert_eq!(after.host_value(emb), before.host_value(emb), "{name}: the embeddings stay frozen");
        assert_eq!(after.host_value(ln) != before.host_value(ln), flag == "true", "{name}: word_embeddings_layernorm");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The trlx-or-okapi choices refuse values they do not know, and the separate critic keeps the
/// reward model's linear head.
#[test]
fn ppo_choice_flags_are_checked() {
    let dir = tmp("ppo-choices");
    let (policy, rm, prompts) = policy_and_own_rm(&dir);
    let out = dir.join("o");
    let base = ["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "1"];
    for (flag, value, expected) in [("--whiten", "rollout", "batch or minibatch"), ("--loss-norm", "mean", "token or sequence"), ("--kl-control", "k2", "response-k1 or trlx"), ("--value-head", "deep", "mlp or linear"), ("--prompt-encoding", "bos", "bos-skip or trlx")] {
        let o = run(&[&base[..], &[flag, value]].concat());
        one_error_line(&o, &[flag, value, expected]);
    }
    one_error_line(&run(&[&base[..], &["--value-head", "mlp", "--critic", "separate"]].concat()), &["--value-head mlp", "--critic shared"]);
    assert!(!out.join("metrics.jsonl").exists(), "nothing ran");
    let _ = std::fs::remove_dir_all(&dir);
}
