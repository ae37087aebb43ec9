//! Backend conformance: every `Backend` op, on random shapes (including sizes that are no
//! multiple of any tile: 1, 7, 33, 67, 130, …) and inputs of real spread, against the CPU
//! backend as the oracle. The suite is written once, generic over `B: Backend`, and stamped out
//! per backend by `conformance!` (one #[test] per op, so a failure names its op):
//!
//!   cargo test --test conformance              # cpu (sanity: cpu vs cpu) and wgpu
//!   cargo test --test conformance wgpu::       # only the wgpu backend
//!
//! Tolerances: the presets in `Tol` / `Tols` below, in one place. A failure reports the op,
//! the shape, the number of elements out of tolerance, the largest absolute error, its index,
//! both values and the tolerance.
//!
//! wgpu: when no adapter exists the wgpu tests print "wgpu: NO ADAPTER …" and pass, unless
//! `OKAPI_REQUIRE_WGPU=1` (CI sets it) makes them fail. Each prints the adapter it ran on. An op
//! whose wgpu body is still `unimplemented!("wgpu <op>: in progress")` is reported as SKIPPED.

use okapi::kernels::rope::{rope_inv_freq, RopeScaling};
use okapi::model::init::Rng;
use okapi::runtime::{AdamW, AttnShape, Backend, CpuBackend, Gemm, IGNORE_INDEX};

// ---- tolerances -----------------------------------------------------------------------------

/// An element passes when |got − want| ≤ abs + rel·max(|want|, rms(want)) (the rms floor keeps
/// cancellation in sums from failing an element whose neighbours are large). Infinities must
/// match exactly; NaN passes only against NaN.
#[derive(Clone, Copy, Debug)]
struct Tol {
    abs: f32,
    rel: f32,
}

impl Tol {
    /// Bit-for-bit (up to the sign of zero): memory ops, gathers, scatters in a fixed order.
    const EXACT: Tol = Tol { abs: 0.0, rel: 0.0 };
    /// One or two roundings (a fused multiply-add against separate ones).
    const F32_ELEMENTWISE: Tol = Tol { abs: 0.0, rel: 4e-7 };
    /// exp / tanh / sin / cos / sqrt through the device's math library.
    const F32_TRANSCENDENTAL: Tol = Tol { abs: 1e-6, rel: 2e-5 };
    /// Sums over rows or tensors in another order than the CPU's.
    const F32_REDUCTION: Tol = Tol { abs: 1e-6, rel: 5e-5 };
    /// Dot products of up to a few hundred terms in another order.
    const F32_MATMUL: Tol = Tol { abs: 1e-6, rel: 1e-4 };
    /// Softmax-weighted sums and their gradients.
    const F32_ATTENTION: Tol = Tol { abs: 1e-6, rel: 2e-4 };
}

/// The tolerance of each op family for one backend.
struct Tols {
    memory: Tol,
    elementwise: Tol,
    transcendental: Tol,
    reduction: Tol,
    matmul: Tol,
    attention: Tol,
    /// ops the GPU backends implement in the CPU's exact order (bias_bwd, embedding_bwd)
    ordered_sum: Tol,
}

impl Tols {
    /// CPU vs CPU: deterministic, so bit-for-bit.
    const CPU: Tols = Tols {
        memory: Tol::EXACT,
        elementwise: Tol::EXACT,
        transcendental: Tol::EXACT,
        reduction: Tol::EXACT,
        matmul: Tol::EXACT,
        attention: Tol::EXACT,
        ordered_sum: Tol::EXACT,
    };
    const GPU: Tols = Tols {
        memory: Tol::EXACT,
        elementwise: Tol::F32_ELEMENTWISE,
        transcendental: Tol::F32_TRANSCENDENTAL,
        reduction: Tol::F32_REDUCTION,
        matmul: Tol::F32_MATMUL,
        attention: Tol::F32_ATTENTION,
        ordered_sum: Tol::EXACT,
    };
}

fn check(op: &str, shape: &str, got: &[f32], want: &[f32], tol: &Tol) {
    assert_eq!(got.len(), want.len(), "{op} {shape}: read {} elements, expected {}", got.len(), want.len());
    let finite: Vec<f32> = want.iter().copied().filter(|w| w.is_finite()).collect();
    let rms = if finite.is_empty() { 0.0 } else { (finite.iter().map(|w| (*w as f64).powi(2)).sum::<f64>() / finite.len() as f64).sqrt() as f32 };
    let (mut bad, mut first_bad, mut worst, mut worst_i) = (0usize, None, 0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol.abs + tol.rel * w.abs().max(rms)
        };
        let err = if g == w { 0.0 } else { (g - w).abs() };
        if !ok {
            bad += 1;
            first_bad.get_or_insert(i);
        }
        if err > worst || (err.is_nan() && !worst.is_nan()) {
            worst = err;
            worst_i = i;
        }
    }
    if bad > 0 {
        let i = worst_i;
        panic!(
            "{op} {shape}: {bad} of {} elements outside {tol:?} (rms of the expected values {rms:.3e}); \
             max abs error {worst:.3e} at index {i} (got {}, want {}); first bad index {}",
            got.len(),
            got[i],
            want[i],
            first_bad.unwrap()
        );
    }
}

