//! `config.json` of the supported `*ForCausalLM` / `*ForSequenceClassification` models,
//! transformers 4.x and 5.x key styles, resolved to the architecture's [`Features`].

use crate::error::{io_err, ModelError, Result};
use okapi_kernels::rope::RopeScaling;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub use crate::arch::Arch;
use crate::arch::{Features, MlpKind, NormKind, Positions};

/// Storage dtype of a checkpoint (`torch_dtype` / `dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
        }
    }
    pub fn parse(s: &str) -> Option<DType> {
        match s {
            "float32" | "f32" | "fp32" => Some(DType::F32),
            "bfloat16" | "bf16" => Some(DType::BF16),
            "float16" | "f16" | "fp16" => Some(DType::F16),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            _ => 2,
        }
    }
}

/// The head on top of the transformer trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `*ForCausalLM`: the LM head (tied to the embedding or `lm_head.weight`)
    CausalLm,
    /// `*ForSequenceClassification` with one label: `score.weight` (1, hidden), no bias — a
    /// reward model, read at the last non-pad token
    Score,
}

/// What a model directory holds, resolved from its config.json.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// `max_position_embeddings` (LLaMA); BLOOM has none (ALiBi).
    pub max_positions: Option<usize>,
    /// The rank of the LoRA adapters the model carries (0: none); set by `Model::add_lora`,
    /// not a config.json field. Sizes the adapters' scratch in the activation arenas.
    pub lora_rank: usize,
    /// With LoRA dropout, the widest adapted input (the dropped input's scratch); else 0.
    pub lora_x_width: usize,
    pub tie_word_embeddings: bool,
    /// What the model computes (positions, MLP, norms, biases, q/k norm, windows).
    pub features: Features,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub dtype: DType,
    pub head: Head,
    /// The file as read, written back (updated) on save so unknown keys survive.
    pub raw: Value,
    pub path: PathBuf,
}

