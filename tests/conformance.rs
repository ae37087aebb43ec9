//! Backend conformance: every `Backend` op, on shapes that are no multiple of any tile (1, 7, 33,
//! 67, 130, 4099, …), edge cases (k = 0, beta = 0 over NaN, strided batches with gaps, GQA / MQA,
//! ALiBi, KV-cache decoding, sliding windows, logit soft-capping, sequences that see no key, head
//! dims 6 … 256, RMSNorm's weight offset, ignored targets, argmax ties, saturating activations
//! and soft-caps, more rows than one grid dimension holds) and inputs of
//! real spread, against the CPU backend as the oracle. The suite is written once, generic over
//! `B: Backend`, and stamped out per backend by `conformance!` — one #[test] per op, so a failure
//! names its op. Adding a backend is one `conformance!` line at the bottom.
//!
//!   cargo test --test conformance                        # cpu (cpu vs cpu: exact) and wgpu
//!   cargo test --test conformance wgpu::                 # one backend
//!   cargo test --test conformance cuda -- --ignored      # on an NVIDIA machine
//!
//! Outputs are uploaded with sentinel values after them (ggml's test-backend-ops idea): an op
//! that writes past its extent fails with "wrote past its output". Tolerances are the presets in
//! `Tol` / `Tols`, in one place; a failure reports the op, the shape, how many elements are out
//! of tolerance, the largest error, its index, both values and the tolerance.
//!
//! wgpu: without an adapter the tests print "wgpu: NO ADAPTER … did NOT run" and pass, unless
//! `OKAPI_REQUIRE_WGPU=1` (CI) makes them fail. CUDA: the `cuda` (f32) and `cuda_bf16` tests are
//! #[ignore]d (no GPU in CI); run with `--ignored` they say "NO GPU … did NOT run" without a
//! device, and fail instead under `OKAPI_REQUIRE_CUDA=1` (scripts/device_check.sh sets it).

mod common;

use okapi::kernels::rope::{rope_inv_freq, RopeScaling};
use okapi::model::Rng;
use okapi::runtime::{AdamW, AttnGrads, AttnInputs, AttnShape, Backend, CpuBackend, CudaBackend, Dropout, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, Precision, RmsNormBwd, RmsNormFwd, RopeShape, Rows, IGNORE_INDEX};

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
    /// Rotation angles pos·inv_freq of thousands of radians, reduced in f32 on the device.
    const F32_ROPE: Tol = Tol { abs: 1e-5, rel: 1e-4 };
    /// bf16 operands (8 significant bits) with fp32 accumulation.
    const BF16: Tol = Tol { abs: 1e-3, rel: 2e-2 };
}

/// The tolerance of each op family for one backend.
struct Tols {
    memory: Tol,
    elementwise: Tol,
    transcendental: Tol,
    rope: Tol,
    reduction: Tol,
    matmul: Tol,
    attention: Tol,
    /// the gradient sums the CPU computes in a fixed order (bias_bwd, embedding_bwd)
    ordered_sum: Tol,
}

impl Tols {
    /// CPU vs CPU: deterministic, so bit-for-bit.
    const CPU: Tols = Tols {
        memory: Tol::EXACT,
        elementwise: Tol::EXACT,
        transcendental: Tol::EXACT,
        rope: Tol::EXACT,
        reduction: Tol::EXACT,
        matmul: Tol::EXACT,
        attention: Tol::EXACT,
        ordered_sum: Tol::EXACT,
    };
    /// wgpu: f32 everywhere; its column and scatter sums follow the CPU's order exactly.
    const WGPU: Tols = Tols {
        memory: Tol::EXACT,
        elementwise: Tol::F32_ELEMENTWISE,
        transcendental: Tol::F32_TRANSCENDENTAL,
        rope: Tol::F32_ROPE,
        reduction: Tol::F32_REDUCTION,
        matmul: Tol::F32_MATMUL,
        attention: Tol::F32_ATTENTION,
        ordered_sum: Tol::EXACT,
    };
    /// CUDA f32: its column sums use other chunks (64 rows) and finish in another order.
    const CUDA: Tols = Tols { ordered_sum: Tol::F32_REDUCTION, ..Tols::WGPU };
    /// CUDA bf16: matmul and attention read bf16 operands; every other op stays f32.
    const CUDA_BF16: Tols = Tols { matmul: Tol::BF16, attention: Tol::BF16, ..Tols::CUDA };
}

fn check(op: &str, shape: &str, got: &[f32], want: &[f32], tol: &Tol) {
    assert_eq!(got.len(), want.len(), "{op} {shape}: read {} elements, expected {}", got.len(), want.len());
    if let Some(i) = (0..want.len()).find(|&i| want[i] == SENTINEL && got[i] != SENTINEL) {
        panic!("{op} {shape}: wrote past its output (element {i}, a sentinel, is now {})", got[i]);
    }
    let finite: Vec<f32> = want.iter().copied().filter(|w| w.is_finite() && *w != SENTINEL).collect();
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
        let err = if g == w || (g.is_nan() && w.is_nan()) { 0.0 } else { (g - w).abs() };
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

/// Written after every output buffer; no op may change it.
const SENTINEL: f32 = -7777.25;
const PAD: usize = 3;

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
    fn new(be: &'a B) -> Self {
        Pair { be, cpu: CpuBackend }
    }
    /// An input on both.
    fn up(&self, x: &[f32]) -> (Vec<f32>, B::Buf) {
        (x.to_vec(), self.be.upload(x))
    }
    fn ids(&self, x: &[u32]) -> (Vec<u32>, B::Ids) {
        (x.to_vec(), self.be.upload_ids(x))
    }
    /// An output on both: `x` (the initial contents: garbage for `=`, a start for `+=`), then
    /// sentinels.
    fn out(&self, x: &[f32]) -> (Vec<f32>, B::Buf) {
        let mut v = x.to_vec();
        v.extend([SENTINEL; PAD]);
        self.up(&v)
    }
    /// Compares the whole buffer (sentinels included).
    fn cmp(&self, op: &str, shape: &str, want: &[f32], got: &B::Buf, tol: &Tol) {
        let g = self.be.read(got, want.len());
        check(op, shape, &g, want, tol);
    }
}

// ---- memory and element-wise ops ------------------------------------------------------------

const SIZES: [usize; 8] = [1, 7, 33, 67, 130, 1000, 70_001, 300_001];

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
        be.embedding_fwd(&mut out, &tb, &di, Rows::new(n, 1));
        let want: Vec<f32> = want_ids.iter().map(|&i| i as f32).collect();
        check("upload_ids/write_ids", &format!("n={n}"), &be.read(&out, n), &want, &t.memory);
    }
}

fn fill<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(2);
    for n in SIZES {
        for value in [0.0, -1.5, 3.25e-3] {
            let (mut c, mut g) = p.out(&spread(&mut rng, n, 1.0));
            p.cpu.fill(&mut c, value, n);
            be.fill(&mut g, value, n);
            p.cmp("fill", &format!("n={n} value={value}"), &c, &g, &t.memory);
        }
    }
}

fn copy<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(3);
    for n in SIZES {
        let (cs, gs) = p.up(&spread(&mut rng, n + 3, 1.0));
        let (mut cd, mut gd) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.copy(&mut cd, &cs, n);
        be.copy(&mut gd, &gs, n);
        p.cmp("copy", &format!("n={n}"), &cd, &gd, &t.memory);
    }
}

