//! The CUDA backend: hand-written kernels (okapi-kernels' `<op>.cu` sources, no cuBLAS/cuDNN) compiled
//! at first use by NVRTC for the device's architecture (`sm_90a` on Hopper), through cudarc
//! with dynamic loading — the crate builds with no CUDA installed, and [`CudaBackend::new`]
//! returns a [`RuntimeError`] when the driver (`libcuda.so.1`), a device or NVRTC is missing.
//!
//! One stream per backend; every op is an asynchronous launch on it, and `read` synchronises.
//! A failing launch panics with a message naming the kernel (the `Backend` ops return nothing).
//! Precision ([`Precision`]): `F32` is the exact mode (CPU parity); `Bf16` makes matmul and
//! attention read bf16-rounded operands (tensor cores, `mma.sync` on sm_80+) with fp32
//! accumulation; parameters, optimizer state and every other op stay fp32.
//! Parameter-gradient reductions (embedding, bias, norm weights) are deterministic: fixed
//! chunking and ordered sums, no float atomics.
//!
//! Grids: rows, M tiles, heads and batches that sit in grid.y / grid.z are clamped to
//! [`CUDA_GRID_YZ_MAX`] and the kernels stride over the rest, so any size launches. Kernels that
//! index by a token id (embedding, cross-entropy, token log-probs) check it on the device and
//! report a bad one through a small error buffer; [`CudaBackend::synchronize`] (and every `read`)
//! reads it back and fails with one message naming the kernel, the id, its row and the bound.

pub mod nvrtc;
mod ops;
mod pinned;

pub use pinned::PinnedStage;

use crate::{AdamW, AttnShape, Extent, Precision, RuntimeError};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use okapi_kernels::attention::MAX_HEAD_DIM;
use okapi_kernels::{cuda_error_kind, CUDA_ERR_WORDS, CUDA_GRID_YZ_MAX};
use okapi_kernels::reduce::CUDA_EW_BLOCK as EW_BLOCK;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// f32 values on the device.
pub struct CudaBuf(pub CudaSlice<f32>);
/// u32 ids / positions / lengths on the device.
pub struct CudaIds(pub CudaSlice<u32>);

impl Extent for CudaBuf {
    fn extent(&self) -> usize {
        self.0.len()
    }
}

impl Extent for CudaIds {
    fn extent(&self) -> usize {
        self.0.len()
    }
}

/// How the CUDA backend opens its device.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Device ordinal.
    pub ordinal: usize,
    pub precision: Precision,
    /// Where to find NVRTC beside the default search path.
    pub nvrtc: nvrtc::NvrtcSearch,
    /// Wait for every kernel as it is launched, so a failing kernel is named (debug builds
    /// always do).
    pub sync_launches: bool,
    /// Where compiled kernels are cached on disk ([`nvrtc::compile_cached_in`]); `None`: no cache.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl CudaOptions {
    /// The options the `okapi-train` binary uses: device 0, NVRTC as [`nvrtc::NvrtcSearch::from_env`]
    /// finds it, `OKAPI_CUDA_SYNC` (set: synchronise after every launch), the kernel cache
    /// [`nvrtc::cache_dir`] names (`OKAPI_CUDA_CACHE`, XDG, `~/.cache/okapi/nvrtc`).
    pub fn from_env(precision: Precision) -> CudaOptions {
        CudaOptions {
            ordinal: 0,
            precision,
            nvrtc: nvrtc::NvrtcSearch::from_env(),
            sync_launches: std::env::var_os("OKAPI_CUDA_SYNC").is_some(),
            cache_dir: nvrtc::cache_dir(),
        }
    }
}

#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    device_name: String,
    cc: (i32, i32),
    arch: String,
    precision: Precision,
    sync_launches: bool,
    cache_dir: Option<std::path::PathBuf>,
    smem_optin: i32,
    /// The device error buffer ([`CUDA_ERR_WORDS`] u32, zero while no kernel has reported).
    err: Mutex<CudaSlice<u32>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
}

