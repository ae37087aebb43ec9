//! Scaled dot-product attention with a causal mask, grouped-query heads (GQA/MQA), optional
//! ALiBi bias, per-sequence key lengths and query offsets (KV-cache decoding). The forward saves
//! each row's log-sum-exp so the backward recomputes probabilities without storing them.
//!
//! Layouts are token-major, as the projections write them:
//! q, out: (B,Tq,Hq,D)   k, v: (B,Tk,Hkv,D)   lse: (B,Tq,Hq)
//! Query head h reads key/value head h / (Hq/Hkv). Query row i of sequence b sits at position
//! p = `q_pos0\[b\] + i` and sees keys j < kv_len\[b\] (and j ≤ p when causal; with a sliding
//! window W > 0, causal only, also p − j < W). Key indexes are absolute positions (a KV cache
//! holds each key at its position), so the same rule serves training and cached decoding.
//! Score: `scale·(q·k_j) + slope_h·j` — HF BLOOM adds `slope·key_position`; by the shift
//! invariance of softmax that is ALiBi's `slope·(j − i)`. With a soft-cap c > 0 (Gemma 2's
//! `attn_logit_softcapping`) the first term becomes `c·tanh(scale·(q·k_j)/c)`; the backward
//! recomputes tanh from q·k (the forward saves only lse) for its factor 1 − tanh².

use crate::par::SharedMut;
use crate::shapes::{need, Extent, KvShape};
use crate::vmath;
use rayon::prelude::*;
use std::ops::Range;

/// The GPU sources of attention and the KV-cache write.
pub const FAMILY: crate::Family = crate::Family {
    name: "attention",
    cuda: include_str!("attention.cu"),
    cuda_kernels: &["attn_fwd", "attn_bwd_dot", "attn_bwd_dkdv", "attn_bwd_dq", "kv_write"],
    wgsl: &[
        (WGSL_VARIANTS[0].fwd_key, WGSL_VARIANTS[0].fwd),
        (WGSL_VARIANTS[0].bwd_key, WGSL_VARIANTS[0].bwd),
        (WGSL_VARIANTS[1].fwd_key, WGSL_VARIANTS[1].fwd),
        (WGSL_VARIANTS[1].bwd_key, WGSL_VARIANTS[1].bwd),
        (WGSL_VARIANTS[2].fwd_key, WGSL_VARIANTS[2].fwd),
        (WGSL_VARIANTS[2].bwd_key, WGSL_VARIANTS[2].bwd),
        (WGSL_VARIANTS[3].fwd_key, WGSL_VARIANTS[3].fwd),
        (WGSL_VARIANTS[3].bwd_key, WGSL_VARIANTS[3].bwd),
        ("attention_bwd_prep", WGSL_BWD_PREP),
        ("kv_write", WGSL_KV_WRITE),
    ],
};

/// One specialization of the WGSL attention kernels: private arrays of `dmax` ≥ head_dim
/// floats, and workgroup staging (BK keys in the forward, BQ rows in the backward) that fits
/// WebGPU's guaranteed 16 KiB. `fwd`: entry point `main`; `bwd`: entry points `dkdv`, `dq`;
/// both start with `tanh.wgsl` and the shared key-range and score helpers of `attention_mask.wgsl`.
pub struct WgslAttnVariant {
    pub dmax: usize,
    /// Keys staged per step of the forward, rows per step of the backward.
    pub bk: usize,
    pub bq: usize,
    pub fwd_key: &'static str,
    pub fwd: &'static str,
    pub bwd_key: &'static str,
    pub dkdv_key: &'static str,
    pub dq_key: &'static str,
    pub bwd: &'static str,
}

macro_rules! wgsl_attn_variant {
    ($dmax:literal, $bk:literal, $bq:literal) => {
        WgslAttnVariant {
            dmax: $dmax,
            bk: $bk,
            bq: $bq,
            fwd_key: concat!("attention_fwd_d", $dmax),
            fwd: concat!("const DMAX: u32 = ", $dmax, "u;\nconst BK: u32 = ", $bk, "u;\n", include_str!("../tanh.wgsl"), "\n", include_str!("attention_mask.wgsl"), "\n", include_str!("attention_fwd.wgsl")),
            bwd_key: concat!("attention_bwd_d", $dmax),
            dkdv_key: concat!("attention_bwd_dkdv_d", $dmax),
            dq_key: concat!("attention_bwd_dq_d", $dmax),
            bwd: concat!("const DMAX: u32 = ", $dmax, "u;\nconst BQ: u32 = ", $bq, "u;\n", include_str!("../tanh.wgsl"), "\n", include_str!("attention_mask.wgsl"), "\n", include_str!("attention_bwd.wgsl")),
        }
    };
}

