//! `--config FILE.toml|yaml|json`: flags from a file, command-line flags win, a run's args.json
//! repeats the run, and a bad file is one line naming the file and the key.

mod common;

use common::{fixture, metrics, one_error_line, tiny_ppo_inputs, Scratch, SHORT_SFT_RECORDS, SHORT_TEMPLATE};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The numbers of a run's metrics.jsonl that the run decides (not its timings).
fn trajectory(out: &Path) -> Vec<Value> {
    let timing = |k: &str| k.ends_with("_s") || k.ends_with("per_s") || k.starts_with("time_");
    metrics(out).into_iter().map(|mut m| {
        m.as_object_mut().unwrap().retain(|k, _| !timing(k));
        m
    }).collect()
}

fn same_run(a: &Path, b: &Path, model_file: &str) {
    let (ta, tb) = (trajectory(a), trajectory(b));
    assert!(!ta.is_empty());
    assert_eq!(ta, tb, "{} and {} trained differently", a.display(), b.display());
    assert_eq!(std::fs::read(a.join(model_file)).unwrap(), std::fs::read(b.join(model_file)).unwrap(), "{model_file} differs");
}

fn sft_inputs(dir: &Path) -> (String, String) {
    let (data, tpl) = (dir.join("sft.jsonl"), dir.join("template.json"));
    std::fs::write(&data, SHORT_SFT_RECORDS).unwrap();
    std::fs::write(&tpl, SHORT_TEMPLATE).unwrap();
    (p(&data).to_string(), p(&tpl).to_string())
}

/// The same SFT run from a TOML file, a YAML file and the first run's args.json; a flag on the
/// command line wins over the file; args.json records every flag and the file.
#[test]
fn toml_yaml_and_args_json_configs_give_the_same_run() {
    let scratch = Scratch::new("formats");
    let dir = &scratch.root;
    let (data, tpl) = sft_inputs(dir);
    let model = fixture("llama_gqa");
    let toml = dir.join("sft.toml");
    std::fs::write(&toml, format!("model = {:?}\ndata = [{data:?}]\ntemplate = {tpl:?}\nmax-steps = 5\nbatch_size = 2\nlr = 1e-3\nadam_betas = [0.9, 0.95]\nno_shuffle = true\nmax_len = 60\nlog_every = 1\nseed = 7\ngrad_checkpointing = false\nepochs = 3\n", p(&model))).unwrap();
    let a = dir.join("a");
    // --max-steps on the command line wins over the file's 5
    ok(&["sft", "--config", p(&toml), "--out", p(&a), "--max-steps", "3"]);
    let args = common::json(&a.join("args.json"));
    assert_eq!(args["config"], p(&toml));
    let flags = &args["flags"];
    assert_eq!((flags["max_steps"].as_u64(), flags["batch_size"].as_u64(), flags["seed"].as_u64()), (Some(3), Some(2), Some(7)), "{flags}");
    assert_eq!((flags["adam_betas"].as_str(), flags["no_shuffle"].as_bool(), flags["lr"].as_f64()), (Some("0.9,0.95"), Some(true), Some(0.001)), "{flags}");
    assert_eq!(flags["data"], serde_json::json!([data]));
    assert!(flags.get("resume").is_none() && flags.get("overwrite").is_none(), "args.json keeps out how the run treated its directory: {flags}");
    assert_eq!((args["max_steps"].as_u64(), args["shuffle"].as_bool()), (Some(3), Some(false)), "the resolved settings beside the flags");
    assert_eq!(metrics(&a).len(), 3);

    let yaml = dir.join("sft.yaml");
    std::fs::write(&yaml, format!("model: {}\ndata:\n  - {data}\ntemplate: {tpl}\nmax_steps: 3\nbatch-size: 2\nlr: 0.001\nadam_betas: \"0.9,0.95\"\nno_shuffle: true\nmax_len: 60\nseed: 7\nwarmup_steps: null\nepochs: 3\n", p(&model))).unwrap();
    let b = dir.join("b");
    ok(&["sft", "--config", p(&yaml), "--out", p(&b)]);
    same_run(&a, &b, "model.safetensors");

    // the run's own args.json: the same run into another directory
    let c = dir.join("c");
    ok(&["sft", "--config", p(&a.join("args.json")), "--out", p(&c)]);
    same_run(&a, &c, "model.safetensors");
    assert_eq!(common::json(&c.join("args.json"))["flags"], args["flags"].as_object().map(|f| {
        let mut f = f.clone();
        f.insert("out".into(), Value::String(p(&c).into()));
        Value::Object(f)
    }).unwrap(), "the repeat records the same flags");
    // without --out the args.json points at the first run's directory, which is refused as it holds a run
    let before = std::fs::read(a.join("model.safetensors")).unwrap();
    one_error_line(&run(&["sft", "--config", p(&a.join("args.json"))]), &["already holds a run"]);
    assert_eq!(std::fs::read(a.join("model.safetensors")).unwrap(), before);
}

