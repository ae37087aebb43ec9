//! Training checkpoints for resuming a run: `OUT/checkpoint/` holds the model (HF layout, f32 master
//! weights), `optimizer.safetensors` (AdamW moments) and `trainer_state.json` (step, data
//! position, seed, fingerprints of the model and the data, and the settings that decide the
//! run's trajectory). A checkpoint is written whole to `checkpoint.tmp/` and swapped in by
//! renames that always leave one complete checkpoint (see [`save_with`]).

use crate::error::{io, ResumeMismatch};
use crate::rundir;
use crate::optim::Optimizer;
use crate::TrainError;
use okapi_model::{weights, DType, Model};
use okapi_runtime::{Backend, Collective};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// the command that wrote it (`sft`, `reward`, …)
    pub command: String,
    /// optimizer steps done
    pub step: u64,
    pub total_steps: u64,
    /// data position: epoch and micro-batches consumed in it
    pub epoch: u64,
    pub micro_in_epoch: u64,
    pub seed: u64,
    pub model_fingerprint: String,
    pub data_fingerprint: String,
    pub tokens_seen: u64,
    pub elapsed_s: f64,
    /// command-specific state (e.g. PPO's KL coefficient)
    #[serde(default)]
    pub extra: serde_json::Value,
    /// the settings that decide the trajectory, by the flag that sets them (`--lr` → 0.0001):
    /// a resume must keep every one (see [`Expect::settings`])
    #[serde(default)]
    pub settings: Settings,
}

/// Settings that decide a run's trajectory, by flag.
pub type Settings = std::collections::BTreeMap<String, serde_json::Value>;

fn bad(path: &Path, problem: String) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), problem }
}

/// Shapes of the architecture, to refuse resuming into another model.
pub fn model_fingerprint<B: Backend>(model: &Model<B>) -> String {
    config_fingerprint(&model.cfg)
}

/// [`model_fingerprint`] from the config alone (before the model is loaded).
pub fn config_fingerprint(c: &okapi_model::ModelConfig) -> String {
    format!(
        "{} hidden={} layers={} heads={}/{} head_dim={} ffn={} vocab={} tied={}",
        c.arch.name(),
        c.hidden_size,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.intermediate_size,
        c.vocab_size,
        c.tie_word_embeddings
    )
}

/// FNV-1a over token data: a cheap fingerprint of a tokenized data set.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn add(&mut self, x: u64) {
        for b in x.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The checkpoint directory to resume from: `DIR/checkpoint` of an output directory, or DIR
/// itself; `checkpoint.old` when a crash fell between the swap's renames.
pub fn resolve(dir: &Path) -> Result<PathBuf, TrainError> {
    for cand in [dir.join("checkpoint"), dir.join("checkpoint.old"), dir.to_path_buf()] {
        if cand.join("trainer_state.json").exists() {
            return Ok(cand);
        }
    }
    Err(TrainError::Resume { dir: dir.to_path_buf(), mismatch: ResumeMismatch::NoCheckpoint })
}

/// What a run expects of the checkpoint it resumes: written by the same command for the same
/// model, data and length.
pub struct Expect<'a> {
    pub command: &'static str,
    pub model_fingerprint: &'a str,
    pub data_fingerprint: &'a str,
    /// what the data fingerprint covers, and the settings that decide it (error messages)
    pub data_what: &'static str,
    pub data_settings: &'static str,
    pub total: u64,
    /// what `total` counts: "steps", "iterations"
    pub unit: &'static str,
    /// this run's trajectory settings; each must equal the checkpoint's (a checkpoint written
    /// before settings were recorded has none, and is not checked)
    pub settings: &'a Settings,
}

/// The first setting whose value differs between the checkpoint and this run.
fn changed_setting(saved: &Settings, given: &Settings) -> Option<ResumeMismatch> {
    if saved.is_empty() {
        return None;
    }
    let null = serde_json::Value::Null;
    saved.keys().chain(given.keys()).find_map(|flag| {
        let (a, b) = (saved.get(flag).unwrap_or(&null), given.get(flag).unwrap_or(&null));
        (a != b).then(|| ResumeMismatch::Setting { flag: flag.clone(), saved: a.to_string(), given: b.to_string() })
    })
}

