//! The wgpu backend's row / elementwise / optimizer ops (WGSL kernels beside their CPU twins in
//! okapi-kernels) against the CPU backend, on the edge cases that matter for them: row widths
//! that are not multiples of the 256-thread workgroup (7, 33, 300, 4099), IGNORE_INDEX targets,
//! temperature ≠ 1, ties for the argmax, grad_scale ≠ 1, and `+=` outputs that start non-zero.
//! Each check prints the max error and its index. Without an adapter the tests say so loudly
//! and pass, unless OKAPI_REQUIRE_WGPU=1.

use okapi_runtime::{AdamW, Backend, CpuBackend, WgpuBackend, IGNORE_INDEX};
use std::sync::OnceLock;

fn gpu() -> Option<&'static WgpuBackend> {
    static GPU: OnceLock<Option<WgpuBackend>> = OnceLock::new();
    GPU.get_or_init(|| match WgpuBackend::new() {
        Ok(b) => {
            eprintln!("wgpu_rows: running on adapter {}", b.adapter_name());
            Some(b)
        }
        Err(e) => {
            eprintln!("!!!!!!!! wgpu_rows: NO WGPU ADAPTER ({e}): the wgpu row-op tests did NOT run !!!!!!!!");
            if std::env::var("OKAPI_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("OKAPI_REQUIRE_WGPU=1 but no wgpu adapter: {e}");
            }
            None
        }
    })
    .as_ref()
}

/// Deterministic pseudo-random values in [-scale, scale).
fn rand(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Max |a − b| / (1 + |b|) with its index; panics past `tol`.
fn check(what: &str, got: &[f32], want: &[f32], tol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut worst, mut at) = (0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if g.is_nan() != w.is_nan() { f32::INFINITY } else if g.is_nan() { 0.0 } else { (g - w).abs() / (1.0 + w.abs()) };
        if e > worst || e.is_nan() {
            worst = e;
            at = i;
        }
    }
    eprintln!("{what}: max err {worst:.3e} at [{at}] (got {}, want {})", got.get(at).copied().unwrap_or(0.0), want.get(at).copied().unwrap_or(0.0));
    assert!(worst <= tol, "{what}: max err {worst:.3e} at [{at}]: got {} want {} (tol {tol:e})", got[at], want[at]);
    worst
}

const TOL: f32 = 2e-5;
const WIDTHS: [usize; 5] = [7, 33, 300, 256, 4099];