/// Smallest first; a head dim uses the first variant with `dmax ≥ head_dim`. Workgroup memory:
/// forward 2·BK·DMAX ≤ 4096 floats; backward 2·BQ·DMAX + 2·BQ + 2 ≤ 2114.
pub const WGSL_VARIANTS: [WgslAttnVariant; 4] = [wgsl_attn_variant!(32, 32, 32), wgsl_attn_variant!(64, 32, 16), wgsl_attn_variant!(128, 16, 8), wgsl_attn_variant!(256, 8, 4)];
/// Largest head_dim the WGSL and CUDA attention kernels take.
pub const MAX_HEAD_DIM: usize = 256;
/// Query rows (forward, dq) or keys (dk·dv) per WGSL workgroup: one thread each.
pub const WGSL_ROWS_PER_GROUP: usize = 64;
/// Backward pass 1 (lse and D = rowsum(dout ⊙ out) per row, plus the q_pos0 / kv_len / slope
/// table): threads per workgroup.
pub const WGSL_BWD_PREP: &str = include_str!("attention_bwd_prep.wgsl");
pub const WGSL_PREP_WG: u32 = 64;
/// One thread per element of the new rows.
pub const WGSL_KV_WRITE: &str = include_str!("kv_write.wgsl");

/// The WGSL variant for `head_dim`, `None` past [`MAX_HEAD_DIM`].
pub fn wgsl_variant(head_dim: usize) -> Option<&'static WgslAttnVariant> {
    WGSL_VARIANTS.iter().find(|v| v.dmax >= head_dim)
}

/// Upper bounds of the loop iterations one invocation of each WGSL attention kernel runs —
/// (forward, backward dk·dv, backward dq) — every loop of the kernel counted, as a software
/// rasterizer that bounds shader loops counts them (llvmpipe stops a shader's loops after 65535
/// iterations in total). From the loop structure of attention_fwd.wgsl / attention_bwd.wgsl.
pub fn wgsl_loop_iterations(sh: &AttnShape) -> (u64, u64, u64) {
    let Some(var) = wgsl_variant(sh.head_dim) else { return (u64::MAX, u64::MAX, u64::MAX) };
    let (d, tq, tk) = (sh.head_dim as u64, sh.tq as u64, sh.tk as u64);
    let rep = (sh.n_heads / sh.n_kv_heads.max(1)) as u64;
    let (bk, bq, wg) = (var.bk as u64, var.bq as u64, WGSL_ROWS_PER_GROUP as u64);
    // init and final loops over d; per staged block: the staging loop and the per-block loops;
    // per key (forward, dq) or per (head, row) (dk·dv): the dot products over d
    let fwd = 2 * d + tk.div_ceil(bk) * ((bk * d).div_ceil(wg) + d + 2) + 2 * tk * (d + 1);
    let dkdv = 3 * d + rep * tq.div_ceil(bq) * ((bq * d).div_ceil(wg) + 1) + rep * tq * (2 * d + 1);
    let dq = 2 * d + tk.div_ceil(bq) * ((bq * d).div_ceil(wg) + 1) + tk * (2 * d + 1);
    (fwd, dkdv, dq)
}

/// Launch geometry of attention.cu (the tiles and shared-memory layouts its kernels assume).
pub mod cuda_launch {
    /// Threads per block of attn_fwd, attn_bwd_dkdv and attn_bwd_dq (four warps).
    pub const BLOCK: u32 = 128;
    /// Query rows per block of attn_fwd and attn_bwd_dq (ATT_BQ).
    pub const Q_ROWS: usize = 16;
    /// Query rows per block of attn_bwd_dot (one warp each), and its threads per block.
    pub const DOT_ROWS: usize = 8;
    pub const DOT_BLOCK: u32 = 256;

    /// Dynamic shared memory of attn_fwd: (16·D + 2·32·(D+1)) floats.
    pub fn fwd_smem_bytes(d: usize) -> usize {
        (16 * d + 2 * 32 * (d + 1)) * 4
    }
    /// Keys per block of attn_bwd_dkdv: 32 up to D = 128, then 16.
    pub fn dkdv_keys(d: usize) -> usize {
        if d <= 128 {
            32
        } else {
            16
        }
    }
    /// Dynamic shared memory of attn_bwd_dkdv.
    pub fn dkdv_smem_bytes(d: usize) -> usize {
        let bk = dkdv_keys(d);
        (2 * bk * (d + 1) + 2 * bk * d + 2 * 8 * d + 2 * 8 * bk) * 4
    }
    /// Dynamic shared memory of attn_bwd_dq: (2·16·D + 2·32·(D+1)) floats.
    pub fn dq_smem_bytes(d: usize) -> usize {
        (2 * 16 * d + 2 * 32 * (d + 1)) * 4
    }
}

