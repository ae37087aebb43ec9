//! The CUDA backend: hand-written kernels (`kernels/src/<op>/<op>.cu`, no cuBLAS/cuDNN) compiled
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

use crate::{AdamW, AttnShape, Backend, Gemm, Precision, RuntimeError};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// f32 values on the device.
pub struct CudaBuf(pub CudaSlice<f32>);
/// u32 ids / positions / lengths on the device.
pub struct CudaIds(pub CudaSlice<u32>);

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

/// Every kernel the backend launches and the family (`kernels/src/<family>/<family>.cu`) that
/// defines it; the compile test checks each is defined there.
pub const KERNELS: &[(&str, &str)] = &[
    ("matmul_f32", "matmul"),
    ("matmul_bf16_mma", "matmul"),
    ("attn_fwd", "attention"),
    ("attn_bwd_dot", "attention"),
    ("attn_bwd_dkdv", "attention"),
    ("attn_bwd_dq", "attention"),
    ("kv_write", "attention"),
    ("rmsnorm_fwd", "norm"),
    ("rmsnorm_bwd_dx", "norm"),
    ("rmsnorm_dw_partial", "norm"),
    ("layernorm_fwd", "norm"),
    ("layernorm_bwd_dx", "norm"),
    ("layernorm_dwdb_partial", "norm"),
    ("rope", "rope"),
    ("swiglu_fwd", "activation"),
    ("swiglu_bwd", "activation"),
    ("gelu_fwd", "activation"),
    ("gelu_bwd", "activation"),
    ("softmax_fwd", "softmax"),
    ("softmax_bwd", "softmax"),
    ("xent_fwd_bwd", "xent"),
    ("token_logprobs", "xent"),
    ("token_logprobs_bwd", "xent"),
    ("adamw_f32", "adamw"),
    ("embedding_fwd", "embedding"),
    ("embedding_bwd", "embedding"),
    ("fill_f32", "reduce"),
    ("copy_f32", "reduce"),
    ("scale_f32", "reduce"),
    ("axpy_f32", "reduce"),
    ("bias_add_f32", "reduce"),
    ("col_partial_f32", "reduce"),
    ("col_finish_f32", "reduce"),
    ("sum_squares_partial", "reduce"),
    ("sum_squares_finish", "reduce"),
    ("f32_to_bf16", "reduce"),
];

fn family_of(kernel: &str) -> &'static str {
    KERNELS.iter().find(|(k, _)| *k == kernel).map(|(_, f)| *f).unwrap_or_else(|| panic!("cuda: unknown kernel `{kernel}`"))
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

const EW_BLOCK: u32 = 256;
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
/// Rows per chunk of the deterministic column sums.
const COL_CHUNK: usize = 64;
/// Blocks of the first pass of sum_squares (fixed, so the sum's order is fixed).
const SSQ_BLOCKS: usize = 512;

impl CudaBackend {
    /// Opens device `ordinal` at f32 precision.
    pub fn new(ordinal: usize) -> Result<Self, RuntimeError> {
        Self::with_precision(ordinal, Precision::F32)
    }

