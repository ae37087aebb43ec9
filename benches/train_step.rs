//! CPU training-step benchmark: one step of a randomly initialised LLaMA preset, timed.
//!
//!     cargo bench --bench train_step -- [--preset P] [--batch B] [--seq T] [--steps N] [--no-breakdown]
//!
//! Without `--preset` it runs the two recorded cases (bench-5m B=8 T=128, bench-33m B=4 T=256);
//! with `--preset` it runs that preset at `--batch`/`--seq` (defaults 8 and 128). The PyTorch
//! counterpart is `benches/torch_step.py`; the numbers are recorded in `benches/RESULTS.md`.
//!
//! One step = `zero_grads` + `forward` + fused cross-entropy (weight 1/targets: the mean) (loss and ∂L/∂logits in one pass) +
//! `backward`. No optimizer. 2 warm-up steps, then N timed steps (default 10); the median and
//! the minimum are reported. The thread count is rayon's (`RAYON_NUM_THREADS`, default: all
//! cores).
//!
//! FLOPs of one step (the "model FLOPs" convention: what the maths needs, whatever a kernel
//! recomputes; the same count is used for the PyTorch side, so GFLOP/s compare directly):
//!
//!     tokens      = B·T
//!     P_blocks    = every matrix weight inside the transformer blocks (q,k,v,o,gate,up,down),
//!                   i.e. L·(2·C² + 2·C·Hkv·D + 3·C·F); embedding, LM head and the norm
//!                   weights (no matmul) excluded
//!     matmuls     = 6 · P_blocks · tokens          (2 forward + 4 backward per weight per token)
//!     LM head     = 6 · C · V · tokens
//!     attention   = 12 · L · B · T² · C / 2        (QKᵀ and P·V: 4·T²·C forward per layer and
//!                                                  sequence, backward 2× that; halved for the
//!                                                  causal mask)
//!     total       = matmuls + LM head + attention
//!
//! Elementwise work (norms, RoPE, SwiGLU, softmax, cross-entropy) is not counted. okapi's
//! attention backward recomputes the scores (flash style) — extra work not counted either.
//!
//! The machine ceiling is a 1024³ f32 GEMM through `okapi::kernels::matmul::matmul` (the
//! `gemm` crate, rayon-parallel), in GFLOP/s, best of 20 runs (the median is printed too); each
//! step is also given as a fraction of it.
//!
//! After each case a breakdown (skip with `--no-breakdown`): the median of each phase of the
//! step (zero_grads, forward, loss, backward) timed inside the same steps, then the kernels of
//! one step re-run in isolation at the step's exact shapes (every GEMM of forward and backward,
//! attention forward/backward, cross-entropy); "rest" is the step minus those.

use okapi::kernels::attention::{attention_bwd, attention_fwd, AttnGrads, AttnInputs, AttnShape};
use okapi::kernels::matmul::{matmul, Gemm};
use okapi::kernels::xent::xent_fwd_bwd;
use okapi::model::{preset_config, Arch, Model, Rng};
use okapi::rlhf::{lm_loss_and_grad, shift_labels, LossBufs};
use okapi::runtime::{CpuBackend, IGNORE_INDEX};
use std::time::Instant;

const WARMUP: usize = 2;
const SEED: u64 = 1234;
const TOKEN_SEED: u64 = 42;

struct Args {
    preset: Option<String>,
    batch: usize,
    seq: usize,
    steps: usize,
    breakdown: bool,
}

fn parse_args() -> Args {
    let mut a = Args { preset: None, batch: 8, seq: 128, steps: 10, breakdown: true };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--preset" => a.preset = Some(val("--preset")),
            "--batch" => a.batch = val("--batch").parse().expect("--batch: integer"),
            "--seq" => a.seq = val("--seq").parse().expect("--seq: integer"),
            "--steps" => a.steps = val("--steps").parse().expect("--steps: integer"),
            "--no-breakdown" => a.breakdown = false,
            // cargo bench passes `--bench` to harness = false targets
            "--bench" => {}
            other => panic!("unknown argument `{other}` (expected --preset P --batch B --seq T --steps N --no-breakdown)"),
        }
    }
    a
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn random_vec(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.normal() * std) as f32).collect()
}

