//! Resuming a suite run: what a results directory holds, how a rerun continues it, and how a
//! run with other settings is refused.
//!
//! - `OUT/run.json` ([`RunRecord`]): everything that decides the numbers — the settings
//!   (seed, limit, MMLU prompt, batch size, `--save-every`, cache, backend, precision, harness),
//!   the models (name → resolved path and adapter) and, per task-language, the files with a
//!   checksum of their text and the shots. A rerun with any other setting, a model of the same
//!   name at another path, a changed data file, or without one of the models already there is
//!   refused in one line naming the difference ([`RunRecord::reconcile`]); new models and new
//!   task-languages are added.
//! - `OUT/items/<model>/<task>_<lang>.jsonl` ([`ItemsLog`]): one line per item, appended and
//!   synced as each batch of a group of `--save-every` items is done, keyed by model, task, language, the
//!   item's index and id, shots and seed. A rerun skips the items there; a line cut by a kill
//!   is dropped.
//! - Groups are fixed slices of the suite's items (all task-languages in order, `[0, n)`,
//!   `[n, 2n)`, …), scored by one call each whatever is already done ([`run_suite`]): a group
//!   a kill interrupted is scored again whole, with the same batches and shared prefixes, so
//!   every item's logliks are the bits an uninterrupted run computes, and `results.json`
//!   (computed from these lines) is byte-identical.

use super::{item_requests, item_result, score_items_streaming, score_options, EvalConfig, EvalError, ItemResult, PairEncoder, PreparedItem, Task};
use crate::loglik::ScoreError;
use okapi_data::Tokenizer;
use okapi_model::Model;
use okapi_runtime::{Backend, Collective};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The settings that decide a run's numbers, by flag (`"--seed": 42`).
pub type Settings = BTreeMap<String, Value>;

/// A model of the run: its name in the results, what it is, and its items folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// the model directory, resolved
    pub path: String,
    pub adapter: Option<String>,
    /// folder under `OUT/items`
    pub items: String,
}

/// A task-language's inputs: the files read and a checksum of each, and the shots.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub data: String,
    pub data_fnv64: String,
    pub fewshot: Option<String>,
    pub fewshot_fnv64: Option<String>,
    pub shots: usize,
}

/// `OUT/run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub suite: String,
    pub settings: Settings,
    pub models: Vec<ModelEntry>,
    /// by the harness's task name (`arc_vi`)
    pub files: BTreeMap<String, FileEntry>,
}

