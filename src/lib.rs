//! okapi: instruction-tune LLaMA and BLOOM in 26 languages — the facade over the workspace crates.

pub use okapi_data as data;
pub use okapi_kernels as kernels;
pub use okapi_model as model;
pub use okapi_rlhf as rlhf;
pub use okapi_runtime as runtime;

pub mod cli;