/// Finds the checkpoint of `dir` (see [`resolve`]) and checks it against `expect`; returns its
/// directory and state. The one resume check of the trainer and of PPO.
pub fn open_for_resume(dir: &Path, expect: &Expect) -> Result<(PathBuf, TrainerState), TrainError> {
    let ckpt = resolve(dir)?;
    let saved = read_state(&ckpt)?;
    let mismatch = if saved.command != expect.command {
        Some(ResumeMismatch::Command { saved: saved.command.clone(), expected: expect.command })
    } else if saved.model_fingerprint != expect.model_fingerprint {
        Some(ResumeMismatch::Model { saved: saved.model_fingerprint.clone(), given: expect.model_fingerprint.to_string() })
    } else if saved.data_fingerprint != expect.data_fingerprint {
        Some(ResumeMismatch::Data { what: expect.data_what, saved: saved.data_fingerprint.clone(), given: expect.data_fingerprint.to_string(), settings: expect.data_settings })
    } else if saved.total_steps != expect.total {
        Some(ResumeMismatch::Total { saved: saved.total_steps, given: expect.total, unit: expect.unit })
    } else {
        changed_setting(&saved.settings, expect.settings)
    };
    match mismatch {
        Some(mismatch) => Err(TrainError::Resume { dir: ckpt, mismatch }),
        None => Ok((ckpt, saved)),
    }
}

/// The checks of a resume that need neither the model nor the data: a checkpoint is there,
/// written by `command`, with the same trajectory `settings`. Cheap, so a command runs it before
/// loading anything heavy; [`open_for_resume`] repeats it with the rest.
pub fn precheck_resume(dir: &Path, command: &'static str, settings: &Settings) -> Result<(), TrainError> {
    let ckpt = resolve(dir)?;
    let saved = read_state(&ckpt)?;
    let mismatch = if saved.command != command { Some(ResumeMismatch::Command { saved: saved.command, expected: command }) } else { changed_setting(&saved.settings, settings) };
    match mismatch {
        Some(mismatch) => Err(TrainError::Resume { dir: ckpt, mismatch }),
        None => Ok(()),
    }
}

pub fn read_state(ckpt: &Path) -> Result<TrainerState, TrainError> {
    let p = ckpt.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    parse_state(&text, &p)
}

/// The state in the text of a `trainer_state.json` (`path` names it in errors).
pub fn parse_state(text: &str, path: &Path) -> Result<TrainerState, TrainError> {
    serde_json::from_str(text).map_err(|e| bad(path, format!("invalid trainer state: {e}")))
}

/// Writes a checkpoint of `model`, `opt` and `state` under `out/checkpoint`.
pub fn save<B: Backend>(out: &Path, model: &Model<B>, opt: &Optimizer<B>, moments: &MomentSource, state: &TrainerState, tokenizer: Option<&Path>) -> Result<(), TrainError> {
    save_with(out, (model, opt, moments), state, tokenizer, &[], &[])
}

/// A model's optimizer and where its moments come from, for a checkpoint.
pub type Optimized<'a, B> = (&'a Model<B>, &'a Optimizer<B>, &'a MomentSource<'a>);

/// Whether `dir` is a whole checkpoint: its `trainer_state.json` is written last.
fn is_complete(dir: &Path) -> bool {
    dir.join("trainer_state.json").is_file()
}

