//! Shared helpers of the parity tests: fixture paths, reading reference tensors, and comparisons
//! with named tolerance presets that report the worst element.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Short instruction records in three scripts: with [`SHORT_TEMPLATE`] and `--max-len 60` they
/// fit llama_gqa's 64 positions.
pub const SHORT_SFT_RECORDS: &str = r#"{"instruction": "Chào bằng tiếng Việt.", "input": "", "output": "Xin chào bạn!"}
{"instruction": "Translate to Russian", "input": "good morning", "output": "Доброе утро"}
{"instruction": "Name a colour.", "input": "", "output": "Blue."}
{"instruction": "Summarize", "input": "The cat sat on the mat.", "output": "A cat sat."}
{"instruction": "اكتب كلمة عربية.", "input": "", "output": "مرحبا"}
"#;

/// A prompt template (alpaca-lora's format) without Okapi's long preamble.
/// `okapi-train sft` of fixture `model` on [`SHORT_SFT_RECORDS`] with [`SHORT_TEMPLATE`]
/// (written into `dir`), into `out`, with `args` and the environment `env`.
pub fn short_sft(dir: &Path, model: &str, out: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let (data, tpl) = (dir.join("sft.jsonl"), dir.join("template.json"));
    std::fs::write(&data, SHORT_SFT_RECORDS).unwrap();
    std::fs::write(&tpl, SHORT_TEMPLATE).unwrap();
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_okapi-train"));
    c.args(["sft", "--model"]).arg(fixture(model)).arg("--data").arg(&data).arg("--template").arg(&tpl).arg("--out").arg(out).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// What a PPO run through the CLI needs, written into `dir`: `policy/` (the `tiny` LLaMA, seed
/// 3, on llama_gqa's tokenizer), `rm/` (a reward model trained from the policy on the ranking
/// fixture with `rm_args`) and `prompts.jsonl` (one record per instruction). Returns the three
/// paths and the reward run's output; both commands must succeed.
pub fn tiny_ppo_inputs(dir: &Path, rm_args: &[&str], instructions: &[&str]) -> (PathBuf, PathBuf, PathBuf, std::process::Output) {
    let bin = env!("CARGO_BIN_EXE_okapi-train");
    let check = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o
    };
    let policy = dir.join("policy");
    check(std::process::Command::new(bin).args(["init", "--arch", "llama", "--preset", "tiny", "--seed", "3", "--tokenizer"]).arg(fixture("llama_gqa").join("tokenizer.json")).arg("--out").arg(&policy).output().unwrap());
    let rm = dir.join("rm");
    let o = check(std::process::Command::new(bin).arg("reward").arg("--model").arg(&policy).arg("--data").arg(fixture("ranking_data.json")).arg("--out").arg(&rm).args(rm_args).output().unwrap());
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, instructions.iter().map(|i| format!("{}\n", serde_json::json!({"instruction": i, "input": ""}))).collect::<String>()).unwrap();
    (policy, rm, prompts, o)
}

pub const SHORT_TEMPLATE: &str = r#"{"prompt_input": "{instruction} {input}", "prompt_no_input": "{instruction}"}"#;

/// Sends SIGINT (`"INT"`) or SIGTERM (`"TERM"`) to a child process.
#[cfg(unix)]
pub fn send_signal(child: &std::process::Child, sig: &str) {
    let signum = match sig {
        "INT" => libc::SIGINT,
        "TERM" => libc::SIGTERM,
        other => panic!("no signal {other}"),
    };
    // SAFETY: kill(2) with the pid of a child this process spawned and has not waited for.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signum) };
    assert_eq!(rc, 0, "kill -{sig} {}", child.id());
}

/// A temporary directory, removed when the test passes (kept for inspection when it fails).
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = std::env::temp_dir().join(format!("okapi-test-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Scratch { root }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A reference tensor: shape and values (integers are widened to f64 exactly).
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
}

/// All tensors of `tests/fixtures/<name>/reference.safetensors`.
pub fn reference(name: &str) -> HashMap<String, RefTensor> {
    let path = fixture(name).join("reference.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run tests/fixtures/generate.py)", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let d = v.data();
            let (f, i) = match v.dtype() {
                Dtype::F32 => (d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), vec![]),
                Dtype::I64 => (vec![], d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            (name, RefTensor { shape: v.shape().to_vec(), f32: f, i64: i })
        })
        .collect()
}

/// Named tolerances of the parity tests against PyTorch / transformers.
pub struct Tol {
    pub name: &'static str,
    /// max |a − b|
    pub max_abs: f64,
    /// ‖a − b‖ / ‖b‖
    pub rel_norm: f64,
}

/// Logits of an f32 model vs transformers.
pub const LOGITS_F32: Tol = Tol { name: "logits-f32", max_abs: 1e-4, rel_norm: 1e-5 };
/// Gradient tensors vs transformers.
pub const GRAD_F32: Tol = Tol { name: "grad-f32", max_abs: f64::INFINITY, rel_norm: 1e-4 };
/// Two computations that must agree to float rounding (e.g. cached vs full forward).
pub const SAME_F32: Tol = Tol { name: "same-f32", max_abs: 5e-5, rel_norm: 5e-6 };

/// (max abs error, its index, relative norm error)
pub fn errors(got: &[f32], want: &[f32]) -> (f64, usize, f64) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let (mut max, mut at, mut num, mut den) = (0f64, 0usize, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w as f64).abs();
        assert!(g.is_finite(), "element {i} is {g}");
        if e > max {
            max = e;
            at = i;
        }
        num += e * e;
        den += (w as f64) * (w as f64);
    }
    (max, at, (num / den.max(1e-300)).sqrt())
}

