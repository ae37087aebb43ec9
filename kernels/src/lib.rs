//! okapi-kernels: the CPU kernel of every op, in one folder per op family, next to where its
//! CUDA (`<op>.cu`) and WGSL (`<op>.wgsl`) versions will live.
//!
//! Conventions (llm.c style):
//! - plain row-major `f32` slices; shapes are written in comments as `(B,T,C)`;
//! - outputs are explicit arguments; a backward kernel documents for each gradient whether it
//!   overwrites (`=`) or accumulates (`+=`). Parameter gradients always accumulate, so gradient
//!   accumulation over micro-batches and tied weights need no extra code;
//! - every reduction whose result feeds a gradient runs in a fixed order (fixed chunks, summed
//!   in order), so a CPU training run is bit-reproducible whatever the thread scheduling.

pub mod activation;
pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod softmax;
pub mod xent;

mod par;
pub mod vmath;

/// Target id that marks a position without loss (HF's `-100`).
pub const IGNORE_INDEX: u32 = u32::MAX;
