//! Kernel microbenchmarks: every `Backend` op at the shapes of a model preset, timed in
//! isolation, with fused kernels next to their unfused composition.
//!
//!     cargo bench --bench kernels -- [--preset P[:BxT][,P..]] [--filter S[,S..]] [--reps N]
//!                                    [--warmup N] [--batch B] [--seq T] [--backend cpu|wgpu|cuda]
//!                                    [--precision f32|bf16] [--square N[,N..]|none]
//!
//! First the square GEMMs (`--square`, default 512,1024,2048,4096; plain and B-transposed), then
//! the presets. Without `--preset` it runs bench-5m (B=8 T=128), bench-33m (B=4 T=256) and
//! gpt2-124m-llama (B=4 T=256), about 2–3 minutes on 2 cores (`--preset none`: the square GEMMs
//! only); `--batch`/`--seq` override B and T, `P:BxT` sets them for one preset
//! (`--preset gpt2-124m-llama,llama-7b:2x2048`). `--filter S` (or a bare argument) keeps the rows
//! whose "kernel variant" contains S (`matmul`, `attention`, `unfused`, `lm_head`, ...); several
//! comma-separated filters keep the rows that match any (`--filter matmul.square,attention`).
//! `--precision bf16` (cuda only) opens the backend in its bf16 mode: matmul and attention read
//! bf16-rounded operands with fp32 accumulation, buffers stay f32 (the FLOP ceiling is then the
//! bf16 1024³ GEMM). `--reps N` fixes the timed repetitions of every
//! row; by default each row gets enough to fill ~0.3 s, at least 3 and at most 100 000 (so a
//! big shape runs 3 times rather than 10). `--warmup N` (default 2) untimed calls come first;
//! the last one sets the repetition count. Everything runs on a worker of a rayon pool, as
//! okapi-train does; the thread count is rayon's (`RAYON_NUM_THREADS`, default all cores).
//!
//! The code is generic over `okapi::runtime::Backend`: a new backend is one line in `main`
//! (`"wgpu" => run_backend(WgpuBackend::with_options(…), &args)`). Every timed call ends with
//! `Backend::synchronize`, which makes an asynchronous device finish its queue. The
//! few unfused reference passes written as plain loops (cross-entropy's row pass, SwiGLU's
//! multiply) need host-visible buffers (`Buf = Vec<f32>`); they are skipped elsewhere.
//!
//! Output: the two ceilings, then per preset an aligned table (median and min µs, GFLOP/s,
//! GB/s, % of the ceiling), then one `RESULT kernel=.. variant=.. preset=.. shape=.. reps=..
//! median_us=.. min_us=.. gflops=.. gbps=.. frac=..` line per row (`nan` where not counted).
//!
//! Ceilings (measured first, printed first):
//! - FLOP: a 1024³ f32 GEMM through the backend's `matmul` (on the CPU okapi's `gemm`-crate
//!   kernel, rayon-parallel), best of 20 after 3 warm-ups.
//! - bytes: a 256 MiB host copy, single-threaded (`memcpy`) and split over the pool's threads,
//!   read + write bytes counted (512 MiB per copy), best of 20 (10 of each). Cache-resident
//!   kernels (the small presets' activations fit in L2/L3) can exceed it: a fraction above 100%
//!   is not a bug. On a device backend (wgpu, cuda) the bytes ceiling is instead the device's
//!   own buffer-to-buffer copy of 64 MiB through the backend's `copy` (the host copy is printed
//!   beside it); its FLOP ceiling is the backend's own GEMM, so there `frac` says how far an op
//!   is from okapi's best kernel, not from the hardware's peak.
//!
//! `frac` is GFLOP/s ÷ the FLOP ceiling for matmul/attention rows, GB/s ÷ the bytes ceiling
//! for the others.
//!
//! FLOP convention: GEMM 2·m·n·k·batch. Attention forward 4·B·H·Tq·Tk·D, halved when causal
//! (Tq = Tk); backward 2.5× the forward (its 5 GEMMs — S recomputed, dP, dQ, dK, dV — against
//! the forward's 2). Unfused rows are credited with the *fused* op's useful work (FLOPs or
//! minimal bytes), so rates compare directly: rate ratio = speed-up from fusion.
//!
//! Minimal bytes per op (f32 = 4 B, ids u32 = 4 B; N = B·T tokens, C hidden, F ffn, V vocab,
//! H·D = heads × head dim, L = elements, U = distinct ids in the batch, W = Hkv·D, Tn = new
//! tokens per sequence):
//!
//!     op                    bytes read + written
//!     fill                  4L                      (write)
//!     copy                  8L
//!     scale                 8L                      (x read, x written)
//!     axpy                  12L                     (x, y read; y written)
//!     sum_squares           4L
//!     adamw                 28L                     (p, g, m, v read; p, m, v written)
//!     rmsnorm_fwd           8NC + 4C + 4N           (x, w read; out, rstd written)
//!     rmsnorm_bwd           16NC + 12C + 4N         (dy, x, dx read; dx written; w; dw r+w; rstd)
//!     layernorm_fwd         8NC + 8C + 8N
//!     layernorm_bwd         16NC + 20C + 8N
//!     rope_fwd / rope_bwd   8·N·H·D + 4N + 2D       (in place; positions; inv_freq)
//!     softmax_fwd           8NV
//!     softmax_bwd           12NV
//!     swiglu_fwd            12NF
//!     swiglu_bwd            20NF
//!     gelu_fwd              32NC                    (N × 4C, read + write)
//!     gelu_bwd              48NC
//!     geglu_fwd             12NF
//!     geglu_bwd             20NF
//!     softcap_fwd           8NV                     (logits in place)
//!     softcap_bwd           12NV                    (dy in place; the capped logits read)
//!     embedding_fwd         8NC + 4N
//!     embedding_bwd         4NC + 4N + 8UC          (dout, ids read; touched table rows r+w)
//!     bias_add              8NC + 4C
//!     bias_bwd              4NC + 8C
//!     xent_fwd_bwd          8NV + 12N               (logits in, dlogits out in place; targets, coef, losses)
//!     token_logprobs        4NV + 12N
//!     token_logprobs_bwd    8NV + 8N
//!     kv_write              8·B·Tn·W + 4B
//!
//! Matmuls: every projection shape of the model (q/k/v/o, gate/up, down, LM head; equal shapes
//! merged), each as the model runs it — forward `(N,d_in)·Wᵀ` (trans_b), backward dx
//! `(N,d_out)·W` and dW `dyᵀ·x` (trans_a, accumulate).
//!
//! Fused vs unfused (rows labelled `fused` / `unfused`, same kernel name and shape string):
//! - `matmul.qkv.fwd`: one (C → (Hq+2·Hkv)·D) GEMM vs the q, k, v GEMMs the model runs.
//! - `matmul.gate_up.fwd`: one (C → 2F) GEMM vs the gate and up GEMMs.
//! - `attention_fwd`: the flash-style kernel vs a batched GEMM S = scale·QKᵀ over all (b,h),
//!   `bias_add` of a causal mask (0 / −1e9), `softmax_fwd`, a batched GEMM P·V — in the
//!   head-major (B,H,T,D) layout the composition needs, whose transposes are not timed (a gift
//!   to the unfused side); the full T×T scores are computed.
//! - `xent_fwd_bwd`: the one-pass kernel vs `softmax_fwd` + a per-row plain loop (rayon over
//!   rows) writing loss = −ln p[target] and dlogits = coef·(p − onehot) in place.
//! - `adamw`: the fused kernel vs 6 backend passes: scale(p, decay); scale(m, β1) +
//!   axpy(m, 1−β1, g); scale(v, β2) + axpy(v, 1−β2, g) (g standing in for g², same traffic);
//!   axpy(p, −lr, m) (the m/(√v+ε) division has no backend op; its v read is missing).
//!   Approximate — a lower bound of the unfused traffic: 60 B/element against the fused 28.
//! - `swiglu_fwd`: the fused kernel vs `swiglu_fwd(tmp, gate, ones)` (= silu(gate), the same
//!   exp code; reads one extra buffer) + a plain-loop multiply `out = tmp·up`.
//!
//! Inputs are deterministic pseudo-random (okapi's `Rng`, normals tiled from a 2M-entry pool
//! for the big buffers), token ids uniform over the vocabulary, positions 0..T per sequence.
//! In-place ops run on their own output (rope, scale with a = −1, axpy with alternating sign,
//! accumulating backward ops); `xent_fwd_bwd`, which overwrites its logits, gets them restored
//! by an untimed copy before each repetition (the unfused side gets the same copy).

