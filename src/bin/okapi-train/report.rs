//! `okapi-train report RUN_DIR… [--out FILE]`: one self-contained HTML page (inline SVG, no
//! script, no network) with, for the runs given (overlaid where they share a metric):
//! - every number of `metrics.jsonl` as a curve against its step (PPO: iteration), raw and
//!   smoothed; validation metrics (`val_*`) and PPO's phase timings (`time_*`) in their own
//!   sections, the timings also as a table of means;
//! - `args.json` as a table per run;
//! - the first samples of `samples.jsonl` per iteration, each text in its own script and
//!   direction (`dir="auto"`, a font stack covering Arabic, Devanagari, Bengali, Tamil, Han…);
//! - `results.json` of an eval suite (lm-evaluation-harness layout): per task, a table of the
//!   per-language metrics of each model and a grouped bar chart of the headline metric.
//!
//! A directory without `metrics.jsonl` or `results.json` whose sub-directories have them (the
//! demo's) stands for those. Broken lines, null/NaN values and steps out of order are tolerated:
//! skipped, counted in the page, sorted.

use super::svg::{bar_chart, esc, line_chart, Series};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run directories (outputs of sft / reward / dpo / ppo / eval --suite, or the demo's)
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// The HTML file to write [default: report.html in the first run directory]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Weight of the exponential moving average drawn over each curve (0: raw only)
    #[arg(long, default_value_t = 0.6)]
    pub smoothing: f64,
}

/// What one run directory holds.
struct Run {
    label: String,
    /// the x key of its metrics ("step" or "iteration") and metric → (x, y), sorted by x
    x_key: String,
    metrics: BTreeMap<String, Vec<(f64, f64)>>,
    skipped_lines: usize,
    args: Option<Value>,
    samples: Vec<Value>,
    results: Option<Value>,
}

pub fn run(a: ReportArgs) -> Result<(), String> {
    check_smoothing(a.smoothing)?;
    let out = a.out.clone().unwrap_or_else(|| a.runs[0].join("report.html"));
    write_report(&a.runs, &out, a.smoothing)?;
    println!("{}", out.display());
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct PlotArgs {
    /// Run directories (several: overlaid)
    #[arg(required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// Metrics of metrics.jsonl to draw (several: one figure, a line per run and metric)
    #[arg(long, required = true, num_args = 1..)]
    pub metric: Vec<String>,
    /// The figure to write: FILE.svg, or FILE.png (rasterised at twice the size, text in the system's fonts)
    #[arg(long)]
    pub out: PathBuf,
    /// Weight of the exponential moving average drawn over each curve (0: raw only)
    #[arg(long, default_value_t = 0.6)]
    pub smoothing: f64,
}

/// `okapi-train plot`: one figure of some metrics of some runs, as an SVG or PNG file.
pub fn plot(a: PlotArgs) -> Result<(), String> {
    check_smoothing(a.smoothing)?;
    let png = match a.out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => false,
        Some("png") => true,
        _ => return Err(format!("--out {}: expected a .svg or .png file", a.out.display())),
    };
    let runs = load_runs(&a.runs)?;
    let mut series = Vec::new();
    for m in &a.metric {
        let found: Vec<Series> = runs.iter().filter_map(|r| r.metrics.get(m).map(|p| Series { label: if a.metric.len() > 1 { format!("{} {m}", r.label) } else { r.label.clone() }, color: 0, points: p.clone() })).collect();
        if found.is_empty() {
            let known: std::collections::BTreeSet<&String> = runs.iter().flat_map(|r| r.metrics.keys()).collect();
            return Err(format!("--metric {m}: no run has it (metrics: {})", known.into_iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        for mut s in found {
            s.color = series.len();
            series.push(s);
        }
    }
    let svg = line_chart(&a.metric.join(", "), &x_label(runs.iter()), &series, a.smoothing);
    // PNG at twice the SVG's size: sharp in papers and issue threads
    let bytes = if png { super::svg::to_png(&svg, 2.0).map_err(|e| format!("--out {}: {e}", a.out.display()))? } else { format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{svg}\n").into_bytes() };
    std::fs::write(&a.out, bytes).map_err(|e| format!("--out {}: {e}", a.out.display()))?;
    println!("{}", a.out.display());
    Ok(())
}

/// Writes the report of `dirs` to `out`.
pub fn write_report(dirs: &[PathBuf], out: &Path, smoothing: f64) -> Result<(), String> {
    let runs = load_runs(dirs)?;
    std::fs::write(out, page(&runs, smoothing)).map_err(|e| format!("--out {}: {e}", out.display()))
}

fn check_smoothing(w: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&w) {
        Ok(())
    } else {
        Err(format!("--smoothing {w}: expected a weight in [0, 1)"))
    }
}

/// The runs of every directory given, in order.
fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    for dir in dirs {
        runs.extend(load_dir(dir)?);
    }
    Ok(runs)
}

/// The x axis of a chart of `runs`: their step keys (`step`, `iteration`, or both).
fn x_label<'r>(runs: impl Iterator<Item = &'r Run>) -> String {
    let mut x: Vec<&str> = runs.map(|r| r.x_key.as_str()).collect();
    x.sort();
    x.dedup();
    x.join(" / ")
}

/// The runs of `dir`: itself, or its sub-directories that hold runs (one level).
fn load_dir(dir: &Path) -> Result<Vec<Run>, String> {
    if !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let label = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string());
    if holds_run(dir) {
        return Ok(vec![load_run(dir, label)]);
    }
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten().map(|e| e.path()).filter(|p| p.is_dir() && holds_run(p)).collect();
    subs.sort();
    if subs.is_empty() {
        return Err(format!("{}: no metrics.jsonl or results.json here or in its sub-directories (expected a run directory)", dir.display()));
    }
    Ok(subs.iter().map(|s| load_run(s, format!("{label}/{}", s.file_name().unwrap().to_string_lossy()))).collect())
}

