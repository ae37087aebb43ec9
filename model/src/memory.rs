//! What a model, a training run or a KV cache will allocate, computed from the config before
//! any of it is, and the check of those sizes against the memory left ([`Need::check`]): a size
//! that does not fit is one clear error naming what needs how much, not an abort inside the
//! allocator.
//!
//! The estimates follow the buffers the code allocates (f32 everywhere): parameters, gradients
//! and AdamW's two moments of the trainable ones, the activation arena of `acts.rs` with its
//! backward scratch, the KV cache of `decode.rs`, and the host copies a checkpoint passes through
//! while it loads.

use crate::config::{Arch, ModelConfig};
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

/// The training forward's saved activations and the backward's scratch for `rows` = B·T rows.
pub fn activation_bytes(cfg: &ModelConfig, rows: usize) -> u64 {
    let n = rows as u128;
    let [c, f, v, l] = [cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.n_layers].map(|x| x as u128);
    let (qw, kw, h) = (cfg.n_heads as u128 * cfg.head_dim as u128, cfg.n_kv_heads as u128 * cfg.head_dim as u128, cfg.n_heads as u128);
    let mlp = if cfg.arch == Arch::Llama { 3 * f } else { 2 * f };
    let per_layer = 4 * c + 4 + 2 * qw + 2 * kw + h + mlp;
    let trunk = (l + 1) * c + 3 * c + 2 + v;
    let scratch = 2 * c + 2 * qw + 2 * kw + 3 * f;
    f32s(n.saturating_mul(l * per_layer + trunk + scratch))
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

/// What some work will allocate, on the host and on the compute device, by part.
#[derive(Clone, Debug, Default)]
pub struct Need {
    /// what it is for ("loading tests/model", "training")
    pub what: String,
    pub host: Vec<(String, u64)>,
    pub device: Vec<(String, u64)>,
    /// what to change when it does not fit (flags to lower)
    pub hint: String,
}

impl Need {
    pub fn new(what: impl Into<String>, hint: impl Into<String>) -> Need {
        Need { what: what.into(), hint: hint.into(), ..Need::default() }
    }

    pub fn host(mut self, part: impl Into<String>, bytes: u64) -> Need {
        self.host.push((part.into(), bytes));
        self
    }

    pub fn device(mut self, part: impl Into<String>, bytes: u64) -> Need {
        self.device.push((part.into(), bytes));
        self
    }

    fn total(parts: &[(String, u64)]) -> u64 {
        parts.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }

    /// Refuses the work when it does not fit in the memory left: the device's (the host's for
    /// the CPU backend, which adds both sides up) and the host's. A side whose free memory is
    /// unknown is not checked.
    pub fn check<B: Backend>(&self, be: &B) -> Result<()> {
        if let Some(msg) = okapi_runtime::memory::limit_error() {
            return Err(ModelError::Other(msg));
        }
        let host = host_budget();
        match be.device_memory() {
            DeviceMemory::Host => {
                let parts: Vec<(String, u64)> = self.device.iter().chain(&self.host).cloned().collect();
                self.fits(&parts, host.as_ref(), "host memory")
            }
            DeviceMemory::Free(device) => {
                self.fits(&self.device, Some(&device), "device memory")?;
                self.fits(&self.host, host.as_ref(), "host memory")
            }
            DeviceMemory::Unknown => self.fits(&self.host, host.as_ref(), "host memory"),
        }
    }

    fn fits(&self, parts: &[(String, u64)], budget: Option<&Budget>, side: &str) -> Result<()> {
        let need = Self::total(parts);
        match budget {
            Some(b) if need > b.bytes => {
                let list: Vec<String> = parts.iter().filter(|(_, x)| *x > 0).map(|(p, x)| format!("{p} {}", human(*x))).collect();
                Err(ModelError::OutOfMemory {
                    what: self.what.clone(),
                    detail: format!("needs about {} of {side} ({}), {} available ({}){}", human(need), list.join(", "), human(b.bytes), b.source, if self.hint.is_empty() { String::new() } else { format!("; {}", self.hint) }),
                })
            }
            _ => Ok(()),
        }
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
/// tokens: weights, gradients, AdamW's moments and activations.
pub fn training_need(cfg: &ModelConfig, trainable: u128, rows: usize) -> Need {
    Need::new("training", "lower --batch-size or --max-len, train fewer layers (--unfrozen-layers), or use a smaller model")
        .device("weights", weights_bytes(cfg))
        .device("gradients", f32s(trainable))
        .device("AdamW moments", f32s(trainable.saturating_mul(2)))
        .device("activations", activation_bytes(cfg, rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::preset_config;
    use crate::Model;
    use okapi_runtime::CpuBackend;

    #[test]
    fn weights_bytes_count_every_parameter() {
        for arch in [Arch::Llama, Arch::Bloom] {
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
        assert!(err.starts_with("not enough memory for training: needs about ") && err.contains("GiB of host memory") && err.contains("weights 25.") && err.contains("1.0 GiB available (OKAPI_MEMORY_LIMIT=1G)") && err.contains("--batch-size"), "{err}");
        assert!(!err.contains('\n'));
        // a small need passes
        Need::new("x", "").host("a", 1).check(&CpuBackend).unwrap();
    }
}