use okapi::model::{preset_config, Arch, Rng};
use okapi::runtime::{AdamW, AttnGrads, AttnInputs, AttnShape, Backend, CpuBackend, CudaBackend, CudaOptions, Gemm, KvShape, LayerNormBwd, LayerNormFwd, NormShape, Precision, RmsNormBwd, RmsNormFwd, RopeShape, Rows, WgpuBackend, WgpuOptions};
use rayon::prelude::*;
use std::any::{Any, TypeId};
use std::hint::black_box;
use std::time::Instant;

const TARGET_S: f64 = 0.3;
const MIN_REPS: usize = 3;
const MAX_REPS: usize = 100_000;
const DEFAULT_CASES: &[(&str, usize, usize)] = &[("bench-5m", 8, 128), ("bench-33m", 4, 256), ("gpt2-124m-llama", 4, 256)];

struct Args {
    presets: Vec<String>,
    filter: Option<String>,
    reps: Option<usize>,
    warmup: usize,
    batch: Option<usize>,
    seq: Option<usize>,
    backend: String,
    precision: Precision,
    /// square GEMM sizes timed before the presets (`--square 512,1024` / `none`)
    square: Vec<usize>,
}

fn parse_args() -> Args {
    let mut a = Args { presets: vec![], filter: None, reps: None, warmup: 2, batch: None, seq: None, backend: "cpu".into(), precision: Precision::F32, square: vec![512, 1024, 2048, 4096] };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--preset" => a.presets.extend(val("--preset").split(',').map(str::to_string)),
            "--filter" => a.filter = Some(val("--filter")),
            "--reps" => a.reps = Some(val("--reps").parse::<usize>().expect("--reps: integer").max(1)),
            "--warmup" => a.warmup = val("--warmup").parse().expect("--warmup: integer"),
            "--batch" => a.batch = Some(val("--batch").parse().expect("--batch: integer")),
            "--seq" => a.seq = Some(val("--seq").parse().expect("--seq: integer")),
            "--backend" => a.backend = val("--backend"),
            "--precision" => a.precision = val("--precision").parse().unwrap_or_else(|e| panic!("--precision: {e}")),
            "--square" => {
                let v = val("--square");
                a.square = if v == "none" { vec![] } else { v.split(',').map(|x| x.parse().expect("--square: integers")).collect() };
            }
            // cargo bench passes `--bench` to harness = false targets
            "--bench" => {}
            other if !other.starts_with('-') => a.filter = Some(other.to_string()),
            other => panic!("unknown argument `{other}` (expected --preset P --filter S --reps N --warmup N --batch B --seq T --backend cpu|wgpu|cuda --precision f32|bf16 --square N[,N..]|none)"),
        }
    }
    a
}

// ---- statistics, data ------------------------------------------------------------------------

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

/// Deterministic pseudo-random data: a pool of standard normals from okapi's `Rng`, tiled from
/// a random offset (the big optimizer buffers would take seconds of Box–Muller otherwise).
struct Data {
    rng: Rng,
    pool: Vec<f32>,
}

