//! `okapi-train bench train|generate`: time a randomly initialised preset model, no files needed.
//!
//! `train`: one measured step is exactly an `okapi-train sft` optimizer step (no gradient
//! accumulation): zero the gradients, forward, fused token-level mean cross-entropy, backward,
//! global-norm clipping at 1.0 and an AdamW update (constant `--lr`, SFT's betas (0.9, 0.95),
//! eps 1e-8, weight decay 0.05 on tensors with ≥ 2 dims). The token ids are
//! `Rng::new(seed).next_u64() % vocab` (the stream `benches/torch_step.py` reproduces); the labels
//! are the ids themselves (transformers' shifted loss).
//!
//! `generate`: B prompts of T random ids, K new tokens each, greedy, no EOS (every sequence
//! produces exactly K tokens), through `okapi_rlhf::generate` (KV cache). The prefill (one
//! `forward_cached` of the prompts and the read of its logits) is timed separately, in its own
//! run before each generate call; decode tokens/s = B·K / (median whole call − median prefill).
//!
//! W warm-up repetitions, then N measured ones; progress on stderr, and last, on stdout, one JSON
//! line with the medians (see `benches/compare.py`, which runs the PyTorch counterpart).
//!
//! FLOPs of a train step ("model FLOPs", the header of `benches/train_step.rs`):
//! `6·P_blocks·tokens + 6·C·V·tokens + 12·L·B·T²·C/2`, with P_blocks every matrix weight inside
//! the blocks (q, k, v, o, gate, up, down); elementwise work and the optimizer not counted.

use okapi_model::{preset_config, Acts, Arch, Grads, Model, Rng, Scratch};
use okapi_model::memory::{kv_cache_bytes, training_need_rows_by, weights_bytes, Need};
use okapi_rlhf::generate::argmax;
use okapi_rlhf::{clip_coef, generate, lm_loss_and_grad, shift_labels, AdamWConfig, LossBufs, Optimizer, Sampling};
use okapi_runtime::{Backend, BackendKind, IGNORE_INDEX};
use serde_json::json;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// What to time: train (one SFT optimizer step) or generate (greedy decoding with the KV cache)
    pub mode: String,
    /// llama, bloom, qwen2, qwen3, mistral or gemma2
    #[arg(long, default_value = "llama")]
    pub arch: String,
    /// Model shape: tiny, bench-5m, bench-33m, gpt2-124m-llama, llama-1b, llama-7b, bloom-560m, bloom-7b1, qwen2-0.5b, qwen3-0.6b
    #[arg(long, default_value = "bench-5m")]
    pub preset: String,
    /// Sequences per step (train) or prompts per call (generate)
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Tokens per sequence (train) or prompt length (generate)
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Measured steps (train) or generate calls
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed repetitions before the measured ones
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// New tokens per prompt (generate)
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Constant learning rate of the AdamW update (train)
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Compute backend: auto, cpu, wgpu or cuda
    #[arg(long, default_value = "auto")]
    pub backend: BackendKind,
    /// f32 (exact) or bf16 (matmul and attention on bf16 operands, fp32 accumulation; GPU backends)
    #[arg(long, default_value = "f32")]
    pub precision: okapi_runtime::Precision,
    /// Worker threads (the pool the command runs in; default: RAYON_NUM_THREADS, else all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seed of the model's initialisation and of the token ids
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train LoRA adapters of this rank on every linear layer (all-linear, α = 2r) instead of
    /// the weights (train)
    #[arg(long)]
    pub lora_r: Option<usize>,
}

/// The AdamW settings of a bench train step (SFT's recipe; the lr is `--lr`, constant).
pub const BENCH_ADAMW: AdamWConfig = AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.05 };
/// Global gradient-norm clipping of a bench train step (SFT's).
pub const BENCH_MAX_GRAD_NORM: f64 = 1.0;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Train,
    Generate,
}