/// The shape of one attention call (layouts in the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub tq: usize,
    pub tk: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    /// Sliding-window attention (Mistral, Gemma 2's local layers): with `window` = W > 0, the
    /// query at position p sees only keys j with p − j < W (transformers' `kv_idx > q_idx − W`);
    /// 0 = no window.
    pub window: usize,
    /// Logit soft-capping (Gemma 2): with `softcap` = c > 0, the score scale·(q·k) becomes
    /// c·tanh(scale·(q·k)/c) before ALiBi's term and the mask (transformers' eager attention);
    /// 0 = none, which computes exactly what the kernels did before the option existed.
    pub softcap: f32,
}

impl AttnShape {
    fn group(&self) -> usize {
        assert!(self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads), "attention: {} heads not divisible by {} kv heads", self.n_heads, self.n_kv_heads);
        self.n_heads / self.n_kv_heads
    }
    /// A window only narrows a causal mask (what transformers' sliding masks are).
    #[track_caller]
    fn check_window(&self, op: &str) {
        assert!(self.window == 0 || self.causal, "{op}: a sliding window ({}) needs causal attention", self.window);
    }
    /// A soft-cap is 0 (none) or positive and finite.
    #[track_caller]
    fn check_softcap(&self, op: &str) {
        if self.softcap != 0.0 {
            crate::activation::check_softcap(op, self.softcap);
        }
    }
    /// The keys `lo..hi` query row i of sequence b attends to; lo = hi when it sees none. Both
    /// ends grow with i, so a tile's rows see keys within its first row's lo and last row's hi.
    fn visible(&self, q_pos0: u32, kv_len: u32, i: usize) -> Range<usize> {
        let kv = (kv_len as usize).min(self.tk);
        if !self.causal {
            return 0..kv;
        }
        let p = q_pos0 as usize + i;
        let hi = kv.min(p + 1);
        let lo = if self.window > 0 { (p + 1).saturating_sub(self.window).min(hi) } else { 0 };
        lo..hi
    }
    /// The keys a tile of `rows` rows from `i0` spans: from its first row's lo to its last row's hi.
    fn tile_keys(&self, q_pos0: u32, kv_len: u32, i0: usize, rows: usize) -> Range<usize> {
        self.visible(q_pos0, kv_len, i0).start..self.visible(q_pos0, kv_len, i0 + rows - 1).end
    }
    /// Elements of q / out / dq, of k / v / dk / dv, and of lse.
    pub fn extents(&self) -> (usize, usize, usize) {
        let rows = self.batch * self.tq * self.n_heads;
        (rows * self.head_dim, self.batch * self.tk * self.n_kv_heads * self.head_dim, rows)
    }
    pub fn flops_fwd(&self) -> f64 {
        4.0 * (self.batch * self.n_heads * self.tq * self.tk * self.head_dim) as f64 * if self.causal && self.tq == self.tk { 0.5 } else { 1.0 }
    }
}

/// What attention reads, in its forward and again in its backward: q (B,Tq,Hq,D), k and v
/// (B,Tk,Hkv,D) — the layer's own keys, or a KV cache of capacity Tk — each sequence's first
/// query position and visible key count (B), and BLOOM's ALiBi slopes (Hq).
pub struct AttnInputs<'a, F: ?Sized, I: ?Sized> {
    pub q: &'a F,
    pub k: &'a F,
    pub v: &'a F,
    pub q_pos0: &'a I,
    pub kv_len: &'a I,
    pub alibi: Option<&'a F>,
}

impl<F: ?Sized, I: ?Sized> Clone for AttnInputs<'_, F, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: ?Sized, I: ?Sized> Copy for AttnInputs<'_, F, I> {}

impl<F: Extent + ?Sized, I: Extent + ?Sized> AttnInputs<'_, F, I> {
    /// Panics (naming `op` and the tensor) when a buffer is smaller than `sh` needs.
    #[track_caller]
    pub fn check(&self, op: &str, sh: &AttnShape) {
        sh.group();
        sh.check_window(op);
        sh.check_softcap(op);
        let (nq, nk, _) = sh.extents();
        need(op, "q", self.q, nq);
        need(op, "k", self.k, nk);
        need(op, "v", self.v, nk);
        need(op, "q_pos0", self.q_pos0, sh.batch);
        need(op, "kv_len", self.kv_len, sh.batch);
        if let Some(a) = self.alibi {
            need(op, "alibi", a, sh.n_heads);
        }
    }
}

/// The gradients attention's backward writes (all `=`): dq (B,Tq,Hq,D), dk and dv (B,Tk,Hkv,D).
pub struct AttnGrads<'a, F: ?Sized> {
    pub dq: &'a mut F,
    pub dk: &'a mut F,
    pub dv: &'a mut F,
}