/// PPO's args.json (lists of paths, sampling and KL settings) repeats the PPO run.
#[test]
fn ppo_args_json_repeats_the_run() {
    let scratch = Scratch::new("ppo");
    let dir = &scratch.root;
    let (policy, rm, prompts, _) = tiny_ppo_inputs(dir, &["--max-steps", "2"], &["Name a colour.", "Đếm đến ba."]);
    let a = dir.join("a");
    ok(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&a), "--iterations", "2", "--rollouts", "2", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "4", "--init-kl-coef", "0.05", "--temperature", "0.9", "--seed", "11"]);
    let b = dir.join("b");
    ok(&["ppo", "--config", p(&a.join("args.json")), "--out", p(&b)]);
    same_run(&a, &b, "model.safetensors");
    assert_eq!(std::fs::read(a.join("value_head.safetensors")).unwrap(), std::fs::read(b.join("value_head.safetensors")).unwrap());
}

/// Every bad config is one line naming the file (and the key), exit non-zero, nothing written.
#[test]
fn bad_configs_are_one_line_each_and_write_nothing() {
    let scratch = Scratch::new("bad");
    let dir = &scratch.root;
    let (data, tpl) = sft_inputs(dir);
    let model = fixture("llama_gqa");
    let base = format!("model = {:?}\ndata = [{data:?}]\ntemplate = {tpl:?}\nmax_steps = 1\nmax_len = 60\n", p(&model));
    let out = dir.join("out");
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown.toml", format!("{base}batch_sise = 2\n"), vec!["unknown.toml", "key `batch_sise`", "not a flag of `okapi-train sft`"]),
        ("switch.toml", format!("{base}no_shuffle = \"yes\"\n"), vec!["key `no_shuffle`", "expected true or false"]),
        ("value.toml", format!("{base}batch_size = \"eight\"\n"), vec!["value.toml", "key `batch_size`", "invalid value 'eight'"]),
        ("syntax.toml", format!("{base}lr = = 1\n"), vec!["syntax.toml", "not valid TOML at line 6, column 6"]),
        ("table.toml", format!("{base}[lora]\nr = 8\n"), vec!["key `lora`", "flags are flat keys"]),
        ("list.yaml", "- 1\n- 2\n".to_string(), vec!["list.yaml", "expected a table of flags", "a list"]),
        ("broken.yaml", "lr: [1\n".to_string(), vec!["broken.yaml", "not valid YAML"]),
        ("broken.json", "{\"lr\": }".to_string(), vec!["broken.json", "not valid JSON", "line 1"]),
        ("flags.ini", "lr=1\n".to_string(), vec!["flags.ini", "expected a .toml, .yaml, .yml or .json file"]),
        ("other.json", serde_json::json!({"command": "dpo", "flags": {"beta": 0.1}}).to_string(), vec!["other.json", "the flags of `okapi-train dpo`, not of `okapi-train sft`"]),
        ("old.json", serde_json::json!({"command": "sft", "lr": 0.1}).to_string(), vec!["old.json", "without its `flags`"]),
        ("resume.toml", format!("{base}resume = \"x\"\n"), vec!["key `resume`", "not a flag"]),
    ];
    for (name, text, needles) in &cases {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        one_error_line(&run(&["sft", "--config", p(&f), "--out", p(&out)]), needles);
        assert!(!out.exists(), "{name}: nothing is written");
    }
    one_error_line(&run(&["sft", "--config", p(&dir.join("missing.toml")), "--out", p(&out)]), &["missing.toml", "No such file"]);
    let good = dir.join("unknown.toml");
    one_error_line(&run(&["sft", "--config", p(&good), "--config", p(&good)]), &["--config given twice"]);
    // a required flag neither on the command line nor in the file is still clap's one line
    let partial = dir.join("partial.toml");
    std::fs::write(&partial, format!("data = [{data:?}]\n")).unwrap();
    one_error_line(&run(&["sft", "--config", p(&partial), "--out", p(&out)]), &["--model"]);
    assert!(!out.exists());
}

/// `--config` is on every command's --help.
#[test]
fn every_command_takes_config() {
    for cmd in ["demo", "sft", "reward", "score", "ppo", "grpo", "rloo", "dpo", "tokenizer", "init", "loglik", "generate", "eval", "merge", "plan", "bench", "report", "plot", "launch"] {
        let help = String::from_utf8_lossy(&ok(&[cmd, "--help"]).stdout).to_string();
        assert!(help.contains("--config <FILE>"), "{cmd} --help: {help}");
    }
}

/// A config works for a command that writes no args.json too (init: the preset and seed).
#[test]
fn config_for_init() {
    let scratch = Scratch::new("init");
    let dir = &scratch.root;
    let cfg = dir.join("init.json");
    std::fs::write(&cfg, serde_json::json!({"arch": "llama", "preset": "tiny", "seed": 5, "tokenizer": p(&fixture("llama_gqa").join("tokenizer.json"))}).to_string()).unwrap();
    let (a, b) = (dir.join("a"), dir.join("b"));
    ok(&["init", "--config", p(&cfg), "--out", p(&a)]);
    ok(&["init", "--arch", "llama", "--preset", "tiny", "--seed", "5", "--tokenizer", p(&fixture("llama_gqa").join("tokenizer.json")), "--out", p(&b)]);
    assert_eq!(std::fs::read(a.join("model.safetensors")).unwrap(), std::fs::read(b.join("model.safetensors")).unwrap());
}
