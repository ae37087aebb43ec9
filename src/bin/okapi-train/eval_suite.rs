//! `okapi-train eval --suite okapi --data-dir DIR --model M… --out OUT`: Okapi's whole benchmark
//! in one resumable command. The data layout, the splits and the shots:
//! `okapi_rlhf::eval::suite`; resuming and refusing another run's folder:
//! `okapi_rlhf::eval::resume`; `results.json` and `results.md`: `okapi_rlhf::eval::results`.
//!
//! Every file is read, every item prepared and OUT checked before a model is loaded; nothing is
//! written when a check fails. stderr: the notes on the files (skipped languages, records),
//! progress per task-language with items/s and ETA (one line per batch appended, or one line
//! updated in place on a terminal), a summary of skipped and truncated items
//! per file. stdout: the Markdown table. OUT/runs.jsonl gets one line per invocation (command
//! line, time, items scored, seconds): what changes between runs stays out of results.json.

use super::eval::{check_model, load_model, models_and_adapters, EvalArgs};
use okapi_rlhf::eval::results::{results_json, results_markdown, Cell};
use okapi_rlhf::eval::resume::{fnv64, model_names, run_suite, FileEntry, FileJob, ItemsLog, LineKey, ModelEntry, RunRecord, Settings};
use okapi_rlhf::eval::suite::{discover, DataDir, SuiteFile};
use okapi_rlhf::eval::{language_rows, prepare_items, EvalConfig, PreparedItem, Task};
use okapi_rlhf::progress::eta;
use okapi_rlhf::rundir;
use okapi_runtime::Backend;
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Lines of notes shown per file (skipped records); the rest are counted.
const SHOWN: usize = 10;

/// A task-language with its items prepared.
struct Prepared {
    file: SuiteFile,
    cfg: EvalConfig,
    items: Vec<PreparedItem>,
    /// records of the file (or its shot file) that could not be read
    skipped: usize,
}

pub fn run<B: Backend + Clone>(be: B, a: &EvalArgs) -> Result<(), String> {
    let t0 = Instant::now();
    let base = base_config(a)?;
    let out = a.out.as_deref().expect("clap requires --out with --suite");
    let data_dir = DataDir::parse(a.data_dir.as_deref().expect("clap requires --data-dir with --suite"));
    let found = discover(&data_dir, &suite_tasks(a)?, (!a.langs.is_empty()).then_some(&a.langs[..]))?;
    note(None, &found.messages);
    let inputs = found.inputs();
    let files = prepare(found.files, &base)?;
    let models = checked_models(a)?;
    // with several ranks, rank 0 reads and writes OUT; the others score their share in memory
    let writes = super::ranks::writes();
    let record = if writes { claim_out(a, &be, &base, &models, &files, &inputs)? } else { fresh_record(a, &be, &base, &models, &files).reconcile(None, out)? };
    let mut logs = if writes { open_logs(out, &record, &files, base.seed)? } else { record.models.iter().map(|_| files.iter().map(|_| ItemsLog::unwritten()).collect()).collect() };
    let scored = score_all(&be, a, &models, &record, &files, &mut logs)?;
    if !writes {
        return Ok(());
    }
    let cells = write_results(out, &record, &files, &logs)?;
    record_invocation(out, scored, t0.elapsed().as_secs_f64())?;
    eprintln!("okapi-train eval: {scored} items scored in {:.1}s; results in {}", t0.elapsed().as_secs_f64(), out.display());
    print!("{}", results_markdown(&record.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>(), &cells));
    Ok(())
}

/// --model with --adapter, each given once and its config and tokenizer readable (before OUT
/// records them).
fn checked_models(a: &EvalArgs) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let models = models_and_adapters(a)?;
    for (k, (dir, adapter)) in models.iter().enumerate() {
        let same = |(d, ad): &(PathBuf, Option<PathBuf>)| rundir::resolved(d) == rundir::resolved(dir) && ad.as_deref().map(rundir::resolved) == adapter.as_deref().map(rundir::resolved);
        if models[..k].iter().any(same) {
            return Err(format!("--model {}: given twice (with the same --adapter); each model is one block of results.json", dir.display()));
        }
        check_model(dir, adapter.as_deref())?;
    }
    Ok(models)
}

/// Items of a file without a line yet.
fn left(log: &ItemsLog, p: &Prepared) -> usize {
    (0..p.items.len()).filter(|i| !log.done.contains_key(i)).count()
}

