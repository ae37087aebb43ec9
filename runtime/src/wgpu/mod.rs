//! The wgpu backend: Vulkan / Metal / DX12 through `wgpu`, kernels in WGSL (from okapi-kernels).
//!
//! Files: `device.rs` (adapter, device, buffers, scratch pool, read-back), `pipelines.rs` (the
//! pipeline cache and the WGSL validation check), `batch.rs` (recording dispatches into one
//! command encoder, params arena, submission), `ops/` (one file per op family).
//!
//! Buffers are plain storage buffers of f32 (`WBuf`) or u32 (`WIds`). Every op records one or
//! more compute dispatches into the backend's current command encoder; the encoder is submitted
//! when a host read needs the results, when a host write must be ordered after the recorded
//! work, on `flush`, or every [`MAX_PENDING`] dispatches. wgpu inserts the barriers between
//! dispatches that touch the same buffer, so ops run in program order.
//!
//! # Kernel conventions (for every `.wgsl` in okapi-kernels)
//!
//! * `@group(0) @binding(0)`: a uniform struct of 4-byte scalars (`u32`, `i32`, `f32`) — the
//!   `params` words of `WgpuBackend::dispatch` in declaration order (f32 passed as
//!   `f32::to_bits`). The buffer is zero-padded to a multiple of 16 bytes.
//! * `@group(0) @binding(1..=k)`: the storage buffers passed to `dispatch`, in order. Declare
//!   inputs `read` and outputs `read_write`: the pipeline layout is derived from the shader.
//!   Bindings an entry point does not use are left out of its bind group automatically.
//! * Large 1-D launches: the device allows at most 65535 workgroups per dimension, so use
//!   `groups_1d` on the host and fold the index back in the shader:
//!   ```wgsl
//!   @compute @workgroup_size(256)
//!   fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
//!           @builtin(local_invocation_index) lid: u32) {
//!       let i = (wid.x + wid.y * nwg.x) * 256u + lid;
//!       if (i >= p.n) { return; }   // the grid is rounded up: always bounds-check
//!       ...
//!   }
//!   ```
//! * Deterministic: no float atomics; every reduction sums in a fixed order.

mod batch;
mod device;
mod ops;
mod pipelines;

pub use batch::{MAX_GROUPS_PER_DIM, MAX_PENDING};
pub use pipelines::validate_wgsl;

use crate::{AdamW, AttnGrads, AttnInputs, AttnShape, Backend, Dropout, Extent, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, RmsNormBwd, RmsNormFwd, RopeShape, RuntimeError, Rows};
use device::Ctx;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device buffer of f32 (`len` elements; usage STORAGE | COPY_SRC | COPY_DST).
pub struct WBuf {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
}

/// A device buffer of u32 (`len` elements).
pub struct WIds {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) len: usize,
}

impl WBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl WIds {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Extent for WBuf {
    fn extent(&self) -> usize {
        self.len
    }
}

impl Extent for WIds {
    fn extent(&self) -> usize {
        self.len
    }
}

/// How the wgpu backend picks its adapter.
#[derive(Clone, Debug, Default)]
pub struct WgpuOptions {
    /// Native backends to consider, comma separated: `vulkan`, `metal`, `dx12`, `gl` (this build
    /// compiles Vulkan, Metal and DX12 only). `None`: all. The CLI passes `WGPU_BACKEND`.
    pub backends: Option<String>,
}

impl WgpuOptions {
    /// The options the `okapi-train` binary uses: `WGPU_BACKEND` from the environment.
    pub fn from_env() -> WgpuOptions {
        WgpuOptions { backends: std::env::var("WGPU_BACKEND").ok() }
    }
}

/// The wgpu backend (cheap to clone: one shared device and queue).
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Ctx>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WgpuBackend {
    /// Opens the best adapter of any backend. On Linux without a GPU, Mesa's lavapipe
    /// (`mesa-vulkan-drivers`) is a Vulkan adapter on the CPU.
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_options(&WgpuOptions::default())
    }

    /// Opens the best adapter among `opts.backends`.
    pub fn with_options(opts: &WgpuOptions) -> Result<Self, RuntimeError> {
        Ok(Self { ctx: Arc::new(Ctx::open(opts)?) })
    }