/// GFLOP/s of a square f32 GEMM through okapi's kernel: the machine ceiling, as (best, median)
/// of 20 runs after 3 warm-up runs (best: the least disturbed run on a shared machine).
fn gemm_ceiling(size: usize) -> (f64, f64) {
    let mut rng = Rng::new(7);
    let a = random_vec(&mut rng, size * size, 1.0);
    let b = random_vec(&mut rng, size * size, 1.0);
    let mut c = vec![0f32; size * size];
    let g = Gemm::new(size, size, size);
    for _ in 0..3 {
        matmul(&mut c, &a, &b, &g);
    }
    let times: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            matmul(&mut c, &a, &b, &g);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    (g.flops() / min(&times) / 1e9, g.flops() / median(&times) / 1e9)
}

struct Flops {
    p_blocks: usize,
    matmuls: f64,
    head: f64,
    attention: f64,
}

impl Flops {
    fn total(&self) -> f64 {
        self.matmuls + self.head + self.attention
    }
}

fn step_flops(model: &Model<CpuBackend>, b: usize, t: usize) -> Flops {
    let cfg = &model.cfg;
    let (l, c, v) = (cfg.n_layers as f64, cfg.hidden_size as f64, cfg.vocab_size as f64);
    let p_blocks: usize = model
        .blocks
        .iter()
        .flat_map(|blk| [Some(&blk.q), Some(&blk.k), Some(&blk.v), Some(&blk.o), blk.gate.as_ref(), Some(&blk.up), Some(&blk.down)])
        .flatten()
        .map(|lin| lin.d_in * lin.d_out)
        .sum();
    let tokens = (b * t) as f64;
    Flops {
        p_blocks,
        matmuls: 6.0 * p_blocks as f64 * tokens,
        head: 6.0 * c * v * tokens,
        attention: 12.0 * l * b as f64 * (t * t) as f64 * c / 2.0,
    }
}

/// Median time of each phase over the timed steps.
struct Phases {
    step: Vec<f64>,
    zero: Vec<f64>,
    fwd: Vec<f64>,
    loss: Vec<f64>,
    bwd: Vec<f64>,
}