/// Scores what the items files lack, model by model (a model with nothing left is not
/// loaded), all task-languages of a model batched together; returns how many items were scored.
fn score_all<B: Backend + Clone>(be: &B, a: &EvalArgs, models: &[(PathBuf, Option<PathBuf>)], record: &RunRecord, files: &[Prepared], logs: &mut [Vec<ItemsLog>]) -> Result<usize, String> {
    let mut progress = Progress::new(logs.iter().map(|ls| ls.iter().zip(files).map(|(log, p)| left(log, p)).sum::<usize>()).sum());
    let mut scored = 0;
    for (((dir, adapter), entry), logs) in models.iter().zip(&record.models).zip(logs) {
        // rank 0's files decide
        if super::ranks::agree(logs.iter().zip(files).all(|(log, p)| left(log, p) == 0))? {
            continue;
        }
        let (model, tok) = load_model(be.clone(), dir, adapter.as_deref())?;
        eprintln!("okapi-train eval: {} ({} params) on {}", entry.name, model.n_params(), be.name());
        progress.last_append = Instant::now();
        let mut file_progress: Vec<FileProgress> = files.iter().zip(logs.iter()).map(|(p, log)| progress.file(&format!("{} · {} {}", entry.name, p.file.task, p.file.lang), p.items.len(), p.items.len() - left(log, p))).collect();
        let mut jobs: Vec<FileJob> = files.iter().zip(logs.iter_mut()).map(|(p, log)| FileJob { cfg: &p.cfg, items: &p.items, log, key: line_key(&entry.name, p, p.cfg.seed) }).collect();
        run_suite(&model, &tok, &mut jobs, a.save_every, super::ranks::comm(), &mut |j, n| {
            scored += n;
            file_progress[j].advance(&mut progress, n);
        })
        .map_err(|e| e.to_string())?;
        progress.finish();
    }
    Ok(scored)
}

/// The settings shared by every task (the task and its shots are Okapi's, set per file).
fn base_config(a: &EvalArgs) -> Result<EvalConfig, String> {
    match a.suite.as_deref() {
        Some("okapi") => {}
        other => return Err(format!("--suite {}: unknown suite (expected okapi)", other.unwrap_or(""))),
    }
    if a.batch_size == 0 {
        return Err("--batch-size must be at least 1".into());
    }
    if a.save_every == 0 {
        return Err("--save-every must be at least 1".into());
    }
    if a.limit == Some(0) {
        return Err("--limit must be at least 1".into());
    }
    let (_, mmlu_prompt) = a.mmlu_prompt()?;
    Ok(EvalConfig { num_fewshot: None, limit: a.limit, seed: a.seed()?, batch_size: a.batch_size, cache: !a.no_cache, mmlu_prompt, harness: a.harness()?, ..EvalConfig::new(Task::Arc) })
}

/// `--tasks` (all four when not given), in Okapi's order.
fn suite_tasks(a: &EvalArgs) -> Result<Vec<Task>, String> {
    if a.task.is_empty() {
        return Ok(Task::ALL.to_vec());
    }
    let asked: Vec<Task> = a.task.iter().map(|t| Task::parse(t).map_err(|e| format!("--tasks: {e}"))).collect::<Result<_, _>>()?;
    Ok(Task::ALL.into_iter().filter(|t| asked.contains(t)).collect())
}

/// Notes on stderr: the first [`SHOWN`] of a file's, then how many more.
fn note(file: Option<&str>, messages: &[String]) {
    for m in messages.iter().take(SHOWN) {
        eprintln!("okapi-train eval: {m}");
    }
    if messages.len() > SHOWN {
        eprintln!("okapi-train eval: … and {} more about {}", messages.len() - SHOWN, file.unwrap_or("the data"));
    }
}

/// Every file's items (a file that cannot be read, or has no valid item, is skipped with its
/// line); an error when none is left.
fn prepare(files: Vec<SuiteFile>, base: &EvalConfig) -> Result<Vec<Prepared>, String> {
    let mut out = Vec::new();
    for f in files {
        let cfg = EvalConfig { task: f.task, ..base.clone() };
        let what = format!("{} {}", f.task, f.lang);
        match prepare_items(&cfg, std::slice::from_ref(&f.data), f.fewshot.as_slice()) {
            Ok((items, messages, skipped)) => {
                note(Some(&f.data.name), &messages);
                if items.is_empty() {
                    eprintln!("okapi-train eval: {}: no item to evaluate — {what} skipped", f.data.name);
                    continue;
                }
                out.push(Prepared { file: f, cfg, items, skipped });
            }
            Err(e) => eprintln!("okapi-train eval: {e} — {what} skipped"),
        }
    }
    if out.is_empty() {
        return Err("--data-dir: no file of the suite has an item that can be evaluated (see above)".into());
    }
    Ok(out)
}

