//! Page-locked host stages ([`crate::HostStage`] on CUDA): copies between them and device
//! buffers are queued on the backend's stream (`cuMemcpy*Async`), each followed by an event
//! that the host waits for before it touches the stage again.

use super::{A, CudaBackend, CudaBuf};
use crate::{check, HostStage};
use cudarc::driver::{result, sys, CudaContext, CudaEvent};
use std::sync::Arc;

/// `len` f32 of page-locked host memory and the event of the last copy queued against it.
pub struct PinnedStage {
    ptr: *mut f32,
    len: usize,
    event: CudaEvent,
    ctx: Arc<CudaContext>,
}

// SAFETY: the memory is owned by this value alone and freed once, in `drop`; access goes
// through `&self` / `&mut self`, after the event says no copy is using it.
unsafe impl Send for PinnedStage {}
unsafe impl Sync for PinnedStage {}

impl PinnedStage {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<PinnedStage, String> {
        let len = len.max(1);
        ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
        let event = ctx.new_event(None).map_err(|e| format!("event: {e:?}"))?;
        // Cached memory (flag 0, not cudarc's default write-combined): the CPU reads the
        // gradients out of it, and write-combined memory is uncached for reads.
        // SAFETY: a fresh allocation of `len` f32; zeroed below before anyone reads it.
        let ptr = unsafe { result::malloc_host(len * 4, sys::CU_MEMHOSTALLOC_PORTABLE) }.map_err(|e| format!("{e:?}"))? as *mut f32;
        assert!(!ptr.is_null() && ptr.is_aligned(), "cuMemHostAlloc returned an unusable pointer");
        // SAFETY: `ptr` holds `len` f32 and nothing else refers to it yet.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(PinnedStage { ptr, len, event, ctx: ctx.clone() })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn wait(&self) {
        self.event.synchronize().unwrap_or_else(|e| panic!("cuda: waiting for a staged copy: {e:?}"));
    }

    pub fn as_slice(&self) -> &[f32] {
        self.wait();
        // SAFETY: no queued copy uses the memory any more (the event has completed).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        self.wait();
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedStage {
    fn drop(&mut self) {
        // a copy still in flight must not land in freed memory
        let _ = self.event.synchronize();
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `malloc_host` in `new`, freed only here.
        let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

impl CudaBackend {
    pub(super) fn pinned_stage(&self, len: usize) -> HostStage {
        let p = PinnedStage::new(&self.inner.ctx, len).unwrap_or_else(|e| panic!("cuda: page-locked host memory for {len} elements: {e}"));
        HostStage::pinned(p)
    }

    fn device_addr(&self, b: &CudaBuf, off: usize) -> sys::CUdeviceptr {
        match self.pb_at(b, off) {
            A::P(ptr) => ptr,
            _ => unreachable!("pb_at gives a pointer"),
        }
    }

    /// Queues stage[..len] = src[off .. off+len] and records the stage's event after it.
    pub(super) fn read_staged_impl(&self, src: &CudaBuf, off: usize, stage: &mut HostStage, len: usize) {
        check::staged("read_staged", "src", src, off, len, stage.len());
        let stream = &self.inner.stream;
        let Some(p) = stage.pinned_mut() else {
            let values = self.read_range(src, off, len);
            stage.as_mut_slice()[..len].copy_from_slice(&values);
            return;
        };
        let from = self.device_addr(src, off);
        let dst = &mut p.as_mut_slice()[..len];
        // SAFETY: `dst` is page-locked and stays alive until the event below has completed
        // (every later access and the drop wait for it); the source range was checked.
        unsafe { result::memcpy_dtoh_async(dst, from, stream.cu_stream()) }.unwrap_or_else(|e| panic!("cuda: staged download: {e:?}"));
        p.event.record(stream).unwrap_or_else(|e| panic!("cuda: recording a staged copy: {e:?}"));
    }

    /// Queues dst[off .. off+len] = stage[..len] and records the stage's event after it.
    pub(super) fn write_staged_impl(&self, dst: &mut CudaBuf, off: usize, stage: &HostStage, len: usize) {
        check::staged("write_staged", "dst", &*dst, off, len, stage.len());
        let stream = &self.inner.stream;
        let to = self.device_addr(dst, off);
        let src = &stage.as_slice()[..len];
        // SAFETY: a pinned stage outlives the copy (its drop and its next `as_mut_slice` wait for
        // the event recorded below); a plain one is copied by the driver before the call returns.
        unsafe { result::memcpy_htod_async(to, src, stream.cu_stream()) }.unwrap_or_else(|e| panic!("cuda: staged upload: {e:?}"));
        if let Some(p) = stage.pinned_ref() {
            p.event.record(stream).unwrap_or_else(|e| panic!("cuda: recording a staged copy: {e:?}"));
        }
    }

    /// Elements off .. off+len of `src` on the host (synchronous).
    pub(super) fn read_range(&self, src: &CudaBuf, off: usize, len: usize) -> Vec<f32> {
        let mut out = vec![0f32; len];
        if len > 0 {
            self.inner.stream.memcpy_dtoh(&src.0.slice(off..off + len), &mut out).unwrap_or_else(|e| panic!("cuda: download: {e:?}"));
        }
        self.synchronize();
        out
    }
}