/// Asserts `got ≈ want` under `tol`; the message names the tensor, the worst element and both values.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: &Tol) -> (f64, f64) {
    let (max, at, rel) = errors(got, want);
    assert!(
        max <= tol.max_abs && rel <= tol.rel_norm,
        "{what}: [{}] max abs error {max:.3e} at index {at} (got {}, want {}), relative norm error {rel:.3e} (limits {:.0e} abs, {:.0e} rel)",
        tol.name,
        got[at],
        want[at],
        tol.max_abs,
        tol.rel_norm
    );
    (max, rel)
}

pub fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// An f32 tensor of a safetensors file, by name.
pub fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name).unwrap_or_else(|_| panic!("{name}")).data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Saved parameters (HF names) against a fixture's `params_after.safetensors`, element-wise:
/// |got − want| ≤ atol + rtol·|want|, plus, for the elements `param_check` lists, the
/// f32-vs-f64 spread of the reference (`sensitive`: Adam moves near-zero gradients by ±lr on
/// rounding noise) or `gauge_bound` (`gauge`: parameters whose exact gradient is 0, e.g. BLOOM's
/// key bias, which softmax ignores: both sides hold noise that only has to stay in reach).
pub fn check_params(what: &str, saved: &HashMap<String, Vec<f32>>, want_path: &Path, param_check: &Value) {
    let bytes = std::fs::read(want_path).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    let sensitive: Vec<(String, usize, f64)> = param_check["sensitive"]
        .as_array()
        .map(|a| a.iter().map(|s| (s["name"].as_str().unwrap().to_string(), s["index"].as_u64().unwrap() as usize, (s["f32"].as_f64().unwrap() - s["f64"].as_f64().unwrap()).abs())).collect())
        .unwrap_or_default();
    let gauge_bound = param_check["gauge_bound"].as_f64().unwrap_or(0.0);
    let in_gauge = |name: &str, i: usize| param_check["gauge"][name].as_array().is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(i as u64)));
    let mut n = 0;
    for (name, _) in want.tensors() {
        let w = f32s(&want, &name);
        let g = saved.get(&name).unwrap_or_else(|| panic!("{what}: {name} not saved"));
        assert_eq!(g.len(), w.len(), "{what}: {name}");
        for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let tol = if in_gauge(&name, i) {
                gauge_bound
            } else {
                1e-4 + 1e-4 * (b as f64).abs() + sensitive.iter().filter(|s| s.0 == name && s.1 == i).map(|s| 2.0 * s.2).sum::<f64>()
            };
            assert!(((a - b) as f64).abs() <= tol, "{what}: {name}[{i}] = {a}, torch {b} (tolerance {tol:.1e})");
        }
        n += 1;
    }
    assert!(n > 0);
}