/// A kernel argument: device pointer, integers, f32.
#[derive(Clone, Copy)]
enum A {
    P(u64),
    I(i32),
    U(u64),
    F(f32),
}

fn family_of(kernel: &str) -> &'static str {
    okapi_kernels::cuda_family_of(kernel).map(|f| f.name).unwrap_or_else(|| panic!("cuda: no kernel family defines `{kernel}`"))
}

/// Whether a CUDA driver library can be loaded (no cudarc call that could panic).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether `auto` should pick CUDA: a driver, at least one device, and NVRTC.
pub fn is_available() -> bool {
    driver_present() && CudaContext::device_count().map(|n| n > 0).unwrap_or(false) && nvrtc::available()
}

/// A grid.y / grid.z extent for `n` rows, tiles, heads or batches: the kernels stride over the
/// ones past [`CUDA_GRID_YZ_MAX`].
fn grid_yz(n: usize) -> u32 {
    n.clamp(1, CUDA_GRID_YZ_MAX) as u32
}

fn ew_grid(n: usize) -> u32 {
    (n.div_ceil(EW_BLOCK as usize)).clamp(1, 65535 * 4) as u32
}
fn row_block(width: usize) -> u32 {
    if width > 2048 {
        1024
    } else {
        256
    }
}

impl CudaBackend {
    /// Opens device `ordinal` at f32 precision, NVRTC from the system's default places.
    pub fn new(ordinal: usize) -> Result<Self, RuntimeError> {
        Self::with_options(&CudaOptions { ordinal, ..CudaOptions::default() })
    }

