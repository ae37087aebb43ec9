//! The wgpu backend: Vulkan / Metal / DX12 through `wgpu`, kernels in WGSL.
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
//!   `params` words of [`WgpuBackend::dispatch`] in declaration order (f32 passed as
//!   `f32::to_bits`). The buffer is zero-padded to a multiple of 16 bytes.
//! * `@group(0) @binding(1..=k)`: the storage buffers passed to `dispatch`, in order. Declare
//!   inputs `read` and outputs `read_write`: the pipeline layout is derived from the shader.
//!   Bindings an entry point does not use are left out of its bind group automatically.
//! * Large 1-D launches: the device allows at most 65535 workgroups per dimension, so use
//!   [`groups_1d`] on the host and fold the index back in the shader:
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

mod linear;
mod rows;

use crate::{AdamW, AttnShape, Backend, Gemm, RuntimeError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use wgpu::util::DeviceExt;

/// Dispatches recorded before the encoder is submitted on its own.
pub const MAX_PENDING: usize = 256;
/// Workgroups per dimension every device supports (WebGPU's `maxComputeWorkgroupsPerDimension`).
pub const MAX_GROUPS_PER_DIM: u32 = 65535;

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

/// Folds a 1-D launch of `n_threads` threads in workgroups of `wg` into an x·y grid that fits
/// [`MAX_GROUPS_PER_DIM`]. The shader recovers the flat workgroup index as
/// `wid.x + wid.y * num_workgroups.x` and must bounds-check (the grid may hold more threads
/// than asked). `n_threads == 0` gives `[0, 1, 1]` (nothing is dispatched).
pub(crate) fn groups_1d(n_threads: u64, wg: u32) -> [u32; 3] {
    let groups = n_threads.div_ceil(wg as u64);
    groups_fold(groups)
}

/// [`groups_1d`] for a count of workgroups.
pub(crate) fn groups_fold(groups: u64) -> [u32; 3] {
    let max = MAX_GROUPS_PER_DIM as u64;
    if groups <= max {
        return [groups as u32, 1, 1];
    }
    let y = groups.div_ceil(max);
    let x = groups.div_ceil(y);
    assert!(y <= max, "wgpu: a launch of {groups} workgroups exceeds {max}² workgroups");
    [x as u32, y as u32, 1]
}

struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Which of bindings 0..N the entry point uses (auto layouts hold only those).
    used: Vec<bool>,
}

#[derive(Default)]
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    dispatches: usize,
    /// Kernels recorded into the pending encoder (for error messages).
    keys: Vec<&'static str>,
    /// The uniform buffer holding the pending dispatches' params (each binds its own slice),
    /// and its contents, written by `submit` just before the batch's commands. One buffer for
    /// the backend's life: a queue write lands after the work submitted before it, so rewriting
    /// it per batch is safe (creating a buffer per dispatch cost ~30 µs on lavapipe, per batch
    /// it slowed lavapipe's execution twofold).
    arena: Option<wgpu::Buffer>,
    params: Vec<u8>,
}

/// Bytes of params one encoder batch holds (its dispatches bind slices of one uniform buffer).
const ARENA_BYTES: usize = 64 * 1024;

struct Ctx {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    kernels: Mutex<HashMap<&'static str, Arc<Kernel>>>,
    pending: Mutex<Pending>,
    /// Set by the device-lost callback: every later op panics with it.
    lost: Arc<Mutex<Option<String>>>,
    /// Grow-only partial-sum buffer of sum_squares / bias_bwd, locked while an op records the
    /// passes that write and read it (threads share the encoder).
    partials: Mutex<Option<WBuf>>,
    /// Free scratch buffers by size in bytes (powers of two): an op's temporaries come from
    /// here and go back when it has recorded its passes, so a training step allocates nothing
    /// after the first.
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
}

/// A pooled scratch buffer (`Deref`s to a `WBuf` of the asked length), returned to the pool
/// on drop. Reuse is safe: the passes recorded after this one run after it on the queue.
pub(crate) struct Scratch<'a> {
    be: &'a WgpuBackend,
    held: Option<WBuf>,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = WBuf;
    fn deref(&self) -> &WBuf {
        self.held.as_ref().unwrap()
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.held.take() {
            lock(&self.be.ctx.pool).entry(b.buf.size()).or_default().push(b.buf);
        }
    }
}

