//! `okapi-train eval`: Okapi's multilingual benchmarks (m_arc, m_hellaswag, m_mmlu, TruthfulQA
//! mc) scored as lm-evaluation-harness scores them — see `okapi_rlhf::eval` for the templates,
//! their sources and the scoring.
//!
//! stdout: one table per (model, task) — n, acc, acc_norm (TruthfulQA: mc1, mc2) with standard
//! errors per language and for all items — and, last, one JSON line: the summary of the run
//! (with several models or tasks, `{"results": [summary, …]}`). stderr: progress, and one line
//! per skipped record. `--output`: one JSON line per item, `{"id","lang","logliks","pred",
//! "pred_norm","gold","task","model","truncated"}` (TruthfulQA adds mc2_logliks, mc1, mc2).
//!
//! `--suite okapi --data-dir DIR --out OUT`: Okapi's whole benchmark, resumable (`eval_suite`).
//!
//! `--harness v0.4` scores as lm-evaluation-harness 0.4.x instead of the v0.3 fork Okapi used
//! (joint tokenization with the tokenizer's BOS, acc_bytes, seed 1234, Okapi's v0.4 m_mmlu
//! template; `okapi_rlhf::eval::harness`, docs/eval-harness-versions.md); items then carry
//! `pred_bytes` and `acc_bytes`, and the table an acc_bytes column.

