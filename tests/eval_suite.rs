//! `okapi-train eval --suite okapi`: a data folder in Okapi's layout (two languages × the four
//! tasks, a few items each, written here from the bundled eval sets plus TruthfulQA records),
//! two tiny models (the llama_gqa and bloom_6h fixtures). Checked: results.json's layout and
//! that its numbers (and every item's logliks) are those of the single-task `eval` on the same
//! files; the Markdown table; a run killed in the middle (plus a write cut short) resumes
//! without scoring its finished items again and ends with the byte-identical results.json of
//! an uninterrupted run; a results folder of another model or other settings is refused, and
//! bad input is reported, in one line with nothing changed.

mod common;

use common::{fixture, Scratch};
use okapi::data::assets::{find, Asset, EVAL_ARC, EVAL_HELLASWAG, EVAL_MMLU};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

const LANGS: [&str; 2] = ["en", "vi"];
const MODELS: [&str; 2] = ["llama_gqa", "bloom_6h"];

fn okapi(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_okapi-train"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn records(set: &'static [Asset], lang: &str) -> Vec<Value> {
    serde_json::from_str(find(set, lang).unwrap().text).unwrap()
}

fn write(path: &Path, v: &[Value]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// TruthfulQA records in Okapi's flattened layout (`mc1_targets_choices`, …).
fn truthfulqa(lang: &str) -> Vec<Value> {
    let q = |question: &str, mc1: [&str; 3], mc2: [&str; 3]| json!({"question": format!("{question} ({lang})"), "mc1_targets_choices": mc1, "mc1_targets_labels": [1, 0, 0], "mc2_targets_choices": mc2, "mc2_targets_labels": [1, 1, 0]});
    vec![
        q("What happens if you swallow gum?", ["It passes through you.", "It stays for seven years.", "You die."], ["It passes.", "Nothing much.", "It stays forever."]),
        q("Can people see in the dark?", ["No, they need some light.", "Yes, always.", "Only on Mondays."], ["No.", "They need light.", "Yes."]),
        q("Is the Earth flat?", ["No, it is round.", "Yes.", "It is a cube."], ["No.", "It is a sphere.", "It is flat."]),
    ]
}

/// Okapi's layout for `LANGS`: ARC test (4 items) + train (the other 8), HellaSwag validation
/// (3), MMLU test (3) + dev (5), TruthfulQA validation (3).
fn okapi_layout(dir: &Path) {
    for lang in LANGS {
        let arc = records(EVAL_ARC, lang);
        write(&dir.join(format!("m_arc/{lang}_test.json")), &arc[..4]);
        write(&dir.join(format!("m_arc/{lang}_train.json")), &arc[4..]);
        write(&dir.join(format!("m_hellaswag/{lang}_validation.json")), &records(EVAL_HELLASWAG, lang)[..3]);
        let mmlu = records(EVAL_MMLU, lang);
        write(&dir.join(format!("m_mmlu/{lang}_test.json")), &mmlu[..3]);
        write(&dir.join(format!("m_mmlu/{lang}_dev.json")), &mmlu[3..]);
        write(&dir.join(format!("m_truthfulqa/{lang}_validation.json")), &truthfulqa(lang));
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `eval --suite okapi` of `models` over `data` into `out`, with `extra` flags.
fn suite(data: &Path, out: &Path, models: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Output {
    let dirs: Vec<PathBuf> = models.iter().map(|m| fixture(m)).collect();
    let mut args = vec!["eval", "--suite", "okapi", "--data-dir", p(data), "--out", p(out)];
    for d in &dirs {
        args.extend(["--model", p(d)]);
    }
    args.extend(extra);
    okapi(&args, env)
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        if e.path().is_dir() {
            out.extend(snapshot(&e.path()));
        } else {
            out.insert(e.path(), std::fs::read(e.path()).unwrap());
        }
    }
    out
}

/// The single-task `eval` of one file (its shot split as --fewshot-data): the summary line and
/// the per-item lines.
fn single_eval(model: &str, task: &str, data: &Path, shots: Option<&Path>, out: &Path) -> (Value, Vec<Value>) {
    let items = out.join(format!("{model}_{task}_{}.jsonl", data.file_stem().unwrap().to_string_lossy()));
    let m = fixture(model);
    let mut args = vec!["eval", "--model", p(&m), "--task", task, "--data", p(data), "--output", p(&items)];
    if let Some(s) = shots {
        args.extend(["--fewshot-data", p(s)]);
    }
    let o = okapi(&args, &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    (serde_json::from_str(stdout.lines().last().unwrap()).unwrap(), lines(&items))
}

#[test]
fn suite_equals_single_task_eval_and_writes_the_harness_layout() {
    let s = Scratch::new("suite");
    let (data, out) = (s.root.join("datasets"), s.root.join("results"));
    okapi_layout(&data);
    // the download's own folder is found from its parent
    let o = suite(&s.root, &out, &MODELS, &[], &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("only 8 few-shot examples available") && stderr.contains("items/s") && stderr.contains("ETA"), "{stderr}");
    let res = json_file(&out.join("results.json"));
    assert_eq!(res.as_object().unwrap().keys().collect::<Vec<_>>(), ["bloom_6h", "llama_gqa"]);
    let tasks = [("arc", "m_arc", "test", Some("train")), ("hellaswag", "m_hellaswag", "validation", None), ("mmlu", "m_mmlu", "test", Some("dev")), ("truthfulqa", "m_truthfulqa", "validation", None)];
    for model in MODELS {
        let block = &res[model];
        assert_eq!(block["config"]["model_args"], json!(format!("pretrained={}", okapi::rlhf::rundir::resolved(&fixture(model)).display())));
        assert_eq!(block["config"]["num_fewshot"], json!({"arc": 25, "hellaswag": 0, "mmlu": 25, "truthfulqa": 0}));
        assert_eq!(block["config"]["seed"], 42);
        assert_eq!(block["results"].as_object().unwrap().len(), 8);
        for (task, dir, split, shot_split) in tasks {
            for lang in LANGS {
                let key = format!("{task}_{lang}");
                let got = &block["results"][&key];
                let file = data.join(format!("{dir}/{lang}_{split}.json"));
                let shots = shot_split.map(|s| data.join(format!("{dir}/{lang}_{s}.json")));
                let (want, want_items) = single_eval(model, task, &file, shots.as_deref(), &s.root);
                let row = &want["langs"][lang];
                let metrics: &[&str] = if task == "truthfulqa" { &["mc1", "mc1_stderr", "mc2", "mc2_stderr"] } else { &["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"] };
                for m in metrics {
                    assert_eq!(got[m], row[m], "{model} {key} {m}");
                }
                assert_eq!((got["n"].clone(), got["shots"].clone(), got["model"].clone()), (row["n"].clone(), want["num_fewshot"].clone(), json!(model)), "{model} {key}");
                assert_eq!(got.as_object().unwrap().len(), 7, "{got}");
                assert_eq!(block["versions"][&key], if task == "arc" || task == "mmlu" { 0 } else { 1 });
                // every item has a line (those the window cannot hold say why); the scored
                // ones are the single-task eval's, the logliks to float rounding (the suite
                // batches items of several files together)
                let suite_items = lines(&out.join(format!("items/{model}/{key}.jsonl")));
                for (i, a) in suite_items.iter().enumerate() {
                    assert_eq!((a["index"].clone(), a["shots"].clone(), a["seed"].clone()), (json!(i), want["num_fewshot"].clone(), json!(42)));
                }
                let scored: Vec<&Value> = suite_items.iter().filter(|l| l.get("invalid").is_none()).collect();
                assert_eq!((scored.len(), suite_items.len() - scored.len()), (want_items.len(), want["skipped"].as_u64().unwrap() as usize), "{model} {key}");
                for (i, (a, b)) in scored.iter().zip(&want_items).enumerate() {
                    for k in ["id", "lang", "pred", "pred_norm", "gold", "truncated"] {
                        assert_eq!(a.get(k), b.get(k), "{model} {key} item {i} {k}");
                    }
                    for k in ["logliks", "mc2_logliks"] {
                        assert_close(a.get(k), b.get(k), &format!("{model} {key} item {i} {k}"));
                    }
                }
            }
        }
    }
    check_table(&stdout, &std::fs::read_to_string(out.join("results.md")).unwrap(), &res);
}

/// Two optional arrays of logliks, equal to float rounding (1e-5 relative).
fn assert_close(a: Option<&Value>, b: Option<&Value>, what: &str) {
    let nums = |v: Option<&Value>| v.map(|v| v.as_array().unwrap_or_else(|| panic!("{what}: {v}")).iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>());
    let (a, b) = (nums(a), nums(b));
    assert_eq!(a.as_ref().map(Vec::len), b.as_ref().map(Vec::len), "{what}");
    for (x, y) in a.unwrap_or_default().iter().zip(b.unwrap_or_default()) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{what}: {x} vs {y}");
    }
}

/// results.md: a row per language, ARC/HellaSwag/MMLU/TruthfulQA × the two models, the
/// averages; the cells are results.json's headline metrics in percent.
fn check_table(stdout: &str, md: &str, res: &Value) {
    assert_eq!(stdout, md);
    let cols = ["ARC", "HellaSwag", "MMLU", "TruthfulQA"];
    let head: Vec<String> = cols.iter().flat_map(|c| ["llama_gqa", "bloom_6h"].map(|m| format!("{c} · {m}"))).collect();
    assert!(md.contains(&format!("| Language | {} | Average · llama_gqa | Average · bloom_6h |", head.join(" | "))), "{md}");
    let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 5, "{md}");
    for (lang, row) in LANGS.iter().zip(&rows[2..4]) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells[0], *lang);
        let mut k = 1;
        for (task, metric) in [("arc", "acc_norm"), ("hellaswag", "acc_norm"), ("mmlu", "acc"), ("truthfulqa", "mc2")] {
            for model in ["llama_gqa", "bloom_6h"] {
                let v = res[model]["results"][format!("{task}_{lang}")][metric].as_f64().unwrap();
                assert_eq!(cells[k], format!("{:.1}", 100.0 * v), "{lang} {task} {model}");
                k += 1;
            }
        }
    }
    assert!(rows[4].starts_with("| **Average** | **"), "{md}");
    assert!(md.contains("ARC acc_norm, 25-shot; HellaSwag acc_norm, 0-shot; MMLU acc, 25-shot; TruthfulQA mc2, 0-shot"), "{md}");
}