/// Model FLOPs of one training step (forward + backward) at batch `b` × `t` tokens: matrix
/// weights of the blocks `6·P_blocks·tokens` + LM head `6·C·V·tokens` + causal attention
/// `12·L·B·T²·C/2` (the convention of `benches/train_step.rs`). With LoRA the frozen weights
/// get no weight gradient (4· instead of 6· for the blocks and the head) and the adapters add
/// `6·A·tokens` for their A parameters.
pub fn train_step_flops<B: Backend>(model: &Model<B>, b: usize, t: usize) -> f64 {
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
    let attention = 12.0 * l * b as f64 * (t * t) as f64 * c / 2.0;
    match model.adapters {
        None => 6.0 * p_blocks as f64 * tokens + 6.0 * c * v * tokens + attention,
        Some(_) => {
            let adapters: usize = model.lora_params().iter().map(|&i| model.info[i].numel()).sum();
            4.0 * p_blocks as f64 * tokens + 4.0 * c * v * tokens + attention + 6.0 * adapters as f64 * tokens
        }
    }
}

/// Median (mean of the two middle values for an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn ms(s: f64) -> f64 {
    s * 1e3
}

pub fn run(a: BenchArgs) -> Result<(), String> {
    let mode = match a.mode.as_str() {
        "train" => Mode::Train,
        "generate" => Mode::Generate,
        other => return Err(format!("bench {other}: expected `bench train` or `bench generate`")),
    };
    let arch: Arch = a.arch.parse().map_err(|e| format!("--arch: {e}"))?;
    if a.batch_size == 0 {
        return Err("--batch-size 0: must be at least 1".into());
    }
    if a.steps == 0 {
        return Err("--steps 0: must be at least 1".into());
    }
    match mode {
        Mode::Train if a.seq_len < 2 => return Err(format!("--seq-len {}: a train step needs at least 2 tokens (one target)", a.seq_len)),
        Mode::Generate if a.seq_len == 0 => return Err("--seq-len 0: a prompt needs at least 1 token".into()),
        Mode::Generate if a.new_tokens == 0 => return Err("--new-tokens 0: must be at least 1".into()),
        _ => {}
    }
    if !(a.lr.is_finite() && a.lr >= 0.0) {
        return Err(format!("--lr {}: expected a non-negative number", a.lr));
    }
    // the preset before the (possibly slow) rest, so a typo fails at once
    let max_positions = match mode {
        Mode::Train => a.seq_len.max(2048),
        Mode::Generate => a.seq_len.saturating_add(a.new_tokens).max(2048),
    };
    let cfg = preset_config(arch, &a.preset, None, max_positions).map_err(|e| format!("--preset: {e}"))?;
    super::on_backend!(a.backend, a.precision, |be| bench_on(be, cfg, &a, mode))
}

fn bench_on<B: Backend>(be: B, cfg: okapi_model::ModelConfig, a: &BenchArgs, mode: Mode) -> Result<(), String> {
    // `okapi::cli::run` already runs this command inside a pool of --threads workers
    let threads = rayon::current_num_threads();
    let device = be.name();
    bench_memory(&cfg, a, mode).check(&be).map_err(|e| e.to_string())?;
    let mut model = Model::init(be, cfg, a.seed);
    if let Some(r) = a.lora_r.filter(|_| mode == Mode::Train) {
        let lora = okapi_model::lora::LoraConfig { r, alpha: 2.0 * r as f64, dropout: 0.0, targets: okapi_model::lora::Targets::AllLinear, rslora: false };
        model.add_lora(&lora, a.seed).map_err(|e| e.to_string())?;
    }
    eprintln!(
        "bench {}: {} {} ({} params; C={} L={} H={} F={} V={}) on {device}",
        a.mode,
        a.arch,
        a.preset,
        model.n_params(),
        model.cfg.hidden_size,
        model.cfg.n_layers,
        model.cfg.n_heads,
        model.cfg.intermediate_size,
        model.cfg.vocab_size
    );
    let line = match mode {
        Mode::Train => bench_train(model, a, threads)?,
        Mode::Generate => bench_generate(&model, a, threads)?,
    };
    println!("{line}");
    Ok(())
}

