//! Bad input to `okapi-train loglik` ends in ONE readable line, never a panic.
//!
//! Every test breaks a copy of a fixture model directory (or the data file, or a flag) in its
//! own temporary directory, runs the real binary and checks: non-zero exit status; stderr is
//! exactly one non-empty line starting with `error: ` (no panic, no backtrace, no "internal
//! error"); that line names the culprit (file, tensor, field or line) and what was expected;
//! and no output file (nor its temporary) was written.
mod common;

use common::{fixture, Scratch, SHORT_SFT_RECORDS, SHORT_TEMPLATE};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};


impl Scratch {
    /// A copy of fixture `name` (a flat directory) under this scratch directory.
    fn copy_fixture(&self, name: &str) -> PathBuf {
        let dst = self.root.join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(fixture(name)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
        }
        dst
    }

    /// A data file with these contents.
    fn data(&self, contents: &str) -> PathBuf {
        let p = self.root.join("requests.jsonl");
        std::fs::write(&p, contents).unwrap();
        p
    }
}

struct Run {
    out: Output,
    out_dir: PathBuf,
    out_file: PathBuf,
}

impl Run {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
}

fn loglik(s: &Scratch, model: &Path, data: &Path, extra: &[&str]) -> Run {
    let out_dir = s.root.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out_file = out_dir.join("results.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_okapi-train"))
        .arg("loglik")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--output")
        .arg(&out_file)
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run okapi-train");
    Run { out, out_dir, out_file }
}

/// The fixture's own requests (valid), for cases that break the model.
fn good_data(model: &str) -> PathBuf {
    fixture(model).join("loglik.jsonl")
}

fn disp(p: &Path) -> String {
    p.display().to_string()
}

/// Asserts the run failed cleanly with one `error: ` line containing every needle; returns it.
#[track_caller]
fn assert_clean_error(r: &Run, needles: &[&str]) -> String {
    let stderr = r.stderr();
    let ctx = format!("stderr was:\n{stderr}\nstdout was:\n{}", String::from_utf8_lossy(&r.out.stdout));
    assert!(!r.out.status.success(), "expected a failure, got {:?}; {ctx}", r.out.status);
    assert!(r.out.status.code().is_some_and(|c| c != 0), "expected a non-zero exit code (not a signal), got {:?}; {ctx}", r.out.status);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be exactly one line; {ctx}");
    let line = lines[0];
    assert!(line.starts_with("error: ") && line.len() > "error: ".len(), "stderr must start with `error: `; {ctx}");
    for bad in ["panicked", "internal error", "backtrace", "RUST_BACKTRACE", "unwrap"] {
        assert!(!line.contains(bad), "stderr contains {bad:?}; {ctx}");
    }
    for n in needles {
        assert!(line.contains(n), "the error must mention {n:?}; {ctx}");
    }
    assert!(!r.out_file.exists(), "output {} must not be written on error", r.out_file.display());
    let left: Vec<String> = std::fs::read_dir(&r.out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.is_empty(), "nothing may be written next to the output on error, found {left:?}");
    eprintln!("{line}");
    line.to_string()
}

// ---- helpers that break files ----------------------------------------------------------------

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> PathBuf {
    let p = dir.join("config.json");
    let mut v = read_json(&p);
    f(v.as_object_mut().unwrap());
    write_json(&p, &v);
    p
}

/// What to do with one tensor when rewriting a safetensors file.
enum Edit {
    Drop,
    /// new dtype, shape and raw bytes
    Replace(Dtype, Vec<usize>, Vec<u8>),
}

/// Rewrites a safetensors file through the `safetensors` crate, applying `edit` to the tensors
/// it names and keeping the rest (and the file's metadata) as they are.
fn rewrite_safetensors(path: &Path, edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<Edit>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut hit = false;
    for (name, view) in st.tensors() {
        match edit(&name, view.dtype(), view.shape(), view.data()) {
            None => owned.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec())),
            Some(Edit::Drop) => hit = true,
            Some(Edit::Replace(dt, shape, data)) => {
                hit = true;
                owned.push((name, dt, shape, data));
            }
        }
    }
    assert!(hit, "the edit matched no tensor of {}", path.display());
    let views: Vec<(String, TensorView)> = owned.iter().map(|(n, dt, shape, data)| (n.clone(), TensorView::new(*dt, shape.clone(), data).unwrap())).collect();
    let out = safetensors::tensor::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// Byte offset where a safetensors file's tensor data starts, and the data's length.
fn data_span(path: &Path) -> (usize, usize) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (8 + n, bytes.len() - 8 - n)
}

/// The shard of llama_gqa's index that holds `tensor`.
fn shard_of(dir: &Path, tensor: &str) -> PathBuf {
    let index = read_json(&dir.join("model.safetensors.index.json"));
    dir.join(index["weight_map"][tensor].as_str().unwrap())
}

// ---- positive control -----------------------------------------------------------------------

#[test]
fn unmodified_fixture_succeeds() {
    let s = Scratch::new("ok");
    let model = fixture("llama_gqa");
    let r = loglik(&s, &model, &good_data("llama_gqa"), &["--batch-size", "3"]);
    assert!(r.out.status.success(), "status {:?}, stderr:\n{}", r.out.status, r.stderr());
    assert!(!r.stderr().contains("panicked"));
    let n_requests = std::fs::read_to_string(good_data("llama_gqa")).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let text = std::fs::read_to_string(&r.out_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n_requests, "one output line per request:\n{text}");
    let expected: Vec<Value> = std::fs::read_to_string(model.join("loglik_expected.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, (line, exp)) in lines.iter().zip(&expected).enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("output line {}: {e}: {line}", i + 1));
        let ll = v["loglik"].as_f64().unwrap_or_else(|| panic!("output line {}: no numeric loglik: {line}", i + 1));
        let greedy = v["is_greedy"].as_bool().unwrap_or_else(|| panic!("output line {}: no boolean is_greedy: {line}", i + 1));
        assert!(ll.is_finite() && ll <= 0.0, "line {}: loglik {ll}", i + 1);
        let want = exp["loglik"].as_f64().unwrap();
        assert!((ll - want).abs() <= 1e-3, "line {}: loglik {ll} vs transformers {want}", i + 1);
        assert_eq!(greedy, exp["is_greedy"].as_bool().unwrap(), "line {}: is_greedy", i + 1);
    }
    // the temporary output file is gone
    let files: Vec<String> = std::fs::read_dir(&r.out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files, vec!["results.jsonl".to_string()]);
}

// ---- the model directory --------------------------------------------------------------------

#[test]
fn model_dir_missing() {
    let s = Scratch::new("nodir");
    let model = s.root.join("no_such_model");
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    let line = assert_clean_error(&r, &[&disp(&model)]);
    // what the message says about the path (the path itself may contain any word)
    let said = line.replace(&disp(&model), "").to_lowercase();
    assert!(said.contains("model directory") && (said.contains("not found") || said.contains("does not exist")), "must say the model directory is missing: {line}");
    assert!(!said.contains("tokenizer.json not found"), "the directory is missing, not just its tokenizer.json: {line}");
}

#[test]
fn no_weights_at_all() {
    let s = Scratch::new("noweights");
    let model = s.copy_fixture("llama_gqa");
    for e in std::fs::read_dir(&model).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("model") && name != "model.json" {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&model), "no weights", "model.safetensors", "model.safetensors.index.json"]);
}

