//! `--harness v0.4`: lm-evaluation-harness 0.4.x's tokenization, logliks and metrics, against
//! fixtures written by transformers following the harness's rules, and the default (v0.3)
//! untouched.
//!
//! tests/fixtures/eval_v04 (tests/fixtures/generate_eval_v04.py, run by hand; with
//! `--check-lm-eval` it also asserts that lm_eval 0.4.13's own HFLM gives the same pairs and
//! logliks): probes with trailing / leading / non-ASCII whitespace, joins that merge across the
//! boundary, several scripts, empty contexts and BOS text, on llama_gqa (BOS-adding tokenizer),
//! gemma2_swa (Gemma: the same tokenizer) and bloom_6h (no special tokens); m_arc items built
//! the harness way with the 0.4 default seed 1234 and llama_gqa's logliks and predictions
//! (acc, acc_norm by characters, acc_bytes by UTF-8 bytes) for them.

mod common;

use common::fixture;
use okapi::data::{read_records, Tokenizer};
use okapi::model::{Model, ModelConfig};
use okapi::rlhf::eval::metrics::{aggregate, item_metrics, item_metrics_v04};
use okapi::rlhf::eval::prompts::continuations;
use okapi::rlhf::eval::{prepare_items, run_eval, score_items_with, EvalConfig, EvalSource, Harness, ItemRequest, ItemScore, PairEncoder, ScoreOptions, Task};
use okapi::runtime::CpuBackend;
use serde::Deserialize;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

#[derive(Deserialize)]
struct Probe {
    context: String,
    continuation: String,
}

#[derive(Deserialize)]
struct PairWant {
    context_enc: Vec<u32>,
    continuation_enc: Vec<u32>,
    loglik: f64,
}

#[derive(Deserialize)]
struct ArcRequest {
    source: String,
    id: String,
    context: String,
    continuation: String,
}

#[derive(Deserialize)]
struct ArcWant {
    source: String,
    id: String,
    gold: usize,
    logliks: Vec<f64>,
    pred: usize,
    pred_norm: usize,
    pred_bytes: usize,
}

fn v04(name: &str) -> PathBuf {
    fixture("eval_v04").join(name)
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-4 * want.abs().max(1.0)
}

fn encoder(model: &str, h: Harness) -> (Tokenizer, PairEncoder) {
    let dir = fixture(model);
    let tok = Tokenizer::load(&dir).unwrap();
    let enc = PairEncoder::new(h, &ModelConfig::load(&dir).unwrap(), &tok).unwrap();
    (tok, enc)
}

#[test]
fn v04_pairs_are_the_harness_ones() {
    let probes: Vec<Probe> = read_records(&v04("pairs.jsonl")).unwrap();
    for model in ["llama_gqa", "gemma2_swa", "bloom_6h"] {
        let want: Vec<PairWant> = read_records(&v04(&format!("{model}_pairs_expected.jsonl"))).unwrap();
        let (tok, enc) = encoder(model, Harness::V04);
        let (_, old) = encoder(model, Harness::V03);
        let mut differ = 0;
        for (p, w) in probes.iter().zip(&want) {
            let got = enc.pair(&tok, &p.context, &p.continuation).unwrap();
            assert_eq!(got, (w.context_enc.clone(), w.continuation_enc.clone()), "{model}: {:?} + {:?}", p.context, p.continuation);
            differ += (old.pair(&tok, &p.context, &p.continuation).unwrap() != got) as usize;
        }
        // BOS: the 0.4 prefix token is the tokenizer's BOS for all three (<s> in their
        // tokenizer_config.json), v0.3's the EOS
        assert_eq!((enc.prefix, old.prefix), (1, 2), "{model}");
        assert!(differ >= 4, "{model}: v0.4 and v0.3 differ on {differ} probes only");
    }
    // the LLaMA-style tokenizer adds <s> to a context, BLOOM's adds nothing
    let (tok, enc) = encoder("llama_gqa", Harness::V04);
    assert_eq!(enc.pair(&tok, "Answer:", " x").unwrap().0[0], 1);
    let (tok, enc) = encoder("bloom_6h", Harness::V04);
    assert_ne!(enc.pair(&tok, "Answer:", " x").unwrap().0[0], 1);
    // windows: max_position_embeddings, else the tokenizer's model_max_length (BLOOM: 2048)
    assert_eq!((encoder("llama_gqa", Harness::V04).1.max_length, enc.max_length), (64, 2048));
}