/// FNV-1a, 64 bits, in hex: a data file's checksum (a changed file is never resumed into).
pub fn fnv64(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "unset".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

impl RunRecord {
    /// The record of `out` (None when there is no `run.json`).
    pub fn load(out: &Path) -> Result<Option<RunRecord>, String> {
        let path = out.join("run.json");
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: not an eval suite record ({e}); choose another --out", path.display()))
    }

    /// This run's record merged into the one `out` holds, or the first difference that forbids
    /// continuing it, in one line.
    pub fn reconcile(self, stored: Option<RunRecord>, out: &Path) -> Result<RunRecord, String> {
        let Some(mut old) = stored else { return Ok(self.with_item_dirs(Vec::new())) };
        let there = format!("--out {} holds a suite run", out.display());
        let fix = "results are never mixed: rerun with its settings to continue it, or choose another --out";
        if old.suite != self.suite {
            return Err(format!("{there} of --suite {}; this command runs --suite {}: {fix}", old.suite, self.suite));
        }
        let keys: std::collections::BTreeSet<&String> = old.settings.keys().chain(self.settings.keys()).collect();
        if let Some(k) = keys.into_iter().find(|k| old.settings.get(*k) != self.settings.get(*k)) {
            return Err(format!("{there} with {k} {} (run.json); this command has {k} {}: {fix}", shown(old.settings.get(k)), shown(self.settings.get(k))));
        }
        for m in &old.models {
            match self.models.iter().find(|n| n.name == m.name) {
                None => return Err(format!("{there} that also holds model `{}` ({}), which this command does not evaluate: add it to --model, or choose another --out", m.name, m.path)),
                Some(n) if (&n.path, &n.adapter) != (&m.path, &m.adapter) => {
                    let what = |e: &ModelEntry| e.adapter.as_ref().map_or(e.path.clone(), |a| format!("{} with adapter {a}", e.path));
                    return Err(format!("{there} whose model `{}` is {}; this command's `{}` is {}: {fix}", m.name, what(m), n.name, what(n)));
                }
                Some(_) => {}
            }
        }
        for (key, f) in &self.files {
            let Some(g) = old.files.get(key) else { continue };
            if (&g.data_fnv64, &g.fewshot_fnv64) != (&f.data_fnv64, &f.fewshot_fnv64) {
                return Err(format!("{there} whose {key} items were scored on other contents of {} (run.json's checksums differ from {}): {fix}", g.data, f.data));
            }
            if g.shots != f.shots {
                return Err(format!("{there} whose {key} items have {} shots; this command gives them {}: {fix}", g.shots, f.shots));
            }
        }
        let mut merged = self.with_item_dirs(old.models.clone());
        old.files.extend(std::mem::take(&mut merged.files));
        merged.files = old.files;
        Ok(merged)
    }

    /// The models in this command's order, keeping the items folder a stored model has and
    /// giving the new ones a free folder named after them.
    fn with_item_dirs(mut self, stored: Vec<ModelEntry>) -> RunRecord {
        let mut taken: Vec<String> = stored.iter().map(|m| m.items.clone()).collect();
        for m in &mut self.models {
            if let Some(s) = stored.iter().find(|s| s.name == m.name) {
                m.items = s.items.clone();
                continue;
            }
            let base: String = m.name.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect();
            let mut dir = base.clone();
            for n in 2.. {
                if !taken.contains(&dir) {
                    break;
                }
                dir = format!("{base}-{n}");
            }
            taken.push(dir.clone());
            m.items = dir;
        }
        self
    }
}

/// The names of models in the results: each directory's name (`+` the adapter's), with parent
/// folders added where two would be the same (`a/final`, `b/final`).
pub fn model_names(models: &[(PathBuf, Option<PathBuf>)]) -> Vec<String> {
    let resolved: Vec<(PathBuf, Option<PathBuf>)> = models.iter().map(|(m, a)| (crate::rundir::resolved(m), a.as_deref().map(crate::rundir::resolved))).collect();
    let tail = |p: &Path, depth: usize| -> String {
        let parts: Vec<String> = p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).filter(|c| c != "/").collect();
        parts[parts.len().saturating_sub(depth)..].join("/")
    };
    let name = |(m, a): &(PathBuf, Option<PathBuf>), depth: usize| match a {
        Some(a) => format!("{}+{}", tail(m, depth), tail(a, depth)),
        None => tail(m, depth),
    };
    let mut depth = vec![1; models.len()];
    for _ in 0..64 {
        let names: Vec<String> = resolved.iter().zip(&depth).map(|(m, &d)| name(m, d)).collect();
        let clash: Vec<usize> = (0..names.len()).filter(|&i| names.iter().filter(|n| **n == names[i]).count() > 1).collect();
        if clash.is_empty() {
            return names;
        }
        clash.into_iter().for_each(|i| depth[i] += 1);
    }
    resolved.iter().map(|m| name(m, usize::MAX)).collect()
}

/// What every line of an items file carries, beside the item's own fields.
#[derive(Clone, Debug)]
pub struct LineKey {
    pub model: String,
    pub task: Task,
    pub lang: String,
    pub shots: usize,
    pub seed: u64,
}

impl LineKey {
    /// The line of item `index`: its result (`ItemResult::to_json`) or why it could not be
    /// scored (`invalid`), with the key.
    pub fn line(&self, index: usize, item: &PreparedItem, result: Result<ItemResult, String>) -> Value {
        let mut v = match result {
            Ok(r) => r.to_json(self.task, &self.model),
            Err(msg) => json!({"id": item.id, "lang": item.lang, "task": self.task.name(), "model": self.model, "invalid": msg}),
        };
        v["index"] = json!(index);
        v["shots"] = json!(self.shots);
        v["seed"] = json!(self.seed);
        v
    }

    /// The index of a line read back, once its key is checked.
    fn check(&self, v: &Value) -> Result<usize, String> {
        let want = [("model", json!(self.model)), ("task", json!(self.task.name())), ("lang", json!(self.lang)), ("shots", json!(self.shots)), ("seed", json!(self.seed))];
        if let Some((k, w)) = want.iter().find(|(k, w)| v.get(k) != Some(w)) {
            return Err(format!("`{k}` is {}, not {w}", shown(v.get(k))));
        }
        v.get("index").and_then(Value::as_u64).map(|i| i as usize).filter(|_| v.get("id").is_some()).ok_or_else(|| "no `index` or `id`".into())
    }
}

/// A per-item JSONL file: the items done (by index) and the file, open for appending — or,
/// on a rank of a data-parallel run that does not write ([`ItemsLog::unwritten`]), the lines in
/// memory only.
pub struct ItemsLog {
    path: PathBuf,
    file: Option<File>,
    pub done: BTreeMap<usize, Value>,
}

