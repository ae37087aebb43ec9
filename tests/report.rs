//! `okapi-train report` through the binary: a curve for every metric of each run (overlaid
//! where runs share one), the eval tables and bar charts of a suite's results.json, samples in
//! their scripts, the settings; a run with NaN, missing and out-of-order steps and a broken line
//! is drawn without failing; bad input is one line and writes nothing.

mod common;

use common::{metrics, one_error_line, tiny_ppo_inputs, Scratch};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_okapi-train");


fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The numeric metric names of a metrics.jsonl (what the report must draw).
fn metric_names(dir: &Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for v in metrics(dir) {
        for (k, x) in v.as_object().unwrap() {
            if x.is_number() && !["step", "iteration", "epoch"].contains(&k.as_str()) {
                names.insert(k.clone());
            }
        }
    }
    names
}

/// The metrics the page draws curves of.
fn curves(html: &str) -> BTreeSet<String> {
    html.split("data-metric=\"").skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect()
}

#[test]
fn report_of_training_ppo_and_eval_runs() {
    let scratch = Scratch::new("runs");
    let dir = scratch.root.clone();
    let (policy, rm, prompts, o) = tiny_ppo_inputs(&dir, &["--max-steps", "3", "--val-fraction", "0.25", "--eval-every", "1"], &["مرحبا، عد إلى ثلاثة", "नमस्ते, तीन तक गिनो"]);
    // without a terminal: plain progress lines with the rate and the ETA
    assert!(String::from_utf8_lossy(&o.stderr).lines().any(|l| l.starts_with("step 1/3: ") && l.contains("steps/s, ETA 0m")), "{}", String::from_utf8_lossy(&o.stderr));
    let ppo = dir.join("ppo");
    let o = ok(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&ppo), "--iterations", "2", "--rollouts", "4", "--chunk-size", "2", "--ppo-batch-size", "2", "--max-new-tokens", "4", "--samples-every", "1"]);
    assert!(String::from_utf8_lossy(&o.stderr).lines().any(|l| l.starts_with("ppo iteration 1/2: ") && l.contains(", ETA 0m")), "{}", String::from_utf8_lossy(&o.stderr));
    // an eval suite's results (two models, two tasks)
    let suite = dir.join("suite");
    std::fs::create_dir_all(&suite).unwrap();
    let block = |a: f64| json!({"results": {"arc_vi": {"acc": a, "acc_norm": a + 0.1}, "arc_ar": {"acc": a / 2.0, "acc_norm": a}, "truthfulqa_vi": {"mc1": 0.2, "mc2": 0.35}}});
    std::fs::write(suite.join("results.json"), json!({"sft": block(0.3), "ppo": block(0.4)}).to_string()).unwrap();

    let out = dir.join("report.html");
    let o = ok(&["report", p(&rm), p(&ppo), p(&suite), "--out", p(&out)]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), p(&out));
    let html = std::fs::read_to_string(&out).unwrap();
    let drawn = curves(&html);
    let mut want = metric_names(&rm);
    want.extend(metric_names(&ppo));
    assert_eq!(drawn, want, "one curve per metric");
    assert!(want.contains("val_loss") && want.contains("time_generate_s") && want.contains("kl"));
    // the two runs share "loss" and "lr": one chart, two legends
    let loss = html.split("data-metric=\"loss\"").nth(1).unwrap().split("</svg>").next().unwrap();
    assert!(loss.contains(">rm<") && loss.contains(">ppo<"), "{loss}");
    // eval: a table per task with both models, the headline metric as bars
    for needle in ["<h3>arc</h3>", "<th>sft acc_norm</th>", "<th>ppo acc</th>", "<td class=\"num\">50.0</td>", "<h3>truthfulqa</h3>", "arc acc_norm by language", "truthfulqa mc2 by language"] {
        assert!(html.contains(needle), "{needle}");
    }
    // samples: in their own direction, control characters never reach the page
    let samples: Vec<Value> = std::fs::read_to_string(ppo.join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(html.contains("<div class=\"label\">prompt</div><div dir=\"auto\">") && html.contains("مرحبا، عد إلى ثلاثة"), "samples shown, each text in its own direction");
    assert!(samples.len() >= 4);
    assert!(!html.chars().any(|c| c.is_control() && !"\n\t\r".contains(c)));
    assert!(html.contains("<h2>Settings (args.json)</h2>") && html.contains("<th>lr</th>"));
    assert!(!html.contains("<script"), "no script");
    assert_eq!(html.matches("http").count(), html.matches("http://www.w3.org/2000/svg").count(), "no link but the SVG namespace");
}