/// Items of one continuation each (the probes), scored by the cached and the from-scratch paths.
fn check_probe_logliks(model: &str) {
    let probes: Vec<Probe> = read_records(&v04("pairs.jsonl")).unwrap();
    let want: Vec<PairWant> = read_records(&v04(&format!("{model}_pairs_expected.jsonl"))).unwrap();
    let dir = fixture(model);
    let (m, tok) = (Model::load(CpuBackend, &dir).unwrap(), Tokenizer::load(&dir).unwrap());
    let enc = PairEncoder::new(Harness::V04, &m.cfg, &tok).unwrap();
    let items: Vec<ItemRequest> = probes.iter().map(|p| ItemRequest { context: p.context.clone(), continuations: vec![p.continuation.clone()] }).collect();
    for (cache, bs) in [(true, 1), (true, 4), (false, 3)] {
        let (got, stats) = score_items_with(&m, &tok, &items, ScoreOptions { batch_size: bs, cache, chunk: 0 }, &enc).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let ItemScore::Scored { logliks, .. } = g else { panic!("{model} probe {i}: {g:?}") };
            assert!(close(logliks[0], w.loglik), "{model} cache={cache} probe {i}: {} vs transformers {}", logliks[0], w.loglik);
        }
        if cache {
            // the probe longer than llama_gqa's and gemma2_swa's window goes from scratch
            assert!(stats.items_cached > 0 && (stats.items_fallback > 0) == (model != "bloom_6h"), "{model}: {stats:?}");
        }
    }
}

#[test]
fn v04_logliks_match_transformers_llama() {
    check_probe_logliks("llama_gqa");
}

#[test]
fn v04_logliks_match_transformers_gemma2_and_bloom() {
    check_probe_logliks("gemma2_swa");
    check_probe_logliks("bloom_6h");
}

fn arc_sources() -> Vec<(EvalSource, usize)> {
    let d = fixture("eval");
    let src = |p: PathBuf, lang: Option<&str>| EvalSource::from_file(&p, lang).unwrap();
    vec![(src(d.join("arc_vi.json"), None), 2), (src(d.join("arc_ru.jsonl"), None), 2), (src(v04("arc_mixed.jsonl"), Some("mix")), 0)]
}