#[test]
fn truncated_safetensors() {
    let s = Scratch::new("truncated");
    let model = s.copy_fixture("bloom_6h");
    let file = model.join("model.safetensors");
    let (start, len) = data_span(&file);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..start + len / 2]).unwrap();
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    let line = assert_clean_error(&r, &[&disp(&file), "safetensors"]);
    let said = line.replace(&disp(&file), "");
    assert!(said.contains("truncated"), "must say the file is truncated: {line}");
    // and by how much: the size the header implies and the size found
    let (full, cut) = (bytes.len(), start + len / 2);
    assert!(said.contains(&full.to_string()) && said.contains(&cut.to_string()), "must give the expected ({full}) and actual ({cut}) sizes: {line}");
}

#[test]
fn corrupt_header_garbage_bytes() {
    let s = Scratch::new("garbage");
    let model = s.copy_fixture("llama_gqa");
    let file = model.join("model-00001-of-00003.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let garbage = b"\x89GARBAGE\xff\xfe not a safetensors header at all \x00\x01\x02";
    bytes[..garbage.len()].copy_from_slice(garbage);
    std::fs::write(&file, &bytes).unwrap();
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&file), "not a valid safetensors file"]);
}

#[test]
fn corrupt_header_json() {
    let s = Scratch::new("badheaderjson");
    let model = s.copy_fixture("bloom_6h");
    let file = model.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    // keep the length prefix, scribble over the JSON header
    for b in &mut bytes[8..40] {
        *b = b'#';
    }
    std::fs::write(&file, &bytes).unwrap();
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    assert_clean_error(&r, &[&disp(&file), "not a valid safetensors file", "JSON"]);
}

#[test]
fn shard_listed_in_index_missing() {
    let s = Scratch::new("noshard");
    let model = s.copy_fixture("llama_gqa");
    let shard = model.join("model-00002-of-00003.safetensors");
    std::fs::remove_file(&shard).unwrap();
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&shard), "model.safetensors.index.json", "not found"]);
}

#[test]
fn tensor_missing() {
    let s = Scratch::new("notensor");
    let model = s.copy_fixture("llama_gqa");
    let name = "model.layers.0.self_attn.k_proj.weight";
    rewrite_safetensors(&shard_of(&model, name), |n, _, _, _| (n == name).then_some(Edit::Drop));
    // and from the index, as a consistent checkpoint that simply lacks the tensor
    let index_path = model.join("model.safetensors.index.json");
    let mut index = read_json(&index_path);
    index["weight_map"].as_object_mut().unwrap().remove(name).unwrap();
    write_json(&index_path, &index);
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    // k_proj of 2 kv heads × head_dim 16 over hidden 64
    assert_clean_error(&r, &[&disp(&model), name, "missing", "[32, 64]"]);
}

#[test]
fn tensor_missing_bloom_single_file() {
    let s = Scratch::new("notensor-bloom");
    let model = s.copy_fixture("bloom_6h");
    let name = "transformer.h.1.self_attention.query_key_value.bias";
    rewrite_safetensors(&model.join("model.safetensors"), |n, _, _, _| (n == name).then_some(Edit::Drop));
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    assert_clean_error(&r, &[&disp(&model), name, "missing", "[144]"]);
}

#[test]
fn tensor_wrong_shape() {
    let s = Scratch::new("shape");
    let model = s.copy_fixture("bloom_6h");
    let file = model.join("model.safetensors");
    let name = "transformer.h.1.mlp.dense_4h_to_h.weight";
    // (48, 192) stored transposed, same bytes
    rewrite_safetensors(&file, |n, dt, shape, data| {
        (n == name).then(|| {
            assert_eq!(shape, [48, 192]);
            Edit::Replace(dt, vec![192, 48], data.to_vec())
        })
    });
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    assert_clean_error(&r, &[&disp(&file), name, "[192, 48]", "[48, 192]", "config.json"]);
}

#[test]
fn tensor_unsupported_dtype_f64() {
    let s = Scratch::new("f64");
    let model = s.copy_fixture("llama_gqa");
    let name = "lm_head.weight";
    let file = shard_of(&model, name);
    rewrite_safetensors(&file, |n, dt, shape, data| {
        (n == name).then(|| {
            assert_eq!(dt, Dtype::F32);
            let f64s: Vec<u8> = data.chunks_exact(4).flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes()).collect();
            Edit::Replace(Dtype::F64, shape.to_vec(), f64s)
        })
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&file), name, "F64", "F32", "BF16", "F16"]);
}

#[test]
fn tensor_unsupported_dtype_i64() {
    let s = Scratch::new("i64");
    let model = s.copy_fixture("bloom_6h");
    let file = model.join("model.safetensors");
    let name = "transformer.ln_f.weight";
    rewrite_safetensors(&file, |n, _dt, shape, _data| {
        (n == name).then(|| Edit::Replace(Dtype::I64, shape.to_vec(), (0..shape.iter().product::<usize>() as i64).flat_map(|x| x.to_le_bytes()).collect()))
    });
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    assert_clean_error(&r, &[&disp(&file), name, "I64", "F32"]);
}

// ---- config.json ----------------------------------------------------------------------------

#[test]
fn config_unknown_model_type() {
    let s = Scratch::new("gpt2");
    let model = s.copy_fixture("llama_gqa");
    let cfg = edit_config(&model, |c| {
        c.insert("model_type".into(), "gpt2".into());
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "model_type", "gpt2", "llama", "bloom"]);
}

#[test]
fn config_sequence_classification_with_two_labels() {
    // reward models are *ForSequenceClassification with one label; a 2-label classifier is not one
    let s = Scratch::new("seqcls");
    let model = s.copy_fixture("llama_gqa");
    let cfg = edit_config(&model, |c| {
        c.insert("architectures".into(), serde_json::json!(["LlamaForSequenceClassification"]));
        c.insert("id2label".into(), serde_json::json!({"0": "NEG", "1": "POS"}));
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "id2label", "LlamaForSequenceClassification", "2 labels", "exactly one"]);
}

#[test]
fn config_unknown_architecture_mistral() {
    let s = Scratch::new("mistral");
    let model = s.copy_fixture("llama_gqa");
    let cfg = edit_config(&model, |c| {
        c.insert("architectures".into(), serde_json::json!(["MistralForCausalLM"]));
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "architectures", "MistralForCausalLM", "LlamaForCausalLM"]);
}

#[test]
fn config_not_json() {
    let s = Scratch::new("cfgjson");
    let model = s.copy_fixture("bloom_6h");
    let cfg = model.join("config.json");
    std::fs::write(&cfg, "{\n  \"model_type\": \"bloom\",\n  \"n_head\": 6,,\n}\n").unwrap();
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "invalid JSON", "line 3"]);
}

