//! Attention (causal, non-causal, GQA/MQA, ALiBi, per-sequence kv_len and q_pos0 as in a
//! KV-cache decode step, sliding windows, logit soft-capping): f32 forward vs an f64 reference,
//! dq/dk/dv vs central differences; ALiBi slopes vs HF's `build_alibi_tensor` formula; kv_write.

mod common;

use common::*;
use okapi_kernels::attention::{alibi_slopes, attention_bwd, attention_fwd, kv_write, AttnGrads, AttnInputs, AttnShape};
use okapi_kernels::KvShape;

struct Case {
    name: &'static str,
    sh: AttnShape,
    q_pos0: Vec<u32>,
    kv_len: Vec<u32>,
    alibi: Option<Vec<f32>>,
}

/// `case(name, batch, (tq, tk), (n_heads, n_kv_heads, head_dim), causal, (q_pos0, kv_len), alibi)`
fn case(name: &'static str, batch: usize, (tq, tk): (usize, usize), (n_heads, n_kv_heads, head_dim): (usize, usize, usize), causal: bool, (q_pos0, kv_len): (&[u32], &[u32]), alibi: bool) -> Case {
    assert_eq!(q_pos0.len(), batch);
    assert_eq!(kv_len.len(), batch);
    let sh = AttnShape { batch, tq, tk, n_heads, n_kv_heads, head_dim, scale: 1.0 / (head_dim as f32).sqrt(), causal, window: 0, softcap: 0.0 };
    Case { name, sh, q_pos0: q_pos0.to_vec(), kv_len: kv_len.to_vec(), alibi: alibi.then(|| alibi_slopes(n_heads)) }
}

impl Case {
    /// The same case under a sliding window of `w` keys.
    fn window(mut self, w: usize) -> Case {
        self.sh.window = w;
        self
    }
    /// The same case with its scores soft-capped at `c`.
    fn softcap(mut self, c: f32) -> Case {
        self.sh.softcap = c;
        self
    }
}

/// scale·(q·k), soft-capped as transformers' Gemma 2 does (`s / c`, tanh, `· c`) when c > 0.
fn capped(sh: &AttnShape, qk: f64) -> f64 {
    let (s, c) = (sh.scale as f64 * qk, sh.softcap as f64);
    if c > 0.0 {
        c * (s / c).tanh()
    } else {
        s
    }
}

/// ∂capped/∂(scale·q·k): 1 − tanh²(s/c), or 1 without a cap.
fn capped_grad(sh: &AttnShape, qk: f64) -> f64 {
    let (s, c) = (sh.scale as f64 * qk, sh.softcap as f64);
    if c > 0.0 {
        1.0 - (s / c).tanh().powi(2)
    } else {
        1.0
    }
}

/// Whether the query at position p of sequence b sees key j, from the definition: j < kv_len,
/// j ≤ p when causal, and within the window (transformers' sliding mask `kv_idx > q_idx − W`).
fn sees(c: &Case, b: usize, p: usize, j: usize) -> bool {
    let w = c.sh.window;
    j < c.kv_len[b] as usize && (!c.sh.causal || j <= p) && (w == 0 || j + w > p)
}

fn cases() -> Vec<Case> {
    vec![
        case("causal", 2, (5, 5), (3, 3, 6), true, (&[0, 0], &[5, 5]), false),
        // cross-attention shape; the third sequence has no key at all (zero output and grads)
        case("non-causal", 3, (5, 7), (3, 3, 6), false, (&[0, 0, 0], &[7, 4, 0]), false),
        // GQA 6 heads / 2 kv heads, second sequence right-padded to 5 keys
        case("gqa causal", 2, (7, 7), (6, 2, 6), true, (&[0, 0], &[7, 5]), false),
        // MQA, head_dim 11 (one 8-lane chunk of the dot product plus a remainder)
        case("mqa causal", 2, (4, 4), (3, 1, 11), true, (&[0, 0], &[4, 4]), false),
        case("alibi causal", 2, (6, 6), (6, 6, 6), true, (&[0, 0], &[6, 6]), true),
        case("alibi gqa non-causal", 1, (5, 7), (6, 2, 6), false, (&[0], &[7]), true),
        // KV-cache steps: queries at positions q_pos0 + i, caches longer than the keys written
        case("kv-cache prefill chunk", 3, (2, 9), (6, 2, 6), true, (&[3, 6, 0], &[5, 8, 2]), false),
        case("kv-cache decode", 2, (1, 9), (6, 2, 6), true, (&[8, 2], &[9, 3]), false),
        case("kv-cache decode alibi", 2, (1, 9), (12, 4, 6), true, (&[6, 3], &[7, 4]), true),
    ]
}