#[test]
fn v04_arc_eval_matches_the_harness_way() {
    let dir = fixture("llama_gqa");
    let (model, tok) = (Model::load(CpuBackend, &dir).unwrap(), Tokenizer::load(&dir).unwrap());
    let reqs: Vec<ArcRequest> = read_records(&v04("arc_requests.jsonl")).unwrap();
    let want: Vec<ArcWant> = read_records(&v04("llama_gqa_arc_expected.jsonl")).unwrap();
    let mut got_items = Vec::new();
    for (src, k) in arc_sources() {
        // the 0.4 defaults: seed 1234; shots from the evaluated file minus the item
        let cfg = EvalConfig { num_fewshot: Some(k), batch_size: 3, ..EvalConfig::with_harness(Task::Arc, Harness::V04) };
        assert_eq!(cfg.seed, 1234);
        let (items, msgs, _) = prepare_items(&cfg, std::slice::from_ref(&src), &[]).unwrap();
        assert!(msgs.is_empty(), "{msgs:?}");
        let name = PathBuf::from(&src.name).file_name().unwrap().to_string_lossy().to_string();
        let ours: Vec<(String, String)> = items.iter().flat_map(|it| continuations(&it.prompted).into_iter().map(move |c| (it.context.clone(), c))).collect();
        let theirs: Vec<(String, String)> = reqs.iter().filter(|r| r.source == name).map(|r| (r.context.clone(), r.continuation.clone())).collect();
        assert_eq!(ours, theirs, "{name}: the requests");
        assert!(reqs.iter().filter(|r| r.source == name).all(|r| items.iter().any(|it| it.id == r.id)));
        let rep = run_eval(&model, &tok, &cfg, &[src], &[]).unwrap();
        got_items.extend(rep.items.clone());
        let table = rep.table();
        assert!(table.contains("acc_bytes") && table.contains("harness v0.4"), "{table}");
        assert_eq!(rep.summary_json()["harness"], "v0.4");
        assert!(rep.summary_json()["acc_bytes"].is_number());
    }
    assert_eq!(got_items.len(), want.len());
    let mut differ = 0;
    for (g, w) in got_items.iter().zip(&want) {
        assert_eq!(g.id, w.id, "{}", w.source);
        for (a, b) in g.logliks.iter().zip(&w.logliks) {
            assert!(close(*a, *b), "{} {}: {a} vs transformers {b}", w.source, w.id);
        }
        let m = &g.metrics;
        assert_eq!((g.gold, m.pred, m.pred_norm, m.pred_bytes), (w.gold, w.pred, w.pred_norm, Some(w.pred_bytes)), "{} {}", w.source, w.id);
        differ += (m.acc_norm != m.acc_bytes.unwrap()) as usize;
        let line = g.to_json(Task::Arc, "m");
        assert_eq!((line["pred_bytes"].as_u64(), line["acc_bytes"].as_f64()), (Some(w.pred_bytes as u64), m.acc_bytes));
    }
    assert!(differ > 0, "some non-ASCII items score differently by characters and by bytes");
}

#[test]
fn acc_bytes_differs_from_acc_norm_on_non_ascii_choices() {
    // "đây" is 3 characters but 5 bytes, "abcd" 4 of each: -6 / 3 < -5 / 4 (by characters
    // "abcd" wins), -6 / 5 > -5 / 4 (by bytes "đây" wins)
    let choices = vec!["đây".to_string(), "abcd".to_string()];
    let m = item_metrics_v04(&[-6.0, -5.0], &choices, 0, None);
    assert_eq!((m.pred, m.pred_norm, m.pred_bytes), (1, 1, Some(0)));
    assert_eq!((m.acc, m.acc_norm, m.acc_bytes), (0.0, 0.0, Some(1.0)));
    // CJK: 3 bytes a character
    let m = item_metrics_v04(&[-5.0, -4.0], &["北京".to_string(), "Rome".to_string()], 0, None);
    assert_eq!((m.pred_norm, m.pred_bytes), (1, Some(0)));
    // v0.3 has no acc_bytes, and neither has TruthfulQA (its 0.4 tasks report acc only)
    assert_eq!(item_metrics(&[-6.0, -5.0], &choices, 0, None).acc_bytes, None);
    assert_eq!(item_metrics_v04(&[-1.0, -2.0], &choices, 0, Some((&[-1.0, -2.0], &[true, false]))).acc_bytes, None);
    let items = [item_metrics_v04(&[-6.0, -5.0], &choices, 0, None), item_metrics_v04(&[-6.0, -5.0], &choices, 1, None)];
    let row = aggregate("vi", &items.iter().collect::<Vec<_>>(), false);
    assert_eq!(row.acc_bytes.map(|s| s.mean), Some(0.5));
    assert_eq!(aggregate("vi", &[&item_metrics(&[-1.0], &["a".into()], 0, None)], false).acc_bytes, None);
}