    /// Opens the device `opts` names.
    pub fn with_options(opts: &CudaOptions) -> Result<Self, RuntimeError> {
        let (ordinal, precision) = (opts.ordinal, opts.precision);
        nvrtc::load(&opts.nvrtc);
        if !driver_present() {
            return Err(RuntimeError::Cuda("no CUDA driver (libcuda.so.1) on this machine".into()));
        }
        let count = CudaContext::device_count().map_err(|e| RuntimeError::Cuda(format!("cuInit / device count: {e:?}")))?;
        if count <= ordinal as i32 {
            return Err(RuntimeError::Cuda(format!("no CUDA device {ordinal} ({count} present)")));
        }
        if !nvrtc::available() {
            return Err(RuntimeError::Cuda("NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC, `pip install nvidia-cuda-nvrtc`, or set OKAPI_NVRTC_LIB".into()));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| RuntimeError::Cuda(format!("context on device {ordinal}: {e:?}")))?;
        // One stream: no cross-stream events needed on every buffer.
        // SAFETY: no buffer exists yet; all work goes through the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| RuntimeError::Cuda(format!("stream: {e:?}")))?;
        let cc = ctx.compute_capability().map_err(|e| RuntimeError::Cuda(format!("compute capability: {e:?}")))?;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let smem_optin = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .unwrap_or(48 * 1024);
        let err = stream.alloc_zeros::<u32>(CUDA_ERR_WORDS).map_err(|e| RuntimeError::Cuda(format!("device error buffer: {e:?}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                ctx,
                stream,
                ordinal,
                device_name,
                arch: nvrtc::arch_for(cc.0, cc.1),
                cc,
                precision,
                sync_launches: opts.sync_launches,
                cache_dir: opts.cache_dir.clone(),
                smem_optin,
                err: Mutex::new(err),
                modules: Mutex::new(HashMap::new()),
                funcs: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn precision(&self) -> Precision {
        self.inner.precision
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.inner.cc
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }
    /// Waits for every queued op (benchmarks time around this), then fails if a kernel reported
    /// a bad id since the last synchronisation (the report is cleared first, so the backend stays
    /// usable after the panic is caught).
    pub fn synchronize(&self) {
        self.inner.stream.synchronize().unwrap_or_else(|e| panic!("cuda: synchronize: {e:?}"));
        if let Some(message) = self.take_device_error() {
            panic!("{message}");
        }
    }

    /// The device error report since the last call, as one message, and the buffer cleared.
    fn take_device_error(&self) -> Option<String> {
        let mut err = self.inner.err.lock().unwrap();
        let mut w = [0u32; CUDA_ERR_WORDS];
        self.inner.stream.memcpy_dtoh(&*err, &mut w).unwrap_or_else(|e| panic!("cuda: reading the device error buffer: {e:?}"));
        self.inner.stream.synchronize().unwrap_or_else(|e| panic!("cuda: synchronize: {e:?}"));
        if w[0] == 0 {
            return None;
        }
        self.inner.stream.memset_zeros(&mut *err).unwrap_or_else(|e| panic!("cuda: clearing the device error buffer: {e:?}"));
        Some(device_error_message(&w))
    }

    /// The error buffer as a kernel argument.
    fn perr(&self) -> A {
        let err = self.inner.err.lock().unwrap();
        self.p(&*err)
    }

    fn func(&self, kernel: &'static str) -> CudaFunction {
        if let Some(f) = self.inner.funcs.lock().unwrap().get(kernel) {
            return f.clone();
        }
        let family = family_of(kernel);
        let module = {
            let mut mods = self.inner.modules.lock().unwrap();
            match mods.get(family) {
                Some(m) => m.clone(),
                None => {
                    let compiled = nvrtc::compile_cached_in(family, &self.inner.arch, self.inner.cache_dir.as_deref()).unwrap_or_else(|e| panic!("cuda: compiling kernel `{kernel}`: {e}"));
                    let m = self
                        .inner
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin))
                        .unwrap_or_else(|e| panic!("cuda: loading {family}.cu for {} (kernel `{kernel}`): {e:?}", self.inner.arch));
                    mods.insert(family, m.clone());
                    m
                }
            }
        };
        let f = module.load_function(kernel).unwrap_or_else(|e| panic!("cuda: kernel `{kernel}` not in {family}.cu: {e:?}"));
        if family == "attention" && kernel != "attn_bwd_dot" && kernel != "kv_write" {
            // dynamic shared memory beyond the default 48 KiB (attention tiles of D up to 256)
            f.set_attribute(cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, self.inner.smem_optin)
                .unwrap_or_else(|e| panic!("cuda: kernel `{kernel}`: shared memory opt-in: {e:?}"));
        }
        self.inner.funcs.lock().unwrap().insert(kernel, f.clone());
        f
    }

    fn launch(&self, kernel: &'static str, grid: (u32, u32, u32), block: u32, smem: usize, args: &[A]) {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return;
        }
        assert!(
            grid.0 <= i32::MAX as u32 && grid.1 as usize <= CUDA_GRID_YZ_MAX && grid.2 as usize <= CUDA_GRID_YZ_MAX,
            "cuda: kernel `{kernel}`: grid {grid:?} exceeds the device's limits (x < 2^31, y and z ≤ {CUDA_GRID_YZ_MAX})"
        );
        assert!(smem <= self.inner.smem_optin as usize, "cuda: kernel `{kernel}` needs {smem} bytes of shared memory, the device allows {}", self.inner.smem_optin);
        let f = self.func(kernel);
        let mut b = self.inner.stream.launch_builder(&f);
        for a in args {
            match a {
                A::P(p) => b.arg(p),
                A::I(i) => b.arg(i),
                A::U(u) => b.arg(u),
                A::F(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem as u32 };
        // SAFETY: each kernel's arguments match its signature in kernels/src/<op>/<op>.cu; the
        // extents were checked by the caller.
        unsafe { b.launch(cfg) }.unwrap_or_else(|e| panic!("cuda: launching kernel `{kernel}`: {e:?}"));
        if cfg!(debug_assertions) || self.inner.sync_launches {
            self.inner.stream.synchronize().unwrap_or_else(|e| panic!("cuda: kernel `{kernel}` failed: {e:?}"));
        }
    }

    fn p<T>(&self, s: &CudaSlice<T>) -> A {
        let (ptr, _sync) = s.device_ptr(&self.inner.stream);
        A::P(ptr)
    }
    fn pb(&self, b: &CudaBuf) -> A {
        self.p(&b.0)
    }
    /// The device address of element `off` of `b` (checked by the caller).
    fn pb_at(&self, b: &CudaBuf, off: usize) -> A {
        match self.pb(b) {
            A::P(ptr) => A::P(ptr + off as u64 * 4),
            _ => unreachable!("pb gives a pointer"),
        }
    }
    fn pi(&self, b: &CudaIds) -> A {
        self.p(&b.0)
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, len: usize, what: &str) -> CudaSlice<T> {
        self.inner.stream.alloc_zeros::<T>(len.max(1)).unwrap_or_else(|e| panic!("cuda: allocating {len} elements for {what}: {e:?}"))
    }

    fn ew(&self, kernel: &'static str, n: usize, args: &[A]) {
        self.launch(kernel, (ew_grid(n), 1, 1), EW_BLOCK, 0, args);
    }

    /// out[col] += Σ rows of a (chunks, c) partial buffer, in chunk order.
    fn col_finish(&self, out: &CudaBuf, part: &CudaSlice<f32>, chunks: usize, c: usize) {
        self.launch("col_finish_f32", ((c as u32).div_ceil(256), 1, 1), 256, 0, &[self.pb(out), self.p(part), A::I(chunks as i32), A::I(c as i32)]);
    }

    fn use_bf16(&self) -> bool {
        self.inner.precision == Precision::Bf16
    }

    /// adamw_f32 on (p, g, m, v, a bf16 copy of the updated p or null), checked by the caller.
    fn adamw_impl(&self, ptrs: [A; 5], h: &AdamW, len: usize) {
        let (decay, step_size, bc2_sqrt) = h.scalars();
        let mut args = ptrs.to_vec();
        args.extend([A::U(len as u64), A::F(decay), A::F(step_size), A::F(bc2_sqrt), A::F(h.beta1), A::F(h.beta2), A::F(h.eps), A::F(h.grad_scale)]);
        self.ew("adamw_f32", len, &args);
    }

    fn attn_head_dim(&self, sh: &AttnShape) {
        assert!(sh.head_dim <= MAX_HEAD_DIM, "attention (cuda): head_dim {} exceeds the kernels' maximum {MAX_HEAD_DIM}", sh.head_dim);
    }
}

/// One line for a device error report (see the kernels' prelude for the layout).
fn device_error_message(w: &[u32; CUDA_ERR_WORDS]) -> String {
    let row = w[3] as u64 | (w[4] as u64) << 32;
    match cuda_error_kind(w[1]) {
        Some((kernel, id, bound)) => format!("cuda: kernel `{kernel}`: {id} {} at row {row} is outside {bound} ({} entries)", w[2], w[5]),
        None => format!("cuda: a kernel reported an unknown error {} (id {}, row {row}, bound {})", w[1], w[2], w[5]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_error_messages_name_kernel_id_row_and_bound() {
        let m = device_error_message(&[1, 2, 70_000, 5, 1, 32_000]);
        assert_eq!(m, "cuda: kernel `xent_fwd_bwd`: target id 70000 at row 4294967301 is outside the vocabulary (32000 entries)");
        let m = device_error_message(&[1, 1, 9, 0, 0, 8]);
        assert_eq!(m, "cuda: kernel `embedding_fwd`: token id 9 at row 0 is outside the embedding table's rows (8 entries)");
        assert!(device_error_message(&[1, 99, 1, 2, 0, 3]).contains("unknown error 99"));
    }

    #[test]
    fn grid_yz_clamps_to_the_device_limit() {
        assert_eq!(grid_yz(0), 1);
        assert_eq!(grid_yz(65_535), 65_535);
        assert_eq!(grid_yz(1 << 40), 65_535);
    }
}
