//! The transformer every architecture shares (its features picked by the config): parameters in one table (values here, gradients in
//! `Grads`), the per-layer structure, and the mapping to Hugging Face tensor names both ways.

use crate::arch::{MlpKind, NormKind, Positions};
use crate::config::{DType, Head, ModelConfig};
use crate::error::{ModelError, Result};
use crate::weights::{self, Checkpoint};
use okapi_kernels::attention::alibi_slopes;
use okapi_kernels::rope::rope_inv_freq;
use okapi_runtime::Backend;
use std::collections::HashSet;
use std::path::Path;

/// Name and shape of one parameter (internal layout; BLOOM's fused qkv is held as q, k, v).
#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

/// What a parameter is, for initialisation and weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// linear weights and embeddings
    Matrix,
    NormWeight,
    Bias,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay applies to tensors with ≥ 2 dims only (matrices and embeddings).
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// A linear layer `y = x·Wᵀ + b`, W: (out, in). Indices into the parameter table.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    pub w: usize,
    pub b: Option<usize>,
    pub d_in: usize,
    pub d_out: usize,
    /// A LoRA adapter on this layer ([`crate::lora`]).
    pub lora: Option<crate::lora::Lora>,
}

impl Linear {
    /// Its parameters: weight, bias, and a LoRA adapter's A and B.
    pub fn params(&self) -> impl Iterator<Item = usize> {
        [Some(self.w), self.b, self.lora.map(|a| a.a), self.lora.map(|a| a.b)].into_iter().flatten()
    }
}

/// RMSNorm (w) or LayerNorm (w, b).
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub w: usize,
    pub b: Option<usize>,
}

impl Norm {
    /// Its parameters: the weight and LayerNorm's bias.
    pub fn params(&self) -> impl Iterator<Item = usize> {
        std::iter::once(self.w).chain(self.b)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub ln1: Norm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub ln2: Norm,
    /// Per-head RMSNorms of q and k (weights of head_dim), before RoPE (Qwen3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
    /// The sliding attention window (0: full causal attention).
    pub window: usize,
    /// Sandwich norms (Gemma 2): of the attention's and the MLP's outputs, before the residual add.
    pub post_attn_norm: Option<Norm>,
    pub post_ffn_norm: Option<Norm>,
    /// SwiGLU's / GeGLU's gate_proj; a GELU MLP has none.
    pub gate: Option<Linear>,
    /// LLaMA's up_proj, BLOOM's dense_h_to_4h.
    pub up: Linear,
    /// LLaMA's down_proj, BLOOM's dense_4h_to_h.
    pub down: Linear,
}

impl Block {
    /// The linear layer of `role` (the order of [`Block::linears`]); SwiGLU's gate for role 4.
    pub fn linear_mut(&mut self, role: usize) -> &mut Linear {
        match role {
            0 => &mut self.q,
            1 => &mut self.k,
            2 => &mut self.v,
            3 => &mut self.o,
            4 => self.gate.as_mut().expect("role 4 is SwiGLU's gate"),
            5 => &mut self.up,
            _ => &mut self.down,
        }
    }

    /// The block's linear layers by role: q, k, v, o, gate (SwiGLU only), up, down.
    pub fn linears(&self) -> [Option<Linear>; 7] {
        [Some(self.q), Some(self.k), Some(self.v), Some(self.o), self.gate, Some(self.up), Some(self.down)]
    }