#[test]
fn v04_truthfulqa_is_the_okapi_port() {
    // 0.4's Okapi TruthfulQA: the question preprocessed like HellaSwag's text, mc1's answer
    // the first choice, mc2 the mass of the label-1 answers
    let data = EvalSource { name: "truthfulqa_vi.json".into(), lang: None, text: r#"[{"question":"  Tôi  yêu [x] ai?","mc1_targets":{"choices":["Không biết.","Mọi người."],"labels":[0,1]},"mc2_targets":{"choices":["Không.","Có.","Ai?"],"labels":[0,1,1]}}]"#.into() };
    let (items, _, _) = prepare_items(&EvalConfig::with_harness(Task::TruthfulQa, Harness::V04), std::slice::from_ref(&data), &[]).unwrap();
    assert!(items[0].context.ends_with("\n\nQ: Tôi yêu ai?\nA:"), "{:?}", items[0].context);
    assert_eq!(items[0].prompted.gold, 0);
    let (old, _, _) = prepare_items(&EvalConfig::new(Task::TruthfulQa), &[data], &[]).unwrap();
    assert!(old[0].context.ends_with("\n\nQ:   Tôi  yêu [x] ai?\nA:"));
    assert_eq!(old[0].prompted.gold, 1);
}

// ---- the command line ----------------------------------------------------------------------

fn okapi(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn cli_default_is_v03_and_v04_reports_acc_bytes() {
    let s = common::Scratch::new("eval_harness_cli");
    let model = fixture("llama_gqa");
    let data = fixture("eval").join("arc_vi.json");
    let run = |extra: &[&str], out: &str| {
        let o = s.root.join(out);
        let mut args = vec!["eval", "--model", model.to_str().unwrap(), "--task", "arc", "--data", data.to_str().unwrap(), "--num-fewshot", "2", "--output", o.to_str().unwrap()];
        args.extend(extra);
        let (ok, stdout, stderr) = okapi(&args);
        assert!(ok, "{stderr}");
        (stdout, std::fs::read(&o).unwrap())
    };
    // the default is v0.3, byte for byte, with the lines and summary it always had
    let (default_out, default_items) = run(&[], "default.jsonl");
    let (v03_out, v03_items) = run(&["--harness", "v0.3"], "v03.jsonl");
    assert_eq!((&default_out, &default_items), (&v03_out, &v03_items));
    let mut keys: Vec<String> = lines(&s.root.join("default.jsonl"))[0].as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["gold", "id", "lang", "logliks", "model", "pred", "pred_norm", "task", "truncated"]);
    assert!(!default_out.contains("acc_bytes") && !default_out.contains("harness"), "{default_out}");
    // v0.4: seed 1234 by default, so its items are check_eval's with that seed (the fixture)
    let (v04_out, _) = run(&["--harness", "v0.4"], "v04.jsonl");
    let (_, seeded) = run(&["--harness", "v0.4", "--seed", "1234"], "v04_seeded.jsonl");
    assert_eq!(std::fs::read(s.root.join("v04.jsonl")).unwrap(), seeded);
    let want: Vec<ArcWant> = read_records(&v04("llama_gqa_arc_expected.jsonl")).unwrap();
    for (l, w) in lines(&s.root.join("v04.jsonl")).iter().zip(want.iter().filter(|w| w.source == "arc_vi.json")) {
        assert_eq!(l["id"], w.id.as_str());
        assert_eq!(l["pred_bytes"], w.pred_bytes);
        for (a, b) in l["logliks"].as_array().unwrap().iter().zip(&w.logliks) {
            assert!(close(a.as_f64().unwrap(), *b), "{l}");
        }
    }
    let summary: Value = serde_json::from_str(v04_out.lines().last().unwrap()).unwrap();
    assert_eq!(summary["harness"], "v0.4");
    assert!(summary["acc_bytes"].is_number() && summary["langs"]["vi"]["acc_bytes_stderr"].is_number(), "{summary}");
    assert!(v04_out.contains("acc_bytes"), "{v04_out}");
    let (ok, _, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "arc", "--data", data.to_str().unwrap(), "--harness", "v0.5"]);
    assert!(!ok && stderr.trim().lines().last().unwrap().starts_with("error: --harness: unknown harness `v0.5`"), "{stderr}");
}
