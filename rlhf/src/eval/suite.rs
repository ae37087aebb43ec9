//! Okapi's whole benchmark in one run (`okapi-train eval --suite okapi`): every task-language
//! file of a data directory in the layout of Okapi's evaluation repository, each scored with
//! Okapi's settings, for one or more models, resumably.
//!
//! **Layout** (what `scripts/download.sh` of nlp-uoregon/mlmm-evaluation — the evaluation
//! repository Okapi's README points to — puts under `datasets/`; its tasks
//! `lm_eval/tasks/multilingual_{arc,hellaswag,mmlu,truthfulqa}.py` read it):
//!
//! ```text
//! DIR/m_arc/{lang}_train.json  {lang}_validation.json  {lang}_test.json
//! DIR/m_hellaswag/{lang}_validation.json
//! DIR/m_mmlu/{lang}_dev.json  {lang}_test.json
//! DIR/m_truthfulqa/{lang}_validation.json
//! ```
//!
//! (`DIR/datasets/m_arc/…`, i.e. the folder the download creates, is found too.) Which split is
//! evaluated and which supplies the shots — the harness v0.3 evaluator takes the test split when
//! the task has one, else validation; shots come from the training docs when the task has them
//! (`rnd.sample(train, k)`), else from validation:
//!
//! | task | evaluated | shots |
//! |---|---|---|
//! | ARC | `{lang}_test.json` | 25 from `{lang}_train.json` |
//! | HellaSwag | `{lang}_validation.json` | 0 |
//! | MMLU | `{lang}_test.json` | 25 from `{lang}_dev.json` (the m_mmlu dataset's validation split) |
//! | TruthfulQA | `{lang}_validation.json` | 0 (mc1 and mc2) |
//!
//! A test file without its few-shot split (ARC without train, MMLU without dev) is skipped with
//! one line: Okapi's harness has no fallback there (its dataset script fails on the missing
//! file). A language of ARC or MMLU with no test file but a `{lang}_validation.json` — the
//! layout of the data bundled in okapi (`--data-dir bundled`, or `data/assets/eval` on disk) —
//! is evaluated on that file, the shots drawn from it with the item excluded, as the harness
//! draws them for a task whose only split is validation (and as `okapi-train eval` does without
//! `--fewshot-data`); one line says so per task. Other file names are ignored.
//!
//! The items, prompts and metrics are [`super::prepare_items`]'s and [`super::item_result`]'s,
//! i.e. exactly the single-task `okapi-train eval` on the same files (`--fewshot-data` the shot
//! split); the suite scores the items of all its files together ([`super::resume::run_suite`]),
//! so the logliks agree with the single-task run's to float rounding. Resuming and the outputs:
//! [`super::resume`] and [`super::results`].

use super::formats::EVAL_LANGS;
use super::{bundled_sources, EvalSource, Task};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The task directories of Okapi's layout, in the order of its tables.
pub const TASK_DIRS: [(Task, &str); 4] = [(Task::Arc, "m_arc"), (Task::Hellaswag, "m_hellaswag"), (Task::Mmlu, "m_mmlu"), (Task::TruthfulQa, "m_truthfulqa")];

/// The split names a file may carry (`{lang}_{split}.json`).
const SPLITS: [&str; 5] = ["train", "validation", "test", "dev", "val"];

/// Where the suite's files come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataDir {
    /// the eval sets embedded in the binary (`okapi_data::assets`)
    Bundled,
    Dir(PathBuf),
}

impl DataDir {
    /// `bundled` or a directory.
    pub fn parse(s: &str) -> DataDir {
        if s == "bundled" {
            DataDir::Bundled
        } else {
            DataDir::Dir(PathBuf::from(s))
        }
    }
}

/// One task-language of the suite: the file evaluated and the one its shots come from.
#[derive(Clone, Debug)]
pub struct SuiteFile {
    pub task: Task,
    pub lang: String,
    /// the split evaluated (`test`, `validation`)
    pub split: String,
    pub data: EvalSource,
    /// the shot split's file; None: 0-shot, or shots from `data` itself (the item excluded)
    pub fewshot: Option<EvalSource>,
}

impl SuiteFile {
    /// The harness's task name, `arc_vi` (mlmm-evaluation's `{task}_{lang}`).
    pub fn key(&self) -> String {
        format!("{}_{}", self.task.name(), self.lang)
    }
}

/// The files found and one line per file skipped or per note.
#[derive(Debug, Default)]
pub struct Discovery {
    pub files: Vec<SuiteFile>,
    pub messages: Vec<String>,
    /// the folder holding the task folders (None for the bundled data)
    pub root: Option<PathBuf>,
}