struct Fields<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config { path: self.path.to_path_buf(), field: field.into(), msg: msg.into() }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.v.get(key).filter(|v| !v.is_null())
    }
    fn usize_any(&self, keys: &[&str]) -> Result<usize> {
        for k in keys {
            if let Some(v) = self.get(k) {
                return v.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| self.err(k, format!("expected a non-negative integer, got {v}")));
            }
        }
        Err(self.err(keys[0], "missing (required for this architecture)"))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().and_then(|x| usize::try_from(x).ok()).map(Some).ok_or_else(|| self.err(key, format!("expected an integer, got {v}"))),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }
    /// A token id that may be a list (LLaMA 3 lists several EOS ids): the first one. A
    /// negative id (early LLaMA conversions write `"pad_token_id": -1`) means none.
    fn token_id(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) if !a.is_empty() => &a[0],
            Some(v) => v,
        };
        if v.as_i64().is_some_and(|x| x < 0) {
            return Ok(None);
        }
        let id = v.as_u64().ok_or_else(|| self.err(key, format!("expected an integer id, got {v}")))?;
        u32::try_from(id).map(Some).map_err(|_| self.err(key, format!("{id} is not a token id (at most {})", u32::MAX)))
    }
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Self::from_json(&text, path)
    }

    /// A config from the text of a `config.json` (`path` names it in errors).
    pub fn from_json(text: &str, path: PathBuf) -> Result<ModelConfig> {
        let raw: Value = serde_json::from_str(text).map_err(|e| ModelError::Json { path: path.clone(), msg: e.to_string() })?;
        Self::from_value(raw, path)
    }

    pub fn from_value(raw: Value, path: PathBuf) -> Result<ModelConfig> {
        let f = Fields { v: &raw, path: &path };
        if !raw.is_object() {
            return Err(f.err("(root)", "expected a JSON object"));
        }
        let model_type = f.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match (model_type, Arch::from_model_type(model_type)) {
            (_, Some(a)) => a,
            ("", None) => return Err(f.err("model_type", format!("missing (expected one of {})", Arch::supported()))),
            (other, None) => return Err(f.err("model_type", format!("unsupported model type {other:?} (okapi supports {})", Arch::supported()))),
        };
        let head = head_of(&f, arch)?;
        let dtype_key = if f.get("dtype").is_some() { "dtype" } else { "torch_dtype" };
        let dtype = match f.get(dtype_key) {
            None => DType::F32,
            Some(v) => v.as_str().and_then(DType::parse).ok_or_else(|| f.err(dtype_key, format!("unsupported dtype {v} (expected float32, bfloat16 or float16)")))?,
        };
        let shape = match arch {
            Arch::Bloom => bloom_shape(&f)?,
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Mistral => rope_family_shape(&f, arch)?,
            Arch::Gemma2 => gemma2_shape(&f)?,
        };
        let cfg = ModelConfig {
            arch,
            lora_rank: 0,
            lora_x_width: 0,
            vocab_size: f.usize_any(&["vocab_size"])?,
            hidden_size: shape.hidden,
            n_layers: shape.layers,
            n_heads: shape.heads,
            n_kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
            intermediate_size: shape.intermediate,
            norm_eps: shape.eps,
            rope_theta: shape.rope.0,
            rope_scaling: shape.rope.1,
            max_positions: shape.max_positions,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", matches!(arch, Arch::Bloom | Arch::Gemma2))?,
            features: shape.features,
            bos_token_id: f.token_id("bos_token_id")?,
            eos_token_id: f.token_id("eos_token_id")?,
            pad_token_id: f.token_id("pad_token_id")?,
            dtype,
            head,
            raw: Value::Null,
            path: path.clone(),
        };
        cfg.validate(&f)?;
        Ok(ModelConfig { raw, ..cfg })
    }

    /// Refuses values no model can have, naming the config field: sizes (positive, heads a
    /// multiple of the KV heads, at most [`MAX_PARAMS`] parameters), epsilons and RoPE values
    /// (finite, positive), special token ids (inside the vocabulary).
    fn validate(&self, f: &Fields) -> Result<()> {
        let (eps_key, heads_key) = match self.arch {
            Arch::Bloom => ("layer_norm_epsilon", if f.get("n_head").is_some() { "n_head" } else { "num_attention_heads" }),
            _ => ("rms_norm_eps", "num_attention_heads"),
        };
        let layers_key = if self.arch == Arch::Bloom && f.get("n_layer").is_some() { "n_layer" } else { "num_hidden_layers" };
        // the sizes first: their products are then safe to compute
        check_sizes(self, heads_key, f)?;
        let checks: [(&str, bool, String); 5] = [
            (layers_key, self.n_layers <= MAX_LAYERS, format!("{}: okapi handles at most {MAX_LAYERS} layers", self.n_layers)),
            ("intermediate_size", self.intermediate_size > 0, "must be positive".into()),
            ("max_position_embeddings", self.max_positions != Some(0), "must be positive".into()),
            (eps_key, self.norm_eps.is_finite() && self.norm_eps > 0.0, format!("{}: expected a finite positive number", self.norm_eps)),
            ("rope_theta", self.features.positions != Positions::Rope || (self.rope_theta.is_finite() && self.rope_theta > 0.0), format!("{}: expected a finite positive number", self.rope_theta)),
        ];
        for (field, ok, msg) in checks {
            if !ok {
                return Err(f.err(field, msg));
            }
        }
        validate_rope_scaling(f, &self.rope_scaling)?;
        for (key, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id), ("pad_token_id", self.pad_token_id)] {
            if let Some(id) = id.filter(|&i| i as usize >= self.vocab_size) {
                return Err(f.err(key, format!("{id} is outside the vocabulary (vocab_size {})", self.vocab_size)));
            }
        }
        if let Some(r) = f.get("initializer_range") {
            if !r.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0) {
                return Err(f.err("initializer_range", format!("expected a finite number ≥ 0, got {r}")));
            }
        }
        let params = self.param_count();
        if params > MAX_PARAMS {
            return Err(f.err("(sizes)", format!("the config describes {params} parameters; okapi handles at most {MAX_PARAMS}")));
        }
        Ok(())
    }

    /// Parameters of the model the config describes (heads included; u128, so that absurd sizes
    /// cannot overflow).
    pub fn param_count(&self) -> u128 {
        let p = self.param_parts();
        p.embed + self.n_layers as u128 * p.per_layer + p.final_norm + p.head
    }

    /// Parameters that train with the top `unfrozen_layers` blocks unfrozen (the final norm and
    /// the heads always; all of them with `None`), as `Model::trainable_mask` picks them.
    pub fn trainable_count(&self, unfrozen_layers: Option<usize>) -> Result<u128> {
        let Some(n) = unfrozen_layers else { return Ok(self.param_count()) };
        if n > self.n_layers {
            return Err(ModelError::Other(format!("--unfrozen-layers {n}: {} has only {} layers", self.path.display(), self.n_layers)));
        }
        // a tied head is the embedding, which stays frozen with the trunk below the top blocks
        let p = self.param_parts();
        Ok(n as u128 * p.per_layer + p.final_norm + p.head)
    }

    fn param_parts(&self) -> ParamParts {
        let [c, v, f] = [self.hidden_size, self.vocab_size, self.intermediate_size].map(|x| x as u128);
        let (qw, kw) = (self.n_heads as u128 * self.head_dim as u128, self.n_kv_heads as u128 * self.head_dim as u128);
        let ft = &self.features;
        let d = self.head_dim as u128;
        // a norm's parameters: RMSNorm's weight, LayerNorm's weight and bias
        let norm = match ft.norm {
            NormKind::Rms => c,
            NormKind::Layer => 2 * c,
        };
        let attn = 2 * c * qw + 2 * c * kw + if ft.qkv_bias { qw + 2 * kw } else { 0 } + if ft.o_bias { c } else { 0 } + if ft.qk_norm { 2 * d } else { 0 };
        let mlp = match ft.mlp {
            MlpKind::SwiGlu | MlpKind::GeGlu => 3 * c * f + if ft.mlp_bias { 2 * f + c } else { 0 },
            MlpKind::Gelu => 2 * c * f + if ft.mlp_bias { f + c } else { 0 },
        };
        let norms = if ft.sandwich_norms { 4 * norm } else { 2 * norm };
        let (embed_norm, per_layer, final_norm) = (if ft.embed_norm { norm } else { 0 }, norms + attn + mlp, norm);
        let head = match self.head {
            Head::CausalLm if self.tie_word_embeddings => 0,
            Head::CausalLm => v * c,
            Head::Score => c,
        };
        ParamParts { embed: v * c + embed_norm, per_layer, final_norm, head }
    }

    /// Longest sequence the model accepts: `max_position_embeddings`, or 2048 for BLOOM
    /// (lm-evaluation-harness's default when a config has none).
    pub fn max_length(&self) -> usize {
        self.max_positions.unwrap_or(2048)
    }

    /// config.json as it should be saved with weights of `dtype`: the file as read, with the
    /// dtype key of its own style updated.
    pub fn to_json(&self, dtype: DType) -> Value {
        let mut v = self.raw.clone();
        if let Some(o) = v.as_object_mut() {
            let family = self.arch.class_prefix();
            match self.head {
                Head::CausalLm => {
                    o.insert("architectures".into(), serde_json::json!([format!("{family}ForCausalLM")]));
                }
                Head::Score => {
                    o.insert("architectures".into(), serde_json::json!([format!("{family}ForSequenceClassification")]));
                    o.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
                    o.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
                    o.remove("num_labels");
                }
            }
            // every dtype key the file has (from_value reads `dtype` first, transformers 4.x only
            // `torch_dtype`), else 4.x's
            let keys: Vec<&str> = ["dtype", "torch_dtype"].into_iter().filter(|k| o.contains_key(*k)).collect();
            for key in if keys.is_empty() { vec!["torch_dtype"] } else { keys } {
                o.insert(key.into(), Value::String(dtype.hf_name().into()));
            }
        }
        v
    }
}

