//! okapi-model: Hugging Face LLaMA and BLOOM checkpoints (config.json + safetensors, both ways),
//! the shared transformer with an explicit forward/backward, and KV-cache decoding.

pub mod acts;
pub mod config;
pub mod decode;
pub mod error;
pub mod forward;
pub mod heads;
pub mod init;
pub mod model;
pub mod rng;
pub mod weights;

pub use acts::{Acts, Grads, Scratch};
pub use config::{Arch, DType, Head, ModelConfig};
pub use decode::KvCache;
pub use heads::ScoreBufs;
pub use error::{ModelError, Result};
pub use init::{preset_config, preset_names, PRESETS};
pub use rng::Rng;
pub use model::{Layout, Model, ParamInfo, ParamKind};
pub use weights::Checkpoint;

/// transformers' default `max_shard_size` for `save_pretrained` in 4.x ("5GB").
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;