    pub fn with_precision(ordinal: usize, precision: Precision) -> Result<Self, RuntimeError> {
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
        if cfg!(debug_assertions) || std::env::var_os("OKAPI_CUDA_SYNC").is_some() {
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

    /// AdamW that also writes a bf16 copy of the updated weights (`p_bf16`, same length).
    pub fn adamw_with_bf16_copy(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, p_bf16: &mut CudaSlice<u16>, h: &AdamW, len: usize) {
        assert!(p_bf16.len() >= len, "adamw: bf16 copy shorter than the parameter");
        let pb = self.p(p_bf16);
        self.adamw_impl(p, g, m, v, pb, h, len);
    }

    #[allow(clippy::too_many_arguments)]
    fn adamw_impl(&self, p: &CudaBuf, g: &CudaBuf, m: &CudaBuf, v: &CudaBuf, p_bf16: A, h: &AdamW, len: usize) {
        assert!(p.0.len() >= len && g.0.len() >= len && m.0.len() >= len && v.0.len() >= len, "adamw: state shorter than the parameter");
        let (decay, step_size, bc2_sqrt) = h.scalars();
        self.ew(
            "adamw_f32",
            len,
            &[
                self.pb(p),
                self.pb(g),
                self.pb(m),
                self.pb(v),
                p_bf16,
                A::U(len as u64),
                A::F(decay),
                A::F(step_size),
                A::F(bc2_sqrt),
                A::F(h.beta1),
                A::F(h.beta2),
                A::F(h.eps),
                A::F(h.grad_scale),
            ],
        );
    }

    fn attn_common(&self, sh: &AttnShape, q_pos0: &CudaIds, kv_len: &CudaIds) {
        assert!(sh.n_kv_heads > 0 && sh.n_heads % sh.n_kv_heads == 0, "attention: {} heads not divisible by {} kv heads", sh.n_heads, sh.n_kv_heads);
        assert!(sh.head_dim <= 256, "cuda attention: head_dim {} > 256", sh.head_dim);
        assert!(q_pos0.0.len() >= sh.batch && kv_len.0.len() >= sh.batch, "attention: q_pos0/kv_len shorter than the batch");
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Ids = CudaIds;

    fn name(&self) -> String {
        let i = &self.inner;
        format!("cuda:{} {} ({}, {})", i.ordinal, i.device_name, i.arch, i.precision)
    }
    fn synchronize(&self) {
        CudaBackend::synchronize(self);
    }
    fn zeros(&self, len: usize) -> CudaBuf {
        CudaBuf(self.alloc(len, "zeros"))
    }
    fn upload(&self, data: &[f32]) -> CudaBuf {
        let mut b = self.zeros(data.len());
        self.write(&mut b, data);
        b
    }
    fn upload_ids(&self, data: &[u32]) -> CudaIds {
        let mut b = CudaIds(self.alloc(data.len(), "ids"));
        self.write_ids(&mut b, data);
        b
    }
    fn write(&self, dst: &mut CudaBuf, data: &[f32]) {
        if data.is_empty() {
            return;
        }
        assert!(dst.0.len() >= data.len(), "write: {} values into a buffer of {}", data.len(), dst.0.len());
        self.inner.stream.memcpy_htod(data, &mut dst.0.slice_mut(..data.len())).unwrap_or_else(|e| panic!("cuda: upload: {e:?}"));
    }
    fn write_ids(&self, dst: &mut CudaIds, data: &[u32]) {
        if data.is_empty() {
            return;
        }
        assert!(dst.0.len() >= data.len(), "write_ids: {} ids into a buffer of {}", data.len(), dst.0.len());
        self.inner.stream.memcpy_htod(data, &mut dst.0.slice_mut(..data.len())).unwrap_or_else(|e| panic!("cuda: upload ids: {e:?}"));
    }
    fn read(&self, src: &CudaBuf, len: usize) -> Vec<f32> {
        let mut out = vec![0f32; len];
        if len > 0 {
            self.inner.stream.memcpy_dtoh(&src.0.slice(..len), &mut out).unwrap_or_else(|e| panic!("cuda: download: {e:?}"));
        }
        self.synchronize();
        out
    }
    fn buf_len(&self, buf: &CudaBuf) -> usize {
        buf.0.len()
    }
    fn fill(&self, x: &mut CudaBuf, value: f32, len: usize) {
        assert!(x.0.len() >= len);
        self.ew("fill_f32", len, &[self.pb(x), A::F(value), A::U(len as u64)]);
    }
    fn copy(&self, dst: &mut CudaBuf, src: &CudaBuf, len: usize) {
        assert!(dst.0.len() >= len && src.0.len() >= len);
        self.ew("copy_f32", len, &[self.pb(dst), self.pb(src), A::U(len as u64)]);
    }
    fn scale(&self, x: &mut CudaBuf, a: f32, len: usize) {
        assert!(x.0.len() >= len);
        self.ew("scale_f32", len, &[self.pb(x), A::F(a), A::U(len as u64)]);
    }
    fn axpy(&self, y: &mut CudaBuf, a: f32, x: &CudaBuf, len: usize) {
        assert!(y.0.len() >= len && x.0.len() >= len);
        self.ew("axpy_f32", len, &[self.pb(y), A::F(a), self.pb(x), A::U(len as u64)]);
    }

    fn matmul(&self, c: &mut CudaBuf, a: &CudaBuf, b: &CudaBuf, g: &Gemm) {
        let (ea, eb, ec) = g.extents();
        assert!(a.0.len() >= ea && b.0.len() >= eb && c.0.len() >= ec, "matmul: operands too small for {g:?}");
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return;
        }
        let mma = self.use_bf16() && self.inner.cc.0 >= 8;
        let (kernel, block) = if mma { ("matmul_bf16_mma", 128) } else { ("matmul_f32", 256) };
        let grid = ((g.n as u32).div_ceil(64), (g.m as u32).div_ceil(64), g.batch as u32);
        self.launch(
            kernel,
            grid,
            block,
            0,
            &[
                self.pb(c),
                self.pb(a),
                self.pb(b),
                A::I(g.m as i32),
                A::I(g.n as i32),
                A::I(g.k as i32),
                A::I(g.trans_a as i32),
                A::I(g.trans_b as i32),
                A::F(g.alpha),
                A::F(g.beta),
                A::U(g.stride_a as u64),
                A::U(g.stride_b as u64),
                A::U(g.stride_c as u64),
            ],
        );
    }

    fn embedding_fwd(&self, out: &mut CudaBuf, table: &CudaBuf, ids: &CudaIds, n: usize, c: usize) {
        assert!(out.0.len() >= n * c && ids.0.len() >= n);
        self.launch("embedding_fwd", (n as u32, 1, 1), 256, 0, &[self.pb(out), self.pb(table), self.pi(ids), A::I(c as i32)]);
    }
    fn embedding_bwd(&self, dtable: &mut CudaBuf, dout: &CudaBuf, ids: &CudaIds, n: usize, c: usize) {
        if n == 0 {
            return;
        }
        assert!(dout.0.len() >= n * c && ids.0.len() >= n);
        // group the tokens by id on the host (n ids): order sorted by (id, position)
        let mut host = vec![0u32; n];
        self.inner.stream.memcpy_dtoh(&ids.0.slice(..n), &mut host).unwrap_or_else(|e| panic!("cuda: embedding_bwd ids: {e:?}"));
        self.synchronize();
        let v = dtable.0.len() / c.max(1);
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_by_key(|&i| (host[i as usize], i));
        let mut starts = vec![0u32];
        for i in 1..=n {
            if i == n || host[order[i] as usize] != host[order[i - 1] as usize] {
                starts.push(i as u32);
            }
        }
        for &s in &starts[..starts.len() - 1] {
            let id = host[order[s as usize] as usize] as usize;
            assert!(id < v, "embedding_bwd: id {id} outside the table of {v} rows");
        }
        let groups = starts.len() - 1;
        let order_d = self.upload_ids(&order);
        let starts_d = self.upload_ids(&starts);
        let col_blocks = (c as u32).div_ceil(256).min(8);
        self.launch("embedding_bwd", (groups as u32, col_blocks, 1), 256, 0, &[self.pb(dtable), self.pb(dout), self.pi(ids), self.pi(&order_d), self.pi(&starts_d), A::I(c as i32)]);
    }

    fn rmsnorm_fwd(&self, out: &mut CudaBuf, rstd: &mut CudaBuf, x: &CudaBuf, w: &CudaBuf, n: usize, c: usize, eps: f32) {
        assert!(out.0.len() >= n * c && x.0.len() >= n * c && rstd.0.len() >= n && w.0.len() >= c);
        self.launch("rmsnorm_fwd", (n as u32, 1, 1), row_block(c), 0, &[self.pb(out), self.pb(rstd), self.pb(x), self.pb(w), A::I(c as i32), A::F(eps)]);
    }
    fn rmsnorm_bwd(&self, dx: &mut CudaBuf, dw: &mut CudaBuf, dy: &CudaBuf, x: &CudaBuf, w: &CudaBuf, rstd: &CudaBuf, n: usize, c: usize) {
        assert!(dx.0.len() >= n * c && dy.0.len() >= n * c && x.0.len() >= n * c && dw.0.len() >= c && rstd.0.len() >= n);
        if n == 0 {
            return;
        }
        let chunks = n.div_ceil(COL_CHUNK);
        let part = self.alloc::<f32>(chunks * c, "rmsnorm dw partials");
        self.launch(
            "rmsnorm_dw_partial",
            ((c as u32).div_ceil(256), chunks as u32, 1),
            256,
            0,
            &[self.p(&part), self.pb(dy), self.pb(x), self.pb(rstd), A::I(n as i32), A::I(c as i32), A::I(COL_CHUNK as i32)],
        );
        self.col_finish(dw, &part, chunks, c);
        self.launch("rmsnorm_bwd_dx", (n as u32, 1, 1), row_block(c), 0, &[self.pb(dx), self.pb(dy), self.pb(x), self.pb(w), self.pb(rstd), A::I(c as i32)]);
    }
    fn layernorm_fwd(&self, out: &mut CudaBuf, mean: &mut CudaBuf, rstd: &mut CudaBuf, x: &CudaBuf, w: &CudaBuf, b: &CudaBuf, n: usize, c: usize, eps: f32) {
        assert!(out.0.len() >= n * c && x.0.len() >= n * c && mean.0.len() >= n && rstd.0.len() >= n && w.0.len() >= c && b.0.len() >= c);
        self.launch(
            "layernorm_fwd",
            (n as u32, 1, 1),
            row_block(c),
            0,
            &[self.pb(out), self.pb(mean), self.pb(rstd), self.pb(x), self.pb(w), self.pb(b), A::I(c as i32), A::F(eps)],
        );
    }
    fn layernorm_bwd(
        &self,
        dx: &mut CudaBuf,
        dw: &mut CudaBuf,
        db: &mut CudaBuf,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        mean: &CudaBuf,
        rstd: &CudaBuf,
        n: usize,
        c: usize,
    ) {
        assert!(dx.0.len() >= n * c && dy.0.len() >= n * c && x.0.len() >= n * c && dw.0.len() >= c && db.0.len() >= c && mean.0.len() >= n && rstd.0.len() >= n);
        if n == 0 {
            return;
        }
        let chunks = n.div_ceil(COL_CHUNK);
        let pw = self.alloc::<f32>(chunks * c, "layernorm dw partials");
        let pbias = self.alloc::<f32>(chunks * c, "layernorm db partials");
        self.launch(
            "layernorm_dwdb_partial",
            ((c as u32).div_ceil(256), chunks as u32, 1),
            256,
            0,
            &[self.p(&pw), self.p(&pbias), self.pb(dy), self.pb(x), self.pb(mean), self.pb(rstd), A::I(n as i32), A::I(c as i32), A::I(COL_CHUNK as i32)],
        );
        self.col_finish(dw, &pw, chunks, c);
        self.col_finish(db, &pbias, chunks, c);
        self.launch(
            "layernorm_bwd_dx",
            (n as u32, 1, 1),
            row_block(c),
            0,
            &[self.pb(dx), self.pb(dy), self.pb(x), self.pb(w), self.pb(mean), self.pb(rstd), A::I(c as i32)],
        );
    }
    fn rope_fwd(&self, x: &mut CudaBuf, positions: &CudaIds, inv_freq: &CudaBuf, n: usize, n_heads: usize, head_dim: usize) {
        assert!(x.0.len() >= n * n_heads * head_dim && positions.0.len() >= n && inv_freq.0.len() >= head_dim / 2);
        self.ew("rope", n * n_heads * head_dim / 2, &[self.pb(x), self.pi(positions), self.pb(inv_freq), A::I(n as i32), A::I(n_heads as i32), A::I(head_dim as i32), A::F(1.0)]);
    }
    fn rope_bwd(&self, dx: &mut CudaBuf, positions: &CudaIds, inv_freq: &CudaBuf, n: usize, n_heads: usize, head_dim: usize) {
        assert!(dx.0.len() >= n * n_heads * head_dim && positions.0.len() >= n && inv_freq.0.len() >= head_dim / 2);
        self.ew("rope", n * n_heads * head_dim / 2, &[self.pb(dx), self.pi(positions), self.pb(inv_freq), A::I(n as i32), A::I(n_heads as i32), A::I(head_dim as i32), A::F(-1.0)]);
    }

    fn attention_fwd(
        &self,
        out: &mut CudaBuf,
        lse: &mut CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        q_pos0: &CudaIds,
        kv_len: &CudaIds,
        alibi: Option<&CudaBuf>,
        sh: &AttnShape,
    ) {
        self.attn_common(sh, q_pos0, kv_len);
        let (d, hq) = (sh.head_dim, sh.n_heads);
        let kw = sh.n_kv_heads * d;
        assert!(q.0.len() >= sh.batch * sh.tq * hq * d && k.0.len() >= sh.batch * sh.tk * kw && v.0.len() >= sh.batch * sh.tk * kw, "attention_fwd: inputs too small for {sh:?}");
        assert!(out.0.len() >= sh.batch * sh.tq * hq * d && lse.0.len() >= sh.batch * sh.tq * hq, "attention_fwd: outputs too small for {sh:?}");
        let smem = (16 * d + 2 * 32 * (d + 1)) * 4;
        let al = alibi.map_or(A::P(0), |a| self.pb(a));
        self.launch(
            "attn_fwd",
            ((sh.tq as u32).div_ceil(16), hq as u32, sh.batch as u32),
            128,
            smem,
            &[
                self.pb(out),
                self.pb(lse),
                self.pb(q),
                self.pb(k),
                self.pb(v),
                self.pi(q_pos0),
                self.pi(kv_len),
                al,
                A::I(sh.tq as i32),
                A::I(sh.tk as i32),
                A::I(hq as i32),
                A::I(sh.n_kv_heads as i32),
                A::I(d as i32),
                A::F(sh.scale),
                A::I(sh.causal as i32),
                A::I(self.use_bf16() as i32),
            ],
        );
    }
    fn attention_bwd(
        &self,
        dq: &mut CudaBuf,
        dk: &mut CudaBuf,
        dv: &mut CudaBuf,
        dout: &CudaBuf,
        q: &CudaBuf,
        k: &CudaBuf,
        v: &CudaBuf,
        out: &CudaBuf,
        lse: &CudaBuf,
        q_pos0: &CudaIds,
        kv_len: &CudaIds,
        alibi: Option<&CudaBuf>,
        sh: &AttnShape,
    ) {
        self.attn_common(sh, q_pos0, kv_len);
        let (d, hq, hkv) = (sh.head_dim, sh.n_heads, sh.n_kv_heads);
        let kw = hkv * d;
        let rows = sh.batch * sh.tq * hq;
        assert!(q.0.len() >= rows * d && k.0.len() >= sh.batch * sh.tk * kw && v.0.len() >= sh.batch * sh.tk * kw, "attention_bwd: inputs too small for {sh:?}");
        assert!(dout.0.len() >= rows * d && out.0.len() >= rows * d && lse.0.len() >= rows, "attention_bwd: saved tensors too small for {sh:?}");
        assert!(dq.0.len() >= rows * d && dk.0.len() >= sh.batch * sh.tk * kw && dv.0.len() >= sh.batch * sh.tk * kw, "attention_bwd: gradient buffers too small for {sh:?}");
        let dsum = self.alloc::<f32>(rows, "attention D_i");
        self.launch("attn_bwd_dot", ((rows as u32).div_ceil(8).clamp(1, 65535 * 4), 1, 1), 256, 0, &[self.p(&dsum), self.pb(dout), self.pb(out), A::U(rows as u64), A::I(d as i32)]);
        let al = alibi.map_or(A::P(0), |a| self.pb(a));
        let common = [
            self.pi(q_pos0),
            self.pi(kv_len),
            al,
            A::I(sh.tq as i32),
            A::I(sh.tk as i32),
            A::I(hq as i32),
            A::I(hkv as i32),
            A::I(d as i32),
            A::F(sh.scale),
            A::I(sh.causal as i32),
            A::I(self.use_bf16() as i32),
        ];
        let bk = if d <= 128 { 32 } else { 16 };
        let smem = (2 * bk * (d + 1) + 2 * bk * d + 2 * 8 * d + 2 * 8 * bk) * 4;
        let mut args = vec![self.pb(dk), self.pb(dv), self.pb(dout), self.pb(q), self.pb(k), self.pb(v), self.pb(lse), self.p(&dsum)];
        args.extend_from_slice(&common);
        args.push(A::I(bk as i32));
        self.launch("attn_bwd_dkdv", ((sh.tk as u32).div_ceil(bk as u32), hkv as u32, sh.batch as u32), 128, smem, &args);
        let smem = (2 * 16 * d + 2 * 32 * (d + 1)) * 4;
        let mut args = vec![self.pb(dq), self.pb(dout), self.pb(q), self.pb(k), self.pb(v), self.pb(lse), self.p(&dsum)];
        args.extend_from_slice(&common);
        self.launch("attn_bwd_dq", ((sh.tq as u32).div_ceil(16), hq as u32, sh.batch as u32), 128, smem, &args);
    }
    fn kv_write(&self, cache: &mut CudaBuf, new: &CudaBuf, pos: &CudaIds, batch: usize, t_new: usize, t_cap: usize, width: usize) {
        assert!(cache.0.len() >= batch * t_cap * width && new.0.len() >= batch * t_new * width && pos.0.len() >= batch);
        self.ew("kv_write", batch * t_new * width, &[self.pb(cache), self.pb(new), self.pi(pos), A::I(batch as i32), A::I(t_new as i32), A::I(t_cap as i32), A::I(width as i32)]);
    }
    fn softmax_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, n: usize, v: usize, temperature: f32) {
        assert!(out.0.len() >= n * v && x.0.len() >= n * v);
        self.launch("softmax_fwd", (n as u32, 1, 1), row_block(v), 0, &[self.pb(out), self.pb(x), A::I(v as i32), A::F(temperature)]);
    }
    fn softmax_bwd(&self, dx: &mut CudaBuf, dy: &CudaBuf, y: &CudaBuf, n: usize, v: usize) {
        assert!(dx.0.len() >= n * v && dy.0.len() >= n * v && y.0.len() >= n * v);
        self.launch("softmax_bwd", (n as u32, 1, 1), row_block(v), 0, &[self.pb(dx), self.pb(dy), self.pb(y), A::I(v as i32)]);
    }
    fn swiglu_fwd(&self, out: &mut CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        assert!(out.0.len() >= len && gate.0.len() >= len && up.0.len() >= len);
        self.ew("swiglu_fwd", len, &[self.pb(out), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn swiglu_bwd(&self, dgate: &mut CudaBuf, dup: &mut CudaBuf, dout: &CudaBuf, gate: &CudaBuf, up: &CudaBuf, len: usize) {
        assert!(dgate.0.len() >= len && dup.0.len() >= len && dout.0.len() >= len && gate.0.len() >= len && up.0.len() >= len);
        self.ew("swiglu_bwd", len, &[self.pb(dgate), self.pb(dup), self.pb(dout), self.pb(gate), self.pb(up), A::U(len as u64)]);
    }
    fn gelu_fwd(&self, out: &mut CudaBuf, x: &CudaBuf, len: usize) {
        assert!(out.0.len() >= len && x.0.len() >= len);
        self.ew("gelu_fwd", len, &[self.pb(out), self.pb(x), A::U(len as u64)]);
    }
    fn gelu_bwd(&self, dx: &mut CudaBuf, dout: &CudaBuf, x: &CudaBuf, len: usize) {
        assert!(dx.0.len() >= len && dout.0.len() >= len && x.0.len() >= len);
        self.ew("gelu_bwd", len, &[self.pb(dx), self.pb(dout), self.pb(x), A::U(len as u64)]);
    }
    fn bias_add(&self, x: &mut CudaBuf, bias: &CudaBuf, n: usize, c: usize) {
        assert!(x.0.len() >= n * c && bias.0.len() >= c);
        self.ew("bias_add_f32", n * c, &[self.pb(x), self.pb(bias), A::U(n as u64), A::I(c as i32)]);
    }
    fn bias_bwd(&self, dbias: &mut CudaBuf, dy: &CudaBuf, n: usize, c: usize) {
        assert!(dbias.0.len() >= c && dy.0.len() >= n * c);
        if n == 0 {
            return;
        }
        let chunks = n.div_ceil(COL_CHUNK);
        let part = self.alloc::<f32>(chunks * c, "bias_bwd partials");
        self.launch(
            "col_partial_f32",
            ((c as u32).div_ceil(256), chunks as u32, 1),
            256,
            0,
            &[self.p(&part), self.pb(dy), A::I(n as i32), A::I(c as i32), A::I(COL_CHUNK as i32)],
        );
        self.col_finish(dbias, &part, chunks, c);
    }
    fn xent_fwd_bwd(&self, logits: &mut CudaBuf, losses: &mut CudaBuf, targets: &CudaIds, coef: &CudaBuf, n: usize, v: usize) {
        assert!(logits.0.len() >= n * v && losses.0.len() >= n && targets.0.len() >= n && coef.0.len() >= n);
        self.launch("xent_fwd_bwd", (n as u32, 1, 1), row_block(v), 0, &[self.pb(logits), self.pb(losses), self.pi(targets), self.pb(coef), A::I(v as i32)]);
    }
    fn token_logprobs(&self, logp: &mut CudaBuf, greedy: &mut CudaBuf, logits: &CudaBuf, targets: &CudaIds, n: usize, v: usize) {
        assert!(logp.0.len() >= n && greedy.0.len() >= n && logits.0.len() >= n * v && targets.0.len() >= n);
        self.launch("token_logprobs", (n as u32, 1, 1), row_block(v), 0, &[self.pb(logp), self.pb(greedy), self.pb(logits), self.pi(targets), A::I(v as i32)]);
    }
    fn token_logprobs_bwd(&self, dlogits: &mut CudaBuf, logits: &CudaBuf, targets: &CudaIds, coef: &CudaBuf, n: usize, v: usize) {
        assert!(dlogits.0.len() >= n * v && logits.0.len() >= n * v && targets.0.len() >= n && coef.0.len() >= n);
        self.launch("token_logprobs_bwd", (n as u32, 1, 1), row_block(v), 0, &[self.pb(dlogits), self.pb(logits), self.pi(targets), self.pb(coef), A::I(v as i32)]);
    }
    fn adamw(&self, p: &mut CudaBuf, g: &CudaBuf, m: &mut CudaBuf, v: &mut CudaBuf, h: &AdamW, len: usize) {
        self.adamw_impl(p, g, m, v, A::P(0), h, len);
    }
    fn sum_squares(&self, acc: &mut CudaBuf, slot: usize, x: &CudaBuf, len: usize) {
        assert!(acc.0.len() > slot && x.0.len() >= len);
        let part = self.alloc::<f64>(SSQ_BLOCKS, "sum_squares partials");
        self.launch("sum_squares_partial", (SSQ_BLOCKS as u32, 1, 1), 256, 0, &[self.p(&part), self.pb(x), A::U(len as u64)]);
        self.launch("sum_squares_finish", (1, 1, 1), 256, 0, &[self.pb(acc), A::I(slot as i32), self.p(&part), A::I(SSQ_BLOCKS as i32)]);
    }
}