/// Parameter counts by part of the model.
struct ParamParts {
    /// the embedding (and BLOOM's embedding norm)
    embed: u128,
    per_layer: u128,
    final_norm: u128,
    /// the LM head when untied, or the score head
    head: u128,
}

/// The most parameters a config may describe (2⁴⁰, a 4 TiB f32 model): beyond it the sizes are
/// a typo, and their products would overflow the kernels' index arithmetic.
pub const MAX_PARAMS: u128 = 1 << 40;

/// The most layers a config may have (the deepest published LLMs have a few hundred).
pub const MAX_LAYERS: usize = 1 << 16;

/// Factors of a RoPE scaling that the frequency formulas can use (positive, finite; llama3's
/// high-frequency factor above its low-frequency one, which it divides by the difference of).
fn validate_rope_scaling(f: &Fields, scaling: &RopeScaling) -> Result<()> {
    let field = if f.get("rope_parameters").is_some() { "rope_parameters" } else { "rope_scaling" };
    let positive = |k: &str, x: f64| if x.is_finite() && x > 0.0 { Ok(()) } else { Err(f.err(&format!("{field}.{k}"), format!("{x}: expected a finite positive number"))) };
    match *scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } => positive("factor", factor as f64),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            positive("factor", factor as f64)?;
            positive("low_freq_factor", low_freq_factor as f64)?;
            positive("high_freq_factor", high_freq_factor as f64)?;
            positive("original_max_position_embeddings", original_max_position_embeddings as f64)?;
            if high_freq_factor <= low_freq_factor {
                return Err(f.err(&format!("{field}.high_freq_factor"), format!("{high_freq_factor} must be greater than low_freq_factor {low_freq_factor}")));
            }
            Ok(())
        }
    }
}

