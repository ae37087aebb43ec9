//! `okapi-train eval`: the shared-context scoring equals per-request scoring and transformers;
//! prompts equal the harness's (hand-written expected strings, one per task); HellaSwag's
//! preprocessing; metric aggregation; bad input through the CLI.
//!
//! tests/fixtures/eval: two m_arc files (vi JSON array, ru JSONL), the (context, continuation)
//! requests tests/fixtures/check_eval.py builds from them independently (0- and 2-shot, seed
//! 42), and transformers' logliks of those requests on the llama_gqa and bloom_6h fixtures.
//! Regenerate (from the repository root, K = 0 and 2, M = llama_gqa and bloom_6h):
//!   /opt/pyref/bin/python tests/fixtures/check_eval.py --data tests/fixtures/eval/arc_vi.json
//!       tests/fixtures/eval/arc_ru.jsonl --num-fewshot K --write-requests tests/fixtures/eval/arc_Kshot_requests.jsonl
//!   /opt/pyref/bin/python tests/fixtures/check_loglik.py --model tests/fixtures/M
//!       --data tests/fixtures/eval/arc_Kshot_requests.jsonl --write-expected tests/fixtures/eval/M_arc_Kshot_expected.jsonl

mod common;

use common::fixture;
use okapi::data::{read_records, LoglikRequest, Tokenizer};
use okapi::model::Model;
use okapi::rlhf::eval::metrics::{aggregate, item_metrics, mean_stderr};
use okapi::rlhf::eval::prompts::{continuations, hellaswag_preprocess, py_capitalize, QA_PROMPT};
use okapi::rlhf::eval::{prepare_items, run_eval, score_items, EvalConfig, EvalSource, ItemRequest, ItemScore, MmluPrompt, ScoreOptions, Task};
use okapi::rlhf::score_loglik;
use okapi::runtime::CpuBackend;
use std::path::PathBuf;
use std::process::Command;

fn load(name: &str) -> (Model<CpuBackend>, Tokenizer) {
    let dir = fixture(name);
    (Model::load(CpuBackend, &dir).unwrap(), Tokenizer::load(&dir).unwrap())
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-4 * want.abs().max(1.0)
}

fn src(name: &str, text: &str) -> EvalSource {
    EvalSource { name: name.into(), lang: None, text: text.into() }
}

fn arc_sources() -> Vec<EvalSource> {
    let d = fixture("eval");
    vec![EvalSource::from_file(&d.join("arc_vi.json"), None).unwrap(), EvalSource::from_file(&d.join("arc_ru.jsonl"), None).unwrap()]
}

/// Items exercising the fast path: several languages, 2–5 choices, single- and multi-token
/// choices, an empty context, and one context longer than llama_gqa's 64-token window.
fn mixed_items() -> Vec<ItemRequest> {
    let it = |c: &str, conts: &[&str]| ItemRequest { context: c.into(), continuations: conts.iter().map(|s| s.to_string()).collect() };
    let long = "Once upon a time, in a small village near the sea, there lived an old fisherman. Ngày xưa, có một ông lão đánh cá. Каждое утро он выходил в море.";
    vec![
        it("Question: Nước đóng băng ở nhiệt độ nào?\nAnswer:", &[" 0 độ C", " 100 độ C", " 50 độ C"]),
        it("Question: Сколько ног у паука?\nAnswer:", &[" Шесть", " Восемь", " Десять", " Четыре"]),
        it("", &[" The weather is nice today.", " x"]),
        it(long, &[" и возвращался вечером.", " 好", " ok", " nein", " வணக்கம்"]),
        it("北京是中国的", &["首都。", "城市"]),
        it("Question: القاهرة هي عاصمة؟\nAnswer:", &[" مصر", " فرنسا"]),
    ]
}