#[test]
fn config_field_wrong_type() {
    let s = Scratch::new("cfgtype");
    let model = s.copy_fixture("llama_gqa");
    let cfg = edit_config(&model, |c| {
        c.insert("hidden_size".into(), "64".into());
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "hidden_size", "integer", "\"64\""]);
}

#[test]
fn config_unsupported_dtype_names_its_own_key() {
    let s = Scratch::new("cfgdtype");
    let model = s.copy_fixture("bloom_6h");
    // a 5.x config: the key is `dtype`, and the error must name that key, not `torch_dtype`
    let cfg = edit_config(&model, |c| {
        c.insert("dtype".into(), "int8".into());
    });
    let r = loglik(&s, &model, &good_data("bloom_6h"), &[]);
    let line = assert_clean_error(&r, &[&disp(&cfg), "field `dtype`", "int8", "float32", "bfloat16", "float16"]);
    assert!(!line.contains("torch_dtype"), "{line}");
}

#[test]
fn config_unsupported_rope_type() {
    let s = Scratch::new("yarn");
    let model = s.copy_fixture("llama_gqa");
    let cfg = edit_config(&model, |c| {
        c.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}),
        );
    });
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&cfg), "rope_parameters.rope_type", "yarn", "default", "linear", "llama3"]);
}

#[test]
fn tokenizer_json_missing() {
    let s = Scratch::new("notok");
    let model = s.copy_fixture("llama_gqa");
    let tok = model.join("tokenizer.json");
    std::fs::remove_file(&tok).unwrap();
    let r = loglik(&s, &model, &good_data("llama_gqa"), &[]);
    assert_clean_error(&r, &[&disp(&tok), "not found"]);
}

// ---- the --data file ------------------------------------------------------------------------