fn copy_range<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(33);
    for n in SIZES {
        for (src_off, dst_off) in [(0, 0), (3, 0), (0, 5), (17, 9)] {
            let (src, dst) = (spread(&mut rng, n + src_off + 2, 1.0), spread(&mut rng, n + dst_off + 4, 1.0));
            let (cs, gs) = p.up(&src);
            let (mut cd, mut gd) = p.out(&dst);
            p.cpu.copy_range(&mut cd, dst_off, &cs, src_off, n);
            // the oracle itself: the range moved, everything else untouched
            let mut want = dst.clone();
            want[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
            want.extend([SENTINEL; PAD]);
            assert!(cd == want, "cpu copy_range n={n} src+{src_off} dst+{dst_off}");
            be.copy_range(&mut gd, dst_off, &gs, src_off, n);
            p.cmp("copy_range", &format!("n={n} src+{src_off} dst+{dst_off}"), &cd, &gd, &t.memory);
        }
    }
}

/// `read_staged` / `write_staged` at offsets, several copies queued against two stages before
/// anything waits (as the offloaded optimizer step queues them): exact, the stage's elements past
/// the copy and the destination's past the range untouched.
fn staged_copies<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(34);
    for n in SIZES {
        let src = spread(&mut rng, n + 19, 1.0);
        let gs = be.upload(&src);
        let mut stages = [be.host_stage(n + 3), be.host_stage(n + 3)];
        for s in &mut stages {
            s.as_mut_slice().fill(SENTINEL);
        }
        let (a, b) = (0, 19.min(src.len() - n));
        let [s0, s1] = &mut stages;
        be.read_staged(&gs, a, s0, n);
        be.read_staged(&gs, b, s1, n);
        for (stage, off) in [(&stages[0], a), (&stages[1], b)] {
            let mut want = src[off..off + n].to_vec();
            want.extend([SENTINEL; 3]);
            check("read_staged", &format!("n={n} src+{off}"), stage.as_slice(), &want, &t.memory);
        }
        // back up into a buffer at two offsets, both copies queued before the read
        let dst = spread(&mut rng, 2 * n + 7, 1.0);
        let (mut cd, mut gd) = p.out(&dst);
        be.write_staged(&mut gd, 0, &stages[1], n);
        be.write_staged(&mut gd, n + 7, &stages[0], n);
        cd[..n].copy_from_slice(&src[b..b + n]);
        cd[n + 7..2 * n + 7].copy_from_slice(&src[a..a + n]);
        p.cmp("write_staged", &format!("n={n} dst+0, dst+{}", n + 7), &cd, &gd, &t.memory);
    }
}

fn unpack_bf16<B: Backend>(be: &B, t: &Tols) {
    use okapi::kernels::reduce::{bf16_bits, pack_bf16};
    let p = Pair::new(be);
    let mut rng = Rng::new(34);
    for n in SIZES {
        let mut x = spread(&mut rng, n, 3.0);
        // round-half-to-even ties, ±0, infinities and a NaN among the values
        for (i, v) in [1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN].into_iter().enumerate() {
            if i < n {
                x[i] = v;
            }
        }
        let (cs, gs) = p.up(&pack_bf16(&x));
        let (mut cd, mut gd) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.unpack_bf16(&mut cd, &cs, n);
        be.unpack_bf16(&mut gd, &gs, n);
        // the oracle: each value rounded to bf16 (nearest even), NaN kept a NaN
        for (i, (&got, &v)) in cd.iter().zip(&x).enumerate() {
            let want = f32::from_bits((bf16_bits(v) as u32) << 16);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && v.is_nan()), "cpu unpack_bf16 n={n} [{i}]: {got} for {v}");
        }
        p.cmp("unpack_bf16", &format!("n={n}"), &cd, &gd, &t.memory);
    }
}

fn scale<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(4);
    for n in SIZES {
        let a = rng.normal() as f32;
        let (mut c, mut g) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.scale(&mut c, a, n);
        be.scale(&mut g, a, n);
        p.cmp("scale", &format!("n={n} a={a}"), &c, &g, &t.elementwise);
    }
}

fn axpy<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(5);
    // the last size needs more than 65535 workgroups of 256: exercises the x·y grid fold
    for n in SIZES.into_iter().chain([256 * 65535 + 77]) {
        let a = rng.normal() as f32;
        let (mut cy, mut gy) = p.out(&normal(&mut rng, n, 1.0));
        let (cx, gx) = p.up(&normal(&mut rng, n, 1.0));
        p.cpu.axpy(&mut cy, a, &cx, n);
        be.axpy(&mut gy, a, &gx, n);
        p.cmp("axpy", &format!("n={n} a={a}"), &cy, &gy, &t.elementwise);
    }
}

fn sum_squares<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(6);
    for n in [0, 1, 7, 33, 130, 4096, 4097, 100_003, 300_001] {
        let (mut ca, mut ga) = p.out(&spread(&mut rng, 4, 1.0));
        let (cx, gx) = p.up(&spread(&mut rng, n + 3, 1.0));
        p.cpu.sum_squares(&mut ca, 2, &cx, n);
        be.sum_squares(&mut ga, 2, &gx, n);
        p.cmp("sum_squares", &format!("n={n} slot=2"), &ca, &ga, &t.reduction);
    }
}

const ROWS: [(usize, usize); 8] = [(1, 1), (1, 7), (7, 33), (67, 130), (130, 7), (33, 1000), (5, 4099), (77, 256)];

fn bias_add<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(7);
    for (n, c) in ROWS {
        let (mut cx, mut gx) = p.out(&spread(&mut rng, n * c, 1.0));
        let (cb, gb) = p.up(&spread(&mut rng, c, 1.0));
        p.cpu.bias_add(&mut cx, &cb, Rows::new(n, c));
        be.bias_add(&mut gx, &gb, Rows::new(n, c));
        p.cmp("bias_add", &format!("n={n} c={c}"), &cx, &gx, &t.elementwise);
    }
}

fn bias_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(8);
    for (n, c) in ROWS.into_iter().chain([(200, 33), (1000, 3), (130, 4099)]) {
        let (mut cd, mut gd) = p.out(&spread(&mut rng, c, 1.0));
        let (cy, gy) = p.up(&spread(&mut rng, n * c, 1.0));
        p.cpu.bias_bwd(&mut cd, &cy, Rows::new(n, c));
        be.bias_bwd(&mut gd, &gy, Rows::new(n, c));
        p.cmp("bias_bwd (+=)", &format!("n={n} c={c}"), &cd, &gd, &t.ordered_sum);
    }
}

fn embedding<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(9);
    let v = 67;
    for c in [1, 7, 33, 130, 300] {
        for n in [1, 7, 67, 300] {
            let (ct, gt) = p.up(&spread(&mut rng, v * c, 1.0));
            // few distinct ids so rows repeat (the backward's scatter order matters); the last id
            // of the table appears
            let mut ids = below(&mut rng, n, if n > 7 { 9 } else { v as u32 });
            ids[0] = v as u32 - 1;
            let (ci, gi) = p.ids(&ids);
            let (mut co, mut go) = p.out(&spread(&mut rng, n * c, 1.0));
            p.cpu.embedding_fwd(&mut co, &ct, &ci, Rows::new(n, c));
            be.embedding_fwd(&mut go, &gt, &gi, Rows::new(n, c));
            p.cmp("embedding_fwd", &format!("n={n} c={c} v={v}"), &co, &go, &t.memory);

            let (mut cdt, mut gdt) = p.out(&spread(&mut rng, v * c, 1.0));
            let (cdo, gdo) = p.up(&spread(&mut rng, n * c, 1.0));
            p.cpu.embedding_bwd(&mut cdt, &cdo, &ci, Rows::new(n, c));
            be.embedding_bwd(&mut gdt, &gdo, &gi, Rows::new(n, c));
            p.cmp("embedding_bwd (+=)", &format!("n={n} c={c} v={v}"), &cdt, &gdt, &t.ordered_sum);
        }
    }
}