#[test]
fn broken_metrics_are_drawn_without_failing() {
    let scratch = Scratch::new("broken");
    let dir = scratch.root.clone();
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    // steps out of order, a repeated step, a null (NaN as serde_json writes it), a metric that
    // appears late, a line without a step, and a line cut by a kill
    let lines = ["{\"step\": 3, \"loss\": 2.0}", "{\"step\": 1, \"loss\": 3.0, \"lr\": 0.1}", "{\"step\": 2, \"loss\": null, \"lr\": 0.2}", "{\"step\": 3, \"loss\": 1.5, \"grad_norm\": 4}", "{\"loss\": 9}", "{\"step\": 4, \"lo"];
    std::fs::write(run_dir.join("metrics.jsonl"), lines.join("\n")).unwrap();
    let o = ok(&["report", p(&run_dir)]);
    let out = run_dir.join("report.html");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), p(&out));
    let html = std::fs::read_to_string(&out).unwrap();
    assert_eq!(curves(&html), ["grad_norm", "loss", "lr"].iter().map(|s| s.to_string()).collect());
    assert!(html.contains("2 line(s) of metrics.jsonl without a readable step were skipped"));
    assert!(!html.contains("NaN") && !html.contains("inf"));
    // the loss curve: steps 1 and 3 (the repeated step keeps its last value, the null is left out)
    let loss = html.split("data-metric=\"loss\"").nth(1).unwrap().split("</svg>").next().unwrap();
    let pts = loss.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
    assert_eq!(pts.split(' ').count(), 2, "{pts}");
    // a demo-style directory stands for its run sub-directories
    let o = ok(&["report", p(&dir), "--out", p(&dir.join("r.html"))]);
    assert!(o.status.success());
    assert!(std::fs::read_to_string(dir.join("r.html")).unwrap().contains("broken/run"));
}

/// `plot`: one figure of several metrics of several runs, as SVG and as PNG (text drawn with the
/// system's fonts); every series has its own colour.
#[test]
fn plot_writes_one_figure_as_svg_and_png() {
    let scratch = Scratch::new("plot");
    let dir = scratch.root.clone();
    for (name, scale) in [("a", 1.0), ("b", 2.0)] {
        let run = dir.join(name);
        std::fs::create_dir_all(&run).unwrap();
        let lines: Vec<String> = (1..=6).map(|s| json!({"step": s, "loss": scale * 3.0 / s as f64, "grad_norm": scale + s as f64}).to_string()).collect();
        std::fs::write(run.join("metrics.jsonl"), lines.join("\n")).unwrap();
    }
    let (a, b) = (p(&dir.join("a")).to_string(), p(&dir.join("b")).to_string());
    let svg_out = dir.join("fig.svg");
    ok(&["plot", &a, &b, "--metric", "loss", "grad_norm", "--out", p(&svg_out)]);
    let svg = std::fs::read_to_string(&svg_out).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 8, "four series, raw and smoothed");
    let strokes: BTreeSet<String> = svg.split("<polyline fill=\"none\" stroke=\"").skip(1).map(|s| s[..7].to_string()).collect();
    assert_eq!(strokes.len(), 4, "one colour per series: {strokes:?}");
    for label in ["a loss", "b loss", "a grad_norm", "b grad_norm"] {
        assert!(svg.contains(&format!(">{label}</text>")), "{label}");
    }

    let png_out = dir.join("fig.png");
    ok(&["plot", &a, &b, "--metric", "loss", "grad_norm", "--out", p(&png_out)]);
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png_out).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height, info.color_type), (1120, 600, png::ColorType::Rgba), "twice the SVG's 560 × 300");
    let rgb = |x: u32, y: u32| {
        let i = 4 * (y * info.width + x) as usize;
        (pixels[i], pixels[i + 1], pixels[i + 2])
    };
    // each series' colour is drawn (its smoothed line, opaque)
    for hex in &strokes {
        let want = (u8::from_str_radix(&hex[1..3], 16).unwrap(), u8::from_str_radix(&hex[3..5], 16).unwrap(), u8::from_str_radix(&hex[5..7], 16).unwrap());
        let n = (0..info.height).flat_map(|y| (0..info.width).map(move |x| (x, y))).filter(|&(x, y)| rgb(x, y) == want).count();
        assert!(n > 50, "{hex}: {n} pixels");
    }
    // the title's glyphs: dark pixels in the band above the plot area, none elsewhere in that band's right half
    let dark = |x0: u32, x1: u32| (0..48).flat_map(|y| (x0..x1).map(move |x| (x, y))).filter(|&(x, y)| rgb(x, y).0 < 80).count();
    assert!(dark(120, 400) > 300, "the title is drawn: {} dark pixels", dark(120, 400));
    assert_eq!(dark(800, 1120), 0);

    let bad = dir.join("fig.gif");
    one_error_line(&run(&["plot", &a, "--metric", "loss", "--out", p(&bad)]), &["fig.gif", "expected a .svg or .png file"]);
    one_error_line(&run(&["plot", &a, "--metric", "kl", "--out", p(&png_out)]), &["--metric kl: no run has it", "grad_norm, loss"]);
    assert!(!bad.exists());
}

