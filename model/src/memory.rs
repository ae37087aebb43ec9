//! What a model, a training run or a KV cache will allocate, computed from the config before
//! any of it is, and the check of those sizes against the memory left ([`Need::check`]): a size
//! that does not fit is one clear error naming what needs how much, not an abort inside the
//! allocator.
//!
//! The estimates follow the buffers the code allocates (f32 everywhere): parameters, gradients
//! and AdamW's two moments of the trainable ones, the activation arena of `acts.rs` with its
//! backward scratch, the KV cache of `decode.rs`, and the host copies a checkpoint passes through
//! while it loads.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use okapi_runtime::memory::{host_budget, human, Budget, DeviceMemory};
use okapi_runtime::Backend;

const F32: u64 = 4;

/// Bytes of `n` f32 values, saturating (absurd sizes compare as huge, never wrap).
fn f32s(n: u128) -> u64 {
    u64::try_from(n.saturating_mul(F32 as u128)).unwrap_or(u64::MAX)
}

/// Parameters in f32.
pub fn weights_bytes(cfg: &ModelConfig) -> u64 {
    f32s(cfg.param_count())
}

/// The training forward's saved activations for `rows` = B·T rows, without the logits
/// ([`logits_bytes`]) and the backward's scratch ([`workspace_bytes`]).
pub fn saved_activation_bytes(cfg: &ModelConfig, rows: usize) -> u64 {
    saved_activation_bytes_with(cfg, rows, false)
}

/// [`saved_activation_bytes`]; `checkpointed`: the block inputs and one block's activations.
pub fn saved_activation_bytes_with(cfg: &ModelConfig, rows: usize, checkpointed: bool) -> u64 {
    let n = rows as u128;
    let [c, f, l] = [cfg.hidden_size, cfg.intermediate_size, cfg.n_layers].map(|x| x as u128);
    let (qw, kw, h) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128, cfg.n_heads as u128);
    let mlp = if cfg.features.mlp.gated() { 3 * f } else { 2 * f };
    // q and k before per-head norms, with their statistics
    let qk_norm = if cfg.features.qk_norm { qw + kw + h + cfg.n_kv_heads as u128 } else { 0 };
    // ln1, x_mid, ln2 and their statistics, q, k, v, the attention output and its lse, the MLP
    // the sublayers' outputs before sandwich norms, with their rstd
    let sandwich = if cfg.features.sandwich_norms { 2 * c + 2 } else { 0 };
    let per_layer = 3 * c + 4 + 2 * qw + 2 * kw + h + mlp + qk_norm + sandwich;
    // the residual stream, the final norm and its statistics, token ids and positions (u32),
    // the embedding before its norm (BLOOM)
    let emb = if cfg.features.embed_norm { c + 2 } else { 0 };
    let trunk = (l + 1) * c + c + 2 + 2 + emb;
    let kept = if checkpointed { l.min(1) } else { l };
    f32s(n.saturating_mul(kept * per_layer + trunk))
}

/// The (B·T, V) logits a causal LM's training forward keeps (the loss kernels turn them into
/// their gradient in place); a reward model has none.
pub fn logits_bytes(cfg: &ModelConfig, rows: usize) -> u64 {
    if cfg.head != crate::config::Head::CausalLm {
        return 0;
    }
    // soft-capped logits keep a copy of the capped values for the cap's backward
    let copies = if cfg.features.final_softcap.is_some() { 2 } else { 1 };
    f32s((rows as u128).saturating_mul(copies * cfg.vocab_size as u128))
}

/// The LM head's buffers for `rows` rows when it runs `chunk` rows at a time: the logits of a
/// chunk and, when chunking, the chunk's copies of the final norm's output and its gradient.
pub fn head_bytes(cfg: &ModelConfig, rows: usize, chunk: Option<usize>) -> u64 {
    let held = chunk.map_or(rows, |r| r.clamp(1, rows.max(1)));
    let copies = if cfg.head == crate::config::Head::CausalLm && held < rows { 2 * held as u128 * cfg.hidden_size as u128 } else { 0 };
    logits_bytes(cfg, held).saturating_add(f32s(copies))
}