impl Data {
    fn new(seed: u64) -> Data {
        let mut rng = Rng::new(seed);
        let pool = (0..(1 << 21) + 11).map(|_| rng.normal() as f32).collect();
        Data { rng, pool }
    }
    fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let off = (self.rng.next_u64() % self.pool.len() as u64) as usize;
        self.pool.iter().cycle().skip(off).take(n).map(|&x| x * std).collect()
    }
    fn ids(&mut self, n: usize, below: usize) -> Vec<u32> {
        (0..n).map(|_| (self.rng.next_u64() % below as u64) as u32).collect()
    }
}

/// Waits for the queued work (`Backend::synchronize`; a no-op on the CPU, which runs each op
/// to completion).
fn fence<B: Backend>(be: &B) {
    be.synchronize();
}

/// Host view of a buffer when the backend keeps its buffers in host memory (`Vec<f32>`).
fn host_mut<T: Any>(b: &mut T) -> Option<&mut Vec<f32>> {
    (b as &mut dyn Any).downcast_mut::<Vec<f32>>()
}
fn host_ref<T: Any>(b: &T) -> Option<&Vec<f32>> {
    (b as &dyn Any).downcast_ref::<Vec<f32>>()
}

// ---- ceilings --------------------------------------------------------------------------------

struct Ceilings {
    gflops: f64,
    gflops_median: f64,
    /// the bytes ceiling: the host copy on host-memory backends, else the device's own copy
    gbps: f64,
    gbps_median: f64,
    host_gbps: f64,
    device_copy: bool,
}

