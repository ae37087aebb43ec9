//! okapi: instruction-tune LLaMA and BLOOM in 26 languages — the facade over the workspace
//! crates, from the kernels up: [`kernels`] (every op's CPU kernel and GPU sources), [`runtime`]
//! (the `Backend` trait; CPU, wgpu and CUDA backends), [`model`] (Hugging Face checkpoints, the
//! transformer's forward and backward), [`data`] (Okapi's formats, tokenizers), [`rlhf`] (SFT,
//! reward model, PPO, DPO, generation, evaluation). The `okapi-train` binary is the CLI on top.
//!
//! ```
//! use okapi::model::{preset_config, Arch, Model};
//! use okapi::runtime::CpuBackend;
//! let model = Model::init(CpuBackend, preset_config(Arch::Bloom, "tiny", Some(100), 32).unwrap(), 1);
//! assert_eq!(model.cfg.vocab_size, 100);
//! ```

pub use okapi_data as data;
pub use okapi_kernels as kernels;
pub use okapi_model as model;
pub use okapi_rlhf as rlhf;
pub use okapi_runtime as runtime;

/// The MPI engine of the runtime's `Collective` (feature `mpi`).
#[cfg(feature = "mpi")]
pub mod mpi_world;
