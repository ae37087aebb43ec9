//! Rollout generation benchmark: batched sampling with the KV cache on a randomly initialised
//! LLaMA preset, tokens/s — PPO's generation phase. The PyTorch counterpart is
//! `benches/generate_torch.py` (transformers' `generate` with the same settings).
//!
//!     cargo bench --bench generate -- [--preset bench-5m] [--batch 16] [--prompt 64] [--new 64] [--runs 5]
//!
//! Sampling as Okapi's PPO: temperature 1, top-p 1, top-k 0; no EOS (every sequence produces
//! exactly `--new` tokens, so both sides do the same work). Prompts are random token ids of
//! length `--prompt`. One warm-up run, then the median of `--runs`.

use okapi::model::{preset_config, Arch, Model, Rng};
use okapi::rlhf::{generate, Sampling};
use okapi::runtime::CpuBackend;
use std::time::Instant;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn main() {
    // inside a pool worker, as okapi-train runs (see okapi::runtime::run_in_pool)
    okapi::runtime::run_in_pool(0, bench_main);
}

fn bench_main() {
    let preset = arg("--preset", "bench-5m");
    let batch: usize = arg("--batch", "16").parse().unwrap();
    let prompt_len: usize = arg("--prompt", "64").parse().unwrap();
    let new: usize = arg("--new", "64").parse().unwrap();
    let runs: usize = arg("--runs", "5").parse().unwrap();
    let cfg = preset_config(Arch::Llama, &preset, None, 2048).unwrap();
    let v = cfg.vocab_size as u64;
    let model = Model::init(CpuBackend, cfg, 1234);
    let mut rng = Rng::new(42);
    let prompts: Vec<Vec<u32>> = (0..batch).map(|_| (0..prompt_len).map(|_| (4 + rng.next_u64() % (v - 4)) as u32).collect()).collect();
    let s = Sampling { temperature: 1.0, top_p: 1.0, top_k: 0, max_new_tokens: new, seed: 7 };
    let mut times = vec![];
    for r in 0..=runs {
        let t = Instant::now();
        let g = generate(&model, &prompts, &s, None).unwrap();
        let dt = t.elapsed().as_secs_f64();
        assert!(g.iter().all(|x| x.tokens.len() == new));
        if r > 0 {
            times.push(dt);
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = times[times.len() / 2];
    println!(
        "okapi generate {preset}: batch {batch}, prompt {prompt_len}, {new} new tokens, {} threads: median {:.3} s, {:.0} new tokens/s (min {:.3} s)",
        rayon::current_num_threads(),
        med,
        (batch * new) as f64 / med,
        times[0]
    );
}
