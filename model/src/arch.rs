//! Architectures as feature sets. A config.json's `model_type` names an [`Arch`]; the config
//! resolves it to [`Features`] (positions, MLP, norms, biases, q/k norm, windows) that the model
//! code asks about — never "is this LLaMA?" — and the arch's [`NameTable`] maps the parameter
//! table to Hugging Face tensor names. Adding an architecture: a variant here with its name
//! table, an arm in `config.rs` resolving its config keys, a preset, a parity fixture.

/// A model family okapi reads and writes, by its config.json `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Bloom,
    Qwen2,
    Qwen3,
    Mistral,
    Gemma2,
}

impl Arch {
    /// Every architecture, by its `model_type`.
    pub const ALL: [Arch; 6] = [Arch::Llama, Arch::Bloom, Arch::Qwen2, Arch::Qwen3, Arch::Mistral, Arch::Gemma2];

    /// The architecture of a config.json `model_type` (the one place it is parsed).
    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == model_type)
    }

    /// The `model_type`: `"llama"`, `"bloom"`, `"qwen2"`, `"qwen3"`, `"mistral"`, `"gemma2"`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gemma2 => "gemma2",
            Arch::Llama => "llama",
            Arch::Bloom => "bloom",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Mistral => "mistral",
        }
    }

    /// The transformers class prefix (`LlamaForCausalLM`, `Qwen2ForSequenceClassification`, …).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Arch::Gemma2 => "Gemma2",
            Arch::Llama => "Llama",
            Arch::Bloom => "Bloom",
            Arch::Qwen2 => "Qwen2",
            Arch::Qwen3 => "Qwen3",
            Arch::Mistral => "Mistral",
        }
    }

    /// Every supported `model_type`, quoted, for error messages.
    pub fn supported() -> String {
        Arch::ALL.map(|a| format!("{:?}", a.name())).join(", ")
    }

    /// The Hugging Face tensor names of this architecture.
    pub fn names(self) -> &'static NameTable {
        match self {
            Arch::Bloom => &BLOOM_NAMES,
            Arch::Gemma2 => &GEMMA2_NAMES,
            Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Mistral => &LLAMA_NAMES,
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Arch, String> {
        Arch::from_model_type(s).ok_or_else(|| format!("unknown architecture `{s}` (expected one of {})", Arch::supported()))
    }
}

/// How attention learns positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// Rotary embeddings on q and k (with the config's scaling)
    Rope,
    /// ALiBi's per-head linear bias on the scores
    Alibi,
}

/// The feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// down(silu(gate(x)) ⊙ up(x))
    SwiGlu,
    /// down(gelu_tanh(up(x)))
    Gelu,
    /// down(gelu_tanh(gate(x)) ⊙ up(x))
    GeGlu,
}

impl MlpKind {
    /// A gate beside the up projection (SwiGLU, GeGLU): three linears, two (N,F) activations.
    pub fn gated(self) -> bool {
        self != MlpKind::Gelu
    }
}

/// The normalisation layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// RMSNorm (weight only)
    Rms,
    /// LayerNorm (weight and bias)
    Layer,
}

/// What a model computes, resolved from its config.json.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    pub positions: Positions,
    pub mlp: MlpKind,
    pub norm: NormKind,
    /// RMSNorm scales by (1 + w) (Gemma), not w.
    pub norm_plus_one: bool,
    /// Norms on the attention's and the MLP's outputs too, before each residual add (Gemma 2's
    /// post_attention / post_feedforward norms; the MLP's input norm is then its pre norm).
    pub sandwich_norms: bool,
    /// The embedding output scaled by √hidden (Gemma).
    pub embed_scale: bool,
    /// The attention's score scale: 1/√head_dim, or Gemma 2's query_pre_attn_scalar^-½.
    pub attn_scale: f32,
    /// Attention scores soft-capped, s = c·tanh(s/c) (Gemma 2's attn_logit_softcapping).
    pub attn_softcap: Option<f32>,
    /// Logits soft-capped before the loss (Gemma 2's final_logit_softcapping).
    pub final_softcap: Option<f32>,
    /// A norm right after the embedding (BLOOM's `word_embeddings_layernorm`).
    pub embed_norm: bool,
    /// Biases on the q, k, v projections.
    pub qkv_bias: bool,
    /// A bias on the attention output projection.
    pub o_bias: bool,
    /// Biases on the MLP's linears.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of q and k (weights of head_dim), before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Each layer's sliding attention window (0: full causal attention).
    pub layer_windows: Vec<usize>,
}