/// Scoring, eval, loglik and PPO's rollouts and scoring report their rate and ETA on stderr
/// (plain lines; `OKAPI_PROGRESS_EVERY_S=0` prints one per batch instead of one per 10 s).
#[test]
fn progress_lines_for_scoring_eval_loglik_and_rollouts() {
    let scratch = Scratch::new("progress");
    let dir = scratch.root.clone();
    let quick = |args: &[&str]| -> String {
        let o = Command::new(BIN).args(args).env("OKAPI_PROGRESS_EVERY_S", "0").output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let has = |err: &str, prefix: &str, unit: &str, total: usize| {
        let want = format!("/{total} {unit}, ");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(prefix) && l.contains(&want) && l.contains(&format!(" {unit}/s, ETA "))).collect();
        assert!(!lines.is_empty(), "no `{prefix} …{want}… {unit}/s, ETA` line in:\n{err}");
        assert!(lines.last().unwrap().starts_with(&format!("{prefix} {total}/{total} ")), "the last line counts all {total}: {lines:?}");
    };
    let model = common::fixture("llama_gqa");
    let ll = dir.join("ll.jsonl");
    has(&quick(&["loglik", "--model", p(&model), "--data", p(&model.join("loglik.jsonl")), "--output", p(&ll), "--batch-size", "3"]), "loglik:", "requests", 10);
    let arc = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/assets/eval/m_arc/vi_validation.json");
    has(&quick(&["eval", "--model", p(&model), "--task", "arc", "--data", p(&arc), "--num-fewshot", "0", "--batch-size", "4"]), "eval arc:", "items", 12);

    let (policy, rm, prompts, _) = tiny_ppo_inputs(&dir, &["--max-steps", "1"], &["Name a colour.", "Đếm đến ba.", "Say hi.", "Count to two."]);
    has(&quick(&["score", "--model", p(&rm), "--data", p(&common::fixture("ranking_data.json")), "--batch-size", "2"]), "score:", "records", 3);
    let err = quick(&["ppo", "--policy", p(&policy), "--reward", p(&rm), "--prompts", p(&prompts), "--out", p(&dir.join("ppo")), "--iterations", "1", "--rollouts", "4", "--chunk-size", "2", "--max-new-tokens", "3"]);
    has(&err, "ppo iteration 1/1: rollouts:", "prompts", 4);
    has(&err, "ppo iteration 1/1: scoring:", "rollouts", 4);
}

#[test]
fn bad_input_is_one_line_and_writes_nothing() {
    let scratch = Scratch::new("bad");
    let dir = scratch.root.clone();
    let out = dir.join("report.html");
    let (missing, here, dest) = (p(&dir.join("missing")).to_string(), p(&dir).to_string(), p(&out).to_string());
    for (args, needle) in [
        (vec!["report", &missing, "--out", &dest], "not a directory"),
        (vec!["report", &here, "--out", &dest], "no metrics.jsonl or results.json"),
        (vec!["report", &here, "--smoothing", "1.5"], "--smoothing 1.5: expected a weight in [0, 1)"),
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        one_error_line(&o, &[needle]);
        assert!(!out.exists());
    }
}

#[test]
fn the_demo_writes_its_report_with_every_curve_and_the_eval_table() {
    let scratch = Scratch::new("demo");
    let dir = scratch.root.clone();
    let out = dir.join("demo");
    let o = ok(&["demo", "--out", p(&out), "--epochs", "1"]);
    let report = out.join("report.html");
    assert!(String::from_utf8_lossy(&o.stdout).contains(p(&report)), "the demo prints the report's path");
    let html = std::fs::read_to_string(&report).unwrap();
    let mut want = BTreeSet::new();
    for stage in ["sft", "rm", "ppo"] {
        want.extend(metric_names(&out.join(stage)));
    }
    assert_eq!(curves(&html), want);
    // ARC after SFT next to ARC after PPO, per language, from the demo's results.json
    let res: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval/results.json")).unwrap()).unwrap();
    let vi = res["ppo"]["results"]["arc_vi"]["acc_norm"].as_f64().unwrap();
    for needle in ["<h3>arc</h3>", "<th>sft acc_norm</th>", "<th>ppo acc_norm</th>", &format!("<td class=\"num\">{:.1}</td>", 100.0 * vi), "arc acc_norm by language"] {
        assert!(html.contains(needle), "{needle}");
    }
}