/// `save` plus extra files (name, bytes) and extra optimizers' files (name, model, optimizer)
/// written inside the checkpoint before it is swapped in. The optimizer files are written
/// first: under ZeRO the other ranks take part in them ([`hand_in_moments`]), and a failure
/// before them still hands the moments through so that no rank waits for rank 0.
///
/// The swap keeps one complete checkpoint on disk at every moment, however many kills
/// interrupt consecutive saves: the new one is written whole (synced, `trainer_state.json`
/// last) to `checkpoint.tmp`; the current `checkpoint` is renamed to `checkpoint.old` only when
/// it is complete (an older `checkpoint.old` is dropped first, never when it is the only
/// complete copy); `checkpoint.tmp` is renamed to `checkpoint`; then `checkpoint.old` goes.
/// [`resolve`] reads `checkpoint`, else `checkpoint.old`. The named crash points are the test
/// hooks' (`OKAPI_TEST_CRASH_AT`).
pub fn save_with<B: Backend>(out: &Path, main: Optimized<B>, state: &TrainerState, tokenizer: Option<&Path>, extra_files: &[(String, Vec<u8>)], extra_optimizers: &[(&str, Optimized<B>)]) -> Result<(), TrainError> {
    let (tmp, cur, old) = (out.join("checkpoint.tmp"), out.join("checkpoint"), out.join("checkpoint.old"));
    let optimizers: Vec<(&str, Optimized<B>)> = std::iter::once(("optimizer.safetensors", main)).chain(extra_optimizers.iter().copied()).collect();
    crate::hooks::save_started();
    // a leftover temporary is never needed: `cur` or `old` is complete
    let fresh = rundir::trash_dir(&tmp).and_then(|_| std::fs::create_dir_all(&tmp).map_err(io(&tmp)));
    if let Err(e) = fresh {
        for (_, (model, opt, moments)) in &optimizers {
            hand_in_moments(model, opt, moments)?;
        }
        return Err(e);
    }
    let mut first_error = None;
    for (name, (model, opt, moments)) in &optimizers {
        // every file is attempted: the ranks hand in each one's moments whatever happens here
        if let Err(e) = write_optimizer(&tmp.join(name), model, opt, moments) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let (model, _, _) = main;
    match model.adapters {
        // a LoRA run changes only its adapters: the base stays where --model names it
        Some(_) => model.save_adapter(&tmp.join("model"), &model.cfg.path, tokenizer)?,
        None => model.save(&tmp.join("model"), DType::F32, okapi_model::DEFAULT_MAX_SHARD_BYTES, tokenizer)?,
    }
    crate::hooks::crash_point("partial");
    for (name, bytes) in extra_files {
        rundir::write_synced(&tmp.join(name), bytes)?;
    }
    let state_json = serde_json::to_string_pretty(state).map_err(|e| TrainError::Serialize { what: "trainer state", problem: e.to_string() })?;
    rundir::write_synced(&tmp.join("trainer_state.json"), state_json.as_bytes())?;
    rundir::sync_dir(&tmp)?;
    crate::hooks::crash_point("written");
    if is_complete(&cur) {
        rundir::trash_dir(&old)?;
        std::fs::rename(&cur, &old).map_err(io(&cur))?;
        rundir::sync_dir(out)?;
        crate::hooks::crash_point("rotated");
    } else {
        // only ever a leftover of an interrupted deletion: `old` is the complete one
        rundir::trash_dir(&cur)?;
    }
    std::fs::rename(&tmp, &cur).map_err(io(&tmp))?;
    rundir::sync_dir(out)?;
    crate::hooks::crash_point("swapped");
    rundir::trash_dir(&old)
}

/// Where a checkpoint's AdamW moments come from: this process's optimizer, or (ZeRO) each
/// tensor's moments gathered from its owner as the file is written, every rank taking part
/// (`trainable`: the tensors with moments on some rank).
#[derive(Clone, Copy)]
pub enum MomentSource<'a> {
    Local,
    Ranks { comm: &'a dyn Collective, trainable: &'a [bool] },
}

impl<'a> MomentSource<'a> {
    /// The source of an optimizer whose ZeRO trainable mask is `zero_trainable` (`None`: no
    /// ZeRO, the moments are this process's).
    pub fn of(comm: &'a dyn Collective, zero_trainable: &'a Option<Vec<bool>>) -> MomentSource<'a> {
        match zero_trainable {
            Some(trainable) => MomentSource::Ranks { comm, trainable },
            None => MomentSource::Local,
        }
    }
}