/// The sizes of a config make a model: positive, heads that divide, and the products the layout
/// computes within usize (absurd sizes are refused here, not overflowed later).
fn check_sizes(cfg: &ModelConfig, heads_key: &str, f: &Fields) -> Result<()> {
    let q_width = cfg.n_heads.checked_mul(cfg.head_dim);
    let checks: [(&str, bool, &str); 8] = [
        ("hidden_size", cfg.hidden_size > 0, "must be positive"),
        (heads_key, cfg.n_heads > 0 && cfg.n_kv_heads > 0 && cfg.n_heads.is_multiple_of(cfg.n_kv_heads), "heads must be positive and a multiple of num_key_value_heads"),
        ("head_dim", cfg.head_dim > 0 && (cfg.features.positions != Positions::Rope || cfg.head_dim.is_multiple_of(2)), "must be positive (and even for RoPE)"),
        ("vocab_size", cfg.vocab_size > 0, "must be positive"),
        ("hidden_size", !cfg.arch.names().fused_qkv || q_width == Some(cfg.hidden_size), "BLOOM needs hidden_size divisible by n_head"),
        ("vocab_size", cfg.vocab_size.checked_mul(cfg.hidden_size).is_some(), "too large: vocab_size × hidden_size overflows"),
        ("intermediate_size", cfg.intermediate_size.checked_mul(cfg.hidden_size).is_some(), "too large: intermediate_size × hidden_size overflows"),
        ("head_dim", q_width.and_then(|w| w.checked_mul(cfg.hidden_size)).is_some(), "too large: num_attention_heads × head_dim × hidden_size overflows"),
    ];
    match checks.into_iter().find(|(_, ok, _)| !ok) {
        Some((field, _, msg)) => Err(f.err(field, msg)),
        None => Ok(()),
    }
}

/// RoPE base and scaling from 5.x `rope_parameters` or 4.x `rope_theta` + `rope_scaling`.
fn rope_from(f: &Fields) -> Result<(f64, RopeScaling)> {
    let (params, field) = match f.get("rope_parameters") {
        Some(p) => (Some(p), "rope_parameters"),
        None => (f.get("rope_scaling"), "rope_scaling"),
    };
    let theta = match params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64) {
        Some(t) => t,
        None => f.f64_or("rope_theta", 10000.0)?,
    };
    let Some(p) = params else { return Ok((theta, RopeScaling::None)) };
    if !p.is_object() {
        return Err(f.err(field, format!("expected an object, got {p}")));
    }
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<f64> { p.get(k).and_then(Value::as_f64).ok_or_else(|| f.err(&format!("{field}.{k}"), "missing or not a number")) };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? as f32 },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")? as f32,
            low_freq_factor: num("low_freq_factor")? as f32,
            high_freq_factor: num("high_freq_factor")? as f32,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        },
        other => return Err(f.err(&format!("{field}.rope_type"), format!("unsupported rope type {other:?} (supported: default, linear, llama3)"))),
    };
    Ok((theta, scaling))
}

/// The sizes and features one architecture's config keys resolve to.
struct Shape {
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    eps: f32,
    rope: (f64, RopeScaling),
    max_positions: Option<usize>,
    features: Features,
}

