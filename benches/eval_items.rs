//! ARC 25-shot scoring throughput (items/s) on the bench-33m LLaMA, with and without the
//! shared-context KV cache.
//!
//!     cargo bench --bench eval_items -- [--items N] [--batch B] [--shots K] [--repeats R]
//!                                       [--baseline-items M] [--chunk T] [--out DIR]
//!
//! Data: the bundled m_arc sets (`okapi::data::assets::EVAL_ARC`, 8 languages × 12 items); the
//! evaluated items are the first N (default 24) in language order, each with K (default 25)
//! shots drawn (Python's random.Random(42), harness rule) from all 96 bundled items as the
//! --fewshot-data pool. Tokenizer: byte-level BPE trained on the bundled SFT + eval texts
//! (vocab ≤ 8192); model: bench-33m (d512 L8 h8 ffn1360, V 8192, max_position_embeddings 2048),
//! seeded random weights, f32.
//!
//! Timed: `okapi::rlhf::eval::score_items` (tokenization included) over the items, cached
//! (B items side by side in the KV cache) and from scratch (`score_loglik`, B requests per
//! forward, the harness's way); one warm-up run of B items each, then R runs (default 3;
//! the from-scratch path runs the first M items, default N/2, R times); the median is
//! reported, with tokens/s and the max |Δloglik| between the two paths.
//!
//! The model (HF layout + tokenizer.json), the requests and okapi's logliks are written to DIR
//! (default target/bench-eval) for `benches/eval_torch.py`, the same scoring in transformers.
//! Threads: rayon's (`RAYON_NUM_THREADS`, default all cores).

use okapi::data::assets::EVAL_ARC;
use okapi::data::bpe::{save_tokenizer, train_bpe};
use okapi::data::Tokenizer;
use okapi::model::{preset_config, Arch, DType, Model, ModelConfig};
use okapi::rlhf::eval::{prepare_items, prompts::continuations, score_items, EvalConfig, EvalSource, ItemRequest, ItemScore, ScoreOptions, Task};
use okapi::runtime::CpuBackend;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    items: usize,
    batch: usize,
    shots: usize,
    repeats: usize,
    baseline_items: Option<usize>,
    chunk: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args { items: 24, batch: 8, shots: 25, repeats: 3, baseline_items: None, chunk: 0, out: PathBuf::from("target/bench-eval") };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--items" => a.items = val("--items").parse().expect("--items: integer"),
            "--batch" => a.batch = val("--batch").parse().expect("--batch: integer"),
            "--shots" => a.shots = val("--shots").parse().expect("--shots: integer"),
            "--repeats" => a.repeats = val("--repeats").parse().expect("--repeats: integer"),
            "--baseline-items" => a.baseline_items = Some(val("--baseline-items").parse().expect("--baseline-items: integer")),
            "--chunk" => a.chunk = val("--chunk").parse().expect("--chunk: integer"),
            "--out" => a.out = PathBuf::from(val("--out")),
            "--bench" => {}
            other => panic!("unknown argument `{other}` (expected --items N --batch B --shots K --repeats R --baseline-items M --chunk T --out DIR)"),
        }
    }
    a
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn logliks(s: &[ItemScore]) -> Vec<Vec<f64>> {
    s.iter()
        .map(|x| match x {
            ItemScore::Scored { logliks, .. } => logliks.clone(),
            ItemScore::Invalid(m) => panic!("invalid item: {m}"),
        })
        .collect()
}

fn main() {
    // inside a pool worker, as okapi-train runs (see okapi::runtime::run_in_pool)
    okapi::runtime::run_in_pool(0, bench_main);
}