/// The memory techniques a training run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Techniques {
    /// `--grad-checkpointing`
    pub checkpointed: bool,
    /// `--lm-head-chunk`: the LM head's rows at a time (`None`: all)
    pub head_chunk: Option<usize>,
    /// `--frozen-bf16`: this many bottom (frozen) blocks keep their linear weights in bf16
    pub bf16_blocks: usize,
    /// `--offload-optimizer`: the AdamW moments and fp32 master weights in host memory
    pub offload: bool,
    /// LoRA: parameters trained beside the base (adapters), counted in `trainable` but not
    /// among the base's weights
    pub adapters: u128,
    /// `--zero 1` or `2` over this many data-parallel ranks (0 or 1: the whole AdamW state on
    /// every rank): each rank holds its share of the moments, and rank 0 gathers the whole
    /// state on the host for a checkpoint
    pub zero_ranks: usize,
    /// `--zero 2`: also the blocks' gradients sharded (a rank holds its share, the tensors
    /// outside the blocks whole, and one block's worth lent during the backward)
    pub zero_grads: bool,
}

/// The gradients a ZeRO-2 rank of `ranks` holds for `trainable` parameters: its share of the
/// blocks', the tensors outside the blocks whole (at most the embedding, an untied head and
/// the final norm), one block's lent buffers.
fn zero2_gradient_params(cfg: &ModelConfig, trainable: u128, ranks: usize) -> u128 {
    let [v, c] = [cfg.vocab_size, cfg.hidden_size].map(|x| x as u128);
    let outside = (v * c * if cfg.tie_word_embeddings { 1 } else { 2 } + 2 * c).min(trainable);
    let blocks = trainable - outside;
    blocks.div_ceil(ranks as u128) + outside + block_linear_params(cfg).min(blocks)
}

/// Elements of `cfg`'s largest tensor: the embedding (or an untied head), an MLP matrix or the
/// attention's q/k/v projections (BLOOM's fused one).
pub fn largest_tensor_params(cfg: &ModelConfig) -> u128 {
    let [v, c, f] = [cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size].map(|x| x as u128);
    let (qw, kw) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128);
    (v * c).max(c * f).max(c * (qw + 2 * kw))
}

/// The linear weights of one block (what `--frozen-bf16` stores in bf16).
pub fn block_linear_params(cfg: &ModelConfig) -> u128 {
    let [c, f] = [cfg.hidden_size, cfg.intermediate_size].map(|x| x as u128);
    let (qw, kw) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128);
    let mlp = if cfg.features.mlp.gated() { 3 * c * f } else { 2 * c * f };
    2 * c * qw + 2 * c * kw + mlp
}

/// Bytes of `cfg`'s weights with `bf16_blocks` blocks' linear weights in bf16, the rest f32.
pub fn weights_bytes_with(cfg: &ModelConfig, bf16_blocks: usize) -> u64 {
    let packed = block_linear_params(cfg).saturating_mul(bf16_blocks.min(cfg.n_layers) as u128);
    weights_bytes(cfg).saturating_sub(f32s(packed) / 2)
}

/// The backward's scratch, shared by every layer, for `rows` rows.
pub fn workspace_bytes(cfg: &ModelConfig, rows: usize) -> u64 {
    let (c, f) = (cfg.hidden_size as u128, cfg.intermediate_size as u128);
    let (qw, kw) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128);
    let qk_norm = if cfg.features.qk_norm { qw } else { 0 };
    let sandwich = if cfg.features.sandwich_norms { c } else { 0 };
    f32s((rows as u128).saturating_mul(2 * c + 2 * qw + 2 * kw + 3 * f + qk_norm + sandwich))
}