/// The head `architectures` names: the LM head, or a one-label sequence-classification score.
fn head_of(f: &Fields, arch: Arch) -> Result<Head> {
    let archs: Vec<&str> = f.get("architectures").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let family = arch.class_prefix();
    let mut head = Head::CausalLm;
    for a in archs {
        match a.strip_prefix(family) {
            Some("ForCausalLM" | "Model") => {}
            Some("ForSequenceClassification") => {
                let labels = f.get("id2label").and_then(Value::as_object).map(|m| m.len()).or(f.opt_usize("num_labels")?).unwrap_or(2);
                if labels != 1 {
                    return Err(f.err("id2label", format!("{a} with {labels} labels: okapi's reward models have exactly one (num_labels 1)")));
                }
                head = Head::Score;
            }
            _ => return Err(f.err("architectures", format!("unsupported architecture {a:?} for model_type {:?} (expected {family}ForCausalLM or {family}ForSequenceClassification with one label)", arch.name()))),
        }
    }
    Ok(head)
}

/// BLOOM: ALiBi, GELU MLP, LayerNorms (one after the embedding), biases everywhere, fused qkv.
fn bloom_shape(f: &Fields) -> Result<Shape> {
    if f.bool_or("apply_residual_connection_post_layernorm", false)? {
        return Err(f.err("apply_residual_connection_post_layernorm", "true is not supported"));
    }
    let hidden = f.usize_any(&["hidden_size", "n_embed"])?;
    let heads = f.usize_any(&["n_head", "num_attention_heads"])?;
    let layers = f.usize_any(&["n_layer", "num_hidden_layers"])?;
    let head_dim = hidden.checked_div(heads).unwrap_or(0);
    let features = Features {
        embed_norm: true,
        qkv_bias: true,
        o_bias: true,
        mlp_bias: true,
        ..Features::plain(Positions::Alibi, MlpKind::Gelu, NormKind::Layer, head_dim, vec![0; layers.min(MAX_LAYERS + 1)])
    };
    Ok(Shape {
        hidden,
        layers,
        heads,
        kv_heads: heads,
        head_dim,
        intermediate: hidden.checked_mul(4).ok_or_else(|| f.err("hidden_size", "too large: 4 × hidden_size overflows"))?,
        eps: f.f64_or("layer_norm_epsilon", 1e-5)? as f32,
        rope: (0.0, RopeScaling::None),
        max_positions: None,
        features,
    })
}

/// LLaMA and its descendants: RoPE, SwiGLU, RMSNorm; per architecture the biases (LLaMA's
/// `attention_bias` / `mlp_bias`, Qwen2's q/k/v biases, Qwen3's `attention_bias`), Qwen3's q/k
/// norms, and sliding windows (Mistral's `sliding_window`, Qwen's `use_sliding_window`).
fn rope_family_shape(f: &Fields, arch: Arch) -> Result<Shape> {
    rope_family_shape_with(f, arch, &["hidden_act"], "silu")
}

/// [`rope_family_shape`] with the MLP activation the architecture needs under `act_keys` (the
/// first present is read; `act` when none is).
fn rope_family_shape_with(f: &Fields, arch: Arch, act_keys: &[&str], act: &str) -> Result<Shape> {
    let hidden = f.usize_any(&["hidden_size"])?;
    let heads = f.usize_any(&["num_attention_heads"])?;
    let layers = f.usize_any(&["num_hidden_layers"])?;
    // transformers' Qwen3Config and Gemma2Config default head_dim (128, 256); the others derive it
    let derived = match arch {
        Arch::Qwen3 => 128,
        Arch::Gemma2 => 256,
        _ => hidden.checked_div(heads).unwrap_or(0),
    };
    let act_key = act_keys.iter().copied().find(|k| f.get(k).is_some()).unwrap_or(act_keys[0]);
    let got = f.get(act_key).and_then(Value::as_str).unwrap_or(act);
    if got != act {
        return Err(f.err(act_key, format!("unsupported activation {got:?} ({} uses {act:?})", arch.name())));
    }
    let attention_bias = f.bool_or("attention_bias", false)?;
    let (qkv_bias, o_bias, mlp_bias) = match arch {
        Arch::Llama => (attention_bias, attention_bias, f.bool_or("mlp_bias", false)?),
        Arch::Qwen2 => (true, false, false),
        Arch::Qwen3 | Arch::Gemma2 => (attention_bias, attention_bias, false),
        _ => (false, false, false),
    };
    let head_dim = f.opt_usize("head_dim")?.unwrap_or(derived);
    let features = Features {
        qkv_bias,
        o_bias,
        mlp_bias,
        qk_norm: arch == Arch::Qwen3,
        ..Features::plain(Positions::Rope, MlpKind::SwiGlu, NormKind::Rms, head_dim, layer_windows(f, arch, layers)?)
    };
    Ok(Shape {
        hidden,
        layers,
        heads,
        kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(heads),
        head_dim,
        intermediate: f.usize_any(&["intermediate_size"])?,
        eps: f.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope: rope_from(f)?,
        max_positions: Some(f.opt_usize("max_position_embeddings")?.unwrap_or(2048)),
        features,
    })
}