// ---- inputs ---------------------------------------------------------------------------------

/// Normal values with a log-normal magnitude: several orders of magnitude, both signs.
fn spread(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * (rng.normal() * 0.75).exp()) as f32 * scale).collect()
}

fn normal(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn below(rng: &mut Rng, n: usize, bound: u32) -> Vec<u32> {
    (0..n).map(|_| (rng.next_u64() % bound as u64) as u32).collect()
}

/// The CPU oracle and the backend under test side by side.
struct Pair<'a, B: Backend> {
    be: &'a B,
    cpu: CpuBackend,
}

impl<'a, B: Backend> Pair<'a, B> {
    fn up(&self, x: &[f32]) -> (Vec<f32>, B::Buf) {
        (x.to_vec(), self.be.upload(x))
    }
    fn ids(&self, x: &[u32]) -> (Vec<u32>, B::Ids) {
        (x.to_vec(), self.be.upload_ids(x))
    }
    /// Compares the whole buffer (so writes past the op's extent are caught too).
    fn cmp(&self, op: &str, shape: &str, want: &[f32], got: &B::Buf, tol: &Tol) {
        let g = self.be.read(got, want.len());
        check(op, shape, &g, want, tol);
    }
}

// ---- memory and element-wise ops ------------------------------------------------------------

const SIZES: [usize; 7] = [1, 7, 33, 67, 130, 1000, 70_001];

fn memory<B: Backend>(be: &B, t: &Tols) {
    let mut rng = Rng::new(1);
    for n in SIZES {
        let x = spread(&mut rng, n, 1.0);
        let b = be.upload(&x);
        assert_eq!(be.buf_len(&b), n, "buf_len after upload of {n}");
        check("upload/read", &format!("n={n}"), &be.read(&b, n), &x, &t.memory);
        check("read prefix", &format!("n={n}"), &be.read(&b, n / 2), &x[..n / 2], &t.memory);
        let z = be.zeros(n);
        assert_eq!(be.buf_len(&z), n);
        check("zeros", &format!("n={n}"), &be.read(&z, n), &vec![0.0; n], &t.memory);
        // write a prefix of an existing buffer
        let mut w = be.upload(&x);
        let y = spread(&mut rng, n.div_ceil(3), 1.0);
        be.write(&mut w, &y);
        let mut want = x.clone();
        want[..y.len()].copy_from_slice(&y);
        check("write", &format!("n={n} prefix={}", y.len()), &be.read(&w, n), &want, &t.memory);
        // ids: round trip through an embedding gather (the trait has no read_ids)
        let ids: Vec<u32> = below(&mut rng, n, 1000);
        let mut di = be.upload_ids(&ids);
        let more = below(&mut rng, n.div_ceil(2), 1000);
        be.write_ids(&mut di, &more);
        let mut want_ids = ids.clone();
        want_ids[..more.len()].copy_from_slice(&more);
        let table: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let tb = be.upload(&table);
        let mut out = be.zeros(n);
        be.embedding_fwd(&mut out, &tb, &di, n, 1);
        let want: Vec<f32> = want_ids.iter().map(|&i| i as f32).collect();
        check("upload_ids/write_ids", &format!("n={n}"), &be.read(&out, n), &want, &t.memory);
    }
}

fn fill<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(2);
    for n in SIZES {
        for value in [0.0, -1.5, 3.25e-3] {
            let (mut c, mut g) = p.up(&spread(&mut rng, n + 5, 1.0));
            p.cpu.fill(&mut c, value, n);
            be.fill(&mut g, value, n);
            p.cmp("fill", &format!("n={n} (buffer {}) value={value}", n + 5), &c, &g, &t.memory);
        }
    }
}

fn copy<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(3);
    for n in SIZES {
        let (cs, gs) = p.up(&spread(&mut rng, n + 3, 1.0));
        let (mut cd, mut gd) = p.up(&spread(&mut rng, n + 5, 1.0));
        p.cpu.copy(&mut cd, &cs, n);
        be.copy(&mut gd, &gs, n);
        p.cmp("copy", &format!("n={n}"), &cd, &gd, &t.memory);
    }
}

fn scale<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(4);
    for n in SIZES {
        let a = rng.normal() as f32;
        let (mut c, mut g) = p.up(&spread(&mut rng, n + 5, 1.0));
        p.cpu.scale(&mut c, a, n);
        be.scale(&mut g, a, n);
        p.cmp("scale", &format!("n={n} a={a}"), &c, &g, &t.elementwise);
    }
}

fn axpy<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(5);
    // the last size needs more than 65535 workgroups of 256: exercises the x·y grid fold
    for n in SIZES.into_iter().chain([256 * 65535 + 77]) {
        let a = rng.normal() as f32;
        let (mut cy, mut gy) = p.up(&normal(&mut rng, n + 5, 1.0));
        let (cx, gx) = p.up(&normal(&mut rng, n, 1.0));
        p.cpu.axpy(&mut cy, a, &cx, n);
        be.axpy(&mut gy, a, &gx, n);
        p.cmp("axpy", &format!("n={n} a={a}"), &cy, &gy, &t.elementwise);
    }
}

