//! okapi-runtime: the [`Backend`] trait every compute device implements, the CPU backend, the
//! wgpu and CUDA backends (features `wgpu`, `cuda`), and device selection.
//!
//! The trait is llm.c-shaped: every op writes into explicit output buffers, sizes are explicit
//! (buffers may be arenas sized for the largest batch), and backward ops say whether they
//! overwrite (`=`) or accumulate (`+=`) — see each kernel in `okapi-kernels`. Ops take their
//! sizes as shape structs ([`Gemm`], [`AttnShape`], [`NormShape`], [`Rows`], …), and the ops with
//! many tensors (norms, attention) take them as named structs, so a call site names every
//! tensor. Every backend checks extents with the same code ([`check`]) before it computes.
//! Models are generic over `B: Backend` (static dispatch); the CLI picks the backend at run time.
//!
//! ```
//! use okapi_runtime::{Backend, CpuBackend, Gemm};
//! let be = CpuBackend;
//! // C (2,2) = A (2,3) · B (3,2)
//! let a = be.upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! let b = be.upload(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
//! let mut c = be.zeros(4);
//! be.matmul(&mut c, &a, &b, &Gemm::new(2, 2, 3));
//! assert_eq!(be.read(&c, 4), vec![4.0, 5.0, 10.0, 11.0]);
//! ```

pub mod check;
pub mod collective;
pub mod cpu;
pub mod memory;
pub mod stage;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use collective::{Collective, CommError, SingleProcess, ThreadGroup};
pub use cpu::CpuBackend;
pub use stage::HostStage;
#[cfg(feature = "cuda")]
pub use cuda::{CudaBackend, CudaBuf, CudaIds, CudaOptions};
#[cfg(feature = "wgpu")]
pub use wgpu::{WBuf, WIds, WgpuBackend, WgpuOptions};
pub use okapi_kernels::activation::Dropout;
pub use okapi_kernels::adamw::AdamW;
pub use okapi_kernels::attention::{AttnGrads, AttnInputs, AttnShape};
pub use okapi_kernels::matmul::Gemm;
pub use okapi_kernels::norm::{LayerNormBwd, LayerNormFwd, RmsNormBwd, RmsNormFwd};
pub use okapi_kernels::shapes::Extent;
pub use okapi_kernels::{KvShape, NormShape, RopeShape, Rows, IGNORE_INDEX};

