//! Host staging buffers: host memory that copies to and from a device run against while the
//! CPU works on something else (the offloaded optimizer step streams gradients down and
//! weights up through them).
//!
//! On CUDA a stage is page-locked memory: [`Backend::read_staged`](crate::Backend::read_staged)
//! and [`Backend::write_staged`](crate::Backend::write_staged) only queue the copy on the
//! backend's stream and record an event, and [`HostStage::as_slice`] /
//! [`HostStage::as_mut_slice`] wait for that event. Elsewhere a stage is a plain vector and the
//! copies are done when the call returns, so the same pipeline code runs on every backend.

/// A staging buffer of f32 values in host memory (see the module docs).
pub struct HostStage {
    mem: StageMem,
}

enum StageMem {
    Plain(Vec<f32>),
    #[cfg(feature = "cuda")]
    Pinned(crate::cuda::PinnedStage),
}

impl HostStage {
    /// `len` zeros in ordinary host memory (the stage of backends whose copies are synchronous).
    pub fn plain(len: usize) -> HostStage {
        HostStage { mem: StageMem::Plain(vec![0.0; len]) }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn pinned(p: crate::cuda::PinnedStage) -> HostStage {
        HostStage { mem: StageMem::Pinned(p) }
    }

    /// Elements the stage holds.
    pub fn len(&self) -> usize {
        match &self.mem {
            StageMem::Plain(v) => v.len(),
            #[cfg(feature = "cuda")]
            StageMem::Pinned(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether copies against this stage are queued (page-locked memory) rather than done at once.
    pub fn is_pinned(&self) -> bool {
        !matches!(self.mem, StageMem::Plain(_))
    }

    /// The values, once every copy queued into or out of the stage has finished.
    pub fn as_slice(&self) -> &[f32] {
        match &self.mem {
            StageMem::Plain(v) => v,
            #[cfg(feature = "cuda")]
            StageMem::Pinned(p) => p.as_slice(),
        }
    }

    /// The values to fill, once every copy queued into or out of the stage has finished.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.mem {
            StageMem::Plain(v) => v,
            #[cfg(feature = "cuda")]
            StageMem::Pinned(p) => p.as_mut_slice(),
        }
    }

    /// The plain vector of a synchronous backend's stage (`None` for page-locked memory).
    pub fn plain_mut(&mut self) -> Option<&mut Vec<f32>> {
        match &mut self.mem {
            StageMem::Plain(v) => Some(v),
            #[cfg(feature = "cuda")]
            StageMem::Pinned(_) => None,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn pinned_ref(&self) -> Option<&crate::cuda::PinnedStage> {
        match &self.mem {
            StageMem::Pinned(p) => Some(p),
            StageMem::Plain(_) => None,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn pinned_mut(&mut self) -> Option<&mut crate::cuda::PinnedStage> {
        match &mut self.mem {
            StageMem::Pinned(p) => Some(p),
            StageMem::Plain(_) => None,
        }
    }
}