fn sum_squares<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(6);
    for n in [0, 1, 7, 33, 130, 4096, 4097, 100_003] {
        let (mut ca, mut ga) = p.up(&spread(&mut rng, 4, 1.0));
        let (cx, gx) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.sum_squares(&mut ca, 2, &cx, n);
        be.sum_squares(&mut ga, 2, &gx, n);
        p.cmp("sum_squares", &format!("n={n} slot=2"), &ca, &ga, &t.reduction);
    }
}

const ROWS: [(usize, usize); 6] = [(1, 1), (1, 7), (7, 33), (67, 130), (130, 7), (33, 1000)];

fn bias_add<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(7);
    for (n, c) in ROWS {
        let (mut cx, mut gx) = p.up(&spread(&mut rng, n * c + 3, 1.0));
        let (cb, gb) = p.up(&spread(&mut rng, c, 1.0));
        p.cpu.bias_add(&mut cx, &cb, n, c);
        be.bias_add(&mut gx, &gb, n, c);
        p.cmp("bias_add", &format!("n={n} c={c}"), &cx, &gx, &t.elementwise);
    }
}

fn bias_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(8);
    for (n, c) in ROWS.into_iter().chain([(200, 33), (1000, 3)]) {
        let (mut cd, mut gd) = p.up(&spread(&mut rng, c + 2, 1.0));
        let (cy, gy) = p.up(&spread(&mut rng, n * c, 1.0));
        p.cpu.bias_bwd(&mut cd, &cy, n, c);
        be.bias_bwd(&mut gd, &gy, n, c);
        p.cmp("bias_bwd (+=)", &format!("n={n} c={c}"), &cd, &gd, &t.ordered_sum);
    }
}

fn embedding<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(9);
    let v = 67;
    for c in [1, 7, 33, 130] {
        for n in [1, 7, 67, 300] {
            let (ct, gt) = p.up(&spread(&mut rng, v * c, 1.0));
            // few distinct ids so rows repeat (the backward's scatter order matters)
            let (ci, gi) = p.ids(&below(&mut rng, n, if n > 7 { 9 } else { v as u32 }));
            let (mut co, mut go) = p.up(&spread(&mut rng, n * c + 3, 1.0));
            p.cpu.embedding_fwd(&mut co, &ct, &ci, n, c);
            be.embedding_fwd(&mut go, &gt, &gi, n, c);
            p.cmp("embedding_fwd", &format!("n={n} c={c} v={v}"), &co, &go, &t.memory);

            let (mut cdt, mut gdt) = p.up(&spread(&mut rng, v * c, 1.0));
            let (cdo, gdo) = p.up(&spread(&mut rng, n * c, 1.0));
            p.cpu.embedding_bwd(&mut cdt, &cdo, &ci, n, c);
            be.embedding_bwd(&mut gdt, &gdo, &gi, n, c);
            p.cmp("embedding_bwd (+=)", &format!("n={n} c={c} v={v}"), &cdt, &gdt, &t.ordered_sum);
        }
    }
}

fn kv_write<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(10);
    let (batch, t_cap) = (3, 33);
    for t_new in [1, 7] {
        for width in [7, 67] {
            // the last sequence writes past the capacity: those rows are dropped
            let pos = [0, rng.next_u64() as u32 % 20, t_cap as u32 - 3];
            let (cp, gp) = p.ids(&pos);
            let (cn, gn) = p.up(&spread(&mut rng, batch * t_new * width, 1.0));
            let (mut cc, mut gc) = p.up(&spread(&mut rng, batch * t_cap * width, 1.0));
            p.cpu.kv_write(&mut cc, &cn, &cp, batch, t_new, t_cap, width);
            be.kv_write(&mut gc, &gn, &gp, batch, t_new, t_cap, width);
            p.cmp("kv_write", &format!("batch={batch} t_new={t_new} t_cap={t_cap} width={width} pos={pos:?}"), &cc, &gc, &t.memory);
        }
    }
}

// ---- matmul ---------------------------------------------------------------------------------

fn matmul<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(11);
    let shapes = [(1, 1, 1), (7, 33, 67), (67, 130, 33), (130, 7, 129), (1, 300, 130), (64, 64, 64), (65, 63, 257)];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let batch = if si % 2 == 1 { 3 } else { 1 };
            let (alpha, beta) = match (si + ta as usize + 2 * tb as usize) % 3 {
                0 => (1.0, 0.0),
                1 => (0.5, 1.0),
                _ => (-1.25, 0.0),
            };
            // batches padded apart so strides are not the tight products
            let (sa, sb, sc) = (m * k + 5, k * n + 3, m * n + 7);
            let g = Gemm { m, n, k, trans_a: ta, trans_b: tb, alpha, beta, batch, stride_a: sa, stride_b: sb, stride_c: sc };
            let (ca, ga) = p.up(&normal(&mut rng, sa * batch, 1.0));
            let (cb, gb) = p.up(&normal(&mut rng, sb * batch, 1.0));
            let (mut cc, mut gc) = p.up(&normal(&mut rng, sc * batch, 1.0));
            p.cpu.matmul(&mut cc, &ca, &cb, &g);
            be.matmul(&mut gc, &ga, &gb, &g);
            // compare the written blocks (the gaps between batches are not the op's)
            let got = be.read(&gc, sc * batch);
            let shape = format!("m={m} n={n} k={k} trans_a={ta} trans_b={tb} alpha={alpha} beta={beta} batch={batch}");
            for bi in 0..batch {
                let r = bi * sc..bi * sc + m * n;
                check("matmul", &format!("{shape} [batch {bi}]"), &got[r.clone()], &cc[r], &t.matmul);
            }
        }
    }
}