/// What a bench run allocates: a training step's weights, gradients, AdamW moments and
/// activations, or the weights and the KV cache of generation.
fn bench_memory(cfg: &okapi_model::ModelConfig, a: &BenchArgs, mode: Mode) -> Need {
    match mode {
        Mode::Train => Need { hint: "lower --batch-size or --seq-len, or use a smaller --preset".into(), ..training_need_rows_by(cfg, cfg.param_count(), a.batch_size.saturating_mul(a.seq_len), "lower --batch-size or --seq-len", Default::default()) },
        Mode::Generate => Need::new("bench generate", "lower --batch-size, --seq-len or --new-tokens, or use a smaller --preset")
            .device("weights", weights_bytes(cfg))
            .device("KV cache", kv_cache_bytes(cfg, a.batch_size, a.seq_len.saturating_add(a.new_tokens), a.seq_len)),
    }
}

/// The process's peak resident memory (VmHWM of /proc/self/status) in MiB; `None` off Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

/// "cpu", "wgpu" or "cuda": the first word of the backend's name.
fn backend_kind<B: Backend>(be: &B) -> String {
    be.name().split([' ', ':']).next().unwrap_or_default().to_string()
}

/// `n` token ids, `Rng::new(seed).next_u64() % vocab` each.
pub fn synthetic_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Everything one timed training step needs, allocated once (as a training run does).
struct TrainBench<B: Backend> {
    model: Model<B>,
    tokens: Vec<u32>,
    targets: Vec<u32>,
    n_targets: usize,
    acts: Acts<B>,
    scratch: Scratch<B>,
    grads: Grads<B>,
    bufs: LossBufs<B>,
    opt: Optimizer<B>,
}

/// Seconds of each phase of the timed steps (after warm-up).
#[derive(Default)]
struct PhaseTimes {
    step: Vec<f64>,
    zero: Vec<f64>,
    fwd: Vec<f64>,
    loss: Vec<f64>,
    bwd: Vec<f64>,
    optim: Vec<f64>,
}

impl<B: Backend> TrainBench<B> {
    fn new(model: Model<B>, a: &BenchArgs) -> Self {
        let (b, t) = (a.batch_size, a.seq_len);
        let tokens = synthetic_ids(a.seed, b * t, model.cfg.vocab_size);
        let labels: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let targets = shift_labels(&labels, b, t);
        let n_targets = targets.iter().filter(|&&x| x != IGNORE_INDEX).count();
        // everything trains, or with LoRA the adapters
        let mask = model.trainable_mask(None).expect("no --unfrozen-layers");
        let grads = model.new_grads(|i| mask[i]);
        let opt = Optimizer::new(&model, &grads, BENCH_ADAMW);
        TrainBench { acts: model.new_acts(b, t), scratch: model.new_scratch(b, t), bufs: LossBufs::new(&model.be, b * t), model, tokens, targets, n_targets, grads, opt }
    }