fn kv_write<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(10);
    let (batch, t_cap) = (3, 33);
    for t_new in [1, 7] {
        for width in [7, 67] {
            // the last sequence writes past the capacity: those rows are dropped
            let pos = [0, rng.next_u64() as u32 % 20, t_cap as u32 - 3];
            let (cp, gp) = p.ids(&pos);
            let (cn, gn) = p.up(&spread(&mut rng, batch * t_new * width, 1.0));
            let (mut cc, mut gc) = p.out(&spread(&mut rng, batch * t_cap * width, 1.0));
            let sh = KvShape { batch, t_new, t_cap, width };
            p.cpu.kv_write(&mut cc, &cn, &cp, &sh);
            be.kv_write(&mut gc, &gn, &gp, &sh);
            p.cmp("kv_write", &format!("{sh:?} pos={pos:?}"), &cc, &gc, &t.memory);
        }
    }
}

// ---- matmul ---------------------------------------------------------------------------------

/// Square-ish shapes on and off the 64-wide tiles, each with every transpose.
fn matmul<B: Backend>(be: &B, t: &Tols) {
    let mut rng = Rng::new(11);
    let shapes = [(1, 1, 1), (7, 33, 67), (67, 130, 33), (130, 7, 129), (1, 300, 130), (64, 64, 64), (65, 63, 257), (513, 1024, 768)];
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
            matmul_case(be, t, &mut rng, g);
        }
    }
}

/// The shapes that stress a tiled GEMM's edges: k = 0, skinny decode products, a batch sharing
/// one B (stride 0), exact tiles with accumulation.
fn matmul_edges<B: Backend>(be: &B, t: &Tols) {
    let mut rng = Rng::new(12);
    let cases = [
        Gemm::new(5, 3, 0),
        Gemm::new(5, 3, 0).accumulate(),
        Gemm::new(3, 200, 70).trans_b(),
        Gemm::new(64, 64, 64).accumulate(),
        Gemm::new(17, 19, 23).batched(3, 17 * 23 + 5, 0, 17 * 19 + 3),
        Gemm::new(16, 40, 70).trans_b().batched(4, 16 * 70, 40 * 70 + 1, 16 * 40).accumulate(),
        Gemm::new(9, 65, 31).trans_a().batched(2, 9 * 31, 31 * 65, 9 * 65).alpha(-2.0),
        Gemm::new(67, 129, 33).trans_a().trans_b().alpha(0.5).accumulate(),
    ];
    for g in cases {
        matmul_case(be, t, &mut rng, g);
    }
}

/// The thin products of a LoRA layer (model/src/lora.rs) at ranks 1, 8 and 16 on odd shapes:
/// u = x·Aᵀ, out += s·u·Bᵀ; dB += s·dyᵀ·u, du = s·dy·B, dA += duᵀ·x, dx += du·A; and the
/// merge W += s·B·A.
fn matmul_lora<B: Backend>(be: &B, t: &Tols) {
    let mut rng = Rng::new(13);
    for (n, d_in, d_out, r, s) in [(37, 65, 130, 1, 2.0), (128, 64, 176, 8, 0.5), (301, 257, 33, 16, 1.0 / 4.0f32.sqrt())] {
        let cases = [
            Gemm::new(n, r, d_in).trans_b(),
            Gemm::new(n, d_out, r).trans_b().accumulate().alpha(s),
            Gemm::new(d_out, r, n).trans_a().accumulate().alpha(s),
            Gemm::new(n, r, d_out).alpha(s),
            Gemm::new(r, d_in, n).trans_a().accumulate(),
            Gemm::new(n, d_in, r).accumulate(),
            Gemm::new(d_out, d_in, r).accumulate().alpha(s),
        ];
        for g in cases {
            matmul_case(be, t, &mut rng, g);
        }
    }
}

fn matmul_case<B: Backend>(be: &B, t: &Tols, rng: &mut Rng, g: Gemm) {
    let p = Pair::new(be);
    let (ea, eb, ec) = g.extents();
    let (ca, ga) = p.up(&normal(rng, ea, 1.0));
    let (cb, gb) = p.up(&normal(rng, eb, 1.0));
    // beta = 0 must not read C: it starts as NaN there
    let c0 = if g.beta == 0.0 { vec![f32::NAN; ec] } else { normal(rng, ec, 1.0) };
    let (mut cc, mut gc) = p.out(&c0);
    p.cpu.matmul(&mut cc, &ca, &cb, &g);
    be.matmul(&mut gc, &ga, &gb, &g);
    // compare each written block (the gaps between batches are not the op's)
    let got = be.read(&gc, ec + PAD);
    check("matmul", &format!("{g:?} [past the last batch]"), &got[ec..], &cc[ec..], &t.matmul);
    for bi in 0..g.batch {
        let r = bi * g.stride_c..bi * g.stride_c + g.m * g.n;
        check("matmul", &format!("{g:?} [batch {bi}]"), &got[r.clone()], &cc[r], &t.matmul);
    }
}

// ---- attention ------------------------------------------------------------------------------

struct AttnCase {
    sh: AttnShape,
    q_pos0: Vec<u32>,
    kv_len: Vec<u32>,
    alibi: bool,
}

fn attn_case(batch: usize, (tq, tk): (usize, usize), (n_heads, n_kv_heads, head_dim): (usize, usize, usize), causal: bool, q_pos0: &[u32], kv_len: &[u32], alibi: bool) -> AttnCase {
    let sh = AttnShape { batch, tq, tk, n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), causal, window: 0, softcap: 0.0 };
    AttnCase { sh, q_pos0: q_pos0.to_vec(), kv_len: kv_len.to_vec(), alibi }
}

impl AttnCase {
    /// The same case under a sliding window of `w` keys.
    fn window(mut self, w: usize) -> AttnCase {
        self.sh.window = w;
        self
    }
    /// The same case with its scores soft-capped at `c` (Gemma 2).
    fn softcap(mut self, c: f32) -> AttnCase {
        self.sh.softcap = c;
        self
    }
}