// ---- attention ------------------------------------------------------------------------------

struct AttnCase {
    sh: AttnShape,
    q_pos0: Vec<u32>,
    kv_len: Vec<u32>,
    alibi: bool,
}

fn attn_cases() -> Vec<AttnCase> {
    let sh = |batch, tq, tk, n_heads, n_kv_heads, head_dim: usize, causal| AttnShape {
        batch,
        tq,
        tk,
        n_heads,
        n_kv_heads,
        head_dim,
        scale: 1.0 / (head_dim as f32).sqrt(),
        causal,
    };
    vec![
        // training: causal, GQA, one sequence shorter (padding)
        AttnCase { sh: sh(2, 7, 7, 4, 2, 16, true), q_pos0: vec![0, 0], kv_len: vec![7, 5], alibi: false },
        // decode: one new token against a cache
        AttnCase { sh: sh(2, 1, 33, 2, 1, 64, true), q_pos0: vec![20, 32], kv_len: vec![21, 33], alibi: false },
        // chunked prefill with ALiBi (BLOOM), 3 heads (not a power of two)
        AttnCase { sh: sh(1, 33, 67, 3, 3, 32, true), q_pos0: vec![30], kv_len: vec![63], alibi: true },
        // non-causal, odd head dim
        AttnCase { sh: sh(2, 13, 13, 2, 2, 40, false), q_pos0: vec![0, 0], kv_len: vec![13, 9], alibi: false },
        // a row with no visible key (kv_len 0): out 0, lse -inf
        AttnCase { sh: sh(2, 3, 5, 2, 1, 8, true), q_pos0: vec![0, 0], kv_len: vec![0, 5], alibi: false },
        // wide heads
        AttnCase { sh: sh(1, 9, 9, 2, 2, 130, true), q_pos0: vec![0], kv_len: vec![9], alibi: false },
    ]
}

fn attn_desc(c: &AttnCase) -> String {
    let s = &c.sh;
    format!(
        "B={} Tq={} Tk={} H={} Hkv={} D={} causal={} q_pos0={:?} kv_len={:?} alibi={}",
        s.batch, s.tq, s.tk, s.n_heads, s.n_kv_heads, s.head_dim, s.causal, c.q_pos0, c.kv_len, c.alibi
    )
}

fn attention_fwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(12);
    for case in attn_cases() {
        let s = &case.sh;
        let (nq, nk) = (s.batch * s.tq * s.n_heads * s.head_dim, s.batch * s.tk * s.n_kv_heads * s.head_dim);
        let (cq, gq) = p.up(&normal(&mut rng, nq, 1.5));
        let (ck, gk) = p.up(&normal(&mut rng, nk, 1.5));
        let (cv, gv) = p.up(&normal(&mut rng, nk, 1.0));
        let (cp, gp) = p.ids(&case.q_pos0);
        let (cl, gl) = p.ids(&case.kv_len);
        let slopes = okapi::kernels::attention::alibi_slopes(s.n_heads);
        let (ca, ga) = p.up(&slopes);
        let (mut co, mut go) = p.up(&spread(&mut rng, nq, 1.0));
        let (mut cs, mut gs) = p.up(&spread(&mut rng, s.batch * s.tq * s.n_heads, 1.0));
        p.cpu.attention_fwd(&mut co, &mut cs, &cq, &ck, &cv, &cp, &cl, case.alibi.then_some(&ca), s);
        be.attention_fwd(&mut go, &mut gs, &gq, &gk, &gv, &gp, &gl, case.alibi.then_some(&ga), s);
        let d = attn_desc(&case);
        p.cmp("attention_fwd out", &d, &co, &go, &t.attention);
        p.cmp("attention_fwd lse", &d, &cs, &gs, &t.attention);
    }
}