/// Everything a training forward and backward of `rows` rows allocate: saved activations,
/// logits and the backward's scratch.
pub fn activation_bytes(cfg: &ModelConfig, rows: usize) -> u64 {
    activation_bytes_with(cfg, rows, Techniques::default())
}

/// [`activation_bytes`] with the techniques that change them: checkpointing and the chunked head.
pub fn activation_bytes_with(cfg: &ModelConfig, rows: usize, t: Techniques) -> u64 {
    saved_activation_bytes_with(cfg, rows, t.checkpointed).saturating_add(head_bytes(cfg, rows, t.head_chunk)).saturating_add(workspace_bytes(cfg, rows))
}

/// A KV cache for `batch` sequences of up to `cap` tokens, fed `t_max` tokens at a time.
pub fn kv_cache_bytes(cfg: &ModelConfig, batch: usize, cap: usize, t_max: usize) -> u64 {
    let kw = cfg.n_kv_heads as u128 * cfg.head_dim as u128;
    let cache = (2 * cfg.n_layers as u128).saturating_mul((batch as u128).saturating_mul(cap as u128).saturating_mul(kw));
    let (c, f, v) = (cfg.hidden_size as u128, cfg.intermediate_size as u128, cfg.vocab_size as u128);
    let qw = cfg.n_heads as u128 * cfg.head_dim as u128;
    let per_row = 8 * c + 2 * qw + 2 * kw + 3 * f + v + 8;
    f32s(cache.saturating_add((batch as u128).saturating_mul(t_max as u128).saturating_mul(per_row)))
}

/// One part of a [`Need`]: what it is, its bytes, and the flags that would lower it ("" when
/// the need's general hint is all there is).
#[derive(Clone, Debug)]
pub struct Part {
    pub label: String,
    pub bytes: u64,
    pub lower: String,
}

impl Part {
    /// The part's key in `plan`'s JSON: its label in snake case ("AdamW moments" → "adamw_moments").
    pub fn key(&self) -> String {
        let mut k = String::new();
        for ch in self.label.chars() {
            if ch.is_ascii_alphanumeric() {
                k.push(ch.to_ascii_lowercase());
            } else if !k.ends_with('_') && !k.is_empty() {
                k.push('_');
            }
        }
        k.trim_end_matches('_').to_string()
    }
}

/// What some work will allocate, on the host and on the compute device, by part.
#[derive(Clone, Debug, Default)]
pub struct Need {
    /// what it is for ("loading tests/model", "training")
    pub what: String,
    pub host: Vec<Part>,
    pub device: Vec<Part>,
    /// what to change when it does not fit (flags to lower)
    pub hint: String,
    /// sizes shown beside the parts but not counted (the other choice of a setting)
    pub info: Vec<Part>,
}

/// Where a need is checked: the memory it has to fit in, and what that memory is.
#[derive(Clone, Debug)]
pub struct Fit {
    /// "host memory" or "device memory"
    pub side: &'static str,
    pub parts: Vec<Part>,
    /// the memory left there (`None`: unknown, not checked)
    pub budget: Option<Budget>,
}

impl Fit {
    pub fn total(&self) -> u64 {
        self.parts.iter().fold(0u64, |a, p| a.saturating_add(p.bytes))
    }
}

impl Need {
    pub fn new(what: impl Into<String>, hint: impl Into<String>) -> Need {
        Need { what: what.into(), hint: hint.into(), ..Need::default() }
    }

    pub fn host(mut self, label: impl Into<String>, bytes: u64) -> Need {
        self.host.push(Part { label: label.into(), bytes, lower: String::new() });
        self
    }

    pub fn device(self, label: impl Into<String>, bytes: u64) -> Need {
        self.device_lowered_by(label, bytes, "")
    }