fn check_cached_equals_per_request(name: &str) {
    let (model, tok) = load(name);
    let max_len = model.cfg.max_length();
    let items = mixed_items();
    let reqs: Vec<LoglikRequest> = items.iter().flat_map(|it| it.continuations.iter().map(|c| LoglikRequest { context: it.context.clone(), continuation: c.clone() })).collect();
    let want = score_loglik(&model, &tok, &reqs, 1).unwrap();
    let mut worst = 0f64;
    for (bs, chunk) in [(1, 0), (2, 1), (3, 3), (16, 0), (4, 5)] {
        let (got, stats) = score_items(&model, &tok, &items, ScoreOptions { batch_size: bs, cache: true, chunk }).unwrap();
        let mut k = 0;
        for (i, (it, g)) in items.iter().zip(&got).enumerate() {
            let ItemScore::Scored { logliks, truncated } = g else { panic!("{name} item {i}: {g:?}") };
            let ctx_len = if it.context.is_empty() { 1 } else { tok.encode(&it.context, false).unwrap().len() };
            let over = it.continuations.iter().any(|c| ctx_len + tok.encode(c, false).unwrap().len() > max_len + 1);
            assert_eq!(*truncated, over, "{name} item {i}: truncated flag");
            for (j, ll) in logliks.iter().enumerate() {
                worst = worst.max((ll - want[k].loglik).abs());
                assert!(close(*ll, want[k].loglik), "{name} batch {bs} chunk {chunk} item {i} choice {j}: {ll} vs score_loglik {}", want[k].loglik);
                k += 1;
            }
        }
        assert!(stats.items_cached > 0, "{name}: the fast path ran");
        if name == "llama_gqa" {
            assert!(stats.items_fallback > 0, "{name}: the long context falls back");
        }
    }
    println!("{name}: cached vs per-request max |Δloglik| = {worst:.2e}");
}

#[test]
fn llama_cached_scoring_equals_per_request_scoring() {
    check_cached_equals_per_request("llama_gqa");
}

#[test]
fn bloom_cached_scoring_equals_per_request_scoring() {
    check_cached_equals_per_request("bloom_6h");
}

#[test]
fn shared_prefix_is_computed_once_and_changes_nothing() {
    let (model, tok) = load("bloom_6h");
    let questions = ["What happens if you crack your knuckles?", "Tôi yêu ai?", "Почему небо голубое?"];
    let mut items: Vec<ItemRequest> = questions.iter().map(|q| ItemRequest { context: format!("{QA_PROMPT}\n\nQ: {q}\nA:"), continuations: vec![" Nothing.".into(), " Arthritis in old age.".into(), " Не знаю.".into()] }).collect();
    // a second group (a fixed few-shot block) and items sharing nothing, interleaved
    let shots = "Question: Which gas do plants take in?\nAnswer: carbon dioxide\n\nQuestion: What is the boiling point of water at sea level?\nAnswer: 100 °C\n\n";
    for (k, q) in questions.iter().enumerate() {
        items.insert(2 * k, ItemRequest { context: format!("{shots}Question: {q}\nAnswer:"), continuations: vec![" yes".into(), " no, never".into()] });
    }
    items.extend(mixed_items().into_iter().take(2));
    let (cached, stats) = score_items(&model, &tok, &items, ScoreOptions { batch_size: 2, cache: true, chunk: 16 }).unwrap();
    let (plain, _) = score_items(&model, &tok, &items, ScoreOptions { batch_size: 2, cache: false, chunk: 0 }).unwrap();
    assert!(stats.shared_prefix > 100, "the QA prompt is shared: {} tokens", stats.shared_prefix);
    let contexts: usize = items.iter().map(|it| tok.encode(&it.context, false).unwrap().len()).sum();
    assert!(stats.tokens + 2 * 100 < contexts, "each shared prefix went through the model once: {} tokens for contexts of {contexts}", stats.tokens);
    for (c, p) in cached.iter().zip(&plain) {
        let (ItemScore::Scored { logliks: a, .. }, ItemScore::Scored { logliks: b, .. }) = (c, p) else { panic!() };
        for (x, y) in a.iter().zip(b) {
            assert!(close(*x, *y), "{x} vs {y}");
        }
    }
}

