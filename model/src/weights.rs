//! Safetensors I/O in Hugging Face's layout: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`; F32/BF16/F16 read and upcast to f32; saved sharded above a
//! size limit, each file written under a temporary name and renamed.

use crate::config::DType;
use crate::error::{io_err, one_line, ModelError, Result};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor read from a checkpoint, upcast to f32.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// The file it came from, for error messages.
    pub file: PathBuf,
}

/// Every tensor of a checkpoint directory, by name.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub tensors: HashMap<String, HostTensor>,
    /// dtype most of the weights were stored in
    pub dtype: Option<DType>,
}

impl Checkpoint {
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let files = weight_files(dir)?;
        let mut tensors = HashMap::new();
        let mut dtype_count: HashMap<DType, usize> = HashMap::new();
        for file in &files {
            read_file(file, &mut tensors, &mut dtype_count)?;
        }
        let dtype = dtype_count.into_iter().max_by_key(|&(_, n)| n).map(|(d, _)| d);
        Ok(Checkpoint { dir: dir.to_path_buf(), tensors, dtype })
    }
}

/// The weight files of a directory, in shard order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let paths = parse_index(&text, &index, dir)?;
        if let Some(missing) = paths.iter().find(|p| !p.exists()) {
            return Err(ModelError::Io { path: missing.clone(), source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("shard listed in {INDEX_FILE} not found")) });
        }
        return Ok(paths);
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    if !dir.is_dir() {
        return Err(ModelError::Io { path: dir.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found") });
    }
    let extra = if dir.join("pytorch_model.bin").exists() { "; found pytorch_model.bin, which okapi does not read: convert it to safetensors" } else { "" };
    Err(ModelError::NoWeights { dir: dir.to_path_buf(), extra: extra.into() })
}

/// The shard files named by the text of `model.safetensors.index.json` (read from `index`), as
/// paths in `dir`, sorted and without repeats; whether they exist is the caller's check.
pub fn parse_index(text: &str, index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Json { path: index.to_path_buf(), msg: e.to_string() })?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| ModelError::Config {
        path: index.to_path_buf(),
        field: "weight_map".into(),
        msg: "missing or not an object".into(),
    })?;
    let mut files: Vec<String> = Vec::new();
    for (name, f) in map {
        let err = |msg: String| ModelError::Config { path: index.to_path_buf(), field: format!("weight_map.{}", name.escape_debug()), msg };
        let f = f.as_str().ok_or_else(|| err("expected a file name".into()))?;
        // one plain name: `../x`, `/x` or `a/b` would read a file outside the model directory
        let mut parts = Path::new(f).components();
        if !matches!((parts.next(), parts.next()), (Some(Component::Normal(_)), None)) || f.contains(['/', '\\']) {
            return Err(err(format!("shard path must be a file name inside the model directory, got {f:?}")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    files.sort();
    Ok(files.iter().map(|f| dir.join(f)).collect())
}

fn read_file(path: &Path, out: &mut HashMap<String, HostTensor>, dtypes: &mut HashMap<DType, usize>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    for (name, tensor, dt) in parse_safetensors(&bytes, path)? {
        *dtypes.entry(dt).or_default() += 1;
        out.insert(name, tensor);
    }
    Ok(())
}

/// Every tensor of one safetensors file, by name, upcast to f32.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let mut out = HashMap::new();
    read_file(path, &mut out, &mut HashMap::new())?;
    Ok(out)
}

/// The tensors of a safetensors file's bytes (read from `path`, which errors name), upcast to
/// f32, each with the dtype it was stored in.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Vec<(String, HostTensor, DType)>> {
    if offsets_overflow(bytes) {
        return Err(ModelError::Safetensors { path: path.to_path_buf(), msg: OFFSETS_OVERFLOW.into() });
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        let msg = match (&e, expected_size(bytes)) {
            (SafeTensorError::MetadataIncompleteBuffer, Some(want)) if want > bytes.len() => {
                format!("truncated: its header describes {want} bytes, the file has {}", bytes.len())
            }
            (SafeTensorError::MetadataIncompleteBuffer, Some(want)) => format!("{} unexpected trailing bytes after the {want} its header describes", bytes.len() - want),
            _ => one_line(e.to_string()),
        };
        ModelError::Safetensors { path: path.to_path_buf(), msg }
    })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let terr = |msg: String| ModelError::Tensor { path: path.to_path_buf(), name: name.escape_debug().to_string(), msg };
        let raw = view.data();
        let (data, dt) = match view.dtype() {
            Dtype::F32 => (raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>(), DType::F32),
            Dtype::BF16 => (raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(), DType::BF16),
            Dtype::F16 => (raw.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(), DType::F16),
            other => return Err(terr(format!("dtype {other:?} is not supported (expected F32, BF16 or F16)"))),
        };
        let tensor = HostTensor { shape: view.shape().to_vec(), data, file: path.to_path_buf() };
        out.push((name, tensor, dt));
    }
    Ok(out)
}

