//! okapi-model: Hugging Face LLaMA, BLOOM, Qwen2, Qwen3 and Mistral checkpoints (config.json + safetensors, both ways),
//! the shared transformer with an explicit forward/backward (llm.c style: the forward saves what
//! the backward needs in [`Acts`], parameter gradients accumulate in [`Grads`]), heads for reward
//! models and PPO's value, and KV-cache decoding. Generic over the compute backend.
//!
//! ```
//! use okapi_model::{preset_config, Arch, Model};
//! use okapi_runtime::{Backend, CpuBackend};
//! let model = Model::init(CpuBackend, preset_config(Arch::Llama, "tiny", Some(50), 16).unwrap(), 0);
//! // logits (B·T, V) of a batch of 2 sequences of 3 tokens
//! let mut acts = model.new_acts(2, 3);
//! model.forward(&mut acts, &[1, 2, 3, 4, 5, 6], 2, 3).unwrap();
//! let logits = model.be.read(&acts.logits, 2 * 3 * 50);
//! assert!(logits.iter().all(|x| x.is_finite()));
//! ```

pub mod acts;
pub mod arch;
pub mod bf16;
pub mod config;
pub mod decode;
pub mod error;
pub mod forward;
pub mod heads;
pub mod lora;
pub mod init;
pub mod lm_head;
pub mod memory;
pub mod model;
pub mod rng;
pub mod weights;

pub use acts::{Acts, GradHook, Grads, Scratch};
pub use arch::{Features, MlpKind, NormKind, Positions};
pub use config::{Arch, DType, Head, ModelConfig};
pub use decode::KvCache;
pub use heads::{ScoreBufs, ValueBufs};
pub use error::{ModelError, Result};
pub use init::{find_preset, preset_config, preset_names, Preset, PRESETS};
pub use rng::Rng;
pub use model::{Layout, Model, ParamInfo, ParamKind};
pub use weights::Checkpoint;

/// transformers' default `max_shard_size` for `save_pretrained` in 4.x ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;