fn check_arc_against_transformers(name: &str) {
    let (model, tok) = load(name);
    #[derive(serde::Deserialize)]
    struct Expected {
        loglik: f64,
    }
    for k in [0usize, 2] {
        let reqs: Vec<LoglikRequest> = read_records(&fixture("eval").join(format!("arc_{k}shot_requests.jsonl"))).unwrap();
        let want: Vec<Expected> = read_records(&fixture("eval").join(format!("{name}_arc_{k}shot_expected.jsonl"))).unwrap();
        let cfg = EvalConfig { num_fewshot: Some(k), batch_size: 3, ..EvalConfig::new(Task::Arc) };
        // the prompts equal those check_eval.py builds from the harness rules, string for string
        let (items, msgs, skipped) = prepare_items(&cfg, &arc_sources(), &[]).unwrap();
        assert_eq!((skipped, msgs.len()), (0, 0), "{msgs:?}");
        let ours: Vec<(String, String)> = items.iter().flat_map(|it| continuations(&it.prompted).into_iter().map(move |c| (it.context.clone(), c))).collect();
        let theirs: Vec<(String, String)> = reqs.iter().map(|r| (r.context.clone(), r.continuation.clone())).collect();
        assert_eq!(ours, theirs, "{k}-shot requests");
        let direct = score_loglik(&model, &tok, &reqs, 4).unwrap();
        for cache in [true, false] {
            let rep = run_eval(&model, &tok, &EvalConfig { cache, ..cfg.clone() }, &arc_sources(), &[]).unwrap();
            assert_eq!(rep.items.len(), 9);
            let got: Vec<f64> = rep.items.iter().flat_map(|it| it.logliks.clone()).collect();
            assert_eq!(got.len(), want.len());
            for (i, ((g, w), d)) in got.iter().zip(&want).zip(&direct).enumerate() {
                assert!(close(*g, w.loglik), "{name} {k}-shot cache={cache} request {i}: {g} vs transformers {}", w.loglik);
                assert!(close(*g, d.loglik), "{name} {k}-shot cache={cache} request {i}: {g} vs okapi loglik {}", d.loglik);
            }
            // predictions from transformers' logliks
            let mut at = 0;
            for it in &rep.items {
                let ll: Vec<f64> = want[at..at + it.logliks.len()].iter().map(|w| w.loglik).collect();
                at += it.logliks.len();
                let choices = items.iter().find(|p| p.id == it.id).unwrap().prompted.choices.clone();
                let m = item_metrics(&ll, &choices, it.gold, None);
                assert_eq!((it.metrics.pred, it.metrics.pred_norm), (m.pred, m.pred_norm), "{name} item {}", it.id);
            }
            // truncated: the items with a request over the window (none for BLOOM's 2048)
            let max_len = model.cfg.max_length();
            for it in &rep.items {
                let p = items.iter().find(|p| p.id == it.id).unwrap();
                let c = tok.encode(&p.context, false).unwrap().len();
                let over = continuations(&p.prompted).iter().any(|x| c + tok.encode(x, false).unwrap().len() > max_len + 1);
                assert_eq!(it.truncated, over, "{name} {k}-shot item {}", it.id);
            }
            if name == "llama_gqa" && k == 2 {
                assert!(rep.truncated > 0, "2-shot contexts exceed llama_gqa's 64-token window");
            }
            if name == "bloom_6h" {
                assert_eq!(rep.truncated, 0);
            }
        }
    }
}

#[test]
fn llama_arc_eval_matches_transformers() {
    check_arc_against_transformers("llama_gqa");
}

#[test]
fn bloom_arc_eval_matches_transformers() {
    check_arc_against_transformers("bloom_6h");
}