/// Checks attention's outputs (`out`, `lse`, and the gradients of the backward) against `sh`.
#[track_caller]
pub fn check_attn_outputs<F: Extent + ?Sized>(op: &str, sh: &AttnShape, out: &F, lse: &F, grads: Option<&AttnGrads<'_, F>>) {
    let (nq, nk, nl) = sh.extents();
    need(op, "out", out, nq);
    need(op, "lse", lse, nl);
    if let Some(g) = grads {
        need(op, "dq", &*g.dq, nq);
        need(op, "dk", &*g.dk, nk);
        need(op, "dv", &*g.dv, nk);
    }
}

/// HF's ALiBi slopes (`build_alibi_tensor`), including head counts that are not powers of two:
/// the closest lower power of two gets the geometric series, the rest interleave from the next.
pub fn alibi_slopes(n_heads: usize) -> Vec<f32> {
    // The bases are Python floats (f64) in HF, the powers float32 tensors.
    let cp2 = 1usize << (usize::BITS - 1 - n_heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((cp2 as f64).log2() - 3.0)))) as f32;
    let mut slopes: Vec<f32> = (1..=cp2).map(|p| base.powf(p as f32)).collect();
    if cp2 != n_heads {
        let extra_base = 2f64.powf(-(2f64.powf(-(((2 * cp2) as f64).log2() - 3.0)))) as f32;
        let remaining = (n_heads - cp2).min(cp2);
        slopes.extend((0..remaining).map(|i| extra_base.powf((1 + 2 * i) as f32)));
    }
    slopes
}

/// Query rows per tile. A tile's scores (QT × visible keys) stay in cache and are produced and
/// consumed by GEMMs; with a causal mask, a tile reads keys up to its last row only.
const QT: usize = 64;

/// A strided operand of [`gemm_st`]: its first element, row and column strides (elements).
#[derive(Clone, Copy)]
struct Mat<P> {
    ptr: P,
    rs: usize,
    cs: usize,
}

/// The shape of one [`gemm_st`]: dst(m,n) = alpha·lhs(m,k)·rhs(k,n) (+ dst if accumulate).
#[derive(Clone, Copy)]
struct StGemm {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    accumulate: bool,
}

/// One strided single-threaded GEMM (`dst`'s column stride must be 1). The tasks calling this
/// are already parallel.
#[inline]
unsafe fn gemm_st(g: StGemm, dst: Mat<*mut f32>, lhs: Mat<*const f32>, rhs: Mat<*const f32>) {
    let StGemm { m, n, k, alpha, accumulate } = g;
    debug_assert_eq!(dst.cs, 1);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::ptr::write_bytes(dst.ptr.add(r * dst.rs), 0, n);
            }
        }
        return;
    }
    gemm::gemm(m, n, k, dst.ptr, 1, dst.rs as isize, accumulate, lhs.ptr, lhs.cs as isize, lhs.rs as isize, rhs.ptr, rhs.cs as isize, rhs.rs as isize, 1.0, alpha, false, false, false, gemm::Parallelism::None);
}

/// Rows `i0..i0 + rows` of query head `h` of sequence `b`, against keys `j0..j0 + nk` of kv head `g`.
#[derive(Clone, Copy)]
struct Tile {
    b: usize,
    h: usize,
    g: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    nk: usize,
}

impl Tile {
    /// The tile of `rows` rows from `i0`, over the keys its rows see (`None`: they see none).
    fn new(sh: &AttnShape, (q_pos0, kv_len): (u32, u32), (b, h): (usize, usize), (i0, rows): (usize, usize)) -> Option<Tile> {
        let keys = sh.tile_keys(q_pos0, kv_len, i0, rows);
        let g = h / sh.group();
        (!keys.is_empty()).then_some(Tile { b, h, g, i0, rows, j0: keys.start, nk: keys.len() })
    }
    /// Row r's visible keys as columns of the tile.
    fn cols(&self, sh: &AttnShape, (q_pos0, kv_len): (u32, u32), r: usize) -> Range<usize> {
        let vis = sh.visible(q_pos0, kv_len, self.i0 + r);
        vis.start - self.j0..vis.end - self.j0
    }
    /// Offset of the tile's first key (and value) row in k / v.
    fn kv0(&self, sh: &AttnShape) -> usize {
        ((self.b * sh.tk + self.j0) * sh.n_kv_heads + self.g) * sh.head_dim
    }
}

/// Zeroes `row` outside `cols` and returns the visible part.
fn visible_part(row: &mut [f32], cols: Range<usize>) -> &mut [f32] {
    row[..cols.start].fill(0.0);
    row[cols.end..].fill(0.0);
    &mut row[cols]
}