/// A compute device. `Buf` holds f32 values, `Ids` holds u32 token ids / positions / lengths.
/// Shapes and `=` / `+=` semantics of every op: the kernel of the same name in okapi-kernels.
pub trait Backend: Clone + Send + Sync + 'static {
    type Buf: Extent + Send + Sync;
    type Ids: Extent + Send + Sync;

    /// Human-readable device name (printed by the CLI).
    fn name(&self) -> String;
    /// Where the buffers live and how much room is left there (the memory check before a
    /// model or a run is allocated).
    fn device_memory(&self) -> memory::DeviceMemory;

    /// Waits until every op issued so far has finished (GPU backends queue work; the CPU runs
    /// each op to completion). Benchmarks time phases around this; results never need it,
    /// since `read` waits for what it reads.
    fn synchronize(&self) {}

    // ---- memory -------------------------------------------------------------------------
    fn zeros(&self, len: usize) -> Self::Buf;
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn upload_ids(&self, data: &[u32]) -> Self::Ids;
    /// Host → device into the first `data.len()` elements of an existing buffer.
    fn write(&self, dst: &mut Self::Buf, data: &[f32]);
    fn write_ids(&self, dst: &mut Self::Ids, data: &[u32]);
    /// Device → host, the first `len` elements.
    fn read(&self, src: &Self::Buf, len: usize) -> Vec<f32>;
    /// A staging buffer of `len` elements for [`Backend::read_staged`] and
    /// [`Backend::write_staged`]: page-locked memory where the device copies asynchronously
    /// (CUDA), a plain vector elsewhere.
    fn host_stage(&self, len: usize) -> HostStage {
        HostStage::plain(len)
    }
    /// stage[..len] = src[off .. off+len]. Queued where the device copies asynchronously (the
    /// stage's `as_slice` waits for it), done at once elsewhere.
    fn read_staged(&self, src: &Self::Buf, off: usize, stage: &mut HostStage, len: usize) {
        check::staged("read_staged", "src", src, off, len, stage.len());
        let values = if off == 0 {
            self.read(src, len)
        } else {
            // through a device buffer of the range: `read` copies from the start only
            let mut part = self.zeros(len);
            self.copy_range(&mut part, 0, src, off, len);
            self.read(&part, len)
        };
        stage.as_mut_slice()[..len].copy_from_slice(&values);
    }
    /// dst[off .. off+len] = stage[..len]. Queued where the device copies asynchronously (the
    /// stage's `as_mut_slice` waits for it before the stage is refilled), done at once elsewhere.
    fn write_staged(&self, dst: &mut Self::Buf, off: usize, stage: &HostStage, len: usize) {
        check::staged("write_staged", "dst", &*dst, off, len, stage.len());
        let values = &stage.as_slice()[..len];
        if off == 0 {
            self.write(dst, values);
        } else {
            let part = self.upload(values);
            self.copy_range(dst, off, &part, 0, len);
        }
    }
    /// Elements `buf` holds.
    fn buf_len(&self, buf: &Self::Buf) -> usize {
        buf.extent()
    }
    fn fill(&self, x: &mut Self::Buf, value: f32, len: usize);
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf, len: usize);
    /// dst[dst_off .. dst_off+len] = src[src_off .. src_off+len] (`=`): rows of one buffer into
    /// another (the chunked LM head moves row blocks in and out of its chunk buffers).
    fn copy_range(&self, dst: &mut Self::Buf, dst_off: usize, src: &Self::Buf, src_off: usize, len: usize);
    /// dst[..n] = the bf16 values packed two per slot in src[..⌈n/2⌉], as f32 (`=`; see
    /// `okapi_kernels::reduce::pack_bf16`): frozen weights kept in bf16.
    fn unpack_bf16(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize);
    /// x *= a
    fn scale(&self, x: &mut Self::Buf, a: f32, len: usize);
    /// y += a·x
    fn axpy(&self, y: &mut Self::Buf, a: f32, x: &Self::Buf, len: usize);

    // ---- ops ----------------------------------------------------------------------------
    fn matmul(&self, c: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf, g: &Gemm);
    /// out (N,C) = table\[ids\] (`=`); `r` = (N tokens, C).
    fn embedding_fwd(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &Self::Ids, r: Rows);
    /// dtable\[ids\] += dout (N,C).
    fn embedding_bwd(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &Self::Ids, r: Rows);
    fn rmsnorm_fwd(&self, t: RmsNormFwd<'_, Self::Buf>, sh: &NormShape);
    fn rmsnorm_bwd(&self, t: RmsNormBwd<'_, Self::Buf>, sh: &NormShape);
    fn layernorm_fwd(&self, t: LayerNormFwd<'_, Self::Buf>, sh: &NormShape);
    fn layernorm_bwd(&self, t: LayerNormBwd<'_, Self::Buf>, sh: &NormShape);
    /// x (N,H,D) rotated in place by each token's position.
    fn rope_fwd(&self, x: &mut Self::Buf, positions: &Self::Ids, inv_freq: &Self::Buf, sh: &RopeShape);
    /// The inverse rotation (the gradient of `rope_fwd`), in place.
    fn rope_bwd(&self, dx: &mut Self::Buf, positions: &Self::Ids, inv_freq: &Self::Buf, sh: &RopeShape);
    /// out and lse (`=`) from the inputs `x`.
    fn attention_fwd(&self, out: &mut Self::Buf, lse: &mut Self::Buf, x: &AttnInputs<'_, Self::Buf, Self::Ids>, sh: &AttnShape);
    /// dq, dk, dv (`=`) from dout and the forward's out and lse.
    fn attention_bwd(&self, d: AttnGrads<'_, Self::Buf>, dout: &Self::Buf, out: &Self::Buf, lse: &Self::Buf, x: &AttnInputs<'_, Self::Buf, Self::Ids>, sh: &AttnShape);
    fn kv_write(&self, cache: &mut Self::Buf, new: &Self::Buf, pos: &Self::Ids, sh: &KvShape);
    /// out (N,V) = softmax(x / temperature) per row.
    fn softmax_fwd(&self, out: &mut Self::Buf, x: &Self::Buf, r: Rows, temperature: f32);
    fn softmax_bwd(&self, dx: &mut Self::Buf, dy: &Self::Buf, y: &Self::Buf, r: Rows);
    fn swiglu_fwd(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf, len: usize);
    fn swiglu_bwd(&self, dgate: &mut Self::Buf, dup: &mut Self::Buf, dout: &Self::Buf, gate: &Self::Buf, up: &Self::Buf, len: usize);
    fn gelu_fwd(&self, out: &mut Self::Buf, x: &Self::Buf, len: usize);
    fn gelu_bwd(&self, dx: &mut Self::Buf, dout: &Self::Buf, x: &Self::Buf, len: usize);
    /// out = gelu_tanh(gate)·up (`=`): Gemma's MLP, with `gelu_fwd`'s GELU.
    fn geglu_fwd(&self, out: &mut Self::Buf, gate: &Self::Buf, up: &Self::Buf, len: usize);
    /// dgate = dout·up·gelu'(gate), dup = dout·gelu(gate) (both `=`).
    fn geglu_bwd(&self, dgate: &mut Self::Buf, dup: &mut Self::Buf, dout: &Self::Buf, gate: &Self::Buf, up: &Self::Buf, len: usize);
    /// x = cap·tanh(x/cap) in place (Gemma 2's final-logit soft-capping; cap > 0).
    fn softcap_fwd(&self, x: &mut Self::Buf, len: usize, cap: f32);
    /// dy *= 1 − (y/cap)² in place, y = `softcap_fwd`'s output.
    fn softcap_bwd(&self, dy: &mut Self::Buf, y: &Self::Buf, len: usize, cap: f32);
    /// out = max(x, 0) (`=`), NaN kept NaN (PyTorch's `relu`).
    fn relu_fwd(&self, out: &mut Self::Buf, x: &Self::Buf, len: usize);
    /// dx = 0 where x ≤ 0, else dout (`=`; PyTorch's `threshold_backward`: 0 at x = 0).
    fn relu_bwd(&self, dx: &mut Self::Buf, dout: &Self::Buf, x: &Self::Buf, len: usize);
    /// out = x·scale where `d`'s mask keeps element i, else exactly 0 even for NaN / ∞ x (`=`,
    /// or `+=` when `d.accumulate`); the mask is the same bit for bit on every backend.
    fn dropout(&self, out: &mut Self::Buf, x: &Self::Buf, d: &Dropout, len: usize);
    /// x (N,C) += bias (C) per row.
    fn bias_add(&self, x: &mut Self::Buf, bias: &Self::Buf, r: Rows);
    /// dbias (C) += Σ_rows dy (N,C).
    fn bias_bwd(&self, dbias: &mut Self::Buf, dy: &Self::Buf, r: Rows);
    /// In place: logits (N,V) become ∂(Σ coef·loss)/∂logits; losses (N) = per-row cross-entropy.
    fn xent_fwd_bwd(&self, logits: &mut Self::Buf, losses: &mut Self::Buf, targets: &Self::Ids, coef: &Self::Buf, r: Rows);
    /// logp (N) = log p(target), greedy (N) = 1 where the target is the row's first argmax.
    fn token_logprobs(&self, logp: &mut Self::Buf, greedy: &mut Self::Buf, logits: &Self::Buf, targets: &Self::Ids, r: Rows);
    /// dlogits (N,V) = coef · ∂ log p(target) / ∂logits (`=`).
    fn token_logprobs_bwd(&self, dlogits: &mut Self::Buf, logits: &Self::Buf, targets: &Self::Ids, coef: &Self::Buf, r: Rows);
    fn adamw(&self, p: &mut Self::Buf, g: &Self::Buf, m: &mut Self::Buf, v: &mut Self::Buf, h: &AdamW, len: usize);
    /// acc\[slot\] = Σ x² over the first len elements (one slot per tensor; read them all at once).
    fn sum_squares(&self, acc: &mut Self::Buf, slot: usize, x: &Self::Buf, len: usize);
}

/// Which backend a command runs on (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Auto,
    Cpu,
    Wgpu,
    Cuda,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(format!("unknown backend `{s}` (expected auto, cpu, wgpu or cuda)")),
        }
    }
}

/// The backends this build contains, for error messages.
pub const BUILT_IN: &str = if cfg!(all(feature = "wgpu", feature = "cuda")) {
    "cpu, wgpu, cuda"
} else if cfg!(feature = "wgpu") {
    "cpu, wgpu"
} else if cfg!(feature = "cuda") {
    "cpu, cuda"
} else {
    "cpu"
};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("backend `{0}` is not available in this build (built in: {BUILT_IN}); see README.md's status table")]
    Unavailable(&'static str),
    /// The wgpu backend could not start (no adapter, device request refused, bad `WGPU_BACKEND`).
    #[error("wgpu: {0}")]
    Wgpu(String),
    /// The CUDA backend could not start (no driver, no device, no NVRTC).
    #[error("cuda: {0}")]
    Cuda(String),
}