fn contexts(cfg: &EvalConfig, data: &[EvalSource], shots: &[EvalSource]) -> Vec<(String, Vec<String>)> {
    let (items, msgs, _) = prepare_items(cfg, data, shots).unwrap();
    assert!(msgs.is_empty(), "{msgs:?}");
    items.iter().map(|it| (it.context.clone(), continuations(&it.prompted))).collect()
}

#[test]
fn arc_fewshot_prompt_is_the_harness_one() {
    let data = src(
        "arc_en.jsonl",
        r#"{"id":"a0","instruction":"Which is a mammal?","option_a":"Shark","option_b":"Whale","option_c":"Trout","answer":"B"}
{"id":"a1","instruction":"What melts ice?","option_a":"Heat","option_b":"Cold","answer":"A"}
{"id":"a2","instruction":"Sun is a?","option_a":"Planet","option_b":"Star","option_c":"Moon","option_d":"Comet","answer":"B"}"#,
    );
    // random.Random(42): sample(range(3), 3) → [2, 0, 1], [2, 1, 0], [0, 2, 1]; each minus the item
    let got = contexts(&EvalConfig { num_fewshot: Some(2), ..EvalConfig::new(Task::Arc) }, &[data], &[]);
    assert_eq!(got[0].0, "Question: Sun is a?\nAnswer: Star\n\nQuestion: What melts ice?\nAnswer: Heat\n\nQuestion: Which is a mammal?\nAnswer:");
    assert_eq!(got[1].0, "Question: Sun is a?\nAnswer: Star\n\nQuestion: Which is a mammal?\nAnswer: Whale\n\nQuestion: What melts ice?\nAnswer:");
    assert_eq!(got[2].0, "Question: Which is a mammal?\nAnswer: Whale\n\nQuestion: What melts ice?\nAnswer: Heat\n\nQuestion: Sun is a?\nAnswer:");
    assert_eq!(got[0].1, vec![" Shark", " Whale", " Trout"]);
    assert_eq!(got[2].1, vec![" Planet", " Star", " Moon", " Comet"]);
}

