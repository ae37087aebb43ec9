//! Named model shapes (the `init` / `bench` presets) and seeded random initialisation in the HF
//! layout, as transformers' `_init_weights`.

use crate::config::{Arch, DType, ModelConfig};
use crate::error::{ModelError, Result};
use crate::model::{Layout, Model, ParamKind};
use crate::rng::Rng;
use okapi_runtime::Backend;
use rayon::prelude::*;
use serde_json::json;
use std::path::PathBuf;

/// (name, hidden, layers, heads, kv heads (LLaMA's grouped-query attention; BLOOM uses `heads`),
/// ffn (LLaMA; BLOOM uses 4·hidden), vocab)
pub const PRESETS: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("tiny", 128, 4, 4, 4, 344, 4096),
    ("bench-5m", 256, 4, 4, 4, 688, 4096),
    ("bench-33m", 512, 8, 8, 8, 1360, 8192),
    ("gpt2-124m-llama", 768, 12, 12, 12, 2048, 32000),
    ("llama-1b", 2048, 16, 32, 8, 5632, 32000),
    ("llama-7b", 4096, 32, 32, 32, 11008, 32000),
    ("bloom-560m", 1024, 24, 16, 16, 4096, 250880),
    ("bloom-7b1", 4096, 30, 32, 32, 16384, 250880),
];

pub fn preset_names() -> String {
    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
}

/// The config.json of a preset; `vocab` overrides the preset's vocabulary (a tokenizer's size).
pub fn preset_config(arch: Arch, name: &str, vocab: Option<usize>, max_positions: usize) -> Result<ModelConfig> {
    let &(_, hidden, layers, heads, kv_heads, ffn, v) = PRESETS
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
            "num_key_value_heads": kv_heads,
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
/// 1, biases 0. Deterministic in `seed`: the matrices, in layout order, take consecutive normals
/// of one `Rng::new(seed)` stream (generated in parallel chunks, each starting where the stream
/// stands there — the same values as one sequential pass).
pub fn init_values(layout: &Layout, std: f64, seed: u64) -> Vec<Vec<f32>> {
    init_values_chunked(layout, std, seed, 1 << 16)
}

fn init_values_chunked(layout: &Layout, std: f64, seed: u64, chunk: usize) -> Vec<Vec<f32>> {
    // normals drawn from the stream before the current matrix
    let mut drawn = 0u64;
    layout
        .info
        .iter()
        .map(|p| {
            let n = p.numel();
            match p.kind {
                ParamKind::Matrix => {
                    let mut out = vec![0f32; n];
                    out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| {
                        let mut rng = Rng::new(seed);
                        rng.skip_normals(drawn + (i * chunk) as u64);
                        c.iter_mut().for_each(|x| *x = (rng.normal() * std) as f32);
                    });
                    drawn += n as u64;
                    out
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_init_draws_the_sequential_stream() {
        // the values of one sequential pass over one Rng (what init_values promises), at chunk
        // sizes that split matrices anywhere (1, 7, odd) and the default (one chunk each here)
        let cfg = preset_config(Arch::Llama, "tiny", Some(301), 64).unwrap();
        let layout = Layout::new(&cfg);
        let mut rng = Rng::new(9);
        let want: Vec<Vec<f32>> = layout
            .info
            .iter()
            .map(|p| match p.kind {
                ParamKind::Matrix => (0..p.numel()).map(|_| (rng.normal() * 0.02) as f32).collect(),
                ParamKind::NormWeight => vec![1.0; p.numel()],
                ParamKind::Bias => vec![0.0; p.numel()],
            })
            .collect();
        assert_eq!(init_values(&layout, 0.02, 9), want);
        for chunk in [1, 7, 1000, 4097] {
            assert_eq!(init_values_chunked(&layout, 0.02, 9, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn every_preset_builds_a_config_of_its_shape() {
        for &(name, hidden, layers, heads, kv_heads, ffn, vocab) in PRESETS {
            for arch in [Arch::Llama, Arch::Bloom] {
                let cfg = preset_config(arch, name, None, 2048).unwrap_or_else(|e| panic!("{name} {arch:?}: {e}"));
                assert_eq!((cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.vocab_size), (hidden, layers, heads, vocab), "{name} {arch:?}");
                assert_eq!(cfg.head_dim, hidden / heads, "{name} {arch:?}");
                // BLOOM has no grouped-query attention: the kv-heads column is LLaMA's
                let kv = if arch == Arch::Llama { kv_heads } else { heads };
                assert_eq!(cfg.n_kv_heads, kv, "{name} {arch:?}");
                if arch == Arch::Llama {
                    assert_eq!(cfg.intermediate_size, ffn, "{name}");
                    assert!(!cfg.tie_word_embeddings && cfg.rope_theta == 10000.0, "{name}");
                }
            }
            assert!(preset_names().contains(name));
        }
    }

    #[test]
    fn llama_1b_has_the_shapes_of_the_issue() {
        // d 2048, L 16, 32 heads, 8 kv heads (head dim 64), ffn 5632, V 32000, untied, RoPE 1e4
        let cfg = preset_config(Arch::Llama, "llama-1b", None, 2048).unwrap();
        assert_eq!((cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim), (2048, 16, 32, 8, 64));
        assert_eq!((cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings, cfg.rope_theta), (5632, 32000, false, 10000.0));
        // 2·V·C (embedding, LM head) + L·(q, o: C² each; k, v: C·512 each; 3·C·F; 2 norms) + norm
        let per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 5632 + 2 * 2048;
        assert_eq!(cfg.param_count(), 2 * 32000 * 2048 + 16 * per_layer + 2048);
        assert_eq!(cfg.param_count(), 852_559_872);
        assert!(preset_config(Arch::Llama, "llama-2b", None, 2048).unwrap_err().to_string().contains("llama-1b"));
    }
}