    /// Device → host, the first `len` u32 of an ids buffer.
    pub fn read_ids(&self, src: &WIds, len: usize) -> Vec<u32> {
        crate::check::len("read_ids", &[("src", src)], len);
        bytemuck::pod_collect_to_vec(&self.read_bytes(&src.buf, len as u64 * 4))
    }

    fn write_bytes(&self, dst: &wgpu::Buffer, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // queue writes land before the next submission: submit the work recorded so far first
        self.flush();
        self.ctx.queue.write_buffer(dst, 0, bytes);
    }
}

impl Backend for WgpuBackend {
    type Buf = WBuf;
    type Ids = WIds;

    fn name(&self) -> String {
        format!("wgpu ({})", self.adapter_name())
    }
    fn device_memory(&self) -> crate::memory::DeviceMemory {
        // wgpu does not report free memory; its per-buffer limit is checked on allocation
        crate::memory::DeviceMemory::Unknown
    }
    fn synchronize(&self) {
        self.sync();
    }
    fn zeros(&self, len: usize) -> WBuf {
        WBuf { buf: self.new_buffer(len, "f32 buffer"), len }
    }
    fn upload(&self, data: &[f32]) -> WBuf {
        WBuf { buf: self.init_buffer(bytemuck::cast_slice(data), data.len(), "f32 buffer"), len: data.len() }
    }
    fn upload_ids(&self, data: &[u32]) -> WIds {
        WIds { buf: self.init_buffer(bytemuck::cast_slice(data), data.len(), "u32 buffer"), len: data.len() }
    }
    fn write(&self, dst: &mut WBuf, data: &[f32]) {
        crate::check::len("write", &[("dst", &*dst)], data.len());
        self.write_bytes(&dst.buf, bytemuck::cast_slice(data));
    }
    fn write_ids(&self, dst: &mut WIds, data: &[u32]) {
        crate::check::len("write_ids", &[("dst", &*dst)], data.len());
        self.write_bytes(&dst.buf, bytemuck::cast_slice(data));
    }
    fn read(&self, src: &WBuf, len: usize) -> Vec<f32> {
        crate::check::len("read", &[("src", src)], len);
        bytemuck::pod_collect_to_vec(&self.read_bytes(&src.buf, len as u64 * 4))
    }
    fn fill(&self, x: &mut WBuf, value: f32, len: usize) {
        self.op_fill(x, value, len)
    }
    fn copy(&self, dst: &mut WBuf, src: &WBuf, len: usize) {
        crate::check::len("copy", &[("dst", &*dst), ("src", src)], len);
        self.record_copy(&src.buf, &dst.buf, len as u64 * 4);
    }
    fn copy_range(&self, dst: &mut WBuf, dst_off: usize, src: &WBuf, src_off: usize, len: usize) {
        crate::check::range("copy_range", "dst", &*dst, dst_off, len);
        crate::check::range("copy_range", "src", src, src_off, len);
        self.record_copy_at(&src.buf, src_off as u64 * 4, &dst.buf, dst_off as u64 * 4, len as u64 * 4);
    }
    fn unpack_bf16(&self, dst: &mut WBuf, src: &WBuf, n: usize) {
        self.op_unpack_bf16(dst, src, n)
    }
    fn scale(&self, x: &mut WBuf, a: f32, len: usize) {
        self.op_scale(x, a, len)
    }
    fn axpy(&self, y: &mut WBuf, a: f32, x: &WBuf, len: usize) {
        self.op_axpy(y, a, x, len)
    }
    fn matmul(&self, c: &mut WBuf, a: &WBuf, b: &WBuf, g: &Gemm) {
        self.op_matmul(c, a, b, g)
    }
    fn embedding_fwd(&self, out: &mut WBuf, table: &WBuf, ids: &WIds, r: Rows) {
        self.op_embedding_fwd(out, table, ids, r)
    }
    fn embedding_bwd(&self, dtable: &mut WBuf, dout: &WBuf, ids: &WIds, r: Rows) {
        self.op_embedding_bwd(dtable, dout, ids, r)
    }
    fn rmsnorm_fwd(&self, t: RmsNormFwd<'_, WBuf>, sh: &NormShape) {
        self.op_rmsnorm_fwd(t, sh)
    }
    fn rmsnorm_bwd(&self, t: RmsNormBwd<'_, WBuf>, sh: &NormShape) {
        self.op_rmsnorm_bwd(t, sh)
    }
    fn layernorm_fwd(&self, t: LayerNormFwd<'_, WBuf>, sh: &NormShape) {
        self.op_layernorm_fwd(t, sh)
    }
    fn layernorm_bwd(&self, t: LayerNormBwd<'_, WBuf>, sh: &NormShape) {
        self.op_layernorm_bwd(t, sh)
    }
    fn rope_fwd(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, sh: &RopeShape) {
        self.op_rope(x, positions, inv_freq, sh, 1.0)
    }
    fn rope_bwd(&self, dx: &mut WBuf, positions: &WIds, inv_freq: &WBuf, sh: &RopeShape) {
        self.op_rope(dx, positions, inv_freq, sh, -1.0)
    }
    fn attention_fwd(&self, out: &mut WBuf, lse: &mut WBuf, x: &AttnInputs<'_, WBuf, WIds>, sh: &AttnShape) {
        self.op_attention_fwd(out, lse, x, sh)
    }
    fn attention_bwd(&self, d: AttnGrads<'_, WBuf>, dout: &WBuf, out: &WBuf, lse: &WBuf, x: &AttnInputs<'_, WBuf, WIds>, sh: &AttnShape) {
        self.op_attention_bwd(d, dout, out, lse, x, sh)
    }
    fn kv_write(&self, cache: &mut WBuf, new: &WBuf, pos: &WIds, sh: &KvShape) {
        self.op_kv_write(cache, new, pos, sh)
    }
    fn softmax_fwd(&self, out: &mut WBuf, x: &WBuf, r: Rows, temperature: f32) {
        self.op_softmax_fwd(out, x, r, temperature)
    }
    fn softmax_bwd(&self, dx: &mut WBuf, dy: &WBuf, y: &WBuf, r: Rows) {
        self.op_softmax_bwd(dx, dy, y, r)
    }
    fn swiglu_fwd(&self, out: &mut WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_elementwise("activation.swiglu_fwd", "swiglu_fwd", &[("out", out), ("gate", gate), ("up", up)], len);
    }
    fn swiglu_bwd(&self, dgate: &mut WBuf, dup: &mut WBuf, dout: &WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_elementwise("activation.swiglu_bwd", "swiglu_bwd", &[("dgate", dgate), ("dup", dup), ("dout", dout), ("gate", gate), ("up", up)], len);
    }
    fn gelu_fwd(&self, out: &mut WBuf, x: &WBuf, len: usize) {
        self.op_elementwise("activation.gelu_fwd", "gelu_fwd", &[("out", out), ("x", x)], len);
    }
    fn gelu_bwd(&self, dx: &mut WBuf, dout: &WBuf, x: &WBuf, len: usize) {
        self.op_elementwise("activation.gelu_bwd", "gelu_bwd", &[("dx", dx), ("dout", dout), ("x", x)], len);
    }
    fn geglu_fwd(&self, out: &mut WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_elementwise("activation.geglu_fwd", "geglu_fwd", &[("out", out), ("gate", gate), ("up", up)], len);
    }
    fn geglu_bwd(&self, dgate: &mut WBuf, dup: &mut WBuf, dout: &WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_elementwise("activation.geglu_bwd", "geglu_bwd", &[("dgate", dgate), ("dup", dup), ("dout", dout), ("gate", gate), ("up", up)], len);
    }
    fn softcap_fwd(&self, x: &mut WBuf, len: usize, cap: f32) {
        self.op_softcap("activation.softcap_fwd", "softcap_fwd", &[("x", x)], len, cap);
    }
    fn softcap_bwd(&self, dy: &mut WBuf, y: &WBuf, len: usize, cap: f32) {
        self.op_softcap("activation.softcap_bwd", "softcap_bwd", &[("dy", dy), ("y", y)], len, cap);
    }
    fn relu_fwd(&self, out: &mut WBuf, x: &WBuf, len: usize) {
        self.op_elementwise("activation.relu_fwd", "relu_fwd", &[("out", out), ("x", x)], len);
    }
    fn relu_bwd(&self, dx: &mut WBuf, dout: &WBuf, x: &WBuf, len: usize) {
        self.op_elementwise("activation.relu_bwd", "relu_bwd", &[("dx", dx), ("dout", dout), ("x", x)], len);
    }
    fn dropout(&self, out: &mut WBuf, x: &WBuf, d: &Dropout, len: usize) {
        crate::check::len("dropout", &[("out", &*out), ("x", x)], len);
        if len == 0 {
            return;
        }
        ops::u32_of(len, "dropout elements");
        // `+=` is its own entry point (the params hold len, key, threshold, scale, and the
        // soft-caps' cap, unused here but part of the uniform's size)
        let (key, entry) = if d.accumulate { ("activation.dropout_acc", "dropout_acc") } else { ("activation.dropout", "dropout") };
        let params = [len as u32, d.key(), d.threshold, d.scale.to_bits(), 0];
        let groups = batch::groups_1d(len as u64, okapi_kernels::WGSL_WG as u32);
        self.dispatch(key, okapi_kernels::activation::WGSL, entry, &params, &[&out.buf, &x.buf], groups);
    }
    fn bias_add(&self, x: &mut WBuf, bias: &WBuf, r: Rows) {
        self.op_bias_add(x, bias, r)
    }
    fn bias_bwd(&self, dbias: &mut WBuf, dy: &WBuf, r: Rows) {
        self.op_bias_bwd(dbias, dy, r)
    }
    fn xent_fwd_bwd(&self, logits: &mut WBuf, losses: &mut WBuf, targets: &WIds, coef: &WBuf, r: Rows) {
        crate::check::vocab("xent_fwd_bwd", &[("logits", &*logits)], &[("losses", &*losses), ("coef", coef)], targets, r);
        self.op_xent("xent_fwd_bwd", "xent.xent_fwd_bwd", [&logits.buf, &losses.buf, &targets.buf, &coef.buf], r);
    }
    fn token_logprobs(&self, logp: &mut WBuf, greedy: &mut WBuf, logits: &WBuf, targets: &WIds, r: Rows) {
        crate::check::vocab("token_logprobs", &[("logits", logits)], &[("logp", &*logp), ("greedy", &*greedy)], targets, r);
        self.op_xent("token_logprobs", "xent.token_logprobs", [&logp.buf, &greedy.buf, &logits.buf, &targets.buf], r);
    }
    fn token_logprobs_bwd(&self, dlogits: &mut WBuf, logits: &WBuf, targets: &WIds, coef: &WBuf, r: Rows) {
        crate::check::vocab("token_logprobs_bwd", &[("dlogits", &*dlogits), ("logits", logits)], &[("coef", coef)], targets, r);
        self.op_xent("token_logprobs_bwd", "xent.token_logprobs_bwd", [&dlogits.buf, &logits.buf, &targets.buf, &coef.buf], r);
    }
    fn adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: &AdamW, len: usize) {
        self.op_adamw(p, g, m, v, h, len)
    }
    fn sum_squares(&self, acc: &mut WBuf, slot: usize, x: &WBuf, len: usize) {
        self.op_sum_squares(acc, slot, x, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Option<WgpuBackend> {
        match WgpuBackend::with_options(&WgpuOptions::from_env()) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("wgpu: NO ADAPTER — this wgpu test did NOT run: {e}");
                assert!(std::env::var("OKAPI_REQUIRE_WGPU").as_deref() != Ok("1"), "OKAPI_REQUIRE_WGPU=1 but no wgpu adapter: {e}");
                None
            }
        }
    }

    fn panic_message(r: Box<dyn std::any::Any + Send>) -> String {
        r.downcast_ref::<String>().cloned().or_else(|| r.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
    }

    use batch::{groups_1d, MAX_GROUPS_PER_DIM};

    #[test]
    fn groups_fold_into_xy() {
        assert_eq!(groups_1d(0, 256), [0, 1, 1]);
        assert_eq!(groups_1d(1, 256), [1, 1, 1]);
        assert_eq!(groups_1d(256 * 65535, 256), [65535, 1, 1]);
        for n in [256 * 65535 + 1, 1u64 << 32, 3_000_000_007] {
            let [x, y, z] = groups_1d(n, 256);
            assert!(x <= MAX_GROUPS_PER_DIM && y <= MAX_GROUPS_PER_DIM && z == 1);
            let groups = n.div_ceil(256);
            assert!(x as u64 * y as u64 >= groups && (x as u64) * (y as u64 - 1) < groups, "{n}: {x}×{y}");
        }
    }

    #[test]
    fn broken_shader_names_the_kernel() {
        let Some(be) = backend() else { return };
        eprintln!("wgpu adapter: {}", be.adapter_name());
        let x = be.zeros(4);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.dispatch("test_broken_kernel", "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5 +; }", "main", &[], &[&x.buf], [1, 1, 1]);
        }));
        let msg = panic_message(r.expect_err("a broken shader must panic"));
        assert!(msg.contains("wgpu kernel `test_broken_kernel`"), "{msg}");
        // a shader that parses but does not validate (type error) is caught by wgpu's own check
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.dispatch("test_invalid_kernel", "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5f; }", "main", &[], &[], [1, 1, 1]);
        }));
        let msg = panic_message(r.expect_err("an invalid shader must panic"));
        assert!(msg.contains("wgpu kernel `test_invalid_kernel`"), "{msg}");
        // the backend still works afterwards
        let mut y = be.upload(&[1.0, 2.0, 3.0]);
        be.scale(&mut y, 2.0, 3);
        assert_eq!(be.read(&y, 3), vec![2.0, 4.0, 6.0]);
    }

    #[test]
    fn oversize_buffer_names_the_limit() {
        let Some(be) = backend() else { return };
        eprintln!("wgpu adapter: {}", be.adapter_name());
        let too_big = be.max_buffer_elems() + 1;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = be.zeros(too_big);
        }));
        let msg = panic_message(r.expect_err("an oversize buffer must panic"));
        assert!(msg.contains("max_storage_buffer_binding_size") || msg.contains("max_buffer_size"), "{msg}");
        assert!(msg.contains(&too_big.to_string()), "{msg}");
    }

    #[test]
    fn scratch_buffers_are_reused_and_handed_out_zeroed() {
        let Some(be) = backend() else { return };
        let dirty = be.upload(&[7.0; 100]);
        let first = {
            let s = be.scratch(100);
            be.record_copy(&dirty.buf, &s.buf, 400);
            s.buf.clone()
        };
        let pooled = |be: &WgpuBackend| lock(&be.ctx.pool).values().map(Vec::len).sum::<usize>();
        assert_eq!(pooled(&be), 1, "a dropped scratch goes back to the pool");
        // the same size class (100 and 120 f32 both round to 512 bytes) takes it back, cleared
        let s = be.scratch(120);
        assert!(s.buf == first, "the pooled buffer is reused");
        assert_eq!(pooled(&be), 0);
        assert_eq!(s.len, 120);
        assert_eq!(be.read(&s, 120), vec![0.0; 120], "a reused scratch buffer is zeroed");
        // two held at once are two buffers
        let t = be.scratch(100);
        assert!(t.buf != s.buf);
    }

    /// Host cost of recording one small op (cargo test -p okapi-runtime --features wgpu --lib
    /// dispatch_overhead -- --ignored --nocapture).
    #[test]
    #[ignore]
    fn dispatch_overhead() {
        let Some(be) = backend() else { return };
        let mut y = be.zeros(1024);
        let x = be.upload(&[1.0; 1024]);
        be.axpy(&mut y, 1.0, &x, 1024);
        be.read(&y, 1);
        let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(5000);
        let t = std::time::Instant::now();
        for _ in 0..n {
            be.axpy(&mut y, 1.0, &x, 1024);
        }
        let rec = t.elapsed();
        let v = be.read(&y, 1);
        let all = t.elapsed();
        assert_eq!(v[0], n as f32 + 1.0);
        eprintln!(
            "{}: {n} axpy dispatches: {:.1} µs each to record (+submits), {:.1} µs each end to end",
            be.adapter_name(),
            rec.as_secs_f64() * 1e6 / n as f64,
            all.as_secs_f64() * 1e6 / n as f64
        );
    }

    #[test]
    fn lost_device_is_a_clear_error() {
        let Some(be) = backend() else { return };
        let mut x = be.upload(&[1.0; 8]);
        be.ctx.device.destroy();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.scale(&mut x, 2.0, 8);
            be.read(&x, 8)
        }));
        let msg = panic_message(r.expect_err("ops on a lost device must panic"));
        assert!(msg.contains("was lost"), "{msg}");
    }

    /// A shape past llvmpipe's loop limit is refused on llvmpipe (instead of silently truncated
    /// results) and computed, equal to the CPU, on any other adapter.
    #[test]
    fn attention_past_llvmpipe_loop_limit_is_refused_there_and_exact_elsewhere() {
        use crate::{AttnGrads, AttnInputs, CpuBackend};
        let Some(be) = backend() else { return };
        let sh = AttnShape { batch: 1, tq: 130, tk: 130, n_heads: 4, n_kv_heads: 1, head_dim: 128, scale: 0.088, causal: true, window: 0, softcap: 0.0 };
        let (nq, nk, nl) = sh.extents();
        assert!(okapi_kernels::attention::wgsl_loop_iterations(&sh).1 > device::LLVMPIPE_LOOP_LIMIT, "the case must exceed the limit");
        let data = |n: usize, s: u32| (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(s) % 1000) as f32 / 500.0 - 1.0).collect::<Vec<f32>>();
        let (q, k, v, dout) = (data(nq, 1), data(nk, 2), data(nk, 3), data(nq, 4));
        let (p0, kl) = (vec![0u32], vec![130u32]);
        let cx = AttnInputs { q: &q, k: &k, v: &v, q_pos0: &p0, kv_len: &kl, alibi: None };
        let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; nl]);
        CpuBackend.attention_fwd(&mut out, &mut lse, &cx, &sh);
        let (mut dq, mut dk, mut dv) = (vec![0.0; nq], vec![0.0; nk], vec![0.0; nk]);
        CpuBackend.attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &dout, &out, &lse, &cx, &sh);
        let (gq, gk, gv, gp, gl) = (be.upload(&q), be.upload(&k), be.upload(&v), be.upload_ids(&p0), be.upload_ids(&kl));
        let gx = AttnInputs { q: &gq, k: &gk, v: &gv, q_pos0: &gp, kv_len: &gl, alibi: None };
        let (go, gs, gdo) = (be.upload(&out), be.upload(&lse), be.upload(&dout));
        let (mut a, mut b, mut c) = (be.zeros(nq), be.zeros(nk), be.zeros(nk));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            be.attention_bwd(AttnGrads { dq: &mut a, dk: &mut b, dv: &mut c }, &gdo, &go, &gs, &gx, &sh);
            be.read(&b, nk)
        }));
        match (be.loop_limit(), r) {
            (Some(_), Err(e)) => {
                let msg = panic_message(e);
                assert!(msg.contains("llvmpipe's limit of 65535") && msg.contains("--backend cpu"), "{msg}");
            }
            (Some(_), Ok(_)) => panic!("llvmpipe ran a dispatch past its loop limit instead of refusing it"),
            (None, Ok(got)) => {
                let worst = got.iter().zip(&dk).map(|(g, w)| (g - w).abs() / (1.0 + w.abs())).fold(0f32, f32::max);
                assert!(worst <= 2e-4, "dk differs from the CPU by {worst:e}");
            }
            (None, Err(e)) => std::panic::resume_unwind(e),
        }
    }

    #[test]
    fn writes_are_ordered_after_recorded_work() {
        let Some(be) = backend() else { return };
        let mut x = be.upload(&[1.0; 300]);
        let mut y = be.zeros(300);
        be.axpy(&mut y, 1.0, &x, 300); // y = 1 (recorded, not submitted)
        be.write(&mut x, &[5.0; 300]); // must not overtake the axpy
        be.axpy(&mut y, 1.0, &x, 300); // y = 6
        assert!(be.read(&y, 300).iter().all(|&v| v == 6.0));
        let mut ids = be.upload_ids(&[1, 2, 3]);
        be.write_ids(&mut ids, &[7, 8]);
        assert_eq!(be.read_ids(&ids, 3), vec![7, 8, 3]);
    }
}