impl Discovery {
    /// The task folders read: what the suite's output must never be inside.
    pub fn inputs(&self) -> Vec<PathBuf> {
        self.root.iter().flat_map(|r| TASK_DIRS.iter().map(move |(_, name)| r.join(name))).collect()
    }
}

/// Okapi's order of languages (English first), then any other code alphabetically.
fn lang_rank(lang: &str) -> (usize, String) {
    (EVAL_LANGS.iter().position(|l| *l == lang).unwrap_or(EVAL_LANGS.len()), lang.to_string())
}

/// `vi_test.json` → ("vi", "test"); None for other names.
fn split_name(file: &str) -> Option<(String, &'static str)> {
    let stem = file.strip_suffix(".jsonl").or_else(|| file.strip_suffix(".json"))?;
    let (lang, split) = stem.rsplit_once('_')?;
    let split = SPLITS.iter().find(|s| **s == split)?;
    (!lang.is_empty() && !lang.contains('_')).then(|| (lang.to_string(), *split))
}

/// The split that supplies a task's shots in Okapi's layout (none for the 0-shot tasks).
fn shot_split(task: Task) -> Option<&'static str> {
    match task {
        Task::Arc => Some("train"),
        Task::Mmlu => Some("dev"),
        Task::Hellaswag | Task::TruthfulQa => None,
    }
}

/// Finds the suite's files: `tasks` (in Okapi's order) × the languages present (`langs` keeps
/// only those). An error when nothing can be evaluated.
pub fn discover(dir: &DataDir, tasks: &[Task], langs: Option<&[String]>) -> Result<Discovery, String> {
    let mut d = match dir {
        DataDir::Bundled => discover_bundled(tasks),
        DataDir::Dir(p) => discover_dir(p, tasks)?,
    };
    if let Some(keep) = langs {
        d.files.retain(|f| keep.contains(&f.lang));
        for l in keep.iter().filter(|l| !d.files.iter().any(|f| &f.lang == *l)) {
            d.messages.push(format!("--langs {l}: no file of the suite's tasks for `{l}`"));
        }
    }
    if d.files.is_empty() {
        let what = match dir {
            DataDir::Bundled => "the bundled data".to_string(),
            DataDir::Dir(p) => p.display().to_string(),
        };
        let why = d.messages.first().map(|m| format!(" ({m})")).unwrap_or_default();
        return Err(format!("--data-dir {what}: nothing to evaluate for the tasks and languages asked{why}"));
    }
    Ok(d)
}

fn discover_bundled(tasks: &[Task]) -> Discovery {
    let mut d = Discovery::default();
    for (task, _) in TASK_DIRS.iter().filter(|(t, _)| tasks.contains(t)) {
        let sources = bundled_sources(*task);
        if sources.is_empty() {
            d.messages.push(format!("{task}: the bundled data has no {task} set"));
        }
        let mut files: Vec<SuiteFile> = sources.into_iter().map(|s| SuiteFile { task: *task, lang: s.lang.clone().unwrap_or_default(), split: "validation".into(), data: s, fewshot: None }).collect();
        files.sort_by_key(|f| lang_rank(&f.lang));
        d.files.extend(files);
    }
    d
}

/// The directory holding the task folders: DIR, or DIR/datasets (the download's own folder).
fn layout_root(dir: &Path) -> Result<PathBuf, String> {
    if !dir.is_dir() {
        return Err(format!("--data-dir {}: not a directory (give the folder holding m_arc/, m_hellaswag/, m_mmlu/, m_truthfulqa/, or `bundled`)", dir.display()));
    }
    let has_tasks = |d: &Path| TASK_DIRS.iter().any(|(_, name)| d.join(name).is_dir());
    if !has_tasks(dir) && has_tasks(&dir.join("datasets")) {
        return Ok(dir.join("datasets"));
    }
    Ok(dir.to_path_buf())
}