    /// One full optimizer step, synchronised around each phase: (loss, grad norm, the six
    /// instants that bound zero-grad, forward, loss, backward and clip + AdamW).
    fn step(&mut self, a: &BenchArgs) -> Result<(f64, f64, [Instant; 6]), String> {
        let (b, t) = (a.batch_size, a.seq_len);
        let m = &mut self.model;
        let t0 = Instant::now();
        m.zero_grads(&mut self.grads);
        m.be.synchronize();
        let t1 = Instant::now();
        m.forward(&mut self.acts, &self.tokens, b, t).map_err(|e| e.to_string())?;
        m.be.synchronize();
        let t2 = Instant::now();
        let (loss_sum, _) = lm_loss_and_grad(m, &mut self.acts, &mut self.bufs, &self.targets, 1.0 / self.n_targets as f32);
        m.be.synchronize();
        let t3 = Instant::now();
        m.backward(&mut self.acts, &mut self.scratch, &mut self.grads);
        m.be.synchronize();
        let t4 = Instant::now();
        let norm = self.opt.grad_norm(m, &self.grads);
        self.opt.step(m, &self.grads, a.lr as f32, clip_coef(norm, BENCH_MAX_GRAD_NORM));
        m.be.synchronize();
        Ok((loss_sum / self.n_targets as f64, norm, [t0, t1, t2, t3, t4, Instant::now()]))
    }
}

fn bench_train<B: Backend>(model: Model<B>, a: &BenchArgs, threads: usize) -> Result<serde_json::Value, String> {
    let flop = train_step_flops(&model, a.batch_size, a.seq_len);
    let mut tb = TrainBench::new(model, a);
    let mut p = PhaseTimes::default();
    let (mut loss_first, mut loss_last) = (f64::NAN, f64::NAN);
    let total = a.warmup + a.steps;
    for i in 0..total {
        let (loss, norm, [t0, t1, t2, t3, t4, t5]) = tb.step(a)?;
        let dt = (t5 - t0).as_secs_f64();
        let warm = i < a.warmup;
        eprintln!("bench train: step {}/{total}{} {:.1} ms, loss {loss:.4}, grad norm {norm:.4}", i + 1, if warm { " (warm-up)" } else { "" }, ms(dt));
        if warm {
            continue;
        }
        if p.step.is_empty() {
            loss_first = loss;
        }
        loss_last = loss;
        p.step.push(dt);
        p.zero.push((t1 - t0).as_secs_f64());
        p.fwd.push((t3 - t1).as_secs_f64());
        p.loss.push((t3 - t2).as_secs_f64());
        p.bwd.push((t4 - t3).as_secs_f64());
        p.optim.push((t5 - t4).as_secs_f64());
    }
    let (n, med, be) = ((a.batch_size * a.seq_len) as f64, median(&p.step), &tb.model.be);
    eprintln!(
        "bench train: median {:.1} ms/step (min {:.1}), {:.0} tokens/s, {:.2} GFLOP/s | forward+loss {:.1} ms, backward {:.1} ms, clip+AdamW {:.1} ms | loss {loss_first:.4} → {loss_last:.4}",
        ms(med),
        ms(min(&p.step)),
        n / med,
        flop / med / 1e9,
        ms(median(&p.fwd)),
        ms(median(&p.bwd)),
        ms(median(&p.optim)),
    );
    Ok(json!({
        "mode": "train", "arch": a.arch, "preset": a.preset, "backend": backend_kind(be), "precision": a.precision.to_string(), "device": be.name(), "threads": threads,
        "batch_size": a.batch_size, "seq_len": a.seq_len, "steps": p.step.len(), "warmup": a.warmup, "params": tb.model.n_params(),
        "step_ms_median": ms(med), "step_ms_min": ms(min(&p.step)), "tokens_per_s": n / med, "gflop_per_step": flop / 1e9, "gflops": flop / med / 1e9,
        "fwd_ms_median": ms(median(&p.fwd)), "loss_ms_median": ms(median(&p.loss)), "bwd_ms_median": ms(median(&p.bwd)),
        "opt_ms_median": ms(median(&p.optim)), "zero_ms_median": ms(median(&p.zero)),
        "lr": a.lr, "loss_first": loss_first, "loss_last": loss_last, "lora_r": a.lora_r,
        "trainable_params": tb.model.trainable_mask(None).map(|m| m.iter().zip(&tb.model.info).filter(|(t, _)| **t).map(|(_, p)| p.numel()).sum::<usize>()).unwrap_or(0),
        "peak_rss_mib": peak_rss_mib(),
    }))
}

