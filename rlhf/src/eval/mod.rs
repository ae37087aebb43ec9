//! Okapi's multilingual benchmarks — m_arc, m_hellaswag, m_mmlu, TruthfulQA mc — scored as
//! lm-evaluation-harness (the v0.3-era fork Okapi used) scores them, or, with
//! [`EvalConfig::harness`] = [`Harness::V04`] (`--harness v0.4`), as lm-evaluation-harness
//! 0.4.x's `HFLM` and its Okapi task definitions do. The differences (docs/eval-harness-versions.md
//! has each with the harness source it was read from):
//! - tokenization: v0.3 encodes context and continuation separately without special tokens;
//!   v0.4 encodes context + continuation together and splits at the context's length, with the
//!   tokenizer's special tokens (BOS for LLaMA-style tokenizers), the context's trailing
//!   whitespace moved to the continuation, and the tokenizer's BOS (else EOS) as the context of
//!   an empty one ([`harness`]);
//! - metrics: v0.4 adds `acc_bytes` (loglik per UTF-8 byte of the choice) beside `acc` and
//!   `acc_norm` (per character); TruthfulQA's mc1 answer is the first choice ([`metrics`]);
//! - prompts and shots: v0.4 draws shots with `random.Random(1234)` by default (v0.3: 42), uses
//!   Okapi's v0.4 m_mmlu template (letters, the first k shots) by default, and preprocesses
//!   TruthfulQA's question like HellaSwag's text ([`prompts`]).
//!
//! - [`formats`]: the eval files, record by record (bad records skipped with a message);
//! - [`prompts`]: each task's template, few-shot contexts, HellaSwag's preprocessing;
//! - [`pyrandom`]: Python's `random.Random`, so shots are drawn as `rnd.sample` draws them;
//! - [`scoring`]: log-likelihoods of every choice, one context forward per item (KV cache);
//! - [`metrics`]: acc, acc_norm, mc1/mc2, means and the harness's standard errors;
//! - [`suite`], [`resume`], [`results`]: Okapi's whole benchmark in one resumable run
//!   (`okapi-train eval --suite okapi`): the data layout, the per-item files and run record,
//!   `results.json` in the harness's layout and the per-language Markdown table.
//!
//! [`run_eval`] runs one task over data sources (files or bundled texts) and returns an
//! [`EvalReport`]: per-item results, the per-language table, the overall row.

pub mod formats;
pub mod harness;
pub mod metrics;
pub mod prompts;
pub mod pyrandom;
pub mod results;
pub mod resume;
pub mod scoring;
pub mod suite;

pub use formats::{lang_from_name, parse_records, Doc, Record, Task};
pub use harness::{Harness, PairEncoder};
pub use metrics::{ItemMetrics, LangRow, Stat};
pub use prompts::{MmluPrompt, Prompted};
pub use scoring::{score_items, score_items_streaming, score_items_with, ItemRequest, ItemScore, ScoreOptions, ScoreStats};

use crate::loglik::ScoreError;
use crate::progress::Meter;
use okapi_data::Tokenizer;
use okapi_model::Model;
use okapi_runtime::{Backend, Collective, SingleProcess};
use pyrandom::PyRandom;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

/// A data file's text, its name (for messages and the language) and, optionally, its language.
#[derive(Clone, Debug)]
pub struct EvalSource {
    pub name: String,
    pub lang: Option<String>,
    pub text: String,
}

impl EvalSource {
    pub fn from_file(path: &Path, lang: Option<&str>) -> Result<EvalSource, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(EvalSource { name: path.display().to_string(), lang: lang.map(str::to_string), text })
    }
}