fn run_case(preset: &str, b: usize, t: usize, steps: usize, ceiling: f64, breakdown: bool) {
    let cfg = preset_config(Arch::Llama, preset, None, t.max(2048)).unwrap_or_else(|e| panic!("{e}"));
    let model = Model::init(CpuBackend, cfg, SEED);
    let cfg = &model.cfg;
    let v = cfg.vocab_size;
    let n = b * t;
    let total_params: usize = model.info.iter().map(|p| p.numel()).sum();
    let mut rng = Rng::new(TOKEN_SEED);
    let tokens: Vec<u32> = (0..n).map(|_| (rng.next_u64() % v as u64) as u32).collect();
    let labels: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
    let targets = shift_labels(&labels, b, t);
    let n_targets = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();

    let mut acts = model.new_acts(b, t);
    let mut scratch = model.new_scratch(b, t);
    let mut grads = model.new_grads(|_| true);
    let mut bufs = LossBufs::new(&model.be, n);

    let fl = step_flops(&model, b, t);
    println!();
    println!(
        "== okapi {preset}: B={b} T={t} ({n} tokens/step) | C={} L={} H={} F={} V={} untied | {:.2}M params ({:.2}M in block matrices) | {} threads",
        cfg.hidden_size,
        cfg.n_layers,
        cfg.n_heads,
        cfg.intermediate_size,
        v,
        total_params as f64 / 1e6,
        fl.p_blocks as f64 / 1e6,
        rayon::current_num_threads()
    );
    println!(
        "   FLOP/step = 6·P_blocks·tokens {:.3} G + LM head 6·C·V·tokens {:.3} G + attention 12·L·B·T²·C/2 {:.3} G = {:.3} GFLOP",
        fl.matmuls / 1e9,
        fl.head / 1e9,
        fl.attention / 1e9,
        fl.total() / 1e9
    );

    let mut ph = Phases { step: vec![], zero: vec![], fwd: vec![], loss: vec![], bwd: vec![] };
    let mut first_loss = 0.0;
    for i in 0..WARMUP + steps {
        let t0 = Instant::now();
        model.zero_grads(&mut grads);
        let t1 = Instant::now();
        model.forward(&mut acts, &tokens, b, t).unwrap();
        let t2 = Instant::now();
        // weight 1/targets: the token-level mean, as transformers' loss
        let (loss_sum, count) = lm_loss_and_grad(&model, &mut acts, &mut bufs, &targets, 1.0 / n_targets as f32);
        let t3 = Instant::now();
        model.backward(&mut acts, &mut scratch, &mut grads);
        let t4 = Instant::now();
        if i == 0 {
            assert_eq!(count, n_targets);
            first_loss = loss_sum / count as f64;
        }
        if i >= WARMUP {
            ph.zero.push((t1 - t0).as_secs_f64());
            ph.fwd.push((t2 - t1).as_secs_f64());
            ph.loss.push((t3 - t2).as_secs_f64());
            ph.bwd.push((t4 - t3).as_secs_f64());
            ph.step.push((t4 - t0).as_secs_f64());
        }
    }
    let (med, mn) = (median(&ph.step), min(&ph.step));
    let gflops = fl.total() / med / 1e9;
    println!("   loss at init {first_loss:.4} (ln V = {:.4})", (v as f64).ln());
    println!(
        "   step: median {:.1} ms, min {:.1} ms ({steps} steps after {WARMUP} warm-up) | {:.0} tokens/s | {:.1} GFLOP/s = {:.1}% of the {:.1} GFLOP/s gemm ceiling",
        med * 1e3,
        mn * 1e3,
        n as f64 / med,
        gflops,
        100.0 * gflops / ceiling,
        ceiling
    );
    let pct = |x: f64| 100.0 * x / med;
    let (z, f, l, bw) = (median(&ph.zero), median(&ph.fwd), median(&ph.loss), median(&ph.bwd));
    println!(
        "   phases (median ms): zero_grads {:.2} ({:.1}%) | forward {:.1} ({:.1}%) | loss {:.1} ({:.1}%) | backward {:.1} ({:.1}%)",
        z * 1e3,
        pct(z),
        f * 1e3,
        pct(f),
        l * 1e3,
        pct(l),
        bw * 1e3,
        pct(bw)
    );
    println!("RESULT okapi preset={preset} B={b} T={t} threads={} median_ms={:.2} min_ms={:.2} tokens_per_s={:.0} gflop_per_step={:.4} gflops={:.2} ceiling_gflops={:.2} frac_ceiling={:.4} fwd_ms={:.2} loss_ms={:.2} bwd_ms={:.2} zero_ms={:.2}",
        rayon::current_num_threads(), med * 1e3, mn * 1e3, n as f64 / med, fl.total() / 1e9, gflops, ceiling, gflops / ceiling, f * 1e3, l * 1e3, bw * 1e3, z * 1e3);
    if breakdown {
        kernel_breakdown(&model, b, t, steps, med);
    }
}