/// What decides the numbers (resume::RunRecord), by flag: the harness version among them, so
/// a results dir of the other version is refused. `base` holds the resolved seed.
fn settings<B: Backend>(a: &EvalArgs, be: &B, base: &EvalConfig) -> Settings {
    let backend = be.name().split([' ', ':']).next().unwrap_or_default().to_string();
    // as given (or the harness's default): the record of a v0.3 run is what it always was
    let mmlu = a.mmlu_prompt.clone().unwrap_or_else(|| base.harness.default_mmlu_prompt().name().to_string());
    let pairs = [
        ("--harness", json!(base.harness.name())),
        ("--seed", json!(base.seed)),
        ("--limit", json!(a.limit)),
        ("--mmlu-prompt", json!(mmlu)),
        ("--batch-size", json!(a.batch_size)),
        ("--save-every", json!(a.save_every)),
        ("--no-cache", json!(a.no_cache)),
        ("--backend", json!(backend)),
        ("--precision", json!(a.precision.to_string())),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Checks OUT (never an input, never another command's folder, the same run's settings) and
/// writes its run.json: this run's record merged into the stored one.
fn claim_out<B: Backend>(a: &EvalArgs, be: &B, base: &EvalConfig, models: &[(PathBuf, Option<PathBuf>)], files: &[Prepared], data: &[PathBuf]) -> Result<RunRecord, String> {
    let out = a.out.as_deref().expect("clap requires --out with --suite");
    let mut inputs: Vec<(&'static str, &Path)> = models.iter().map(|(m, _)| ("--model", m.as_path())).collect();
    inputs.extend(models.iter().filter_map(|(_, ad)| ad.as_deref().map(|p| ("--adapter", p))));
    inputs.extend(data.iter().map(|d| ("--data-dir", d.as_path())));
    rundir::claim(out, "--out", &inputs, rundir::OutMode::Resume).map_err(|e| e.to_string())?;
    let stored = RunRecord::load(out)?;
    let training = rundir::run_files(out);
    if !training.is_empty() {
        return Err(format!("--out {} holds a training run or a model ({}): choose another folder for the suite's results", out.display(), training.join(", ")));
    }
    if stored.is_none() && (out.join("results.json").exists() || out.join("items").exists()) {
        return Err(format!("--out {} holds results.json or items/ but no run.json: not a suite run that can be continued; choose another --out", out.display()));
    }
    let record = fresh_record(a, be, base, models, files).reconcile(stored, out)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    super::outdir::write_json(&out.join("run.json"), &serde_json::to_value(&record).expect("a record serialises"))?;
    Ok(record)
}

/// This command's record of the run (before it is merged with OUT's).
fn fresh_record<B: Backend>(a: &EvalArgs, be: &B, base: &EvalConfig, models: &[(PathBuf, Option<PathBuf>)], files: &[Prepared]) -> RunRecord {
    let resolved = |p: &Path| rundir::resolved(p).display().to_string();
    let names = model_names(models);
    let entries = models.iter().zip(names).map(|((m, ad), name)| ModelEntry { name, path: resolved(m), adapter: ad.as_deref().map(resolved), items: String::new() }).collect();
    let file_entries = files.iter().map(|p| (p.file.key(), file_entry(p))).collect();
    RunRecord { suite: "okapi".into(), settings: settings(a, be, base), models: entries, files: file_entries }
}

fn file_entry(p: &Prepared) -> FileEntry {
    let f = &p.file;
    FileEntry { data: f.data.name.clone(), data_fnv64: fnv64(&f.data.text), fewshot: f.fewshot.as_ref().map(|s| s.name.clone()), fewshot_fnv64: f.fewshot.as_ref().map(|s| fnv64(&s.text)), shots: p.cfg.shots() }
}

fn line_key(model: &str, p: &Prepared, seed: u64) -> LineKey {
    LineKey { model: model.to_string(), task: p.file.task, lang: p.file.lang.clone(), shots: p.cfg.shots(), seed }
}

/// The per-item files of this command's models × files, as `logs[model][file]`.
fn open_logs(out: &Path, record: &RunRecord, files: &[Prepared], seed: u64) -> Result<Vec<Vec<ItemsLog>>, String> {
    record
        .models
        .iter()
        .map(|m| files.iter().map(|p| ItemsLog::open(&out.join("items").join(&m.items).join(format!("{}.jsonl", p.file.key())), &line_key(&m.name, p, seed))).collect())
        .collect()
}

/// Writes results.json and results.md from the per-item files, prints the summary per file,
/// and returns the cells.
fn write_results(out: &Path, record: &RunRecord, files: &[Prepared], logs: &[Vec<ItemsLog>]) -> Result<Vec<Cell>, String> {
    let (mut cells, mut summary) = (Vec::new(), String::new());
    for (j, p) in files.iter().enumerate() {
        let mut parts = Vec::new();
        for (m, log) in record.models.iter().zip(logs) {
            let (results, invalid, missing) = log[j].collect(&p.items)?;
            if missing > 0 || results.is_empty() {
                return Err(format!("{} · {}: {missing} items have no result (internal error)", m.name, p.file.key()));
            }
            note(Some(&p.file.data.name), &invalid.iter().map(|msg| format!("{}: {msg}", m.name)).collect::<Vec<_>>());
            let (rows, _, _) = language_rows(&results, p.file.task == Task::TruthfulQa);
            let truncated = results.iter().filter(|r| r.truncated).count();
            parts.push(format!("{} {} scored, {} skipped, {truncated} truncated", m.name, results.len(), p.skipped + invalid.len()));
            cells.push(Cell { model: m.name.clone(), task: p.file.task, lang: p.file.lang.clone(), row: rows.into_iter().next().expect("one language"), shots: p.cfg.shots() });
        }
        summary += &format!("\n  {} ({}): {}", p.file.key(), p.file.data.name, parts.join("; "));
    }
    eprintln!("okapi-train eval: summary (skipped: records or items that could not be scored; truncated: contexts cut to the model's window):{summary}");
    let json = results_json(&record.models, &record.settings, &cells);
    super::outdir::write_json(&out.join("results.json"), &json)?;
    let names: Vec<String> = record.models.iter().map(|m| m.name.clone()).collect();
    rundir::write_durable(&out.join("results.md"), results_markdown(&names, &cells).as_bytes()).map_err(|e| e.to_string())?;
    Ok(cells)
}

/// One line of OUT/runs.jsonl: when this invocation ran and what it did.
fn record_invocation(out: &Path, scored: usize, seconds: f64) -> Result<(), String> {
    use std::io::Write;
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let line = json!({"argv": std::env::args().collect::<Vec<_>>(), "finished_unix": unix, "items_scored": scored, "seconds": seconds});
    let path = out.join("runs.jsonl");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

/// Progress of the whole suite: items left and the rate so far, for the ETA.
struct Progress {
    left: usize,
    scored: usize,
    t0: Instant,
    terminal: bool,
    /// a line is being updated in place
    shown: bool,
    /// when the last batch was appended: the next batch started then
    last_append: Instant,
}

/// Progress of one task-language.
struct FileProgress {
    label: String,
    total: usize,
    done: usize,
    scored: usize,
    /// when the batch that brought this file's first items began
    t0: Option<Instant>,
    terminal: bool,
}

impl Progress {
    fn new(left: usize) -> Progress {
        Progress { left, scored: 0, t0: Instant::now(), terminal: std::io::stderr().is_terminal(), shown: false, last_append: Instant::now() }
    }

    /// Ends the line updated in place (on a terminal).
    fn finish(&mut self) {
        if self.terminal && self.shown {
            eprintln!();
        }
        self.shown = false;
    }

    fn file(&self, label: &str, total: usize, done: usize) -> FileProgress {
        FileProgress { label: label.to_string(), total, done, scored: 0, t0: None, terminal: self.terminal }
    }
}

impl FileProgress {
    /// `n` more items scored: the line with this file's rate and ETA, and the suite's.
    fn advance(&mut self, suite: &mut Progress, n: usize) {
        self.done += n;
        self.scored += n;
        suite.scored += n;
        suite.left = suite.left.saturating_sub(n);
        // the file's rate since the batch that brought its first items began (files share batches)
        let rate = self.scored as f64 / self.t0.get_or_insert(suite.last_append).elapsed().as_secs_f64().max(1e-9);
        suite.last_append = Instant::now();
        let suite_rate = suite.scored as f64 / suite.t0.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "okapi-train eval: {}: {}/{} items, {rate:.2} items/s, ETA {} (suite: {} items left, ETA {})",
            self.label,
            self.done,
            self.total,
            eta((self.total - self.done) as f64 / rate),
            suite.left,
            eta(suite.left as f64 / suite_rate)
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        suite.shown = true;
    }
}
