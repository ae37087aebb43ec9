//! A suite run's outputs: `results.json` in lm-evaluation-harness's layout and `results.md`,
//! the per-language table of Okapi's README.
//!
//! `results.json` holds one block per model, keyed by the model's name; each block is the
//! document harness v0.3 (the one Okapi used) writes for one model:
//!
//! ```text
//! { "<model>": {
//!     "results":  { "arc_vi": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", ["acc_bytes",
//!                              "acc_bytes_stderr": --harness v0.4], "n", "shots", "model"},
//!                   "truthfulqa_vi": {"mc1", "mc1_stderr", "mc2", "mc2_stderr", "n", "shots", "model"}, … },
//!     "versions": { "arc_vi": 0, "hellaswag_vi": 1, "mmlu_vi": 0, "truthfulqa_vi": 1, … },
//!     "config":   { "model", "model_args": "pretrained=DIR[,peft=ADAPTER]", "num_fewshot": {task: k},
//!                   "batch_size", "seed", "limit", … every setting of run.json } } }
//! ```
//!
//! Task names are mlmm-evaluation's (`{task}_{lang}`), versions its task versions; a standard
//! error is the harness's `mean_stderr` (null for a single item); `n` counts the items scored.
//! Keys are sorted and nothing in the file depends on when or how often the run was resumed.
//!
//! `results.md`: rows = languages (Okapi's order), columns = task × model, then each model's
//! mean over the tasks of the row, and a last row with each column's mean over languages
//! (unweighted, as Okapi's tables average languages). The metric per task is the one the Open
//! LLM Leaderboard — and Okapi's multilingual leaderboard — reports: ARC acc_norm, HellaSwag
//! acc_norm, MMLU acc, TruthfulQA mc2; in percent.

use super::metrics::{LangRow, Stat};
use super::resume::{ModelEntry, Settings};
use super::suite::TASK_DIRS;
use super::Task;
use serde_json::{json, Map, Value};

/// One model's results on one task-language.
#[derive(Clone, Debug)]
pub struct Cell {
    pub model: String,
    pub task: Task,
    pub lang: String,
    pub row: LangRow,
    pub shots: usize,
}

impl Cell {
    /// The harness's task name (`arc_vi`).
    pub fn key(&self) -> String {
        format!("{}_{}", self.task.name(), self.lang)
    }

    /// The table's metric (module docs).
    pub fn headline(&self) -> f64 {
        match self.task {
            Task::Arc | Task::Hellaswag => self.row.acc_norm.map_or(f64::NAN, |s| s.mean),
            Task::Mmlu => self.row.acc.mean,
            Task::TruthfulQa => self.row.mc2.map_or(f64::NAN, |s| s.mean),
        }
    }

    /// The harness's entry: the metrics with their standard errors, then n, shots, model.
    fn entry(&self) -> Value {
        let mut o = Map::new();
        let mut put = |name: &str, s: Option<Stat>| {
            o.insert(name.into(), json!(s.map(|s| s.mean)));
            o.insert(format!("{name}_stderr"), json!(s.and_then(|s| s.stderr)));
        };
        if self.task == Task::TruthfulQa {
            put("mc1", Some(self.row.acc));
            put("mc2", self.row.mc2);
        } else {
            put("acc", Some(self.row.acc));
            put("acc_norm", self.row.acc_norm);
            // harness v0.4's byte-normalised accuracy, a metric of its own
            if self.row.acc_bytes.is_some() {
                put("acc_bytes", self.row.acc_bytes);
            }
        }
        o.insert("n".into(), json!(self.row.n));
        o.insert("shots".into(), json!(self.shots));
        o.insert("model".into(), json!(self.model));
        Value::Object(o)
    }
}

/// The harness's task versions (mlmm-evaluation's `VERSION`s).
fn version(task: Task) -> u32 {
    match task {
        Task::Arc | Task::Mmlu => 0,
        Task::Hellaswag | Task::TruthfulQa => 1,
    }
}

/// `results.json` (module docs) of `models` over `cells`, with the run's `settings`.
pub fn results_json(models: &[ModelEntry], settings: &Settings, cells: &[Cell]) -> Value {
    let mut out = Map::new();
    for m in models {
        let mine: Vec<&Cell> = cells.iter().filter(|c| c.model == m.name).collect();
        let results: Map<String, Value> = mine.iter().map(|c| (c.key(), c.entry())).collect();
        let versions: Map<String, Value> = mine.iter().map(|c| (c.key(), json!(version(c.task)))).collect();
        let shots: Map<String, Value> = mine.iter().map(|c| (c.task.name().to_string(), json!(c.shots))).collect();
        let mut config: Map<String, Value> = settings.iter().map(|(k, v)| (k.trim_start_matches('-').replace('-', "_"), v.clone())).collect();
        let peft = m.adapter.as_ref().map(|a| format!(",peft={a}")).unwrap_or_default();
        config.insert("model".into(), json!(m.name));
        config.insert("model_args".into(), json!(format!("pretrained={}{peft}", m.path)));
        config.insert("num_fewshot".into(), Value::Object(shots));
        out.insert(m.name.clone(), json!({"results": results, "versions": versions, "config": config}));
    }
    Value::Object(out)
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}", 100.0 * x)
    } else {
        "—".into()
    }
}