    /// Every parameter of the block: the linears' weights and biases, both norms'.
    pub fn params(&self) -> impl Iterator<Item = usize> {
        // with LoRA, the adapters' A and B (A once per layer it adapts; BLOOM's q, k, v share it)
        let lin = self.linears().into_iter().flatten().flat_map(|l| l.params());
        let qk = [self.q_norm, self.k_norm, self.post_attn_norm, self.post_ffn_norm].into_iter().flatten().flat_map(|n| n.params());
        lin.chain(self.ln1.params()).chain(self.ln2.params()).chain(qk)
    }
}

/// How a Hugging Face tensor maps onto the parameter table.
#[derive(Clone, Debug)]
pub enum Source {
    Param(usize),
    /// BLOOM `query_key_value`: rows laid out per head as [q, k, v], each `head_dim` rows.
    FusedQkv { q: usize, k: usize, v: usize, heads: usize, head_dim: usize },
}

#[derive(Clone, Debug)]
pub struct HfEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub source: Source,
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub be: B,
    pub info: Vec<ParamInfo>,
    pub values: Vec<B::Buf>,
    pub embed: usize,
    pub emb_ln: Option<Norm>,
    pub blocks: Vec<Block>,
    pub ln_f: Norm,
    /// The LM head's weight (V, C): the embedding itself when tied; `None` for a reward model.
    pub lm_head: Option<usize>,
    /// A reward model's `score.weight` (1, C).
    pub score: Option<usize>,
    /// PPO's value head on the shared trunk: `Linear(C, 1)`, or the last layer of trlx's MLP head
    /// (after [`Model::value_mlp`] and a ReLU); trained, saved beside the HF weights.
    pub value_head: Option<Linear>,
    /// The first layer `Linear(C, 2C)` of trlx's MLP value head, when the head is one.
    pub value_mlp: Option<Linear>,
    /// LoRA adapters on the block linears ([`Model::add_lora`], [`Model::load_adapter`]).
    pub adapters: Option<crate::lora::Adapters>,
    /// Runs the base alone, the adapters switched off ([`Model::with_adapters_off`]).
    pub lora_disabled: bool,
    /// Training mode: LoRA's dropout applies (the trainer sets it around each optimizer step).
    pub training: bool,
    /// The optimizer step the dropout masks are drawn for (set by the trainer with `training`).
    pub dropout_step: u64,
    pub hf: Vec<HfEntry>,
    pub(crate) rope_inv_freq: Option<B::Buf>,
    pub(crate) alibi: Option<B::Buf>,
    /// Activation checkpointing (`--grad-checkpointing`): activation arenas made from here on
    /// keep only the block inputs and one block's activations; the backward recomputes each
    /// block's forward before its backward (bit-identical gradients, one more forward of cost).
    pub grad_checkpointing: bool,
    /// The chunked LM head (`--lm-head-chunk R`): arenas made from here on hold the logits of R
    /// rows at a time, and the loss runs over row blocks ([`Model::head_blocks`]); `None`: all
    /// B·T rows at once.
    pub head_chunk: Option<usize>,
    /// The lowest block whose weights this copy holds (0: all; see [`Model::release_below`]).
    pub(crate) first_block: usize,
    /// Parameters stored packed in bf16 ([`Model::freeze_in_bf16`]).
    pub(crate) packed: Vec<bool>,
    /// Optimizer offload (`--offload-optimizer`): optimizers made for this model keep fp32
    /// master weights and the AdamW moments in host memory and step on the CPU.
    pub offload_optimizer: bool,
}

/// Builds the parameter table and the HF name map for a config (no values yet).
pub struct Layout {
    pub info: Vec<ParamInfo>,
    pub embed: usize,
    pub emb_ln: Option<Norm>,
    pub blocks: Vec<Block>,
    pub ln_f: Norm,
    pub lm_head: Option<usize>,
    pub score: Option<usize>,
    pub hf: Vec<HfEntry>,
}