fn attention_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(13);
    for case in attn_cases() {
        let s = &case.sh;
        let (nq, nk) = (s.batch * s.tq * s.n_heads * s.head_dim, s.batch * s.tk * s.n_kv_heads * s.head_dim);
        let q = normal(&mut rng, nq, 1.5);
        let k = normal(&mut rng, nk, 1.5);
        let v = normal(&mut rng, nk, 1.0);
        let slopes = okapi::kernels::attention::alibi_slopes(s.n_heads);
        // the forward on the CPU gives both backends the same out / lse
        let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; s.batch * s.tq * s.n_heads]);
        p.cpu.attention_fwd(&mut out, &mut lse, &q, &k, &v, &case.q_pos0, &case.kv_len, case.alibi.then_some(&slopes), s);
        let (cq, gq) = p.up(&q);
        let (ck, gk) = p.up(&k);
        let (cv, gv) = p.up(&v);
        let (co, go) = p.up(&out);
        let (cs, gs) = p.up(&lse);
        let (cdo, gdo) = p.up(&normal(&mut rng, nq, 1.0));
        let (cp, gp) = p.ids(&case.q_pos0);
        let (cl, gl) = p.ids(&case.kv_len);
        let (ca, ga) = p.up(&slopes);
        // all three are `=`: start them from garbage
        let (mut cdq, mut gdq) = p.up(&spread(&mut rng, nq, 1.0));
        let (mut cdk, mut gdk) = p.up(&spread(&mut rng, nk, 1.0));
        let (mut cdv, mut gdv) = p.up(&spread(&mut rng, nk, 1.0));
        p.cpu.attention_bwd(&mut cdq, &mut cdk, &mut cdv, &cdo, &cq, &ck, &cv, &co, &cs, &cp, &cl, case.alibi.then_some(&ca), s);
        be.attention_bwd(&mut gdq, &mut gdk, &mut gdv, &gdo, &gq, &gk, &gv, &go, &gs, &gp, &gl, case.alibi.then_some(&ga), s);
        let d = attn_desc(&case);
        p.cmp("attention_bwd dq", &d, &cdq, &gdq, &t.attention);
        p.cmp("attention_bwd dk", &d, &cdk, &gdk, &t.attention);
        p.cmp("attention_bwd dv", &d, &cdv, &gdv, &t.attention);
    }
}

// ---- norms ----------------------------------------------------------------------------------

fn rmsnorm<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(14);
    for (n, c) in ROWS {
        let d = format!("n={n} c={c}");
        let (cx, gx) = p.up(&spread(&mut rng, n * c, 2.0));
        let (cw, gw) = p.up(&spread(&mut rng, c, 1.0));
        let (mut co, mut go) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cr, mut gr) = p.up(&spread(&mut rng, n, 1.0));
        p.cpu.rmsnorm_fwd(&mut co, &mut cr, &cx, &cw, n, c, 1e-5);
        be.rmsnorm_fwd(&mut go, &mut gr, &gx, &gw, n, c, 1e-5);
        p.cmp("rmsnorm_fwd out", &d, &co, &go, &t.reduction);
        p.cmp("rmsnorm_fwd rstd", &d, &cr, &gr, &t.reduction);
        // backward from the CPU's rstd; dx and dw accumulate
        let (cr, gr) = p.up(&cr);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdx, mut gdx) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdw, mut gdw) = p.up(&spread(&mut rng, c, 1.0));
        p.cpu.rmsnorm_bwd(&mut cdx, &mut cdw, &cdy, &cx, &cw, &cr, n, c);
        be.rmsnorm_bwd(&mut gdx, &mut gdw, &gdy, &gx, &gw, &gr, n, c);
        p.cmp("rmsnorm_bwd dx (+=)", &d, &cdx, &gdx, &t.reduction);
        p.cmp("rmsnorm_bwd dw (+=)", &d, &cdw, &gdw, &t.reduction);
    }
}

fn layernorm<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(15);
    for (n, c) in ROWS {
        let d = format!("n={n} c={c}");
        // an offset mean, as activations have
        let x: Vec<f32> = spread(&mut rng, n * c, 2.0).iter().map(|v| v + 0.5).collect();
        let (cx, gx) = p.up(&x);
        let (cw, gw) = p.up(&spread(&mut rng, c, 1.0));
        let (cb, gb) = p.up(&spread(&mut rng, c, 1.0));
        let (mut co, mut go) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cm, mut gm) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cr, mut gr) = p.up(&spread(&mut rng, n, 1.0));
        p.cpu.layernorm_fwd(&mut co, &mut cm, &mut cr, &cx, &cw, &cb, n, c, 1e-5);
        be.layernorm_fwd(&mut go, &mut gm, &mut gr, &gx, &gw, &gb, n, c, 1e-5);
        p.cmp("layernorm_fwd out", &d, &co, &go, &t.reduction);
        p.cmp("layernorm_fwd mean", &d, &cm, &gm, &t.reduction);
        p.cmp("layernorm_fwd rstd", &d, &cr, &gr, &t.reduction);
        let (cm, gm) = p.up(&cm);
        let (cr, gr) = p.up(&cr);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdx, mut gdx) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdw, mut gdw) = p.up(&spread(&mut rng, c, 1.0));
        let (mut cdb, mut gdb) = p.up(&spread(&mut rng, c, 1.0));
        p.cpu.layernorm_bwd(&mut cdx, &mut cdw, &mut cdb, &cdy, &cx, &cw, &cm, &cr, n, c);
        be.layernorm_bwd(&mut gdx, &mut gdw, &mut gdb, &gdy, &gx, &gw, &gm, &gr, n, c);
        p.cmp("layernorm_bwd dx (+=)", &d, &cdx, &gdx, &t.reduction);
        p.cmp("layernorm_bwd dw (+=)", &d, &cdw, &gdw, &t.reduction);
        p.cmp("layernorm_bwd db (+=)", &d, &cdb, &gdb, &t.reduction);
    }
}

// ---- RoPE -----------------------------------------------------------------------------------