fn ceilings<B: Backend>(be: &B) -> Ceilings {
    let mut data = Data::new(7);
    let n = 1024;
    let a = be.upload(&data.normal(n * n, 1.0));
    let b = be.upload(&data.normal(n * n, 1.0));
    let mut c = be.zeros(n * n);
    let g = Gemm::new(n, n, n);
    for _ in 0..3 {
        be.matmul(&mut c, &a, &b, &g);
        fence(be);
    }
    let ts: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            be.matmul(&mut c, &a, &b, &g);
            fence(be);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let (gflops, gflops_median) = (g.flops() / min(&ts) / 1e9, g.flops() / median(&ts) / 1e9);
    drop((a, b, c));

    let len = 256 << 20 >> 2; // 256 MiB of f32
    let src = data.normal(len, 1.0);
    let mut dst = vec![0f32; len];
    dst.copy_from_slice(&src);
    // the copy on every pool thread (1 MiB chunks), as the parallel kernels move bytes: the
    // best of it and of the single-threaded copy is the ceiling
    let chunk = 1 << 18;
    let ts: Vec<f64> = (0..20)
        .map(|i| {
            let t0 = Instant::now();
            if i % 2 == 0 {
                dst.copy_from_slice(black_box(&src));
            } else {
                dst.par_chunks_mut(chunk).zip(black_box(&src).par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
            }
            black_box(&dst);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let bytes = 2.0 * 4.0 * len as f64;
    let (host_gbps, host_gbps_median) = (bytes / min(&ts) / 1e9, bytes / median(&ts) / 1e9);
    drop((src, dst));
    if TypeId::of::<B::Buf>() == TypeId::of::<Vec<f32>>() {
        return Ceilings { gflops, gflops_median, gbps: host_gbps, gbps_median: host_gbps_median, host_gbps, device_copy: false };
    }
    // a device's own memory: the backend's buffer-to-buffer copy of 64 MiB (past the caches)
    let len = 64 << 20 >> 2;
    let src = be.upload(&data.normal(len, 1.0));
    let mut dst = be.zeros(len);
    for _ in 0..3 {
        be.copy(&mut dst, &src, len);
        fence(be);
    }
    let ts: Vec<f64> = (0..20)
        .map(|_| {
            let t0 = Instant::now();
            be.copy(&mut dst, &src, len);
            fence(be);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    let bytes = 2.0 * 4.0 * len as f64;
    Ceilings { gflops, gflops_median, gbps: bytes / min(&ts) / 1e9, gbps_median: bytes / median(&ts) / 1e9, host_gbps, device_copy: true }
}

// ---- the timing harness ----------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Work {
    Flops(f64),
    Bytes(f64),
}

struct Row {
    kernel: String,
    variant: &'static str,
    shape: String,
    reps: usize,
    median: f64,
    min: f64,
    gflops: Option<f64>,
    gbps: Option<f64>,
    frac: f64,
}

struct Bench<'a> {
    args: &'a Args,
    ceil: &'a Ceilings,
    preset: String,
    rows: Vec<Row>,
}

impl Bench<'_> {
    fn wants(&self, kernel: &str, variant: &str) -> bool {
        let row = format!("{kernel} {variant}");
        self.args.filter.as_ref().is_none_or(|f| f.split(',').any(|f| row.contains(f)))
    }
    fn wants_any(&self, kernels: &[&str]) -> bool {
        kernels.iter().any(|k| self.wants(k, "fused") || self.wants(k, "unfused") || self.wants(k, "-"))
    }

    /// Times `f`: `--warmup` untimed calls, then the repetitions, each timed alone.
    fn time(&mut self, kernel: &str, variant: &'static str, shape: String, work: Work, f: &mut dyn FnMut()) {
        self.time_prep(kernel, variant, shape, work, &mut |run| {
            if run {
                f()
            }
        })
    }

    /// As `time`, with an untimed preparation before each call: `f(false)` prepares, `f(true)`
    /// runs the op (and fences).
    fn time_prep(&mut self, kernel: &str, variant: &'static str, shape: String, work: Work, f: &mut dyn FnMut(bool)) {
        if !self.wants(kernel, variant) {
            return;
        }
        let mut last = 0.0;
        for _ in 0..self.args.warmup.max(1) {
            f(false);
            let t0 = Instant::now();
            f(true);
            last = t0.elapsed().as_secs_f64();
        }
        let reps = self.args.reps.unwrap_or(((TARGET_S / last.max(1e-9)).ceil() as usize).clamp(MIN_REPS, MAX_REPS));
        let mut ts = Vec::with_capacity(reps);
        for _ in 0..reps {
            f(false);
            let t0 = Instant::now();
            f(true);
            ts.push(t0.elapsed().as_secs_f64());
        }
        let (med, mn) = (median(&ts), min(&ts));
        let (gflops, gbps, frac) = match work {
            Work::Flops(fl) => (Some(fl / med / 1e9), None, fl / med / 1e9 / self.ceil.gflops),
            Work::Bytes(by) => (None, Some(by / med / 1e9), by / med / 1e9 / self.ceil.gbps),
        };
        let row = Row { kernel: kernel.to_string(), variant, shape, reps, median: med, min: mn, gflops, gbps, frac };
        print_row(&row);
        self.rows.push(row);
    }
}

fn us(s: f64) -> String {
    let u = s * 1e6;
    if u < 10.0 {
        format!("{u:.2}")
    } else {
        format!("{u:.1}")
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.1}"))
}

fn print_header() {
    println!(
        "   {:<26} {:<8} {:<30} {:>6} {:>11} {:>11} {:>8} {:>8} {:>7}",
        "kernel", "variant", "shape", "reps", "median µs", "min µs", "GFLOP/s", "GB/s", "%ceil"
    );
}

fn print_row(r: &Row) {
    println!(
        "   {:<26} {:<8} {:<30} {:>6} {:>11} {:>11} {:>8} {:>8} {:>6.1}%",
        r.kernel,
        r.variant,
        r.shape,
        r.reps,
        us(r.median),
        us(r.min),
        opt(r.gflops),
        opt(r.gbps),
        100.0 * r.frac
    );
}

fn print_results(preset: &str, rows: &[Row]) {
    let num = |x: Option<f64>| x.map_or("nan".into(), |x| format!("{x:.3}"));
    for r in rows {
        println!(
            "RESULT kernel={} variant={} preset={preset} shape={} reps={} median_us={:.3} min_us={:.3} gflops={} gbps={} frac={:.4}",
            r.kernel,
            r.variant,
            r.shape,
            r.reps,
            r.median * 1e6,
            r.min * 1e6,
            num(r.gflops),
            num(r.gbps),
            r.frac
        );
    }
}

// ---- square GEMMs ----------------------------------------------------------------------------

/// n×n×n GEMMs, plain and with B transposed (the layout of the model's forward `x·Wᵀ`).
fn run_square<B: Backend>(be: &B, args: &Args, ceil: &Ceilings) {
    println!();
    println!("== square matmul: {}", be.name());
    print_header();
    let mut bn = Bench { args, ceil, preset: "square".to_string(), rows: vec![] };
    let mut data = Data::new(99);
    for &n in &args.square {
        let a = be.upload(&data.normal(n * n, 1.0));
        let b = be.upload(&data.normal(n * n, 1.0));
        let mut c = be.zeros(n * n);
        for (g, tag) in [(Gemm::new(n, n, n), ""), (Gemm::new(n, n, n).trans_b(), ":tB")] {
            bn.time("matmul.square", "-", format!("{n}x{n}x{n}{tag}"), Work::Flops(g.flops()), &mut || {
                be.matmul(&mut c, &a, &b, &g);
                fence(be);
            });
        }
    }
    println!();
    print_results(&bn.preset, &bn.rows);
}

// ---- one preset ------------------------------------------------------------------------------

fn run_preset<B: Backend>(be: &B, args: &Args, ceil: &Ceilings, preset: &str, bsz: usize, t: usize)
where
    B::Buf: 'static,
{
    let cfg = preset_config(Arch::Llama, preset, None, t.max(2048)).unwrap_or_else(|e| panic!("{e}"));
    let (c, l, hq, hkv, d, f, v) = (cfg.hidden_size, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size);
    let n = bsz * t;
    let heads = if cfg.tie_word_embeddings { 1 } else { 2 };
    let params = heads * v * c + l * (2 * c * hq * d + 2 * c * hkv * d + 3 * c * f + 2 * c) + c;
    let host = TypeId::of::<B::Buf>() == TypeId::of::<Vec<f32>>();
    println!();
    println!(
        "== {preset}: B={bsz} T={t} N={n} | C={c} L={l} H={hq} Hkv={hkv} D={d} F={f} V={v} | {:.2}M params | {}",
        params as f64 / 1e6,
        be.name()
    );
    print_header();
    let mut bn = Bench { args, ceil, preset: preset.to_string(), rows: vec![] };
    let mut data = Data::new(1234);
    let up = |x: &[f32]| be.upload(x);
    let bytes = |x: usize| Work::Bytes(x as f64);

    // ---- matmuls -------------------------------------------------------------------------
    if bn.wants_any(&["matmul"]) {
        let linears = [("q", c, hq * d), ("k", c, hkv * d), ("v", c, hkv * d), ("o", hq * d, c), ("gate", c, f), ("up", c, f), ("down", f, c), ("lm_head", c, v)];
        let mut shapes: Vec<(String, usize, usize)> = vec![];
        for (name, din, dout) in linears {
            match shapes.iter_mut().find(|s| (s.1, s.2) == (din, dout)) {
                Some(s) => s.0 = format!("{}/{name}", s.0),
                None => shapes.push((name.to_string(), din, dout)),
            }
        }
        let qkv = (hq + 2 * hkv) * d;
        let max_in = shapes.iter().map(|s| s.1).max().unwrap();
        let max_out = shapes.iter().map(|s| s.2).max().unwrap().max(qkv).max(2 * f);
        let max_w = shapes.iter().map(|s| s.1 * s.2).max().unwrap().max(qkv * c).max(2 * f * c);
        let x = up(&data.normal(n * max_in, 1.0));
        let dy = up(&data.normal(n * max_out, 1.0));
        let w = up(&data.normal(max_w, 0.02));
        let mut out = be.zeros(n * max_out.max(max_in));
        let mut gw = be.zeros(max_w);
        for (name, din, dout) in &shapes {
            let (din, dout) = (*din, *dout);
            let g = Gemm::new(n, dout, din).trans_b();
            bn.time(&format!("matmul.{name}.fwd"), "-", format!("{n}x{dout}x{din}:tB"), Work::Flops(g.flops()), &mut || {
                be.matmul(&mut out, &x, &w, &g);
                fence(be);
            });
            let g = Gemm::new(n, din, dout);
            bn.time(&format!("matmul.{name}.dx"), "-", format!("{n}x{din}x{dout}"), Work::Flops(g.flops()), &mut || {
                be.matmul(&mut out, &dy, &w, &g);
                fence(be);
            });
            let g = Gemm::new(dout, din, n).trans_a().accumulate();
            bn.time(&format!("matmul.{name}.dW"), "-", format!("{dout}x{din}x{n}:tA+acc"), Work::Flops(g.flops()), &mut || {
                be.matmul(&mut gw, &dy, &x, &g);
                fence(be);
            });
        }
        // fused projections: one GEMM over the concatenated weights vs one per projection
        let projections: [(&str, Vec<usize>); 2] = [("matmul.qkv.fwd", vec![hq * d, hkv * d, hkv * d]), ("matmul.gate_up.fwd", vec![f, f])];
        for (kernel, outs) in projections {
            let total: usize = outs.iter().sum();
            let g = Gemm::new(n, total, c).trans_b();
            let work = Work::Flops(g.flops());
            bn.time(kernel, "fused", format!("{n}x{total}x{c}:tB"), work, &mut || {
                be.matmul(&mut out, &x, &w, &g);
                fence(be);
            });
            if bn.wants(kernel, "unfused") {
                let ws: Vec<B::Buf> = outs.iter().map(|&o| up(&data.normal(o * c, 0.02))).collect();
                let mut ys: Vec<B::Buf> = outs.iter().map(|&o| be.zeros(n * o)).collect();
                bn.time(kernel, "unfused", format!("{n}x{total}x{c}:tB"), work, &mut || {
                    for ((y, wi), &o) in ys.iter_mut().zip(&ws).zip(&outs) {
                        be.matmul(y, &x, wi, &Gemm::new(n, o, c).trans_b());
                    }
                    fence(be);
                });
            }
        }
    }

    // ---- attention -----------------------------------------------------------------------
    if bn.wants_any(&["attention", "kv_write"]) {
        let sh = AttnShape { batch: bsz, tq: t, tk: t, n_heads: hq, n_kv_heads: hkv, head_dim: d, scale: 1.0 / (d as f32).sqrt(), causal: true, window: 0, softcap: 0.0 };
        let fwd_flops = 4.0 * (bsz * hq * t * t * d) as f64 * 0.5;
        let shape = format!("B{bsz}xT{t}xH{hq}/{hkv}xD{d}:causal");
        let q = up(&data.normal(n * hq * d, 1.0));
        let k = up(&data.normal(n * hkv * d, 1.0));
        let vv = up(&data.normal(n * hkv * d, 1.0));
        let dout = up(&data.normal(n * hq * d, 1.0));
        let q_pos0 = be.upload_ids(&vec![0; bsz]);
        let kv_len = be.upload_ids(&vec![t as u32; bsz]);
        let mut out = be.zeros(n * hq * d);
        let mut lse = be.zeros(n * hq);
        let (mut dq, mut dk, mut dv) = (be.zeros(n * hq * d), be.zeros(n * hkv * d), be.zeros(n * hkv * d));
        let x = AttnInputs { q: &q, k: &k, v: &vv, q_pos0: &q_pos0, kv_len: &kv_len, alibi: None };
        be.attention_fwd(&mut out, &mut lse, &x, &sh);
        bn.time("attention_fwd", "fused", shape.clone(), Work::Flops(fwd_flops), &mut || {
            be.attention_fwd(&mut out, &mut lse, &x, &sh);
            fence(be);
        });
        bn.time("attention_bwd", "-", shape.clone(), Work::Flops(2.5 * fwd_flops), &mut || {
            be.attention_bwd(AttnGrads { dq: &mut dq, dk: &mut dk, dv: &mut dv }, &dout, &out, &lse, &x, &sh);
            fence(be);
        });
        if bn.wants("attention_fwd", "unfused") {
            // head-major (B·H, T, D) copies, keys/values repeated over the query heads of a group
            let bh = bsz * hq;
            let qh = up(&data.normal(bh * t * d, 1.0));
            let kh = up(&data.normal(bh * t * d, 1.0));
            let vh = up(&data.normal(bh * t * d, 1.0));
            let mask: Vec<f32> = (0..t * t).map(|ij| if ij % t > ij / t { -1e9 } else { 0.0 }).collect();
            let mask = up(&mask);
            let mut s = be.zeros(bh * t * t);
            let mut p = be.zeros(bh * t * t);
            let mut oh = be.zeros(bh * t * d);
            let g_s = Gemm::new(t, t, d).trans_b().alpha(sh.scale).batched(bh, t * d, t * d, t * t);
            let g_o = Gemm::new(t, d, t).batched(bh, t * t, t * d, t * d);
            bn.time("attention_fwd", "unfused", shape.clone(), Work::Flops(fwd_flops), &mut || {
                be.matmul(&mut s, &qh, &kh, &g_s);
                be.bias_add(&mut s, &mask, Rows::new(bh, t * t));
                be.softmax_fwd(&mut p, &s, Rows::new(bh * t, t), 1.0);
                be.matmul(&mut oh, &p, &vh, &g_o);
                fence(be);
            });
        }
        // kv_write: a prefill of T tokens, and one decode step at position T−1
        let wdt = hkv * d;
        let mut cache = be.zeros(bsz * t * wdt);
        let pos0 = be.upload_ids(&vec![0; bsz]);
        bn.time("kv_write", "-", format!("B{bsz}xTn{t}xW{wdt}:cap{t}"), bytes(8 * bsz * t * wdt + 4 * bsz), &mut || {
            be.kv_write(&mut cache, &k, &pos0, &KvShape { batch: bsz, t_new: t, t_cap: t, width: wdt });
            fence(be);
        });
        let new1 = up(&data.normal(bsz * wdt, 1.0));
        let pos_last = be.upload_ids(&vec![t as u32 - 1; bsz]);
        bn.time("kv_write", "-", format!("B{bsz}xTn1xW{wdt}:cap{t}"), bytes(8 * bsz * wdt + 4 * bsz), &mut || {
            be.kv_write(&mut cache, &new1, &pos_last, &KvShape { batch: bsz, t_new: 1, t_cap: t, width: wdt });
            fence(be);
        });
    }

    // ---- norms, RoPE, bias, embedding (N × C) ------------------------------------------------
    let nc = format!("{n}x{c}");
    if bn.wants_any(&["rmsnorm", "layernorm", "bias_add", "bias_bwd", "embedding"]) {
        let x = up(&data.normal(n * c, 1.0));
        let dy = up(&data.normal(n * c, 1.0));
        let w = up(&data.normal(c, 1.0).iter().map(|x| 1.0 + 0.1 * x).collect::<Vec<_>>());
        let b = up(&data.normal(c, 0.1));
        let mut out = be.zeros(n * c);
        let (mut mean, mut rstd) = (be.zeros(n), be.zeros(n));
        let mut dx = up(&data.normal(n * c, 1.0));
        let (mut dw, mut db) = (be.zeros(c), be.zeros(c));
        let sh = NormShape::new(n, c, cfg.norm_eps);
        be.rmsnorm_fwd(RmsNormFwd { out: &mut out, rstd: &mut rstd, x: &x, w: &w }, &sh);
        bn.time("rmsnorm_fwd", "-", nc.clone(), bytes(8 * n * c + 4 * c + 4 * n), &mut || {
            be.rmsnorm_fwd(RmsNormFwd { out: &mut out, rstd: &mut rstd, x: &x, w: &w }, &sh);
            fence(be);
        });
        bn.time("rmsnorm_bwd", "-", nc.clone(), bytes(16 * n * c + 12 * c + 4 * n), &mut || {
            be.rmsnorm_bwd(RmsNormBwd { dx: &mut dx, dw: &mut dw, dy: &dy, x: &x, w: &w, rstd: &rstd }, &sh);
            fence(be);
        });
        be.layernorm_fwd(LayerNormFwd { out: &mut out, mean: &mut mean, rstd: &mut rstd, x: &x, w: &w, b: &b }, &sh);
        bn.time("layernorm_fwd", "-", nc.clone(), bytes(8 * n * c + 8 * c + 8 * n), &mut || {
            be.layernorm_fwd(LayerNormFwd { out: &mut out, mean: &mut mean, rstd: &mut rstd, x: &x, w: &w, b: &b }, &sh);
            fence(be);
        });
        bn.time("layernorm_bwd", "-", nc.clone(), bytes(16 * n * c + 20 * c + 8 * n), &mut || {
            be.layernorm_bwd(LayerNormBwd { dx: &mut dx, dw: &mut dw, db: &mut db, dy: &dy, x: &x, w: &w, mean: &mean, rstd: &rstd }, &sh);
            fence(be);
        });
        let mut xb = up(&data.normal(n * c, 1.0));
        bn.time("bias_add", "-", nc.clone(), bytes(8 * n * c + 4 * c), &mut || {
            be.bias_add(&mut xb, &b, Rows::new(n, c));
            fence(be);
        });
        bn.time("bias_bwd", "-", nc.clone(), bytes(4 * n * c + 8 * c), &mut || {
            be.bias_bwd(&mut db, &dy, Rows::new(n, c));
            fence(be);
        });
        let table = up(&data.normal(v * c, 0.02));
        let ids_h = data.ids(n, v);
        let distinct = {
            let mut s = ids_h.clone();
            s.sort_unstable();
            s.dedup();
            s.len()
        };
        let ids = be.upload_ids(&ids_h);
        let mut dtable = be.zeros(v * c);
        bn.time("embedding_fwd", "-", format!("{n}x{c}:V{v}"), bytes(8 * n * c + 4 * n), &mut || {
            be.embedding_fwd(&mut out, &table, &ids, Rows::new(n, c));
            fence(be);
        });
        bn.time("embedding_bwd", "-", format!("{n}x{c}:V{v}:U{distinct}"), bytes(4 * n * c + 4 * n + 8 * distinct * c), &mut || {
            be.embedding_bwd(&mut dtable, &dy, &ids, Rows::new(n, c));
            fence(be);
        });
    }
    if bn.wants_any(&["rope"]) {
        let mut xq = up(&data.normal(n * hq * d, 1.0));
        let positions = be.upload_ids(&(0..n).map(|i| (i % t) as u32).collect::<Vec<_>>());
        let inv_freq: Vec<f32> = (0..d / 2).map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)) as f32).collect();
        let inv_freq = up(&inv_freq);
        let work = bytes(8 * n * hq * d + 4 * n + 2 * d);
        let shape = format!("{n}x{hq}x{d}");
        bn.time("rope_fwd", "-", shape.clone(), work, &mut || {
            be.rope_fwd(&mut xq, &positions, &inv_freq, &RopeShape::new(n, hq, d));
            fence(be);
        });
        bn.time("rope_bwd", "-", shape, work, &mut || {
            be.rope_bwd(&mut xq, &positions, &inv_freq, &RopeShape::new(n, hq, d));
            fence(be);
        });
    }

    // ---- activations ---------------------------------------------------------------------
    // a gated MLP's operands (N, F): gate, up and the product's gradient, for SwiGLU and GeGLU
    if bn.wants_any(&["swiglu", "geglu"]) {
        let len = n * f;
        let shape = format!("{n}x{f}");
        let gate = up(&data.normal(len, 1.0));
        let upb = up(&data.normal(len, 1.0));
        let dout = up(&data.normal(len, 1.0));
        let mut out = be.zeros(len);
        let (mut dgate, mut dup) = (be.zeros(len), be.zeros(len));
        if bn.wants_any(&["swiglu"]) {
            let work = bytes(12 * len);
            bn.time("swiglu_fwd", "fused", shape.clone(), work, &mut || {
                be.swiglu_fwd(&mut out, &gate, &upb, len);
                fence(be);
            });
            if host && bn.wants("swiglu_fwd", "unfused") {
                let ones = up(&vec![1.0; len]);
                let mut tmp = be.zeros(len);
                bn.time("swiglu_fwd", "unfused", shape.clone(), work, &mut || {
                    be.swiglu_fwd(&mut tmp, &gate, &ones, len);
                    let (o, s, u) = (host_mut(&mut out).unwrap(), host_ref(&tmp).unwrap(), host_ref(&upb).unwrap());
                    o[..len].par_chunks_mut(4096).zip(s.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((o, s), u)| {
                        for ((o, s), u) in o.iter_mut().zip(s).zip(u) {
                            *o = s * u;
                        }
                    });
                    fence(be);
                });
            }
            bn.time("swiglu_bwd", "-", shape.clone(), bytes(20 * len), &mut || {
                be.swiglu_bwd(&mut dgate, &mut dup, &dout, &gate, &upb, len);
                fence(be);
            });
        }
        if bn.wants_any(&["geglu"]) {
            bn.time("geglu_fwd", "-", shape.clone(), bytes(12 * len), &mut || {
                be.geglu_fwd(&mut out, &gate, &upb, len);
                fence(be);
            });
            bn.time("geglu_bwd", "-", shape, bytes(20 * len), &mut || {
                be.geglu_bwd(&mut dgate, &mut dup, &dout, &gate, &upb, len);
                fence(be);
            });
        }
    }
    if bn.wants_any(&["gelu"]) {
        let len = n * 4 * c;
        let shape = format!("{n}x{}", 4 * c);
        let x = up(&data.normal(len, 1.0));
        let dout = up(&data.normal(len, 1.0));
        let mut out = be.zeros(len);
        bn.time("gelu_fwd", "-", shape.clone(), bytes(8 * len), &mut || {
            be.gelu_fwd(&mut out, &x, len);
            fence(be);
        });
        bn.time("gelu_bwd", "-", shape, bytes(12 * len), &mut || {
            be.gelu_bwd(&mut out, &dout, &x, len);
            fence(be);
        });
    }

    // ---- vocabulary-wide: softmax, cross-entropy, log-probs (N × V) -------------------------
    if bn.wants_any(&["softmax", "softcap", "xent", "token_logprobs"]) {
        let nv = n * v;
        let shape = format!("{n}x{v}");
        let logits0 = up(&data.normal(nv, 2.0));
        let dy = up(&data.normal(nv, 1.0));
        let mut y = be.zeros(nv);
        let mut dx = be.zeros(nv);
        be.softmax_fwd(&mut y, &logits0, Rows::new(n, v), 1.0);
        bn.time("softmax_fwd", "-", shape.clone(), bytes(8 * nv), &mut || {
            be.softmax_fwd(&mut y, &logits0, Rows::new(n, v), 1.0);
            fence(be);
        });
        bn.time("softmax_bwd", "-", shape.clone(), bytes(12 * nv), &mut || {
            be.softmax_bwd(&mut dx, &dy, &y, Rows::new(n, v));
            fence(be);
        });
        if bn.wants_any(&["softcap"]) {
            // Gemma 2's final-logit cap, in place on the logits (capping capped values costs the same)
            be.copy(&mut y, &logits0, nv);
            bn.time("softcap_fwd", "-", shape.clone(), bytes(8 * nv), &mut || {
                be.softcap_fwd(&mut y, nv, 30.0);
                fence(be);
            });
            bn.time("softcap_bwd", "-", shape.clone(), bytes(12 * nv), &mut || {
                be.softcap_bwd(&mut dx, &y, nv, 30.0);
                fence(be);
            });
        }
        drop(dy);
        let targets_h = data.ids(n, v);
        let coef_h = vec![1.0 / n as f32; n];
        let targets = be.upload_ids(&targets_h);
        let coef = up(&coef_h);
        let mut logits = be.zeros(nv);
        let mut losses = be.zeros(n);
        let work = bytes(8 * nv + 12 * n);
        bn.time_prep("xent_fwd_bwd", "fused", shape.clone(), work, &mut |run| {
            if run {
                be.xent_fwd_bwd(&mut logits, &mut losses, &targets, &coef, Rows::new(n, v));
                fence(be);
            } else {
                be.copy(&mut logits, &logits0, nv);
                fence(be);
            }
        });
        if host && bn.wants("xent_fwd_bwd", "unfused") {
            let mut losses_h = vec![0f32; n];
            bn.time_prep("xent_fwd_bwd", "unfused", shape.clone(), work, &mut |run| {
                if run {
                    be.softmax_fwd(&mut y, &logits, Rows::new(n, v), 1.0);
                    let p = host_mut(&mut y).unwrap();
                    p[..nv].par_chunks_mut(v).zip(losses_h.par_iter_mut()).enumerate().for_each(|(i, (row, loss))| {
                        let (tg, cf) = (targets_h[i] as usize, coef_h[i]);
                        *loss = -row[tg].max(f32::MIN_POSITIVE).ln();
                        for x in row.iter_mut() {
                            *x *= cf;
                        }
                        row[tg] -= cf;
                    });
                    black_box(&losses_h);
                    fence(be);
                } else {
                    be.copy(&mut logits, &logits0, nv);
                    fence(be);
                }
            });
        }
        let (mut logp, mut greedy) = (be.zeros(n), be.zeros(n));
        bn.time("token_logprobs", "-", shape.clone(), bytes(4 * nv + 12 * n), &mut || {
            be.token_logprobs(&mut logp, &mut greedy, &logits0, &targets, Rows::new(n, v));
            fence(be);
        });
        bn.time("token_logprobs_bwd", "-", shape, bytes(8 * nv + 8 * n), &mut || {
            be.token_logprobs_bwd(&mut dx, &logits0, &targets, &coef, Rows::new(n, v));
            fence(be);
        });
    }

    // ---- optimizer and whole-parameter memory ops (P elements) -----------------------------
    if bn.wants_any(&["adamw", "sum_squares", "axpy", "scale", "fill", "copy"]) {
        let len = params;
        let shape = format!("P{len}");
        let mut p = up(&data.normal(len, 0.02));
        let g = up(&data.normal(len, 1e-3));
        let mut m = up(&data.normal(len, 1e-4));
        let mut vs = up(&data.normal(len, 1e-3).iter().map(|x| x * x).collect::<Vec<_>>());
        let h = AdamW { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 100, grad_scale: 1.0 };
        let work = bytes(28 * len);
        bn.time("adamw", "fused", shape.clone(), work, &mut || {
            be.adamw(&mut p, &g, &mut m, &mut vs, &h, len);
            fence(be);
        });
        let (decay, _, _) = h.scalars();
        bn.time("adamw", "unfused", shape.clone(), work, &mut || {
            be.scale(&mut p, decay, len);
            be.scale(&mut m, h.beta1, len);
            be.axpy(&mut m, 1.0 - h.beta1, &g, len);
            be.scale(&mut vs, h.beta2, len);
            be.axpy(&mut vs, 1.0 - h.beta2, &g, len);
            be.axpy(&mut p, -h.lr, &m, len);
            fence(be);
        });
        drop(vs);
        let mut acc = be.zeros(1);
        bn.time("sum_squares", "-", shape.clone(), bytes(4 * len), &mut || {
            be.sum_squares(&mut acc, 0, &g, len);
            fence(be);
        });
        let mut sign = 1.0f32;
        bn.time("axpy", "-", shape.clone(), bytes(12 * len), &mut || {
            sign = -sign;
            be.axpy(&mut p, 0.5 * sign, &g, len);
            fence(be);
        });
        bn.time("scale", "-", shape.clone(), bytes(8 * len), &mut || {
            be.scale(&mut p, -1.0, len);
            fence(be);
        });
        bn.time("fill", "-", shape.clone(), bytes(4 * len), &mut || {
            be.fill(&mut m, 0.0, len);
            fence(be);
        });
        bn.time("copy", "-", shape, bytes(8 * len), &mut || {
            be.copy(&mut m, &g, len);
            fence(be);
        });
    }

    println!();
    print_results(&bn.preset, &bn.rows);
}

