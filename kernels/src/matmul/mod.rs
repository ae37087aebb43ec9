//! Matrix multiplication: `C = alpha·op(A)·op(B) + beta·C`, row-major, strided batches.
//! CPU kernel through the `gemm` crate (near machine peak, rayon-parallel; AVX-512 picked at run
//! time), except for skinny products `x·Wᵀ` with a few rows (decoding: one row per sequence),
//! which are memory-bound on W and go through `skinny_nt` below instead of being packed.

use crate::vmath;

/// The GPU sources of the GEMM.
pub const FAMILY: crate::Family = crate::Family {
    name: "matmul",
    cuda: include_str!("matmul.cu"),
    cuda_kernels: &["matmul_f32", "matmul_bf16_mma"],
    wgsl: &[("matmul", WGSL)],
};

/// Entry point `main`: one workgroup per [`TILE`]×[`TILE`] tile of C and batch entry.
pub const WGSL: &str = include_str!("matmul.wgsl");
/// Rows and columns of C per workgroup (WGSL) or block (CUDA, both kernels).
pub const TILE: usize = 64;
/// Upper bound of the loop iterations one invocation of matmul.wgsl runs (see
/// [`crate::attention::wgsl_loop_iterations`] for why it is counted): per 16-deep k step one
/// outer, four staging and sixteen multiply-add iterations, then the 4×4 store.
pub fn wgsl_loop_iterations(g: &Gemm) -> u64 {
    g.k.div_ceil(16) as u64 * 21 + 20
}
/// Threads per block of `matmul_f32` and of `matmul_bf16_mma` (four warps of mma.sync).
pub const CUDA_F32_BLOCK: u32 = 256;
pub const CUDA_MMA_BLOCK: u32 = 128;

/// One (batched) GEMM. `op(A)` is `(m,k)`: stored `(m,k)`, or `(k,m)` when `trans_a`.
/// `op(B)` is `(k,n)`: stored `(k,n)`, or `(n,k)` when `trans_b`. `C` is `(m,n)`.
/// Batch `i` reads `A[i·stride_a..]`, `B[i·stride_b..]` and writes `C[i·stride_c..]`.
/// `beta = 1` accumulates (parameter gradients); `beta = 0` overwrites (C is not read).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
}

impl Gemm {
    /// A single `(m,k)·(k,n)` product that overwrites C.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm { m, n, k, trans_a: false, trans_b: false, alpha: 1.0, beta: 0.0, batch: 1, stride_a: 0, stride_b: 0, stride_c: 0 }
    }
    pub fn trans_a(mut self) -> Self {
        self.trans_a = true;
        self
    }
    pub fn trans_b(mut self) -> Self {
        self.trans_b = true;
        self
    }
    /// Accumulate into C (`beta = 1`).
    pub fn accumulate(mut self) -> Self {
        self.beta = 1.0;
        self
    }
    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    pub fn batched(mut self, batch: usize, stride_a: usize, stride_b: usize, stride_c: usize) -> Self {
        self.batch = batch;
        self.stride_a = stride_a;
        self.stride_b = stride_b;
        self.stride_c = stride_c;
        self
    }
    /// Elements each operand must hold.
    pub fn extents(&self) -> (usize, usize, usize) {
        let last = self.batch.saturating_sub(1);
        (last * self.stride_a + self.m * self.k, last * self.stride_b + self.k * self.n, last * self.stride_c + self.m * self.n)
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch) as f64
    }
}