#[test]
fn norms_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    // n = 77: two full chunks of 32 rows and a partial one in the column sums (dw, db)
    for (k, (&c, n)) in WIDTHS.iter().zip([5usize, 77, 5, 77, 5]).enumerate() {
        let seed = 100 + k as u64;
        let x = rand(n * c, seed, 2.0);
        let w = rand(c, seed + 1, 1.5);
        let b = rand(c, seed + 2, 0.5);
        let dy = rand(n * c, seed + 3, 1.0);
        let dx0 = rand(n * c, seed + 4, 0.3); // `+=` outputs start non-zero
        let dw0 = rand(c, seed + 5, 0.3);
        let db0 = rand(c, seed + 6, 0.3);

        // RMSNorm
        let (mut o, mut r) = (cpu.zeros(n * c), cpu.zeros(n));
        cpu.rmsnorm_fwd(&mut o, &mut r, &x, &w, n, c, 1e-5);
        let (mut go, mut gr) = (g.zeros(n * c), g.zeros(n));
        let (gx, gw) = (g.upload(&x), g.upload(&w));
        g.rmsnorm_fwd(&mut go, &mut gr, &gx, &gw, n, c, 1e-5);
        check(&format!("rmsnorm_fwd out c={c}"), &g.read(&go, n * c), &o, TOL);
        check(&format!("rmsnorm_fwd rstd c={c}"), &g.read(&gr, n), &r, TOL);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        cpu.rmsnorm_bwd(&mut dx, &mut dw, &dy, &x, &w, &r, n, c);
        let (mut gdx, mut gdw, gdy) = (g.upload(&dx0), g.upload(&dw0), g.upload(&dy));
        let gr = g.upload(&r);
        g.rmsnorm_bwd(&mut gdx, &mut gdw, &gdy, &gx, &gw, &gr, n, c);
        check(&format!("rmsnorm_bwd dx c={c}"), &g.read(&gdx, n * c), &dx, TOL);
        check(&format!("rmsnorm_bwd dw c={c}"), &g.read(&gdw, c), &dw, TOL);

        // LayerNorm (x offset so the mean matters)
        let xo: Vec<f32> = x.iter().map(|v| v + 3.0).collect();
        let (mut o, mut m, mut r) = (cpu.zeros(n * c), cpu.zeros(n), cpu.zeros(n));
        cpu.layernorm_fwd(&mut o, &mut m, &mut r, &xo, &w, &b, n, c, 1e-5);
        let (mut go, mut gm, mut gr) = (g.zeros(n * c), g.zeros(n), g.zeros(n));
        let (gxo, gb) = (g.upload(&xo), g.upload(&b));
        g.layernorm_fwd(&mut go, &mut gm, &mut gr, &gxo, &gw, &gb, n, c, 1e-5);
        check(&format!("layernorm_fwd out c={c}"), &g.read(&go, n * c), &o, 1e-4);
        check(&format!("layernorm_fwd mean c={c}"), &g.read(&gm, n), &m, TOL);
        check(&format!("layernorm_fwd rstd c={c}"), &g.read(&gr, n), &r, 1e-4);
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        cpu.layernorm_bwd(&mut dx, &mut dw, &mut db, &dy, &xo, &w, &m, &r, n, c);
        let (mut gdx, mut gdw, mut gdb) = (g.upload(&dx0), g.upload(&dw0), g.upload(&db0));
        let (gm, gr) = (g.upload(&m), g.upload(&r));
        g.layernorm_bwd(&mut gdx, &mut gdw, &mut gdb, &gdy, &gxo, &gw, &gm, &gr, n, c);
        check(&format!("layernorm_bwd dx c={c}"), &g.read(&gdx, n * c), &dx, 1e-4);
        check(&format!("layernorm_bwd dw c={c}"), &g.read(&gdw, c), &dw, 1e-4);
        check(&format!("layernorm_bwd db c={c}"), &g.read(&gdb, c), &db, TOL);
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    // (n, heads, head_dim, positions up to): a row count past one workgroup, large positions
    for &(n, h, d, pmax) in &[(3usize, 2usize, 8usize, 5u32), (37, 3, 64, 4000), (300, 4, 16, 64)] {
        let x = rand(n * h * d, 7 + d as u64, 1.0);
        let pos: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % (pmax + 1)).collect();
        let inv = okapi_kernels::rope::rope_inv_freq(d, 10000.0, &okapi_kernels::rope::RopeScaling::None);
        let (gp, gi) = (g.upload_ids(&pos), g.upload(&inv));
        let mut want = x.clone();
        cpu.rope_fwd(&mut want, &pos, &inv, n, h, d);
        let mut gx = g.upload(&x);
        g.rope_fwd(&mut gx, &gp, &gi, n, h, d);
        let got = g.read(&gx, n * h * d);
        check(&format!("rope_fwd n={n} h={h} d={d} pmax={pmax}"), &got, &want, 1e-4);
        // backward undoes the forward
        let mut back = want.clone();
        cpu.rope_bwd(&mut back, &pos, &inv, n, h, d);
        g.rope_bwd(&mut gx, &gp, &gi, n, h, d);
        check(&format!("rope_bwd n={n} h={h} d={d}"), &g.read(&gx, n * h * d), &back, 1e-4);
        check(&format!("rope_bwd∘fwd = id n={n}"), &g.read(&gx, n * h * d), &x, 1e-4);
    }
}