/// The eval sets bundled in the binary (`okapi_data::assets`: m_arc, m_hellaswag, m_mmlu; none
/// for TruthfulQA), one source per language — what `okapi-train demo` evaluates, e.g.
/// `run_eval(&model, &tok, &EvalConfig { num_fewshot: Some(0), ..EvalConfig::new(Task::Arc) },
/// &bundled_sources(Task::Arc), &[])?.table()`.
pub fn bundled_sources(task: Task) -> Vec<EvalSource> {
    use okapi_data::assets::{EVAL_ARC, EVAL_HELLASWAG, EVAL_MMLU};
    let set: &[okapi_data::assets::Asset] = match task {
        Task::Arc => EVAL_ARC,
        Task::Hellaswag => EVAL_HELLASWAG,
        Task::Mmlu => EVAL_MMLU,
        Task::TruthfulQa => &[],
    };
    set.iter().map(|a| EvalSource { name: a.name.to_string(), lang: Some(a.lang.to_string()), text: a.text.to_string() }).collect()
}

/// How to run a task.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub task: Task,
    /// shots per item; None = the task's default (ARC 25, HellaSwag 0, MMLU 25, TruthfulQA 0)
    pub num_fewshot: Option<usize>,
    /// the first N valid items of each file
    pub limit: Option<usize>,
    /// seed of the `random.Random` that draws the shots (one per file, items in file order)
    pub seed: u64,
    pub batch_size: usize,
    /// share each context's forward across its choices (the fast path)
    pub cache: bool,
    pub mmlu_prompt: MmluPrompt,
    /// whose semantics: the v0.3 fork's (default) or lm-evaluation-harness 0.4.x's
    pub harness: Harness,
}

impl EvalConfig {
    pub fn new(task: Task) -> EvalConfig {
        EvalConfig { task, num_fewshot: None, limit: None, seed: 42, batch_size: 8, cache: true, mmlu_prompt: MmluPrompt::default(), harness: Harness::V03 }
    }

    /// [`EvalConfig::new`] with `harness`'s defaults: its seed and MMLU template.
    pub fn with_harness(task: Task, harness: Harness) -> EvalConfig {
        EvalConfig { seed: harness.default_seed(), mmlu_prompt: harness.default_mmlu_prompt(), harness, ..EvalConfig::new(task) }
    }