impl Layout {
    pub fn new(cfg: &ModelConfig) -> Layout {
        let mut info: Vec<ParamInfo> = Vec::new();
        let mut hf: Vec<HfEntry> = Vec::new();
        let add = |info: &mut Vec<ParamInfo>, hf: &mut Vec<HfEntry>, name: String, shape: Vec<usize>, direct: bool| -> usize {
            let kind = if shape.len() >= 2 {
                ParamKind::Matrix
            } else if name.ends_with(".bias") {
                ParamKind::Bias
            } else {
                ParamKind::NormWeight
            };
            info.push(ParamInfo { name: name.clone(), shape: shape.clone(), kind });
            let i = info.len() - 1;
            if direct {
                hf.push(HfEntry { name, shape, source: Source::Param(i) });
            }
            i
        };
        let (c, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let (hq, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (names, ft) = (cfg.arch.names(), &cfg.features);
        let p = names.prefix;
        let norm = |info: &mut Vec<ParamInfo>, hf: &mut Vec<HfEntry>, name: &str, width: usize| -> Norm {
            let w = add(info, hf, format!("{name}.weight"), vec![width], true);
            let b = (ft.norm == NormKind::Layer).then(|| add(info, hf, format!("{name}.bias"), vec![width], true));
            Norm { w, b }
        };
        let linear = |info: &mut Vec<ParamInfo>, hf: &mut Vec<HfEntry>, name: &str, d_in: usize, d_out: usize, bias: bool, direct: bool| -> Linear {
            let w = add(info, hf, format!("{name}.weight"), vec![d_out, d_in], direct);
            let b = bias.then(|| add(info, hf, format!("{name}.bias"), vec![d_out], direct));
            Linear { w, b, d_in, d_out, lora: None }
        };
        let embed = add(&mut info, &mut hf, format!("{p}{}.weight", names.embed), vec![v, c], true);
        let emb_ln = ft.embed_norm.then(|| norm(&mut info, &mut hf, &format!("{p}{}", names.embed_norm), c));
        let mut blocks = Vec::new();
        for l in 0..cfg.n_layers {
            let b = names.block(l);
            let m = |role: usize| format!("{b}.{}", names.linears[role]);
            let ln1 = norm(&mut info, &mut hf, &format!("{b}.{}", names.ln1), c);
            let [q, k, vv] = if names.fused_qkv {
                // one HF tensor, held as three parameters (rows per head [q, k, v])
                let qkv = m(0);
                let [q, k, vv] = ["q", "k", "v"].map(|part| linear(&mut info, &mut hf, &format!("{qkv}[{part}]"), c, hq * d, ft.qkv_bias, false));
                hf.push(HfEntry { name: format!("{qkv}.weight"), shape: vec![3 * hq * d, c], source: Source::FusedQkv { q: q.w, k: k.w, v: vv.w, heads: hq, head_dim: d } });
                if let (Some(qb), Some(kb), Some(vb)) = (q.b, k.b, vv.b) {
                    hf.push(HfEntry { name: format!("{qkv}.bias"), shape: vec![3 * hq * d], source: Source::FusedQkv { q: qb, k: kb, v: vb, heads: hq, head_dim: d } });
                }
                [q, k, vv]
            } else {
                [(0, hq), (1, hkv), (2, hkv)].map(|(role, heads)| linear(&mut info, &mut hf, &m(role), c, heads * d, ft.qkv_bias, true))
            };
            let o = linear(&mut info, &mut hf, &m(3), hq * d, c, ft.o_bias, true);
            let (q_norm, k_norm) = if ft.qk_norm {
                (Some(norm(&mut info, &mut hf, &format!("{b}.{}", names.q_norm), d)), Some(norm(&mut info, &mut hf, &format!("{b}.{}", names.k_norm), d)))
            } else {
                (None, None)
            };
            let post_attn_norm = ft.sandwich_norms.then(|| norm(&mut info, &mut hf, &format!("{b}.{}", names.post_attn_norm), c));
            let ln2 = norm(&mut info, &mut hf, &format!("{b}.{}", names.ln2), c);
            let gate = (ft.mlp != MlpKind::Gelu).then(|| linear(&mut info, &mut hf, &m(4), c, f, ft.mlp_bias, true));
            let up = linear(&mut info, &mut hf, &m(5), c, f, ft.mlp_bias, true);
            let down = linear(&mut info, &mut hf, &m(6), f, c, ft.mlp_bias, true);
            let post_ffn_norm = ft.sandwich_norms.then(|| norm(&mut info, &mut hf, &format!("{b}.{}", names.post_ffn_norm), c));
            let window = ft.layer_windows[l];
            blocks.push(Block { ln1, q, k, v: vv, o, ln2, q_norm, k_norm, window, post_attn_norm, post_ffn_norm, gate, up, down });
        }
        let ln_f = norm(&mut info, &mut hf, &format!("{p}{}", names.final_norm), c);
        let (lm_head, score) = match cfg.head {
            Head::CausalLm if cfg.tie_word_embeddings => (Some(embed), None),
            Head::CausalLm => (Some(add(&mut info, &mut hf, "lm_head.weight".into(), vec![v, c], true)), None),
            Head::Score => (None, Some(add(&mut info, &mut hf, "score.weight".into(), vec![1, c], true))),
        };
        Layout { info, embed, emb_ln, blocks, ln_f, lm_head, score, hf }
    }
}

/// Splits BLOOM's fused rows (per head \[q,k,v\], `head_dim` rows each of `cols` values).
pub fn split_qkv(fused: &[f32], heads: usize, head_dim: usize, cols: usize) -> [Vec<f32>; 3] {
    let mut out = [vec![0f32; heads * head_dim * cols], vec![0f32; heads * head_dim * cols], vec![0f32; heads * head_dim * cols]];
    for h in 0..heads {
        for (s, part) in out.iter_mut().enumerate() {
            let src = &fused[(h * 3 + s) * head_dim * cols..][..head_dim * cols];
            part[h * head_dim * cols..][..head_dim * cols].copy_from_slice(src);
        }
    }
    out
}

/// Inverse of `split_qkv`.
pub fn fuse_qkv(parts: [&[f32]; 3], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut fused = vec![0f32; 3 * heads * head_dim * cols];
    for h in 0..heads {
        for (s, part) in parts.iter().enumerate() {
            fused[(h * 3 + s) * head_dim * cols..][..head_dim * cols].copy_from_slice(&part[h * head_dim * cols..][..head_dim * cols]);
        }
    }
    fused
}

/// Gathers HF tensors from per-parameter host data (values or gradients).
pub fn to_hf(hf: &[HfEntry], host: &dyn Fn(usize) -> Vec<f32>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    hf.iter()
        .map(|e| {
            let data = match e.source {
                Source::Param(i) => host(i),
                Source::FusedQkv { q, k, v, heads, head_dim } => {
                    let cols = if e.shape.len() == 2 { e.shape[1] } else { 1 };
                    let (q, k, v) = (host(q), host(k), host(v));
                    fuse_qkv([&q, &k, &v], heads, head_dim, cols)
                }
            };
            (e.name.clone(), e.shape.clone(), data)
        })
        .collect()
}

/// `tokenizer.json` beside a saved model or adapter in `dir`, copied from `tokenizer_json`
/// (nothing when none is given or it is already that file).
pub(crate) fn copy_tokenizer(dir: &Path, tokenizer_json: Option<&Path>) -> Result<()> {
    let Some(tok) = tokenizer_json else { return Ok(()) };
    let dst = dir.join("tokenizer.json");
    if tok != dst {
        let bytes = std::fs::read(tok).map_err(crate::error::io_err(tok))?;
        weights::write_atomic(&dst, &bytes)?;
    }
    Ok(())
}

/// Tensors a checkpoint may hold beside the model's: RoPE's cached inverse frequencies (older
/// transformers saved them), and an `lm_head.weight` the model does not use (`head_unused`).
fn ignorable_tensor(name: &str, head_unused: bool) -> bool {
    name.ends_with("rotary_emb.inv_freq") || (head_unused && name == "lm_head.weight")
}

/// The memory check of loading `dir` (config `cfg`) on `be`.
fn check_loading<B: Backend>(be: &B, cfg: &ModelConfig, dir: &Path) -> Result<()> {
    let largest = weights::weight_files(dir)?.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).max().unwrap_or(0);
    crate::memory::loading_need(cfg, largest).check(be)
}

/// Refuses a tensor with NaN or infinite values, naming it and the first bad value.
fn check_finite(name: &str, t: &crate::weights::HostTensor) -> Result<()> {
    let Some(first) = t.data.iter().position(|x| !x.is_finite()) else { return Ok(()) };
    let count = t.data.iter().filter(|x| !x.is_finite()).count();
    Err(ModelError::Tensor {
        path: t.file.clone(),
        name: name.to_string(),
        msg: format!("{count} of {} values are not finite (the first, at index {first}, is {}): the checkpoint is corrupt or its training diverged", t.data.len(), t.data[first]),
    })
}

impl<B: Backend> Model<B> {
    /// Loads `config.json` and the safetensors weights of a Hugging Face model directory.
    /// Refuses (before reading any weights) a model that does not fit in memory.
    pub fn load(be: B, dir: &Path) -> Result<Model<B>> {
        let cfg = ModelConfig::load(dir)?;
        check_loading(&be, &cfg, dir)?;
        let ckpt = Checkpoint::load(dir)?;
        Self::from_checkpoint(be, cfg, &ckpt)
    }