/// Each layer's sliding window (0: full attention), as transformers resolves it: `layer_types`
/// when the config lists them; else Mistral's `sliding_window` on every layer (4096 when the key
/// is absent, none when null), Qwen's on the layers from `max_window_layers` up when
/// `use_sliding_window`, Gemma 2's on every other layer from the first (4096 when absent);
/// LLaMA none.
fn layer_windows(f: &Fields, arch: Arch, layers: usize) -> Result<Vec<usize>> {
    let layers_ok = layers.min(MAX_LAYERS + 1);
    let window = match arch {
        Arch::Mistral if f.v.get("sliding_window").is_none() => Some(4096),
        Arch::Mistral => f.opt_usize("sliding_window")?,
        Arch::Qwen2 | Arch::Qwen3 if f.bool_or("use_sliding_window", false)? => f.opt_usize("sliding_window")?,
        Arch::Gemma2 if f.v.get("sliding_window").is_none() => Some(4096),
        Arch::Gemma2 => f.opt_usize("sliding_window")?,
        _ => None,
    };
    if window == Some(0) {
        return Err(f.err("sliding_window", "must be positive (or null for full attention)"));
    }
    if let Some(types) = f.get("layer_types") {
        let list = types.as_array().filter(|a| a.len() == layers).ok_or_else(|| f.err("layer_types", format!("expected a list of {layers} layer types")))?;
        return list
            .iter()
            .enumerate()
            .map(|(l, t)| match (t.as_str(), window) {
                (Some("full_attention"), _) => Ok(0),
                (Some("sliding_attention"), Some(w)) => Ok(w),
                (Some("sliding_attention"), None) => Err(f.err(&format!("layer_types[{l}]"), "\"sliding_attention\" without a sliding_window")),
                _ => Err(f.err(&format!("layer_types[{l}]"), format!("{t}: expected \"full_attention\" or \"sliding_attention\""))),
            })
            .collect();
    }
    let sliding = |l: usize| -> Result<bool> {
        Ok(match arch {
            Arch::Qwen2 | Arch::Qwen3 => l >= f.opt_usize("max_window_layers")?.unwrap_or(28),
            // Gemma 2 alternates: local (sliding) layers first, then global
            Arch::Gemma2 => l.is_multiple_of(2),
            _ => true,
        })
    };
    if arch == Arch::Gemma2 && window.is_none() {
        // transformers refuses it too: Gemma 2's local layers need their window
        return Err(f.err("sliding_window", "null, but Gemma 2's even layers are sliding (give a window, or layer_types)"));
    }
    (0..layers_ok).map(|l| Ok(if sliding(l)? { window.unwrap_or(0) } else { 0 })).collect()
}