fn attn_cases() -> Vec<AttnCase> {
    vec![
        // training: causal, GQA, one sequence shorter (padding)
        attn_case(2, (7, 7), (4, 2, 16), true, &[0, 0], &[7, 5], false),
        attn_case(2, (37, 37), (4, 2, 64), true, &[0, 0], &[37, 20], false),
        // decode: one new token against a cache of capacity tk > kv_len
        attn_case(2, (1, 33), (2, 1, 64), true, &[20, 32], &[21, 33], false),
        attn_case(3, (1, 40), (4, 2, 64), true, &[7, 30, 0], &[8, 31, 1], false),
        attn_case(2, (1, 45), (8, 2, 128), true, &[44, 30], &[45, 31], false),
        // chunked prefill with ALiBi (BLOOM), 3 heads (not a power of two)
        attn_case(1, (33, 67), (3, 3, 32), true, &[30], &[63], true),
        // chunked prefill and a sequence that sees no key (kv_len 0: out 0, lse −inf)
        attn_case(2, (5, 12), (2, 1, 8), true, &[3, 0], &[8, 0], true),
        attn_case(2, (3, 5), (2, 1, 8), true, &[0, 0], &[0, 5], false),
        attn_case(2, (5, 40), (4, 4, 32), true, &[35, 10], &[40, 15], false),
        // non-causal, odd head dims, with and without ALiBi
        attn_case(2, (13, 13), (2, 2, 40), false, &[0, 0], &[13, 9], false),
        attn_case(2, (70, 70), (3, 3, 11), false, &[0, 0], &[70, 33], true),
        attn_case(2, (9, 9), (4, 2, 6), true, &[0, 0], &[9, 5], false),
        attn_case(1, (70, 70), (6, 6, 80), true, &[0], &[70], true),
        // long GQA / MQA rows (several key tiles), wide heads up to the kernels' maximum (each
        // case within llvmpipe's loop limit, so CI's adapter runs every one: see
        // runtime/src/wgpu's test of a case past it)
        attn_case(1, (150, 150), (2, 1, 64), true, &[0], &[150], false),
        attn_case(1, (130, 130), (4, 1, 32), true, &[0], &[130], false),
        attn_case(1, (64, 64), (2, 1, 128), true, &[0], &[64], false),
        attn_case(1, (9, 9), (2, 2, 130), true, &[0], &[9], false),
        attn_case(1, (12, 12), (1, 1, 200), false, &[0], &[12], false),
        attn_case(1, (33, 33), (2, 1, 256), false, &[0], &[33], true),
        // sliding windows: training rows (a padded sequence whose late rows see no key), W = 2
        // (W = 1 makes dq and dk zero but for rounding noise, nothing to compare), windows across
        // query blocks and key tiles, a window of exactly one 64-row block,
        attn_case(2, (33, 33), (4, 2, 16), true, &[0, 0], &[33, 20], false).window(5),
        attn_case(1, (70, 70), (3, 3, 32), true, &[0], &[70], true).window(2),
        attn_case(1, (150, 150), (2, 1, 32), true, &[0], &[150], false).window(40),
        attn_case(2, (130, 130), (4, 2, 8), true, &[0, 0], &[130, 77], true).window(64),
        // decode and prefill chunks at q_pos0 > 0 over caches with kv_len < Tk, and a window
        // wider than any position (the kernels clamp it)
        attn_case(3, (1, 40), (4, 2, 64), true, &[39, 20, 3], &[40, 21, 4], false).window(9),
        attn_case(2, (1, 45), (8, 2, 128), true, &[44, 30], &[45, 31], true).window(32),
        attn_case(2, (5, 40), (4, 4, 32), true, &[35, 10], &[40, 15], false).window(3),
        attn_case(1, (33, 67), (3, 3, 32), true, &[30], &[63], true).window(33),
        attn_case(2, (9, 20), (2, 1, 8), true, &[11, 0], &[20, 9], false).window(usize::MAX),
        // soft-capped scores (these scores have a spread of about 2: cap 1 saturates many, 50 is
        // Gemma 2's value): training with padding, decode, ALiBi after the cap, a window, rows
        // over several key tiles and query blocks, the widest heads, a sequence without keys
        attn_case(2, (37, 37), (4, 2, 64), true, &[0, 0], &[37, 20], false).softcap(1.0),
        attn_case(2, (1, 45), (8, 2, 128), true, &[44, 30], &[45, 31], false).softcap(50.0),
        attn_case(1, (33, 67), (3, 3, 32), true, &[30], &[63], true).softcap(2.0),
        attn_case(2, (33, 33), (4, 2, 16), true, &[0, 0], &[33, 20], false).window(5).softcap(1.0),
        attn_case(1, (150, 150), (2, 1, 64), true, &[0], &[150], false).softcap(3.0),
        attn_case(2, (70, 70), (3, 3, 11), false, &[0, 0], &[70, 33], true).softcap(1.5),
        attn_case(1, (33, 33), (2, 1, 256), false, &[0], &[33], false).softcap(1.0),
        attn_case(2, (3, 5), (2, 1, 8), true, &[0, 0], &[0, 5], false).softcap(0.5),
    ]
}

fn attn_desc(c: &AttnCase) -> String {
    let s = &c.sh;
    format!("B={} Tq={} Tk={} H={} Hkv={} D={} causal={} window={} softcap={} q_pos0={:?} kv_len={:?} alibi={}", s.batch, s.tq, s.tk, s.n_heads, s.n_kv_heads, s.head_dim, s.causal, s.window, s.softcap, c.q_pos0, c.kv_len, c.alibi)
}

fn attention_fwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(13);
    for case in attn_cases() {
        let s = &case.sh;
        let (nq, nk, nl) = s.extents();
        let (cq, gq) = p.up(&normal(&mut rng, nq, 1.5));
        let (ck, gk) = p.up(&normal(&mut rng, nk, 1.5));
        let (cv, gv) = p.up(&normal(&mut rng, nk, 1.0));
        let (cp, gp) = p.ids(&case.q_pos0);
        let (cl, gl) = p.ids(&case.kv_len);
        let (ca, ga) = p.up(&okapi::kernels::attention::alibi_slopes(s.n_heads));
        // `=` outputs start as NaN: every element must be written
        let (mut co, mut go) = p.out(&vec![f32::NAN; nq]);
        let (mut cs, mut gs) = p.out(&vec![f32::NAN; nl]);
        let cx = AttnInputs { q: &cq, k: &ck, v: &cv, q_pos0: &cp, kv_len: &cl, alibi: case.alibi.then_some(&ca) };
        let gx = AttnInputs { q: &gq, k: &gk, v: &gv, q_pos0: &gp, kv_len: &gl, alibi: case.alibi.then_some(&ga) };
        p.cpu.attention_fwd(&mut co, &mut cs, &cx, s);
        be.attention_fwd(&mut go, &mut gs, &gx, s);
        let d = attn_desc(&case);
        p.cmp("attention_fwd out", &d, &co, &go, &t.attention);
        p.cmp("attention_fwd lse", &d, &cs, &gs, &t.attention);
    }
}

fn attention_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(14);
    for case in attn_cases() {
        let s = &case.sh;
        let (nq, nk, nl) = s.extents();
        let (cq, gq) = p.up(&normal(&mut rng, nq, 1.5));
        let (ck, gk) = p.up(&normal(&mut rng, nk, 1.5));
        let (cv, gv) = p.up(&normal(&mut rng, nk, 1.0));
        let (cp, gp) = p.ids(&case.q_pos0);
        let (cl, gl) = p.ids(&case.kv_len);
        let (ca, ga) = p.up(&okapi::kernels::attention::alibi_slopes(s.n_heads));
        let cx = AttnInputs { q: &cq, k: &ck, v: &cv, q_pos0: &cp, kv_len: &cl, alibi: case.alibi.then_some(&ca) };
        let gx = AttnInputs { q: &gq, k: &gk, v: &gv, q_pos0: &gp, kv_len: &gl, alibi: case.alibi.then_some(&ga) };
        // the forward on the CPU gives both backends the same out / lse: the backward is
        // tested on its own
        let (mut out, mut lse) = (vec![0.0; nq], vec![0.0; nl]);
        p.cpu.attention_fwd(&mut out, &mut lse, &cx, s);
        let (co, go) = p.up(&out);
        let (cs, gs) = p.up(&lse);
        let (cdo, gdo) = p.up(&normal(&mut rng, nq, 1.0));
        // all three are `=`: they start as NaN
        let (mut cdq, mut gdq) = p.out(&vec![f32::NAN; nq]);
        let (mut cdk, mut gdk) = p.out(&vec![f32::NAN; nk]);
        let (mut cdv, mut gdv) = p.out(&vec![f32::NAN; nk]);
        p.cpu.attention_bwd(AttnGrads { dq: &mut cdq, dk: &mut cdk, dv: &mut cdv }, &cdo, &co, &cs, &cx, s);
        be.attention_bwd(AttnGrads { dq: &mut gdq, dk: &mut gdk, dv: &mut gdv }, &gdo, &go, &gs, &gx, s);
        let d = attn_desc(&case);
        p.cmp("attention_bwd dq", &d, &cdq, &gdq, &t.attention);
        p.cmp("attention_bwd dk", &d, &cdk, &gdk, &t.attention);
        p.cmp("attention_bwd dv", &d, &cdv, &gdv, &t.attention);
    }
}

