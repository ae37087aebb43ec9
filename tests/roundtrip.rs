//! Load → save → load round trips of the fixture checkpoints, in the layout transformers'
//! `from_pretrained` reads: bit-identical tensors (f32, and bf16 kept as bf16), HF sharding with
//! a correct index, no stale files when re-saving into the same directory, `{"format": "pt"}`
//! metadata, config.json (same keys, dtype updated) and tokenizer.json alongside, BLOOM's fused
//! `query_key_value` split and fused back exactly, and the same logits before and after.
//!
//! `OKAPI_KEEP_SAVED=DIR cargo test --test roundtrip` also leaves two saved directories for
//! `tests/fixtures/check_saved.py` (transformers must load what okapi saves):
//! `DIR/llama_gqa_sharded` (f32, several shards + index) and `DIR/bloom_6h_bf16`.

mod common;

use common::{fixture, Scratch};

use okapi::model::model::{fuse_qkv, split_qkv};
use okapi::model::{Checkpoint, DType, Model, DEFAULT_MAX_SHARD_BYTES};
use okapi::runtime::CpuBackend;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

const INDEX: &str = "model.safetensors.index.json";


/// With `OKAPI_KEEP_SAVED=DIR`, copies a saved directory to `DIR/name` (replacing it).
fn keep(saved: &Path, name: &str) {
    let Some(root) = std::env::var_os("OKAPI_KEEP_SAVED") else { return };
    let dst = Path::new(&root).join(name);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for f in listing(saved) {
        std::fs::copy(saved.join(&f), dst.join(&f)).unwrap();
    }
    eprintln!("kept {} in {}", saved.display(), dst.display());
}