/// Runs a fixture's recorded command line (`OUT` replaced by `out`) plus `extra` from the
/// repository root; panics with its stderr when it fails.
pub fn run_cli(argv: &[Value], out: &Path, extra: &[&str]) -> std::process::Output {
    let args: Vec<String> = argv.iter().map(|a| a.as_str().unwrap().replace("OUT", out.to_str().unwrap())).collect();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_okapi-train")).current_dir(env!("CARGO_MANIFEST_DIR")).args(&args).args(extra).output().unwrap();
    assert!(o.status.success(), "{args:?} {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// The lines of `out/metrics.jsonl`.
pub fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ---- whole model on a backend -------------------------------------------------------------

pub struct ModelRun {
    pub logits: Vec<f32>,
    pub loss: f64,
    /// every parameter gradient under its Hugging Face name
    pub grads: Vec<(String, Vec<f32>)>,
}

/// Forward, next-token loss (some targets ignored) and backward of a fixture model on `be`.
pub fn model_run<B: okapi::runtime::Backend>(be: B, name: &str, b: usize, t: usize) -> ModelRun {
    model_run_with(be, name, b, t, false, None)
}

/// [`model_run`] with activation checkpointing on or off, and only the top `unfrozen` blocks
/// (and the head) trainable when given; frozen parameters report an empty gradient.
pub fn model_run_with<B: okapi::runtime::Backend>(be: B, name: &str, b: usize, t: usize, checkpointing: bool, unfrozen: Option<usize>) -> ModelRun {
    let mut model = okapi::model::Model::load(be, &fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    model.grad_checkpointing = checkpointing;
    let mask = model.trainable_mask(unfrozen).unwrap();
    let v = model.cfg.vocab_size;
    let mut rng = okapi::model::Rng::new(7);
    let ids: Vec<u32> = (0..b * t).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let (mut acts, mut scratch) = (model.new_acts(b, t), model.new_scratch(b, t));
    let mut grads = model.new_grads(|i| mask[i]);
    let mut bufs = okapi::rlhf::LossBufs::new(&model.be, b * t);
    model.forward(&mut acts, &ids, b, t).unwrap();
    let logits = model.be.read(&acts.logits, b * t * v);
    // the last position of each row has no target; a prompt-like prefix of row 0 is masked
    let targets: Vec<u32> = (0..b * t).map(|i| if i % t == t - 1 || i < t / 3 { okapi::runtime::IGNORE_INDEX } else { ids[i + 1] }).collect();
    let count = targets.iter().filter(|&&x| x != okapi::runtime::IGNORE_INDEX).count();
    let (sum, _) = okapi::rlhf::lm_loss_and_grad(&model, &mut acts, &mut bufs, &targets, 1.0 / count as f32);
    model.backward(&mut acts, &mut scratch, &mut grads);
    let host = |i: usize| match grads.bufs[i].as_ref() {
        Some(g) => model.be.read(g, model.be.buf_len(g)),
        None => vec![0.0; model.info[i].numel()],
    };
    let grads = okapi::model::model::to_hf(&model.hf, &host).into_iter().map(|(n, _, g)| (n, g)).collect();
    ModelRun { logits, loss: sum / count as f64, grads }
}

// ---- GPU backends, or a loud line saying the test did not run ------------------------------

/// Writes past libtest's output capture (which takes only the print macros), so the line shows
/// in CI logs even when every test passes.
pub fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The wgpu backend (one device per test binary, adapter chosen as the CLI chooses it), or
/// `None` after a loud "NO ADAPTER … did NOT run" line; `OKAPI_REQUIRE_WGPU=1` (CI) turns the
/// absence into a failure.
pub fn wgpu_or_skip(what: &str) -> Option<okapi::runtime::WgpuBackend> {
    use okapi::runtime::{WgpuBackend, WgpuOptions};
    use std::sync::OnceLock;
    static BE: OnceLock<Result<WgpuBackend, String>> = OnceLock::new();
    let be = BE.get_or_init(|| {
        let r = WgpuBackend::with_options(&WgpuOptions::from_env()).map_err(|e| e.to_string());
        if let Ok(be) = &r {
            loud(&format!("wgpu: running on adapter {}", be.adapter_name()));
        }
        r
    });
    match be {
        Ok(be) => Some(be.clone()),
        Err(e) => {
            loud(&format!("wgpu: NO ADAPTER — {what} did NOT run: {e}"));
            assert!(std::env::var("OKAPI_REQUIRE_WGPU").as_deref() != Ok("1"), "OKAPI_REQUIRE_WGPU=1 but wgpu has no adapter: {e}");
            None
        }
    }
}

/// The CUDA backend on device 0 at `precision` (NVRTC found as the CLI finds it), or `None`
/// after a loud "NO GPU … did NOT run" line; `OKAPI_REQUIRE_CUDA=1` (the device script) turns
/// the absence into a failure.
pub fn cuda_or_skip(precision: okapi::runtime::Precision, what: &str) -> Option<okapi::runtime::CudaBackend> {
    use okapi::runtime::{Backend, CudaBackend, CudaOptions};
    match CudaBackend::with_options(&CudaOptions::from_env(precision)) {
        Ok(be) => {
            loud(&format!("cuda: running on {}", be.name()));
            Some(be)
        }
        Err(e) => {
            loud(&format!("cuda: NO GPU — {what} did NOT run: {e}"));
            assert!(std::env::var("OKAPI_REQUIRE_CUDA").as_deref() != Ok("1"), "OKAPI_REQUIRE_CUDA=1 but the CUDA backend cannot start: {e}");
            None
        }
    }
}

/// The one `error:` line of a failed run of the binary, which must contain every needle (and
/// no panic anywhere on stderr).
#[track_caller]
/// The largest difference between two sets of tensors (in the same order), relative to each
/// tensor's largest value in `b`.
pub fn worst_rel_diff<'t>(a: impl IntoIterator<Item = &'t [f32]>, b: impl IntoIterator<Item = &'t [f32]>) -> f32 {
    a.into_iter()
        .zip(b)
        .map(|(p, q)| {
            assert_eq!(p.len(), q.len(), "tensors of different sizes");
            let scale = q.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
            p.iter().zip(q).map(|(x, y)| (x - y).abs() / scale).fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

pub fn one_error_line(o: &std::process::Output, needles: &[&str]) -> String {
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected a failure: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in {}", lines[0]);
    }
    lines[0].to_string()
}