/// Arithmetic precision of a GPU backend (`--precision`). `F32`: every op in fp32, the exact
/// mode for parity with the CPU. `Bf16`: matmul and attention read bf16 copies of their inputs
/// and accumulate in fp32; master weights, optimizer state and all other math stay fp32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision `{s}` (expected f32 or bf16)")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl BackendKind {
    /// Resolves `auto` to the best backend present; errors for one that is not built.
    pub fn resolve(self) -> Result<BackendKind, RuntimeError> {
        match self {
            // auto: CUDA when this build has it and a driver, a device and NVRTC are present
            #[cfg(feature = "cuda")]
            BackendKind::Auto if cuda::is_available() => Ok(BackendKind::Cuda),
            BackendKind::Auto | BackendKind::Cpu => Ok(BackendKind::Cpu),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Ok(BackendKind::Wgpu),
            #[cfg(not(feature = "wgpu"))]
            BackendKind::Wgpu => Err(RuntimeError::Unavailable("wgpu")),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(BackendKind::Cuda),
            #[cfg(not(feature = "cuda"))]
            BackendKind::Cuda => Err(RuntimeError::Unavailable("cuda")),
        }
    }
}

/// Runs `f` on a worker of a rayon pool of `threads` threads (0: `RAYON_NUM_THREADS`, else all
/// cores). Parallel kernels called from inside a pool worker push their tasks onto that
/// worker's own queue and run small ones inline; called from outside, every op (hundreds per
/// decode step) would hand its work to the pool and block on a wake-up. The CLI and the
/// benchmarks run their whole job this way.
pub fn run_in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let mut builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("okapi-{i}"));
    if threads > 0 {
        builder = builder.num_threads(threads);
    }
    match builder.build() {
        Ok(pool) => pool.install(f),
        // no threads could be spawned: run on the caller with rayon's global pool
        Err(_) => f(),
    }
}