use okapi_data::Tokenizer;
use okapi_rlhf::eval::{prepare_items, run_eval_metered, EvalConfig, EvalReport, EvalSource, Harness, MmluPrompt, Task};
use okapi_runtime::{Backend, BackendKind};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Hugging Face model directory; several (comma-separated or repeated) run one after another
    #[arg(long, required = true, value_delimiter = ',')]
    pub model: Vec<PathBuf>,
    /// PEFT LoRA adapters applied to the models, one per --model in order (comma-separated or
    /// repeated)
    #[arg(long, value_delimiter = ',')]
    pub adapter: Vec<PathBuf>,
    /// arc, hellaswag, mmlu or truthfulqa; several comma-separated (arc,hellaswag). With
    /// --suite: the tasks to run [default: all four]
    #[arg(long, alias = "tasks", required_unless_present = "suite", value_delimiter = ',')]
    pub task: Vec<String>,
    /// Eval files (JSON array or JSONL). With several tasks, give each file's task as `arc=FILE`
    /// or name the task in the file name. The language comes from the file name
    /// (`vi_validation.json`, `arc_vi.json`) unless --lang is given
    #[arg(long, required_unless_present = "suite", num_args = 1..)]
    pub data: Vec<String>,
    /// Shots per item [default: ARC 25, HellaSwag 0, MMLU 25, TruthfulQA 0 (zero-shot only)]
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Files the shots are drawn from (matched to the data files by language; one file serves
    /// all); without it, each file's own items minus the evaluated one
    #[arg(long, num_args = 1..)]
    pub fewshot_data: Vec<String>,
    /// Evaluate only the first N valid items of each file
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seed of the random.Random that draws the shots (Python's generator, one per file)
    /// [default: 42; 1234 with --harness v0.4]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Language code of every data file (instead of the file names')
    #[arg(long)]
    pub lang: Option<String>,
    /// Per-item results, JSONL
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// Items scored side by side
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Score every (context, continuation) from scratch instead of sharing each context's
    /// forward across its choices (same results; the baseline of the speedup)
    #[arg(long)]
    pub no_cache: bool,
    /// MMLU template: v0.3 (harness v0.3 hendrycksTest: "Question: …\nChoices:\nA. …\nAnswer:"
    /// then " {choice text}") or okapi-v0.4 (harness v0.4's Okapi m_mmlu: letters as
    /// continuations, the first k shots) [default: v0.3; okapi-v0.4 with --harness v0.4]
    #[arg(long)]
    pub mmlu_prompt: Option<String>,
    /// Whose semantics: v0.3 (the lm-evaluation-harness fork Okapi used: context and
    /// continuation tokenized separately, no BOS, acc_norm by characters) or v0.4
    /// (lm-evaluation-harness 0.4.x: joint tokenization with the tokenizer's BOS, the BOS as an
    /// empty context, acc_bytes beside acc_norm, shots seeded 1234)
    #[arg(long, default_value = "v0.3")]
    pub harness: String,
    /// Run a whole benchmark: `okapi` = ARC (25-shot), HellaSwag (0-shot), MMLU (25-shot) and
    /// TruthfulQA (mc1/mc2) in every language of --data-dir, with Okapi's splits; writes
    /// results.json, results.md and the per-item files into --out, and resumes there
    #[arg(long, requires_all = ["data_dir", "out"], conflicts_with_all = ["data", "fewshot_data", "output", "lang", "num_fewshot"])]
    pub suite: Option<String>,
    /// The suite's data: a folder in the layout of Okapi's evaluation download (m_arc/,
    /// m_hellaswag/, m_mmlu/, m_truthfulqa/ with {lang}_{split}.json), or `bundled`
    #[arg(long, requires = "suite")]
    pub data_dir: Option<String>,
    /// The suite's languages (comma-separated) [default: every language of --data-dir]
    #[arg(long, requires = "suite", value_delimiter = ',')]
    pub langs: Vec<String>,
    /// The suite's results folder: results.json, results.md, items/, run.json; rerunning the
    /// same command there continues it
    #[arg(long, requires = "suite")]
    pub out: Option<PathBuf>,
    /// The suite scores its items (all task-languages together) in groups of N, batched and
    /// length-bucketed within a group, and appends each batch's results as it is done: a kill
    /// loses at most one batch; a rerun scores the group it interrupted again, whole
    #[arg(long, requires = "suite", default_value_t = 256)]
    pub save_every: usize,
}

impl EvalArgs {
    pub fn harness(&self) -> Result<Harness, String> {
        Harness::parse(&self.harness).map_err(|e| format!("--harness: {e}"))
    }

    /// --seed, or the harness's default.
    pub fn seed(&self) -> Result<u64, String> {
        Ok(self.seed.unwrap_or(self.harness()?.default_seed()))
    }

    /// --mmlu-prompt as given (or the harness's default's name) and parsed.
    pub fn mmlu_prompt(&self) -> Result<(String, MmluPrompt), String> {
        let given = match &self.mmlu_prompt {
            Some(s) => s.clone(),
            None => self.harness()?.default_mmlu_prompt().name().to_string(),
        };
        let parsed = MmluPrompt::parse(&given).map_err(|e| format!("--mmlu-prompt: {e}"))?;
        Ok((given, parsed))
    }
}

pub fn run(a: EvalArgs) -> Result<(), String> {
    if a.suite.is_some() {
        return super::on_backend!(a.backend, a.precision, |be| super::eval_suite::run(be, &a));
    }
    super::on_backend!(a.backend, a.precision, |be| run_on(be, &a))
}

/// `[task=]FILE` → (task, path): the prefix, the only task, or the task named in the file name.
fn assign(spec: &str, tasks: &[Task], flag: &str) -> Result<(Task, PathBuf), String> {
    if let Some((pre, rest)) = spec.split_once('=') {
        if let Ok(t) = Task::parse(pre) {
            if !tasks.contains(&t) {
                return Err(format!("{flag} {spec}: task `{t}` is not among --task"));
            }
            return Ok((t, PathBuf::from(rest)));
        }
    }
    if tasks.len() == 1 {
        return Ok((tasks[0], PathBuf::from(spec)));
    }
    let name = Path::new(spec).file_name().map(|f| f.to_string_lossy().to_lowercase()).unwrap_or_default();
    let keys = |t: Task| match t {
        Task::Arc => "arc",
        Task::Hellaswag => "hellaswag",
        Task::Mmlu => "mmlu",
        Task::TruthfulQa => "truthful",
    };
    let found: Vec<Task> = tasks.iter().copied().filter(|&t| name.contains(keys(t))).collect();
    match found[..] {
        [t] => Ok((t, PathBuf::from(spec))),
        _ => Err(format!("{flag} {spec}: with several tasks, say which one the file is for (e.g. arc={spec}) or name the task in the file name")),
    }
}

/// The tasks of `--task` (deduplicated) and the data and few-shot sources of each.
type Sources = Vec<(Task, EvalSource)>;

fn tasks_and_sources(a: &EvalArgs) -> Result<(Vec<Task>, Sources, Sources), String> {
    let mut tasks: Vec<Task> = Vec::new();
    for t in &a.task {
        let t = Task::parse(t).map_err(|e| format!("--task: {e}"))?;
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    let lang = a.lang.as_deref();
    let load = |specs: &[String], flag: &str| -> Result<Sources, String> {
        specs.iter().map(|spec| assign(spec, &tasks, flag).and_then(|(t, p)| Ok((t, EvalSource::from_file(&p, lang)?)))).collect()
    };
    let (data, fewshot) = (load(&a.data, "--data")?, load(&a.fewshot_data, "--fewshot-data")?);
    if let Some(t) = tasks.iter().find(|&&t| !data.iter().any(|(dt, _)| *dt == t)) {
        return Err(format!("--task {t}: no --data file for it"));
    }
    Ok((tasks, data, fewshot))
}

/// The evaluation's messages (the first 20) and its throughput line on stderr, its table on stdout.
fn print_report(report: &EvalReport) {
    const SHOWN: usize = 20;
    for m in report.messages.iter().take(SHOWN) {
        eprintln!("okapi-train eval: {m}");
    }
    if report.messages.len() > SHOWN {
        eprintln!("okapi-train eval: … and {} more messages", report.messages.len() - SHOWN);
    }
    let st = &report.stats;
    eprintln!(
        "okapi-train eval: {} items in {:.1}s ({:.2} items/s): {} with the shared-context cache ({} prefix tokens shared), {} from scratch; {} forwards, {} tokens",
        report.items.len(),
        report.seconds,
        report.items.len() as f64 / report.seconds.max(1e-9),
        st.items_cached,
        st.shared_prefix,
        st.items_fallback,
        st.forwards,
        st.tokens
    );
    println!("{}\n", report.table());
}

/// Each --model with its --adapter (none, or one per model in order).
pub fn models_and_adapters(a: &EvalArgs) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    if !a.adapter.is_empty() && a.adapter.len() != a.model.len() {
        return Err(format!("--adapter: {} given for {} --model; give one per model, in the same order", a.adapter.len(), a.model.len()));
    }
    Ok(a.model.iter().enumerate().map(|(k, m)| (m.clone(), a.adapter.get(k).cloned())).collect())
}

/// A model's tokenizer, once its config, its adapter's config and the tokenizer's fit to the
/// vocabulary are checked (no weights are read).
pub fn check_model(dir: &Path, adapter: Option<&Path>) -> Result<Tokenizer, String> {
    let tok = Tokenizer::load(dir).map_err(|e| e.to_string())?;
    let model_cfg = okapi_model::ModelConfig::load(dir).map_err(|e| e.to_string())?;
    tok.check_fits(model_cfg.vocab_size, &model_cfg.path).map_err(|e| e.to_string())?;
    if let Some(ad) = adapter {
        okapi_model::lora::read_adapter(ad).map_err(|e| e.to_string())?;
    }
    Ok(tok)
}

/// A model (with its adapter) and its tokenizer ([`check_model`] first).
pub fn load_model<B: Backend>(be: B, dir: &Path, adapter: Option<&Path>) -> Result<(okapi_model::Model<B>, Tokenizer), String> {
    let tok = check_model(dir, adapter)?;
    Ok((super::lora_flags::load_with_adapter(be, dir, adapter)?, tok))
}

fn run_on<B: Backend + Clone>(be: B, a: &EvalArgs) -> Result<(), String> {
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    let (harness, seed, (_, mmlu_prompt)) = (a.harness()?, a.seed()?, a.mmlu_prompt()?);
    let (tasks, data, fewshot) = tasks_and_sources(a)?;
    if let Some(out) = &a.output {
        let files: Vec<PathBuf> = a.data.iter().chain(&a.fewshot_data).map(|s| PathBuf::from(s.split_once('=').filter(|(t, _)| Task::parse(t).is_ok()).map_or(s.as_str(), |(_, f)| f))).collect();
        let dirs: Vec<(&'static str, &Path)> = a.model.iter().map(|m| ("--model", m.as_path())).collect();
        super::outdir::check_output_file("--output", out, &files.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &dirs)?;
    }
    let of_task = |set: &Sources, task: Task| -> Vec<EvalSource> { set.iter().filter(|(t, _)| *t == task).map(|(_, s)| s.clone()).collect() };
    let config = |task: Task| EvalConfig { task, num_fewshot: a.num_fewshot, limit: a.limit, seed, batch_size: a.batch_size, cache: !a.no_cache, mmlu_prompt, harness };
    // every file parsed and every setting checked before a model is loaded
    for &task in &tasks {
        prepare_items(&config(task), &of_task(&data, task), &of_task(&fewshot, task)).map_err(|e| e.to_string())?;
    }
    let (mut summaries, mut out_lines) = (Vec::<Value>::new(), String::new());
    for (dir, adapter) in &models_and_adapters(a)? {
        let (model, tok) = load_model(be.clone(), dir, adapter.as_deref())?;
        let model_name = match adapter {
            Some(ad) => format!("{}+{}", dir.display(), ad.display()),
            None => dir.display().to_string(),
        };
        for &task in &tasks {
            let (srcs, shots, cfg) = (of_task(&data, task), of_task(&fewshot, task), config(task));
            eprintln!("okapi-train eval: {task}, {}-shot, {} file(s), {} ({} params) on {}", cfg.shots(), srcs.len(), dir.display(), model.n_params(), be.name());
            let meter = |n| okapi_rlhf::progress::Meter::new(&format!("eval {task}"), "items", n);
            let report = run_eval_metered(&model, &tok, &cfg, &srcs, &shots, super::ranks::comm(), meter).map_err(|e| e.to_string())?;
            print_report(&report);
            for it in &report.items {
                out_lines.push_str(&serde_json::to_string(&it.to_json(task, &model_name)).expect("JSON values serialise"));
                out_lines.push('\n');
            }
            let mut s = report.summary_json();
            s["model"] = json!(model_name);
            summaries.push(s);
        }
    }
    // every rank has every result; rank 0 writes them
    if let Some(out) = a.output.as_ref().filter(|_| super::ranks::writes()) {
        super::outdir::write_output(out, &out_lines)?;
    }
    let last = if summaries.len() == 1 { summaries.pop().expect("one summary") } else { json!({ "results": summaries }) };
    println!("{}", serde_json::to_string(&last).expect("JSON values serialise"));
    Ok(())
}
