//! The device: adapter and device selection, buffers (with the device's size limits), host
//! reads, the pool of scratch buffers, and device-loss reporting.

use super::batch::Pending;
use super::pipelines::Kernel;
use super::{lock, WBuf, WgpuBackend, WgpuOptions};
use crate::RuntimeError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// Everything the clones of one backend share.
pub(crate) struct Ctx {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    pub(crate) kernels: Mutex<HashMap<&'static str, Arc<Kernel>>>,
    pub(crate) pending: Mutex<Pending>,
    /// Set by the device-lost callback: every later op panics with it.
    pub(crate) lost: Arc<Mutex<Option<String>>>,
    /// Grow-only partial-sum buffer of sum_squares / bias_bwd, locked while an op records the
    /// passes that write and read it (threads share the encoder).
    pub(crate) partials: Mutex<Option<WBuf>>,
    /// Free scratch buffers by size in bytes (powers of two): an op's temporaries come from
    /// here and go back when it has recorded its passes, so a training step allocates nothing
    /// after the first.
    pub(crate) pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Loop iterations one shader invocation may run before the driver cuts its loops short:
    /// Mesa's llvmpipe (lavapipe) stops every loop of an invocation after 65535 iterations in
    /// total (gallivm's LP_MAX_TGSI_LOOP_ITERATIONS), leaving results silently wrong. `None`
    /// on drivers without such a limit.
    pub(crate) loop_limit: Option<u64>,
}

/// llvmpipe's loop limit (see `Ctx::loop_limit`).
pub const LLVMPIPE_LOOP_LIMIT: u64 = 65535;

/// A pooled scratch buffer (`Deref`s to a `WBuf` of the asked length), returned to the pool
/// on drop. Reuse is safe: the passes recorded after this one run after it on the queue.
pub(crate) struct Scratch<'a> {
    be: &'a WgpuBackend,
    held: Option<WBuf>,
}

impl std::ops::Deref for Scratch<'_> {
    type Target = WBuf;
    fn deref(&self) -> &WBuf {
        self.held.as_ref().expect("a scratch buffer is held until dropped")
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.held.take() {
            lock(&self.be.ctx.pool).entry(b.buf.size()).or_default().push(b.buf);
        }
    }
}

fn parse_backends(choice: Option<&str>) -> Result<wgpu::Backends, RuntimeError> {
    match choice {
        Some(s) if !s.trim().is_empty() => {
            let b = wgpu::Backends::from_comma_list(s);
            if b.is_empty() {
                return Err(RuntimeError::Wgpu(format!("WGPU_BACKEND=`{s}` names no backend (expected vulkan, metal, dx12 or gl)")));
            }
            Ok(b)
        }
        _ => Ok(wgpu::Backends::all()),
    }
}

impl Ctx {
    /// Picks an adapter (preferring high performance) and opens a device with the adapter's
    /// own limits (the attention kernels bind more than WebGPU's default 8 storage buffers) and
    /// `shader-f16` when the adapter has it.
    pub(crate) fn open(opts: &WgpuOptions) -> Result<Ctx, RuntimeError> {
        let backends = parse_backends(opts.backends.as_deref())?;
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
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("okapi"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| RuntimeError::Wgpu(format!("request_device failed on {} ({:?}): {e}", info.name, info.backend)))?;
        let limits = device.limits();
        let llvmpipe = info.name.contains("llvmpipe") || info.driver.contains("llvmpipe");
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            *lock(&sink) = Some(format!("{reason:?}: {msg}"));
        });
        Ok(Ctx {
            device,
            queue,
            info,
            limits,
            kernels: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            lost,
            partials: Mutex::new(None),
            pool: Mutex::new(HashMap::new()),
            loop_limit: llvmpipe.then_some(LLVMPIPE_LOOP_LIMIT),
        })
    }
}

impl WgpuBackend {
    /// Panics with a clear message once the device is lost (driver reset, GPU removed, …).
    pub(crate) fn check_lost(&self) {
        if let Some(why) = lock(&self.ctx.lost).clone() {
            panic!("wgpu: the device {} was lost ({why}); its buffers are gone — restart the command", self.adapter_name());
        }
    }

    /// Panics with `msg`, or with the device-lost message when that is the cause.
    pub(crate) fn fail(&self, msg: String) -> ! {
        let _ = self.ctx.device.poll(wgpu::PollType::Poll);
        self.check_lost();
        panic!("{msg}");
    }

    /// e.g. "llvmpipe (LLVM 15.0.7, 256 bits) (Vulkan, Cpu)".
    pub fn adapter_name(&self) -> String {
        let i = &self.ctx.info;
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }

    /// Refuses a dispatch whose invocations would run more loop iterations than the driver
    /// completes (llvmpipe), with a clear panic instead of silently truncated results.
    pub(crate) fn check_loop_budget(&self, key: &str, iterations: u64) {
        if let Some(limit) = self.ctx.loop_limit {
            if iterations > limit {
                panic!(
                    "wgpu kernel `{key}` on {}: ~{iterations} loop iterations per invocation exceed llvmpipe's limit of {limit} \
                     (past it llvmpipe stops looping and the results are silently wrong); run this shape with --backend cpu, or on a hardware GPU",
                    self.adapter_name()
                );
            }
        }
    }

    /// The loop limit of this adapter's driver, if it has one (llvmpipe: 65535 per invocation).
    pub fn loop_limit(&self) -> Option<u64> {
        self.ctx.loop_limit
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

    pub(crate) fn new_buffer(&self, len: usize, what: &str) -> wgpu::Buffer {
        let size = self.check_size(len, what);
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(what), size, usage: Self::storage_usage(), mapped_at_creation: false })
    }

    pub(crate) fn init_buffer(&self, bytes: &[u8], len: usize, what: &str) -> wgpu::Buffer {
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
                self.record_clear(&buf, None);
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
    pub(crate) fn with_partials(&self, len: usize, f: impl FnOnce(&WBuf)) {
        let mut g = lock(&self.ctx.partials);
        if g.as_ref().is_none_or(|b| b.len < len) {
            let len = len.max(1 << 14);
            *g = Some(WBuf { buf: self.new_buffer(len, "partials"), len });
        }
        f(g.as_ref().expect("just allocated"));
    }

    /// Device → host: the first `bytes` bytes of `src` (submits the recorded work and waits).
    pub(crate) fn read_bytes(&self, src: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
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
        self.record_copy_and_submit(src, &staging, bytes);
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
}