/// The moments a file holds, (name, parameter, 0: m / 1: v), in the order the file stores them
/// (safetensors sorts by name) — the order the ranks gather them in.
fn moment_list<B: Backend>(model: &Model<B>, opt: &Optimizer<B>, moments: &MomentSource) -> Vec<(String, usize, usize)> {
    let has = |i: usize| match moments {
        MomentSource::Local => opt.has_state(i),
        MomentSource::Ranks { trainable, .. } => trainable[i],
    };
    let mut list: Vec<(String, usize, usize)> = (0..model.info.len())
        .filter(|&i| has(i))
        .flat_map(|i| ["m", "v"].into_iter().enumerate().map(move |(which, prefix)| (format!("{prefix}.{}", model.info[i].name), i, which)))
        .collect();
    list.sort();
    list
}

fn moment_values<B: Backend>(model: &Model<B>, opt: &Optimizer<B>, moments: &MomentSource, i: usize, which: usize) -> Result<Vec<f32>, TrainError> {
    match moments {
        MomentSource::Local => Ok(opt.moment_host(model, i, which).expect("listed tensors have moments")),
        MomentSource::Ranks { comm, .. } => Ok(crate::optim::zero::gather_moment(opt, model, *comm, i, which)?),
    }
}

/// One moment as a safetensors view whose bytes are fetched when the writer reaches it, so a
/// checkpoint holds one tensor's moment at a time rather than the whole state (twice, as
/// bytes and as the serialised file).
struct LazyMoment<'a, B: Backend> {
    shape: [usize; 1],
    fetch: (usize, usize),
    from: &'a Fetcher<'a, B>,
}

/// What the lazy views fetch from, how many they fetched, and the first failure (its view
/// writes zeros, and the file is refused after).
struct Fetcher<'a, B: Backend> {
    model: &'a Model<B>,
    opt: &'a Optimizer<B>,
    moments: &'a MomentSource<'a>,
    fetched: std::cell::Cell<usize>,
    error: std::cell::RefCell<Option<TrainError>>,
}

impl<B: Backend> safetensors::View for LazyMoment<'_, B> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        let f = self.from;
        f.fetched.set(f.fetched.get() + 1);
        let values = moment_values(f.model, f.opt, f.moments, self.fetch.0, self.fetch.1).unwrap_or_else(|e| {
            f.error.borrow_mut().get_or_insert(e);
            vec![0.0; self.shape[0]]
        });
        values.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()
    }
    fn data_len(&self) -> usize {
        self.shape[0] * 4
    }
}