/// Gemma 2 (its config class's defaults when a key is missing): GeGLU, RMSNorms scaling by
/// (1 + w) before and after each sublayer, the embedding scaled by √hidden, scores scaled by
/// query_pre_attn_scalar^-½ and soft-capped, the logits soft-capped, local and global layers
/// alternating, the head tied.
fn gemma2_shape(f: &Fields) -> Result<Shape> {
    // transformers' Gemma 2 reads `hidden_activation` only (files often carry `hidden_act` too)
    let mut shape = rope_family_shape_with(f, Arch::Gemma2, &["hidden_activation"], "gelu_pytorch_tanh")?;
    if f.bool_or("use_bidirectional_attention", false)? {
        return Err(f.err("use_bidirectional_attention", "true is not supported (okapi's models are causal)"));
    }

    let cap = |key: &str, default: f64| -> Result<Option<f32>> {
        match f.v.get(key) {
            None => Ok(Some(default as f32)),
            Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x > 0.0).map(|x| Some(x as f32)).ok_or_else(|| f.err(key, format!("{v}: expected a finite positive number or null"))),
        }
    };
    let scalar = f.f64_or("query_pre_attn_scalar", 256.0)?;
    if !(scalar.is_finite() && scalar > 0.0) {
        return Err(f.err("query_pre_attn_scalar", format!("{scalar}: expected a finite positive number")));
    }
    shape.max_positions = Some(f.opt_usize("max_position_embeddings")?.unwrap_or(8192));
    let ft = &mut shape.features;
    ft.mlp = MlpKind::GeGlu;
    ft.norm_plus_one = true;
    ft.sandwich_norms = true;
    ft.embed_scale = true;
    ft.attn_scale = (1.0 / scalar.sqrt()) as f32;
    ft.attn_softcap = cap("attn_logit_softcapping", 50.0)?;
    ft.final_softcap = cap("final_logit_softcapping", 30.0)?;
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small config of `model_type` with `extra` keys merged in.
    fn cfg(model_type: &str, extra: Value) -> Result<ModelConfig> {
        let mut v = json!({"model_type": model_type, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        ModelConfig::from_value(v, PathBuf::from("config.json"))
    }

    fn err(model_type: &str, extra: Value) -> String {
        cfg(model_type, extra).unwrap_err().to_string()
    }

    #[test]
    fn each_architecture_resolves_to_its_features() {
        let q2 = cfg("qwen2", json!({"architectures": ["Qwen2ForCausalLM"]})).unwrap();
        let f = &q2.features;
        assert!(f.qkv_bias && !f.o_bias && !f.mlp_bias && !f.qk_norm && f.positions == Positions::Rope && f.mlp == MlpKind::SwiGlu && f.norm == NormKind::Rms);
        assert_eq!((q2.head_dim, q2.tie_word_embeddings, f.layer_windows.clone()), (8, false, vec![0; 4]));
        // Qwen3: head_dim defaults to 128 (its config class's default), attention_bias covers o too
        let q3 = cfg("qwen3", json!({"attention_bias": true})).unwrap();
        assert!(q3.features.qk_norm && q3.features.qkv_bias && q3.features.o_bias);
        assert_eq!(q3.head_dim, 128);
        assert_eq!(cfg("qwen3", json!({"head_dim": 12})).unwrap().head_dim, 12);
        let llama = cfg("llama", json!({"attention_bias": true, "mlp_bias": true})).unwrap();
        assert!(llama.features.qkv_bias && llama.features.o_bias && llama.features.mlp_bias && !llama.features.qk_norm);
        let bloom = ModelConfig::from_value(json!({"model_type": "bloom", "hidden_size": 32, "n_layer": 2, "n_head": 4, "vocab_size": 50}), PathBuf::from("c")).unwrap();
        assert!(bloom.features.embed_norm && bloom.features.positions == Positions::Alibi && bloom.features.mlp == MlpKind::Gelu && bloom.tie_word_embeddings);
    }

    #[test]
    fn gemma2_resolves_to_its_features_with_its_config_class_defaults() {
        let g = cfg("gemma2", json!({"architectures": ["Gemma2ForCausalLM"]})).unwrap();
        let f = &g.features;
        assert!(f.norm_plus_one && f.sandwich_norms && f.embed_scale && f.mlp == MlpKind::GeGlu && !f.qkv_bias && !f.qk_norm);
        // head_dim 256, query_pre_attn_scalar 256, caps 50 / 30, window 4096 on layers 0, 2, …, tied
        assert_eq!((g.head_dim, f.attn_scale, f.attn_softcap, f.final_softcap), (256, 1.0 / 16.0, Some(50.0), Some(30.0)));
        assert_eq!((f.layer_windows.clone(), g.tie_word_embeddings, g.max_positions), (vec![4096, 0, 4096, 0], true, Some(8192)));
        let g = cfg("gemma2", json!({"head_dim": 12, "query_pre_attn_scalar": 10, "attn_logit_softcapping": null, "final_logit_softcapping": 3.5, "sliding_window": 5})).unwrap();
        assert_eq!((g.features.attn_scale, g.features.attn_softcap, g.features.final_softcap), ((1.0 / 10f64.sqrt()) as f32, None, Some(3.5)));
        assert_eq!(g.features.layer_windows, vec![5, 0, 5, 0]);
        let e = err("gemma2", json!({"hidden_activation": "gelu"}));
        assert!(e.contains("hidden_activation") && e.contains("gemma2 uses \"gelu_pytorch_tanh\""), "{e}");
        let e = err("gemma2", json!({"sliding_window": null}));
        assert!(e.contains("sliding_window") && e.contains("even layers are sliding"), "{e}");
        let e = err("gemma2", json!({"use_bidirectional_attention": true}));
        assert!(e.contains("use_bidirectional_attention"), "{e}");
        // hidden_act is not what Gemma 2 reads
        assert!(cfg("gemma2", json!({"hidden_act": "gelu"})).is_ok());
        let e = err("gemma2", json!({"final_logit_softcapping": -1.0}));
        assert!(e.contains("final_logit_softcapping") && e.contains("finite positive number or null"), "{e}");
    }

    #[test]
    fn sliding_windows_follow_transformers_per_layer() {
        // Mistral: the key absent means its config class's default 4096; null means none
        assert_eq!(cfg("mistral", json!({})).unwrap().features.layer_windows, vec![4096; 4]);
        assert_eq!(cfg("mistral", json!({"sliding_window": null})).unwrap().features.layer_windows, vec![0; 4]);
        assert_eq!(cfg("mistral", json!({"sliding_window": 7})).unwrap().features.layer_windows, vec![7; 4]);
        // Qwen: only with use_sliding_window, from max_window_layers up
        assert_eq!(cfg("qwen2", json!({"sliding_window": 16, "max_window_layers": 2})).unwrap().features.layer_windows, vec![0; 4]);
        let q = cfg("qwen2", json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2})).unwrap();
        assert_eq!(q.features.layer_windows, vec![0, 0, 16, 16]);
        // layer_types, when listed, decide
        let types = json!(["sliding_attention", "full_attention", "sliding_attention", "full_attention"]);
        assert_eq!(cfg("mistral", json!({"sliding_window": 5, "layer_types": types})).unwrap().features.layer_windows, vec![5, 0, 5, 0]);
    }

    #[test]
    fn unsupported_configs_are_one_clear_error() {
        let e = err("gemma3", json!({}));
        assert!(e.contains("model_type") && e.contains("unsupported model type \"gemma3\" (okapi supports \"llama\", \"bloom\", \"qwen2\", \"qwen3\", \"mistral\", \"gemma2\")"), "{e}");
        let e = err("qwen2", json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}));
        assert!(e.contains("rope_scaling.rope_type") && e.contains("unsupported rope type \"yarn\""), "{e}");
        let e = err("mistral", json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}}));
        assert!(e.contains("rope_parameters.rope_type") && e.contains("\"dynamic\""), "{e}");
        let e = err("mistral", json!({"sliding_window": 0}));
        assert!(e.contains("sliding_window") && e.contains("must be positive"), "{e}");
        let e = err("qwen2", json!({"layer_types": ["full_attention", "chunked_attention", "full_attention", "full_attention"]}));
        assert!(e.contains("layer_types[1]") && e.contains("\"chunked_attention\""), "{e}");
        let e = err("qwen3", json!({"layer_types": ["sliding_attention", "full_attention", "full_attention", "full_attention"]}));
        assert!(e.contains("layer_types[0]") && e.contains("without a sliding_window"), "{e}");
        let e = err("qwen2", json!({"layer_types": ["full_attention"]}));
        assert!(e.contains("layer_types") && e.contains("a list of 4 layer types"), "{e}");
        let e = err("mistral", json!({"hidden_act": "gelu"}));
        assert!(e.contains("hidden_act") && e.contains("mistral uses \"silu\""), "{e}");
        let e = err("qwen2", json!({"architectures": ["LlamaForCausalLM"]}));
        assert!(e.contains("architectures") && e.contains("Qwen2ForCausalLM"), "{e}");
        for e in [err("gemma3", json!({})), err("qwen2", json!({"rope_scaling": {"rope_type": "yarn"}}))] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn saved_config_names_the_architectures_class() {
        let mut c = cfg("qwen3", json!({"architectures": ["Qwen3ForCausalLM"]})).unwrap();
        assert_eq!(c.to_json(DType::F32)["architectures"], json!(["Qwen3ForCausalLM"]));
        c.head = Head::Score;
        assert_eq!(c.to_json(DType::F32)["architectures"], json!(["Qwen3ForSequenceClassification"]));
        let rm = cfg("mistral", json!({"architectures": ["MistralForSequenceClassification"], "num_labels": 1})).unwrap();
        assert_eq!(rm.head, Head::Score);
    }
}