fn discover_dir(dir: &Path, tasks: &[Task]) -> Result<Discovery, String> {
    let root = layout_root(dir)?;
    let mut d = Discovery { root: Some(root.clone()), ..Discovery::default() };
    let mut recognised = 0;
    for (task, name) in TASK_DIRS.iter().filter(|(t, _)| tasks.contains(t)) {
        let by_lang = split_files(&root.join(name))?;
        recognised += by_lang.len();
        if by_lang.is_empty() {
            d.messages.push(format!("{task}: no {name}/{{lang}}_{{split}}.json files in {}", root.display()));
        }
        let mut own_shots = Vec::new();
        for (lang, splits) in by_lang {
            match plan_lang(*task, name, &lang, &splits) {
                Ok(f) => {
                    if f.fewshot.is_none() && task.default_fewshot() > 0 {
                        own_shots.push(lang.clone());
                    }
                    d.files.push(f);
                }
                Err(msg) => d.messages.push(msg),
            }
        }
        if !own_shots.is_empty() {
            d.messages.push(format!("{name}: no test split for {}: their validation files are evaluated, the shots drawn from the same file (the item excluded), as for the bundled data", own_shots.join(", ")));
        }
    }
    if recognised == 0 {
        return Err(format!(
            "--data-dir {}: no Okapi eval files: expected m_arc/, m_hellaswag/, m_mmlu/ or m_truthfulqa/ holding {{lang}}_{{split}}.json files (e.g. m_arc/vi_test.json; the layout of Okapi's evaluation download), or `--data-dir bundled`",
            dir.display()
        ));
    }
    Ok(d)
}

/// A language's files by split.
type Splits = BTreeMap<&'static str, PathBuf>;

/// The `{lang}_{split}.json` files of a task folder, by language (Okapi's order) and split.
fn split_files(task_dir: &Path) -> Result<Vec<(String, Splits)>, String> {
    let mut by_lang: BTreeMap<(usize, String), Splits> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(task_dir) else { return Ok(Vec::new()) };
    for e in entries {
        let e = e.map_err(|e| format!("{}: {e}", task_dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((lang, split)) = split_name(&name).filter(|_| e.path().is_file()) {
            by_lang.entry(lang_rank(&lang)).or_default().insert(split, e.path());
        }
    }
    Ok(by_lang.into_iter().map(|((_, lang), s)| (lang, s)).collect())
}

/// A language of a task: its evaluated file and shot file, or why it is skipped.
fn plan_lang(task: Task, dir_name: &str, lang: &str, splits: &Splits) -> Result<SuiteFile, String> {
    let evaluated: &[&str] = if shot_split(task).is_some() { &["test", "validation"] } else { &["validation"] };
    let Some(split) = evaluated.iter().copied().find(|s| splits.contains_key(s)) else {
        let names = |s: &mut dyn Iterator<Item = &&str>, sep: &str| s.map(|s| format!("{lang}_{s}.json")).collect::<Vec<_>>().join(sep);
        return Err(format!("{dir_name}/{}: no {} to evaluate — {task} {lang} skipped", names(&mut splits.keys(), ", "), names(&mut evaluated.iter(), " or ")));
    };
    let load = |p: &PathBuf| EvalSource::from_file(p, Some(lang));
    let data = load(&splits[split])?;
    let fewshot = match shot_split(task).map(|s| (s, splits.get(s))) {
        Some((_, Some(p))) => Some(load(p)?),
        Some((s, None)) if split == "test" => {
            let k = task.default_fewshot();
            return Err(format!("{dir_name}/{lang}_test.json: no {dir_name}/{lang}_{s}.json to draw {task}'s {k} shots from (Okapi draws them from the {s} split and has no fallback) — {task} {lang} skipped"));
        }
        _ => None,
    };
    Ok(SuiteFile { task, lang: lang.to_string(), split: split.to_string(), data, fewshot })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_splits() {
        assert_eq!(split_name("vi_test.json"), Some(("vi".into(), "test")));
        assert_eq!(split_name("zh_validation.jsonl"), Some(("zh".into(), "validation")));
        assert_eq!(split_name("ar_challenge_test.json"), None);
        assert_eq!(split_name("vi.json"), None);
        assert_eq!(split_name("vi_test.txt"), None);
    }

    #[test]
    fn bundled_has_three_tasks_in_okapis_language_order() {
        let d = discover(&DataDir::Bundled, &Task::ALL, None).unwrap();
        let keys: Vec<String> = d.files.iter().map(SuiteFile::key).collect();
        assert_eq!(keys[..3], ["arc_en".to_string(), "arc_ru".into(), "arc_zh".into()]);
        assert!(keys.contains(&"mmlu_hi".to_string()) && !keys.iter().any(|k| k.starts_with("truthfulqa")));
        assert!(d.messages.iter().any(|m| m.contains("no truthfulqa set")), "{:?}", d.messages);
        let err = discover(&DataDir::Bundled, &[Task::TruthfulQa], None).unwrap_err();
        assert!(err.contains("nothing to evaluate"), "{err}");
        let vi = discover(&DataDir::Bundled, &[Task::Arc], Some(&["vi".into(), "xx".into()])).unwrap();
        assert_eq!(vi.files.len(), 1);
        assert!(vi.messages.iter().any(|m| m.contains("--langs xx")), "{:?}", vi.messages);
    }
}