fn rope<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(16);
    for (n, heads, hd) in [(1, 1, 2), (7, 3, 16), (33, 2, 64), (5, 1, 130)] {
        let d = format!("n={n} heads={heads} head_dim={hd}");
        let inv = rope_inv_freq(hd, 10000.0, &RopeScaling::None);
        let (ci, gi) = p.up(&inv);
        let (cp, gp) = p.ids(&below(&mut rng, n, 2048));
        let (mut cx, mut gx) = p.up(&spread(&mut rng, n * heads * hd, 1.0));
        p.cpu.rope_fwd(&mut cx, &cp, &ci, n, heads, hd);
        be.rope_fwd(&mut gx, &gp, &gi, n, heads, hd);
        p.cmp("rope_fwd", &d, &cx, &gx, &t.transcendental);
        let (mut cx, mut gx) = p.up(&spread(&mut rng, n * heads * hd, 1.0));
        p.cpu.rope_bwd(&mut cx, &cp, &ci, n, heads, hd);
        be.rope_bwd(&mut gx, &gp, &gi, n, heads, hd);
        p.cmp("rope_bwd", &d, &cx, &gx, &t.transcendental);
    }
}

// ---- activations ----------------------------------------------------------------------------

fn swiglu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(17);
    for n in SIZES {
        let d = format!("len={n}");
        let (cg, gg) = p.up(&spread(&mut rng, n, 3.0));
        let (cu, gu) = p.up(&spread(&mut rng, n, 1.0));
        let (mut co, mut go) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.swiglu_fwd(&mut co, &cg, &cu, n);
        be.swiglu_fwd(&mut go, &gg, &gu, n);
        p.cmp("swiglu_fwd", &d, &co, &go, &t.transcendental);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdg, mut gdg) = p.up(&spread(&mut rng, n + 3, 1.0));
        let (mut cdu, mut gdu) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.swiglu_bwd(&mut cdg, &mut cdu, &cdo, &cg, &cu, n);
        be.swiglu_bwd(&mut gdg, &mut gdu, &gdo, &gg, &gu, n);
        p.cmp("swiglu_bwd dgate", &d, &cdg, &gdg, &t.transcendental);
        p.cmp("swiglu_bwd dup", &d, &cdu, &gdu, &t.transcendental);
    }
}

fn gelu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(18);
    for n in SIZES {
        let d = format!("len={n}");
        let (cx, gx) = p.up(&spread(&mut rng, n, 3.0));
        let (mut co, mut go) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.gelu_fwd(&mut co, &cx, n);
        be.gelu_fwd(&mut go, &gx, n);
        p.cmp("gelu_fwd", &d, &co, &go, &t.transcendental);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdx, mut gdx) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.gelu_bwd(&mut cdx, &cdo, &cx, n);
        be.gelu_bwd(&mut gdx, &gdo, &gx, n);
        p.cmp("gelu_bwd", &d, &cdx, &gdx, &t.transcendental);
    }
}

// ---- softmax, cross-entropy, log-probs ------------------------------------------------------

const VOCAB: [(usize, usize); 5] = [(1, 1), (1, 7), (7, 33), (33, 1000), (3, 5003)];

fn softmax<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(19);
    for (n, v) in VOCAB {
        for temp in [1.0, 0.7] {
            let d = format!("n={n} v={v} temperature={temp}");
            let (cx, gx) = p.up(&normal(&mut rng, n * v, 4.0));
            let (mut co, mut go) = p.up(&spread(&mut rng, n * v, 1.0));
            p.cpu.softmax_fwd(&mut co, &cx, n, v, temp);
            be.softmax_fwd(&mut go, &gx, n, v, temp);
            p.cmp("softmax_fwd", &d, &co, &go, &t.reduction);
        }
        let d = format!("n={n} v={v}");
        let mut y = vec![0.0; n * v];
        p.cpu.softmax_fwd(&mut y, &normal(&mut rng, n * v, 4.0), n, v, 1.0);
        let (cy, gy) = p.up(&y);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * v, 1.0));
        let (mut cdx, mut gdx) = p.up(&spread(&mut rng, n * v, 1.0));
        p.cpu.softmax_bwd(&mut cdx, &cdy, &cy, n, v);
        be.softmax_bwd(&mut gdx, &gdy, &gy, n, v);
        p.cmp("softmax_bwd", &d, &cdx, &gdx, &t.reduction);
    }
}

/// Targets with some ignored rows and some rows whose target is the argmax.
fn targets(rng: &mut Rng, logits: &[f32], n: usize, v: usize) -> Vec<u32> {
    (0..n)
        .map(|i| match rng.next_u64() % 4 {
            0 if n > 1 => IGNORE_INDEX,
            1 => {
                let row = &logits[i * v..][..v];
                (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as u32
            }
            _ => (rng.next_u64() % v as u64) as u32,
        })
        .collect()
}

fn xent<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(20);
    for (n, v) in VOCAB {
        let d = format!("n={n} v={v}");
        let logits = normal(&mut rng, n * v, 4.0);
        let (ct, gt) = p.ids(&targets(&mut rng, &logits, n, v));
        let (cc, gc) = p.up(&normal(&mut rng, n, 1.0).iter().map(|c| c.abs() / n as f32).collect::<Vec<_>>());
        let (mut cl, mut gl) = p.up(&logits);
        let (mut cs, mut gs) = p.up(&spread(&mut rng, n, 1.0));
        p.cpu.xent_fwd_bwd(&mut cl, &mut cs, &ct, &cc, n, v);
        be.xent_fwd_bwd(&mut gl, &mut gs, &gt, &gc, n, v);
        p.cmp("xent_fwd_bwd losses", &d, &cs, &gs, &t.reduction);
        p.cmp("xent_fwd_bwd dlogits", &d, &cl, &gl, &t.reduction);
    }
}