/// The prefill of `generate` on its own: a cache as `generate` sizes it, one
/// `forward_cached_last` of the (equal-length) prompts (the LM head on the last position only,
/// as `generate` does), the read of the logits and the first greedy token of each.
fn prefill<B: Backend>(model: &Model<B>, flat: &[u32], b: usize, t: usize, new: usize) -> Result<Vec<u32>, String> {
    let v = model.cfg.vocab_size;
    let mut cache = model.new_cache(b, t + new - 1, t).map_err(|e| e.to_string())?;
    model.forward_cached_last(&mut cache, flat, t, &vec![t; b]).map_err(|e| e.to_string())?;
    let logits = model.be.read(&cache.logits, b * v);
    Ok((0..b).map(|i| argmax(&logits[i * v..][..v]) as u32).collect())
}

fn bench_generate<B: Backend>(model: &Model<B>, a: &BenchArgs, threads: usize) -> Result<serde_json::Value, String> {
    let (b, t, k) = (a.batch_size, a.seq_len, a.new_tokens);
    let flat = synthetic_ids(a.seed, b * t, model.cfg.vocab_size);
    let prompts: Vec<Vec<u32>> = flat.chunks(t).map(|c| c.to_vec()).collect();
    // greedy; no EOS: every sequence produces exactly k tokens
    let s = Sampling::greedy(k);
    let (mut pre, mut whole) = (vec![], vec![]);
    let total = a.warmup + a.steps;
    for i in 0..total {
        let t0 = Instant::now();
        let first = prefill(model, &flat, b, t, k)?;
        model.be.synchronize();
        let dp = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let g = generate(model, &prompts, &s, None).map_err(|e| e.to_string())?;
        model.be.synchronize();
        let dt = t1.elapsed().as_secs_f64();
        if let Some((j, x)) = g.iter().enumerate().find(|(_, x)| x.tokens.len() != k) {
            return Err(format!("generate: sequence {j} produced {} tokens, not {k}", x.tokens.len()));
        }
        if g.iter().zip(&first).any(|(x, &f)| x.tokens[0] != f) {
            eprintln!("bench generate: warning: the separately timed prefill's first tokens differ from generate's");
        }
        let warm = i < a.warmup;
        eprintln!(
            "bench generate: run {}/{}{} prefill {:.1} ms, whole {:.1} ms ({:.0} new tokens/s)",
            i + 1,
            total,
            if warm { " (warm-up)" } else { "" },
            ms(dp),
            ms(dt),
            (b * k) as f64 / dt
        );
        if !warm {
            pre.push(dp);
            whole.push(dt);
        }
    }
    let (mp, mw) = (median(&pre), median(&whole));
    let decode = (mw - mp).max(1e-9);
    let out = json!({
        "mode": "generate",
        "arch": a.arch,
        "preset": a.preset,
        "backend": backend_kind(&model.be),
        "precision": a.precision.to_string(),
        "device": model.be.name(),
        "threads": threads,
        "batch_size": b,
        "prompt_len": t,
        "new_tokens": k,
        "steps": whole.len(),
        "warmup": a.warmup,
        "params": model.n_params(),
        "prefill_ms_median": ms(mp),
        "run_ms_median": ms(mw),
        "run_ms_min": ms(min(&whole)),
        "decode_ms_median": ms(decode),
        "decode_tokens_per_s": (b * k) as f64 / decode,
        "tokens_per_s_total": (b * k) as f64 / mw,
        "prefill_tokens_per_s": (b * t) as f64 / mp,
    });
    eprintln!(
        "bench generate: median prefill {:.1} ms, whole {:.1} ms, decode {:.0} tokens/s, {:.0} new tokens/s overall",
        ms(mp),
        ms(mw),
        (b * k) as f64 / decode,
        (b * k) as f64 / mw
    );
    Ok(out)
}
