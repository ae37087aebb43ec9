//! `okapi-train sft` end to end through the binary: exact resume, a kill during checkpoint
//! writing, NaN handling, gradient accumulation, data filtering and bad input.

mod common;

use common::{fixture, one_error_line};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("okapi-sft-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small multilingual data file (JSONL, with one non-string output and one unusable record).
fn data_file(dir: &Path) -> PathBuf {
    let p = dir.join("vi.jsonl");
    std::fs::write(
        &p,
        [
            r#"{"instruction": "Chào bằng tiếng Việt.", "input": "", "output": "Xin chào bạn!"}"#,
            r#"{"instruction": "Translate to Russian", "input": "good morning", "output": "Доброе утро"}"#,
            r#"{"instruction": "What is 2+2?", "input": "", "output": 4}"#,
            r#"{"instruction": "Name a colour.", "input": "", "output": "Blue."}"#,
            r#"{"instruction": "", "input": "", "output": "no instruction: skipped"}"#,
            r#"{"instruction": "Summarize", "input": "The cat sat on the mat all day long.", "output": "A cat rested on a mat."}"#,
            r#"{"instruction": "اكتب كلمة عربية.", "input": "", "output": "مرحبا"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    p
}

fn sft(model: &Path, data: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["sft", "--model"]).arg(model).arg("--data").arg(data).arg("--out").arg(out);
    // defaults of these tests unless `extra` sets the flag
    for (flag, value) in [("--batch-size", "2"), ("--lr", "1e-3"), ("--lr-schedule", "cosine"), ("--warmup-steps", "1"), ("--log-every", "1")] {
        if !extra.contains(&flag) {
            c.args([flag, value]);
        }
    }
    c.arg("--no-shuffle");
    c.args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The fields that must be identical between an interrupted+resumed run and an uninterrupted one.
fn trajectory(m: &[serde_json::Value]) -> Vec<String> {
    m.iter().map(|v| format!("{} {} {} {} {} {:?}", v["step"], v["epoch"], v["loss"], v["lr"], v["grad_norm"], v.get("val_loss"))).collect()
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "okapi-train failed: {}", stderr(o));
}

#[test]
fn resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tmp("resume");
    let data = data_file(&dir);
    let args = ["--max-steps", "5", "--save-every", "2", "--val-fraction", "0.2", "--eval-every", "2"];
    let full = dir.join("full");
    assert_ok(&sft(&fixture("llama_gqa"), &data, &full, &args, &[]));
    let part = dir.join("part");
    let o = sft(&fixture("llama_gqa"), &data, &part, &args, &[("OKAPI_TEST_EXIT_AFTER_STEP", "3")]);
    assert!(!o.status.success() && stderr(&o).contains("stopped after step 3"), "{}", stderr(&o));
    assert!(!part.join("model.safetensors").exists(), "an interrupted run saves no final model");
    let mut resume_args = args.to_vec();
    resume_args.extend(["--resume", part.to_str().unwrap()]);
    let o = sft(&fixture("llama_gqa"), &data, &part, &resume_args, &[]);
    assert_ok(&o);
    assert!(stderr(&o).contains("resuming from") && stderr(&o).contains("at step 2/5"), "{}", stderr(&o));
    let (a, b) = (metrics(&full), metrics(&part));
    assert_eq!(a.len(), 5);
    assert_eq!(trajectory(&a), trajectory(&b), "losses, lr, grad norms and validation losses");
    let (wa, wb) = (std::fs::read(full.join("model.safetensors")).unwrap(), std::fs::read(part.join("model.safetensors")).unwrap());
    assert!(wa == wb, "final weights are bit-identical");
    // the loss fell
    assert!(a[4]["loss"].as_f64().unwrap() < a[0]["loss"].as_f64().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_kill_while_writing_a_checkpoint_keeps_the_previous_one() {
    let dir = tmp("kill");
    let data = data_file(&dir);
    let out = dir.join("out");
    let args = ["--max-steps", "4", "--save-every", "2"];
    let o = sft(&fixture("llama_gqa"), &data, &out, &args, &[("OKAPI_TEST_CRASH_AT", "2:1")]);
    assert!(!o.status.success(), "the run was killed");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 2, "the step-2 checkpoint survives the kill at step 4");
    assert!(out.join("checkpoint.tmp").exists(), "the interrupted write stayed under its temporary name");
    // resuming from it finishes the run like an uninterrupted one
    let mut resume_args = args.to_vec();
    resume_args.extend(["--resume", out.to_str().unwrap()]);
    assert_ok(&sft(&fixture("llama_gqa"), &data, &out, &resume_args, &[]));
    let full = dir.join("full");
    assert_ok(&sft(&fixture("llama_gqa"), &data, &full, &args, &[]));
    assert_eq!(trajectory(&metrics(&full)), trajectory(&metrics(&out)));
    assert!(std::fs::read(full.join("model.safetensors")).unwrap() == std::fs::read(out.join("model.safetensors")).unwrap());
    assert!(!out.join("checkpoint.tmp").exists(), "the next save cleaned the leftover");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_diverging_run_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint() {
    let dir = tmp("nan");
    let data = data_file(&dir);
    let out = dir.join("out");
    let o = sft(&fixture("llama_gqa"), &data, &out, &["--max-steps", "6", "--save-every", "1", "--lr", "1e37", "--lr-schedule", "constant", "--warmup-steps", "0"], &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("error: step ") && (last.contains("NaN") || last.contains("inf") || last.contains("finite")), "{err}");
    assert!(!out.join("model.safetensors").exists(), "no final model from a diverged run");
    let ckpt = out.join("checkpoint");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    let saved = state["step"].as_u64().unwrap();
    assert!(saved >= 1, "a checkpoint of a good step exists");
    let model = okapi::model::Model::load(okapi::runtime::CpuBackend, &ckpt.join("model")).unwrap();
    assert!(model.values.iter().all(|v| v.iter().all(|x| x.is_finite())), "the kept checkpoint holds finite weights");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gradient_accumulation_equals_the_bigger_batch() {
    let dir = tmp("accum");
    let data = data_file(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    assert_ok(&sft(&fixture("llama_gqa"), &data, &a, &["--max-steps", "2", "--batch-size", "2"], &[]));
    assert_ok(&sft(&fixture("llama_gqa"), &data, &b, &["--max-steps", "2", "--batch-size", "1", "--grad-accum", "2"], &[]));
    let (ma, mb) = (metrics(&a), metrics(&b));
    for (x, y) in ma.iter().zip(&mb) {
        let (la, lb) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((la - lb).abs() <= 1e-5 * la.abs(), "step {}: loss {la} vs {lb}", x["step"]);
        let (ga, gb) = (x["grad_norm"].as_f64().unwrap(), y["grad_norm"].as_f64().unwrap());
        assert!((ga - gb).abs() <= 1e-4 * ga.abs(), "step {}: grad norm {ga} vs {gb}", x["step"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn filtering_and_skips_are_counted_in_one_line() {
    let dir = tmp("filter");
    let data = data_file(&dir);
    let out = dir.join("out");
    let o = sft(&fixture("llama_gqa"), &data, &out, &["--max-steps", "1", "--max-len", "150"], &[]);
    assert_ok(&o);
    let err = stderr(&o);
    let line = err.lines().find(|l| l.starts_with("sft: 7 records read")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("1 non-string fields converted") && line.contains("1 missing/empty"), "{line}");
    // the template alone is ~130 tokens with this 400-token tokenizer: the two with input do not fit
    assert!(line.contains("2 prompts do not fit --max-len 150"), "{line}");
    let args: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("args.json")).unwrap()).unwrap();
    assert_eq!(args["max_len"], 150);
    assert_eq!(args["lr"], 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_sft_input_is_one_clear_error() {
    let dir = tmp("bad");
    let data = data_file(&dir);
    let out = dir.join("out");
    // unknown language code
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--langs", "vi,xx"], &[]), &["--langs", "`xx`"]);
    // nothing left after filtering by language
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--langs", "de"], &[]), &["no training examples", "other languages"]);
    // every prompt longer than --max-len
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--max-len", "8"], &[]), &["no training examples", "--max-len 8"]);
    // a malformed line names file and line
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": oops}\n").unwrap();
    one_error_line(&sft(&fixture("llama_gqa"), &bad, &out, &[], &[]), &["bad.jsonl:2:"]);
    // a record that is not an object
    std::fs::write(&bad, "[{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}, 17]").unwrap();
    one_error_line(&sft(&fixture("llama_gqa"), &bad, &out, &[], &[]), &["bad.jsonl", "#2", "expected a JSON object"]);
    // flags
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--adam-betas", "0.9"], &[]), &["--adam-betas"]);
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--precision", "bf16"], &[]), &["--precision bf16"]);
    one_error_line(&sft(&fixture("llama_gqa"), &data, &out, &["--resume", dir.to_str().unwrap()], &[]), &["--resume", "no checkpoint"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_another_model_or_another_data_set() {
    let dir = tmp("refuse");
    let data = data_file(&dir);
    let out = dir.join("out");
    assert_ok(&sft(&fixture("llama_gqa"), &data, &out, &["--max-steps", "2", "--save-every", "1"], &[]));
    let r = ["--max-steps", "2", "--resume", out.to_str().unwrap()];
    one_error_line(&sft(&fixture("bloom_6h"), &data, &dir.join("o2"), &r, &[]), &["another model"]);
    let other = dir.join("other.jsonl");
    std::fs::write(&other, "{\"instruction\": \"Another task\", \"input\": \"\", \"output\": \"Another answer\"}\n").unwrap();
    one_error_line(&sft(&fixture("llama_gqa"), &other, &dir.join("o3"), &r, &[]), &["another data set"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--recipe okapi` takes Okapi's published SFT settings for every flag left unset (here:
/// whole-sequence loss, 10 % validation, seed 0, β₂ 0.95, weight decay 0.05) and a flag that is
/// set still wins; args.json records the resolved values and the recipe.
#[test]
fn recipe_okapi_applies_okapis_settings_under_explicit_flags() {
    let dir = tmp("recipe");
    let out = dir.join("out");
    let o = Command::new(BIN)
        .args(["sft", "--model"])
        .arg(fixture("llama_gqa"))
        .arg("--data")
        .arg(data_file(&dir))
        .arg("--out")
        .arg(&out)
        .args(["--recipe", "okapi", "--max-steps", "2", "--batch-size", "2", "--log-every", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let args = common::json(&out.join("args.json"));
    assert_eq!(args["recipe"], "okapi");
    assert_eq!((args["batch_size"].as_u64(), args["max_steps"].as_u64(), args["max_len"].as_u64()), (Some(2), Some(2), Some(512)), "explicit flags win: {args}");
    assert_eq!((args["mask_prompt"].as_bool(), args["val_fraction"].as_f64(), args["seed"].as_u64()), (Some(false), Some(0.1), Some(0)), "{args}");
    assert_eq!((args["lr"].as_f64(), args["weight_decay"].as_f64(), args["eval_every"].as_u64()), (Some(1e-5), Some(0.05), Some(200)), "{args}");
    assert!(stderr(&o).contains("1 validation examples"), "a 10 % split of 6 examples holds one: {}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--help` of each training command shows every setting's default and, where it differs,
/// Okapi's value; `dpo --recipe okapi` is refused (Okapi has no DPO stage).
#[test]
fn help_names_defaults_and_okapis_values() {
    let help = |cmd: &str| String::from_utf8_lossy(&Command::new(BIN).args([cmd, "--help"]).output().unwrap().stdout).to_string();
    let line = |text: &str, flag: &str| -> String {
        let lines: Vec<&str> = text.lines().collect();
        let i = lines.iter().position(|l| l.trim_start().starts_with(flag)).unwrap_or_else(|| panic!("{flag} not in help"));
        format!("{} {}", lines[i], lines.get(i + 1).copied().unwrap_or_default())
    };
    let sft = help("sft");
    assert!(line(&sft, "--batch-size").contains("[default: 8; Okapi's: 16 (--recipe okapi)]"), "{}", line(&sft, "--batch-size"));
    assert!(line(&sft, "--lr ").contains("[default: 1e-5, as Okapi]"), "{}", line(&sft, "--lr "));
    let reward = help("reward");
    assert!(line(&reward, "--unfrozen-layers").contains("[default: all; Okapi's: 12"), "{}", line(&reward, "--unfrozen-layers"));
    let ppo = help("ppo");
    assert!(line(&ppo, "--lr ").contains("[default: 1e-5; Okapi's: 1e-6"), "{}", line(&ppo, "--lr "));
    assert!(line(&ppo, "--unfrozen-layers").contains("Okapi's: 5"), "{}", line(&ppo, "--unfrozen-layers"));
    let o = Command::new(BIN).args(["dpo", "--model", "m", "--data", "d", "--out", "o", "--recipe", "okapi"]).output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success() && err.lines().count() == 1 && err.contains("Okapi has no DPO stage"), "{err}");
}