/// Every kernel of one step that does FLOP-counted work, re-run in isolation at the step's
/// shapes on random data: all GEMMs (forward; backward dx and dW), attention forward/backward
/// per layer, the fused cross-entropy. Medians over `reps` runs.
fn kernel_breakdown(model: &Model<CpuBackend>, b: usize, t: usize, reps: usize, step: f64) {
    let cfg = &model.cfg;
    let n = b * t;
    let (c, v, hq, hkv, d) = (cfg.hidden_size, cfg.vocab_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let mut rng = Rng::new(99);
    // (name, d_in, d_out) of every linear of the step, in the forward's order
    let mut linears: Vec<(&str, usize, usize)> = vec![];
    for blk in &model.blocks {
        linears.push(("q", blk.q.d_in, blk.q.d_out));
        linears.push(("k", blk.k.d_in, blk.k.d_out));
        linears.push(("v", blk.v.d_in, blk.v.d_out));
        linears.push(("o", blk.o.d_in, blk.o.d_out));
        if let Some(g) = &blk.gate {
            linears.push(("gate", g.d_in, g.d_out));
        }
        linears.push(("up", blk.up.d_in, blk.up.d_out));
        linears.push(("down", blk.down.d_in, blk.down.d_out));
    }
    linears.push(("lm_head", c, v));
    let maxd = linears.iter().map(|l| l.1.max(l.2)).max().unwrap();
    let x = random_vec(&mut rng, n * maxd, 1.0);
    let dy = random_vec(&mut rng, n * maxd, 1.0);
    let maxw = linears.iter().map(|l| l.1 * l.2).max().unwrap();
    let w = random_vec(&mut rng, maxw, 0.02);
    let mut out = vec![0f32; n * maxd];
    let mut gw = vec![0f32; maxw];

    let time = |f: &mut dyn FnMut()| -> f64 {
        f();
        let ts: Vec<f64> = (0..reps)
            .map(|_| {
                let t0 = Instant::now();
                f();
                t0.elapsed().as_secs_f64()
            })
            .collect();
        median(&ts)
    };
    let (mut g_fwd, mut g_dx, mut g_dw) = (0.0, 0.0, 0.0);
    let (mut head_fwd, mut head_dx, mut head_dw) = (0.0, 0.0, 0.0);
    // per-shape timing (layers repeat the same shapes: time each distinct one once)
    type Timings = (f64, f64, f64);
    let mut seen: Vec<((usize, usize), Timings)> = vec![];
    for &(name, din, dout) in &linears {
        let tm = match seen.iter().find(|s| s.0 == (din, dout)) {
            Some(s) => s.1,
            None => {
                let f = time(&mut || matmul(&mut out, &x, &w, &Gemm::new(n, dout, din).trans_b()));
                let dx = time(&mut || matmul(&mut out, &dy, &w, &Gemm::new(n, din, dout)));
                let dw = time(&mut || matmul(&mut gw, &dy, &x, &Gemm::new(dout, din, n).trans_a().accumulate()));
                seen.push(((din, dout), (f, dx, dw)));
                (f, dx, dw)
            }
        };
        if name == "lm_head" {
            (head_fwd, head_dx, head_dw) = tm;
        } else {
            g_fwd += tm.0;
            g_dx += tm.1;
            g_dw += tm.2;
        }
    }
    // attention, per layer
    let sh = AttnShape { batch: b, tq: t, tk: t, n_heads: hq, n_kv_heads: hkv, head_dim: d, scale: 1.0 / (d as f32).sqrt(), causal: true, window: 0, softcap: 0.0 };
    let q = random_vec(&mut rng, n * hq * d, 1.0);
    let k = random_vec(&mut rng, n * hkv * d, 1.0);
    let vv = random_vec(&mut rng, n * hkv * d, 1.0);
    let dout = random_vec(&mut rng, n * hq * d, 1.0);
    let (q_pos0, kv_len) = (vec![0u32; b], vec![t as u32; b]);
    let mut att = vec![0f32; n * hq * d];
    let mut lse = vec![0f32; n * hq];
    let x = AttnInputs { q: &q[..], k: &k[..], v: &vv[..], q_pos0: &q_pos0[..], kv_len: &kv_len[..], alibi: None };
    let a_fwd = time(&mut || attention_fwd(&mut att, &mut lse, &x, &sh));
    let (mut dq, mut dk, mut dv) = (vec![0f32; n * hq * d], vec![0f32; n * hkv * d], vec![0f32; n * hkv * d]);
    let a_bwd = time(&mut || attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &dout, &att, &lse, &x, &sh));
    // fused cross-entropy over (N, V)
    let logits0 = random_vec(&mut rng, n * v, 1.0);
    let mut logits = logits0.clone();
    let mut losses = vec![0f32; n];
    let targets: Vec<u32> = (0..n).map(|i| (i * 7919 % v) as u32).collect();
    let coef = vec![1.0 / n as f32; n];
    let xent = time(&mut || {
        logits.copy_from_slice(&logits0);
        xent_fwd_bwd(&mut logits, &mut losses, &targets, &coef, v)
    });
    let copy = time(&mut || logits.copy_from_slice(&logits0));
    let xent = (xent - copy).max(0.0);

    let l = cfg.n_layers as f64;
    let gf = |flop: f64, s: f64| flop / s / 1e9;
    let p_blocks: f64 = linears.iter().filter(|x| x.0 != "lm_head").map(|x| (x.1 * x.2) as f64).sum();
    let nf = n as f64;
    let att_fwd_flop = 2.0 * b as f64 * (t * t) as f64 * c as f64; // causal, per layer
    let rows: Vec<(&str, f64, Option<f64>)> = vec![
        ("block GEMMs forward", g_fwd, Some(2.0 * p_blocks * nf)),
        ("block GEMMs backward dx", g_dx, Some(2.0 * p_blocks * nf)),
        ("block GEMMs backward dW", g_dw, Some(2.0 * p_blocks * nf)),
        ("LM head forward", head_fwd, Some(2.0 * (c * v) as f64 * nf)),
        ("LM head backward dx", head_dx, Some(2.0 * (c * v) as f64 * nf)),
        ("LM head backward dW", head_dw, Some(2.0 * (c * v) as f64 * nf)),
        ("attention forward (×L)", a_fwd * l, Some(att_fwd_flop * l)),
        ("attention backward (×L)", a_bwd * l, Some(2.0 * att_fwd_flop * l)),
        ("cross-entropy fwd+bwd", xent, None),
    ];
    let sum: f64 = rows.iter().map(|r| r.1).sum();
    println!("   kernels of one step, re-run in isolation at the step's shapes (median of {reps}):");
    for (name, s, flop) in &rows {
        let rate = flop.map_or(String::new(), |f| format!("  {:7.1} GFLOP/s", gf(f, *s)));
        println!("     {:<26} {:8.2} ms  {:5.1}% of step{rate}", name, s * 1e3, 100.0 * s / step);
    }
    println!(
        "     {:<26} {:8.2} ms  {:5.1}% of step  (norms, RoPE, SwiGLU, residual adds, embedding, zero_grads, host copies)",
        "rest (step − above)",
        (step - sum) * 1e3,
        100.0 * (step - sum) / step
    );
}

fn main() {
    // inside a pool worker, as okapi-train runs (see okapi::runtime::run_in_pool)
    okapi::runtime::run_in_pool(0, bench_main);
}

fn bench_main() {
    let args = parse_args();
    let threads = rayon::current_num_threads();
    let (ceiling, ceiling_median) = gemm_ceiling(1024);
    println!("machine ceiling: 1024³ f32 GEMM via okapi::kernels::matmul::matmul = {ceiling:.1} GFLOP/s best of 20 (median {ceiling_median:.1}) on {threads} threads");
    println!("RESULT ceiling gemm=1024 threads={threads} gflops={ceiling:.2} median_gflops={ceiling_median:.2}");
    match &args.preset {
        Some(p) => run_case(p, args.batch, args.seq, args.steps, ceiling, args.breakdown),
        None => {
            run_case("bench-5m", 8, 128, args.steps, ceiling, args.breakdown);
            run_case("bench-33m", 4, 256, args.steps, ceiling, args.breakdown);
        }
    }
}