fn run_backend<B: Backend>(be: B, args: &Args)
where
    B::Buf: 'static,
{
    let ceil = ceilings(&be);
    println!("device: {}", be.name());
    println!(
        "FLOP ceiling:  1024³ f32 GEMM through the backend's matmul = {:.1} GFLOP/s best of 20 (median {:.1})",
        ceil.gflops, ceil.gflops_median
    );
    if ceil.device_copy {
        println!(
            "bytes ceiling: 64 MiB device-to-device copy through the backend's copy, read+write counted = {:.1} GB/s best of 20 (median {:.1}); host copy {:.1} GB/s",
            ceil.gbps, ceil.gbps_median, ceil.host_gbps
        );
    } else {
        println!(
            "bytes ceiling: 256 MiB host copy (single-threaded and over the pool's threads), read+write counted = {:.1} GB/s best of 20 (median {:.1})",
            ceil.gbps, ceil.gbps_median
        );
    }
    println!("RESULT kernel=ceiling_gemm variant=- preset=- shape=1024x1024x1024 gflops={:.3} median_gflops={:.3}", ceil.gflops, ceil.gflops_median);
    let copy = if ceil.device_copy { "64MiB:device" } else { "256MiB" };
    println!("RESULT kernel=ceiling_memcpy variant=- preset=- shape={copy} gbps={:.3} median_gbps={:.3}", ceil.gbps, ceil.gbps_median);
    if !args.square.is_empty() {
        run_square(&be, args, &ceil);
    }
    let cases: Vec<(String, usize, usize)> = if args.presets.is_empty() {
        DEFAULT_CASES.iter().map(|&(p, b, t)| (p.to_string(), b, t)).collect()
    } else {
        args.presets.iter().map(|p| preset_case(p)).collect()
    };
    for (preset, b, t) in cases.into_iter().filter(|c| c.0 != "none") {
        run_preset(&be, args, &ceil, &preset, args.batch.unwrap_or(b), args.seq.unwrap_or(t));
    }
}