/// The wgpu backend (cheap to clone: one shared device and queue).
#[derive(Clone)]
pub struct WgpuBackend {
    ctx: Arc<Ctx>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

fn u32_bytes(x: &[u32]) -> &[u8] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

impl WgpuBackend {
    /// Picks an adapter (`WGPU_BACKEND` = vulkan | metal | dx12 | gl, comma separated; default
    /// all) preferring high performance, and opens a device with the adapter's own limits (the
    /// attention kernels bind more than WebGPU's default 8 storage buffers) and `shader-f16`
    /// when the adapter has it. This build compiles the Vulkan, Metal and DX12 backends only
    /// (lean features): `gl` finds no adapter. On Linux without a GPU, Mesa's lavapipe
    /// (`mesa-vulkan-drivers`) is a Vulkan adapter on the CPU.
    pub fn new() -> Result<Self, RuntimeError> {
        let backends = match std::env::var("WGPU_BACKEND") {
            Ok(s) if !s.trim().is_empty() => {
                let b = wgpu::Backends::from_comma_list(&s);
                if b.is_empty() {
                    return Err(RuntimeError::Wgpu(format!("WGPU_BACKEND=`{s}` names no backend (expected vulkan, metal, dx12 or gl)")));
                }
                b
            }
            _ => wgpu::Backends::all(),
        };
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor { backends, ..wgpu::InstanceDescriptor::new_without_display_handle() });
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| RuntimeError::Wgpu(format!("no GPU adapter found for backends {backends:?}: {e}")))?;
        let info = adapter.get_info();
        let mut features = wgpu::Features::empty();
        if adapter.features().contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("okapi"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| RuntimeError::Wgpu(format!("request_device failed on {} ({:?}): {e}", info.name, info.backend)))?;
        let limits = device.limits();
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&sink) = Some(format!("{reason:?}: {msg}"));
        });
        Ok(Self {
            ctx: Arc::new(Ctx { device, queue, info, limits, kernels: Mutex::new(HashMap::new()), pending: Mutex::new(Pending::default()), lost, partials: Mutex::new(None), pool: Mutex::new(HashMap::new()) }),
        })
    }

    /// Panics with a clear message once the device is lost (driver reset, GPU removed, …).
    fn check_lost(&self) {
        if let Some(why) = lock(&self.ctx.lost).clone() {
            panic!("wgpu: the device {} was lost ({why}); its buffers are gone — restart the command", self.adapter_name());
        }
    }

    /// Panics with `msg`, or with the device-lost message when that is the cause.
    fn fail(&self, msg: String) -> ! {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        self.check_lost();
        panic!("{msg}");
    }

    /// e.g. "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan, Cpu)".
    pub fn adapter_name(&self) -> String {
        let i = &self.ctx.info;
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }

    /// The device's limits (as granted: the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.ctx.limits
    }

    /// The largest buffer, in 4-byte elements, `zeros` / `upload` accept.
    pub fn max_buffer_elems(&self) -> usize {
        let l = &self.ctx.limits;
        (l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 4) as usize
    }

    fn check_size(&self, len: usize, what: &str) -> u64 {
        let bytes = (len as u64).max(1) * 4;
        let l = &self.ctx.limits;
        if bytes > l.max_storage_buffer_binding_size {
            panic!(
                "wgpu: {what} of {len} elements ({bytes} bytes) exceeds the device's max_storage_buffer_binding_size ({} bytes) on {}",
                l.max_storage_buffer_binding_size,
                self.adapter_name()
            );
        }
        if bytes > l.max_buffer_size {
            panic!("wgpu: {what} of {len} elements ({bytes} bytes) exceeds the device's max_buffer_size ({} bytes) on {}", l.max_buffer_size, self.adapter_name());
        }
        bytes
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    fn new_buffer(&self, len: usize, what: &str) -> wgpu::Buffer {
        let size = self.check_size(len, what);
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(what), size, usage: Self::storage_usage(), mapped_at_creation: false })
    }

    fn init_buffer(&self, bytes: &[u8], len: usize, what: &str) -> wgpu::Buffer {
        self.check_size(len, what);
        if bytes.is_empty() {
            return self.new_buffer(0, what);
        }
        self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(what), contents: bytes, usage: Self::storage_usage() })
    }

    /// A zeroed scratch buffer of `len` f32 (at least one element) from the pool; a reused one
    /// is cleared by a command recorded before the passes that use it.
    pub(crate) fn scratch(&self, len: usize) -> Scratch<'_> {
        let bytes = self.check_size(len, "scratch").next_power_of_two().max(256);
        let reused = lock(&self.ctx.pool).get_mut(&bytes).and_then(|v| v.pop());
        let buf = match reused {
            Some(buf) => {
                let mut p = lock(&self.ctx.pending);
                let device = &self.ctx.device;
                let enc = p.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }));
                enc.clear_buffer(&buf, 0, None);
                p.dispatches += 1;
                p.keys.push("clear");
                buf
            }
            // power-of-two sizes can exceed the binding limit where `len` itself does not
            None if bytes > self.max_buffer_elems() as u64 * 4 => self.new_buffer(len, "scratch"),
            None => self.ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("scratch"), size: bytes, usage: Self::storage_usage(), mapped_at_creation: false }),
        };
        Scratch { be: self, held: Some(WBuf { buf, len }) }
    }

    /// Runs `f` with the shared partial-sum buffer of at least `len` f32 (contents undefined:
    /// the passes must write every element they read).
    fn with_partials(&self, len: usize, f: impl FnOnce(&WBuf)) {
        let mut g = lock(&self.ctx.partials);
        if g.as_ref().is_none_or(|b| b.len < len) {
            let len = len.max(1 << 14);
            *g = Some(WBuf { buf: self.new_buffer(len, "partials"), len });
        }
        f(g.as_ref().unwrap());
    }

    fn kernel(&self, key: &'static str, source: &'static str, entry: &'static str) -> Arc<Kernel> {
        if let Some(k) = lock(&self.ctx.kernels).get(key) {
            return k.clone();
        }
        let used = used_bindings(key, source, entry);
        let device = &self.ctx.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(key), source: wgpu::ShaderSource::Wgsl(source.into()) });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.fail(format!("wgpu kernel `{key}`: {e}"));
        }
        let k = Arc::new(Kernel { pipeline, layout, used });
        lock(&self.ctx.kernels).insert(key, k.clone());
        k
    }

    /// Records one compute dispatch (see the module docs for the binding convention). The
    /// pipeline for `key` is built from `source` / `entry` on first use and cached; a shader
    /// that does not compile panics with "wgpu kernel `<key>`: <error>". Grids with a zero
    /// dimension record nothing.
    pub(crate) fn dispatch(&self, key: &'static str, source: &'static str, entry: &'static str, params: &[u32], bufs: &[&wgpu::Buffer], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        self.check_lost();
        let max = self.ctx.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.iter().all(|&g| g <= max),
            "wgpu kernel `{key}`: grid {groups:?} exceeds max_compute_workgroups_per_dimension ({max}); fold it with groups_1d"
        );
        let kernel = self.kernel(key, source, entry);
        let device = &self.ctx.device;
        let mut words = params.to_vec();
        words.resize(params.len().div_ceil(4).max(1) * 4, 0);
        let bytes = u32_bytes(&words);
        let align = self.ctx.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        assert!(bytes.len() <= ARENA_BYTES, "wgpu kernel `{key}`: {} bytes of params", bytes.len());
        let mut p = lock(&self.ctx.pending);
        if p.params.len().next_multiple_of(align) + bytes.len() > ARENA_BYTES {
            self.submit(&mut p);
        }
        let offset = p.params.len().next_multiple_of(align);
        p.params.resize(offset, 0);
        p.params.extend_from_slice(bytes);
        let arena = p
            .arena
            .get_or_insert_with(|| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: ARENA_BYTES as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .clone();
        let uniform = wgpu::BufferBinding { buffer: &arena, offset: offset as u64, size: std::num::NonZeroU64::new(bytes.len() as u64) };
        let is_used = |i: usize| kernel.used.get(i).copied().unwrap_or(kernel.used.is_empty());
        let mut entries = Vec::with_capacity(bufs.len() + 1);
        if is_used(0) {
            entries.push(wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(uniform) });
        }
        for (i, b) in bufs.iter().enumerate() {
            if is_used(i + 1) {
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
            }
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(key), layout: &kernel.layout, entries: &entries });
        if let Some(e) = pollster::block_on(scope.pop()) {
            drop(p);
            self.fail(format!("wgpu kernel `{key}`: {e}"));
        }
        let enc = p.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }));
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(key), timestamp_writes: None });
            pass.set_pipeline(&kernel.pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        p.dispatches += 1;
        if p.keys.last() != Some(&key) {
            p.keys.push(key);
        }
        if p.dispatches >= MAX_PENDING {
            self.submit(&mut p);
        }
    }

    /// Records a copy into the pending encoder.
    fn record_copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut p = lock(&self.ctx.pending);
        let device = &self.ctx.device;
        let enc = p.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }));
        enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        p.dispatches += 1;
        p.keys.push("copy");
    }

    fn submit(&self, p: &mut Pending) {
        let Some(enc) = p.encoder.take() else { return };
        let keys = std::mem::take(&mut p.keys);
        p.dispatches = 0;
        let scope = self.ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        // the batch's params land before its commands run (queue writes precede the next submit)
        // and after the previous batches' (queue order)
        if let Some(arena) = p.arena.clone() {
            if !p.params.is_empty() {
                self.ctx.queue.write_buffer(&arena, 0, &p.params);
            }
        }
        p.params.clear();
        let cmd = enc.finish();
        self.ctx.queue.submit([cmd]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            self.fail(format!("wgpu: {e} (in a batch of kernels {keys:?})"));
        }
    }

    /// Submits the recorded work (does not wait for it).
    pub fn flush(&self) {
        let mut p = lock(&self.ctx.pending);
        self.submit(&mut p);
    }

    /// Submits everything and waits until the device is idle.
    pub fn sync(&self) {
        self.flush();
        let _ = self.ctx.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
    }

    fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
        if bytes == 0 {
            return Vec::new();
        }
        let device = &self.ctx.device;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut p = lock(&self.ctx.pending);
            let enc = p.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }));
            enc.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
            p.keys.push("read");
            self.submit(&mut p);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        if let Err(e) = device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None }) {
            self.fail(format!("wgpu: waiting for the device failed: {e}"));
        }
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.fail(format!("wgpu: mapping a read-back buffer failed: {e}")),
            Err(_) => panic!("wgpu: the read-back map callback never ran"),
        }
        let out = staging.get_mapped_range(..).unwrap_or_else(|e| panic!("wgpu: read-back: {e}")).to_vec();
        staging.unmap();
        out
    }

    /// Device → host, the first `len` u32 of an ids buffer.
    pub fn read_ids(&self, src: &WIds, len: usize) -> Vec<u32> {
        assert!(len <= src.len, "wgpu read_ids: {len} elements from a buffer of {}", src.len);
        let bytes = self.read_bytes(&src.buf, len as u64 * 4);
        bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

/// Which bindings of group 0 `entry` uses (auto layouts contain only those). Empty when the
/// source does not parse or validate here: wgpu then reports the error, naming the kernel.
fn used_bindings(key: &str, source: &str, entry: &str) -> Vec<bool> {
    use wgpu::naga;
    let module = match naga::front::wgsl::parse_str(source) {
        Ok(m) => m,
        Err(e) => panic!("wgpu kernel `{key}`: {}", e.emit_to_string(source)),
    };
    let Some(ep) = module.entry_points.iter().position(|e| e.name == entry) else {
        panic!("wgpu kernel `{key}`: the shader has no entry point `{entry}`");
    };
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all());
    let Ok(info) = validator.validate(&module) else { return Vec::new() };
    let fi = info.get_entry_point(ep);
    let mut used = Vec::new();
    for (h, gv) in module.global_variables.iter() {
        if let Some(b) = &gv.binding {
            if b.group == 0 {
                let i = b.binding as usize;
                if used.len() <= i {
                    used.resize(i + 1, false);
                }
                if !fi[h].is_empty() {
                    used[i] = true;
                }
            }
        }
    }
    used
}