fn holds_run(dir: &Path) -> bool {
    dir.join("metrics.jsonl").is_file() || dir.join("results.json").is_file()
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path).ok().and_then(|t| serde_json::from_str(&t).ok())
}

fn load_run(dir: &Path, label: String) -> Run {
    let lines: Vec<Result<Value, ()>> = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str::<Value>(l).map_err(|_| ())).collect();
    let x_key = if lines.iter().flatten().any(|v| v.get("iteration").is_some()) { "iteration" } else { "step" }.to_string();
    let mut metrics: BTreeMap<String, BTreeMap<u64, f64>> = BTreeMap::new();
    let mut skipped_lines = 0;
    for line in &lines {
        let Some((x, obj)) = line.as_ref().ok().and_then(|v| Some((v.get(&x_key)?.as_f64()?, v.as_object()?))) else {
            skipped_lines += 1;
            continue;
        };
        for (k, v) in obj {
            if let Some(y) = v.as_f64().filter(|y| y.is_finite() && !["step", "iteration", "epoch"].contains(&k.as_str())) {
                // a step logged twice keeps its last value; f64 bits as the key keep the order
                metrics.entry(k.clone()).or_default().insert(x.to_bits(), y);
            }
        }
    }
    let metrics = metrics.into_iter().map(|(k, pts)| {
        let mut p: Vec<(f64, f64)> = pts.into_iter().map(|(x, y)| (f64::from_bits(x), y)).collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        (k, p)
    });
    let samples = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Run { label, x_key, metrics: metrics.collect(), skipped_lines, args: read_json(&dir.join("args.json")), samples, results: read_json(&dir.join("results.json")) }
}

