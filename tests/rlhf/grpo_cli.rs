//! `grpo`, `rloo` and composed rewards (`--reward rm=…,lang=…,length=…`, also for `ppo`)
//! through the binary: what a run writes, rewards that add up, resume, LoRA and frozen layers,
//! and bad flags as one clear line with nothing written.

// (the binary's helpers: rlhf_cli.rs)
use super::{jsonl, p, run, tmp, untimed_metrics, BIN};
use crate::common::{one_error_line, tiny_ppo_inputs};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The tiny policy, a reward model trained from it, and prompts in three languages (with
/// `lang` fields, as Okapi's RL files name their language).
fn inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (policy, rm, _, _) = tiny_ppo_inputs(dir, &["--max-steps", "1"], &[]);
    let prompts = dir.join("prompts.jsonl");
    let recs = [("Say hello to a friend.", "en"), ("Hãy chào một người bạn.", "vi"), ("Поздоровайся с другом.", "ru")];
    std::fs::write(&prompts, recs.iter().map(|(i, l)| format!("{}\n", serde_json::json!({"instruction": i, "input": "", "lang": l}))).collect::<String>()).unwrap();
    (policy, rm, prompts)
}

/// A group run's common flags: 2 iterations (unless `iterations`) of 2 prompts × 3 completions
/// (unless `rollouts` or `g`).
fn group_args_with<'a>(cmd: &'a str, policy: &'a Path, prompts: &'a Path, out: &'a Path, iterations: &'a str, rollouts: &'a str) -> Vec<&'a str> {
    group_args_g(cmd, policy, prompts, out, iterations, rollouts, "3")
}

fn group_args_g<'a>(cmd: &'a str, policy: &'a Path, prompts: &'a Path, out: &'a Path, iterations: &'a str, rollouts: &'a str, g: &'a str) -> Vec<&'a str> {
    vec![cmd, "--policy", p(policy), "--prompts", p(prompts), "--out", p(out), "--iterations", iterations, "--rollouts", rollouts, "--num-generations", g, "--chunk-size", "4", "--batch-size", "3", "--max-new-tokens", "5", "--lr", "1e-3", "--save-dtype", "f32"]
}

fn group_args<'a>(cmd: &'a str, policy: &'a Path, prompts: &'a Path, out: &'a Path) -> Vec<&'a str> {
    group_args_with(cmd, policy, prompts, out, "2", "6")
}