// ---- norms ----------------------------------------------------------------------------------

/// Every shape without a weight offset and with Gemma's (`x·rstd·(1 + w)`).
fn rmsnorm<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(15);
    for ((n, c), offset) in ROWS.into_iter().flat_map(|r| [(r, 0.0), (r, 1.0)]) {
        let d = format!("n={n} c={c} w_offset={offset}");
        let sh = NormShape::new(n, c, 1e-5).weight_offset(offset);
        let (cx, gx) = p.up(&spread(&mut rng, n * c, 2.0));
        let (cw, gw) = p.up(&spread(&mut rng, c, 1.0));
        let (mut co, mut go) = p.out(&spread(&mut rng, n * c, 1.0));
        let (mut cr, mut gr) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.rmsnorm_fwd(RmsNormFwd { out: &mut co, rstd: &mut cr, x: &cx, w: &cw }, &sh);
        be.rmsnorm_fwd(RmsNormFwd { out: &mut go, rstd: &mut gr, x: &gx, w: &gw }, &sh);
        p.cmp("rmsnorm_fwd out", &d, &co, &go, &t.reduction);
        p.cmp("rmsnorm_fwd rstd", &d, &cr, &gr, &t.reduction);
        // backward from the CPU's rstd; dx and dw accumulate onto non-zero starts
        let (cr, gr) = p.up(&cr[..n]);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n * c, 1.0));
        let (mut cdw, mut gdw) = p.out(&spread(&mut rng, c, 1.0));
        p.cpu.rmsnorm_bwd(RmsNormBwd { dx: &mut cdx, dw: &mut cdw, dy: &cdy, x: &cx, w: &cw, rstd: &cr }, &sh);
        be.rmsnorm_bwd(RmsNormBwd { dx: &mut gdx, dw: &mut gdw, dy: &gdy, x: &gx, w: &gw, rstd: &gr }, &sh);
        p.cmp("rmsnorm_bwd dx (+=)", &d, &cdx, &gdx, &t.reduction);
        p.cmp("rmsnorm_bwd dw (+=)", &d, &cdw, &gdw, &t.reduction);
    }
}

fn layernorm<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(16);
    for (n, c) in ROWS {
        let d = format!("n={n} c={c}");
        let sh = NormShape::new(n, c, 1e-5);
        // an offset mean, as activations have
        let (cx, gx) = p.up(&spread(&mut rng, n * c, 2.0).iter().map(|v| v + 0.5).collect::<Vec<_>>());
        let (cw, gw) = p.up(&spread(&mut rng, c, 1.0));
        let (cb, gb) = p.up(&spread(&mut rng, c, 1.0));
        let (mut co, mut go) = p.out(&spread(&mut rng, n * c, 1.0));
        let (mut cm, mut gm) = p.out(&spread(&mut rng, n, 1.0));
        let (mut cr, mut gr) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.layernorm_fwd(LayerNormFwd { out: &mut co, mean: &mut cm, rstd: &mut cr, x: &cx, w: &cw, b: &cb }, &sh);
        be.layernorm_fwd(LayerNormFwd { out: &mut go, mean: &mut gm, rstd: &mut gr, x: &gx, w: &gw, b: &gb }, &sh);
        p.cmp("layernorm_fwd out", &d, &co, &go, &t.reduction);
        p.cmp("layernorm_fwd mean", &d, &cm, &gm, &t.reduction);
        p.cmp("layernorm_fwd rstd", &d, &cr, &gr, &t.reduction);
        let (cm, gm) = p.up(&cm[..n]);
        let (cr, gr) = p.up(&cr[..n]);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * c, 1.0));
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n * c, 1.0));
        let (mut cdw, mut gdw) = p.out(&spread(&mut rng, c, 1.0));
        let (mut cdb, mut gdb) = p.out(&spread(&mut rng, c, 1.0));
        p.cpu.layernorm_bwd(LayerNormBwd { dx: &mut cdx, dw: &mut cdw, db: &mut cdb, dy: &cdy, x: &cx, w: &cw, mean: &cm, rstd: &cr }, &sh);
        be.layernorm_bwd(LayerNormBwd { dx: &mut gdx, dw: &mut gdw, db: &mut gdb, dy: &gdy, x: &gx, w: &gw, mean: &gm, rstd: &gr }, &sh);
        p.cmp("layernorm_bwd dx (+=)", &d, &cdx, &gdx, &t.reduction);
        p.cmp("layernorm_bwd dw (+=)", &d, &cdw, &gdw, &t.reduction);
        p.cmp("layernorm_bwd db (+=)", &d, &cdb, &gdb, &t.reduction);
    }
}

// ---- RoPE -----------------------------------------------------------------------------------

/// Positions up to `pmax`: large angles (thousands of radians) and rows past one workgroup; the
/// backward must undo the forward.
fn rope<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(17);
    for (n, heads, hd, pmax) in [(1, 1, 2, 1), (7, 3, 16, 2048), (33, 2, 64, 4000), (5, 1, 130, 2048), (300, 4, 16, 64), (37, 3, 128, 32768)] {
        let sh = RopeShape::new(n, heads, hd);
        let d = format!("{sh:?} positions<{pmax}");
        let (ci, gi) = p.up(&rope_inv_freq(hd, 10000.0, &RopeScaling::None));
        let (cp, gp) = p.ids(&below(&mut rng, n, pmax));
        let x = spread(&mut rng, n * heads * hd, 1.0);
        let (mut cx, mut gx) = p.out(&x);
        p.cpu.rope_fwd(&mut cx, &cp, &ci, &sh);
        be.rope_fwd(&mut gx, &gp, &gi, &sh);
        p.cmp("rope_fwd", &d, &cx, &gx, &t.rope);
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n * heads * hd, 1.0));
        p.cpu.rope_bwd(&mut cdx, &cp, &ci, &sh);
        be.rope_bwd(&mut gdx, &gp, &gi, &sh);
        p.cmp("rope_bwd", &d, &cdx, &gdx, &t.rope);
        be.rope_bwd(&mut gx, &gp, &gi, &sh);
        let mut undone = x.clone();
        undone.extend([SENTINEL; PAD]);
        p.cmp("rope_bwd ∘ rope_fwd = identity", &d, &undone, &gx, &Tol { abs: 1e-5, rel: 1e-4 });
    }
}

// ---- activations ----------------------------------------------------------------------------

fn swiglu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(18);
    for n in SIZES {
        let d = format!("len={n}");
        // gates of ±tens saturate the sigmoid
        let (cg, gg) = p.up(&spread(&mut rng, n, 3.0));
        let (cu, gu) = p.up(&spread(&mut rng, n, 1.0));
        let (mut co, mut go) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.swiglu_fwd(&mut co, &cg, &cu, n);
        be.swiglu_fwd(&mut go, &gg, &gu, n);
        p.cmp("swiglu_fwd", &d, &co, &go, &t.transcendental);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdg, mut gdg) = p.out(&spread(&mut rng, n, 9.0));
        let (mut cdu, mut gdu) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.swiglu_bwd(&mut cdg, &mut cdu, &cdo, &cg, &cu, n);
        be.swiglu_bwd(&mut gdg, &mut gdu, &gdo, &gg, &gu, n);
        p.cmp("swiglu_bwd dgate", &d, &cdg, &gdg, &t.transcendental);
        p.cmp("swiglu_bwd dup", &d, &cdu, &gdu, &t.transcendental);
    }
}