    pub fn from_checkpoint(be: B, cfg: ModelConfig, ckpt: &Checkpoint) -> Result<Model<B>> {
        Self::from_checkpoint_with(be, cfg, ckpt, None)
    }

    /// Loads a checkpoint as a reward model (`*ForSequenceClassification`, one label): a
    /// checkpoint that is one already keeps its `score.weight`; a causal LM's trunk gets a fresh
    /// head, N(0, initializer_range) from `seed` as transformers initialises it.
    pub fn load_reward(be: B, dir: &Path, seed: u64) -> Result<Model<B>> {
        let mut cfg = ModelConfig::load(dir)?;
        check_loading(&be, &cfg, dir)?;
        let ckpt = Checkpoint::load(dir)?;
        let fresh = (cfg.head == Head::CausalLm).then(|| {
            let std = cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
            let mut rng = crate::rng::Rng::new(seed ^ 0x5C0E);
            (0..cfg.hidden_size).map(|_| (rng.normal() * std) as f32).collect::<Vec<f32>>()
        });
        cfg.head = Head::Score;
        Self::from_checkpoint_with(be, cfg, &ckpt, fresh)
    }

    fn from_checkpoint_with(be: B, cfg: ModelConfig, ckpt: &Checkpoint, fresh_score: Option<Vec<f32>>) -> Result<Model<B>> {
        let layout = Layout::new(&cfg);
        let mut host: Vec<Option<Vec<f32>>> = vec![None; layout.info.len()];
        let prefix = cfg.arch.names().prefix;
        let mut used: HashSet<&str> = HashSet::new();
        for e in &layout.hf {
            // Base-model checkpoints (LlamaModel, bigscience/bloom-*) have no prefix.
            let found = ckpt.tensors.get_key_value(&e.name).or_else(|| e.name.strip_prefix(prefix).and_then(|n| ckpt.tensors.get_key_value(n)));
            let Some((key, t)) = found else {
                if let (Source::Param(i), Some(fresh)) = (&e.source, fresh_score.as_ref()) {
                    if Some(*i) == layout.score {
                        host[*i] = Some(fresh.clone());
                        continue;
                    }
                }
                return Err(ModelError::MissingTensor { dir: ckpt.dir.clone(), name: e.name.clone(), why: format!("shape {:?}", e.shape) });
            };
            used.insert(key.as_str());
            if t.shape != e.shape {
                return Err(ModelError::Tensor {
                    path: t.file.clone(),
                    name: e.name.clone(),
                    msg: format!("shape {:?} does not match config.json, which implies {:?}", t.shape, e.shape),
                });
            }
            check_finite(key, t)?;
            match e.source {
                Source::Param(i) => host[i] = Some(t.data.clone()),
                Source::FusedQkv { q, k, v, heads, head_dim } => {
                    let cols = if e.shape.len() == 2 { e.shape[1] } else { 1 };
                    let [pq, pk, pv] = split_qkv(&t.data, heads, head_dim, cols);
                    host[q] = Some(pq);
                    host[k] = Some(pk);
                    host[v] = Some(pv);
                }
            }
        }
        // an LM head a tied model or a new reward model does not use, as transformers ignores it
        let unused_head_ok = cfg.tie_word_embeddings || fresh_score.is_some();
        let mut extra: Vec<&String> = ckpt.tensors.keys().filter(|k| !used.contains(k.as_str()) && !ignorable_tensor(k, unused_head_ok)).collect();
        extra.sort();
        if let Some(name) = extra.first() {
            let more = if extra.len() > 1 { format!(" (and {} more)", extra.len() - 1) } else { String::new() };
            return Err(ModelError::Tensor {
                path: ckpt.tensors[*name].file.clone(),
                name: name.to_string(),
                msg: format!("not part of the model config.json describes{more} ({} {} layers, hidden {}): a checkpoint of another shape?", cfg.arch.name(), cfg.n_layers, cfg.hidden_size),
            });
        }
        let values: Vec<Vec<f32>> = host.into_iter().map(|h| h.expect("every parameter has an HF tensor")).collect();
        Ok(Self::from_host(be, cfg, layout, values))
    }