    pub fn shots(&self) -> usize {
        self.num_fewshot.unwrap_or(self.task.default_fewshot())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Score(#[from] ScoreError),
}

/// An item ready to score: the harness's processed doc and its full context (shots included).
#[derive(Clone, Debug)]
pub struct PreparedItem {
    pub id: String,
    pub lang: String,
    pub source: String,
    pub prompted: Prompted,
    pub context: String,
    /// decides the item's metrics (v0.4 adds acc_bytes)
    pub harness: Harness,
}

/// One scored item.
#[derive(Clone, Debug)]
pub struct ItemResult {
    pub id: String,
    pub lang: String,
    pub source: String,
    /// logliks of the choices (TruthfulQA: mc1)
    pub logliks: Vec<f64>,
    /// TruthfulQA's mc2 logliks
    pub mc2_logliks: Option<Vec<f64>>,
    pub gold: usize,
    pub metrics: ItemMetrics,
    /// the context was truncated from the left to fit the window
    pub truncated: bool,
}

impl ItemResult {
    /// The `--output` line: {"id","lang","logliks","pred","pred_norm","gold",…}.
    pub fn to_json(&self, task: Task, model: &str) -> Value {
        let mut v = json!({
            "id": self.id, "lang": self.lang, "logliks": self.logliks, "pred": self.metrics.pred, "pred_norm": self.metrics.pred_norm,
            "gold": self.gold, "task": task.name(), "model": model, "truncated": self.truncated,
        });
        if let (Some(ll), Some(mc2)) = (&self.mc2_logliks, self.metrics.mc2) {
            v["mc2_logliks"] = json!(ll);
            v["mc1"] = json!(self.metrics.acc);
            v["mc2"] = json!(mc2);
        }
        // harness v0.4 only: v0.3's lines stay as they were
        if let (Some(p), Some(a)) = (self.metrics.pred_bytes, self.metrics.acc_bytes) {
            v["pred_bytes"] = json!(p);
            v["acc_bytes"] = json!(a);
        }
        v
    }
}

/// A task's results on one model.
#[derive(Clone, Debug)]
pub struct EvalReport {
    pub task: Task,
    pub harness: Harness,
    pub model: String,
    pub num_fewshot: usize,
    pub items: Vec<ItemResult>,
    /// one row per language, in the order the files came
    pub langs: Vec<LangRow>,
    /// all items together
    pub overall: LangRow,
    pub macro_avg: MacroAverage,
    pub skipped: usize,
    pub truncated: usize,
    /// one line per skipped record and per warning
    pub messages: Vec<String>,
    pub stats: ScoreStats,
    pub seconds: f64,
}

/// Parses the sources and builds every item's context (shots drawn as the harness draws them).
/// Returns the items, the messages, and how many records were skipped.
pub fn prepare_items(cfg: &EvalConfig, data: &[EvalSource], fewshot: &[EvalSource]) -> Result<(Vec<PreparedItem>, Vec<String>, usize), EvalError> {
    let k = cfg.shots();
    if cfg.task == Task::TruthfulQa && k > 0 {
        return Err(EvalError::Input(format!("--num-fewshot {k}: TruthfulQA is zero-shot only (the harness asserts num_fewshot == 0)")));
    }
    if cfg.limit == Some(0) {
        return Err(EvalError::Input("--limit must be at least 1".into()));
    }
    let mut messages = Vec::new();
    let mut skipped = 0;
    let mut load = |src: &EvalSource, messages: &mut Vec<String>| -> Result<(String, Vec<Record>), EvalError> {
        let parsed = parse_records(cfg.task, &src.text, &src.name).map_err(EvalError::Input)?;
        skipped += parsed.skipped.len();
        messages.extend(parsed.skipped);
        let lang = match src.lang.clone().or_else(|| lang_from_name(&src.name)) {
            Some(l) => l,
            None => {
                let stem = Path::new(&src.name).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| src.name.clone());
                messages.push(format!("{}: no language code in the file name; its rows are labelled `{stem}` (pass --lang)", src.name));
                stem
            }
        };
        Ok((lang, parsed.records))
    };
    let mut pools: Vec<(String, String, Vec<Prompted>)> = Vec::new();
    if k > 0 {
        for src in fewshot {
            let (lang, recs) = load(src, &mut messages)?;
            pools.push((src.name.clone(), lang, recs.iter().map(|r| prompts::process_for(&r.doc, cfg.mmlu_prompt, cfg.harness)).collect()));
        }
    }
    let rule = prompts::shot_rule(cfg.task, cfg.mmlu_prompt);
    let mut items = Vec::new();
    for src in data {
        let (lang, recs) = load(src, &mut messages)?;
        if recs.is_empty() {
            messages.push(format!("{}: no valid {} items", src.name, cfg.task));
            continue;
        }
        let docs: Vec<Prompted> = recs.iter().map(|r| prompts::process_for(&r.doc, cfg.mmlu_prompt, cfg.harness)).collect();
        // the shots' pool: the --fewshot-data file of this language (or the only one), else this file
        let pool = match pools.len() {
            0 => None,
            1 => Some(&pools[0]),
            _ => pools.iter().find(|p| p.1 == lang),
        };
        if k > 0 && pool.is_none() && !pools.is_empty() {
            messages.push(format!("{}: no --fewshot-data file for language `{lang}`; shots are drawn from this file", src.name));
        }
        let (pool_docs, same_file) = match pool {
            Some(p) => (&p.2, false),
            None => (&docs, true),
        };
        let avail = pool_docs.len() - same_file as usize;
        if k > avail {
            let from = pool.map(|p| p.0.as_str()).unwrap_or(&src.name);
            messages.push(format!("{}: only {avail} few-shot examples available in {from} (asked for {k}); items get {avail}", src.name));
        }
        let mut rng = PyRandom::new(cfg.seed);
        let n = cfg.limit.unwrap_or(usize::MAX).min(docs.len());
        for (i, (rec, doc)) in recs.iter().zip(&docs).take(n).enumerate() {
            let shots = prompts::draw_shots(&mut rng, rule, pool_docs.len(), k, same_file.then_some(i));
            let shot_docs: Vec<&Prompted> = shots.iter().map(|&j| &pool_docs[j]).collect();
            let context = prompts::fewshot_context(&doc.query, &shot_docs);
            items.push(PreparedItem { id: rec.id.clone(), lang: lang.clone(), source: src.name.clone(), prompted: doc.clone(), context, harness: cfg.harness });
        }
    }
    Ok((items, messages, skipped))
}

/// Scores prepared items (one [`score_items`] call: they share its batches and its common
/// prefix) and computes each item's metrics; an item the scorer refuses is `Err(message)`.
/// `meter` counts the items as they finish. With several ranks (`comm`) the items are split
/// across them and every rank gets every result ([`score_items_streaming`]).
pub fn score_prepared<B: Backend>(model: &Model<B>, tok: &Tokenizer, cfg: &EvalConfig, items: &[PreparedItem], comm: &dyn Collective, meter: &mut Meter) -> Result<(Vec<Result<ItemResult, String>>, ScoreStats), EvalError> {
    let enc = PairEncoder::new(cfg.harness, &model.cfg, tok)?;
    let mut scores: Vec<Option<ItemScore>> = vec![None; items.len()];
    let stats = score_items_streaming(model, tok, &item_requests(items.iter()), score_options(cfg), &enc, comm, &mut |done| {
        meter.advance(done.len() as u64);
        for (i, sc) in done {
            scores[i] = Some(sc);
        }
        Ok(())
    })?;
    meter.finish();
    Ok((items.iter().zip(scores).map(|(it, sc)| item_result(it, sc.expect("every item is scored or invalid"))).collect(), stats))
}

/// The scorer's requests of `items`: each context with its continuations.
pub fn item_requests<'a>(items: impl Iterator<Item = &'a PreparedItem>) -> Vec<ItemRequest> {
    items.map(|it| ItemRequest { context: it.context.clone(), continuations: prompts::continuations(&it.prompted) }).collect()
}