/// f64 reference, written from the definition: row i of sequence b is at position
/// p = q_pos0[b] + i and attends to the keys j it [`sees`] with score
/// [`capped`]\(q·k_j) + slope·(j − p) (ALiBi's relative form). Returns (out, lse) where lse is that of
/// the kernel's documented score scale·q·k_j + slope·j, i.e. the relative lse + slope·p.
fn attention_ref(q: &[f64], k: &[f64], v: &[f64], c: &Case) -> (Vec<f64>, Vec<f64>) {
    let sh = &c.sh;
    let (hq, hkv, d) = (sh.n_heads, sh.n_kv_heads, sh.head_dim);
    let mut out = vec![0.0; sh.batch * sh.tq * hq * d];
    let mut lse = vec![f64::NEG_INFINITY; sh.batch * sh.tq * hq];
    for b in 0..sh.batch {
        for i in 0..sh.tq {
            let p = c.q_pos0[b] as usize + i;
            for h in 0..hq {
                let g = h * hkv / hq;
                let slope = c.alibi.as_ref().map_or(0.0, |a| a[h] as f64);
                let qrow = &q[((b * sh.tq + i) * hq + h) * d..][..d];
                let keys: Vec<usize> = (0..sh.tk).filter(|&j| sees(c, b, p, j)).collect();
                if keys.is_empty() {
                    continue;
                }
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|&j| {
                        let krow = &k[((b * sh.tk + j) * hkv + g) * d..][..d];
                        capped(sh, dot(qrow, krow)) + slope * (j as f64 - p as f64)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                lse[(b * sh.tq + i) * hq + h] = max + z.ln() + slope * p as f64;
                let o = &mut out[((b * sh.tq + i) * hq + h) * d..][..d];
                for (&j, s) in keys.iter().zip(&scores) {
                    let pj = (s - max).exp() / z;
                    let vrow = &v[((b * sh.tk + j) * hkv + g) * d..][..d];
                    for x in 0..d {
                        o[x] += pj * vrow[x];
                    }
                }
            }
        }
    }
    (out, lse)
}

struct Data {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn data(c: &Case, seed: u64) -> Data {
    let sh = &c.sh;
    let mut rng = Rng::new(seed);
    let nq = sh.batch * sh.tq * sh.n_heads * sh.head_dim;
    let nk = sh.batch * sh.tk * sh.n_kv_heads * sh.head_dim;
    Data { q: rng.normal_vec(nq, 1.0), k: rng.normal_vec(nk, 1.0), v: rng.normal_vec(nk, 1.0), dout: rng.normal_vec(nq, 1.0) }
}

fn forward(c: &Case, x: &Data) -> (Vec<f32>, Vec<f32>) {
    let sh = &c.sh;
    // `=` outputs: start from NaN
    let mut out = nan_vec(x.q.len());
    let mut lse = nan_vec(sh.batch * sh.tq * sh.n_heads);
    attention_fwd(&mut out, &mut lse, &AttnInputs { q: &x.q, k: &x.k, v: &x.v, q_pos0: &c.q_pos0, kv_len: &c.kv_len, alibi: c.alibi.as_deref() }, sh);
    (out, lse)
}

/// `c`'s name with its window and soft-cap, for messages.
fn label(c: &Case) -> String {
    let mut l = c.name.to_string();
    if c.sh.window != 0 {
        l += &format!(" (window {})", c.sh.window);
    }
    if c.sh.softcap != 0.0 {
        l += &format!(" (softcap {})", c.sh.softcap);
    }
    l
}

/// The forward vs the f64 reference (rows that see no key: lse exactly −inf); returns out, lse.
fn check_fwd(c: &Case, x: &Data) -> (Vec<f32>, Vec<f32>) {
    let (out, lse) = forward(c, x);
    let (want_out, want_lse) = attention_ref(&to_f64(&x.q), &to_f64(&x.k), &to_f64(&x.v), c);
    assert_close(&format!("{}: out", label(c)), &out, &want_out, 1e-5);
    let mut finite = (Vec::new(), Vec::new());
    for (i, (&g, &w)) in lse.iter().zip(&want_lse).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(g, f32::NEG_INFINITY, "{}: lse[{i}] of a row without keys", label(c));
        } else {
            finite.0.push(g);
            finite.1.push(w);
        }
    }
    assert_close(&format!("{}: lse", label(c)), &finite.0, &finite.1, 1e-6);
    (out, lse)
}