/// The score tile of `t`: s(rows, nk) = scale·Q·Kᵀ, soft-capped with `sh.softcap` (then `dcap`,
/// when given, holds the cap's derivative 1 − tanh² per score), + slope·j with ALiBi.
fn score_tile(s: &mut [f32], dcap: Option<&mut [f32]>, q: &[f32], k: &[f32], sh: &AttnShape, t: Tile, slope: f32) {
    let Tile { b, h, i0, rows, j0, nk, .. } = t;
    let (hq, d) = (sh.n_heads, sh.head_dim);
    let kw = sh.n_kv_heads * d;
    let q0 = ((b * sh.tq + i0) * hq + h) * d;
    let k0 = t.kv0(sh);
    // SAFETY: q rows i0..i0+rows and k rows j0..j0+nk of this (b, head) lie inside the checked buffers.
    unsafe { gemm_st(StGemm { m: rows, n: nk, k: d, alpha: sh.scale, accumulate: false }, Mat { ptr: s.as_mut_ptr(), rs: nk, cs: 1 }, Mat { ptr: q[q0..].as_ptr(), rs: hq * d, cs: 1 }, Mat { ptr: k[k0..].as_ptr(), rs: 1, cs: kw }) };
    if sh.softcap > 0.0 {
        let s = &mut s[..rows * nk];
        match dcap {
            Some(dc) => crate::activation::softcap_grad_chunk(s, &mut dc[..rows * nk], sh.softcap),
            None => crate::activation::softcap_chunk(s, sh.softcap),
        }
    }
    if slope != 0.0 {
        for row in s[..rows * nk].chunks_exact_mut(nk) {
            for (j, x) in row.iter_mut().enumerate() {
                *x += slope * (j0 + j) as f32;
            }
        }
    }
}

/// out = softmax(scores)·v (`=`), lse saved (`=`). Rows with no visible key give 0 and -inf.
/// Tasks are (sequence, query head, tile of QT query rows); each computes its score tile
/// transposed, Sᵀ (keys × rows) = K·Qᵀ, with one GEMM, the softmax down its columns, and its
/// output rows with a second GEMM (Pᵀ read column-major), normalised afterwards. The transposed
/// tile is what the `gemm` crate runs fast here: Q·Kᵀ written row-major packs Kᵀ from columns
/// and ran at 40 % of the rate of K·Qᵀ (64 query rows against 1 300 keys, one thread).
pub fn attention_fwd(out: &mut [f32], lse: &mut [f32], x: &AttnInputs<'_, [f32], [u32]>, sh: &AttnShape) {
    x.check("attention_fwd", sh);
    check_attn_outputs("attention_fwd", sh, out, lse, None);
    let (hq, d) = (sh.n_heads, sh.head_dim);
    let tiles = sh.tq.div_ceil(QT);
    let (pout, plse) = (SharedMut(out.as_mut_ptr()), SharedMut(lse.as_mut_ptr()));
    (0..sh.batch * hq * tiles).into_par_iter().for_each(|task| FWD_SCRATCH.with_borrow_mut(|scratch| {
        let (pout, plse) = (pout, plse);
        let (b, h, tile) = (task / (hq * tiles), task / tiles % hq, task % tiles);
        let i0 = tile * QT;
        let rows = QT.min(sh.tq - i0);
        let seq = (x.q_pos0[b], x.kv_len[b]);
        // SAFETY: rows (b, i0.., h) of out and lse belong to this task alone; each is d apart
        // in out (stride hq·d) and one apart in lse (stride hq).
        let out_row = |r: usize| unsafe { pout.0.add(((b * sh.tq + i0 + r) * hq + h) * d) };
        let lse_row = |r: usize| unsafe { &mut *plse.0.add((b * sh.tq + i0 + r) * hq + h) };
        let Some(t) = Tile::new(sh, seq, (b, h), (i0, rows)) else {
            for r in 0..rows {
                // SAFETY: as above.
                unsafe { std::ptr::write_bytes(out_row(r), 0, d) };
                *lse_row(r) = f32::NEG_INFINITY;
            }
            return;
        };
        softmax_tile_t(scratch, x, sh, t, seq);
        // out rows (rows, d) = P (rows, nk) · V (nk, d), P stored transposed
        let kw = sh.n_kv_heads * d;
        // SAFETY: the out rows of this task are disjoint from every other task's; v rows j0..j0+nk exist.
        unsafe { gemm_st(StGemm { m: rows, n: d, k: t.nk, alpha: 1.0, accumulate: false }, Mat { ptr: out_row(0), rs: hq * d, cs: 1 }, Mat { ptr: scratch.st.as_ptr(), rs: 1, cs: rows }, Mat { ptr: x.v[t.kv0(sh)..].as_ptr(), rs: kw, cs: 1 }) };
        for (r, (&sum, &mx)) in scratch.sum.iter().zip(&scratch.max).enumerate() {
            // SAFETY: as above.
            let o = unsafe { std::slice::from_raw_parts_mut(out_row(r), d) };
            if sum > 0.0 {
                vmath::scale(o, (1.0 / sum) as f32);
                *lse_row(r) = mx + sum.ln() as f32;
            } else {
                o.fill(0.0);
                *lse_row(r) = f32::NEG_INFINITY;
            }
        }
    }));
}