fn load(dir: &Path) -> Model<CpuBackend> {
    Model::load(CpuBackend, dir).unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn ckpt(dir: &Path) -> Checkpoint {
    Checkpoint::load(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
}

fn save(m: &Model<CpuBackend>, dir: &Path, dtype: DType, max_shard_bytes: usize, tokenizer_from: &Path) {
    m.save(dir, dtype, max_shard_bytes, Some(&tokenizer_from.join("tokenizer.json"))).unwrap_or_else(|e| panic!("saving {}: {e}", dir.display()));
}

/// File names in a directory (dotfiles included: a leftover `.x.tmp` must show up).
fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// Every tensor of every weight file in `dir` as stored: name → (file, dtype, shape, raw bytes).
fn raw_tensors(dir: &Path) -> BTreeMap<String, (String, Dtype, Vec<usize>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for f in listing(dir) {
        if !(f.starts_with("model") && f.ends_with(".safetensors")) {
            continue;
        }
        let bytes = std::fs::read(dir.join(&f)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        for (name, v) in st.tensors() {
            let prev = out.insert(name.clone(), (f.clone(), v.dtype(), v.shape().to_vec(), v.data().to_vec()));
            assert!(prev.is_none(), "tensor {name} stored twice in {}", dir.display());
        }
    }
    out
}

/// Same names, shapes and bit patterns (values after upcasting to f32).
#[track_caller]
fn assert_same_checkpoint(a: &Checkpoint, b: &Checkpoint) {
    let ka: BTreeSet<&String> = a.tensors.keys().collect();
    let kb: BTreeSet<&String> = b.tensors.keys().collect();
    assert_eq!(ka, kb, "tensor names differ between {} and {}", a.dir.display(), b.dir.display());
    for (name, ta) in &a.tensors {
        let tb = &b.tensors[name];
        assert_eq!(ta.shape, tb.shape, "{name}: shape");
        assert_eq!(ta.data.len(), tb.data.len(), "{name}: length");
        if let Some(i) = (0..ta.data.len()).find(|&i| ta.data[i].to_bits() != tb.data[i].to_bits()) {
            panic!("{name}[{i}]: {} ({}) vs {} ({})", ta.data[i], a.dir.display(), tb.data[i], b.dir.display());
        }
    }
}

#[track_caller]
fn assert_same_hf_tensors(a: &Model<CpuBackend>, b: &Model<CpuBackend>) {
    let (ta, tb) = (a.hf_tensors(), b.hf_tensors());
    assert_eq!(ta.len(), tb.len());
    for ((na, sa, da), (nb, sb, db)) in ta.iter().zip(&tb) {
        assert_eq!((na, sa), (nb, sb));
        assert!(da.iter().zip(db).all(|(x, y)| x.to_bits() == y.to_bits()), "{na}: values differ");
    }
}

/// What every saved directory must hold: config.json, tokenizer.json (a copy of the source's),
/// weight files all carrying `{"format": "pt"}`, no temporary files; when sharded, the HF names
/// and an index that maps every stored tensor to its file and gives the right total size.
/// Returns the weight files.
#[track_caller]
fn check_saved_dir(dir: &Path, src: &Path, dtype: DType) -> Vec<String> {
    let files = listing(dir);
    assert!(files.contains("config.json"), "{files:?}");
    assert!(files.contains("tokenizer.json"), "{files:?}");
    assert_eq!(std::fs::read(dir.join("tokenizer.json")).unwrap(), std::fs::read(src.join("tokenizer.json")).unwrap(), "tokenizer.json is a copy");
    assert!(!files.iter().any(|f| f.starts_with('.') || f.ends_with(".tmp")), "temporary files left: {files:?}");
    let weights: Vec<String> = files.iter().filter(|f| f.ends_with(".safetensors")).cloned().collect();
    assert!(!weights.is_empty(), "{files:?}");
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    };
    for f in &weights {
        let bytes = std::fs::read(dir.join(f)).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{f}: {e}"));
        let want: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        assert_eq!(meta.metadata().as_ref(), Some(&want), "{f}: metadata");
        for (name, v) in SafeTensors::deserialize(&bytes).unwrap().tensors() {
            assert_eq!(v.dtype(), st_dtype, "{f}: {name}: dtype");
        }
    }
    let raw = raw_tensors(dir);
    if weights.len() == 1 {
        assert_eq!(weights, vec!["model.safetensors".to_string()]);
        assert!(!files.contains(INDEX), "{files:?}");
    } else {
        let n = weights.len();
        let expected: Vec<String> = (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect();
        assert_eq!(weights, expected, "shard names");
        assert!(files.contains(INDEX), "{files:?}");
        let index = read_json(&dir.join(INDEX));
        let map = index["weight_map"].as_object().expect("weight_map");
        let mapped: BTreeMap<String, String> = map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
        let stored: BTreeMap<String, String> = raw.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        assert_eq!(mapped, stored, "weight_map must list every tensor with the shard that holds it");
        let total: usize = raw.values().map(|v| v.3.len()).sum();
        assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total as u64), "metadata.total_size");
        for f in &weights {
            assert!(raw.values().any(|v| &v.0 == f), "{f} holds no tensor");
        }
    }
    weights
}

/// `input_ids` and `logits` of a fixture's reference.safetensors.
fn reference(name: &str) -> (Vec<u32>, usize, usize, Vec<f32>) {
    let bytes = std::fs::read(fixture(name).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let tokens: Vec<u32> = ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let logits: Vec<f32> = st.tensor("logits").unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    (tokens, b, t, logits)
}

fn logits(m: &Model<CpuBackend>, tokens: &[u32], b: usize, t: usize) -> Vec<f32> {
    let mut acts = m.new_acts(b, t);
    m.forward(&mut acts, tokens, b, t).unwrap();
    acts.logits[..b * t * m.cfg.vocab_size].to_vec()
}

/// The saved model computes exactly the original's logits, and both match transformers.
#[track_caller]
fn assert_same_logits(fixture_name: &str, orig: &Model<CpuBackend>, saved: &Model<CpuBackend>) {
    let (tokens, b, t, want) = reference(fixture_name);
    let (la, lb) = (logits(orig, &tokens, b, t), logits(saved, &tokens, b, t));
    assert_eq!(la.len(), want.len());
    if let Some(i) = (0..la.len()).find(|&i| la[i].to_bits() != lb[i].to_bits()) {
        panic!("{fixture_name}: logit {i}: original {} vs saved {}", la[i], lb[i]);
    }
    let err = la.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err <= 1e-4, "{fixture_name}: max |logits - transformers| = {err}");
}

// ---- LLaMA (f32, sharded in the fixture) ----------------------------------------------------

#[test]
fn llama_f32_unsharded_roundtrip() {
    let s = Scratch::new("llama-f32");
    let src = fixture("llama_gqa");
    let orig = load(&src);
    let out = s.root.join("saved");
    save(&orig, &out, DType::F32, DEFAULT_MAX_SHARD_BYTES, &src);
    assert_eq!(check_saved_dir(&out, &src, DType::F32), vec!["model.safetensors".to_string()]);
    assert_eq!(listing(&out), set(&["config.json", "model.safetensors", "tokenizer.json"]));
    // stored bytes equal the fixture's, tensor by tensor
    let (a, b) = (raw_tensors(&src), raw_tensors(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, (_, dt, shape, bytes)) in &a {
        let (_, dt2, shape2, bytes2) = &b[name];
        assert_eq!((dt, shape), (dt2, shape2), "{name}");
        assert!(bytes == bytes2, "{name}: bytes differ");
    }
    assert_same_checkpoint(&ckpt(&src), &ckpt(&out));
    assert_eq!(ckpt(&out).dtype, Some(DType::F32));
    let back = load(&out);
    assert_same_hf_tensors(&orig, &back);
    assert_same_logits("llama_gqa", &orig, &back);
    // config: same keys and values (already float32)
    assert_eq!(read_json(&out.join("config.json")), read_json(&src.join("config.json")));
}

#[test]
fn llama_f32_sharded_roundtrip() {
    let s = Scratch::new("llama-shards");
    let src = fixture("llama_gqa");
    let orig = load(&src);
    let out = s.root.join("saved");
    save(&orig, &out, DType::F32, 120_000, &src);
    let shards = check_saved_dir(&out, &src, DType::F32);
    assert!(shards.len() >= 3, "{shards:?}");
    // 119104 parameters × 4 bytes, as the fixture's own index says
    let index = read_json(&out.join(INDEX));
    assert_eq!(index["metadata"]["total_size"], read_json(&src.join(INDEX))["metadata"]["total_size"]);
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(orig.n_params() as u64 * 4));
    // every shard respects the limit unless it holds one tensor larger than it
    for (f, n) in raw_tensors(&out).values().fold(BTreeMap::<String, (usize, usize)>::new(), |mut m, v| {
        let e = m.entry(v.0.clone()).or_default();
        e.0 += v.3.len();
        e.1 += 1;
        m
    }) {
        assert!(n.0 <= 120_000 || n.1 == 1, "{f}: {} bytes in {} tensors", n.0, n.1);
    }
    assert_same_checkpoint(&ckpt(&src), &ckpt(&out));
    let back = load(&out);
    assert_same_hf_tensors(&orig, &back);
    assert_same_logits("llama_gqa", &orig, &back);
    keep(&out, "llama_gqa_sharded");
}

// ---- BLOOM (bf16, tied, fused qkv) ----------------------------------------------------------

#[test]
fn bloom_bf16_roundtrip_exact() {
    let s = Scratch::new("bloom-bf16");
    let src = fixture("bloom_6h");
    let orig = load(&src);
    assert_eq!(orig.cfg.dtype, DType::BF16);
    let out = s.root.join("saved");
    save(&orig, &out, DType::BF16, DEFAULT_MAX_SHARD_BYTES, &src);
    assert_eq!(check_saved_dir(&out, &src, DType::BF16), vec!["model.safetensors".to_string()]);
    // the stored bf16 bytes are the fixture's, tensor by tensor (names keep `transformer.`,
    // the tied lm_head is not stored)
    let (a, b) = (raw_tensors(&src), raw_tensors(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(!b.contains_key("lm_head.weight"));
    assert!(b.keys().all(|k| k.starts_with("transformer.")), "{:?}", b.keys());
    for (name, (_, dt, shape, bytes)) in &a {
        let (_, dt2, shape2, bytes2) = &b[name];
        assert_eq!(*dt, Dtype::BF16, "{name}");
        assert_eq!((dt, shape), (dt2, shape2), "{name}");
        assert!(bytes == bytes2, "{name}: bf16 bytes differ");
    }
    assert_same_checkpoint(&ckpt(&src), &ckpt(&out));
    assert_eq!(ckpt(&out).dtype, Some(DType::BF16));
    // config: the same keys, the same values, dtype still bfloat16
    let (ca, cb) = (read_json(&src.join("config.json")), read_json(&out.join("config.json")));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&ca), keys(&cb));
    assert_eq!(cb["dtype"], "bfloat16");
    assert_eq!(ca, cb);
    let back = load(&out);
    assert_eq!(back.cfg.dtype, DType::BF16);
    assert_same_hf_tensors(&orig, &back);
    assert_same_logits("bloom_6h", &orig, &back);
    keep(&out, "bloom_6h_bf16");
}

#[test]
fn bloom_saved_as_f32_updates_dtype_key_and_keeps_values() {
    let s = Scratch::new("bloom-f32");
    let src = fixture("bloom_6h");
    let orig = load(&src);
    let out = s.root.join("saved");
    save(&orig, &out, DType::F32, DEFAULT_MAX_SHARD_BYTES, &src);
    check_saved_dir(&out, &src, DType::F32);
    let (ca, cb) = (read_json(&src.join("config.json")), read_json(&out.join("config.json")));
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&ca), keys(&cb), "no key added or lost (5.x `dtype`, no `torch_dtype`)");
    assert_eq!(cb["dtype"], "float32");
    for k in keys(&ca) {
        if k != "dtype" {
            assert_eq!(ca[&k], cb[&k], "config key {k}");
        }
    }
    // bf16 upcast to f32 is exact, so the f32 file holds the same values
    assert_same_checkpoint(&ckpt(&src), &ckpt(&out));
    let back = load(&out);
    assert_eq!(back.cfg.dtype, DType::F32);
    assert_same_logits("bloom_6h", &orig, &back);
}