fn gelu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(19);
    for n in SIZES {
        let d = format!("len={n}");
        let (cx, gx) = p.up(&spread(&mut rng, n, 3.0));
        let (mut co, mut go) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.gelu_fwd(&mut co, &cx, n);
        be.gelu_fwd(&mut go, &gx, n);
        p.cmp("gelu_fwd", &d, &co, &go, &t.transcendental);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.gelu_bwd(&mut cdx, &cdo, &cx, n);
        be.gelu_bwd(&mut gdx, &gdo, &gx, n);
        p.cmp("gelu_bwd", &d, &cdx, &gdx, &t.transcendental);
    }
}

fn geglu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(36);
    for n in SIZES {
        let d = format!("len={n}");
        // gates of ±tens saturate the tanh
        let (cg, gg) = p.up(&spread(&mut rng, n, 3.0));
        let (cu, gu) = p.up(&spread(&mut rng, n, 1.0));
        let (mut co, mut go) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.geglu_fwd(&mut co, &cg, &cu, n);
        be.geglu_fwd(&mut go, &gg, &gu, n);
        p.cmp("geglu_fwd", &d, &co, &go, &t.transcendental);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdg, mut gdg) = p.out(&spread(&mut rng, n, 9.0));
        let (mut cdu, mut gdu) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.geglu_bwd(&mut cdg, &mut cdu, &cdo, &cg, &cu, n);
        be.geglu_bwd(&mut gdg, &mut gdu, &gdo, &gg, &gu, n);
        p.cmp("geglu_bwd dgate", &d, &cdg, &gdg, &t.transcendental);
        p.cmp("geglu_bwd dup", &d, &cdu, &gdu, &t.transcendental);
    }
}

/// Logit soft-capping in place, forward and backward, at Gemma 2's caps and a small one; the
/// logits run from deep saturation to tiny values (where the capped value must stay ≈ x).
fn softcap<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(37);
    for (n, cap) in SIZES.into_iter().zip([30.0, 50.0, 0.7].into_iter().cycle()) {
        let d = format!("len={n} cap={cap}");
        let mut x = spread(&mut rng, n, 2.0 * cap);
        for (i, v) in [1e-30, -3e-6, 0.0, 40.0 * cap, -40.0 * cap].into_iter().enumerate().filter(|(i, _)| *i < n) {
            x[i] = v;
        }
        let (mut cx, mut gx) = p.out(&x);
        p.cpu.softcap_fwd(&mut cx, n, cap);
        be.softcap_fwd(&mut gx, n, cap);
        p.cmp("softcap_fwd", &d, &cx, &gx, &t.transcendental);
        // the tiny logits each to its own precision (the tolerance's rms floor would hide a
        // tanh that loses them to cancellation)
        let got = be.read(&gx, n.min(2));
        for (i, (&g, &c)) in got.iter().zip(&cx).enumerate() {
            assert!((g - c).abs() <= 1e-6 * c.abs(), "softcap_fwd {d}: x = {} gives {g:e}, the CPU {c:e}", x[i]);
        }
        // the backward from the CPU's capped values: it is tested on its own
        let (cy, gy) = p.up(&cx[..n]);
        let (mut cdy, mut gdy) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.softcap_bwd(&mut cdy, &cy, n, cap);
        be.softcap_bwd(&mut gdy, &gy, n, cap);
        p.cmp("softcap_bwd", &d, &cdy, &gdy, &t.transcendental);
    }
}

/// A select, no arithmetic: bit-for-bit (up to the sign of zero) on every backend. The CPU
/// result is checked against PyTorch's definitions first: relu(NaN) = NaN, and the gradient is
/// exactly 0 wherever x ≤ 0 (x = 0 included) and dout elsewhere (NaN x included).
fn relu<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(35);
    // 1037: odd, no multiple of any workgroup size
    for n in SIZES.into_iter().chain([1000 + 37]) {
        let d = format!("len={n}");
        let mut x = spread(&mut rng, n, 3.0);
        // exact zeros of both signs throughout, and ±inf and a NaN near the front
        for i in (3..n).step_by(7) {
            x[i] = if i % 2 == 0 { 0.0 } else { -0.0 };
        }
        for (i, v) in [0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e-30, -1e-30].into_iter().enumerate() {
            if i < n {
                x[i] = v;
            }
        }
        let (cx, gx) = p.up(&x);
        let (mut co, mut go) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.relu_fwd(&mut co, &cx, n);
        for (i, (&o, &v)) in co.iter().zip(&x).enumerate() {
            let want = if v > 0.0 || v.is_nan() { v } else { 0.0 };
            assert!(o.to_bits() == want.to_bits() || (o.is_nan() && v.is_nan()), "cpu relu_fwd {d} [{i}]: {o} for {v}");
        }
        be.relu_fwd(&mut go, &gx, n);
        p.cmp("relu_fwd", &d, &co, &go, &t.memory);
        let (cdo, gdo) = p.up(&spread(&mut rng, n, 1.0));
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n, 9.0));
        p.cpu.relu_bwd(&mut cdx, &cdo, &cx, n);
        for (i, ((&g, &dout), &v)) in cdx.iter().zip(&cdo).zip(&x).enumerate() {
            let want = if v <= 0.0 { 0.0 } else { dout };
            assert!(g.to_bits() == want.to_bits(), "cpu relu_bwd {d} [{i}]: {g} for x {v}, dout {dout}");
        }
        be.relu_bwd(&mut gdx, &gdo, &gx, n);
        p.cmp("relu_bwd", &d, &cdx, &gdx, &t.memory);
        // and +0 exactly where x ≤ 0 on the backend itself (cmp would let −0 pass)
        let got = be.read(&gdx, n);
        if let Some(i) = (0..n).find(|&i| x[i] <= 0.0 && got[i].to_bits() != 0) {
            panic!("relu_bwd {d}: dx[{i}] = {} for x = {}, expected +0", got[i], x[i]);
        }
    }
}

/// Dropout's mask and values written out from the definition (okapi-kernels' `Dropout`):
/// (threshold, scale, kept mask, out after `=` or `+=` into `start`).
fn dropout_reference(x: &[f32], start: &[f32], seed: u64, prob: f32, accumulate: bool) -> (u32, f32, Vec<bool>, Vec<f32>) {
    fn mix(mut x: u32) -> u32 {
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846ca68b);
        x ^= x >> 16;
        x
    }
    let threshold = (prob as f64 * 2f64.powi(32)).round().min(u32::MAX as f64) as u32;
    let scale = (1.0 / (1.0 - prob as f64)) as f32;
    let key = mix((seed as u32) ^ mix((seed >> 32) as u32));
    let kept: Vec<bool> = (0..x.len()).map(|i| mix(i as u32 ^ key) >= threshold).collect();
    let out = (0..x.len())
        .map(|i| {
            let v = if kept[i] { x[i] * scale } else { 0.0 };
            if accumulate {
                start[i] + v
            } else {
                v
            }
        })
        .collect();
    (threshold, scale, kept, out)
}