/// The backward's (dq, dk, dv), from NaN-filled buffers (`=` outputs must be fully overwritten).
fn backward(c: &Case, x: &Data, out: &[f32], lse: &[f32]) -> [Vec<f32>; 3] {
    let (mut dq, mut dk, mut dv) = (nan_vec(x.q.len()), nan_vec(x.k.len()), nan_vec(x.v.len()));
    attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &x.dout, out, lse, &AttnInputs { q: &x.q, k: &x.k, v: &x.v, q_pos0: &c.q_pos0, kv_len: &c.kv_len, alibi: c.alibi.as_deref() }, &c.sh);
    [dq, dk, dv]
}

/// A gradient vs its reference. One that is zero in exact arithmetic (window 1: each softmax
/// is over a single key, constant 1, whatever q and k) must be zero to rounding.
fn assert_grad(name: &str, got: &[f32], want: &[f64]) {
    if want.iter().all(|&w| w == 0.0) {
        let worst = got.iter().fold(0f32, |m, g| m.max(g.abs()));
        eprintln!("{name}: zero gradient, largest element {worst:e}");
        assert!(worst <= 1e-6, "{name}: an element of {worst:e} where the gradient is zero");
    } else {
        assert_close(name, got, want, 1e-5);
    }
}

/// The backward vs central differences of the f64 reference; keys no query sees get exactly
/// zero (not merely small) gradients.
fn check_grads_numeric(c: &Case, x: &Data) {
    let (out, lse) = forward(c, x);
    let [dq, dk, dv] = backward(c, x, &out, &lse);
    let (q, k, v, r) = (to_f64(&x.q), to_f64(&x.k), to_f64(&x.v), to_f64(&x.dout));
    let dq_ref = numeric_grad_proj(&q, &r, |qq| attention_ref(qq, &k, &v, c).0);
    let dk_ref = numeric_grad_proj(&k, &r, |kk| attention_ref(&q, kk, &v, c).0);
    let dv_ref = numeric_grad_proj(&v, &r, |vv| attention_ref(&q, &k, vv, c).0);
    assert_grad(&format!("{}: dq", label(c)), &dq, &dq_ref);
    assert_grad(&format!("{}: dk", label(c)), &dk, &dk_ref);
    assert_grad(&format!("{}: dv", label(c)), &dv, &dv_ref);
    let (sh, width) = (&c.sh, c.sh.n_kv_heads * c.sh.head_dim);
    for (b, j) in (0..sh.batch).flat_map(|b| (0..sh.tk).map(move |j| (b, j))) {
        if (0..sh.tq).any(|i| sees(c, b, c.q_pos0[b] as usize + i, j)) {
            continue;
        }
        let row = (b * sh.tk + j) * width..(b * sh.tk + j + 1) * width;
        assert!(dk[row.clone()].iter().chain(&dv[row]).all(|&g| g == 0.0), "{}: gradient of key {j} of sequence {b}, which no query sees", label(c));
    }
}