#[test]
fn grpo_with_composed_rewards_writes_its_run_and_the_rewards_add_up() {
    let dir = tmp("grpo");
    let (policy, rm, prompts) = inputs(&dir);
    let out = dir.join("out");
    let o = run(&[&group_args("grpo", &policy, &prompts, &out)[..], &["--reward", "rm=1.0,lang=0.5,length=-0.01", "--reward-model", p(&rm), "--samples-every", "1"]].concat());
    ok(&o);
    assert!(out.join("model.safetensors").exists() && !out.join("value_head.safetensors").exists(), "a policy without a value head");
    let args = crate::common::json(&out.join("args.json"));
    assert_eq!((args["command"].as_str(), args["num_generations"].as_u64(), args["loss_type"].as_str(), args["scale_rewards"].as_str()), (Some("grpo"), Some(3), Some("bnpo"), Some("group")));
    let m = jsonl(&out.join("metrics.jsonl"));
    assert_eq!(m.len(), 2);
    for line in &m {
        for key in ["reward_rm_mean", "reward_lang_mean", "reward_length_mean", "frac_reward_zero_std", "kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio_region", "completion_len_max", "loss", "entropy"] {
            assert!(line[key].is_number(), "metrics has no {key}: {line}");
        }
        let want = line["reward_rm_mean"].as_f64().unwrap() + 0.5 * line["reward_lang_mean"].as_f64().unwrap() - 0.01 * line["reward_length_mean"].as_f64().unwrap();
        assert!((line["score_mean"].as_f64().unwrap() - want).abs() < 1e-5, "the score is the weighted sum of the terms: {line}");
    }
    // two optimizer steps an iteration: the second minibatch's policy has moved
    assert!(m.iter().all(|l| l["kl"].as_f64().unwrap() > 0.0 && l["response_kl"].is_number()), "{m:?}");
    for s in jsonl(&out.join("samples.jsonl")) {
        let r = &s["rewards"];
        let len = r["length"].as_f64().unwrap();
        assert!((1.0..=5.0).contains(&len) && [0.0, 1.0].contains(&r["lang"].as_f64().unwrap()), "{s}");
        let total = r["rm"].as_f64().unwrap() + 0.5 * r["lang"].as_f64().unwrap() - 0.01 * len;
        assert!((s["score"].as_f64().unwrap() - total).abs() < 1e-5, "{s}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rloo_with_beta_zero_loads_no_reference_and_needs_no_reward_model() {
    let dir = tmp("rloo");
    let (policy, _, prompts) = inputs(&dir);
    let out = dir.join("out");
    let o = run(&[&group_args("rloo", &policy, &prompts, &out)[..], &["--reward", "lang=1,length=-0.1", "--beta", "0"]].concat());
    ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.contains("reference model") && !e.contains("reward model") && e.contains("rloo iteration 2/2"), "{e}");
    let m = jsonl(&out.join("metrics.jsonl"));
    assert_eq!(m[1]["kl"].as_f64(), Some(0.0), "β = 0: no KL term");
    assert!(m[0].get("reward_rm_mean").is_none() && m[0]["reward_length_mean"].is_number());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grpo_resume_is_bit_identical_to_an_uninterrupted_run() {
    let dir = tmp("grpo-resume");
    let (policy, rm, prompts) = inputs(&dir);
    let grpo = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut a = group_args_with("grpo", &policy, &prompts, out, "4", "6");
        a.extend(["--reward", "rm=1,lang=0.3", "--reward-model", p(&rm), "--num-iterations", "2", "--save-every", "2"]);
        a.extend(extra);
        Command::new(BIN).args(&a).envs(env.iter().copied()).output().unwrap()
    };
    let full = dir.join("full");
    ok(&grpo(&full, &[], &[]));
    let part = dir.join("part");
    let o = grpo(&part, &[], &[("OKAPI_TEST_CRASH_AT", "2:1")]);
    assert!(!o.status.success(), "the run must die while writing the iteration-4 checkpoint");
    let o = grpo(&part, &["--resume", p(&part)], &[]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("after iteration 2/4"));
    assert_eq!(untimed_metrics(&part), untimed_metrics(&full), "metrics.jsonl");
    for f in ["model.safetensors", "samples.jsonl"] {
        assert_eq!(std::fs::read(part.join(f)).unwrap(), std::fs::read(full.join(f)).unwrap(), "{f}");
    }
    // a resume must keep the group settings
    let o = grpo(&part, &["--resume", p(&part), "--loss-type", "grpo"], &[]);
    one_error_line(&o, &["--loss-type"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn grpo_trains_lora_adapters_or_only_the_top_layers() {
    let dir = tmp("grpo-lora");
    let (policy, rm, prompts) = inputs(&dir);
    let lora = dir.join("lora");
    ok(&run(&[&group_args("grpo", &policy, &prompts, &lora)[..], &["--reward", p(&rm), "--lora-r", "2", "--lora-targets", "q_proj,v_proj"]].concat()));
    assert!(lora.join("adapter_model.safetensors").exists() && lora.join("adapter_config.json").exists(), "a LoRA run saves its adapter");
    let top = dir.join("top");
    ok(&run(&[&group_args("grpo", &policy, &prompts, &top)[..], &["--reward", p(&rm), "--unfrozen-layers", "1"]].concat()));
    let load = |d: &Path| okapi::model::Checkpoint::load(d).unwrap().tensors;
    let (before, after) = (load(&policy), load(&top));
    let changed: Vec<&String> = before.keys().filter(|k| before[*k].data != after[*k].data).collect();
    let n = before.keys().filter(|k| k.starts_with("model.layers.")).map(|k| k.split('.').nth(2).unwrap().parse::<usize>().unwrap()).max().unwrap();
    assert!(!changed.is_empty() && changed.iter().all(|k| k.starts_with(&format!("model.layers.{n}.")) || k.starts_with("model.norm") || k.starts_with("lm_head")), "only the top block, the norm and the head train: {changed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ppo_takes_composed_rewards_too() {
    let dir = tmp("ppo-rewards");
    let (policy, rm, prompts) = inputs(&dir);
    let base = |out: &Path| vec!["ppo".to_string(), "--policy".into(), p(&policy).into(), "--prompts".into(), p(&prompts).into(), "--out".into(), p(out).into(), "--iterations".into(), "2".into(), "--rollouts".into(), "4".into(), "--chunk-size".into(), "2".into(), "--ppo-batch-size".into(), "2".into(), "--max-new-tokens".into(), "5".into()];
    let out = dir.join("composed");
    let mut a = base(&out);
    a.extend(["--reward", "rm=1,lang=2", "--reward-model", p(&rm)].map(String::from));
    let o = Command::new(BIN).args(&a).output().unwrap();
    ok(&o);
    let m = jsonl(&out.join("metrics.jsonl"));
    assert!(m[0]["reward_lang_mean"].is_number() && m[0]["vf_loss"].is_number(), "{}", m[0]);
    // no reward model at all: the rule rewards alone
    let out = dir.join("rules");
    let mut a = base(&out);
    a.extend(["--reward", "lang=1,length=-0.05"].map(String::from));
    ok(&Command::new(BIN).args(&a).output().unwrap());
    assert_eq!(jsonl(&out.join("metrics.jsonl")).len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_group_flags_are_one_clear_line_and_nothing_is_written() {
    let dir = tmp("grpo-bad");
    let (policy, rm, prompts) = inputs(&dir);
    let out = dir.join("out");
    let rm_s = p(&rm).to_string();
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        ("4", vec!["--reward", &rm_s], vec!["--rollouts", "6", "multiple of --num-generations 4"]),
        ("1", vec!["--reward", &rm_s], vec!["--num-generations", "at least 2"]),
        ("grpo", vec!["--reward", &rm_s, "--loss-type", "dapo"], vec!["--loss-type", "dapo", "grpo or bnpo or dr_grpo"]),
        ("grpo", vec!["--reward", &rm_s, "--scale-rewards", "std"], vec!["--scale-rewards", "none or group or batch"]),
        ("grpo", vec!["--reward", &rm_s, "--beta", "-1"], vec!["--beta", "-1"]),
        ("grpo", vec!["--reward", &rm_s, "--epsilon", "0"], vec!["--epsilon", "positive"]),
        ("rloo", vec!["--reward", &rm_s, "--scale-rewards", "group"], vec!["--scale-rewards", "RLOO"]),
        ("grpo", vec!["--reward", "bleu=1"], vec!["--reward", "bleu", "unknown reward"]),
        ("grpo", vec!["--reward", "rm=1"], vec!["--reward rm=1", "--reward-model"]),
        ("grpo", vec!["--reward", "lang=1", "--reward-model", &rm_s], vec!["--reward-model", "no rm term"]),
        ("grpo", vec!["--reward", "no-such-dir"], vec!["--reward no-such-dir", "not a directory"]),
        ("grpo", vec!["--reward", "lang=1,lang=2"], vec!["--reward", "lang is given twice"]),
    ];
    for (cmd, extra, needles) in cases {
        // (a number in place of the command: grpo with that many generations)
        let (cmd, g) = if cmd.parse::<usize>().is_ok() { ("grpo", cmd) } else { (cmd, "3") };
        let mut a = group_args_g(cmd, &policy, &prompts, &out, "2", "6", g);
        a.extend(extra);
        one_error_line(&run(&a), &needles);
        assert!(!out.exists(), "{cmd} {needles:?}: nothing may be written");
    }
    // a prompt whose language nobody can tell, under the lang reward
    let unknown = dir.join("unknown.jsonl");
    std::fs::write(&unknown, "{\"instruction\": \"12345\", \"input\": \"\"}\n").unwrap();
    let mut a = group_args("grpo", &policy, &unknown, &out);
    a.extend(["--reward", "lang=1"]);
    one_error_line(&run(&a), &["unknown.jsonl", "language is unknown"]);
    // an existing run is left as it was
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
    let mut a = group_args_with("grpo", &policy, &prompts, &out, "2", "7");
    a.extend(["--reward", &rm_s]);
    one_error_line(&run(&a), &["--rollouts"]);
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(), "{}\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_method_grpo_shows_the_language_consistency_before_and_after() {
    let dir = tmp("demo");
    let out = dir.join("demo");
    let o = run(&["demo", "--method", "grpo", "--out", p(&out), "--epochs", "1", "--ppo-iterations", "2"]);
    ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let table = std::fs::read_to_string(out.join("grpo/lang_consistency.md")).unwrap();
    assert!(stdout.contains(&table), "the demo prints the table it writes");
    let rows: Vec<&str> = table.lines().skip(2).collect();
    assert_eq!(rows.len(), 28, "27 languages and all: {table}");
    // every rate is a fraction of the language's prompts; `all` counts the 230 bundled prompts
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        let n: f64 = cells[1].parse().unwrap();
        for rate in &cells[2..] {
            let r: f64 = rate.parse().unwrap();
            assert!((0.0..=1.0).contains(&r) && ((r * n).round() - r * n).abs() < 0.02 * n, "{row}");
        }
    }
    assert!(rows[27].starts_with("| all | 230 |"), "{}", rows[27]);
    assert!(stdout.contains("GRPO     mean reward") && stdout.contains("language consistency"), "{stdout}");
    let m = jsonl(&out.join("grpo/metrics.jsonl"));
    assert!(m.len() == 2 && m[0]["reward_lang_mean"].is_number() && m[0]["reward_rm_mean"].is_number());
    let _ = std::fs::remove_dir_all(&dir);
}