    /// A device part and the flags that would lower it (named when it is the largest part of a
    /// need that does not fit).
    pub fn device_lowered_by(mut self, label: impl Into<String>, bytes: u64, lower: impl Into<String>) -> Need {
        self.device.push(Part { label: label.into(), bytes, lower: lower.into() });
        self
    }

    /// The sides this need is checked on with `be`: the device's memory (the host's for the CPU
    /// backend, which adds both sides up) and the host's. A side whose free memory is unknown
    /// has no budget.
    pub fn fits<B: Backend>(&self, be: &B) -> Vec<Fit> {
        let host = host_budget();
        match be.device_memory() {
            DeviceMemory::Host => vec![Fit { side: "host memory", parts: self.device.iter().chain(&self.host).cloned().collect(), budget: host }],
            DeviceMemory::Free(device) => vec![Fit { side: "device memory", parts: self.device.clone(), budget: Some(device) }, Fit { side: "host memory", parts: self.host.clone(), budget: host }],
            DeviceMemory::Unknown => vec![Fit { side: "device memory", parts: self.device.clone(), budget: None }, Fit { side: "host memory", parts: self.host.clone(), budget: host }],
        }
    }

    /// Refuses the work when it does not fit in the memory left (see [`Need::fits`]), in one
    /// line naming the largest part and what would lower it. After
    /// [`okapi_runtime::memory::force_checks`] the refusal is a warning on stderr instead.
    pub fn check<B: Backend>(&self, be: &B) -> Result<()> {
        if let Some(msg) = okapi_runtime::memory::limit_error() {
            return Err(ModelError::Other(msg));
        }
        match self.fits(be).iter().try_for_each(|fit| self.check_fit(fit)) {
            Err(ModelError::OutOfMemory { what, detail }) if okapi_runtime::memory::checks_forced() => {
                eprintln!("warning: not enough memory for {what}: {detail} — running anyway (--force)");
                Ok(())
            }
            r => r,
        }
    }

    /// [`Need::check`]; with `force`, this and every later check in the process only warn.
    pub fn check_or_force<B: Backend>(&self, be: &B, force: bool) -> Result<()> {
        if force {
            okapi_runtime::memory::force_checks();
        }
        self.check(be)
    }

    fn check_fit(&self, fit: &Fit) -> Result<()> {
        let need = fit.total();
        let Some(b) = &fit.budget else { return Ok(()) };
        if need <= b.bytes {
            return Ok(());
        }
        let list: Vec<String> = fit.parts.iter().filter(|p| p.bytes > 0).map(|p| format!("{} {}", p.label, human(p.bytes))).collect();
        // the first of equal parts: the ones listed first are what a user controls more directly
        let largest = fit.parts.iter().rev().max_by_key(|p| p.bytes);
        let advice = match largest {
            Some(p) if !p.lower.is_empty() => format!("; the largest part is {} ({}): {}", p.label, human(p.bytes), p.lower),
            Some(p) => format!("; the largest part is {} ({}){}", p.label, human(p.bytes), if self.hint.is_empty() { String::new() } else { format!(": {}", self.hint) }),
            None => String::new(),
        };
        Err(ModelError::OutOfMemory {
            what: self.what.clone(),
            detail: format!("needs about {} of {} ({}), {} available ({}){advice}", human(need), fit.side, list.join(", "), human(b.bytes), b.source),
        })
    }

    /// The need as a table for people: one line per part, then the total against the memory left.
    pub fn table<B: Backend>(&self, be: &B) -> String {
        let mut out = format!("memory plan for {}:\n", self.what);
        for fit in self.fits(be) {
            if fit.parts.is_empty() {
                continue;
            }
            out.push_str(&format!("  {}:\n", fit.side));
            for p in fit.parts.iter().filter(|p| p.bytes > 0) {
                out.push_str(&format!("    {:<46} {:>12}\n", p.label, human(p.bytes)));
            }
            let left = match &fit.budget {
                Some(b) => format!("of {} available ({})", human(b.bytes), b.source),
                None => "(free memory unknown: not checked)".to_string(),
            };
            out.push_str(&format!("    {:<46} {:>12} {left}\n", "total", human(fit.total())));
        }
        for p in &self.info {
            out.push_str(&format!("  (not counted) {:<36} {:>12}\n", p.label, human(p.bytes)));
        }
        out
    }
}