#[test]
fn attention_fwd_matches_f64() {
    for (s, c) in cases().iter().enumerate() {
        check_fwd(c, &data(c, 100 + s as u64));
    }
}

#[test]
fn attention_bwd_grad_check() {
    for (s, c) in cases().iter().enumerate() {
        check_grads_numeric(c, &data(c, 200 + s as u64));
    }
}

#[test]
fn attention_bwd_deterministic() {
    let c = case("repeat", 2, (9, 9), (6, 2, 8), true, (&[0, 0], &[9, 7]), true);
    let x = data(&c, 300);
    let (out, lse) = forward(&c, &x);
    let run = || {
        let (mut dq, mut dk, mut dv) = (nan_vec(x.q.len()), nan_vec(x.k.len()), nan_vec(x.v.len()));
        attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &x.dout, &out, &lse, &AttnInputs { q: &x.q, k: &x.k, v: &x.v, q_pos0: &c.q_pos0, kv_len: &c.kv_len, alibi: c.alibi.as_deref() }, &c.sh);
        (dq, dk, dv)
    };
    let (a, b) = (run(), run());
    assert_bits_eq("attention dq rerun", &b.0, &a.0);
    assert_bits_eq("attention dk rerun", &b.1, &a.1);
    assert_bits_eq("attention dv rerun", &b.2, &a.2);
}

#[test]
#[should_panic(expected = "attention_bwd: `dk` holds")]
fn attention_bwd_rejects_short_gradient_buffers() {
    let c = case("short", 1, (3, 3), (2, 1, 4), true, (&[0], &[3]), false);
    let x = data(&c, 301);
    let (out, lse) = forward(&c, &x);
    let (mut dq, mut dk, mut dv) = (vec![0f32; x.q.len()], vec![0f32; x.k.len() - 1], vec![0f32; x.v.len()]);
    attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &x.dout, &out, &lse, &AttnInputs { q: &x.q, k: &x.k, v: &x.v, q_pos0: &c.q_pos0, kv_len: &c.kv_len, alibi: None }, &c.sh);
}

// ---------------------------------------------------------------- ALiBi slopes

/// HF transformers `build_alibi_tensor` slopes, in f64.
fn hf_alibi_slopes(n: usize) -> Vec<f64> {
    let cp2 = 2f64.powf((n as f64).log2().floor());
    let base = 2f64.powf(-(2f64.powf(-(cp2.log2() - 3.0))));
    let mut slopes: Vec<f64> = (1..=cp2 as i32).map(|p| base.powi(p)).collect();
    if cp2 as usize != n {
        let extra_base = 2f64.powf(-(2f64.powf(-((2.0 * cp2).log2() - 3.0))));
        let remaining = (cp2 as usize).min(n - cp2 as usize);
        slopes.extend((0..remaining as i32).map(|i| extra_base.powi(2 * i + 1)));
    }
    slopes
}

#[test]
fn alibi_slopes_match_hf() {
    for n in (1..=12).chain([16]) {
        let got = alibi_slopes(n);
        let want = hf_alibi_slopes(n);
        assert_eq!(got.len(), n, "alibi_slopes({n}) length");
        assert_eq!(want.len(), n, "reference length for {n} heads");
        // f32 base raised to powers up to 16: a few f32 ulps
        assert_elementwise(&format!("alibi_slopes({n})"), &got, &want, 2e-6);
    }
}