impl ItemsLog {
    /// Opens (or creates) `path`, reading the items done; a last line without its newline (a
    /// write a kill cut) is dropped from the file. A line that is not a result of `key` is an
    /// error: the file was edited or belongs to another run.
    pub fn open(path: &Path, key: &LineKey) -> Result<ItemsLog, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let bytes = if path.exists() { std::fs::read(path).map_err(err)? } else { Vec::new() };
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        if keep < bytes.len() {
            file.set_len(keep as u64).map_err(err)?;
        }
        let text = std::str::from_utf8(&bytes[..keep]).map_err(|_| format!("{}: not UTF-8 text; remove the file to score its items again", path.display()))?;
        let mut done = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let bad = |why: String| format!("{}: line {}: not a result of this run ({why}); remove the file to score its items again", path.display(), n + 1);
            let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
            done.entry(key.check(&v).map_err(bad)?).or_insert(v);
        }
        Ok(ItemsLog { path: path.to_path_buf(), file: Some(file), done })
    }

    /// A log that keeps its lines in memory and writes nothing (a rank other than 0).
    pub fn unwritten() -> ItemsLog {
        ItemsLog { path: PathBuf::new(), file: None, done: BTreeMap::new() }
    }

    /// Appends lines in one write and syncs them: a kill loses at most the lines of the write
    /// in flight.
    pub fn append(&mut self, lines: Vec<(usize, Value)>) -> Result<(), String> {
        let mut buf = String::new();
        for (_, v) in &lines {
            buf.push_str(&serde_json::to_string(v).expect("JSON values serialise"));
            buf.push('\n');
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(buf.as_bytes()).and_then(|_| file.sync_data()).map_err(|e| format!("{}: {e}", self.path.display()))?;
        }
        self.done.extend(lines);
        Ok(())
    }

    /// Rewrites the file with its lines in item order (batches append them in the order they
    /// finish): a new file synced, then renamed over the old one, so a kill leaves either.
    pub fn rewrite_in_order(&mut self) -> Result<(), String> {
        if self.file.is_none() {
            return Ok(());
        }
        let err = |e: std::io::Error| format!("{}: {e}", self.path.display());
        let mut text = String::new();
        for v in self.done.values() {
            text.push_str(&serde_json::to_string(v).expect("JSON values serialise"));
            text.push('\n');
        }
        let tmp = self.path.with_extension("jsonl.partial");
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.file = Some(OpenOptions::new().append(true).open(&self.path).map_err(err)?);
        Ok(())
    }

    /// The items' results in item order (from the lines, so a resumed run and an uninterrupted
    /// one aggregate the same numbers), the messages of the items that could not be scored,
    /// and how many items have no line yet.
    pub fn collect(&self, items: &[PreparedItem]) -> Result<(Vec<ItemResult>, Vec<String>, usize), String> {
        let (mut results, mut invalid, mut missing) = (Vec::new(), Vec::new(), 0);
        for (i, it) in items.iter().enumerate() {
            let Some(v) = self.done.get(&i) else {
                missing += 1;
                continue;
            };
            let bad = |why: &str| format!("{}: item {i} (id {}): {why}; remove the file to score its items again", self.path.display(), it.id);
            if v["id"] != json!(it.id) {
                return Err(bad(&format!("the line has id {}", v["id"])));
            }
            if let Some(msg) = v.get("invalid").and_then(Value::as_str) {
                invalid.push(msg.to_string());
                continue;
            }
            let nums = |k: &str| v.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_f64).collect::<Vec<f64>>()).unwrap_or_default();
            let logliks: Vec<f64> = nums("logliks").into_iter().chain(nums("mc2_logliks")).collect();
            if logliks.len() != super::prompts::continuations(&it.prompted).len() {
                return Err(bad(&format!("{} logliks for {} continuations", logliks.len(), super::prompts::continuations(&it.prompted).len())));
            }
            results.push(ItemResult::new(it, logliks, v["truncated"] == json!(true)));
        }
        Ok((results, invalid, missing))
    }
}

/// One task-language of a suite run for one model: its settings, items, per-item file and key.
pub struct FileJob<'a> {
    pub cfg: &'a EvalConfig,
    pub items: &'a [PreparedItem],
    pub log: &'a mut ItemsLog,
    pub key: LineKey,
}