/// Loading a checkpoint of `cfg`: the model on the device; on the host, the f32 tensors read
/// from the files, the parameter copies they become, and the largest file's bytes.
pub fn loading_need(cfg: &ModelConfig, largest_file: u64) -> Need {
    let w = weights_bytes(cfg);
    Need::new(format!("loading {}", cfg.path.parent().unwrap_or(&cfg.path).display()), "")
        .device("weights", w)
        .host("checkpoint tensors", w)
        .host("parameter copies", w)
        .host("largest weight file", largest_file)
}

/// Training a model of `cfg` whose `trainable` parameters learn, on batches of `rows` = B·T
/// tokens: weights (trainable and frozen), gradients, AdamW's moments, saved activations,
/// logits and the backward's workspace.
pub fn training_need(cfg: &ModelConfig, trainable: u128, rows: usize) -> Need {
    training_need_rows_by(cfg, trainable, rows, "lower --batch-size or --max-len", Techniques::default())
}

/// [`training_need`] of a training command with its techniques; a technique it does not use is
/// named as what lowers its part, beside `rows_flags` (e.g. "lower --batch-size or --max-len"),
/// and the activations of the other checkpointing choice are shown, not counted.
pub fn training_run_need(cfg: &ModelConfig, trainable: u128, rows: usize, t: Techniques, rows_flags: &str) -> Need {
    let mut need = training_need_rows_by(cfg, trainable, rows, rows_flags, t);
    for part in &mut need.device {
        match part.label.as_str() {
            "activations" => part.lower = format!("use --grad-checkpointing, or {rows_flags}"),
            "logits" if t.head_chunk.is_none() => part.lower = format!("use --lm-head-chunk, or {rows_flags}"),
            _ => {}
        }
    }
    let other = if t.checkpointed { "activations without checkpointing" } else { "activations with checkpointing" };
    need.info.push(Part { label: other.into(), bytes: saved_activation_bytes_with(cfg, rows, !t.checkpointed), lower: String::new() });
    need
}