fn bench_main() {
    let a = parse_args();
    std::fs::create_dir_all(&a.out).unwrap();
    // tokenizer on the bundled texts
    let mut texts: Vec<String> = Vec::new();
    for asset in okapi::data::assets::SFT.iter().chain(EVAL_ARC) {
        let v: Vec<serde_json::Value> = serde_json::from_str(asset.text).unwrap();
        for r in v {
            for (_, x) in r.as_object().unwrap() {
                if let Some(s) = x.as_str().filter(|s| !s.is_empty()) {
                    texts.push(s.to_string());
                }
            }
        }
    }
    let t0 = Instant::now();
    let bpe = train_bpe(&texts, 8192).unwrap();
    let tok_path = a.out.join("tokenizer.json");
    save_tokenizer(&bpe, &tok_path).unwrap();
    let tok = Tokenizer::load(&tok_path).unwrap();
    // bench-33m with the tokenizer's special ids (vocabulary: the preset's 8192)
    let mut cfg = preset_config(Arch::Llama, "bench-33m", None, 2048).unwrap();
    for (key, token) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>")] {
        cfg.raw[key] = tok.token_to_id(token).unwrap().into();
    }
    let cfg = ModelConfig::from_value(cfg.raw.clone(), cfg.path.clone()).unwrap();
    let model = Model::init(CpuBackend, cfg, 1234);
    let model_dir = a.out.join("bench-33m");
    model.save(&model_dir, DType::F32, okapi::model::DEFAULT_MAX_SHARD_BYTES, Some(&tok_path)).unwrap();
    println!("setup: tokenizer ({} tokens) and bench-33m ({} params) in {:.1}s", tok.vocab_size(), model.n_params(), t0.elapsed().as_secs_f64());

    // ARC items with their 25-shot contexts
    let data: Vec<EvalSource> = EVAL_ARC.iter().map(|x| EvalSource { name: x.name.into(), lang: Some(x.lang.into()), text: x.text.into() }).collect();
    let all: Vec<serde_json::Value> = EVAL_ARC.iter().flat_map(|x| serde_json::from_str::<Vec<serde_json::Value>>(x.text).unwrap()).collect();
    let pool = EvalSource { name: "eval/m_arc/all.json".into(), lang: Some("all".into()), text: serde_json::to_string(&all).unwrap() };
    let cfg = EvalConfig { num_fewshot: Some(a.shots), ..EvalConfig::new(Task::Arc) };
    let (prepared, msgs, _) = prepare_items(&cfg, &data, &[pool]).unwrap();
    assert!(msgs.is_empty(), "{msgs:?}");
    let items: Vec<ItemRequest> = prepared.iter().take(a.items).map(|p| ItemRequest { context: p.context.clone(), continuations: continuations(&p.prompted) }).collect();
    let n = items.len();
    let ctx_tokens: Vec<usize> = items.iter().map(|i| tok.encode(&i.context, false).unwrap().len()).collect();
    let choices: usize = items.iter().map(|i| i.continuations.len()).sum();
    println!(
        "ARC {}-shot: {n} items ({choices} choices), context {}–{} tokens (mean {:.0}), batch {}",
        a.shots,
        ctx_tokens.iter().min().unwrap(),
        ctx_tokens.iter().max().unwrap(),
        ctx_tokens.iter().sum::<usize>() as f64 / n as f64,
        a.batch
    );

    let run = |items: &[ItemRequest], cache: bool| {
        let t = Instant::now();
        let (s, st) = score_items(&model, &tok, items, ScoreOptions { batch_size: a.batch, cache, chunk: a.chunk }).unwrap();
        (t.elapsed().as_secs_f64(), s, st)
    };
    let warm = &items[..a.batch.min(n)];
    run(warm, true);
    let mut times = Vec::new();
    let mut cached = Vec::new();
    let mut stats = None;
    for _ in 0..a.repeats {
        let (t, s, st) = run(&items, true);
        times.push(t);
        cached = logliks(&s);
        stats = Some(st);
    }
    let st = stats.unwrap();
    let t_cached = median(&times);
    println!(
        "okapi cached:       {:>7.3} items/s  ({:.1}s median of {} runs, {:.0} tokens/s through the model, {} forwards of {} rows for {} tokens, {} items cached, {} from scratch)",
        n as f64 / t_cached,
        t_cached,
        a.repeats,
        st.tokens as f64 / t_cached,
        st.forwards,
        st.rows,
        st.tokens,
        st.items_cached,
        st.items_fallback
    );

    let m = a.baseline_items.unwrap_or(n.div_ceil(2)).min(n);
    run(warm, false);
    let mut times = Vec::new();
    let mut plain = Vec::new();
    let mut stats = None;
    for _ in 0..a.repeats {
        let (t, s, st) = run(&items[..m], false);
        times.push(t);
        plain = logliks(&s);
        stats = Some(st);
    }
    let st = stats.unwrap();
    let t_plain = median(&times);
    println!("okapi from scratch: {:>7.3} items/s  ({:.1}s median of {} runs over {m} items, {:.0} tokens/s through the model)", m as f64 / t_plain, t_plain, a.repeats, st.tokens as f64 / t_plain);
    let worst = cached.iter().zip(&plain).flat_map(|(x, y)| x.iter().zip(y).map(|(a, b)| (a - b).abs())).fold(0f64, f64::max);
    println!("speedup of the cache: {:.2}×; max |Δloglik| cached vs from scratch: {worst:.2e}", (n as f64 / t_cached) / (m as f64 / t_plain));

    // for benches/eval_torch.py
    let mut lines = String::new();
    for (it, ll) in items.iter().zip(&cached) {
        lines += &serde_json::to_string(&json!({"context": it.context, "continuations": it.continuations, "okapi_logliks": ll})).unwrap();
        lines.push('\n');
    }
    std::fs::write(a.out.join("requests.jsonl"), lines).unwrap();
    let summary = json!({"items": n, "batch": a.batch, "shots": a.shots, "cached_items_per_s": n as f64 / t_cached, "scratch_items_per_s": m as f64 / t_plain, "baseline_items": m});
    std::fs::write(a.out.join("okapi_summary.json"), summary.to_string()).unwrap();
    println!("wrote {} (model, requests.jsonl) for benches/eval_torch.py", a.out.display());
}