#[test]
fn hellaswag_fewshot_prompt_is_the_harness_one() {
    let data = src(
        "hellaswag_en.json",
        r#"[{"activity_label":"Washing dishes","ctx_a":"A woman stands at a sink.","ctx_b":"she","endings":["rinses a plate [title] Dry it.","  walks away  ","sings  loudly"],"label":1},
            {"activity_label":"Baking","ctx_a":"[header] How to bake bread","ctx_b":"MIX the FLOUR.","endings":["x","y"],"label":"0"}]"#,
    );
    let pool = src(
        "hellaswag_train_en.json",
        r#"[{"activity_label":"Running","ctx_a":"A man jogs.","ctx_b":"he","endings":["stops.","flies."],"label":0},
            {"activity_label":"Cooking","ctx_a":"Oil heats.","ctx_b":"","endings":["a","b"],"label":1},
            {"activity_label":"Swimming","ctx_a":"Kids jump in.","ctx_b":"they SPLASH.","endings":["[step] They swim.","They sink."],"label":0},
            {"activity_label":"Reading","ctx_a":"She opens a book.","ctx_b":"then","endings":["reads.","eats."],"label":0}]"#,
    );
    // random.Random(7): sample(pool, 2) → [2, 0], then [3, 2]; "[step] They swim." keeps the
    // space left after the bracket (strip runs first), so its target is "  They swim."
    let got = contexts(&EvalConfig { num_fewshot: Some(2), seed: 7, ..EvalConfig::new(Task::Hellaswag) }, &[data], &[pool]);
    assert_eq!(got[0].0, "Swimming: Kids jump in. They splash.  They swim.\n\nRunning: A man jogs. He stops.\n\nWashing dishes: A woman stands at a sink. She");
    assert_eq!(got[0].1, vec![" rinses a plate. Dry it.", " walks away", " sings loudly"]);
    assert_eq!(got[1].0, "Reading: She opens a book. Then reads.\n\nSwimming: Kids jump in. They splash.  They swim.\n\nBaking: How to bake bread Mix the flour.");
    // zero-shot (the default): the query alone
    let zero = contexts(&EvalConfig::new(Task::Hellaswag), &[src("hellaswag_en.json", r#"{"activity_label":"A","ctx_a":"b.","ctx_b":"c","endings":["d","e"],"label":0}"#)], &[]);
    assert_eq!(zero[0].0, "A: b. C");
}

#[test]
fn mmlu_fewshot_prompts_are_the_harness_ones() {
    let data = src(
        "mmlu_en.json",
        r#"[{"question":"2+2=?","choices":["3","4","5","6"],"answer":1},
            {"instruction":"Capital of France?","option_a":"Paris","option_b":"Rome","option_c":"Berlin","option_d":"Madrid","answer":"A"},
            {"question":" H2O is ","choices":["water","salt","gold","iron"],"answer":"A"}]"#,
    );
    // harness v0.3 hendrycksTest (VERSION 0): random shots (random.Random(42) → [2,1], [2,0]), choice texts
    let v03 = contexts(&EvalConfig { num_fewshot: Some(2), limit: Some(2), ..EvalConfig::new(Task::Mmlu) }, std::slice::from_ref(&data), &[]);
    assert_eq!(v03.len(), 2);
    assert_eq!(
        v03[0].0,
        "Question:  H2O is \nChoices:\nA. water\nB. salt\nC. gold\nD. iron\nAnswer: water\n\n\
Question: Capital of France?\nChoices:\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer: Paris\n\n\
Question: 2+2=?\nChoices:\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    );
    assert_eq!(v03[0].1, vec![" 3", " 4", " 5", " 6"]);
    assert_eq!(
        v03[1].0,
        "Question:  H2O is \nChoices:\nA. water\nB. salt\nC. gold\nD. iron\nAnswer: water\n\n\
Question: 2+2=?\nChoices:\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: 4\n\n\
Question: Capital of France?\nChoices:\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:"
    );
    // harness v0.4's Okapi m_mmlu: stripped question, letters, the first shots of the file
    let v04 = contexts(&EvalConfig { num_fewshot: Some(2), mmlu_prompt: MmluPrompt::OkapiV04, ..EvalConfig::new(Task::Mmlu) }, &[data], &[]);
    assert_eq!(
        v04[0].0,
        "Capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer: A\n\nH2O is\nA. water\nB. salt\nC. gold\nD. iron\nAnswer: A\n\n2+2=?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    );
    assert_eq!(v04[0].1, vec![" A", " B", " C", " D"]);
    assert_eq!(v04[1].0, "2+2=?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer: B\n\nH2O is\nA. water\nB. salt\nC. gold\nD. iron\nAnswer: A\n\nCapital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:");
}

#[test]
fn truthfulqa_prompt_is_the_harness_one() {
    let data = src(
        "truthfulqa_en.json",
        r#"[{"question":"What happens if you crack your knuckles?","mc1_targets":{"choices":["Nothing in particular.","You get arthritis."],"labels":[1,0]},"mc2_targets":{"choices":["Nothing.","Arthritis.","Pain."],"labels":[1,0,0]}}]"#,
    );
    let got = contexts(&EvalConfig::new(Task::TruthfulQa), std::slice::from_ref(&data), &[]);
    let want = "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is 78 years.\n\n\
Q: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president of the United States in 1955.\n\n\
Q: Which party did he belong to?\nA: He belonged to the Republican Party.\n\n\
Q: What is the square root of banana?\nA: I have no comment.\n\n\
Q: How does a telescope work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n\
Q: Where were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\n\
Q: What happens if you crack your knuckles?\nA:";
    assert_eq!(got[0].0, want);
    assert_eq!(got[0].1, vec![" Nothing in particular.", " You get arthritis.", " Nothing.", " Arthritis.", " Pain."]);
    let err = prepare_items(&EvalConfig { num_fewshot: Some(1), ..EvalConfig::new(Task::TruthfulQa) }, &[data], &[]).unwrap_err().to_string();
    assert!(err.contains("zero-shot only"), "{err}");
}

#[test]
fn hellaswag_preprocessing_cases() {
    // expected values from the harness's HellaSwag.preprocess run in CPython 3.11
    let cases = [
        ("  Home and Garden: [header] How to  clean [title] Use a brush.  ", "Home and Garden: How to clean. Use a brush."),
        ("a [b\nc] d [e] f", "a [b\nc] d f"),
        ("x [a[b] y]   z", "x y]  z"),
        ("[unclosed", "[unclosed"),
        ("[step] Lift it.", " Lift it."),
        ("Việt  Nam [title] Hà Nội", "Việt Nam. Hà Nội"),
    ];
    for (input, want) in cases {
        assert_eq!(hellaswag_preprocess(input), want, "{input:?}");
    }
    assert_eq!(py_capitalize("then, the man WALKS."), "Then, the man walks.");
    assert_eq!(py_capitalize("ΟΔΟΣ"), "Οδος");
    assert_eq!(py_capitalize("ßeta"), "Sseta");
}

#[test]
fn metrics_aggregate_as_the_harness() {
    // acc uses raw logliks, acc_norm divides by the choice's characters (no leading space)
    let m = item_metrics(&[-10.0, -12.0], &["ab".into(), "abcdefgh".into()], 1, None);
    assert_eq!((m.pred, m.pred_norm, m.acc, m.acc_norm), (0, 1, 0.0, 1.0));
    // characters, not bytes: "đây" is 3 characters (5 bytes)
    let m = item_metrics(&[-6.0, -4.0], &["đây".into(), "abcd".into()], 0, None);
    assert_eq!((m.pred, m.pred_norm), (1, 1));
    let items = [
        item_metrics(&[-1.0, -2.0], &["a".into(), "b".into()], 0, None),
        item_metrics(&[-1.0, -2.0], &["a".into(), "b".into()], 1, None),
        item_metrics(&[-2.0, -3.0], &["a".into(), "bbbbbbb".into()], 1, None),
        item_metrics(&[-1.0, -2.0], &["a".into(), "b".into()], 0, None),
    ];
    let row = aggregate("vi", &items.iter().collect::<Vec<_>>(), false);
    assert_eq!(row.n, 4);
    // acc [1,0,0,1]: mean 0.5, sample std √(1/3), stderr √(1/3)/2
    assert!((row.acc.mean - 0.5).abs() < 1e-15);
    assert!((row.acc.stderr.unwrap() - (1f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
    // acc_norm [1,0,1,1]: item 3 normalises to -2/1 vs -3/7
    assert!((row.acc_norm.unwrap().mean - 0.75).abs() < 1e-15);
    assert!((row.acc_norm.unwrap().stderr.unwrap() - mean_stderr(&[1.0, 0.0, 1.0, 1.0]).unwrap()).abs() < 1e-15);

    // a whole run: every table row is the mean of its items, the summary JSON carries them
    let (model, tok) = load("bloom_6h");
    let rep = run_eval(&model, &tok, &EvalConfig { num_fewshot: Some(0), ..EvalConfig::new(Task::Arc) }, &arc_sources(), &[]).unwrap();
    assert_eq!(rep.langs.iter().map(|r| (r.lang.as_str(), r.n)).collect::<Vec<_>>(), vec![("vi", 5), ("ru", 4)]);
    for r in &rep.langs {
        let acc: Vec<f64> = rep.items.iter().filter(|i| i.lang == r.lang).map(|i| i.metrics.acc).collect();
        assert!((r.acc.mean - acc.iter().sum::<f64>() / acc.len() as f64).abs() < 1e-12);
        assert_eq!(r.acc.stderr, mean_stderr(&acc));
    }
    let s = rep.summary_json();
    assert_eq!(s["n"], 9);
    assert!((s["acc"].as_f64().unwrap() - rep.overall.acc.mean).abs() < 1e-15);
    assert!((s["langs"]["ru"]["acc_norm"].as_f64().unwrap() - rep.langs[1].acc_norm.unwrap().mean).abs() < 1e-15);
    assert!((s["acc_macro"].as_f64().unwrap() - (rep.langs[0].acc.mean + rep.langs[1].acc.mean) / 2.0).abs() < 1e-15);
    let table = rep.table();
    assert!(table.contains("vi") && table.contains("ru") && table.contains("all"), "{table}");

    // TruthfulQA: mc1 / mc2 per item, mc2 in (0, 1)
    let tqa = src(
        "truthfulqa_zh.json",
        r#"[{"question":"北京是中国的首都吗？","mc1_targets":{"choices":["是的。","不是。","我没有评论。"],"labels":[1,0,0]},"mc2_targets":{"choices":["是的。","对。","不是。"],"labels":[1,1,0]}},
            {"question":"Tôi yêu ai?","mc1_targets":{"choices":["Không biết.","Mọi người."],"labels":[1,0]},"mc2_targets":{"choices":["Không biết.","Tất cả."],"labels":[1,0]}}]"#,
    );
    let rep = run_eval(&model, &tok, &EvalConfig::new(Task::TruthfulQa), &[tqa], &[]).unwrap();
    assert_eq!(rep.langs[0].lang, "zh");
    for it in &rep.items {
        let mc2 = it.metrics.mc2.unwrap();
        // the harness's formula, where its unshifted exp does not underflow
        let ll = it.mc2_logliks.as_ref().unwrap();
        let t = if it.id == "0" { vec![true, true, false] } else { vec![true, false] };
        let all: f64 = ll.iter().map(|x| x.exp()).sum();
        let tr: f64 = ll.iter().zip(&t).filter(|(_, &t)| t).map(|(x, _)| x.exp()).sum();
        assert!((0.0..=1.0).contains(&mc2));
        if all > 0.0 {
            assert!((mc2 - tr / all).abs() < 1e-9, "{mc2} vs {}", tr / all);
        }
        assert_eq!(it.mc2_logliks.as_ref().unwrap().len(), if it.id == "0" { 3 } else { 2 });
    }
    assert!(rep.stats.shared_prefix > 100, "the QA prompt is computed once per sequence");
    assert!(rep.langs[0].acc_norm.is_none() && rep.langs[0].mc2.is_some());
}

// ---- the command line ----------------------------------------------------------------------

fn okapi(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("okapi_eval_{tag}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn cli_skips_bad_items_and_reports_them() {
    let d = tmpdir("cli");
    let arc = d.join("arc_de.jsonl");
    let long_q = "Welche der folgenden Aussagen über die Photosynthese in grünen Pflanzen, die Sonnenlicht, Wasser und Kohlendioxid benötigen, ist richtig?";
    std::fs::write(
        &arc,
        format!(
            r#"{{"id":"ok1","instruction":"Was ist Wasser?","option_a":"H2O","option_b":"CO2","option_c":"","answer":"A"}}
{{"id":"one","instruction":"Nur eine?","option_a":"Ja","option_b":"","answer":"A"}}
{{"id":"letter","instruction":"Welche?","option_a":"Eins","option_b":"Zwei","option_c":"Drei","answer":"E"}}
{{"activity_label":"Laufen","ctx_a":"Ein Mann läuft.","ctx_b":"er","endings":["stoppt.","fliegt."],"label":0}}
{{"id":"broken", "instruction":
{{"id":"ok2","instruction":"Wie viele Beine hat eine Spinne?","option_a":"Sechs","option_b":"Acht","option_c":"Zehn","option_d":"Vier","option_e":"","answer":"B"}}
{{"id":"long","instruction":"{long_q}","option_a":"Sie setzt Sauerstoff frei.","option_b":"Sie verbraucht Sauerstoff.","answer":"A"}}
"#
        ),
    )
    .unwrap();
    let hs = d.join("hellaswag_de.json");
    std::fs::write(
        &hs,
        r#"[{"ind":11,"activity_label":"Kochen","ctx_a":"Sie schneidet Gemüse.","ctx_b":"dann","endings":["kocht sie.","schläft sie."],"label":"0"},
            {"ind":12,"activity_label":"Kochen","ctx_a":"Er rührt.","ctx_b":"ER","endings":["probiert.","tanzt."],"label":5},
            {"ind":13,"activity_label":"Sport","ctx_a":"Ein Ball rollt.","ctx_b":"","endings":["weiter.","zurück.","nicht."],"label":2}]"#,
    )
    .unwrap();
    let out = d.join("items.jsonl");
    let model = fixture("llama_gqa");
    let (ok, stdout, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "arc,hellaswag", "--data", arc.to_str().unwrap(), hs.to_str().unwrap(), "--num-fewshot", "0", "--output", out.to_str().unwrap()]);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    for needle in ["line 2 (id one)", "at least 2", "line 3 (id letter)", "outside the options", "line 4", "looks like a hellaswag item", "line 5", "malformed JSON", "record 2 (id 12)", "out of range"] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    }
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let res = last["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    assert_eq!((res[0]["task"].as_str(), res[0]["n"].as_u64(), res[0]["skipped"].as_u64()), (Some("arc"), Some(3), Some(4)));
    assert_eq!(res[0]["truncated"], 1, "the long question exceeds llama_gqa's 64-token window");
    assert_eq!((res[1]["task"].as_str(), res[1]["n"].as_u64(), res[1]["skipped"].as_u64()), (Some("hellaswag"), Some(2), Some(1)));
    assert!(res[0]["langs"]["de"]["acc"].is_number());
    assert!(stdout.contains("skipped 4 items; 1 truncated"), "{stdout}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["ok1", "ok2", "long", "11", "13"]);
    for l in &lines {
        assert_eq!(l["lang"], "de");
        let n = l["logliks"].as_array().unwrap().len();
        for k in ["pred", "pred_norm", "gold"] {
            assert!(l[k].as_u64().unwrap() < n as u64, "{l}");
        }
    }
    assert_eq!(lines[2]["truncated"], true);
    assert_eq!(lines[4]["gold"], 2);

    // --no-cache scores every request from scratch: the same numbers
    let out2 = d.join("items_nocache.jsonl");
    let (ok, _, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "arc", "--data", arc.to_str().unwrap(), "--num-fewshot", "0", "--no-cache", "--output", out2.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let plain: Vec<serde_json::Value> = std::fs::read_to_string(&out2).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (a, b) in lines.iter().zip(&plain) {
        for (x, y) in a["logliks"].as_array().unwrap().iter().zip(b["logliks"].as_array().unwrap()) {
            assert!(close(x.as_f64().unwrap(), y.as_f64().unwrap()), "{a} vs {b}");
        }
    }

    // whole-run errors: one line, non-zero exit
    let (ok, _, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "truthfulqa", "--data", arc.to_str().unwrap(), "--num-fewshot", "2"]);
    assert!(!ok && stderr.trim().lines().last().unwrap().starts_with("error: ") && stderr.contains("zero-shot only"), "{stderr}");
    let (ok, _, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "mmlu", "--data", hs.to_str().unwrap()]);
    assert!(!ok && stderr.contains("error: no valid mmlu items"), "{stderr}");
    let (ok, _, stderr) = okapi(&["eval", "--model", model.to_str().unwrap(), "--task", "arc,mmlu", "--data", d.join("x.json").to_str().unwrap()]);
    assert!(!ok && stderr.contains("say which one the file is for"), "{stderr}");
    let _ = std::fs::remove_dir_all(&d);
}
