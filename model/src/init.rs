//! Named model shapes (the `init` / `bench` presets) and seeded random initialisation in the HF
//! layout, as transformers' `_init_weights`.

use crate::config::{Arch, DType, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::{Layout, Model, ParamKind};
use crate::rng::Rng;
use okapi_runtime::Backend;
use serde_json::json;
use std::path::PathBuf;

/// (name, hidden, layers, heads, ffn (LLaMA; BLOOM uses 4·hidden), vocab)
pub const PRESETS: &[(&str, usize, usize, usize, usize, usize)] = &[
    ("tiny", 128, 4, 4, 344, 4096),
    ("bench-5m", 256, 4, 4, 688, 4096),
    ("bench-33m", 512, 8, 8, 1360, 8192),
    ("gpt2-124m-llama", 768, 12, 12, 2048, 32000),
    ("llama-7b", 4096, 32, 32, 11008, 32000),
    ("bloom-560m", 1024, 24, 16, 4096, 250880),
    ("bloom-7b1", 4096, 30, 32, 16384, 250880),
];

pub fn preset_names() -> String {
    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
}

/// The config.json of a preset; `vocab` overrides the preset's vocabulary (a tokenizer's size).
pub fn preset_config(arch: Arch, name: &str, vocab: Option<usize>, max_positions: usize) -> Result<ModelConfig> {
    let &(_, hidden, layers, heads, ffn, v) = PRESETS
        .iter()
        .find(|p| p.0 == name)
        .ok_or_else(|| ModelError::Other(format!("unknown preset `{name}` (expected one of: {})", preset_names())))?;
    let vocab = vocab.unwrap_or(v);
    let raw = match arch {
        Arch::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": hidden / heads,
            "hidden_act": "silu",
            "max_position_embeddings": max_positions,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "attention_bias": false,
            "mlp_bias": false,
            "tie_word_embeddings": false,
            "vocab_size": vocab,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }),
        Arch::Bloom => json!({
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "hidden_size": hidden,
            "n_layer": layers,
            "n_head": heads,
            "layer_norm_epsilon": 1e-5,
            "apply_residual_connection_post_layernorm": false,
            "tie_word_embeddings": true,
            "vocab_size": vocab,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }),
    };
    ModelConfig::from_value(raw, PathBuf::from(format!("<preset {name}>")))
}

/// transformers' `_init_weights`: matrices and embeddings N(0, initializer_range), norm weights
/// 1, biases 0. Deterministic in `seed`.
pub fn init_values(layout: &Layout, std: f64, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    layout
        .info
        .iter()
        .map(|p| {
            let n = p.numel();
            match p.kind {
                ParamKind::Matrix => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
                ParamKind::NormWeight => vec![1.0; n],
                ParamKind::Bias => vec![0.0; n],
            }
        })
        .collect()
}

impl<B: Backend> Model<B> {
    /// A freshly initialised model of `cfg` (as `from_config` + `init_weights` in transformers).
    pub fn init(be: B, cfg: ModelConfig, seed: u64) -> Model<B> {
        let std = cfg.raw.get("initializer_range").and_then(|v| v.as_f64()).unwrap_or(0.02);
        let layout = Layout::new(&cfg);
        let values = init_values(&layout, std, seed);
        let mut cfg = cfg;
        cfg.dtype = DType::F32;
        Model::from_host(be, cfg, layout, values)
    }
}
