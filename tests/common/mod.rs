//! Shared helpers of the parity tests: fixture paths, reading reference tensors, and comparisons
//! with named tolerance presets that report the worst element.
#![allow(dead_code)]

use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
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

/// Named tolerances (DESIGN.md §7).
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
