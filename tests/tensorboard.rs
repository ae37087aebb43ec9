//! `--tensorboard DIR` through the binary: the event files parse back (framing and CRCs checked
//! by `okapi::rlhf::tensorboard::read_events`) to exactly the numbers of metrics.jsonl, step by
//! step, for a training command (reward: loss, accuracy, validation) and for PPO (scalars per
//! iteration, samples as text); a resumed run starts a new file with a session start at the first
//! step it computes.

mod common;

use common::{fixture, metrics, tiny_ppo_inputs, Scratch};
use okapi::rlhf::tensorboard::{read_events, Event};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");


fn run(args: &[&str]) -> Output {
    let o = Command::new(BIN).args(args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The event files of `dir`, oldest first (their names start with the creation time).
fn event_files(dir: &Path) -> Vec<Vec<Event>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.iter().all(|f| f.file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents.")), "{files:?}");
    files.iter().map(|f| read_events(f).unwrap()).collect()
}

/// (tag, step) → value of every scalar.
fn scalars(events: &[Event]) -> BTreeMap<(String, u64), f32> {
    events.iter().filter_map(|e| if let Event::Scalar { step, tag, value } = e { Some(((tag.clone(), *step), *value)) } else { None }).collect()
}

/// Every numeric field of every metrics line but the step keys, as TensorBoard holds it (f32).
fn expected(out: &Path, step_key: &str) -> BTreeMap<(String, u64), f32> {
    let mut want = BTreeMap::new();
    for v in metrics(out) {
        let step = v[step_key].as_u64().unwrap();
        for (k, x) in v.as_object().unwrap() {
            if let (Some(x), false) = (x.as_f64(), k == step_key || k == "step") {
                want.insert((k.clone(), step), x as f32);
            }
        }
    }
    want
}

#[test]
fn training_metrics_parse_back_from_the_event_files() {
    let scratch = Scratch::new("reward");
    let dir = scratch.root.clone();
    let (out, tb) = (dir.join("rm"), dir.join("tb"));
    let (model, data) = (fixture("bloom_6h"), fixture("ranking_data.json"));
    let args = ["reward", "--model", p(&model), "--data", p(&data), "--out", p(&out), "--max-steps", "4", "--save-every", "2", "--val-fraction", "0.25", "--eval-every", "2", "--tensorboard", p(&tb)];
    run(&args);
    let files = event_files(&tb);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0][0], Event::FileVersion("brain.Event:2".into()));
    let got = scalars(&files[0]);
    let want = expected(&out, "step");
    assert_eq!(got, want);
    for tag in ["loss", "accuracy", "lr", "val_loss"] {
        assert!(got.keys().any(|(t, _)| t == tag), "{tag} is logged: {:?}", got.keys().collect::<Vec<_>>());
    }
    let args_json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("args.json")).unwrap()).unwrap();
    assert_eq!(args_json["tensorboard"], Value::String(p(&tb).into()));

    // stopped after step 3 (checkpoint at 2) and resumed: a new file that starts a session at
    // step 3, then steps 3 and 4 again
    let (out2, tb2) = (dir.join("rm2"), dir.join("tb2"));
    let (o, t) = (p(&out2).to_string(), p(&tb2).to_string());
    let mut cut = args.to_vec();
    cut[6] = &o;
    *cut.last_mut().unwrap() = &t;
    let stopped = Command::new(BIN).args(&cut).env("OKAPI_TEST_EXIT_AFTER_STEP", "3").output().unwrap();
    assert!(!stopped.status.success());
    run(&[&cut[..], &["--resume", &o]].concat());
    let files = event_files(&tb2);
    assert_eq!(files.len(), 2, "one file per invocation");
    assert_eq!(scalars(&files[0]).keys().map(|k| k.1).max(), Some(3));
    assert_eq!(files[1][1], Event::SessionStart { step: 3 });
    // what TensorBoard shows: the first file below the session start, then the second
    let mut merged: BTreeMap<(String, u64), f32> = scalars(&files[0]).into_iter().filter(|(k, _)| k.1 < 3).collect();
    merged.extend(scalars(&files[1]));
    assert_eq!(merged, expected(&out2, "step"));
}

#[test]
fn ppo_metrics_and_samples_parse_back() {
    let scratch = Scratch::new("ppo");
    let dir = scratch.root.clone();
    let (policy, rm, prompts, _) = tiny_ppo_inputs(&dir, &["--max-steps", "1"], &["Say hi", "Đếm đến ba"]);
    let (out, tb) = (dir.join("ppo"), dir.join("tb"));
    run(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&out), "--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "5", "--samples-every", "1", "--tensorboard", p(&tb)]);
    let files = event_files(&tb);
    assert_eq!(files.len(), 1);
    let got = scalars(&files[0]);
    assert_eq!(got, expected(&out, "iteration"));
    for tag in ["score_mean", "kl", "beta", "entropy", "clipfrac", "response_len", "time_generate_s"] {
        assert!(got.contains_key(&(tag.to_string(), 2)), "{tag} at iteration 2");
    }
    let texts: Vec<(u64, &String)> = files[0].iter().filter_map(|e| if let Event::Text { step, tag, text } = e { assert_eq!(tag, "samples"); Some((*step, text)) } else { None }).collect();
    assert_eq!(texts.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    let samples: Vec<Value> = std::fs::read_to_string(out.join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for s in &samples {
        let (it, response) = (s["iteration"].as_u64().unwrap(), s["response"].as_str().unwrap());
        let text = texts.iter().find(|t| t.0 == it).unwrap().1;
        assert!(text.contains(&format!("**response** {response}")), "iteration {it}: {text}");
    }
}