fn token_logprobs<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(21);
    for (n, v) in VOCAB {
        let d = format!("n={n} v={v}");
        let logits = normal(&mut rng, n * v, 4.0);
        let (ct, gt) = p.ids(&targets(&mut rng, &logits, n, v));
        let (cl, gl) = p.up(&logits);
        let (mut clp, mut glp) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cg, mut gg) = p.up(&spread(&mut rng, n, 1.0));
        p.cpu.token_logprobs(&mut clp, &mut cg, &cl, &ct, n, v);
        be.token_logprobs(&mut glp, &mut gg, &gl, &gt, n, v);
        p.cmp("token_logprobs logp", &d, &clp, &glp, &t.reduction);
        p.cmp("token_logprobs greedy", &d, &cg, &gg, &t.memory);
    }
}

fn token_logprobs_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(22);
    for (n, v) in VOCAB {
        let d = format!("n={n} v={v}");
        let logits = normal(&mut rng, n * v, 4.0);
        let (ct, gt) = p.ids(&targets(&mut rng, &logits, n, v));
        let (cl, gl) = p.up(&logits);
        let (cc, gc) = p.up(&normal(&mut rng, n, 1.0));
        let (mut cd, mut gd) = p.up(&spread(&mut rng, n * v, 1.0));
        p.cpu.token_logprobs_bwd(&mut cd, &cl, &ct, &cc, n, v);
        be.token_logprobs_bwd(&mut gd, &gl, &gt, &gc, n, v);
        p.cmp("token_logprobs_bwd", &d, &cd, &gd, &t.reduction);
    }
}

// ---- optimizer ------------------------------------------------------------------------------

fn adamw<B: Backend>(be: &B, t: &Tols) {
    let p = Pair { be, cpu: CpuBackend };
    let mut rng = Rng::new(23);
    for n in SIZES {
        for (step, grad_scale, wd) in [(1, 1.0, 0.0), (7, 0.5, 0.1)] {
            let h = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd, step, grad_scale };
            let d = format!("len={n} step={step} grad_scale={grad_scale} weight_decay={wd}");
            let (mut cp, mut gp) = p.up(&spread(&mut rng, n + 3, 1.0));
            let (cg, gg) = p.up(&spread(&mut rng, n, 1e-2));
            let (mut cm, mut gm) = p.up(&spread(&mut rng, n + 3, 1e-3));
            let (mut cv, mut gv) = p.up(&spread(&mut rng, n + 3, 1e-3).iter().map(|x| x * x).collect::<Vec<_>>());
            p.cpu.adamw(&mut cp, &cg, &mut cm, &mut cv, &h, n);
            be.adamw(&mut gp, &gg, &mut gm, &mut gv, &h, n);
            p.cmp("adamw p", &d, &cp, &gp, &t.transcendental);
            p.cmp("adamw m", &d, &cm, &gm, &t.transcendental);
            p.cmp("adamw v", &d, &cv, &gv, &t.transcendental);
        }
    }
}

// ---- determinism ----------------------------------------------------------------------------