/// Scores what the jobs' files lack, all task-languages together (one harness, batch size and
/// cache setting: the suite's). The items of all jobs, in job order, are cut into fixed groups
/// of `group`; a group with an item lacking its line is scored whole — batched and
/// length-bucketed across its files, shared prefixes computed once — and each item's line is
/// appended to its file as soon as its batch is done (a kill loses at most the batch in
/// flight). `on_appended(job, n)` follows each append; at the end each file written to is
/// rewritten in item order. With several ranks (`comm`) each group is split across them
/// ([`score_items_streaming`]); rank 0's files decide which groups are left.
pub fn run_suite<B: Backend>(model: &Model<B>, tok: &Tokenizer, jobs: &mut [FileJob<'_>], group: usize, comm: &dyn Collective, on_appended: &mut dyn FnMut(usize, usize)) -> Result<(), EvalError> {
    let Some(first) = jobs.first() else { return Ok(()) };
    let (enc, opts) = (PairEncoder::new(first.cfg.harness, &model.cfg, tok)?, score_options(first.cfg));
    let mut appended = vec![false; jobs.len()];
    let all: Vec<(usize, usize)> = jobs.iter().enumerate().flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i))).collect();
    for window in all.chunks(group.max(1)) {
        // rank 0's files decide (the other ranks' logs are unwritten)
        let mut whole = [f32::from(u8::from(window.iter().all(|&(j, i)| jobs[j].log.done.contains_key(&i))))];
        comm.broadcast(&mut whole, 0).map_err(ScoreError::from)?;
        if whole[0] != 0.0 {
            continue;
        }
        let reqs = item_requests(window.iter().map(|&(j, i)| &jobs[j].items[i]));
        score_items_streaming(model, tok, &reqs, opts, &enc, comm, &mut |done| {
            let mut lines: BTreeMap<usize, Vec<(usize, Value)>> = BTreeMap::new();
            for (k, sc) in done {
                let (j, i) = window[k];
                let job = &jobs[j];
                if !job.log.done.contains_key(&i) {
                    lines.entry(j).or_default().push((i, job.key.line(i, &job.items[i], item_result(&job.items[i], sc))));
                }
            }
            for (j, lines) in lines {
                let n = lines.len();
                jobs[j].log.append(lines).map_err(ScoreError::Other)?;
                appended[j] = true;
                crate::hooks::eval_items_appended(n);
                on_appended(j, n);
            }
            Ok(())
        })?;
    }
    for (job, _) in jobs.iter_mut().zip(appended).filter(|(_, a)| *a) {
        job.log.rewrite_in_order().map_err(EvalError::Input)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seed: u64, models: &[(&str, &str)]) -> RunRecord {
        let mut settings = Settings::new();
        settings.insert("--seed".into(), json!(seed));
        settings.insert("--limit".into(), Value::Null);
        let models = models.iter().map(|(n, p)| ModelEntry { name: n.to_string(), path: p.to_string(), adapter: None, items: String::new() }).collect();
        let mut files = BTreeMap::new();
        files.insert("arc_vi".to_string(), FileEntry { data: "m_arc/vi_test.json".into(), data_fnv64: fnv64("a"), fewshot: None, fewshot_fnv64: None, shots: 25 });
        RunRecord { suite: "okapi".into(), settings, models, files }
    }

    #[test]
    fn reconcile_adds_models_and_refuses_differences() {
        let out = Path::new("OUT");
        let first = record(42, &[("sft", "/m/sft")]).reconcile(None, out).unwrap();
        assert_eq!(first.models[0].items, "sft");
        let both = record(42, &[("sft", "/m/sft"), ("rl/x", "/m/rl/x")]).reconcile(Some(first.clone()), out).unwrap();
        assert_eq!(both.models.iter().map(|m| m.items.as_str()).collect::<Vec<_>>(), ["sft", "rl_x"]);
        let err = record(1, &[("sft", "/m/sft")]).reconcile(Some(first.clone()), out).unwrap_err();
        assert!(err.contains("with --seed 42 (run.json); this command has --seed 1"), "{err}");
        let err = record(42, &[("rl", "/m/rl")]).reconcile(Some(first.clone()), out).unwrap_err();
        assert!(err.contains("also holds model `sft` (/m/sft), which this command does not evaluate"), "{err}");
        let err = record(42, &[("sft", "/other/sft")]).reconcile(Some(first.clone()), out).unwrap_err();
        assert!(err.contains("whose model `sft` is /m/sft; this command's `sft` is /other/sft"), "{err}");
        let mut changed = record(42, &[("sft", "/m/sft")]);
        changed.files.get_mut("arc_vi").unwrap().data_fnv64 = fnv64("b");
        let err = changed.reconcile(Some(first), out).unwrap_err();
        assert!(err.contains("arc_vi items were scored on other contents of m_arc/vi_test.json"), "{err}");
    }

    #[test]
    fn model_names_are_unique() {
        let p = |s: &str| (PathBuf::from(s), None);
        assert_eq!(model_names(&[p("/r/a/final"), p("/r/b/final"), p("/r/sft")]), ["a/final", "b/final", "sft"]);
        assert_eq!(model_names(&[(PathBuf::from("/r/base"), Some(PathBuf::from("/r/lora")))]), ["base+lora"]);
    }
}