// ---- this file's kernels -----------------------------------------------------------------

const WG: u32 = 256;
const FILL: &str = include_str!("../../../kernels/src/reduce/fill.wgsl");
const SCALE: &str = include_str!("../../../kernels/src/reduce/scale.wgsl");
const AXPY: &str = include_str!("../../../kernels/src/reduce/axpy.wgsl");
const SUM_SQUARES: &str = include_str!("../../../kernels/src/reduce/sum_squares.wgsl");
const BIAS_ADD: &str = include_str!("../../../kernels/src/reduce/bias_add.wgsl");
const BIAS_BWD: &str = include_str!("../../../kernels/src/reduce/bias_bwd.wgsl");
const EMBEDDING_FWD: &str = include_str!("../../../kernels/src/embedding/embedding_fwd.wgsl");
const EMBEDDING_BWD: &str = include_str!("../../../kernels/src/embedding/embedding_bwd.wgsl");
const KV_WRITE: &str = include_str!("../../../kernels/src/attention/kv_write.wgsl");
/// Elements one sum_squares workgroup reduces in its first pass (256 threads × 16).
const SUMSQ_CHUNK: usize = 4096;
/// Rows per partial column sum in bias_bwd (the CPU's `ROW_CHUNK`: same summation order).
const BIAS_ROW_CHUNK: usize = 32;