thread_local! {
    /// Each pool thread's tile buffers, kept between calls (rayon calls `for_each_init`'s init
    /// per split, and a fresh tile of > 128 KiB is a fresh mmap, page-faulted in each time).
    static FWD_SCRATCH: std::cell::RefCell<FwdScratch> = std::cell::RefCell::new(FwdScratch::default());
    static BWD_SCRATCH: std::cell::RefCell<BwdScratch> = std::cell::RefCell::new(BwdScratch::default());
}

/// A forward task's buffers, reused across its tiles: the transposed scores (keys × rows), and
/// per row its visible key columns, max and sum.
#[derive(Default)]
struct FwdScratch {
    st: Vec<f32>,
    cols: Vec<Range<usize>>,
    max: Vec<f32>,
    sum: Vec<f64>,
    part: Vec<f32>,
}

/// Fills `scratch.st` with the tile's probabilities, unnormalised: Pᵀ\[j\]\[r\] = e^(s − max_r)
/// where key j is visible to row r, else 0; each row's Σ (0: no visible key) in `scratch.sum`,
/// its max in `scratch.max`.
fn softmax_tile_t(scratch: &mut FwdScratch, x: &AttnInputs<'_, [f32], [u32]>, sh: &AttnShape, t: Tile, seq: (u32, u32)) {
    let (rows, nk, d) = (t.rows, t.nk, sh.head_dim);
    let FwdScratch { st, cols, max, sum, part } = scratch;
    if st.len() < rows * nk {
        st.resize(rows * nk, 0.0);
    }
    let st = &mut st[..rows * nk];
    let q0 = ((t.b * sh.tq + t.i0) * sh.n_heads + t.h) * d;
    // SAFETY: q rows i0..i0+rows and k rows j0..j0+nk of this (b, head) lie inside the checked buffers.
    unsafe { gemm_st(StGemm { m: nk, n: rows, k: d, alpha: sh.scale, accumulate: false }, Mat { ptr: st.as_mut_ptr(), rs: rows, cs: 1 }, Mat { ptr: x.k[t.kv0(sh)..].as_ptr(), rs: sh.n_kv_heads * d, cs: 1 }, Mat { ptr: x.q[q0..].as_ptr(), rs: 1, cs: sh.n_heads * d }) };
    if sh.softcap > 0.0 {
        crate::activation::softcap_chunk(st, sh.softcap);
    }
    let slope = x.alibi.map_or(0.0, |a| a[t.h]);
    cols.clear();
    cols.extend((0..rows).map(|r| t.cols(sh, seq, r)));
    // keys outside some row's columns: those before the largest start or from the smallest end
    let masked_below = cols.iter().map(|c| c.start).max().unwrap_or(0);
    let masked_from = cols.iter().map(|c| c.end).min().unwrap_or(nk);
    max.clear();
    max.resize(rows, f32::NEG_INFINITY);
    for (j, srow) in st.chunks_exact_mut(rows).enumerate() {
        if slope != 0.0 {
            let bias = slope * (t.j0 + j) as f32;
            srow.iter_mut().for_each(|s| *s += bias);
        }
        if j < masked_below || j >= masked_from {
            for (s, c) in srow.iter_mut().zip(cols.iter()) {
                if !c.contains(&j) {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
        vmath::max_into(max, srow);
    }
    // a row with no visible key keeps −inf everywhere: shift by 0 so that e^(−inf) = 0
    for (m, c) in max.iter_mut().zip(cols.iter()) {
        if c.is_empty() {
            *m = 0.0;
        }
    }
    sum.clear();
    sum.resize(rows, 0.0);
    part.clear();
    part.resize(rows, 0.0);
    // f32 partial sums over blocks of keys, flushed into f64
    for block in st.chunks_mut(rows * SUM_BLOCK) {
        for srow in block.chunks_exact_mut(rows) {
            vmath::exp_shift_acc(srow, max, part);
        }
        for (s, p) in sum.iter_mut().zip(part.iter_mut()) {
            *s += *p as f64;
            *p = 0.0;
        }
    }
}

/// Keys per f32 partial sum of the forward's softmax (as short as the 16-lane sums of
/// `vmath::exp_affine_sum` over a thousand keys).
const SUM_BLOCK: usize = 64;

/// What the backward reads besides q, k, v: the upstream gradient, the forward's out and lse.
#[derive(Clone, Copy)]
struct BwdRows<'a> {
    dout: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
}

/// Turns a tile's scores `p` into probabilities and its dP `ds` into dS, row by row, both zero
/// outside each row's visible keys:  P = exp(S − lse),  dS = P ⊙ (dP − D_i)·scale (⊙ dcap, the
/// soft-cap's 1 − tanh², when capped) with D_i = Σ_j p_j·(dout·v_j) = dout_i·out_i.
fn probs_and_dscores(p: &mut [f32], ds: &mut [f32], dcap: Option<&[f32]>, t: Tile, sh: &AttnShape, seq: (u32, u32), x: BwdRows<'_>) {
    let (hq, d, nk) = (sh.n_heads, sh.head_dim, t.nk);
    for r in 0..t.rows {
        let row = (t.b * sh.tq + t.i0 + r) * hq + t.h;
        let cols = t.cols(sh, seq, r);
        let prow = visible_part(&mut p[r * nk..(r + 1) * nk], cols.clone());
        let dsrow = visible_part(&mut ds[r * nk..(r + 1) * nk], cols.clone());
        if prow.is_empty() {
            continue;
        }
        vmath::exp_affine_sum(prow, 1.0, x.lse[row]);
        let o = row * d;
        let di = vmath::dot(&x.dout[o..o + d], &x.out[o..o + d]);
        for (g, &pj) in dsrow.iter_mut().zip(prow.iter()) {
            *g = pj * (*g - di) * sh.scale;
        }
        if let Some(dc) = dcap {
            for (g, &f) in dsrow.iter_mut().zip(&dc[r * nk..][cols]) {
                *g *= f;
            }
        }
    }
}

/// One backward task's tile buffers, grown to the largest tile: scores (then probabilities),
/// dP (then dS), and with a soft-cap its factor 1 − tanh².
#[derive(Default)]
struct BwdScratch {
    p: Vec<f32>,
    ds: Vec<f32>,
    dcap: Vec<f32>,
}

/// The gradients, written through raw pointers by tasks that own disjoint rows of them.
#[derive(Clone, Copy)]
struct GradPtrs {
    dq: SharedMut,
    dk: SharedMut,
    dv: SharedMut,
}

/// One tile of query rows of head `t.h` against its keys: recomputes P (and the soft-cap's
/// factor) from q·k and the saved lse, then dQ = dS·K (`=`), dK += dSᵀ·Q, dV += Pᵀ·dO.
fn bwd_tile(sc: &mut BwdScratch, g: GradPtrs, t: Tile, x: &AttnInputs<'_, [f32], [u32]>, rows_in: BwdRows<'_>, sh: &AttnShape, slope: f32) {
    let (hq, d, kw) = (sh.n_heads, sh.head_dim, sh.n_kv_heads * sh.head_dim);
    let (rows, nk, kt) = (t.rows, t.nk, t.kv0(sh));
    let row0 = ((t.b * sh.tq + t.i0) * hq + t.h) * d;
    let capped = sh.softcap > 0.0;
    if sc.p.len() < rows * nk {
        sc.p.resize(rows * nk, 0.0);
        sc.ds.resize(rows * nk, 0.0);
    }
    if capped && sc.dcap.len() < rows * nk {
        sc.dcap.resize(rows * nk, 0.0);
    }
    let BwdScratch { p, ds, dcap } = sc;
    score_tile(p, capped.then_some(&mut dcap[..]), x.q, x.k, sh, t, slope);
    let dout = rows_in.dout;
    // dP (rows, nk) = dO (rows, d) · Vᵀ (d, nk)
    // SAFETY: dout rows of this tile and v rows j0..j0+nk exist (checked by the caller).
    unsafe { gemm_st(StGemm { m: rows, n: nk, k: d, alpha: 1.0, accumulate: false }, Mat { ptr: ds.as_mut_ptr(), rs: nk, cs: 1 }, Mat { ptr: dout[row0..].as_ptr(), rs: hq * d, cs: 1 }, Mat { ptr: x.v[kt..].as_ptr(), rs: 1, cs: kw }) };
    probs_and_dscores(p, ds, capped.then_some(&dcap[..]), t, sh, (x.q_pos0[t.b], x.kv_len[t.b]), rows_in);
    // SAFETY: dq rows of this tile and dk/dv rows j0..j0+nk of (b, g) belong to the calling task
    // alone; every read operand lies inside the checked buffers.
    unsafe {
        // dQ (rows, d) = dS (rows, nk) · K (nk, d)
        gemm_st(StGemm { m: rows, n: d, k: nk, alpha: 1.0, accumulate: false }, Mat { ptr: g.dq.0.add(row0), rs: hq * d, cs: 1 }, Mat { ptr: ds.as_ptr(), rs: nk, cs: 1 }, Mat { ptr: x.k[kt..].as_ptr(), rs: kw, cs: 1 });
        // dK (nk, d) += dSᵀ (nk, rows) · Q (rows, d)
        gemm_st(StGemm { m: nk, n: d, k: rows, alpha: 1.0, accumulate: true }, Mat { ptr: g.dk.0.add(kt), rs: kw, cs: 1 }, Mat { ptr: ds.as_ptr(), rs: 1, cs: nk }, Mat { ptr: x.q[row0..].as_ptr(), rs: hq * d, cs: 1 });
        // dV (nk, d) += Pᵀ (nk, rows) · dO (rows, d)
        gemm_st(StGemm { m: nk, n: d, k: rows, alpha: 1.0, accumulate: true }, Mat { ptr: g.dv.0.add(kt), rs: kw, cs: 1 }, Mat { ptr: p.as_ptr(), rs: 1, cs: nk }, Mat { ptr: dout[row0..].as_ptr(), rs: hq * d, cs: 1 });
    }
}

/// Backward of `attention_fwd`: dq, dk, dv all `=` (overwritten). Tasks are (sequence, kv
/// head), so each owns its dk/dv rows and the dq rows of its query heads. Per tile of query
/// rows the probabilities are recomputed from the saved lse (no (T,T) tensor is stored):
///   P = exp(S − lse)        dP = dO·Vᵀ        dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale (⊙ 1 − tanh²)
///   dQ = dS·K (`=`)         dK += dSᵀ·Q       dV += Pᵀ·dO     (over the heads of the group)
pub fn attention_bwd(grads: AttnGrads<'_, [f32]>, dout: &[f32], out: &[f32], lse: &[f32], x: &AttnInputs<'_, [f32], [u32]>, sh: &AttnShape) {
    // the gradients are written through raw pointers below: check every extent first
    x.check("attention_bwd", sh);
    check_attn_outputs("attention_bwd", sh, out, lse, Some(&grads));
    check_attn_outputs("attention_bwd", sh, dout, lse, None);
    let AttnGrads { dq, dk, dv } = grads;
    let rows_in = BwdRows { dout, out, lse };
    let (hq, d, rep) = (sh.n_heads, sh.head_dim, sh.group());
    let kw = sh.n_kv_heads * d;
    let shared = GradPtrs { dq: SharedMut(dq.as_mut_ptr()), dk: SharedMut(dk.as_mut_ptr()), dv: SharedMut(dv.as_mut_ptr()) };
    (0..sh.batch * sh.n_kv_heads).into_par_iter().for_each(|task| BWD_SCRATCH.with_borrow_mut(|sc| {
        let (b, g) = (task / sh.n_kv_heads, task % sh.n_kv_heads);
        // the whole struct moves in (a closure naming only its fields would capture the raw
        // pointers, which are not Send)
        let ptrs = shared;
        let seq = (x.q_pos0[b], x.kv_len[b]);
        let kv0 = (b * sh.tk * sh.n_kv_heads + g) * d;
        for j in 0..sh.tk {
            // SAFETY: dk/dv rows (b, j, g) belong to this task alone.
            unsafe {
                std::ptr::write_bytes(ptrs.dk.0.add(kv0 + j * kw), 0, d);
                std::ptr::write_bytes(ptrs.dv.0.add(kv0 + j * kw), 0, d);
            }
        }
        for h in g * rep..(g + 1) * rep {
            let slope = x.alibi.map_or(0.0, |a| a[h]);
            for i0 in (0..sh.tq).step_by(QT) {
                let rows = QT.min(sh.tq - i0);
                match Tile::new(sh, seq, (b, h), (i0, rows)) {
                    Some(t) => bwd_tile(sc, ptrs, t, x, rows_in, sh, slope),
                    None => {
                        let row0 = ((b * sh.tq + i0) * hq + h) * d;
                        for r in 0..rows {
                            // SAFETY: dq row (b, i0+r, h) belongs to this task alone.
                            unsafe { std::ptr::write_bytes(ptrs.dq.0.add(row0 + r * hq * d), 0, d) };
                        }
                    }
                }
            }
        }
    }));
}

/// Writes new keys or values into a cache: cache[b, pos\[b\]+i, :] = new[b, i, :] for i < Tn
/// (rows past the capacity are dropped). cache: (B,Tcap,W) new: (B,Tn,W)
pub fn kv_write(cache: &mut [f32], new: &[f32], pos: &[u32], sh: &KvShape) {
    sh.check(cache, new, pos);
    let KvShape { batch, t_new, t_cap, width } = *sh;
    cache.par_chunks_mut(t_cap * width).take(batch).enumerate().for_each(|(b, cb)| {
        for i in 0..t_new {
            let t = pos[b] as usize + i;
            if t < t_cap {
                cb[t * width..][..width].copy_from_slice(&new[(b * t_new + i) * width..][..width]);
            }
        }
    });
}