/// Equal bits, or both NaN (a NaN's payload is the device's).
fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A mask and one multiply: bit-for-bit on every backend, sign of zero included. The CPU is
/// checked against the definition first (dropped NaN / ±inf give +0, `+=` adds the rounded
/// product), p = 0 keeps everything with scale 1, and over 100 003 elements the kept fraction
/// lies within 3 standard deviations of 1 − p.
fn dropout<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(36);
    // the last seed has both 32-bit halves non-zero
    for seed in [0u64, 7, 0x9e37_79b9_7f4a_7c15] {
        for n in [1, 1037, 100_003] {
            let mut x = spread(&mut rng, n, 3.0);
            // NaN and ±inf every 97 elements: on dropped and on kept elements
            for (j, i) in (0..n).step_by(97).enumerate() {
                x[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][j % 3];
            }
            let (cx, gx) = p.up(&x);
            for prob in [0.0, 0.1, 0.5, 0.9] {
                for accumulate in [false, true] {
                    let d = Dropout::new(seed, prob);
                    let d = if accumulate { d.accumulate() } else { d };
                    let desc = format!("len={n} seed={seed:#x} p={prob} {}", if accumulate { "+=" } else { "=" });
                    let start = spread(&mut rng, n, 2.0);
                    let (threshold, scale, kept, want) = dropout_reference(&x, &start, seed, prob, accumulate);
                    assert_eq!((d.threshold, d.scale.to_bits(), d.accumulate), (threshold, scale.to_bits(), accumulate), "Dropout::new {desc}");
                    let (mut co, mut go) = p.out(&start);
                    p.cpu.dropout(&mut co, &cx, &d, n);
                    if let Some(i) = (0..n).find(|&i| !same_bits(co[i], want[i])) {
                        panic!("cpu dropout {desc} [{i}]: {} for x {}, start {}, kept {}; the definition gives {}", co[i], x[i], start[i], kept[i], want[i]);
                    }
                    be.dropout(&mut go, &gx, &d, n);
                    p.cmp("dropout", &desc, &co, &go, &t.memory);
                    let got = be.read(&go, n);
                    if let Some(i) = (0..n).find(|&i| !same_bits(got[i], co[i])) {
                        panic!("dropout {desc} [{i}]: {} ({:#010x}), the cpu gives {} ({:#010x})", got[i], got[i].to_bits(), co[i], co[i].to_bits());
                    }
                    let n_kept = kept.iter().filter(|&&k| k).count();
                    if prob == 0.0 {
                        assert!(n_kept == n && d.threshold == 0 && d.scale == 1.0, "dropout {desc}: p = 0 kept {n_kept} of {n}, scale {}", d.scale);
                    }
                    if n == 100_003 {
                        let (mean, sd) = (n as f64 * (1.0 - prob as f64), (n as f64 * prob as f64 * (1.0 - prob as f64)).sqrt());
                        assert!((n_kept as f64 - mean).abs() <= 3.0 * sd, "dropout {desc}: kept {n_kept} of {n}, expected {mean:.0} ± 3·{sd:.1}");
                        let odd = |keep: bool| (0..n).filter(|&i| !x[i].is_finite() && kept[i] == keep).count();
                        assert!(prob == 0.0 || (odd(false) > 0 && odd(true) > 0), "dropout {desc}: the non-finite inputs are not on both dropped and kept elements");
                    }
                }
            }
        }
    }
}

// ---- softmax, cross-entropy, log-probs ------------------------------------------------------

const VOCAB: [(usize, usize); 8] = [(1, 1), (1, 7), (7, 33), (33, 1000), (3, 5003), (4, 256), (4, 4099), (6, 32003)];

fn softmax<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(20);
    for (n, v) in VOCAB {
        let r = Rows::new(n, v);
        for temp in [1.0, 0.7, 1.9] {
            let d = format!("n={n} v={v} temperature={temp}");
            let (cx, gx) = p.up(&normal(&mut rng, n * v, 4.0));
            let (mut co, mut go) = p.out(&spread(&mut rng, n * v, 1.0));
            p.cpu.softmax_fwd(&mut co, &cx, r, temp);
            be.softmax_fwd(&mut go, &gx, r, temp);
            p.cmp("softmax_fwd", &d, &co, &go, &t.reduction);
        }
        let d = format!("n={n} v={v}");
        let mut y = vec![0.0; n * v];
        p.cpu.softmax_fwd(&mut y, &normal(&mut rng, n * v, 4.0), r, 1.0);
        let (cy, gy) = p.up(&y);
        let (cdy, gdy) = p.up(&spread(&mut rng, n * v, 1.0));
        let (mut cdx, mut gdx) = p.out(&spread(&mut rng, n * v, 1.0));
        p.cpu.softmax_bwd(&mut cdx, &cdy, &cy, r);
        be.softmax_bwd(&mut gdx, &gdy, &gy, r);
        p.cmp("softmax_bwd", &d, &cdx, &gdx, &t.reduction);
    }
}

/// Logits (N,V) of spread 4 and targets: some rows IGNORE_INDEX, some at the row's argmax, the
/// first and the last column; row 0's maximum sits at its target and again at the last column
/// (the first index wins: greedy), row 4's first at column 0 and then at its target (not greedy).
fn logits_and_targets(rng: &mut Rng, n: usize, v: usize) -> (Vec<f32>, Vec<u32>) {
    let mut logits = normal(rng, n * v, 4.0);
    let mut targets: Vec<u32> = (0..n)
        .map(|i| match (i % 5, rng.next_u64() % 3) {
            (1, _) if n > 1 => IGNORE_INDEX,
            (2, _) => 0,
            (3, _) => v as u32 - 1,
            (_, 0) => {
                let row = &logits[i * v..][..v];
                (0..v).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as u32
            }
            _ => (rng.next_u64() % v as u64) as u32,
        })
        .collect();
    if v > 2 {
        targets[0] = (v / 2) as u32;
        logits[v / 2] = 50.0;
        logits[v - 1] = 50.0;
        if n > 4 {
            targets[4] = (v / 3).max(1) as u32;
            logits[4 * v] = 50.0;
            logits[4 * v + targets[4] as usize] = 50.0;
        }
    }
    (logits, targets)
}

fn xent<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(21);
    // the last case has more rows than one grid dimension holds (65535): the folded row index
    for (n, v) in VOCAB.into_iter().chain([(65_537, 3)]) {
        let d = format!("n={n} v={v}");
        let (logits, targets) = logits_and_targets(&mut rng, n, v);
        let (ct, gt) = p.ids(&targets);
        let (cc, gc) = p.up(&normal(&mut rng, n, 1.0).iter().map(|c| c.abs() / n as f32).collect::<Vec<_>>());
        let (mut cl, mut gl) = p.out(&logits);
        let (mut cs, mut gs) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.xent_fwd_bwd(&mut cl, &mut cs, &ct, &cc, Rows::new(n, v));
        be.xent_fwd_bwd(&mut gl, &mut gs, &gt, &gc, Rows::new(n, v));
        p.cmp("xent_fwd_bwd losses", &d, &cs, &gs, &t.reduction);
        p.cmp("xent_fwd_bwd dlogits", &d, &cl, &gl, &t.reduction);
    }
}

fn token_logprobs<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(22);
    for (n, v) in VOCAB {
        let d = format!("n={n} v={v}");
        let (logits, targets) = logits_and_targets(&mut rng, n, v);
        let (ct, gt) = p.ids(&targets);
        let (cl, gl) = p.up(&logits);
        let (mut clp, mut glp) = p.out(&spread(&mut rng, n, 1.0));
        let (mut cg, mut gg) = p.out(&spread(&mut rng, n, 1.0));
        p.cpu.token_logprobs(&mut clp, &mut cg, &cl, &ct, Rows::new(n, v));
        be.token_logprobs(&mut glp, &mut gg, &gl, &gt, Rows::new(n, v));
        p.cmp("token_logprobs logp", &d, &clp, &glp, &t.reduction);
        p.cmp("token_logprobs greedy", &d, &cg, &gg, &t.memory);
        if v > 2 {
            assert_eq!(cg[0], 1.0, "{d}: row 0's target is its first argmax");
            if n > 4 {
                assert_eq!(cg[4], 0.0, "{d}: row 4's target ties the maximum after an earlier column: not greedy");
            }
        }
    }
}

