//! The shapes ops take (beside [`Gemm`](crate::matmul::Gemm) and
//! [`AttnShape`](crate::attention::AttnShape)), and the one place their extents are checked:
//! every backend calls the same `check` before it launches anything, so a buffer that is too
//! small is the same clear panic on the CPU, wgpu and CUDA.

/// Elements held by a buffer of any backend (host slices and vectors here; device buffers in
/// okapi-runtime). Buffers may be larger than an op needs (arenas sized for the largest batch).
pub trait Extent {
    fn extent(&self) -> usize;
}

impl<T> Extent for [T] {
    fn extent(&self) -> usize {
        self.len()
    }
}

impl<T> Extent for Vec<T> {
    fn extent(&self) -> usize {
        self.len()
    }
}

/// Panics unless `buf` holds at least `want` elements, naming the op and the tensor.
#[track_caller]
pub fn need<F: Extent + ?Sized>(op: &str, tensor: &str, buf: &F, want: usize) {
    let have = buf.extent();
    assert!(have >= want, "{op}: `{tensor}` holds {have} elements, the op needs {want}");
}

/// `n` rows of `c` elements, row-major: (N, C). Row-wise ops (embedding, bias, softmax,
/// cross-entropy, log-probs) take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows {
    pub n: usize,
    pub c: usize,
}

impl Rows {
    pub fn new(n: usize, c: usize) -> Rows {
        Rows { n, c }
    }
    /// Elements of the (N, C) tensor.
    pub fn len(&self) -> usize {
        self.n * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A norm over rows: `n` rows of `c` features, `eps` inside the square root (the backward
/// ignores it). RMSNorm scales by `w + w_offset`: Gemma stores its weights as w − 1 and
/// computes `x·rstd·(1 + w)` (offset 1); LayerNorm takes no offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormShape {
    pub n: usize,
    pub c: usize,
    pub eps: f32,
    pub w_offset: f32,
}

impl NormShape {
    /// No weight offset.
    pub fn new(n: usize, c: usize, eps: f32) -> NormShape {
        NormShape { n, c, eps, w_offset: 0.0 }
    }
    /// RMSNorm's weights become `w + offset` (Gemma: 1.0).
    pub fn weight_offset(mut self, offset: f32) -> NormShape {
        self.w_offset = offset;
        self
    }
    /// What the kernels add to each weight: `w_offset`, or −0.0 for an offset of 0, since
    /// w + (−0.0) is w bit for bit (w + 0.0 would turn a −0.0 weight into +0.0), so no offset
    /// computes exactly what a kernel without the addition would.
    pub fn w_shift(&self) -> f32 {
        if self.w_offset == 0.0 {
            -0.0
        } else {
            self.w_offset
        }
    }
    pub fn rows(&self) -> Rows {
        Rows::new(self.n, self.c)
    }
}

/// Rotary embedding of `n` tokens with `n_heads` heads of `head_dim` (even) each:
/// x (N, H, D), positions (N), inverse frequencies (D/2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeShape {
    pub n: usize,
    pub n_heads: usize,
    pub head_dim: usize,
}

impl RopeShape {
    pub fn new(n: usize, n_heads: usize, head_dim: usize) -> RopeShape {
        RopeShape { n, n_heads, head_dim }
    }
    /// Elements of x.
    pub fn len(&self) -> usize {
        self.n * self.n_heads * self.head_dim
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Rotated pairs (one GPU thread each).
    pub fn pairs(&self) -> usize {
        self.n * self.n_heads * (self.head_dim / 2)
    }
    #[track_caller]
    pub fn check<F: Extent + ?Sized, I: Extent + ?Sized>(&self, op: &str, x: &F, positions: &I, inv_freq: &F) {
        need(op, "x", x, self.len());
        need(op, "positions", positions, self.n);
        need(op, "inv_freq", inv_freq, self.head_dim / 2);
    }
}

/// Writing `t_new` new rows per sequence into a KV cache: cache (B, Tcap, W), new (B, Tnew, W),
/// pos (B) = each sequence's first free row; rows at or past Tcap are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub batch: usize,
    pub t_new: usize,
    pub t_cap: usize,
    pub width: usize,
}

impl KvShape {
    #[track_caller]
    pub fn check<F: Extent + ?Sized, I: Extent + ?Sized>(&self, cache: &F, new: &F, pos: &I) {
        need("kv_write", "cache", cache, self.batch * self.t_cap * self.width);
        need("kv_write", "new", new, self.batch * self.t_new * self.width);
        need("kv_write", "pos", pos, self.batch);
    }
}
