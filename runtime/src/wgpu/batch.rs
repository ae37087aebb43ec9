//! Batching: ops record their compute passes into one pending command encoder, with their
//! params in one uniform arena; the batch is submitted when the host needs a result, when a
//! host write must land after the recorded work, or every [`MAX_PENDING`] dispatches.

use super::{lock, WgpuBackend};

/// Dispatches recorded before the encoder is submitted on its own.
pub const MAX_PENDING: usize = 256;
/// Workgroups per dimension every device supports (WebGPU's `maxComputeWorkgroupsPerDimension`).
pub const MAX_GROUPS_PER_DIM: u32 = 65535;
/// Bytes of params one encoder batch holds (its dispatches bind slices of one uniform buffer).
const ARENA_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub(crate) struct Pending {
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

impl Pending {
    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("okapi") }))
    }
}

/// Folds a 1-D launch of `n_threads` threads in workgroups of `wg` into an x·y grid that fits
/// [`MAX_GROUPS_PER_DIM`]. The shader recovers the flat workgroup index as
/// `wid.x + wid.y * num_workgroups.x` and must bounds-check (the grid may hold more threads
/// than asked). `n_threads == 0` gives `[0, 1, 1]` (nothing is dispatched).
pub(crate) fn groups_1d(n_threads: u64, wg: u32) -> [u32; 3] {
    groups_fold(n_threads.div_ceil(wg as u64))
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

impl WgpuBackend {
    /// Records one compute dispatch (see the module docs for the binding convention). The
    /// pipeline for `key` is built from `source` / `entry` on first use and cached. Grids with
    /// a zero dimension record nothing.
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
        let bytes: &[u8] = bytemuck::cast_slice(&words);
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
        {
            let mut pass = p.encoder(device).begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(key), timestamp_writes: None });
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

    /// Records a copy of `bytes` bytes into the pending encoder.
    pub(crate) fn record_copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: u64) {
        self.record_copy_at(src, 0, dst, 0, bytes);
    }

    /// Records a copy of `bytes` bytes from `src` at `src_off` to `dst` at `dst_off` (byte
    /// offsets, multiples of 4).
    pub(crate) fn record_copy_at(&self, src: &wgpu::Buffer, src_off: u64, dst: &wgpu::Buffer, dst_off: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut p = lock(&self.ctx.pending);
        p.encoder(&self.ctx.device).copy_buffer_to_buffer(src, src_off, dst, dst_off, bytes);
        p.dispatches += 1;
        p.keys.push("copy");
    }

    /// Records a clear of `buf` (its first `bytes` bytes, or all of it).
    pub(crate) fn record_clear(&self, buf: &wgpu::Buffer, bytes: Option<u64>) {
        let mut p = lock(&self.ctx.pending);
        p.encoder(&self.ctx.device).clear_buffer(buf, 0, bytes);
        p.dispatches += 1;
        p.keys.push("clear");
    }

    /// Records a copy into a read-back buffer and submits the batch with it.
    pub(crate) fn record_copy_and_submit(&self, src: &wgpu::Buffer, staging: &wgpu::Buffer, bytes: u64) {
        let mut p = lock(&self.ctx.pending);
        p.encoder(&self.ctx.device).copy_buffer_to_buffer(src, 0, staging, 0, bytes);
        p.keys.push("read");
        self.submit(&mut p);
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
}