#[test]
fn activations_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    for &len in &[7usize, 300, 4099, 70_001] {
        let gate = rand(len, 11 + len as u64, 12.0); // includes saturated sigmoid / tanh
        let up = rand(len, 12 + len as u64, 2.0);
        let dout = rand(len, 13 + len as u64, 1.0);
        let (gg, gu, gd) = (g.upload(&gate), g.upload(&up), g.upload(&dout));

        let mut o = cpu.zeros(len);
        cpu.swiglu_fwd(&mut o, &gate, &up, len);
        let mut go = g.upload(&rand(len, 1, 9.0)); // `=`: stale contents must not leak
        g.swiglu_fwd(&mut go, &gg, &gu, len);
        check(&format!("swiglu_fwd len={len}"), &g.read(&go, len), &o, TOL);
        let (mut dg, mut du) = (cpu.zeros(len), cpu.zeros(len));
        cpu.swiglu_bwd(&mut dg, &mut du, &dout, &gate, &up, len);
        let (mut gdg, mut gdu) = (g.upload(&rand(len, 2, 9.0)), g.upload(&rand(len, 3, 9.0)));
        g.swiglu_bwd(&mut gdg, &mut gdu, &gd, &gg, &gu, len);
        check(&format!("swiglu_bwd dgate len={len}"), &g.read(&gdg, len), &dg, TOL);
        check(&format!("swiglu_bwd dup len={len}"), &g.read(&gdu, len), &du, TOL);

        let mut o = cpu.zeros(len);
        cpu.gelu_fwd(&mut o, &gate, len);
        let mut go = g.upload(&rand(len, 4, 9.0));
        g.gelu_fwd(&mut go, &gg, len);
        check(&format!("gelu_fwd len={len}"), &g.read(&go, len), &o, TOL);
        let mut dx = cpu.zeros(len);
        cpu.gelu_bwd(&mut dx, &dout, &gate, len);
        let mut gdx = g.upload(&rand(len, 5, 9.0));
        g.gelu_bwd(&mut gdx, &gd, &gg, len);
        check(&format!("gelu_bwd len={len}"), &g.read(&gdx, len), &dx, TOL);
    }
}

#[test]
fn softmax_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    for &v in &WIDTHS {
        for &t in &[1.0f32, 0.7, 1.9] {
            let n = 4;
            let x = rand(n * v, 21 + v as u64, 8.0);
            let dy = rand(n * v, 22 + v as u64, 1.0);
            let mut y = cpu.zeros(n * v);
            cpu.softmax_fwd(&mut y, &x, n, v, t);
            let gx = g.upload(&x);
            let mut gy = g.zeros(n * v);
            g.softmax_fwd(&mut gy, &gx, n, v, t);
            check(&format!("softmax_fwd v={v} t={t}"), &g.read(&gy, n * v), &y, TOL);
            if t == 1.0 {
                let mut dx = cpu.zeros(n * v);
                cpu.softmax_bwd(&mut dx, &dy, &y, n, v);
                let (gdy, gyy) = (g.upload(&dy), g.upload(&y));
                let mut gdx = g.upload(&rand(n * v, 6, 9.0));
                g.softmax_bwd(&mut gdx, &gdy, &gyy, n, v);
                check(&format!("softmax_bwd v={v}"), &g.read(&gdx, n * v), &dx, TOL);
            }
        }
    }
}

/// Targets of n rows of width v: some IGNORE_INDEX, the first and last column included.
fn targets(n: usize, v: usize) -> Vec<u32> {
    (0..n)
        .map(|i| match i % 5 {
            1 => IGNORE_INDEX,
            2 => 0,
            3 => v as u32 - 1,
            _ => ((i * 7919 + 13) % v) as u32,
        })
        .collect()
}