fn u(x: usize) -> u32 {
    u32::try_from(x).unwrap_or_else(|_| panic!("wgpu: size {x} does not fit in u32"))
}

fn need(what: &str, have: usize, want: usize) {
    assert!(have >= want, "wgpu {what}: buffer of {have} elements, the op needs {want}");
}

impl Backend for WgpuBackend {
    type Buf = WBuf;
    type Ids = WIds;

    fn name(&self) -> String {
        format!("wgpu ({})", self.adapter_name())
    }
    fn synchronize(&self) {
        self.sync();
    }
    fn zeros(&self, len: usize) -> WBuf {
        WBuf { buf: self.new_buffer(len, "f32 buffer"), len }
    }
    fn upload(&self, data: &[f32]) -> WBuf {
        WBuf { buf: self.init_buffer(f32_bytes(data), data.len(), "f32 buffer"), len: data.len() }
    }
    fn upload_ids(&self, data: &[u32]) -> WIds {
        WIds { buf: self.init_buffer(u32_bytes(data), data.len(), "u32 buffer"), len: data.len() }
    }
    fn write(&self, dst: &mut WBuf, data: &[f32]) {
        need("write", dst.len, data.len());
        if data.is_empty() {
            return;
        }
        // queue writes land before the next submission: submit the work recorded so far first
        self.flush();
        self.ctx.queue.write_buffer(&dst.buf, 0, f32_bytes(data));
    }
    fn write_ids(&self, dst: &mut WIds, data: &[u32]) {
        need("write_ids", dst.len, data.len());
        if data.is_empty() {
            return;
        }
        self.flush();
        self.ctx.queue.write_buffer(&dst.buf, 0, u32_bytes(data));
    }
    fn read(&self, src: &WBuf, len: usize) -> Vec<f32> {
        need("read", src.len, len);
        let bytes = self.read_bytes(&src.buf, len as u64 * 4);
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
    fn buf_len(&self, buf: &WBuf) -> usize {
        buf.len
    }
    fn fill(&self, x: &mut WBuf, value: f32, len: usize) {
        need("fill", x.len, len);
        if len == 0 {
            return;
        }
        if value.to_bits() == 0 {
            let mut p = lock(&self.ctx.pending);
            let device = &self.ctx.device;
            let enc = p.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }));
            enc.clear_buffer(&x.buf, 0, Some(len as u64 * 4));
            p.dispatches += 1;
            p.keys.push("clear");
            return;
        }
        self.dispatch("fill", FILL, "main", &[u(len), value.to_bits()], &[&x.buf], groups_1d(len as u64, WG));
    }
    fn copy(&self, dst: &mut WBuf, src: &WBuf, len: usize) {
        need("copy dst", dst.len, len);
        need("copy src", src.len, len);
        self.record_copy(&src.buf, &dst.buf, len as u64 * 4);
    }
    fn scale(&self, x: &mut WBuf, a: f32, len: usize) {
        need("scale", x.len, len);
        self.dispatch("scale", SCALE, "main", &[u(len), a.to_bits()], &[&x.buf], groups_1d(len as u64, WG));
    }
    fn axpy(&self, y: &mut WBuf, a: f32, x: &WBuf, len: usize) {
        need("axpy y", y.len, len);
        need("axpy x", x.len, len);
        self.dispatch("axpy", AXPY, "main", &[u(len), a.to_bits()], &[&y.buf, &x.buf], groups_1d(len as u64, WG));
    }
    fn matmul(&self, c: &mut WBuf, a: &WBuf, b: &WBuf, g: &Gemm) {
        self.op_matmul(c, a, b, g)
    }
    fn embedding_fwd(&self, out: &mut WBuf, table: &WBuf, ids: &WIds, n: usize, c: usize) {
        need("embedding_fwd out", out.len, n * c);
        need("embedding_fwd ids", ids.len, n);
        if c == 0 {
            return;
        }
        let v = table.len / c;
        self.dispatch("embedding_fwd", EMBEDDING_FWD, "main", &[u(n), u(c), u(v)], &[&out.buf, &table.buf, &ids.buf], groups_1d((n * c) as u64, WG));
    }
    fn embedding_bwd(&self, dtable: &mut WBuf, dout: &WBuf, ids: &WIds, n: usize, c: usize) {
        need("embedding_bwd dout", dout.len, n * c);
        need("embedding_bwd ids", ids.len, n);
        if c == 0 {
            return;
        }
        let v = dtable.len / c;
        self.dispatch("embedding_bwd", EMBEDDING_BWD, "main", &[u(n), u(c), u(v)], &[&dtable.buf, &dout.buf, &ids.buf], groups_1d(c as u64, 64));
    }
    fn rmsnorm_fwd(&self, out: &mut WBuf, rstd: &mut WBuf, x: &WBuf, w: &WBuf, n: usize, c: usize, eps: f32) {
        self.op_rmsnorm_fwd(out, rstd, x, w, n, c, eps)
    }
    fn rmsnorm_bwd(&self, dx: &mut WBuf, dw: &mut WBuf, dy: &WBuf, x: &WBuf, w: &WBuf, rstd: &WBuf, n: usize, c: usize) {
        self.op_rmsnorm_bwd(dx, dw, dy, x, w, rstd, n, c)
    }
    fn layernorm_fwd(&self, out: &mut WBuf, mean: &mut WBuf, rstd: &mut WBuf, x: &WBuf, w: &WBuf, b: &WBuf, n: usize, c: usize, eps: f32) {
        self.op_layernorm_fwd(out, mean, rstd, x, w, b, n, c, eps)
    }
    fn layernorm_bwd(&self, dx: &mut WBuf, dw: &mut WBuf, db: &mut WBuf, dy: &WBuf, x: &WBuf, w: &WBuf, mean: &WBuf, rstd: &WBuf, n: usize, c: usize) {
        self.op_layernorm_bwd(dx, dw, db, dy, x, w, mean, rstd, n, c)
    }
    fn rope_fwd(&self, x: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        self.op_rope_fwd(x, positions, inv_freq, n, n_heads, head_dim)
    }
    fn rope_bwd(&self, dx: &mut WBuf, positions: &WIds, inv_freq: &WBuf, n: usize, n_heads: usize, head_dim: usize) {
        self.op_rope_bwd(dx, positions, inv_freq, n, n_heads, head_dim)
    }
    fn attention_fwd(&self, out: &mut WBuf, lse: &mut WBuf, q: &WBuf, k: &WBuf, v: &WBuf, q_pos0: &WIds, kv_len: &WIds, alibi: Option<&WBuf>, sh: &AttnShape) {
        self.op_attention_fwd(out, lse, q, k, v, q_pos0, kv_len, alibi, sh)
    }
    fn attention_bwd(
        &self,
        dq: &mut WBuf,
        dk: &mut WBuf,
        dv: &mut WBuf,
        dout: &WBuf,
        q: &WBuf,
        k: &WBuf,
        v: &WBuf,
        out: &WBuf,
        lse: &WBuf,
        q_pos0: &WIds,
        kv_len: &WIds,
        alibi: Option<&WBuf>,
        sh: &AttnShape,
    ) {
        self.op_attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, q_pos0, kv_len, alibi, sh)
    }
    fn kv_write(&self, cache: &mut WBuf, new: &WBuf, pos: &WIds, batch: usize, t_new: usize, t_cap: usize, width: usize) {
        need("kv_write cache", cache.len, batch * t_cap * width);
        need("kv_write new", new.len, batch * t_new * width);
        need("kv_write pos", pos.len, batch);
        let total = batch * t_new * width;
        self.dispatch(
            "kv_write",
            KV_WRITE,
            "main",
            &[u(batch), u(t_new), u(t_cap), u(width)],
            &[&cache.buf, &new.buf, &pos.buf],
            groups_1d(total as u64, WG),
        );
    }
    fn softmax_fwd(&self, out: &mut WBuf, x: &WBuf, n: usize, v: usize, temperature: f32) {
        self.op_softmax_fwd(out, x, n, v, temperature)
    }
    fn softmax_bwd(&self, dx: &mut WBuf, dy: &WBuf, y: &WBuf, n: usize, v: usize) {
        self.op_softmax_bwd(dx, dy, y, n, v)
    }
    fn swiglu_fwd(&self, out: &mut WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_swiglu_fwd(out, gate, up, len)
    }
    fn swiglu_bwd(&self, dgate: &mut WBuf, dup: &mut WBuf, dout: &WBuf, gate: &WBuf, up: &WBuf, len: usize) {
        self.op_swiglu_bwd(dgate, dup, dout, gate, up, len)
    }
    fn gelu_fwd(&self, out: &mut WBuf, x: &WBuf, len: usize) {
        self.op_gelu_fwd(out, x, len)
    }
    fn gelu_bwd(&self, dx: &mut WBuf, dout: &WBuf, x: &WBuf, len: usize) {
        self.op_gelu_bwd(dx, dout, x, len)
    }
    fn bias_add(&self, x: &mut WBuf, bias: &WBuf, n: usize, c: usize) {
        need("bias_add x", x.len, n * c);
        need("bias_add bias", bias.len, c);
        self.dispatch("bias_add", BIAS_ADD, "main", &[u(n * c), u(c)], &[&x.buf, &bias.buf], groups_1d((n * c) as u64, WG));
    }
    fn bias_bwd(&self, dbias: &mut WBuf, dy: &WBuf, n: usize, c: usize) {
        need("bias_bwd dbias", dbias.len, c);
        need("bias_bwd dy", dy.len, n * c);
        if n == 0 || c == 0 {
            return;
        }
        // pass 1: partial[k, :] = Σ rows 32k..32k+32 (in row order); pass 2: dbias += partials in
        // chunk order — the CPU's exact summation order.
        let chunks = n.div_ceil(BIAS_ROW_CHUNK);
        let p = [u(n), u(c), u(chunks), u(BIAS_ROW_CHUNK)];
        self.with_partials(chunks * c, |partial| {
            self.dispatch("bias_bwd_partial", BIAS_BWD, "partial", &p, &[&dbias.buf, &dy.buf, &partial.buf], groups_1d((chunks * c) as u64, WG));
            self.dispatch("bias_bwd_final", BIAS_BWD, "finish", &p, &[&dbias.buf, &dy.buf, &partial.buf], groups_1d(c as u64, WG));
        });
    }
    fn xent_fwd_bwd(&self, logits: &mut WBuf, losses: &mut WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        self.op_xent_fwd_bwd(logits, losses, targets, coef, n, v)
    }
    fn token_logprobs(&self, logp: &mut WBuf, greedy: &mut WBuf, logits: &WBuf, targets: &WIds, n: usize, v: usize) {
        self.op_token_logprobs(logp, greedy, logits, targets, n, v)
    }
    fn token_logprobs_bwd(&self, dlogits: &mut WBuf, logits: &WBuf, targets: &WIds, coef: &WBuf, n: usize, v: usize) {
        self.op_token_logprobs_bwd(dlogits, logits, targets, coef, n, v)
    }
    fn adamw(&self, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: &AdamW, len: usize) {
        self.op_adamw(p, g, m, v, h, len)
    }
    fn sum_squares(&self, acc: &mut WBuf, slot: usize, x: &WBuf, len: usize) {
        need("sum_squares acc", acc.len, slot + 1);
        need("sum_squares x", x.len, len);
        // pass 1: one partial per 4096-element chunk (per-thread strided sums, then a fixed
        // tree); pass 2: one workgroup folds the partials the same way into acc[slot].
        let chunks = len.div_ceil(SUMSQ_CHUNK);
        let p = [u(len), u(chunks), u(slot)];
        self.with_partials(chunks, |partial| {
            self.dispatch("sum_squares_partial", SUM_SQUARES, "partial", &p, &[&acc.buf, &x.buf, &partial.buf], groups_fold(chunks as u64));
            self.dispatch("sum_squares_final", SUM_SQUARES, "finish", &p, &[&acc.buf, &x.buf, &partial.buf], [1, 1, 1]);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Option<WgpuBackend> {
        match WgpuBackend::new() {
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