/// The scorer's options under `cfg`.
pub fn score_options(cfg: &EvalConfig) -> ScoreOptions {
    ScoreOptions { batch_size: cfg.batch_size, cache: cfg.cache, chunk: 0 }
}

/// An item's result from its score, or why it was skipped.
pub fn item_result(it: &PreparedItem, sc: ItemScore) -> Result<ItemResult, String> {
    match sc {
        ItemScore::Scored { logliks, truncated } => Ok(ItemResult::new(it, logliks, truncated)),
        ItemScore::Invalid(msg) => Err(format!("{}: id {}: {msg} — skipped", it.source, it.id)),
    }
}

impl ItemResult {
    /// An item's result from the logliks of its continuations (`prompts::continuations`: the
    /// choices, then TruthfulQA's mc2 targets).
    pub fn new(it: &PreparedItem, logliks: Vec<f64>, truncated: bool) -> ItemResult {
        let n1 = it.prompted.choices.len();
        let (ll1, ll2) = (logliks[..n1].to_vec(), logliks[n1..].to_vec());
        let mc2 = it.prompted.mc2.as_ref().map(|(_, t)| (&ll2[..], &t[..]));
        let metrics = match it.harness {
            Harness::V03 => metrics::item_metrics(&ll1, &it.prompted.choices, it.prompted.gold, mc2),
            Harness::V04 => metrics::item_metrics_v04(&ll1, &it.prompted.choices, it.prompted.gold, mc2),
        };
        let mc2_logliks = it.prompted.mc2.is_some().then_some(ll2);
        ItemResult { id: it.id.clone(), lang: it.lang.clone(), source: it.source.clone(), logliks: ll1, mc2_logliks, gold: it.prompted.gold, metrics, truncated }
    }
}

/// Unweighted means over languages: (acc, acc_norm, mc2).
pub type MacroAverage = (f64, Option<f64>, Option<f64>);