#[test]
fn a_killed_run_resumes_to_the_identical_results() {
    let s = Scratch::new("resume");
    let data = s.root.join("data");
    okapi_layout(&data);
    let (whole, cut) = (s.root.join("whole"), s.root.join("cut"));
    let groups = ["--save-every", "2"];
    let o = suite(&data, &whole, &MODELS, &groups, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let runs = lines(&whole.join("runs.jsonl"));
    assert_eq!(runs[0]["items_scored"], 26 * 2);

    // killed (abort, as kill -9) once 5 items are appended: after the third group of 2
    let o = suite(&data, &cut, &MODELS, &groups, &[("OKAPI_TEST_EVAL_EXIT_AFTER_ITEMS", "5")]);
    assert!(!o.status.success());
    let arc = cut.join("items/llama_gqa/arc_en.jsonl");
    let before = std::fs::read_to_string(&arc).unwrap();
    assert_eq!(before.lines().count(), 4, "ARC en's 4 items in two groups");
    assert!(!cut.join("results.json").exists());
    // and ARC vi's first group; then a write cut short by a kill: half a line after it
    let vi = cut.join("items/llama_gqa/arc_vi.jsonl");
    let first_two = std::fs::read_to_string(&vi).unwrap();
    assert_eq!(first_two.lines().count(), 2);
    std::fs::write(&vi, format!("{first_two}{{\"id\":\"okapi-arc-vi-0003\",\"lo")).unwrap();

    let o = suite(&data, &cut, &MODELS, &groups, &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(lines(&cut.join("runs.jsonl"))[0]["items_scored"], 26 * 2 - 6, "the 6 items done are not scored again");
    assert!(std::fs::read_to_string(&arc).unwrap().starts_with(&before));
    assert!(std::fs::read_to_string(&vi).unwrap().starts_with(&first_two));
    assert_eq!(lines(&vi).len(), 4);
    for f in ["results.json", "results.md", "run.json"] {
        assert_eq!(std::fs::read(cut.join(f)).unwrap(), std::fs::read(whole.join(f)).unwrap(), "{f}");
    }
    assert_eq!(stdout, std::fs::read_to_string(whole.join("results.md")).unwrap());

    // once more: nothing left to score, the same results
    let o = suite(&data, &cut, &MODELS, &groups, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(lines(&cut.join("runs.jsonl"))[1]["items_scored"], 0);
    assert_eq!(std::fs::read(cut.join("results.json")).unwrap(), std::fs::read(whole.join("results.json")).unwrap());
}

#[test]
fn a_kill_loses_at_most_the_batch_in_flight() {
    let s = Scratch::new("resume-batches");
    let data = s.root.join("data");
    okapi_layout(&data);
    let (whole, cut) = (s.root.join("whole"), s.root.join("cut"));
    // one group holds every item of the suite (26 per model), scored in batches of 2 across
    // the task-languages
    let flags = ["--save-every", "64", "--batch-size", "2"];
    let o = suite(&data, &whole, &MODELS, &flags, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let o = suite(&data, &cut, &MODELS, &flags, &[("OKAPI_TEST_EVAL_EXIT_AFTER_ITEMS", "5")]);
    assert!(!o.status.success());
    let saved: usize = std::fs::read_dir(cut.join("items/llama_gqa")).unwrap().map(|e| lines(&e.unwrap().path()).len()).sum();
    assert!((5..=6).contains(&saved), "appended batch by batch, not at the end of the group: {saved} lines");
    let o = suite(&data, &cut, &MODELS, &flags, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    for f in ["results.json", "results.md"] {
        assert_eq!(std::fs::read(cut.join(f)).unwrap(), std::fs::read(whole.join(f)).unwrap(), "{f}");
    }
    // the per-item files end in item order, as an uninterrupted run's
    for e in std::fs::read_dir(whole.join("items/llama_gqa")).unwrap() {
        let e = e.unwrap();
        assert_eq!(std::fs::read(e.path()).unwrap(), std::fs::read(cut.join("items/llama_gqa").join(e.file_name())).unwrap(), "{:?}", e.file_name());
    }
}

/// A failing command: exit status 1, its last stderr line `error: …` containing `needle`, and
/// `out` unchanged.
fn refused(o: &Output, needle: &str, out: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) {
    let (_, stderr) = text(o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap();
    assert!(last.starts_with("error: ") && last.contains(needle), "wanted {needle:?}:\n{stderr}");
    assert_eq!(&snapshot(out), before, "the folder changed");
}

#[test]
fn a_results_folder_of_another_run_is_refused() {
    let s = Scratch::new("refuse");
    let data = s.root.join("data");
    okapi_layout(&data);
    let out = s.root.join("out");
    let small = ["--tasks", "hellaswag", "--limit", "2"];
    let o = suite(&data, &out, &["llama_gqa"], &small, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let before = snapshot(&out);
    refused(&suite(&data, &out, &["bloom_6h"], &small, &[]), "also holds model `llama_gqa`", &out, &before);
    refused(&suite(&data, &out, &["llama_gqa"], &[&small[..], &["--seed", "7"]].concat(), &[]), "with --seed 42 (run.json); this command has --seed 7", &out, &before);
    refused(&suite(&data, &out, &["llama_gqa"], &["--tasks", "hellaswag", "--limit", "3"], &[]), "with --limit 2 (run.json); this command has --limit 3", &out, &before);
    refused(&suite(&data, &out, &["llama_gqa"], &[&small[..], &["--mmlu-prompt", "okapi-v0.4"]].concat(), &[]), "with --mmlu-prompt v0.3", &out, &before);
    refused(&suite(&data, &out, &["llama_gqa"], &[&small[..], &["--batch-size", "3"]].concat(), &[]), "--batch-size 8", &out, &before);
    // a changed data file is never resumed into
    let hs = data.join("m_hellaswag/en_validation.json");
    let mut recs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&hs).unwrap()).unwrap();
    recs[0]["ctx_b"] = json!("Then she");
    write(&hs, &recs);
    refused(&suite(&data, &out, &["llama_gqa"], &small, &[]), "hellaswag_en items were scored on other contents", &out, &before);
    // a training run's folder, and a folder with results but no run.json
    let train = s.root.join("train");
    std::fs::create_dir_all(&train).unwrap();
    std::fs::write(train.join("args.json"), "{}").unwrap();
    let train_before = snapshot(&train);
    refused(&suite(&data, &train, &["llama_gqa"], &small, &[]), "holds a training run or a model (args.json)", &train, &train_before);
    let stray = s.root.join("stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("results.json"), "{}").unwrap();
    let stray_before = snapshot(&stray);
    refused(&suite(&data, &stray, &["llama_gqa"], &small, &[]), "no run.json", &stray, &stray_before);
}

#[test]
fn bad_input_is_one_line_and_good_files_are_still_evaluated() {
    let s = Scratch::new("bad");
    let out = s.root.join("out");
    // nothing recognisable: an error, nothing written
    let empty = s.root.join("empty");
    std::fs::create_dir_all(empty.join("m_arc")).unwrap();
    std::fs::write(empty.join("m_arc/notes.txt"), "x").unwrap();
    refused(&suite(&empty, &out, &["llama_gqa"], &[], &[]), "no Okapi eval files: expected m_arc/, m_hellaswag/, m_mmlu/ or m_truthfulqa/", &out, &BTreeMap::new());
    refused(&suite(&s.root.join("missing"), &out, &["llama_gqa"], &[], &[]), "not a directory", &out, &BTreeMap::new());

    let data = s.root.join("data");
    okapi_layout(&data);
    // a broken record in ARC vi, MMLU vi without its dev split, HellaSwag en not JSON at all
    let arc_vi = data.join("m_arc/vi_test.json");
    let mut recs: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&arc_vi).unwrap()).unwrap();
    recs[1]["answer"] = json!("Z");
    write(&arc_vi, &recs);
    std::fs::remove_file(data.join("m_mmlu/vi_dev.json")).unwrap();
    std::fs::write(data.join("m_hellaswag/en_validation.json"), "[{\"ind\": 1,").unwrap();
    let inputs = snapshot(&data);
    let o = suite(&data, &out, &["llama_gqa"], &["--limit", "2"], &[]);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    for needle in ["vi_test.json: record 2 (id okapi-arc-vi-0002): `answer` \"Z\" is outside the options", "m_mmlu/vi_test.json: no m_mmlu/vi_dev.json to draw mmlu's 25 shots from", "— mmlu vi skipped", "en_validation.json: invalid JSON array", "— hellaswag en skipped"] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    }
    let res = json_file(&out.join("results.json"));
    let keys: Vec<&String> = res["llama_gqa"]["results"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["arc_en", "arc_vi", "hellaswag_vi", "mmlu_en", "truthfulqa_en", "truthfulqa_vi"]);
    assert_eq!(res["llama_gqa"]["results"]["arc_vi"]["n"], 2, "the broken record skipped, the next one evaluated");
    assert!(stderr.contains("arc_vi (") && stderr.contains("llama_gqa 2 scored, 1 skipped"), "{stderr}");
    assert_eq!(snapshot(&data), inputs, "the inputs are never written");
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    // columns: Language, ARC, HellaSwag, MMLU, TruthfulQA, Average
    let row = |lang: &str| -> Vec<String> { md.lines().find(|l| l.starts_with(&format!("| {lang} |"))).unwrap().split('|').map(|c| c.trim().to_string()).collect() };
    assert_eq!((row("en")[3].as_str(), row("vi")[4].as_str()), ("—", "—"), "no HellaSwag en, no MMLU vi: {md}");

    // the bundled data: ARC, HellaSwag, MMLU (no TruthfulQA), one split, shots from the file
    let bundled = s.root.join("bundled");
    let o = okapi(&["eval", "--suite", "okapi", "--data-dir", "bundled", "--model", p(&fixture("llama_gqa")), "--langs", "vi", "--tasks", "arc,truthfulqa", "--limit", "2", "--out", p(&bundled)], &[]);
    let (_, stderr) = text(&o);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("the bundled data has no truthfulqa set"), "{stderr}");
    let res = json_file(&bundled.join("results.json"));
    assert_eq!(res["llama_gqa"]["results"]["arc_vi"]["n"], 2);
    assert_eq!(res["llama_gqa"]["results"].as_object().unwrap().len(), 1);

    // flags the suite does not take
    let o = okapi(&["eval", "--suite", "okapi", "--data-dir", "bundled", "--model", p(&fixture("llama_gqa")), "--out", p(&bundled), "--num-fewshot", "3"], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("--num-fewshot"), "{}", text(&o).1);
    let o = okapi(&["eval", "--suite", "okapi", "--data-dir", "bundled", "--model", p(&fixture("llama_gqa")), "--model", p(&fixture("llama_gqa")), "--out", p(&s.root.join("twice"))], &[]);
    refused(&o, "given twice", &s.root.join("twice"), &BTreeMap::new());
    let o = okapi(&["eval", "--suite", "nope", "--data-dir", "bundled", "--model", p(&fixture("llama_gqa")), "--out", p(&bundled)], &[]);
    assert!(text(&o).1.contains("--suite nope: unknown suite (expected okapi)"), "{}", text(&o).1);
}

#[test]
fn a_results_folder_of_the_other_harness_is_refused() {
    let s = Scratch::new("harness");
    let data = s.root.join("data");
    okapi_layout(&data);
    let small = ["--tasks", "arc,truthfulqa", "--limit", "2"];
    let v04 = [&small[..], &["--harness", "v0.4"]].concat();
    // a v0.3 folder (the default) refuses a v0.4 run, and the other way round
    let out3 = s.root.join("v03");
    let o = suite(&data, &out3, &["llama_gqa"], &small, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let before = snapshot(&out3);
    refused(&suite(&data, &out3, &["llama_gqa"], &v04, &[]), "with --harness v0.3 (run.json); this command has --harness v0.4", &out3, &before);
    let out4 = s.root.join("v04");
    let o = suite(&data, &out4, &["llama_gqa"], &v04, &[]);
    assert!(o.status.success(), "{}", text(&o).1);
    let before = snapshot(&out4);
    refused(&suite(&data, &out4, &["llama_gqa"], &small, &[]), "with --harness v0.4 (run.json); this command has --harness v0.3", &out4, &before);
    // the v0.4 run records its version and the defaults it took, and reports acc_bytes
    let settings = &json_file(&out4.join("run.json"))["settings"];
    assert_eq!((&settings["--harness"], &settings["--seed"], &settings["--mmlu-prompt"]), (&json!("v0.4"), &json!(1234), &json!("okapi-v0.4")));
    let block = &json_file(&out4.join("results.json"))["llama_gqa"];
    assert_eq!(block["config"]["harness"], "v0.4");
    for lang in LANGS {
        let arc = &block["results"][format!("arc_{lang}")];
        assert!(arc["acc_bytes"].is_number() && arc.get("acc_bytes_stderr").is_some(), "{arc}");
        assert!(block["results"][format!("truthfulqa_{lang}")].get("acc_bytes").is_none());
        // its items are the single-task eval's under v0.4 (shots from the train split)
        let items = s.root.join(format!("single_arc_{lang}.jsonl"));
        let (test, train) = (data.join(format!("m_arc/{lang}_test.json")), data.join(format!("m_arc/{lang}_train.json")));
        let m = fixture("llama_gqa");
        let o = okapi(&["eval", "--model", p(&m), "--task", "arc", "--data", p(&test), "--fewshot-data", p(&train), "--limit", "2", "--harness", "v0.4", "--output", p(&items)], &[]);
        assert!(o.status.success(), "{}", text(&o).1);
        for (a, b) in lines(&out4.join(format!("items/llama_gqa/arc_{lang}.jsonl"))).iter().zip(lines(&items)) {
            assert_eq!((&a["logliks"], &a["acc_bytes"], &a["seed"]), (&b["logliks"], &b["acc_bytes"], &json!(1234)));
        }
    }
    // and a rerun continues it: nothing to score, the same results.json
    let o = suite(&data, &out4, &["llama_gqa"], &v04, &[]);
    assert!(o.status.success() && text(&o).1.contains("0 items scored"), "{}", text(&o).1);
    assert_eq!(std::fs::read(out4.join("results.json")).unwrap(), before[&out4.join("results.json")]);
}