    /// A model from parameter values in the table's order (used by `load` and `init`).
    pub fn from_host(be: B, cfg: ModelConfig, layout: Layout, values: Vec<Vec<f32>>) -> Model<B> {
        let values: Vec<B::Buf> = values.iter().map(|v| be.upload(v)).collect();
        let rope_inv_freq = (cfg.features.positions == Positions::Rope).then(|| be.upload(&rope_inv_freq(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling)));
        let alibi = (cfg.features.positions == Positions::Alibi).then(|| be.upload(&alibi_slopes(cfg.n_heads)));
        let Layout { info, embed, emb_ln, blocks, ln_f, lm_head, score, hf } = layout;
        let packed = vec![false; info.len()];
        Model { cfg, be, info, values, embed, emb_ln, blocks, ln_f, lm_head, score, value_head: None, value_mlp: None, adapters: None, lora_disabled: false, training: false, dropout_step: 0, hf, rope_inv_freq, alibi, grad_checkpointing: false, head_chunk: None, first_block: 0, packed, offload_optimizer: false }
    }

    /// Sets `pad_token_id` (config and saved config.json). transformers' sequence classification
    /// scores the last token that is not padding, so a reward model needs a pad id distinct from
    /// EOS for transformers to read the EOS as okapi does.
    pub fn set_pad_token(&mut self, pad: u32) {
        self.cfg.pad_token_id = Some(pad);
        if let Some(o) = self.cfg.raw.as_object_mut() {
            o.insert("pad_token_id".into(), pad.into());
        }
    }