#[test]
fn bloom_fused_qkv_split_and_fused_back_exactly() {
    let src = fixture("bloom_6h");
    let m = load(&src);
    let raw = raw_tensors(&src);
    let ck = ckpt(&src);
    let (heads, d, c) = (m.cfg.n_heads, m.cfg.head_dim, m.cfg.hidden_size);
    assert_eq!((heads, d, c), (6, 8, 48));
    let saved: HashMap<String, Vec<f32>> = m.hf_tensors().into_iter().map(|(n, _, v)| (n, v)).collect();
    for (l, blk) in m.blocks.iter().enumerate() {
        for (suffix, cols, parts) in [
            ("weight", c, [blk.q.w, blk.k.w, blk.v.w]),
            ("bias", 1, [blk.q.b.unwrap(), blk.k.b.unwrap(), blk.v.b.unwrap()]),
        ] {
            let name = format!("transformer.h.{l}.self_attention.query_key_value.{suffix}");
            let fused = &ck.tensors[&name].data;
            assert_eq!(raw[&name].1, Dtype::BF16);
            // the model holds q, k, v split per head from the [h][q|k|v][d] row layout
            let [q, k, v] = [m.host_value(parts[0]), m.host_value(parts[1]), m.host_value(parts[2])];
            for h in 0..heads {
                for (s, part) in [&q, &k, &v].into_iter().enumerate() {
                    let want = &fused[(h * 3 + s) * d * cols..][..d * cols];
                    let got = &part[h * d * cols..][..d * cols];
                    assert!(want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: head {h} part {s}");
                }
            }
            // split_qkv / fuse_qkv are exact inverses, and hf_tensors() fuses back the original
            let [sq, sk, sv] = split_qkv(fused, heads, d, cols);
            assert_eq!((&sq, &sk, &sv), (&q, &k, &v));
            let refused = fuse_qkv([&sq, &sk, &sv], heads, d, cols);
            assert!(refused.iter().zip(fused.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: fuse(split(x)) != x");
            assert!(saved[&name].iter().zip(fused.iter()).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: hf_tensors");
            assert_eq!(saved[&name].len(), fused.len());
        }
    }
    // and through a file: the saved fused tensors carry the fixture's exact bf16 bytes
    let s = Scratch::new("bloom-qkv");
    let out = s.root.join("saved");
    save(&m, &out, DType::BF16, DEFAULT_MAX_SHARD_BYTES, &src);
    let raw_out = raw_tensors(&out);
    for (name, (_, dt, shape, bytes)) in raw.iter().filter(|(n, _)| n.contains("query_key_value")) {
        let (_, dt2, shape2, bytes2) = &raw_out[name];
        assert_eq!((dt, shape), (dt2, shape2), "{name}");
        assert!(bytes == bytes2, "{name}: fused bytes differ after the round trip");
    }
}

// ---- re-saving into the same directory ------------------------------------------------------

#[test]
fn resave_same_dir_leaves_no_stale_files() {
    let s = Scratch::new("resave");
    let src = fixture("llama_gqa");
    let m = load(&src);
    let out = s.root.join("saved");
    let limit = 120_000;
    let orig = ckpt(&src);
    // bf16-rounded originals, what a bf16 save must hold
    let rounded = |name: &str| -> Vec<u32> { orig.tensors[name].data.iter().map(|&x| half_bf16_round(x).to_bits()).collect() };

    // 1. f32, sharded
    save(&m, &out, DType::F32, limit, &src);
    let f32_shards = check_saved_dir(&out, &src, DType::F32);
    assert!(f32_shards.len() >= 4, "{f32_shards:?}");
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "float32");

    // 2. bf16 into the same directory, same limit: fewer shards, the f32 ones gone
    save(&m, &out, DType::BF16, limit, &src);
    let bf16_shards = check_saved_dir(&out, &src, DType::BF16);
    assert!(bf16_shards.len() >= 2 && bf16_shards.len() < f32_shards.len(), "{bf16_shards:?} vs {f32_shards:?}");
    let mut want = set(&["config.json", "tokenizer.json", INDEX]);
    want.extend(bf16_shards.iter().cloned());
    assert_eq!(listing(&out), want, "stale f32 shards left");
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
    let ck = ckpt(&out);
    assert_eq!(ck.dtype, Some(DType::BF16));
    for name in orig.tensors.keys() {
        let got: Vec<u32> = ck.tensors[name].data.iter().map(|x| x.to_bits()).collect();
        assert!(got == rounded(name), "{name}: not the bf16 rounding of the original");
    }
    load(&out);

    // 3. bf16 unsharded: the index and every shard gone
    save(&m, &out, DType::BF16, DEFAULT_MAX_SHARD_BYTES, &src);
    check_saved_dir(&out, &src, DType::BF16);
    assert_eq!(listing(&out), set(&["config.json", "model.safetensors", "tokenizer.json"]), "stale shards or index left");

    // 4. f32 sharded again: model.safetensors gone, exact f32 values back
    save(&m, &out, DType::F32, limit, &src);
    let again = check_saved_dir(&out, &src, DType::F32);
    assert_eq!(again, f32_shards);
    let mut want = set(&["config.json", "tokenizer.json", INDEX]);
    want.extend(f32_shards.iter().cloned());
    assert_eq!(listing(&out), want, "stale model.safetensors left");
    assert_same_checkpoint(&orig, &ckpt(&out));
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "float32");
}

/// f32 → nearest bf16 (round to nearest even) → f32, without depending on the `half` crate.
fn half_bf16_round(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return f32::from_bits((b & 0xffff_0000) | 0x0040_0000);
    }
    let lsb = (b >> 16) & 1;
    let r = b.wrapping_add(0x7fff + lsb);
    f32::from_bits(r & 0xffff_0000)
}

// ---- Qwen2, Qwen3, Mistral, Gemma 2 --------------------------------------------------------------------

/// A fixture saved in its own dtype: the same HF tensors byte for byte, the same config.json,
/// and a reload that computes the original's logits (transformers loading it: check_saved.py,
/// by hand with `OKAPI_KEEP_SAVED`).
#[track_caller]
fn new_arch_roundtrip(name: &str, dtype: DType) {
    let s = Scratch::new(name);
    let src = fixture(name);
    let orig = load(&src);
    let out = s.root.join("saved");
    save(&orig, &out, dtype, DEFAULT_MAX_SHARD_BYTES, &src);
    check_saved_dir(&out, &src, dtype);
    keep(&out, name);
    let (a, b) = (raw_tensors(&src), raw_tensors(&out));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{name}: tensor names");
    for (tensor, (_, dt, shape, bytes)) in &a {
        let (_, dt2, shape2, bytes2) = &b[tensor];
        assert_eq!((dt, shape), (dt2, shape2), "{name}: {tensor}");
        assert!(bytes == bytes2, "{name}: {tensor}: bytes differ");
    }
    assert_eq!(read_json(&out.join("config.json")), read_json(&src.join("config.json")), "{name}: config.json");
    assert_same_logits(name, &orig, &load(&out));
}

#[test]
fn qwen2_qwen3_mistral_gemma2_roundtrip_byte_exact() {
    for (name, dtype) in [("qwen2_tied", DType::F32), ("qwen2_untied", DType::BF16), ("qwen3_gqa", DType::F32), ("mistral_swa", DType::F32), ("gemma2_swa", DType::F32)] {
        new_arch_roundtrip(name, dtype);
    }
}

/// A checkpoint's optimizer file, written one moment at a time, is the file safetensors makes
/// of the whole state at once, byte for byte (so older checkpoints and other readers see no
/// change), and loads back into the same moments and step — frozen tensors have none.
#[test]
fn the_optimizer_file_streams_the_whole_state_files_bytes() {
    use okapi::rlhf::checkpoint::{load_optimizer_file, write_optimizer, MomentSource};
    use okapi::rlhf::{AdamWConfig, Optimizer};
    let model = load(&fixture("bloom_6h"));
    let grads = model.new_grads(|i| i % 3 != 1);
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut opt = Optimizer::new(&model, &grads, cfg);
    opt.step = 17;
    let mut rng = okapi::model::Rng::new(4);
    let mut moments: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (i, p) in model.info.iter().enumerate().filter(|(i, _)| i % 3 != 1) {
        for (which, prefix) in ["m", "v"].into_iter().enumerate() {
            let values: Vec<f32> = (0..p.numel()).map(|_| (rng.normal() * if which == 0 { 0.01 } else { 1e-4 }) as f32).collect();
            opt.set_moment(&model, i, which, &values);
            moments.insert(format!("{prefix}.{}", p.name), values);
        }
    }
    let dir = Scratch::new("optimizer-file");
    let path = dir.root.join("optimizer.safetensors");
    write_optimizer(&path, &model, &opt, &MomentSource::Local).unwrap();
    let bytes: BTreeMap<&String, Vec<u8>> = moments.iter().map(|(k, v)| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(&String, safetensors::tensor::TensorView)> = bytes.iter().map(|(k, b)| (*k, safetensors::tensor::TensorView::new(Dtype::F32, vec![b.len() / 4], b).unwrap())).collect();
    let whole = safetensors::tensor::serialize(views, Some(HashMap::from([("step".to_string(), "17".to_string())]))).unwrap();
    assert!(std::fs::read(&path).unwrap() == whole, "the streamed file differs from safetensors' own");
    let mut back = Optimizer::new(&model, &grads, cfg);
    load_optimizer_file(&path, &model, &mut back).unwrap();
    assert_eq!(back.step, 17);
    for (i, p) in model.info.iter().enumerate() {
        assert_eq!(back.has_state(i), i % 3 != 1);
        for (which, prefix) in ["m", "v"].into_iter().enumerate() {
            assert_eq!(back.moment_host(&model, i, which).as_ref(), moments.get(&format!("{prefix}.{}", p.name)), "{prefix}.{}", p.name);
        }
    }
}
