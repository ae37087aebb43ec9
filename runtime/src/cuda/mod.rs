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

pub mod nvrtc;
mod ops;

use crate::{AdamW, AttnShape, Extent, Precision, RuntimeError};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use okapi_kernels::attention::MAX_HEAD_DIM;
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
}

impl CudaOptions {
    /// The options the `okapi-train` binary uses: device 0, NVRTC as [`nvrtc::NvrtcSearch::from_env`]
    /// finds it, `OKAPI_CUDA_SYNC` (set: synchronise after every launch).
    pub fn from_env(precision: Precision) -> CudaOptions {
        CudaOptions { ordinal: 0, precision, nvrtc: nvrtc::NvrtcSearch::from_env(), sync_launches: std::env::var_os("OKAPI_CUDA_SYNC").is_some() }
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
    smem_optin: i32,
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
                smem_optin,
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
    /// Waits for every queued op (benchmarks time around this).
    pub fn synchronize(&self) {
        self.inner.stream.synchronize().unwrap_or_else(|e| panic!("cuda: synchronize: {e:?}"));
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
                    let compiled = nvrtc::compile(family, &self.inner.arch).unwrap_or_else(|e| panic!("cuda: compiling kernel `{kernel}`: {e}"));
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