impl Features {
    /// The features of a plain pre-norm transformer with these choices and attention scaled by
    /// 1/√head_dim: no biases, no extra norms, scales or caps (an architecture's config arm
    /// switches on what it has).
    pub fn plain(positions: Positions, mlp: MlpKind, norm: NormKind, head_dim: usize, layer_windows: Vec<usize>) -> Features {
        Features {
            positions,
            mlp,
            norm,
            norm_plus_one: false,
            sandwich_norms: false,
            embed_scale: false,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            embed_norm: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            layer_windows,
        }
    }
}

/// Hugging Face tensor names of an architecture: `{prefix}{layers}.{l}.{module}.weight`.
#[derive(Debug)]
pub struct NameTable {
    /// The trunk's prefix in `*ForCausalLM` checkpoints (base-model checkpoints lack it).
    pub prefix: &'static str,
    pub embed: &'static str,
    pub embed_norm: &'static str,
    pub layers: &'static str,
    pub ln1: &'static str,
    /// The MLP's input norm.
    pub ln2: &'static str,
    /// With sandwich norms: the norms of the attention's and the MLP's outputs.
    pub post_attn_norm: &'static str,
    pub post_ffn_norm: &'static str,
    /// The module of each block linear by role (q, k, v, o, gate, up, down), relative to the
    /// block; with `fused_qkv` the first three name the one fused module.
    pub linears: [&'static str; 7],
    /// q, k and v as one tensor, rows laid out per head as [q, k, v] (BLOOM).
    pub fused_qkv: bool,
    pub q_norm: &'static str,
    pub k_norm: &'static str,
    pub final_norm: &'static str,
    /// PEFT's default LoRA targets for the architecture.
    pub lora_default: &'static [&'static str],
}

impl NameTable {
    /// The block prefix of layer `l` (`model.layers.3`, `transformer.h.3`).
    pub fn block(&self, l: usize) -> String {
        format!("{}{}.{l}", self.prefix, self.layers)
    }
}

/// LLaMA's names, shared by Qwen2, Qwen3 and Mistral.
pub static LLAMA_NAMES: NameTable = LLAMA_NAMES_CONST;

pub static BLOOM_NAMES: NameTable = NameTable {
    prefix: "transformer.",
    embed: "word_embeddings",
    embed_norm: "word_embeddings_layernorm",
    layers: "h",
    ln1: "input_layernorm",
    ln2: "post_attention_layernorm",
    post_attn_norm: "",
    post_ffn_norm: "",
    linears: [
        "self_attention.query_key_value",
        "self_attention.query_key_value",
        "self_attention.query_key_value",
        "self_attention.dense",
        "",
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
    ],
    fused_qkv: true,
    q_norm: "",
    k_norm: "",
    final_norm: "ln_f",
    lora_default: &["query_key_value"],
};

/// Gemma 2: LLaMA's module names, but `post_attention_layernorm` normalises the attention's
/// output and `pre_feedforward_layernorm` the MLP's input.
pub static GEMMA2_NAMES: NameTable = NameTable {
    ln2: "pre_feedforward_layernorm",
    post_attn_norm: "post_attention_layernorm",
    post_ffn_norm: "post_feedforward_layernorm",
    ..LLAMA_NAMES_CONST
};

/// [`LLAMA_NAMES`] as a constant, for struct-update syntax.
const LLAMA_NAMES_CONST: NameTable = NameTable {
    prefix: "model.",
    embed: "embed_tokens",
    embed_norm: "",
    layers: "layers",
    ln1: "input_layernorm",
    ln2: "post_attention_layernorm",
    post_attn_norm: "",
    post_ffn_norm: "",
    linears: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    fused_qkv: false,
    q_norm: "self_attn.q_norm",
    k_norm: "self_attn.k_norm",
    final_norm: "norm",
    lora_default: &["q_proj", "v_proj"],
};
