//! Bad input to `okapi-train loglik` ends in ONE readable line, never a panic.
//!
//! Every test breaks a copy of a fixture model directory (or the data file, or a flag) in its
//! own temporary directory, runs the real binary and checks: non-zero exit status; stderr is
//! exactly one non-empty line starting with `error: ` (no panic, no backtrace, no "internal
//! error"); that line names the culprit (file, tensor, field or line) and what was expected;
//! and no output file (nor its temporary) was written.
mod common;

use common::{fixture, Scratch};

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