fn mean_of(xs: &[f64]) -> f64 {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// `results.md` (module docs): `models` in column order, languages in the order of `cells`.
pub fn results_markdown(models: &[String], cells: &[Cell]) -> String {
    let tasks: Vec<Task> = TASK_DIRS.iter().map(|(t, _)| *t).filter(|t| cells.iter().any(|c| c.task == *t)).collect();
    let mut langs: Vec<&str> = Vec::new();
    for c in cells {
        if !langs.contains(&c.lang.as_str()) {
            langs.push(&c.lang);
        }
    }
    let title = |t: Task| match t {
        Task::Arc => "ARC",
        Task::Hellaswag => "HellaSwag",
        Task::Mmlu => "MMLU",
        Task::TruthfulQa => "TruthfulQA",
    };
    let mut head = vec!["Language".to_string()];
    head.extend(tasks.iter().flat_map(|t| models.iter().map(move |m| format!("{} · {m}", title(*t)))));
    head.extend(models.iter().map(|m| format!("Average · {m}")));
    // one row of numbers per language: task × model, then each model's mean over tasks
    let rows: Vec<Vec<f64>> = langs
        .iter()
        .map(|l| {
            let cell = |t: Task, m: &String| cells.iter().find(|c| c.task == t && &c.model == m && c.lang == *l).map_or(f64::NAN, Cell::headline);
            let mut r: Vec<f64> = tasks.iter().flat_map(|t| models.iter().map(move |m| cell(*t, m))).collect();
            r.extend(models.iter().map(|m| mean_of(&tasks.iter().map(|t| cell(*t, m)).collect::<Vec<_>>())));
            r
        })
        .collect();
    let avg: Vec<f64> = (0..head.len() - 1).map(|j| mean_of(&rows.iter().map(|r| r[j]).collect::<Vec<_>>())).collect();
    let line = |cols: Vec<String>| format!("| {} |\n", cols.join(" | "));
    let mut s = String::from("# okapi-train eval --suite okapi\n\n");
    s += &line(head.clone());
    s += &line(std::iter::once("---".to_string()).chain((1..head.len()).map(|_| "---:".to_string())).collect());
    for (l, r) in langs.iter().zip(&rows) {
        s += &line(std::iter::once(l.to_string()).chain(r.iter().map(|x| pct(*x))).collect());
    }
    s += &line(std::iter::once("**Average**".to_string()).chain(avg.iter().map(|x| format!("**{}**", pct(*x)))).collect());
    let shots = |t: Task| cells.iter().find(|c| c.task == t).map_or(0, |c| c.shots);
    let metric = |t: Task| match t {
        Task::Arc | Task::Hellaswag => "acc_norm",
        Task::Mmlu => "acc",
        Task::TruthfulQa => "mc2",
    };
    let legend: Vec<String> = tasks.iter().map(|t| format!("{} {}, {}-shot", title(*t), metric(*t), shots(*t))).collect();
    s += &format!("\nPercent. {}. Averages are unweighted means over the cells present; — no file.\n", legend.join("; "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(model: &str, task: Task, lang: &str, acc: f64, second: f64) -> Cell {
        let s = |m| Some(Stat { mean: m, stderr: Some(0.1) });
        let (acc_norm, mc2) = if task == Task::TruthfulQa { (None, s(second)) } else { (s(second), None) };
        Cell { model: model.into(), task, lang: lang.into(), row: LangRow { lang: lang.into(), n: 4, acc: Stat { mean: acc, stderr: Some(0.2) }, acc_norm, mc2, acc_bytes: None }, shots: task.default_fewshot() }
    }

    #[test]
    fn json_has_the_harness_layout() {
        let m = ModelEntry { name: "sft".into(), path: "/m/sft".into(), adapter: None, items: "sft".into() };
        let mut settings = Settings::new();
        settings.insert("--batch-size".into(), json!(8));
        let v = results_json(&[m], &settings, &[cell("sft", Task::Arc, "vi", 0.25, 0.5), cell("sft", Task::TruthfulQa, "vi", 0.25, 0.4)]);
        let b = &v["sft"];
        assert_eq!(b["results"]["arc_vi"], json!({"acc": 0.25, "acc_stderr": 0.2, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "n": 4, "shots": 25, "model": "sft"}));
        assert_eq!(b["results"]["truthfulqa_vi"]["mc2"], 0.4);
        assert_eq!(b["versions"], json!({"arc_vi": 0, "truthfulqa_vi": 1}));
        assert_eq!((b["config"]["batch_size"].clone(), b["config"]["model_args"].clone()), (json!(8), json!("pretrained=/m/sft")));
    }

    #[test]
    fn table_rows_columns_and_averages() {
        let cells = [cell("a", Task::Arc, "vi", 0.1, 0.2), cell("b", Task::Arc, "vi", 0.1, 0.4), cell("a", Task::Mmlu, "vi", 0.3, 0.0), cell("a", Task::Arc, "ru", 0.1, 0.6)];
        let md = results_markdown(&["a".into(), "b".into()], &cells);
        assert!(md.contains("| Language | ARC · a | ARC · b | MMLU · a | MMLU · b | Average · a | Average · b |"), "{md}");
        assert!(md.contains("| vi | 20.0 | 40.0 | 30.0 | — | 25.0 | 40.0 |"), "{md}");
        assert!(md.contains("| ru | 60.0 | — | — | — | 60.0 | — |"), "{md}");
        assert!(md.contains("| **Average** | **40.0** | **40.0** | **30.0** | **—** | **42.5** | **40.0** |"), "{md}");
        assert!(md.contains("ARC acc_norm, 25-shot; MMLU acc, 25-shot"), "{md}");
    }
}