    /// Parameter `i` on the host.
    /// Parameter `i` on the host, in f32 (a bf16-packed one unpacked).
    pub fn host_value(&self, i: usize) -> Vec<f32> {
        let n = self.info[i].numel();
        if self.packed[i] {
            let mut out = vec![0f32; n];
            okapi_kernels::reduce::unpack_bf16(&mut out, &self.be.read(&self.values[i], n.div_ceil(2)));
            return out;
        }
        self.be.read(&self.values[i], n)
    }

    /// All weights as HF tensors `(name, shape, data)`, ready to save.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        to_hf(&self.hf, &|i| self.host_value(i))
    }

    pub fn n_params(&self) -> usize {
        self.info.iter().map(|p| p.numel()).sum()
    }

    /// Saves config.json, the weights (sharded above `max_shard_bytes`) and, when given,
    /// tokenizer.json, in the layout `from_pretrained` loads.
    pub fn save(&self, dir: &Path, dtype: DType, max_shard_bytes: usize, tokenizer_json: Option<&Path>) -> Result<()> {
        if self.first_block > 0 {
            return Err(ModelError::Other(format!("{}: this copy holds only blocks {} and up (a hydra reference) and cannot be saved", self.cfg.path.display(), self.first_block)));
        }
        weights::save(dir, &self.hf_tensors(), dtype, max_shard_bytes)?;
        let cfg = serde_json::to_string_pretty(&self.cfg.to_json(dtype)).unwrap();
        weights::write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        copy_tokenizer(dir, tokenizer_json)
    }
}

impl<B: Backend> Model<B> {
    /// Frees the weights no forward from block `start` reads — blocks below it, the embedding
    /// (unless it is the tied LM head) and its norm — for a frozen copy that runs only from
    /// `start` ([`Model::forward_from`]): trlx's hydra reference, which shares its bottom blocks
    /// with the policy. The copy can no longer run a whole forward or be saved.
    pub fn release_below(&mut self, start: usize) {
        let start = start.min(self.cfg.n_layers);
        let mut free: Vec<usize> = self.blocks[..start].iter().flat_map(Block::params).collect();
        if start > 0 {
            if self.lm_head != Some(self.embed) {
                free.push(self.embed);
            }
            free.extend(self.emb_ln.iter().flat_map(Norm::params));
        }
        for i in free {
            self.values[i] = self.be.zeros(0);
        }
        self.first_block = self.first_block.max(start);
    }

    /// The lowest block this copy holds weights for.
    pub fn first_block(&self) -> usize {
        self.first_block
    }
}