fn token_logprobs_bwd<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(23);
    for (n, v) in VOCAB {
        let d = format!("n={n} v={v}");
        let (logits, targets) = logits_and_targets(&mut rng, n, v);
        let (ct, gt) = p.ids(&targets);
        let (cl, gl) = p.up(&logits);
        let (cc, gc) = p.up(&normal(&mut rng, n, 1.0));
        let (mut cd, mut gd) = p.out(&spread(&mut rng, n * v, 1.0));
        p.cpu.token_logprobs_bwd(&mut cd, &cl, &ct, &cc, Rows::new(n, v));
        be.token_logprobs_bwd(&mut gd, &gl, &gt, &gc, Rows::new(n, v));
        p.cmp("token_logprobs_bwd", &d, &cd, &gd, &t.reduction);
    }
}

// ---- optimizer ------------------------------------------------------------------------------

fn adamw<B: Backend>(be: &B, t: &Tols) {
    let p = Pair::new(be);
    let mut rng = Rng::new(24);
    for n in SIZES {
        for (step, grad_scale, wd) in [(1, 1.0, 0.0), (7, 0.5, 0.1), (1000, 0.37, 0.1)] {
            let h = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd, step, grad_scale };
            let d = format!("len={n} step={step} grad_scale={grad_scale} weight_decay={wd}");
            let (mut cp, mut gp) = p.out(&spread(&mut rng, n, 1.0));
            let (cg, gg) = p.up(&spread(&mut rng, n, 1e-2));
            let (mut cm, mut gm) = p.out(&spread(&mut rng, n, 1e-3));
            let (mut cv, mut gv) = p.out(&spread(&mut rng, n, 1e-3).iter().map(|x| x * x).collect::<Vec<_>>());
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
    let mut rng = Rng::new(25);
    let twice = |op: &str, run: &dyn Fn() -> Vec<f32>| {
        let (a, b) = (run(), run());
        check(&format!("{op} run twice"), "", &b, &a, &Tol::EXACT);
    };
    for (n, c, v) in [(300, 67, 9), (4096, 768, 100)] {
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
            be.bias_bwd(&mut db, &be.upload(&dy), Rows::new(n, c));
            be.read(&db, c)
        });
        twice("embedding_bwd", &|| {
            let mut dt = be.zeros(v * c);
            be.embedding_bwd(&mut dt, &be.upload(&dy), &be.upload_ids(&ids), Rows::new(n, c));
            be.read(&dt, v * c)
        });
        twice("matmul (weight gradient, beta=1)", &|| {
            let mut dw = be.upload(&spread(&mut Rng::new(26), c * c, 1.0));
            be.matmul(&mut dw, &be.upload(&dy), &be.upload(&x), &Gemm { beta: 1.0, ..Gemm::new(c, c, n).trans_a() });
            be.read(&dw, c * c)
        });
        twice("rmsnorm_bwd", &|| {
            let (xb, wb, sh) = (be.upload(&x), be.upload(&w), NormShape::new(n, c, 1e-5));
            let (mut out, mut rstd) = (be.zeros(n * c), be.zeros(n));
            be.rmsnorm_fwd(RmsNormFwd { out: &mut out, rstd: &mut rstd, x: &xb, w: &wb }, &sh);
            let (mut dx, mut dw) = (be.zeros(n * c), be.zeros(c));
            be.rmsnorm_bwd(RmsNormBwd { dx: &mut dx, dw: &mut dw, dy: &be.upload(&dy), x: &xb, w: &wb, rstd: &rstd }, &sh);
            let mut r = be.read(&dx, n * c);
            r.extend(be.read(&dw, c));
            r
        });
    }
    let sh = AttnShape { batch: 2, tq: 33, tk: 33, n_heads: 4, n_kv_heads: 2, head_dim: 16, scale: 0.25, causal: true, window: 0, softcap: 0.0 };
    let (nq, nk, nl) = sh.extents();
    let (q, k, vv, dout) = (normal(&mut rng, nq, 1.0), normal(&mut rng, nk, 1.0), normal(&mut rng, nk, 1.0), normal(&mut rng, nq, 1.0));
    twice("attention_bwd", &|| {
        let (qb, kb, vb) = (be.upload(&q), be.upload(&k), be.upload(&vv));
        let (pos, len) = (be.upload_ids(&[0, 0]), be.upload_ids(&[33, 20]));
        let x = AttnInputs { q: &qb, k: &kb, v: &vb, q_pos0: &pos, kv_len: &len, alibi: None };
        let (mut out, mut lse) = (be.zeros(nq), be.zeros(nl));
        be.attention_fwd(&mut out, &mut lse, &x, &sh);
        let (mut dq, mut dk, mut dv) = (be.zeros(nq), be.zeros(nk), be.zeros(nk));
        be.attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &be.upload(&dout), &out, &lse, &x, &sh);
        let mut r = be.read(&dq, nq);
        r.extend(be.read(&dk, nk));
        r.extend(be.read(&dv, nk));
        r
    });
}

// ---- the suite, per backend -----------------------------------------------------------------

/// Stamps out one #[test] per op for a backend: `conformance!(module, make_backend, TOLS)`, where
/// `make_backend(what)` returns `Option<B>` (None: the backend is absent and said so loudly).
/// Add `ignore = "why"` for a backend CI cannot run.
macro_rules! conformance {
    ($module:ident, $make:expr, $tols:expr $(, ignore = $why:literal)?) => {
        mod $module {
            use super::*;
            conformance!(@ops $make, $tols, [$(ignore = $why)?];
                memory, fill, copy, copy_range, staged_copies, unpack_bf16, scale, axpy, sum_squares, bias_add, bias_bwd, embedding, kv_write,
                matmul, matmul_edges, matmul_lora, attention_fwd, attention_bwd, rmsnorm, layernorm, rope, swiglu, gelu, geglu, relu, softcap, dropout,
                softmax, xent, token_logprobs, token_logprobs_bwd, adamw, deterministic);
        }
    };
    (@ops $make:expr, $tols:expr, $metas:tt; $($op:ident),* $(,)?) => {
        $( conformance!(@one $make, $tols, $metas, $op); )*
    };
    (@one $make:expr, $tols:expr, [$($meta:meta)?], $op:ident) => {
        #[test]
        $(#[$meta])?
        fn $op() {
            let what = concat!(stringify!($op), " (conformance)");
            let Some(be) = $make(what) else { return };
            super::$op(&be, &$tols);
        }
    };
}

fn cpu_backend(_what: &str) -> Option<CpuBackend> {
    Some(CpuBackend)
}

fn cuda_f32(what: &str) -> Option<CudaBackend> {
    common::cuda_or_skip(Precision::F32, what)
}

fn cuda_bf16(what: &str) -> Option<CudaBackend> {
    common::cuda_or_skip(Precision::Bf16, what)
}

conformance!(cpu, cpu_backend, Tols::CPU);
conformance!(wgpu, common::wgpu_or_skip, Tols::WGPU);
conformance!(cuda, cuda_f32, Tols::CUDA, ignore = "needs an NVIDIA GPU: cargo test --test conformance cuda -- --ignored");
conformance!(cuda_bf16, cuda_bf16, Tols::CUDA_BF16, ignore = "needs an NVIDIA GPU: cargo test --test conformance cuda -- --ignored");