fn fixture_lines() -> Vec<String> {
    std::fs::read_to_string(good_data("llama_gqa")).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn data_malformed_line_3() {
    let s = Scratch::new("badline");
    let mut lines = fixture_lines();
    lines[2] = r#"{"context": "Москва — столица России", "continuation": "."#.to_string();
    let data = s.data(&(lines.join("\n") + "\n"));
    let r = loglik(&s, &fixture("llama_gqa"), &data, &[]);
    assert_clean_error(&r, &[&format!("{}:3:", disp(&data)), "malformed JSON"]);
}

#[test]
fn data_record_missing_continuation() {
    let s = Scratch::new("nocont");
    let mut lines = fixture_lines();
    lines[1] = r#"{"context": "Thủ đô của Việt Nam là "}"#.to_string();
    let data = s.data(&(lines.join("\n") + "\n"));
    let r = loglik(&s, &fixture("llama_gqa"), &data, &[]);
    assert_clean_error(&r, &[&format!("{}:2:", disp(&data)), "continuation"]);
}

#[test]
fn data_empty_file() {
    let s = Scratch::new("empty");
    let data = s.data("");
    let r = loglik(&s, &fixture("llama_gqa"), &data, &[]);
    assert_clean_error(&r, &[&disp(&data), "empty"]);
}

#[test]
fn data_file_missing() {
    let s = Scratch::new("nodata");
    let data = s.root.join("no_such_requests.jsonl");
    let r = loglik(&s, &fixture("llama_gqa"), &data, &[]);
    let line = assert_clean_error(&r, &[&disp(&data)]);
    assert!(line.to_lowercase().contains("no such file") || line.contains("not found"), "{line}");
}

// ---- flags ----------------------------------------------------------------------------------

/// `--backend cuda` on a machine without the CUDA driver: one clear line (a GPU machine runs the
/// CUDA backend instead, so there the test has nothing to check).
#[test]
fn backend_cuda_without_a_driver() {
    if okapi::runtime::cuda::driver_present() {
        eprintln!("backend_cuda_without_a_driver: this machine has a CUDA driver; nothing to check");
        return;
    }
    let s = Scratch::new("cuda");
    let r = loglik(&s, &fixture("llama_gqa"), &good_data("llama_gqa"), &["--backend", "cuda"]);
    assert_clean_error(&r, &["cuda", "no CUDA driver", "libcuda.so.1"]);
}

#[test]
fn backend_wgpu_refuses_bf16() {
    let s = Scratch::new("wgpu-bf16");
    let r = loglik(&s, &fixture("llama_gqa"), &good_data("llama_gqa"), &["--backend", "wgpu", "--precision", "bf16"]);
    assert_clean_error(&r, &["--precision bf16", "wgpu", "f32 only"]);
}

/// `WGPU_BACKEND` naming nothing, or only a backend this platform lacks: one clear line, no
/// output, before any work.
#[test]
fn backend_wgpu_without_an_adapter() {
    for (value, needles) in [("bogus", &["WGPU_BACKEND", "bogus", "names no backend"][..]), ("dx12", &["wgpu", "no GPU adapter found"][..])] {
        if value == "dx12" && cfg!(windows) {
            continue;
        }
        let s = Scratch::new("wgpu-none");
        let out_dir = s.root.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_okapi-train"))
            .args(["loglik", "--backend", "wgpu", "--model"])
            .arg(fixture("llama_gqa"))
            .arg("--data")
            .arg(good_data("llama_gqa"))
            .arg("--output")
            .arg(out_dir.join("results.jsonl"))
            .env("WGPU_BACKEND", value)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let r = Run { out, out_file: out_dir.join("results.jsonl"), out_dir };
        assert_clean_error(&r, needles);
    }
}

#[test]
fn batch_size_zero() {
    let s = Scratch::new("bs0");
    let r = loglik(&s, &fixture("llama_gqa"), &good_data("llama_gqa"), &["--batch-size", "0"]);
    assert_clean_error(&r, &["--batch-size", "at least 1"]);
}

// ---- every command: a table of hostile invocations -------------------------------------------
//
// Each case runs the real binary in a shared world (copies of the fixtures, data files of every
// format, a finished run with a checkpoint) and checks: a non-zero exit (2 for a command line
// clap refuses, 1 otherwise); stderr ends in one `error: ` line naming what is at fault (and,
// for errors found before any work, is only that line); no panic; and every file of the world
// is byte for byte what it was — nothing written, nothing lost.

struct World {
    s: Scratch,
    /// placeholder → path, for the cases' arguments
    vars: Vec<(&'static str, String)>,
}

impl World {
    fn path(&self, name: &str) -> PathBuf {
        self.s.root.join(name)
    }

    /// Copies of the fixtures and of broken variants, data files, and a finished run.
    fn new() -> World {
        let s = Scratch::new("hostile");
        let llama = s.copy_fixture("llama_gqa");
        let bloom = s.copy_fixture("bloom_6h");
        let files = [
            ("sft.jsonl", SHORT_SFT_RECORDS.to_string()),
            ("ranking.json", std::fs::read_to_string(fixture("ranking_data.json")).unwrap()),
            ("requests.jsonl", std::fs::read_to_string(fixture("llama_gqa/loglik.jsonl")).unwrap()),
            ("arc_vi.json", std::fs::read_to_string(fixture("eval/arc_vi.json")).unwrap()),
            ("empty_vi.json", String::new()),
            ("emptyarr_vi.json", "[]".into()),
            ("template.json", SHORT_TEMPLATE.into()),
            ("notes.txt", "someone's notes\n".into()),
        ];
        for (name, text) in &files {
            std::fs::write(s.root.join(name), text).unwrap();
        }
        let world = World { vars: vec![], s };
        world.broken_models(&llama, &bloom);
        world.finished_run(&llama);
        let mut vars = vec![("{llama}", disp(&llama)), ("{bloom}", disp(&bloom)), ("{run}", disp(&world.path("run")))];
        for (name, _) in &files {
            vars.push((Box::leak(format!("{{{name}}}").into_boxed_str()), disp(&world.path(name))));
        }
        for v in BROKEN {
            vars.push((Box::leak(format!("{{{v}}}").into_boxed_str()), disp(&world.path(v))));
        }
        World { vars, ..world }
    }

    /// A run of 4 steps with checkpoints every 2 (`--resume {run}` continues it).
    fn finished_run(&self, llama: &Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_okapi-train"))
            .args(["sft", "--model", &disp(llama), "--data", &disp(&self.path("sft.jsonl")), "--out", &disp(&self.path("run"))])
            .args(["--max-steps", "4", "--save-every", "2", "--batch-size", "2", "--max-len", "60", "--log-every", "1", "--template", &disp(&self.path("template.json"))])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// The model variants of [`BROKEN`], each a copy of a fixture with one thing wrong.
    fn broken_models(&self, llama: &Path, bloom: &Path) {
        let copy = |from: &Path, name: &str| -> PathBuf {
            let dst = self.path(name);
            std::fs::create_dir_all(&dst).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
            dst
        };
        let cfg = |name: &str, from: &Path, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            edit_config(&copy(from, name), f);
        };
        cfg("fewer_layers", llama, &|c| {
            c.insert("num_hidden_layers".into(), 1.into());
        });
        cfg("max_pos_0", llama, &|c| {
            c.insert("max_position_embeddings".into(), 0.into());
        });
        cfg("eps_0", llama, &|c| {
            c.insert("rms_norm_eps".into(), 0.0.into());
        });
        cfg("bloom_eps_neg", bloom, &|c| {
            c.insert("layer_norm_epsilon".into(), (-1e-5).into());
        });
        cfg("rope_factor_0", llama, &|c| {
            c.insert("rope_parameters".into(), serde_json::json!({"rope_type": "linear", "rope_theta": 10000.0, "factor": 0.0}));
        });
        cfg("llama3_low_high", llama, &|c| {
            let p = serde_json::json!({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 16});
            c.insert("rope_parameters".into(), p);
        });
        cfg("rope_theta_0", llama, &|c| {
            c.insert("rope_parameters".into(), serde_json::json!({"rope_type": "default", "rope_theta": 0.0}));
        });
        cfg("eos_out_of_vocab", llama, &|c| {
            c.insert("eos_token_id".into(), 5000.into());
        });
        cfg("pad_huge", llama, &|c| {
            c.insert("pad_token_id".into(), 4294967296u64.into());
        });
        cfg("layers_huge", llama, &|c| {
            c.insert("num_hidden_layers".into(), 1_000_000_000.into());
        });
        cfg("ffn_0", llama, &|c| {
            c.insert("intermediate_size".into(), 0.into());
        });
        cfg("init_range_nan", llama, &|c| {
            c.insert("initializer_range".into(), "NaN".into());
        });
        cfg("no_eos", llama, &|c| {
            c.remove("eos_token_id");
        });
        for (name, bad) in [("nan_weight", f32::NAN), ("inf_weight", f32::INFINITY)] {
            let dir = copy(llama, name);
            let tensor = "model.layers.1.mlp.up_proj.weight";
            rewrite_safetensors(&shard_of(&dir, tensor), |n, dt, shape, data| {
                (n == tensor).then(|| {
                    let mut d = data.to_vec();
                    d[4 * 17..4 * 18].copy_from_slice(&bad.to_le_bytes());
                    Edit::Replace(dt, shape.to_vec(), d)
                })
            });
        }
        let big_tok = copy(llama, "tokenizer_bigger");
        let mut tok: Value = read_json(&big_tok.join("tokenizer.json"));
        let added = tok["added_tokens"].as_array_mut().unwrap();
        added.push(serde_json::json!({"id": 450, "content": "<extra>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
        write_json(&big_tok.join("tokenizer.json"), &tok);
        let no_eos_tok = copy(llama, "tokenizer_no_eos");
        let mut tok: Value = read_json(&no_eos_tok.join("tokenizer.json"));
        tok["added_tokens"].as_array_mut().unwrap().retain(|t| t["content"] != "</s>");
        tok["model"]["vocab"].as_object_mut().unwrap().remove("</s>");
        write_json(&no_eos_tok.join("tokenizer.json"), &tok);
        // tokenizers 0.22 panics on a syntax error inside `decoder`: caught, one error line
        let panicky = copy(llama, "tokenizer_panics");
        let tok = std::fs::read_to_string(panicky.join("tokenizer.json")).unwrap();
        let at = tok.find("\"decoder\"").unwrap();
        std::fs::write(panicky.join("tokenizer.json"), format!("{}\"decoder\": {{\"type\": \"Sequence\", \"decoders\": [nul]}}, {}", &tok[..at], &tok[at..])).unwrap();
        // a directory with someone's files: not a previous demo's
        std::fs::create_dir_all(self.path("foreign")).unwrap();
        std::fs::write(self.path("foreign/thesis.tex"), "\\documentclass{article}\n").unwrap();
    }

    fn expand(&self, arg: &str) -> String {
        let mut a = arg.to_string();
        for (k, v) in &self.vars {
            a = a.replace(k, v);
        }
        a.replace("{out}", &disp(&self.path("new-out")))
    }

    /// Every file under the world and its bytes.
    fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.s.root, &mut out);
        out.sort();
        out
    }
}

/// The broken model variants (directory names under the world).
const BROKEN: [&str; 19] = [
    "fewer_layers", "max_pos_0", "eps_0", "bloom_eps_neg", "rope_factor_0", "llama3_low_high", "rope_theta_0", "eos_out_of_vocab", "pad_huge", "layers_huge", "ffn_0",
    "init_range_nan", "no_eos", "nan_weight", "inf_weight", "tokenizer_bigger", "tokenizer_no_eos", "tokenizer_panics", "foreign",
];

/// One hostile invocation.
struct Case {
    name: &'static str,
    args: &'static str,
    needles: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// the error comes after some work (stderr has progress lines before it)
    late: bool,
}

const fn early(name: &'static str, args: &'static str, needles: &'static [&'static str]) -> Case {
    Case { name, args, needles, env: &[], late: false }
}

const fn late(name: &'static str, args: &'static str, needles: &'static [&'static str]) -> Case {
    Case { name, args, needles, env: &[], late: true }
}

const SFT: &str = "sft --model {llama} --data {sft.jsonl} --out {out} --max-len 60 --template {template.json}";
const PPO: &str = "ppo --policy {llama} --reward {run} --prompts {sft.jsonl} --out {out}";
const GRPO: &str = "grpo --policy {llama} --reward {run} --prompts {sft.jsonl} --out {out} --rollouts 8";

/// The cases, by the class of problem they belong to.
fn hostile_cases() -> Vec<Case> {
    let mut cases = degenerate_flag_cases();
    cases.extend(run_directory_cases());
    cases.extend(memory_cases());
    cases.extend(silently_wrong_cases());
    cases.extend(late_error_cases());
    cases
}

/// Class 1: zero, negative, non-finite and out-of-range flag values.
fn degenerate_flag_cases() -> Vec<Case> {
    vec![
        early("sft-save-every-0", "{SFT} --save-every 0", &["--save-every", "at least 1"]),
        early("sft-eval-every-0", "{SFT} --eval-every 0", &["--eval-every", "at least 1"]),
        early("sft-log-every-0", "{SFT} --log-every 0", &["--log-every", "at least 1"]),
        early("sft-epochs-0", "{SFT} --epochs 0", &["--epochs", "at least 1"]),
        early("sft-max-steps-0", "{SFT} --max-steps 0", &["--max-steps", "at least 1"]),
        early("sft-batch-0", "{SFT} --batch-size 0", &["--batch-size", "at least 1"]),
        early("sft-grad-accum-0", "{SFT} --grad-accum 0", &["--grad-accum", "at least 1"]),
        early("sft-max-len-1", "sft --model {llama} --data {sft.jsonl} --out {out} --max-len 1", &["--max-len", "at least 2"]),
        early("sft-val-fraction-1", "{SFT} --val-fraction 1", &["--val-fraction", "[0, 1)"]),
        early("sft-lr-nan", "{SFT} --lr NaN", &["--lr", "NaN", "finite"]),
        early("sft-lr-negative", "{SFT} --lr -0.0001", &["--lr", "non-negative"]),
        early("sft-adam-eps-0", "{SFT} --adam-eps 0", &["--adam-eps", "positive"]),
        early("sft-adam-eps-negative", "{SFT} --adam-eps -1", &["--adam-eps", "-1"]),
        early("sft-weight-decay-nan", "{SFT} --weight-decay NaN", &["--weight-decay", "NaN"]),
        early("sft-weight-decay-negative", "{SFT} --weight-decay -0.1", &["--weight-decay", "-0.1"]),
        early("sft-betas-1", "{SFT} --adam-betas 1,0.9", &["--adam-betas", "[0, 1)"]),
        early("sft-betas-text", "{SFT} --adam-betas high", &["--adam-betas", "B1,B2"]),
        early("sft-max-grad-norm-inf", "{SFT} --max-grad-norm inf", &["--max-grad-norm", "inf"]),
        early("sft-unfrozen-99", "{SFT} --unfrozen-layers 99", &["--unfrozen-layers 99", "2 layers"]),
        early("sft-save-dtype", "{SFT} --save-dtype int8", &["--save-dtype int8", "f32, bf16 or f16"]),
        early("sft-schedule", "{SFT} --lr-schedule sawtooth", &["--lr-schedule", "sawtooth"]),
        early("sft-epochs-negative", "{SFT} --epochs -1", &["--epochs", "-1"]),
        early("sft-template-missing", "sft --model {llama} --data {sft.jsonl} --out {out} --template /nonexistent/template.json", &["/nonexistent/template.json"]),
        early("reward-margin-nan", "reward --model {llama} --data {ranking.json} --out {out} --margin NaN", &["--margin", "NaN"]),
        early("dpo-beta-0", "dpo --model {llama} --data {ranking.json} --out {out} --beta 0", &["--beta 0", "positive"]),
        early("dpo-recipe-okapi", "dpo --model {llama} --data {ranking.json} --out {out} --recipe okapi", &["--recipe okapi", "no DPO stage"]),
        early("ppo-samples-every-0", "{PPO} --samples-every 0", &["--samples-every", "at least 1"]),
        early("ppo-log-every-0", "{PPO} --log-every 0", &["--log-every", "at least 1"]),
        early("ppo-save-every-0", "{PPO} --save-every 0", &["--save-every", "at least 1"]),
        early("ppo-iterations-0", "{PPO} --iterations 0", &["--iterations", "at least 1"]),
        early("ppo-rollouts-0", "{PPO} --rollouts 0", &["--rollouts", "at least 1"]),
        early("ppo-chunk-0", "{PPO} --chunk-size 0", &["--chunk-size", "at least 1"]),
        early("ppo-epochs-0", "{PPO} --ppo-epochs 0", &["--ppo-epochs", "at least 1"]),
        early("ppo-minibatch-0", "{PPO} --ppo-batch-size 0", &["--ppo-batch-size", "at least 1"]),
        early("ppo-max-new-0", "{PPO} --max-new-tokens 0", &["--max-new-tokens", "at least 1"]),
        early("ppo-max-prompt-0", "{PPO} --max-prompt-len 0", &["--max-prompt-len", "at least 1"]),
        early("ppo-gamma-2", "{PPO} --gamma 2", &["--gamma", "[0, 1]"]),
        early("ppo-lam-nan", "{PPO} --lam NaN", &["--lam", "NaN"]),
        early("ppo-cliprange-0", "{PPO} --cliprange 0", &["--cliprange", "positive"]),
        early("ppo-cliprange-value-negative", "{PPO} --cliprange-value -0.2", &["--cliprange-value", "positive"]),
        early("ppo-vf-coef-inf", "{PPO} --vf-coef inf", &["--vf-coef", "inf"]),
        early("ppo-kl-horizon-0", "{PPO} --kl-horizon 0", &["--kl-horizon", "positive"]),
        early("ppo-kl-target-0", "{PPO} --kl-target 0", &["--kl-target 0", "none"]),
        early("ppo-init-kl-negative", "{PPO} --init-kl-coef -1", &["--init-kl-coef", "-1"]),
        early("ppo-reward-clip-0", "{PPO} --reward-clip 0", &["--reward-clip", "positive"]),
        early("ppo-temperature-negative", "{PPO} --temperature -1", &["--temperature", "-1"]),
        early("ppo-top-p-0", "{PPO} --top-p 0", &["--top-p", "(0, 1]"]),
        early("ppo-critic-bogus", "{PPO} --critic both", &["--critic both", "shared", "separate"]),
        early("ppo-reward-list-bogus", "ppo --policy {llama} --reward rm=one --prompts {sft.jsonl} --out {out}", &["--reward", "rm=one", "finite number"]),
        early("ppo-separate-critic-no-rm", "ppo --policy {llama} --reward lang=1 --prompts {sft.jsonl} --out {out} --critic separate", &["--critic separate", "no rm term"]),
        early("grpo-generations-1", "{GRPO} --num-generations 1", &["--num-generations", "at least 2"]),
        early("grpo-rollouts-not-whole-groups", "{GRPO} --num-generations 3", &["--rollouts", "8", "multiple of --num-generations 3"]),
        early("grpo-loss-type", "{GRPO} --loss-type mean", &["--loss-type", "mean", "grpo or bnpo or dr_grpo"]),
        early("grpo-scale-rewards", "{GRPO} --scale-rewards std", &["--scale-rewards", "std", "none or group or batch"]),
        early("grpo-beta-nan", "{GRPO} --beta NaN", &["--beta", "NaN"]),
        early("grpo-epsilon-negative", "{GRPO} --epsilon -0.2", &["--epsilon", "positive"]),
        early("grpo-batch-0", "{GRPO} --batch-size 0", &["--batch-size", "at least 1"]),
        early("grpo-iterations-0", "{GRPO} --num-iterations 0", &["--num-iterations", "at least 1"]),
        early("grpo-rm-without-model", "grpo --policy {llama} --reward rm=1,lang=1 --prompts {sft.jsonl} --out {out}", &["--reward rm=1,lang=1", "--reward-model"]),
        early("rloo-scale-rewards", "rloo --policy {llama} --reward {run} --prompts {sft.jsonl} --out {out} --scale-rewards group", &["--scale-rewards", "RLOO"]),
        early("generate-temperature-nan", "generate --model {llama} --instruction hi --temperature NaN", &["--temperature", "NaN"]),
        early("generate-top-p-1.5", "generate --model {llama} --instruction hi --top-p 1.5", &["--top-p", "1.5"]),
        early("generate-max-new-0", "generate --model {llama} --instruction hi --max-new-tokens 0", &["--max-new-tokens 0", "at least 1"]),
        early("bench-threads-0", "bench train --preset tiny --threads 0", &["--threads 0", "1 to 1024"]),
        early("bench-threads-huge", "bench train --preset tiny --threads 100000", &["--threads 100000", "1 to 1024"]),
        early("bench-batch-0", "bench train --preset tiny --batch-size 0", &["--batch-size 0", "at least 1"]),
        early("bench-steps-0", "bench generate --preset tiny --steps 0", &["--steps 0", "at least 1"]),
        early("bench-seq-1", "bench train --preset tiny --seq-len 1", &["--seq-len 1", "at least 2"]),
        early("bench-lr-nan", "bench train --preset tiny --lr NaN", &["--lr NaN"]),
        early("bench-mode", "bench sideways --preset tiny", &["bench sideways", "train", "generate"]),
        early("bench-preset", "bench train --preset huge", &["--preset", "huge", "tiny"]),
        early("init-max-positions-0", "init --arch llama --preset tiny --tokenizer {llama} --out {out} --max-positions 0", &["--max-positions 0", "at least 1"]),
        early("init-arch", "init --arch gpt2 --preset tiny --tokenizer {llama} --out {out}", &["--arch", "gpt2", "expected one of \"llama\", \"bloom\", \"qwen2\", \"qwen3\", \"mistral\", \"gemma2\""]),
        early("tokenizer-vocab-0", "tokenizer --data {sft.jsonl} --vocab-size 0 --out {out}", &["--vocab-size 0", "at least 260"]),
        early("eval-batch-0", "eval --model {llama} --task arc --data {arc_vi.json} --batch-size 0", &["--batch-size", "at least 1"]),
        early("eval-limit-0", "eval --model {llama} --task arc --data {arc_vi.json} --limit 0", &["--limit", "at least 1"]),
        early("eval-task", "eval --model {llama} --task winogrande --data {arc_vi.json}", &["--task", "winogrande"]),
        early("eval-mmlu-prompt", "eval --model {llama} --task mmlu --data {arc_vi.json} --mmlu-prompt v9", &["--mmlu-prompt", "v9"]),
        early("score-batch-0", "score --model {run} --data {ranking.json} --batch-size 0", &["--batch-size 0"]),
        early("demo-method", "demo --out {out} --method sgd", &["--method sgd", "ppo, grpo, dpo or none"]),
    ]
}

/// Class 3: outputs that would replace inputs or mix with another run.
fn run_directory_cases() -> Vec<Case> {
    vec![
        early("sft-out-is-model", "sft --model {llama} --data {sft.jsonl} --out {llama}", &["--out", "is the --model directory"]),
        early("sft-out-inside-model", "sft --model {llama} --data {sft.jsonl} --out {llama}/run", &["--out", "inside the --model directory"]),
        early("sft-out-holds-run", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60", &["already holds a run", "args.json", "--resume", "--overwrite"]),
        early("sft-out-is-file", "sft --model {llama} --data {sft.jsonl} --out {notes.txt}", &["--out", "not a directory"]),
        early("sft-resume-and-overwrite", "{SFT} --resume {run} --overwrite", &["--resume", "--overwrite"]),
        early("sft-resume-nothing", "{SFT} --resume {arc_vi.json}", &["--resume", "no checkpoint there"]),
        early("sft-resume-into-other-run", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --resume {fewer_layers}", &["--resume", "no checkpoint"]),
        early("reward-out-is-model", "reward --model {llama} --data {ranking.json} --out {llama}", &["is the --model directory"]),
        early("dpo-out-holds-run", "dpo --model {llama} --data {ranking.json} --out {run}", &["already holds a run"]),
        early("ppo-out-is-reward", "ppo --policy {llama} --reward {run} --prompts {sft.jsonl} --out {run}", &["is the --reward directory"]),
        early("ppo-out-is-policy", "ppo --policy {llama} --reward {run} --prompts {sft.jsonl} --out {llama}", &["is the --policy directory"]),
        early("resume-of-sft-by-reward", "reward --model {llama} --data {ranking.json} --out {run} --resume {run}", &["--resume", "checkpoint of `sft`", "reward"]),
        early("loglik-output-is-data", "loglik --model {llama} --data {requests.jsonl} --output {requests.jsonl}", &["--output", "input file"]),
        early("loglik-output-in-model", "loglik --model {llama} --data {requests.jsonl} --output {llama}/config.json", &["--output", "inside the --model directory"]),
        early("loglik-output-is-dir", "loglik --model {llama} --data {requests.jsonl} --output {run}", &["--output", "is a directory"]),
        early("eval-output-is-data", "eval --model {llama} --task arc --data {arc_vi.json} --output {arc_vi.json}", &["--output", "input file"]),
        early("eval-output-is-data-with-task", "eval --model {llama} --task arc --data arc={arc_vi.json} --output {arc_vi.json}", &["--output", "input file"]),
        early("score-output-in-model", "score --model {run} --data {ranking.json} --output {run}/metrics.jsonl", &["--output", "inside the --model directory"]),
        early("tokenizer-out-is-data", "tokenizer --data {sft.jsonl} --vocab-size 300 --out {sft.jsonl}", &["--out", "input file"]),
        early("init-out-holds-model", "init --arch llama --preset tiny --tokenizer {llama} --out {llama}", &["already holds a model", "--overwrite"]),
        early("demo-out-foreign", "demo --out {foreign}", &["--out", "thesis.tex", "not a previous demo's"]),
    ]
}

/// Class 4: sizes beyond the memory there is.
fn memory_cases() -> Vec<Case> {
    vec![
        Case { env: &[("OKAPI_MEMORY_LIMIT", "64K")], ..late("sft-memory-limit", "{SFT}", &["not enough memory for training", "OKAPI_MEMORY_LIMIT=64K", "the largest part is"]) },
        // `plan`: a plan that does not fit is refused like the run it plans (its table goes to stdout)
        Case { env: &[("OKAPI_MEMORY_LIMIT", "1G")], ..early("plan-7b-sft", "plan --command sft --preset llama-7b", &["not enough memory for sft", "the largest part is AdamW moments", "--unfrozen-layers"]) },
        Case { env: &[("OKAPI_MEMORY_LIMIT", "1G")], ..early("plan-7b-ppo", "plan --command ppo --preset llama-7b --recipe okapi", &["not enough memory for PPO", "the largest part is activations", "use --grad-checkpointing, or lower --ppo-batch-size"]) },
        early("plan-unknown-preset", "plan --command sft --preset llama-70b", &["--preset", "llama-70b"]),
        early("plan-no-model", "plan --command sft", &["--model"]),
        early("plan-batch-0", "plan --command sft --preset tiny --batch-size 0", &["--batch-size", "at least 1"]),
        early("sft-lm-head-chunk-0", "{SFT} --lm-head-chunk 0", &["--lm-head-chunk 0", "at least 1"]),
        early("reward-lm-head-chunk", "reward --model {llama} --data {ranking.json} --out {out} --lm-head-chunk 8", &["--lm-head-chunk 8", "reward has no LM head"]),
        early("plan-lm-head-chunk-eval", "plan --command eval --preset tiny --lm-head-chunk 8", &["--lm-head-chunk 8", "only sft, dpo and ppo"]),
        early("ppo-lm-head-chunk-0", "{PPO} --lm-head-chunk 0", &["--lm-head-chunk 0", "at least 1"]),
        early("loglik-lm-head-chunk-0", "loglik --model {llama} --data {requests.jsonl} --output {out} --lm-head-chunk 0", &["--lm-head-chunk 0", "at least 1"]),
        early("plan-bad-model-dir", "plan --command generate --model /nonexistent/model", &["/nonexistent/model"]),
        Case { env: &[("OKAPI_MEMORY_LIMIT", "64K")], ..early("loglik-memory-limit", "loglik --model {llama} --data {requests.jsonl} --output {out}", &["not enough memory for loading", "llama_gqa", "OKAPI_MEMORY_LIMIT=64K"]) },
        Case { env: &[("OKAPI_MEMORY_LIMIT", "plenty")], ..early("memory-limit-garbage", "loglik --model {llama} --data {requests.jsonl} --output {out}", &["OKAPI_MEMORY_LIMIT=plenty", "size"]) },
        early("bench-seq-huge", "bench train --preset tiny --seq-len 100000000000", &["not enough memory for training", "activations", "--seq-len"]),
        early("bench-batch-huge", "bench generate --preset tiny --batch-size 100000000000", &["not enough memory for bench generate", "KV cache"]),
        Case { env: &[("OKAPI_MEMORY_LIMIT", "1G")], ..early("init-7b", "init --arch llama --preset llama-7b --tokenizer {llama} --out {out}", &["not enough memory for init --preset llama-7b", "1.0 GiB available"]) },
        early("generate-bloom-new-huge", "generate --model {bloom} --instruction hi --max-new-tokens 100000000000", &["not enough memory for generate", "KV cache", "--max-new-tokens"]),
        early("tokenizer-vocab-huge", "tokenizer --data {sft.jsonl} --vocab-size 100000000000 --out {out}", &["--vocab-size 100000000000", "at most"]),
        late("ppo-rollouts-huge", "ppo --policy {bloom} --reward {run} --retokenize --prompts {sft.jsonl} --out {out} --rollouts 100000000000", &["not enough memory for PPO", "rollouts"]),
    ]
}

/// Class 5: what used to run to the end with wrong numbers.
fn silently_wrong_cases() -> Vec<Case> {
    vec![
        early("extra-layer-tensors", "loglik --model {fewer_layers} --data {requests.jsonl} --output {out}", &["model.layers.1.", "not part of the model config.json describes", "1 layers"]),
        early("nan-weight", "loglik --model {nan_weight} --data {requests.jsonl} --output {out}", &["model.layers.1.mlp.up_proj.weight", "not finite", "index 17", "NaN"]),
        early("inf-weight", "generate --model {inf_weight} --instruction hi", &["model.layers.1.mlp.up_proj.weight", "not finite", "inf"]),
        early("max-position-0", "loglik --model {max_pos_0} --data {requests.jsonl} --output {out}", &["config.json", "max_position_embeddings", "positive"]),
        early("tokenizer-bigger-than-vocab", "sft --model {tokenizer_bigger} --data {sft.jsonl} --out {out} --max-len 60", &["tokenizer.json", "go up to 400", "vocab_size 400", "do not match"]),
        early("tokenizer-bigger-generate", "generate --model {tokenizer_bigger} --instruction hi", &["tokenizer.json", "do not match"]),
        early("resume-changed-lr", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --save-every 2 --batch-size 2 --resume {run} --lr 1e-3", &["--resume", "--lr 0.00001", "--lr 0.001", "keeps every setting"]),
        early("resume-changed-batch", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --save-every 2 --batch-size 1 --resume {run}", &["--batch-size 2", "--batch-size 1"]),
        early("resume-changed-accum", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --grad-accum 2 --resume {run}", &["--grad-accum 1", "--grad-accum 2"]),
        early("resume-changed-shuffle", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --no-shuffle --resume {run}", &["--no-shuffle false", "--no-shuffle true"]),
        early("resume-changed-seed", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --seed 7 --resume {run}", &["--seed 42", "--seed 7"]),
        early("resume-changed-schedule", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --lr-schedule linear --resume {run}", &["--lr-schedule \"cosine\"", "--lr-schedule \"linear\""]),
        early("resume-changed-mask", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --no-mask-prompt --resume {run}", &["--mask-prompt true", "--mask-prompt false"]),
        late("resume-changed-length", "sft --model {llama} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 6 --batch-size 2 --resume {run}", &["--resume", "4 steps in total", "6"]),
        late("resume-other-data", "sft --model {llama} --data {sft.jsonl} {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --resume {run}", &["--resume", "another data set", "--data"]),
        late("resume-other-model", "sft --model {bloom} --data {sft.jsonl} --out {run} --max-len 60 --template {template.json} --max-steps 4 --batch-size 2 --resume {run}", &["--resume", "another model", "bloom"]),
    ]
}

/// Class 6: values that used to fail late, or with a message that did not name them.
fn late_error_cases() -> Vec<Case> {
    vec![
        early("rms-norm-eps-0", "loglik --model {eps_0} --data {requests.jsonl} --output {out}", &["config.json", "rms_norm_eps", "positive"]),
        early("layer-norm-eps-negative", "loglik --model {bloom_eps_neg} --data {requests.jsonl} --output {out}", &["config.json", "layer_norm_epsilon", "positive"]),
        early("rope-factor-0", "loglik --model {rope_factor_0} --data {requests.jsonl} --output {out}", &["config.json", "rope_parameters.factor", "positive"]),
        early("llama3-high-below-low", "loglik --model {llama3_low_high} --data {requests.jsonl} --output {out}", &["rope_parameters.high_freq_factor", "greater than low_freq_factor"]),
        early("rope-theta-0", "loglik --model {rope_theta_0} --data {requests.jsonl} --output {out}", &["config.json", "rope_theta", "positive"]),
        early("eos-out-of-vocab", "generate --model {eos_out_of_vocab} --instruction hi", &["config.json", "eos_token_id", "5000", "vocab_size 400"]),
        early("pad-id-huge", "loglik --model {pad_huge} --data {requests.jsonl} --output {out}", &["config.json", "pad_token_id", "4294967296"]),
        early("layers-huge", "loglik --model {layers_huge} --data {requests.jsonl} --output {out}", &["config.json", "num_hidden_layers", "at most"]),
        early("intermediate-size-0", "loglik --model {ffn_0} --data {requests.jsonl} --output {out}", &["config.json", "intermediate_size", "positive"]),
        early("initializer-range-nan", "loglik --model {init_range_nan} --data {requests.jsonl} --output {out}", &["config.json", "initializer_range"]),
        early("sft-no-eos", "sft --model {no_eos} --data {sft.jsonl} --out {out}", &["config.json", "eos_token_id"]),
        early("sft-empty-file", "sft --model {llama} --data {sft.jsonl} {empty_vi.json} --out {out}", &["empty_vi.json", "empty"]),
        early("sft-empty-array", "sft --model {llama} --data {emptyarr_vi.json} --out {out}", &["emptyarr_vi.json", "empty"]),
        early("reward-empty-file", "reward --model {llama} --data {empty_vi.json} --out {out}", &["empty_vi.json", "empty"]),
        early("ppo-empty-prompts", "ppo --policy {llama} --reward {run} --prompts {emptyarr_vi.json} --out {out}", &["emptyarr_vi.json", "empty"]),
        early("tokenizer-empty-data", "tokenizer --data {empty_vi.json} --vocab-size 300 --out {out}", &["empty_vi.json", "empty"]),
        early("eval-empty-file", "eval --model {llama} --task arc --data {empty_vi.json}", &["empty_vi.json", "empty"]),
        early("tokenizer-crate-panics", "loglik --model {tokenizer_panics} --data {requests.jsonl} --output {out}", &["tokenizer.json", "malformed tokenizer.json", "the tokenizers crate failed"]),
        early("init-tokenizer-without-eos", "init --arch llama --preset tiny --tokenizer {tokenizer_no_eos} --out {out}", &["tokenizer.json", "no end-of-sequence token", "</s>"]),
        early("sft-data-missing", "sft --model {llama} --data {run}/nothing.jsonl --out {out}", &["nothing.jsonl"]),
        early("ranking-record-shape", "reward --model {llama} --data {sft.jsonl} --out {out}", &["sft.jsonl", "prefered_output"]),
    ]
}

/// Runs one case and returns what is wrong with its outcome (`None`: all as required).
fn check_case(world: &World, c: &Case) -> Option<String> {
    let args: Vec<String> = c.args.replace("{SFT}", SFT).replace("{PPO}", PPO).replace("{GRPO}", GRPO).split_whitespace().map(|a| world.expand(a)).collect();
    let before = world.snapshot();
    let out = Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(&args).envs(c.env.iter().copied()).env_remove("RUST_BACKTRACE").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let fail = |why: String| Some(format!("{}: {why}\n  args: {}\n  stderr: {stderr}", c.name, args.join(" ")));
    let code = out.status.code();
    if !matches!(code, Some(1) | Some(2)) {
        return fail(format!("exit status {:?}, expected 1 (or 2 for a command line clap refuses)", out.status));
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let Some(last) = lines.last() else { return fail("no error message".into()) };
    if !last.starts_with("error: ") {
        return fail("the last stderr line is not `error: …`".into());
    }
    if !c.late && lines.len() != 1 {
        return fail(format!("an error found before any work must be the only stderr line ({} lines)", lines.len()));
    }
    if let Some(bad) = ["panicked", "internal error", "RUST_BACKTRACE", "memory allocation"].iter().find(|b| stderr.contains(*b)) {
        return fail(format!("stderr contains {bad:?}"));
    }
    if let Some(n) = c.needles.iter().find(|n| !last.contains(*n)) {
        return fail(format!("the error line does not mention {n:?}"));
    }
    let after = world.snapshot();
    if after.len() != before.len() || after.iter().zip(&before).any(|(a, b)| a.0 != b.0) {
        let names = |s: &[(PathBuf, Vec<u8>)]| s.iter().map(|(p, _)| p.clone()).collect::<std::collections::BTreeSet<_>>();
        let (a, b) = (names(&after), names(&before));
        return fail(format!("files appeared {:?} or vanished {:?}", a.difference(&b).collect::<Vec<_>>(), b.difference(&a).collect::<Vec<_>>()));
    }
    if let Some((p, _)) = after.iter().zip(&before).find(|(a, b)| a.1 != b.1).map(|(a, _)| a) {
        return fail(format!("{} changed", p.display()));
    }
    None
}

#[test]
fn every_command_refuses_hostile_input_cleanly_and_changes_nothing() {
    let world = World::new();
    let cases = hostile_cases();
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    // with this file's other tests (one case each), well over a hundred cases
    assert!(cases.len() >= 120, "{} cases", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|c| check_case(&world, c)).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
    eprintln!("{} hostile cases: each one clear error line, nothing written", cases.len());
}

/// Output paths relative to the working directory, bare file names included (their directory is
/// `.`, not the empty path): loglik's `--output` and a training run's `--out`.
#[test]
fn relative_output_paths_work() {
    let s = Scratch::new("relative");
    std::fs::write(s.root.join("sft.jsonl"), SHORT_SFT_RECORDS).unwrap();
    std::fs::write(s.root.join("template.json"), SHORT_TEMPLATE).unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_okapi-train")).args(args).current_dir(&s.root).output().unwrap();
    let model = disp(&fixture("llama_gqa"));
    let o = run(&["loglik", "--model", &model, "--data", &disp(&good_data("llama_gqa")), "--output", "results.jsonl"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(s.root.join("results.jsonl")).unwrap().lines().count(), 10);
    let o = run(&["sft", "--model", &model, "--data", "sft.jsonl", "--template", "template.json", "--out", "run", "--max-steps", "2", "--save-every", "1", "--batch-size", "2", "--max-len", "60"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s.root.join("run/model.safetensors").exists() && s.root.join("run/checkpoint/trainer_state.json").exists());
    let o = run(&["sft", "--model", &model, "--data", "sft.jsonl", "--template", "template.json", "--out", "run", "--max-steps", "2", "--save-every", "1", "--batch-size", "2", "--max-len", "60", "--resume", "run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing left to train"));
}
