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

/// A named model shape.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    /// The architecture the shape comes from (`plan --preset` without `--arch` uses it).
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// grouped-query KV heads (BLOOM ignores it: no GQA)
    pub kv_heads: usize,
    /// `None`: hidden / heads
    pub head_dim: Option<usize>,
    /// the MLP width (BLOOM ignores it: 4·hidden)
    pub ffn: usize,
    pub vocab: usize,
    pub tied: bool,
    pub rope_theta: f64,
}

const fn preset(name: &'static str, arch: Arch, [hidden, layers, heads, kv_heads, ffn, vocab]: [usize; 6]) -> Preset {
    Preset { name, arch, hidden, layers, heads, kv_heads, head_dim: None, ffn, vocab, tied: false, rope_theta: 10000.0 }
}

pub const PRESETS: &[Preset] = &[
    preset("tiny", Arch::Llama, [128, 4, 4, 4, 344, 4096]),
    preset("bench-5m", Arch::Llama, [256, 4, 4, 4, 688, 4096]),
    preset("bench-33m", Arch::Llama, [512, 8, 8, 8, 1360, 8192]),
    preset("gpt2-124m-llama", Arch::Llama, [768, 12, 12, 12, 2048, 32000]),
    preset("llama-1b", Arch::Llama, [2048, 16, 32, 8, 5632, 32000]),
    preset("llama-7b", Arch::Llama, [4096, 32, 32, 32, 11008, 32000]),
    preset("bloom-560m", Arch::Bloom, [1024, 24, 16, 16, 4096, 250880]),
    preset("bloom-7b1", Arch::Bloom, [4096, 30, 32, 32, 16384, 250880]),
    // Qwen2.5-0.5B and Qwen3-0.6B: tied heads, RoPE base 1e6; Qwen3's head_dim 128 ≠ 1024/16
    Preset { tied: true, rope_theta: 1e6, ..preset("qwen2-0.5b", Arch::Qwen2, [896, 24, 14, 2, 4864, 151936]) },
    Preset { tied: true, rope_theta: 1e6, head_dim: Some(128), ..preset("qwen3-0.6b", Arch::Qwen3, [1024, 28, 16, 8, 3072, 151936]) },
];

pub fn preset_names() -> String {
    PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

/// A preset by name.
pub fn find_preset(name: &str) -> Result<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| ModelError::Other(format!("unknown preset `{name}` (expected one of: {})", preset_names())))
}

/// The config.json of a preset's shape as an `arch` model; `vocab` overrides the preset's
/// vocabulary (a tokenizer's size).
pub fn preset_config(arch: Arch, name: &str, vocab: Option<usize>, max_positions: usize) -> Result<ModelConfig> {
    let p = find_preset(name)?;
    let vocab = vocab.unwrap_or(p.vocab);
    let raw = match arch {
        Arch::Bloom => json!({
            "architectures": ["BloomForCausalLM"],
            "model_type": "bloom",
            "hidden_size": p.hidden,
            "n_layer": p.layers,
            "n_head": p.heads,
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
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Mistral | Arch::Gemma2 => json!({
            "architectures": [format!("{}ForCausalLM", arch.class_prefix())],
            "model_type": arch.name(),
            "hidden_size": p.hidden,
            "intermediate_size": p.ffn,
            "num_hidden_layers": p.layers,
            "num_attention_heads": p.heads,
            "num_key_value_heads": p.kv_heads,
            "head_dim": p.head_dim.unwrap_or(p.hidden / p.heads),
            "hidden_act": if arch == Arch::Gemma2 { "gelu_pytorch_tanh" } else { "silu" },
            "max_position_embeddings": max_positions,
            "rms_norm_eps": if arch == Arch::Llama { 1e-5 } else { 1e-6 },
            "rope_theta": p.rope_theta,
            "attention_bias": false,
            "mlp_bias": false,
            "sliding_window": null,
            "tie_word_embeddings": p.tied,
            "vocab_size": vocab,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 3,
            "initializer_range": 0.02,
            "torch_dtype": "float32",
        }),
    };
    let mut raw = raw;
    if arch == Arch::Gemma2 {
        // Gemma 2's own keys: scores scaled by 1/√head_dim as the others, its default caps and
        // window (local layers 0, 2, …)
        raw["query_pre_attn_scalar"] = json!(p.head_dim.unwrap_or(p.hidden / p.heads));
        raw["attn_logit_softcapping"] = json!(50.0);
        raw["final_logit_softcapping"] = json!(30.0);
        raw["sliding_window"] = json!(4096);
    }
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
        for p in PRESETS {
            for arch in Arch::ALL {
                let cfg = preset_config(arch, p.name, None, 2048).unwrap_or_else(|e| panic!("{} {arch:?}: {e}", p.name));
                assert_eq!((cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.arch), (p.hidden, p.layers, p.heads, p.vocab, arch), "{} {arch:?}", p.name);
                // BLOOM has no grouped-query attention, derives head_dim, and its MLP is 4·hidden
                if arch == Arch::Bloom {
                    assert_eq!((cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size), (p.heads, p.hidden / p.heads, 4 * p.hidden), "{}", p.name);
                } else {
                    assert_eq!((cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size), (p.kv_heads, p.head_dim.unwrap_or(p.hidden / p.heads), p.ffn), "{}", p.name);
                    assert_eq!((cfg.tie_word_embeddings, cfg.rope_theta), (p.tied, p.rope_theta), "{}", p.name);
                    // presets have no sliding window, but Gemma 2's local layers
                    let local = |l: usize| if arch == Arch::Gemma2 && l.is_multiple_of(2) { 4096 } else { 0 };
                    assert!(cfg.features.layer_windows.iter().enumerate().all(|(l, &w)| w == local(l)), "{}: {:?}", p.name, cfg.features.layer_windows);
                }
            }
            assert!(preset_names().contains(p.name));
        }
    }

    #[test]
    fn qwen_presets_have_the_published_sizes() {
        // Qwen2.5-0.5B: 494 M parameters with its tied head; Qwen3-0.6B: 596 M (q/k norms, head_dim 128)
        let q2 = preset_config(Arch::Qwen2, "qwen2-0.5b", None, 32768).unwrap();
        assert_eq!(q2.param_count(), 494_032_768);
        assert!(q2.features.qkv_bias && !q2.features.o_bias);
        let q3 = preset_config(Arch::Qwen3, "qwen3-0.6b", None, 40960).unwrap();
        assert_eq!(q3.param_count(), 596_049_920);
        assert!(q3.features.qk_norm && !q3.features.qkv_bias);
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