/// `c = alpha·op(a)·op(b) + beta·c` on the CPU.
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], g: &Gemm) {
    let (ea, eb, ec) = g.extents();
    assert!(a.len() >= ea && b.len() >= eb && c.len() >= ec, "matmul: buffers too small for {g:?}");
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.m <= SKINNY_MAX_M && g.trans_b && !g.trans_a && g.k > 0 {
        for i in 0..g.batch {
            skinny_nt(&mut c[i * g.stride_c..][..g.m * g.n], &a[i * g.stride_a..][..g.m * g.k], &b[i * g.stride_b..][..g.n * g.k], g);
        }
        return;
    }
    // (row stride, column stride) of each operand as stored.
    let (a_rs, a_cs) = if g.trans_a { (1, g.m as isize) } else { (g.k as isize, 1) };
    let (b_rs, b_cs) = if g.trans_b { (1, g.k as isize) } else { (g.n as isize, 1) };
    let parallelism = if g.m * g.n * g.k < 32 * 32 * 32 || rayon::current_num_threads() == 1 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    };
    for i in 0..g.batch {
        let (pa, pb, pc) = (&a[i * g.stride_a..], &b[i * g.stride_b..], &mut c[i * g.stride_c..]);
        if g.k == 0 {
            for x in &mut pc[..g.m * g.n] {
                *x = if g.beta == 0.0 { 0.0 } else { *x * g.beta };
            }
            continue;
        }
        // SAFETY: the extents were checked above; gemm reads/writes only inside them.
        // gemm computes dst = alpha·dst + beta·lhs·rhs, i.e. its (alpha, beta) are our (beta, alpha).
        unsafe {
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                pc.as_mut_ptr(),
                1,
                g.n as isize,
                g.beta != 0.0,
                pa.as_ptr(),
                a_cs,
                a_rs,
                pb.as_ptr(),
                b_cs,
                b_rs,
                g.beta,
                g.alpha,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// Rows up to which `x·Wᵀ` takes the skinny path.
const SKINNY_MAX_M: usize = 16;
/// Output columns per parallel task of the skinny path (a multiple of 4).
const SKINNY_COLS: usize = 64;

/// c (m,n) = alpha·a (m,k) · bᵀ (b stored (n,k)) + beta·c, for small m. Every output is a dot
/// product of two contiguous rows; four rows of b are streamed once against each row of a, so
/// b (the weight) is read exactly once from memory instead of being packed first.
fn skinny_nt(c: &mut [f32], a: &[f32], b: &[f32], g: &Gemm) {
    use rayon::prelude::*;
    let (m, n, k) = (g.m, g.n, g.k);
    let pc = SharedMut(c.as_mut_ptr());
    let tasks = n.div_ceil(SKINNY_COLS);
    // small products stay on the calling thread
    let min_tasks = (1usize << 16).div_ceil(SKINNY_COLS * k * m.max(1)).max(1);
    (0..tasks).into_par_iter().with_min_len(min_tasks).for_each(|t| {
        let n0 = t * SKINNY_COLS;
        let n1 = (n0 + SKINNY_COLS).min(n);
        // each task writes only columns n0..n1 of c, which holds m·n elements (private helper:
        // skinny_cols trusts these bounds)
        #[cfg(target_arch = "x86_64")]
        if vmath::has_avx512() {
            // SAFETY: the CPU has AVX-512F; the bounds are the caller's (see above).
            unsafe { skinny_cols_avx512(pc, a, b, g, (n0, n1)) };
            return;
        }
        skinny_cols(pc, a, b, g, (n0, n1));
    });
}

vmath::multiversion! {
    fn skinny_cols(pc: SharedMut, a: &[f32], b: &[f32], g: &Gemm, cols: (usize, usize)) -> () {
        let (m, n, k, alpha, beta, (n0, n1)) = (g.m, g.n, g.k, g.alpha, g.beta, cols);
        const L: usize = 16;
        let store = |r: usize, j: usize, dot: f32| {
            // SAFETY: (r, j) < (m, n), inside c (the caller's contract).
            let out = unsafe { &mut *pc.0.add(r * n + j) };
            *out = if beta == 0.0 { alpha * dot } else { alpha * dot + beta * *out };
        };
        let kk = k / L * L;
        let mut j = n0;
        while j + 4 <= n1 {
            let w = [&b[j * k..][..k], &b[(j + 1) * k..][..k], &b[(j + 2) * k..][..k], &b[(j + 3) * k..][..k]];
            for r in 0..m {
                let x = &a[r * k..][..k];
                let (mut a0, mut a1, mut a2, mut a3) = ([0f32; L], [0f32; L], [0f32; L], [0f32; L]);
                let rows = x[..kk].chunks_exact(L).zip(w[0][..kk].chunks_exact(L)).zip(w[1][..kk].chunks_exact(L)).zip(w[2][..kk].chunks_exact(L)).zip(w[3][..kk].chunks_exact(L));
                for ((((xc, c0), c1), c2), c3) in rows {
                    for l in 0..L {
                        a0[l] = xc[l].mul_add(c0[l], a0[l]);
                        a1[l] = xc[l].mul_add(c1[l], a1[l]);
                        a2[l] = xc[l].mul_add(c2[l], a2[l]);
                        a3[l] = xc[l].mul_add(c3[l], a3[l]);
                    }
                }
                for (q, acc) in [a0, a1, a2, a3].iter().enumerate() {
                    let mut s = acc.iter().sum::<f32>();
                    for p in kk..k {
                        s = x[p].mul_add(w[q][p], s);
                    }
                    store(r, j + q, s);
                }
            }
            j += 4;
        }
        while j < n1 {
            let w = &b[j * k..][..k];
            for r in 0..m {
                store(r, j, vmath::dot(&a[r * k..][..k], w));
            }
            j += 1;
        }
    }
}

/// `skinny_cols` with AVX-512 intrinsics: 4 rows of a × 4 rows of b per step, 16 vector
/// accumulators, 8 loads per 16 FMAs, the k tail through masked loads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn skinny_cols_avx512(pc: SharedMut, a: &[f32], b: &[f32], g: &Gemm, cols: (usize, usize)) {
    let (m, n, k, alpha, beta, (n0, n1)) = (g.m, g.n, g.k, g.alpha, g.beta, cols);
    use std::arch::x86_64::*;
    assert!(a.len() >= m * k && b.len() >= n * k && n1 <= n);
    let store = |r: usize, j: usize, dot: f32| {
        let out = &mut *pc.0.add(r * n + j);
        *out = if beta == 0.0 { alpha * dot } else { alpha * dot + beta * *out };
    };
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let full = k / 16 * 16;
    let tail: __mmask16 = ((1u32 << (k % 16)) - 1) as __mmask16;
    // dot products of RA rows of a (from row r) with RB rows of b (from row j)
    macro_rules! block {
        ($ra:literal, $rb:literal, $r:expr, $j:expr) => {{
            let (r, j) = ($r, $j);
            let mut acc = [[_mm512_setzero_ps(); $rb]; $ra];
            let mut p = 0;
            while p < full {
                let xs: [__m512; $ra] = std::array::from_fn(|i| _mm512_loadu_ps(pa.add((r + i) * k + p)));
                let ws: [__m512; $rb] = std::array::from_fn(|q| _mm512_loadu_ps(pb.add((j + q) * k + p)));
                for i in 0..$ra {
                    for q in 0..$rb {
                        acc[i][q] = _mm512_fmadd_ps(xs[i], ws[q], acc[i][q]);
                    }
                }
                p += 16;
            }
            if tail != 0 {
                let xs: [__m512; $ra] = std::array::from_fn(|i| _mm512_maskz_loadu_ps(tail, pa.add((r + i) * k + p)));
                let ws: [__m512; $rb] = std::array::from_fn(|q| _mm512_maskz_loadu_ps(tail, pb.add((j + q) * k + p)));
                for i in 0..$ra {
                    for q in 0..$rb {
                        acc[i][q] = _mm512_fmadd_ps(xs[i], ws[q], acc[i][q]);
                    }
                }
            }
            for i in 0..$ra {
                for q in 0..$rb {
                    store(r + i, j + q, _mm512_reduce_add_ps(acc[i][q]));
                }
            }
        }};
    }
    let mut j = n0;
    while j + 4 <= n1 {
        let mut r = 0;
        while r + 4 <= m {
            block!(4, 4, r, j);
            r += 4;
        }
        while r < m {
            block!(1, 4, r, j);
            r += 1;
        }
        j += 4;
    }
    while j < n1 {
        for r in 0..m {
            block!(1, 1, r, j);
        }
        j += 1;
    }
}

#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Straightforward triple loop in f64, the reference the fast kernels are tested against.
pub fn matmul_reference(c: &mut [f32], a: &[f32], b: &[f32], g: &Gemm) {
    for i in 0..g.batch {
        for r in 0..g.m {
            for col in 0..g.n {
                let mut s = 0f64;
                for p in 0..g.k {
                    let av = if g.trans_a { a[i * g.stride_a + p * g.m + r] } else { a[i * g.stride_a + r * g.k + p] };
                    let bv = if g.trans_b { b[i * g.stride_b + col * g.k + p] } else { b[i * g.stride_b + p * g.n + col] };
                    s += av as f64 * bv as f64;
                }
                let out = &mut c[i * g.stride_c + r * g.n + col];
                let prev = if g.beta != 0.0 { g.beta as f64 * *out as f64 } else { 0.0 };
                *out = (g.alpha as f64 * s + prev) as f32;
            }
        }
    }
}