/// `P` (B and T of DEFAULT_CASES, else 4 and 256) or `P:BxT`.
fn preset_case(p: &str) -> (String, usize, usize) {
    if let Some((name, bt)) = p.split_once(':') {
        let parsed = bt.split_once('x').and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)));
        let (b, t) = parsed.unwrap_or_else(|| panic!("--preset {p}: expected NAME:BxT (e.g. llama-7b:2x2048)"));
        return (name.to_string(), b, t);
    }
    let (b, t) = DEFAULT_CASES.iter().find(|c| c.0 == p).map_or((4, 256), |c| (c.1, c.2));
    (p.to_string(), b, t)
}

fn main() {
    // The whole run inside a rayon pool worker, as okapi-train runs: parallel kernels called
    // from a worker queue their tasks locally instead of waking the pool from outside (which
    // dominates microsecond-scale ops). Honours RAYON_NUM_THREADS.
    okapi::runtime::run_in_pool(0, bench_main);
}

fn bench_main() {
    let args = parse_args();
    let t0 = Instant::now();
    if args.precision != Precision::F32 && args.backend != "cuda" {
        panic!("--precision {}: only the cuda backend has a bf16 mode", args.precision);
    }
    match args.backend.as_str() {
        "cpu" => run_backend(CpuBackend, &args),
        "wgpu" => run_backend(WgpuBackend::with_options(&WgpuOptions::from_env()).unwrap_or_else(|e| panic!("{e}")), &args),
        "cuda" => run_backend(CudaBackend::with_options(&CudaOptions::from_env(args.precision)).unwrap_or_else(|e| panic!("{e}")), &args),
        other => panic!("backend `{other}` is not built into this bench (expected cpu, wgpu or cuda)"),
    }
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
}