/// The rows of a task's table: one per language (in the order of first appearance), then all
/// items together, and the unweighted mean over languages.
pub fn language_rows(results: &[ItemResult], tqa: bool) -> (Vec<LangRow>, LangRow, MacroAverage) {
    let mut langs_order: Vec<&str> = Vec::new();
    for r in results {
        if !langs_order.contains(&r.lang.as_str()) {
            langs_order.push(&r.lang);
        }
    }
    let langs: Vec<LangRow> = langs_order
        .iter()
        .map(|l| {
            let ms: Vec<&ItemMetrics> = results.iter().filter(|r| r.lang == *l).map(|r| &r.metrics).collect();
            metrics::aggregate(l, &ms, tqa)
        })
        .collect();
    let all: Vec<&ItemMetrics> = results.iter().map(|r| &r.metrics).collect();
    let overall = metrics::aggregate("all", &all, tqa);
    let macro_avg = metrics::macro_average(&langs);
    (langs, overall, macro_avg)
}

/// Runs one task over `data` (shots from `fewshot`, matched by language, or from each file).
pub fn run_eval<B: Backend>(model: &Model<B>, tok: &Tokenizer, cfg: &EvalConfig, data: &[EvalSource], fewshot: &[EvalSource]) -> Result<EvalReport, EvalError> {
    run_eval_metered(model, tok, cfg, data, fewshot, &SingleProcess, |_| Meter::silent())
}

/// [`run_eval`] on the ranks of `comm` (items split across them, every rank gets the whole
/// report), with progress: `meter(n_items)` makes the meter the items are counted on.
pub fn run_eval_metered<B: Backend>(model: &Model<B>, tok: &Tokenizer, cfg: &EvalConfig, data: &[EvalSource], fewshot: &[EvalSource], comm: &dyn Collective, meter: impl FnOnce(u64) -> Meter) -> Result<EvalReport, EvalError> {
    let t0 = Instant::now();
    let (items, mut messages, mut skipped) = prepare_items(cfg, data, fewshot)?;
    if items.is_empty() {
        return Err(EvalError::Input(format!("no valid {} items in {}", cfg.task, data.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", "))));
    }
    let (scored, stats) = score_prepared(model, tok, cfg, &items, comm, &mut meter(items.len() as u64))?;
    let mut results = Vec::new();
    for r in scored {
        match r {
            Ok(r) => results.push(r),
            Err(msg) => {
                messages.push(msg);
                skipped += 1;
            }
        }
    }
    if results.is_empty() {
        return Err(EvalError::Input(format!("no {} item could be scored:\n{}", cfg.task, messages.join("\n"))));
    }
    let truncated = results.iter().filter(|r| r.truncated).count();
    let (langs, overall, macro_avg) = language_rows(&results, cfg.task == Task::TruthfulQa);
    let p = &model.cfg.path;
    let model_name = if p.file_name().is_some_and(|f| f == "config.json") { p.parent().unwrap_or(p) } else { p.as_path() }.display().to_string();
    Ok(EvalReport { task: cfg.task, harness: cfg.harness, model: model_name, num_fewshot: cfg.shots(), items: results, langs, overall, macro_avg, skipped, truncated, messages, stats, seconds: t0.elapsed().as_secs_f64() })
}

fn fmt_se(s: Option<f64>) -> String {
    s.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into())
}