/// Elements per piece of the offloaded optimizer step's pipeline (okapi-rlhf's `Offload::step`):
/// the grain at which its copies overlap the CPU's AdamW; two gradient and two weight stages of
/// one piece each (4 × 16 MiB) are all the staging memory it holds.
pub const OFFLOAD_PIECE: usize = 1 << 22;
/// [`training_need`] where `rows_flags` says what lowers the rows (`bench` has `--seq-len`), and
/// with activation checkpointing or not.
pub fn training_need_rows_by(cfg: &ModelConfig, trainable: u128, rows: usize, rows_flags: &str, t: Techniques) -> Need {
    let frozen = cfg.param_count().saturating_sub(trainable.saturating_sub(t.adapters));
    let packed = block_linear_params(cfg).saturating_mul(t.bf16_blocks.min(cfg.n_layers) as u128).min(frozen);
    const LAYERS: &str = "train fewer layers (--unfrozen-layers)";
    let mut need = Need::new("training", "lower --batch-size or --max-len, train fewer layers (--unfrozen-layers), or use a smaller model")
        .device_lowered_by("trainable weights (f32)", f32s(trainable), LAYERS)
        .device_lowered_by("frozen weights (f32)", f32s(frozen - packed), if packed == 0 { "use --frozen-bf16, or a smaller model" } else { "use a smaller model" })
        .device_lowered_by("frozen weights (bf16)", f32s(packed) / 2, "use a smaller model")
        .device_lowered_by("bf16 staging (one block, f32)", if packed > 0 { f32s(block_linear_params(cfg)) } else { 0 }, "")
        ;
    need = if t.zero_grads && t.zero_ranks > 1 {
        let held = zero2_gradient_params(cfg, trainable, t.zero_ranks);
        need.device_lowered_by(format!("gradients (ZeRO-2, 1/{} of the blocks', one lent)", t.zero_ranks), f32s(held), format!("use more ranks, or {LAYERS}"))
    } else {
        need.device_lowered_by("gradients", f32s(trainable), LAYERS)
    };
    let moments = f32s(trainable.saturating_mul(2));
    need = if t.offload {
        let staged = trainable.min(OFFLOAD_PIECE as u128).saturating_mul(4);
        need.host("AdamW moments (offloaded)", moments).host("master weights (offloaded)", f32s(trainable)).host("offload stages (page-locked on CUDA)", f32s(staged))
    } else if t.zero_ranks > 1 {
        // tensors are owned whole: a share is about 1/N (the plan rounds up)
        let stage = if t.zero_grads { 2 } else { 1 };
        need.device_lowered_by(format!("AdamW moments (ZeRO-{stage}, 1/{})", t.zero_ranks), moments.div_ceil(t.zero_ranks as u64), format!("use more ranks, or {LAYERS}"))
    } else {
        need.device_lowered_by("AdamW moments", moments, format!("use --offload-optimizer, or {LAYERS}"))
    };
    need.device_lowered_by(if t.checkpointed { "activations (checkpointed)" } else { "activations" }, saved_activation_bytes_with(cfg, rows, t.checkpointed), rows_flags)
        .device_lowered_by(if t.head_chunk.is_some() { "logits (chunked)" } else { "logits" }, head_bytes(cfg, rows, t.head_chunk), rows_flags)
        .device_lowered_by("workspace", workspace_bytes(cfg, rows), rows_flags)
        // saving the model (and checkpoints): every tensor read back as f32, then encoded (the
        // file is streamed from the encoded tensors)
        .host("saving (tensor copies, encoded file)", weights_bytes(cfg).saturating_mul(2))
        // a checkpoint's optimizer file: one moment at a time (gathered from its owner under
        // ZeRO), as f32 and as the bytes written
        .host("optimizer file (one moment at a time)", f32s(largest_tensor_params(cfg).min(trainable)).saturating_mul(2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::preset_config;
    use crate::{Arch, Model};
    use okapi_runtime::CpuBackend;

    #[test]
    fn weights_bytes_count_every_parameter() {
        for arch in Arch::ALL {
            let cfg = preset_config(arch, "tiny", Some(300), 64).unwrap();
            let model = Model::init(CpuBackend, cfg.clone(), 0);
            assert_eq!(weights_bytes(&cfg), 4 * model.n_params() as u64, "{arch:?}");
        }
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let cfg = preset_config(Arch::Llama, "tiny", Some(300), 64).unwrap();
        assert_eq!(kv_cache_bytes(&cfg, usize::MAX, usize::MAX, usize::MAX), u64::MAX);
        assert_eq!(activation_bytes(&cfg, usize::MAX), u64::MAX);
    }

    #[test]
    fn a_need_beyond_the_budget_is_one_clear_error() {
        let cfg = preset_config(Arch::Llama, "llama-7b", None, 2048).unwrap();
        let need = training_need(&cfg, cfg.param_count(), 8 * 512);
        std::env::set_var("OKAPI_MEMORY_LIMIT", "1G");
        let err = need.check(&CpuBackend).unwrap_err().to_string();
        std::env::remove_var("OKAPI_MEMORY_LIMIT");
        assert!(err.starts_with("not enough memory for training: needs about ") && err.contains("GiB of host memory") && err.contains("trainable weights (f32) 25.") && err.contains("1.0 GiB available (OKAPI_MEMORY_LIMIT=1G)"), "{err}");
        // the largest part, and what lowers it
        assert!(err.ends_with("the largest part is AdamW moments (50.2 GiB): use --offload-optimizer, or train fewer layers (--unfrozen-layers)"), "{err}");
        assert!(!err.contains('\n'));
        // a small need passes
        Need::new("x", "").host("a", 1).check(&CpuBackend).unwrap();
    }

    #[test]
    fn the_parts_add_up_to_what_the_arenas_allocate() {
        // Acts (its logits included) and Scratch, measured by their buffers on the CPU backend
        for arch in Arch::ALL {
            let cfg = preset_config(arch, "tiny", Some(300), 64).unwrap();
            let model = Model::init(CpuBackend, cfg.clone(), 0);
            let (acts, scratch) = (model.new_acts(3, 7), model.new_scratch(3, 7));
            let allocated = 4 * (acts.floats() + scratch.floats()) as u64;
            assert_eq!(activation_bytes(&cfg, 21), allocated, "{arch:?}");
            let mut ckpt = Model::init(CpuBackend, cfg.clone(), 0);
            ckpt.grad_checkpointing = true;
            let acts = ckpt.new_acts(3, 7);
            let want = saved_activation_bytes_with(&cfg, 21, true) + logits_bytes(&cfg, 21) + workspace_bytes(&cfg, 21);
            assert_eq!(want, 4 * (acts.floats() + scratch.floats()) as u64, "{arch:?} checkpointed");
            assert!(saved_activation_bytes_with(&cfg, 21, true) < saved_activation_bytes(&cfg, 21));
            ckpt.head_chunk = Some(5);
            let acts = ckpt.new_acts(3, 7);
            let want = saved_activation_bytes_with(&cfg, 21, true) + head_bytes(&cfg, 21, Some(5)) + workspace_bytes(&cfg, 21);
            assert_eq!(want, 4 * (acts.floats() + scratch.floats()) as u64, "{arch:?} checkpointed, head in chunks of 5");
            // soft-capped logits (Gemma 2) keep a second copy
            let copies = if cfg.features.final_softcap.is_some() { 2 } else { 1 };
            assert_eq!(head_bytes(&cfg, 21, Some(5)), 4 * (copies * 5 * 300 + 2 * 5 * cfg.hidden_size) as u64);
            assert_eq!(head_bytes(&cfg, 21, Some(50)), logits_bytes(&cfg, 21));
            assert_eq!(logits_bytes(&cfg, 21), 4 * 21 * 300 * copies as u64);
        }
    }

    #[test]
    fn part_keys_are_snake_case_labels() {
        let key = |l: &str| Part { label: l.into(), bytes: 0, lower: String::new() }.key();
        assert_eq!(key("AdamW moments"), "adamw_moments");
        assert_eq!(key("trainable weights (f32)"), "trainable_weights_f32");
        assert_eq!(key("KV cache"), "kv_cache");
    }

    #[test]
    fn trainable_count_is_what_trainable_mask_trains() {
        for (arch, tied) in [(Arch::Llama, false), (Arch::Llama, true), (Arch::Bloom, true), (Arch::Qwen2, true), (Arch::Qwen3, false), (Arch::Mistral, false), (Arch::Gemma2, true)] {
            let mut cfg = preset_config(arch, "tiny", Some(300), 64).unwrap();
            cfg.tie_word_embeddings = tied;
            let model = Model::init(CpuBackend, cfg.clone(), 0);
            for unfrozen in [None, Some(0), Some(1), Some(cfg.n_layers)] {
                let mask = model.trainable_mask(unfrozen).unwrap();
                let counted: usize = mask.iter().zip(&model.info).filter(|(m, _)| **m).map(|(_, p)| p.numel()).sum();
                assert_eq!(cfg.trainable_count(unfrozen).unwrap(), counted as u128, "{arch:?} tied {tied} unfrozen {unfrozen:?}");
            }
        }
    }
}