/// Writes the AdamW moments (`m.<param>`, `v.<param>`, f32) and the step count (metadata) to the
/// safetensors file `path`, one tensor at a time (synced). Under ZeRO every moment is handed
/// through even when the file fails, so the other ranks never wait.
pub fn write_optimizer<B: Backend>(path: &Path, model: &Model<B>, opt: &Optimizer<B>, moments: &MomentSource) -> Result<(), TrainError> {
    let from = Fetcher { model, opt, moments, fetched: 0.into(), error: None.into() };
    let list = moment_list(model, opt, moments);
    let views: Vec<(String, LazyMoment<B>)> = list.iter().map(|(name, i, which)| (name.clone(), LazyMoment { shape: [model.info[*i].numel()], fetch: (*i, *which), from: &from })).collect();
    let meta = std::collections::HashMap::from([("step".to_string(), opt.step.to_string())]);
    // (safetensors writes the views in its own order, by name: the list's)
    let written = safetensors::tensor::serialize_to_file(views, Some(meta), path);
    if let MomentSource::Ranks { .. } = moments {
        for (_, i, which) in &list[from.fetched.get().min(list.len())..] {
            moment_values(model, opt, moments, *i, *which)?;
        }
    }
    if let Some(e) = from.error.into_inner() {
        return Err(e);
    }
    written.map_err(|e| TrainError::Serialize { what: "optimizer state", problem: format!("{}: {e}", path.display()) })?;
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

/// What a rank other than 0 does while rank 0 writes the optimizer file of `moments`: hands in
/// its share of each tensor's moments in the file's order (nothing for a local source).
pub fn hand_in_moments<B: Backend>(model: &Model<B>, opt: &Optimizer<B>, moments: &MomentSource) -> Result<(), TrainError> {
    if let MomentSource::Ranks { .. } = moments {
        for (_, i, which) in moment_list(model, opt, moments) {
            moment_values(model, opt, moments, i, which)?;
        }
    }
    Ok(())
}

/// Every parameter of `model` under its name in `model.info`, f32: the state the HF layout does
/// not hold (a PPO critic with its value head) in one file.
pub fn params_bytes<B: Backend>(model: &Model<B>) -> Result<Vec<u8>, TrainError> {
    let data: Vec<Vec<u8>> = model.info.iter().enumerate().map(|(i, _)| model.host_value(i).iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = model.info.iter().zip(&data).map(|(p, bytes)| (p.name.clone(), TensorView::new(Dtype::F32, vec![p.numel()], bytes).expect("sizes match"))).collect();
    safetensors::tensor::serialize(views, None).map_err(|e| TrainError::Serialize { what: "parameters", problem: e.to_string() })
}

/// Writes the tensors of the safetensors file `path` into the parameters of the same names
/// (f32, same element count). `all`: every parameter of `model` must be there.
pub fn load_params<B: Backend>(path: &Path, model: &mut Model<B>, all: bool) -> Result<(), TrainError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    if weights::offsets_overflow(&bytes) {
        return Err(bad(path, weights::OFFSETS_OVERFLOW.into()));
    }
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(path, e.to_string()))?;
    for i in 0..model.info.len() {
        let name = model.info[i].name.clone();
        let Ok(t) = st.tensor(&name) else {
            if all {
                return Err(bad(path, format!("tensor `{name}` missing (checkpoint of another model?)")));
            }
            continue;
        };
        if t.dtype() != Dtype::F32 || t.data().len() != 4 * model.info[i].numel() {
            return Err(bad(path, format!("tensor `{name}` is {:?} {:?}, expected F32 with {} elements", t.dtype(), t.shape(), model.info[i].numel())));
        }
        let data: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        // (packed again when the model keeps this frozen weight in bf16)
        model.set_host_value(i, &data);
    }
    Ok(())
}

/// Restores AdamW moments and step count from a checkpoint into `opt` (same model layout).
pub fn load_optimizer<B: Backend>(ckpt: &Path, model: &Model<B>, opt: &mut Optimizer<B>) -> Result<(), TrainError> {
    load_optimizer_file(&ckpt.join("optimizer.safetensors"), model, opt)
}

/// As `load_optimizer`, from the file `p` (written by [`write_optimizer`]).
pub fn load_optimizer_file<B: Backend>(p: &Path, model: &Model<B>, opt: &mut Optimizer<B>) -> Result<(), TrainError> {
    let bytes = std::fs::read(p).map_err(io(p))?;
    if weights::offsets_overflow(&bytes) {
        return Err(bad(p, weights::OFFSETS_OVERFLOW.into()));
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(p, e.to_string()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(p, e.to_string()))?;
    opt.step = meta.metadata().as_ref().and_then(|m| m.get("step")).and_then(|s| s.parse().ok()).ok_or_else(|| bad(p, "no step in metadata".into()))?;
    for (i, info) in model.info.iter().enumerate() {
        if !opt.has_state(i) {
            continue;
        }
        for (which, prefix) in ["m", "v"].into_iter().enumerate() {
            let name = format!("{prefix}.{}", info.name);
            let t = st.tensor(&name).map_err(|_| bad(p, format!("tensor `{name}` missing (checkpoint of another model or other frozen layers?)")))?;
            if t.dtype() != Dtype::F32 || t.shape() != [info.numel()] {
                return Err(bad(p, format!("tensor `{name}` has shape {:?}, expected [{}]", t.shape(), info.numel())));
            }
            let data: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            opt.set_moment(model, i, which, &data);
        }
    }
    // offloaded: the master weights follow the model the resume just loaded
    opt.refresh_master(model);
    Ok(())
}