/// Why a file that `offsets_overflow` is refused.
pub const OFFSETS_OVERFLOW: &str = "its data_offsets end past any file size";

/// Whether a safetensors file's header declares data_offsets that end past any file size:
/// safetensors 0.8 adds that end to the header length unchecked (a panic in builds with
/// overflow checks), so every reader checks this before `SafeTensors::deserialize`.
pub fn offsets_overflow(bytes: &[u8]) -> bool {
    declared_extent(bytes).is_some_and(|(header_end, data_end)| usize::try_from(data_end).ok().and_then(|e| header_end.checked_add(e)).is_none())
}

/// The size a safetensors file should have by its own header (8-byte length, JSON header, the
/// end of the last tensor's data), when the header itself is readable.
fn expected_size(bytes: &[u8]) -> Option<usize> {
    let (header_end, data_end) = declared_extent(bytes)?;
    header_end.checked_add(usize::try_from(data_end).ok()?)
}

/// Where a safetensors file's header ends (8 + its length) and the largest end of its tensors'
/// data_offsets, when the header is readable.
fn declared_extent(bytes: &[u8]) -> Option<(usize, u64)> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: Value = serde_json::from_slice(bytes.get(8..n.checked_add(8)?)?).ok()?;
    let end = header.as_object()?.iter().filter(|(k, _)| *k != "__metadata__").filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
    Some((8 + n, end))
}

fn encode(data: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => data.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::BF16 => data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        DType::F16 => data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
    }
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    }
}

/// The temporary name a file is written under before its rename: `.NAME.tmp` beside it.
fn tmp_path(path: &Path) -> std::path::PathBuf {
    path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|s| s.to_str()).unwrap_or("file")))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `tensors` into one safetensors file at `path` (atomically), in `dtype`.
pub fn save_file(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: DType) -> Result<()> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    write_file(path, &tensors.iter().collect::<Vec<_>>(), dtype, &metadata)
}

fn write_file(path: &Path, tensors: &[&(String, Vec<usize>, Vec<f32>)], dtype: DType, metadata: &HashMap<String, String>) -> Result<()> {
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.iter().map(|t| (t.0.clone(), t.1.clone(), encode(&t.2, dtype))).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = encoded
        .iter()
        .map(|(name, shape, bytes)| (name.clone(), safetensors::tensor::TensorView::new(st_dtype(dtype), shape.clone(), bytes).expect("tensor bytes match shape")))
        .collect();
    // streamed into the file: no third in-memory copy of the shard
    let tmp = tmp_path(path);
    safetensors::tensor::serialize_to_file(views, Some(metadata.clone()), &tmp).map_err(|e| ModelError::Other(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Saves named tensors as HF does: one `model.safetensors` when the total is at most
/// `max_shard_bytes`, else `model-0000i-of-0000n.safetensors` shards plus the index.
/// Stale weight files of another layout in `dir` are removed after the new ones are in place.
pub fn save(dir: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: DType, max_shard_bytes: usize) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let total: usize = tensors.iter().map(|t| t.2.len() * dtype.size()).sum();
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut size = 0;
    for (i, t) in tensors.iter().enumerate() {
        let b = t.2.len() * dtype.size();
        if size > 0 && size + b > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().unwrap().push(i);
        size += b;
    }
    let n = shards.len();
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut weight_map = BTreeMap::new();
    let mut written = Vec::new();
    for (s, idx) in shards.iter().enumerate() {
        let fname = if n == 1 { SINGLE_FILE.to_string() } else { format!("model-{:05}-of-{:05}.safetensors", s + 1, n) };
        write_file(&dir.join(&fname), &idx.iter().map(|&i| &tensors[i]).collect::<Vec<_>>(), dtype, &metadata)?;
        for &i in idx {
            weight_map.insert(tensors[i].0.clone(), fname.clone());
        }
        written.push(fname);
    }
    let index_path = dir.join(INDEX_FILE);
    if n > 1 {
        let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_atomic(&index_path, serde_json::to_string_pretty(&index).unwrap().as_bytes())?;
    } else if index_path.exists() {
        std::fs::remove_file(&index_path).map_err(io_err(&index_path))?;
    }
    // remove weight files of an earlier save with another layout
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let is_weights = name == SINGLE_FILE || (name.starts_with("model-") && name.ends_with(".safetensors"));
            if is_weights && !written.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}