const CSS: &str = r#"body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans Arabic","Noto Naskh Arabic","Noto Sans Devanagari","Noto Sans Bengali","Noto Sans Tamil","Noto Sans Telugu","Noto Sans Kannada","Noto Sans Malayalam","Noto Sans Gujarati","Noto Sans Gurmukhi","Noto Sans Oriya","Noto Sans Armenian","Noto Sans Georgian","Noto Sans CJK SC","Noto Sans SC","Microsoft YaHei","PingFang SC",Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #eee;background:#fff;font-family:inherit}
table{border-collapse:collapse;margin:8px 0;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.sample{border:1px solid #e4e4e4;border-radius:4px;padding:8px;margin:6px 0;white-space:pre-wrap;unicode-bidi:plaintext}
.note{color:#777;font-size:13px}.label{color:#555;font-size:12px;font-weight:bold;margin-top:4px}"#;

/// Which metrics a section of curves shows.
type MetricFilter = fn(&str) -> bool;

/// The whole page.
fn page(runs: &[Run], smoothing: f64) -> String {
    let names: Vec<String> = runs.iter().map(|r| esc(&r.label)).collect();
    let mut h = format!("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>okapi report: {}</title><style>{CSS}</style></head><body>\n<h1>okapi report: {}</h1>\n", names.join(", "), names.join(", "));
    let kinds: [(&str, MetricFilter); 3] = [("Training metrics", |k| !k.starts_with("val_") && !k.starts_with("time_")), ("Validation", |k| k.starts_with("val_")), ("Timings per phase", |k| k.starts_with("time_"))];
    for (title, keep) in kinds {
        h.push_str(&curves(runs, title, keep, smoothing));
    }
    h.push_str(&phase_table(runs));
    h.push_str(&eval_section(runs));
    h.push_str(&samples_section(runs));
    h.push_str(&args_section(runs));
    for r in runs.iter().filter(|r| r.skipped_lines > 0) {
        h.push_str(&format!("<p class=\"note\">{}: {} line(s) of metrics.jsonl without a readable step were skipped.</p>\n", esc(&r.label), r.skipped_lines));
    }
    h.push_str("</body></html>\n");
    h
}

/// A section of curves: one chart per metric `keep` accepts, every run that has it overlaid.
fn curves(runs: &[Run], title: &str, keep: fn(&str) -> bool, smoothing: f64) -> String {
    let mut names: Vec<&String> = runs.iter().flat_map(|r| r.metrics.keys()).filter(|k| keep(k)).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let mut h = format!("<h2>{}</h2>\n<div class=\"charts\">\n", esc(title));
    for name in names {
        let series: Vec<Series> = runs.iter().enumerate().filter_map(|(k, r)| r.metrics.get(name).map(|p| Series { label: r.label.clone(), color: k, points: p.clone() })).collect();
        let x = x_label(runs.iter().filter(|r| r.metrics.contains_key(name)));
        h.push_str(&format!("<div class=\"curve\" data-metric=\"{}\">{}</div>\n", esc(name), line_chart(name, &x, &series, smoothing)));
    }
    h.push_str("</div>\n");
    h
}

/// PPO's phases: the mean seconds per iteration of each `time_*` metric, per run.
fn phase_table(runs: &[Run]) -> String {
    let with: Vec<&Run> = runs.iter().filter(|r| r.metrics.keys().any(|k| k.starts_with("time_"))).collect();
    if with.is_empty() {
        return String::new();
    }
    let phases: Vec<&String> = with[0].metrics.keys().filter(|k| k.starts_with("time_")).collect();
    let mut h = String::from("<table><tr><th>run</th>");
    for p in &phases {
        h.push_str(&format!("<th>{} (mean s)</th>", esc(p)));
    }
    h.push_str("</tr>\n");
    for r in with {
        h.push_str(&format!("<tr><td>{}</td>", esc(&r.label)));
        for p in &phases {
            let v = r.metrics.get(*p).filter(|v| !v.is_empty()).map(|v| v.iter().map(|x| x.1).sum::<f64>() / v.len() as f64);
            h.push_str(&format!("<td class=\"num\">{}</td>", v.map_or("–".into(), |v| format!("{v:.3}"))));
        }
        h.push_str("</tr>\n");
    }
    h + "</table>\n"
}

/// Each task's metrics in the order the Okapi README shows them, the first being the headline.
const TASKS: [(&str, &[&str]); 4] = [("arc", &["acc_norm", "acc"]), ("hellaswag", &["acc_norm", "acc"]), ("mmlu", &["acc", "acc_norm"]), ("truthfulqa", &["mc2", "mc1"])];

/// The eval suites' results: per task a table (languages × model·metric) and a bar chart.
fn eval_section(runs: &[Run]) -> String {
    // (model label, task_lang → metrics)
    let mut models: Vec<(String, &serde_json::Map<String, Value>)> = Vec::new();
    for r in runs {
        for (model, block) in r.results.as_ref().and_then(Value::as_object).into_iter().flatten() {
            if let Some(res) = block.get("results").and_then(Value::as_object) {
                let label = if runs.iter().filter(|x| x.results.is_some()).count() > 1 { format!("{}/{model}", r.label) } else { model.clone() };
                models.push((label, res));
            }
        }
    }
    if models.is_empty() {
        return String::new();
    }
    let mut h = String::from("<h2>Evaluation</h2>\n");
    for (task, metrics) in TASKS {
        let prefix = format!("{task}_");
        let mut langs: Vec<&str> = models.iter().flat_map(|(_, res)| res.keys()).filter_map(|k| k.strip_prefix(&prefix)).collect();
        langs.sort();
        langs.dedup();
        if langs.is_empty() {
            continue;
        }
        let get = |res: &serde_json::Map<String, Value>, lang: &str, m: &str| res.get(&format!("{prefix}{lang}")).and_then(|v| v.get(m)).and_then(Value::as_f64);
        h.push_str(&format!("<h3>{task}</h3>\n<table><tr><th>language</th>"));
        for (model, _) in &models {
            for m in metrics {
                h.push_str(&format!("<th>{} {m}</th>", esc(model)));
            }
        }
        h.push_str("</tr>\n");
        for lang in &langs {
            h.push_str(&format!("<tr><td>{}</td>", esc(lang)));
            for (_, res) in &models {
                for m in metrics {
                    h.push_str(&format!("<td class=\"num\">{}</td>", get(res, lang, m).map_or("–".into(), |v| format!("{:.1}", 100.0 * v))));
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
        let cats: Vec<String> = langs.iter().map(|l| l.to_string()).collect();
        let series: Vec<(String, Vec<Option<f64>>)> = models.iter().map(|(model, res)| (model.clone(), langs.iter().map(|l| get(res, l, metrics[0])).collect())).collect();
        h.push_str(&format!("<div class=\"charts\">{}</div>\n", bar_chart(&format!("{task} {} by language", metrics[0]), &cats, &series)));
    }
    h
}

/// The first samples of the first iterations that have some, per run.
fn samples_section(runs: &[Run]) -> String {
    const ITERATIONS: usize = 3;
    const PER_ITERATION: usize = 4;
    let mut h = String::new();
    for r in runs.iter().filter(|r| !r.samples.is_empty()) {
        h.push_str(&format!("<h3>{}</h3>\n", esc(&r.label)));
        let mut by_it: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for s in &r.samples {
            by_it.entry(s.get("iteration").and_then(Value::as_u64).unwrap_or(0)).or_default().push(s);
        }
        for (it, samples) in by_it.iter().take(ITERATIONS) {
            h.push_str(&format!("<p><b>iteration {it}</b></p>\n"));
            for s in samples.iter().take(PER_ITERATION) {
                let text = |k: &str| s.get(k).and_then(Value::as_str).map(esc).unwrap_or_default();
                let score = s.get("score").and_then(Value::as_f64).map_or(String::new(), |v| format!(" <span class=\"note\">score {v:.4}</span>"));
                // each text in its own block, so its first strong character sets its direction
                h.push_str(&format!("<div class=\"sample\"><div class=\"label\">prompt</div><div dir=\"auto\">{}</div><div class=\"label\">response{score}</div><div dir=\"auto\">{}</div></div>\n", text("prompt"), text("response")));
            }
        }
    }
    if h.is_empty() {
        h
    } else {
        format!("<h2>Samples</h2>\n{h}")
    }
}

/// Every run's args.json as a key / value table.
fn args_section(runs: &[Run]) -> String {
    let mut h = String::new();
    for r in runs {
        let Some(args) = r.args.as_ref().and_then(Value::as_object) else { continue };
        h.push_str(&format!("<h3>{}</h3>\n<table>", esc(&r.label)));
        for (k, v) in args {
            let plain = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            let shown = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) if k == "argv" => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
                // `flags`, `memory`, `lora`: one `key = value` per setting
                Value::Object(o) => o.iter().map(|(k, v)| format!("{k} = {}", plain(v))).collect::<Vec<_>>().join("; "),
                other => other.to_string(),
            };
            h.push_str(&format!("<tr><th>{}</th><td dir=\"auto\">{}</td></tr>", esc(k), esc(&shown)));
        }
        h.push_str("</table>\n");
    }
    if h.is_empty() {
        h
    } else {
        format!("<h2>Settings (args.json)</h2>\n{h}")
    }
}