impl EvalReport {
    /// The per-language table (n, metrics with standard errors; harness v0.4 adds acc_bytes),
    /// an `all` row, the mean over languages, and the skipped / truncated counts.
    pub fn table(&self) -> String {
        let tqa = self.task == Task::TruthfulQa;
        let (m1, m2) = if tqa { ("mc1", "mc2") } else { ("acc", "acc_norm") };
        let bytes = self.overall.acc_bytes.is_some();
        let harness = if self.harness == Harness::V03 { String::new() } else { format!(" · harness {}", self.harness.name()) };
        let mut s = format!("{} · {}-shot · {}{harness}\n", self.task, self.num_fewshot, self.model);
        s += &format!("{:<8} {:>6} {:>8} {:>8} {:>9} {:>8}", "lang", "n", m1, "±stderr", m2, "±stderr");
        s += &if bytes { format!(" {:>9} {:>8}\n", "acc_bytes", "±stderr") } else { "\n".into() };
        let stat = |x: Option<Stat>| x.map(|x| (format!("{:.4}", x.mean), fmt_se(x.stderr))).unwrap_or(("n/a".into(), "n/a".into()));
        let line = |r: &LangRow| {
            let (v2, se2) = stat(if tqa { r.mc2 } else { r.acc_norm });
            let mut l = format!("{:<8} {:>6} {:>8.4} {:>8} {:>9} {:>8}", r.lang, r.n, r.acc.mean, fmt_se(r.acc.stderr), v2, se2);
            if bytes {
                let (v3, se3) = stat(r.acc_bytes);
                l += &format!(" {v3:>9} {se3:>8}");
            }
            l + "\n"
        };
        for r in &self.langs {
            s += &line(r);
        }
        s += &line(&self.overall);
        if self.langs.len() > 1 {
            let second = if tqa { self.macro_avg.2 } else { self.macro_avg.1 };
            s += &format!("mean over {} languages: {m1} {:.4}, {m2} {}", self.langs.len(), self.macro_avg.0, second.map(|x| format!("{x:.4}")).unwrap_or("n/a".into()));
            s += &self.bytes_macro().map(|x| format!(", acc_bytes {x:.4}\n")).unwrap_or("\n".into());
        }
        s += &format!("skipped {} items; {} truncated to the model's window", self.skipped, self.truncated);
        s
    }

    /// The unweighted mean of acc_bytes over languages (harness v0.4).
    fn bytes_macro(&self) -> Option<f64> {
        let v: Vec<f64> = self.langs.iter().filter_map(|r| r.acc_bytes.map(|s| s.mean)).collect();
        (!v.is_empty()).then(|| metrics::mean(&v))
    }

    /// The summary JSON: overall metrics, the per-language ones, counts.
    pub fn summary_json(&self) -> Value {
        let tqa = self.task == Task::TruthfulQa;
        let row = |r: &LangRow| {
            let mut v = json!({"n": r.n, "acc": r.acc.mean, "acc_stderr": r.acc.stderr, "acc_norm": r.acc_norm.map(|s| s.mean), "acc_norm_stderr": r.acc_norm.and_then(|s| s.stderr)});
            if tqa {
                v["mc1"] = json!(r.acc.mean);
                v["mc1_stderr"] = json!(r.acc.stderr);
                v["mc2"] = json!(r.mc2.map(|s| s.mean));
                v["mc2_stderr"] = json!(r.mc2.and_then(|s| s.stderr));
            }
            if let Some(b) = r.acc_bytes {
                v["acc_bytes"] = json!(b.mean);
                v["acc_bytes_stderr"] = json!(b.stderr);
            }
            v
        };
        let mut v = json!({"task": self.task.name(), "model": self.model, "num_fewshot": self.num_fewshot});
        if let (Value::Object(o), Value::Object(r)) = (&mut v, row(&self.overall)) {
            o.extend(r);
        }
        v["acc_macro"] = json!(self.macro_avg.0);
        v["acc_norm_macro"] = json!(self.macro_avg.1);
        if tqa {
            v["mc2_macro"] = json!(self.macro_avg.2);
        }
        if let Some(b) = self.bytes_macro() {
            v["acc_bytes_macro"] = json!(b);
        }
        if self.harness != Harness::V03 {
            v["harness"] = json!(self.harness.name());
        }
        v["langs"] = Value::Object(self.langs.iter().map(|r| (r.lang.clone(), row(r))).collect());
        v["skipped"] = json!(self.skipped);
        v["truncated"] = json!(self.truncated);
        v
    }
}