#[test]
fn alibi_slopes_known_values() {
    let pow2 = |e: f64| 2f64.powf(e);
    let eight: Vec<f64> = (1..=8).map(|p| pow2(-(p as f64))).collect();
    assert_eq!(alibi_slopes(8), eight.iter().map(|&x| x as f32).collect::<Vec<_>>(), "8 heads: 2^-1 … 2^-8");
    assert_eq!(alibi_slopes(1), vec![pow2(-8.0) as f32]);
    assert_eq!(alibi_slopes(4), vec![pow2(-2.0) as f32, pow2(-4.0) as f32, pow2(-6.0) as f32, pow2(-8.0) as f32]);
    // 12 heads: the 8-head series, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    let mut twelve = eight.clone();
    twelve.extend([-0.5, -1.5, -2.5, -3.5].map(pow2));
    assert_elementwise("alibi_slopes(12)", &alibi_slopes(12), &twelve, 2e-7);
}

// ---------------------------------------------------------------- kv_write

#[test]
fn kv_write_places_rows_and_drops_overflow() {
    let (batch, t_new, t_cap, width) = (3, 3, 6, 5);
    let mut rng = Rng::new(400);
    let new = rng.normal_vec(batch * t_new * width, 1.0);
    let cache0 = rng.normal_vec(batch * t_cap * width, 1.0);
    let pos = [1u32, 4, 6]; // sequence 1 keeps 2 of its 3 rows, sequence 2 none
    let mut cache = cache0.clone();
    kv_write(&mut cache, &new, &pos, &KvShape { batch, t_new, t_cap, width });
    let mut want = cache0.clone();
    for b in 0..batch {
        for i in 0..t_new {
            let t = pos[b] as usize + i;
            if t < t_cap {
                want[(b * t_cap + t) * width..][..width].copy_from_slice(&new[(b * t_new + i) * width..][..width]);
            }
        }
    }
    assert_bits_eq("kv_write", &cache, &want);
    // non-vacuous: rows were written, others kept
    assert_ne!(cache, cache0);
    assert_eq!(cache[(t_cap + 5) * width..][..width], new[(t_new + 1) * width..][..width]);
    assert_eq!(cache[(2 * t_cap) * width..], cache0[(2 * t_cap) * width..]);
}

// ---------------------------------------------------------------- multi-tile shapes