#[test]
fn xent_and_logprobs_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    for &v in &[7usize, 33, 300, 4099, 32003] {
        let n = if v > 10_000 { 6 } else { 11 };
        let mut logits = rand(n * v, 31 + v as u64, 6.0);
        let tg = targets(n, v);
        // ties for the argmax: row 0's maximum at its target and again later (first wins),
        // row 4's maximum first at another column, then at its target (not greedy)
        let big = 50.0;
        logits[tg[0] as usize] = big;
        logits[v - 1] = big;
        if n > 4 && tg[4] as usize > 0 {
            logits[4 * v] = big;
            logits[4 * v + tg[4] as usize] = big;
        }
        let coef: Vec<f32> = (0..n).map(|i| 0.1 + 0.05 * i as f32).collect();
        let (gt, gc) = (g.upload_ids(&tg), g.upload(&coef));

        let (mut lp, mut gr) = (cpu.zeros(n), cpu.zeros(n));
        cpu.token_logprobs(&mut lp, &mut gr, &logits, &tg, n, v);
        let glog = g.upload(&logits);
        let (mut glp, mut ggr) = (g.upload(&rand(n, 7, 9.0)), g.upload(&rand(n, 8, 9.0)));
        g.token_logprobs(&mut glp, &mut ggr, &glog, &gt, n, v);
        check(&format!("token_logprobs logp v={v}"), &g.read(&glp, n), &lp, TOL);
        let ggot = g.read(&ggr, n);
        check(&format!("token_logprobs greedy v={v}"), &ggot, &gr, 0.0);
        assert_eq!(gr[0], 1.0, "row 0's target is its first argmax");
        if n > 4 && tg[4] as usize > 0 {
            assert_eq!(ggot[4], 0.0, "row 4's target ties the max after an earlier column: not greedy");
        }

        let mut dl = cpu.zeros(n * v);
        cpu.token_logprobs_bwd(&mut dl, &logits, &tg, &coef, n, v);
        let mut gdl = g.upload(&rand(n * v, 9, 9.0));
        g.token_logprobs_bwd(&mut gdl, &glog, &gt, &gc, n, v);
        check(&format!("token_logprobs_bwd v={v}"), &g.read(&gdl, n * v), &dl, TOL);

        let (mut lg, mut loss) = (logits.clone(), cpu.zeros(n));
        cpu.xent_fwd_bwd(&mut lg, &mut loss, &tg, &coef, n, v);
        let mut glg = g.upload(&logits);
        let mut gloss = g.upload(&rand(n, 10, 9.0));
        g.xent_fwd_bwd(&mut glg, &mut gloss, &gt, &gc, n, v);
        check(&format!("xent losses v={v}"), &g.read(&gloss, n), &loss, TOL);
        check(&format!("xent dlogits v={v}"), &g.read(&glg, n * v), &lg, TOL);
    }
}

#[test]
fn many_rows_fold_the_grid() {
    // more rows than one grid dimension holds (65535): exercises the folded row index
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    let (n, v) = (65_537usize, 3usize);
    let logits = rand(n * v, 41, 4.0);
    let tg = targets(n, v);
    let coef = vec![1.0f32; n];
    let (mut lg, mut loss) = (logits.clone(), cpu.zeros(n));
    cpu.xent_fwd_bwd(&mut lg, &mut loss, &tg, &coef, n, v);
    let (mut glg, mut gloss) = (g.upload(&logits), g.zeros(n));
    g.xent_fwd_bwd(&mut glg, &mut gloss, &g.upload_ids(&tg), &g.upload(&coef), n, v);
    check("xent losses n=65537", &g.read(&gloss, n), &loss, TOL);
    check("xent dlogits n=65537", &g.read(&glg, n * v), &lg, TOL);
}

#[test]
fn adamw_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::default();
    let len = 70_001;
    let p0 = rand(len, 51, 1.0);
    let grad = rand(len, 52, 3.0);
    let m0 = rand(len, 53, 0.1);
    let v0: Vec<f32> = rand(len, 54, 0.1).iter().map(|x| x * x).collect();
    for (step, gs) in [(1u64, 1.0f32), (7, 0.37)] {
        let h = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step, grad_scale: gs };
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        cpu.adamw(&mut p, &grad, &mut m, &mut v, &h, len);
        let (mut gp, gg, mut gm, mut gv) = (g.upload(&p0), g.upload(&grad), g.upload(&m0), g.upload(&v0));
        g.adamw(&mut gp, &gg, &mut gm, &mut gv, &h, len);
        check(&format!("adamw p step={step} grad_scale={gs}"), &g.read(&gp, len), &p, 1e-6);
        check(&format!("adamw m step={step} grad_scale={gs}"), &g.read(&gm, len), &m, 1e-6);
        check(&format!("adamw v step={step} grad_scale={gs}"), &g.read(&gv, len), &v, 1e-6);
    }
}
