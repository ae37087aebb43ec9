//! Matrix multiplication: `C = alpha·op(A)·op(B) + beta·C`, row-major, strided batches.
//! CPU kernel through the `gemm` crate (near machine peak, rayon-parallel).

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