/// Analytic f64 backward from the definition (the grad check above validates the kernel on
/// small shapes; at these sizes central differences would be too slow).
fn attention_bwd_ref(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], c: &Case) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let sh = &c.sh;
    let (hq, hkv, d) = (sh.n_heads, sh.n_kv_heads, sh.head_dim);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..sh.batch {
        for i in 0..sh.tq {
            let pos = c.q_pos0[b] as usize + i;
            for h in 0..hq {
                let g = h * hkv / hq;
                let slope = c.alibi.as_ref().map_or(0.0, |a| a[h] as f64);
                let qo = ((b * sh.tq + i) * hq + h) * d;
                let keys: Vec<usize> = (0..sh.tk).filter(|&j| sees(c, b, pos, j)).collect();
                if keys.is_empty() {
                    continue;
                }
                let ko = |j: usize| ((b * sh.tk + j) * hkv + g) * d;
                let qk: Vec<f64> = keys.iter().map(|&j| dot(&q[qo..qo + d], &k[ko(j)..ko(j) + d])).collect();
                let s: Vec<f64> = keys.iter().zip(&qk).map(|(&j, &x)| capped(sh, x) + slope * j as f64).collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                let p: Vec<f64> = s.iter().map(|x| (x - max).exp() / z).collect();
                let dp: Vec<f64> = keys.iter().map(|&j| dot(&dout[qo..qo + d], &v[ko(j)..ko(j) + d])).collect();
                let di: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for (n, &j) in keys.iter().enumerate() {
                    let ds = p[n] * (dp[n] - di) * capped_grad(sh, qk[n]) * sh.scale as f64;
                    for x in 0..d {
                        dq[qo + x] += ds * k[ko(j) + x];
                        dk[ko(j) + x] += ds * q[qo + x];
                        dv[ko(j) + x] += p[n] * dout[qo + x];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// The forward, and the backward vs the analytic f64 backward.
fn check_analytic(c: &Case, x: &Data) {
    let (out, lse) = check_fwd(c, x);
    let [dq, dk, dv] = backward(c, x, &out, &lse);
    let (dq_ref, dk_ref, dv_ref) = attention_bwd_ref(&to_f64(&x.q), &to_f64(&x.k), &to_f64(&x.v), &to_f64(&x.dout), c);
    assert_close(&format!("{}: dq", label(c)), &dq, &dq_ref, 1e-5);
    assert_close(&format!("{}: dk", label(c)), &dk, &dk_ref, 1e-5);
    assert_close(&format!("{}: dv", label(c)), &dv, &dv_ref, 1e-5);
}

/// Shapes larger than the kernel's query tile (64 rows) and not multiples of it: causal tiles
/// whose key range grows tile by tile, GQA, ALiBi, padding and a KV-cache chunk at an offset.
#[test]
fn attention_multi_tile_matches_f64() {
    let cases = [
        case("causal gqa alibi 150", 2, (150, 150), (4, 2, 8), true, (&[0, 0], &[150, 97]), true),
        case("non-causal 70x133 padded", 2, (70, 133), (3, 3, 16), false, (&[0, 0], &[133, 40]), false),
        case("cache chunk 65 at offset 70", 1, (65, 160), (4, 1, 8), true, (&[70, 0][..1], &[135][..1]), false),
        case("decode over 200 keys", 3, (1, 200), (4, 2, 8), true, (&[199, 50, 0], &[200, 51, 1]), true),
    ];
    for (s, c) in cases.iter().enumerate() {
        check_analytic(c, &data(c, 400 + s as u64));
    }
}

// ---------------------------------------------------------------- sliding window

/// Per window: training rows over T = 33 with GQA and a padded sequence (its rows past its 20
/// keys see none once the window has passed them), a KV-cache prefill chunk and decode steps at
/// q_pos0 > 0 over caches with kv_len < Tk. ALiBi alternates, so every window runs with and
/// without it. With q_pos0 = 0, windows 33 and 100 cover all of T = 33 (no window in effect).
fn window_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (n, w) in [1, 5, 32, 33, 100].into_iter().enumerate() {
        let alibi = n % 2 == 1;
        v.push(case("window train", 2, (33, 33), (4, 2, 5), true, (&[0, 0], &[33, 20]), alibi).window(w));
        v.push(case("window prefill chunk", 2, (7, 40), (6, 2, 4), true, (&[30, 9], &[37, 16]), !alibi).window(w));
        v.push(case("window decode", 3, (1, 40), (4, 1, 6), true, (&[39, 20, 3], &[40, 21, 4]), alibi).window(w));
    }
    v
}

#[test]
fn window_fwd_matches_f64_and_grads_match_central_differences() {
    for (s, c) in window_cases().iter().enumerate() {
        let x = data(c, 500 + s as u64);
        check_fwd(c, &x);
        check_grads_numeric(c, &x);
    }
}

/// Windows over several query tiles: tiles whose first visible key is past 0, a window of one
/// tile (64), a chunk at an offset, and decoding over a long cache.
#[test]
fn window_multi_tile_matches_f64() {
    let cases = [
        case("150 rows, gqa alibi padded", 2, (150, 150), (4, 2, 8), true, (&[0, 0], &[150, 97]), true).window(40),
        case("150 rows", 1, (150, 150), (2, 1, 8), true, (&[0], &[150]), false).window(64),
        case("cache chunk 65 at offset 70", 1, (65, 160), (4, 1, 8), true, (&[70], &[135]), false).window(5),
        case("decode over 200 keys", 3, (1, 200), (4, 2, 8), true, (&[199, 50, 0], &[200, 51, 1]), true).window(50),
    ];
    for (s, c) in cases.iter().enumerate() {
        check_analytic(c, &data(c, 600 + s as u64));
    }
}

/// A window that holds every key a row could see changes nothing, to the bit.
#[test]
fn window_covering_every_key_is_bit_identical_to_none() {
    let none = case("wide", 2, (33, 40), (4, 2, 8), true, (&[0, 7], &[33, 40]), true);
    let x = data(&none, 700);
    let (out0, lse0) = forward(&none, &x);
    let grads0 = backward(&none, &x, &out0, &lse0);
    for w in [40, 1000] {
        let c = case("wide", 2, (33, 40), (4, 2, 8), true, (&[0, 7], &[33, 40]), true).window(w);
        let (out, lse) = forward(&c, &x);
        assert_bits_eq(&format!("window {w}: out"), &out, &out0);
        assert_bits_eq(&format!("window {w}: lse"), &lse, &lse0);
        for (name, (g, g0)) in ["dq", "dk", "dv"].iter().zip(backward(&c, &x, &out, &lse).iter().zip(&grads0)) {
            assert_bits_eq(&format!("window {w}: {name}"), g, g0);
        }
    }
}

#[test]
#[should_panic(expected = "attention_fwd: a sliding window (4) needs causal attention")]
fn window_without_causal_mask_is_refused() {
    let c = case("non-causal window", 1, (3, 3), (2, 1, 4), false, (&[0], &[3]), false).window(4);
    forward(&c, &data(&c, 701));
}

// ---------------------------------------------------------------- logit soft-capping

/// Every small case soft-capped, at caps that bend these N(0, 1) scores hard (0.5) or mildly
/// (2), and the sliding-window cases of one window capped: causal and not, GQA/MQA, ALiBi (the
/// slope added after the cap), padding, KV-cache chunks and decode steps.
fn softcap_cases() -> Vec<Case> {
    let caps = [0.5, 2.0];
    let plain = cases().into_iter().enumerate().map(|(n, c)| c.softcap(caps[n % 2]));
    plain.chain(window_cases().into_iter().filter(|c| c.sh.window == 5).map(|c| c.softcap(0.8))).collect()
}

#[test]
fn softcap_fwd_matches_f64_and_grads_match_central_differences() {
    for (s, c) in softcap_cases().iter().enumerate() {
        let x = data(c, 800 + s as u64);
        check_fwd(c, &x);
        check_grads_numeric(c, &x);
    }
}

/// Capped scores over several query tiles (the backward's factor per tile), with ALiBi,
/// padding, a window, a chunk at an offset and decoding; q scaled ×3 so that many scores
/// saturate against cap 1.
#[test]
fn softcap_multi_tile_matches_f64() {
    let cases = [
        case("150 rows, gqa alibi padded", 2, (150, 150), (4, 2, 8), true, (&[0, 0], &[150, 97]), true).softcap(1.0),
        case("non-causal 70x133 padded", 2, (70, 133), (3, 3, 16), false, (&[0, 0], &[133, 40]), false).softcap(50.0),
        case("cache chunk 65 at offset 70", 1, (65, 160), (4, 1, 8), true, (&[70], &[135]), false).window(40).softcap(1.0),
        case("decode over 200 keys", 3, (1, 200), (4, 2, 8), true, (&[199, 50, 0], &[200, 51, 1]), true).softcap(1.0),
    ];
    for (s, c) in cases.iter().enumerate() {
        let mut x = data(c, 900 + s as u64);
        x.q.iter_mut().for_each(|v| *v *= 3.0);
        check_analytic(c, &x);
    }
}

#[test]
#[should_panic(expected = "attention_fwd: the soft-cap must be positive and finite, got -1")]
fn negative_softcap_is_refused() {
    let c = case("negative cap", 1, (3, 3), (2, 1, 4), true, (&[0], &[3]), false).softcap(-1.0);
    forward(&c, &data(&c, 901));
}

#[test]
#[should_panic(expected = "attention_bwd: the soft-cap must be positive and finite, got NaN")]
fn nan_softcap_is_refused() {
    let c = case("nan cap", 1, (3, 3), (2, 1, 4), true, (&[0], &[3]), false);
    let x = data(&c, 902);
    let (out, lse) = forward(&c, &x);
    backward(&c.softcap(f32::NAN), &x, &out, &lse);
}