/// The gradient sums (no float atomics anywhere) give the same bits on every run: each op runs
/// twice on the backend under test from the same inputs, and the two results must be equal.
fn deterministic<B: Backend>(be: &B, _t: &Tols) {
    let mut rng = Rng::new(24);
    let twice = |op: &str, run: &dyn Fn() -> Vec<f32>| {
        let (a, b) = (run(), run());
        check(&format!("{op} run twice"), "", &b, &a, &Tol::EXACT);
    };
    let (n, c, v) = (300, 67, 9);
    let dy = spread(&mut rng, n * c, 1.0);
    let x = spread(&mut rng, n * c, 1.0);
    let w = spread(&mut rng, c, 1.0);
    let ids = below(&mut rng, n, v as u32);
    twice("sum_squares", &|| {
        let mut acc = be.zeros(1);
        be.sum_squares(&mut acc, 0, &be.upload(&dy), n * c);
        be.read(&acc, 1)
    });
    twice("bias_bwd", &|| {
        let mut db = be.zeros(c);
        be.bias_bwd(&mut db, &be.upload(&dy), n, c);
        be.read(&db, c)
    });
    twice("embedding_bwd", &|| {
        let mut dt = be.zeros(v * c);
        be.embedding_bwd(&mut dt, &be.upload(&dy), &be.upload_ids(&ids), n, c);
        be.read(&dt, v * c)
    });
    twice("matmul (weight gradient, beta=1)", &|| {
        let mut dw = be.upload(&spread(&mut Rng::new(25), c * c, 1.0));
        be.matmul(&mut dw, &be.upload(&dy), &be.upload(&x), &Gemm { beta: 1.0, ..Gemm::new(c, c, n).trans_a() });
        be.read(&dw, c * c)
    });
    twice("rmsnorm_bwd", &|| {
        let (xb, wb) = (be.upload(&x), be.upload(&w));
        let (mut out, mut rstd) = (be.zeros(n * c), be.zeros(n));
        be.rmsnorm_fwd(&mut out, &mut rstd, &xb, &wb, n, c, 1e-5);
        let (mut dx, mut dw) = (be.zeros(n * c), be.zeros(c));
        be.rmsnorm_bwd(&mut dx, &mut dw, &be.upload(&dy), &xb, &wb, &rstd, n, c);
        let mut r = be.read(&dx, n * c);
        r.extend(be.read(&dw, c));
        r
    });
    let sh = AttnShape { batch: 2, tq: 33, tk: 33, n_heads: 4, n_kv_heads: 2, head_dim: 16, scale: 0.25, causal: true };
    let nq = 2 * 33 * 4 * 16;
    let nk = 2 * 33 * 2 * 16;
    let (q, k, vv, dout) = (normal(&mut rng, nq, 1.0), normal(&mut rng, nk, 1.0), normal(&mut rng, nk, 1.0), normal(&mut rng, nq, 1.0));
    twice("attention_bwd", &|| {
        let (qb, kb, vb) = (be.upload(&q), be.upload(&k), be.upload(&vv));
        let (pos, len) = (be.upload_ids(&[0, 0]), be.upload_ids(&[33, 20]));
        let (mut out, mut lse) = (be.zeros(nq), be.zeros(2 * 33 * 4));
        be.attention_fwd(&mut out, &mut lse, &qb, &kb, &vb, &pos, &len, None, &sh);
        let (mut dq, mut dk, mut dv) = (be.zeros(nq), be.zeros(nk), be.zeros(nk));
        be.attention_bwd(&mut dq, &mut dk, &mut dv, &be.upload(&dout), &qb, &kb, &vb, &out, &lse, &pos, &len, None, &sh);
        let mut r = be.read(&dq, nq);
        r.extend(be.read(&dk, nk));
        r.extend(be.read(&dv, nk));
        r
    });
}

// ---- the suite, per backend -----------------------------------------------------------------

/// Stamps out one #[test] per op for a backend: `conformance!(module, make_backend(), TOLS)`,
/// where `make_backend()` returns `Option<B>` (None: the backend is absent, the test is a no-op).
macro_rules! conformance {
    ($module:ident, $make:expr, $tols:expr) => {
        mod $module {
            use super::*;
            conformance!(@ops $make, $tols;
                memory, fill, copy, scale, axpy, sum_squares, bias_add, bias_bwd, embedding, kv_write,
                matmul, attention_fwd, attention_bwd, rmsnorm, layernorm, rope, swiglu, gelu,
                softmax, xent, token_logprobs, token_logprobs_bwd, adamw, deterministic);
        }
    };
    (@ops $make:expr, $tols:expr; $($op:ident),* $(,)?) => {
        $(
            #[test]
            fn $op() {
                let Some(be) = $make else { return };
                run_op(stringify!($op), || super::$op(&be, &$tols));
            }
        )*
    };
}

/// Runs one op's checks; an op whose body is still `unimplemented!("…: in progress")` on this
/// backend is reported as skipped instead of failing.
fn run_op(op: &str, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
        if msg.contains(": in progress") {
            loud(&format!("SKIPPED {op}: {msg}"));
            return;
        }
        std::panic::resume_unwind(e);
    }
}

fn cpu_backend() -> Option<CpuBackend> {
    Some(CpuBackend)
}

/// Writes past libtest's output capture (which takes only the print macros), so the line shows
/// in CI logs even when every test passes.
fn loud(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// One device for all wgpu tests of this binary; None (after a loud line) without an adapter.
fn wgpu_backend() -> Option<okapi::runtime::WgpuBackend> {
    use std::sync::OnceLock;
    static BE: OnceLock<Result<okapi::runtime::WgpuBackend, String>> = OnceLock::new();
    let be = BE.get_or_init(|| {
        let r = okapi::runtime::WgpuBackend::new().map_err(|e| e.to_string());
        if let Ok(be) = &r {
            loud(&format!("wgpu conformance: running on adapter {}", be.adapter_name()));
        }
        r
    });
    match be {
        Ok(be) => {
            eprintln!("wgpu adapter: {}", be.adapter_name());
            Some(be.clone())
        }
        Err(e) => {
            loud(&format!("wgpu: NO ADAPTER — the wgpu conformance tests did NOT run: {e}"));
            if std::env::var("OKAPI_REQUIRE_WGPU").as_deref() == Ok("1") {
                panic!("OKAPI_REQUIRE_WGPU=1 but wgpu has no adapter: {e}");
            }
            None
        }
    }
}

conformance!(cpu, cpu_backend(), Tols::CPU);
conformance!(wgpu, wgpu_backend(), Tols::GPU);
