#!/usr/bin/env python3
"""The PyTorch + transformers counterpart of `benches/train_step.rs`: one training step of a
randomly initialised LlamaForCausalLM with exactly an okapi preset's shapes, on the CPU.

    /opt/pyref/bin/python benches/torch_step.py [--preset P --batch B --seq T] [--steps N]
        [--threads N] [--attn eager,sdpa] [--ceiling GFLOPS]

Without --preset it runs the two recorded cases (bench-5m B=8 T=128, bench-33m B=4 T=256), each
with both attention implementations ("eager" and "sdpa"). --threads (default 2) should equal
okapi's rayon thread count (the bench prints it). --ceiling is okapi's measured gemm ceiling
(the `RESULT ceiling` line of the Rust bench), to express the step as a fraction of it.

One step = model.zero_grad() (set_to_none, PyTorch's default) + forward(input_ids,
labels=input_ids) (transformers' shifted mean cross-entropy) + loss.backward(). No optimizer.
float32, model.train(), dropout 0. 2 warm-up steps, then N timed steps (default 10): median and
minimum. Token ids come from the same splitmix64 stream (seed 42) as the Rust bench.

FLOPs per step, the same formula as the Rust bench (see the header of train_step.rs):
    6·P_blocks·tokens + LM head 6·C·V·tokens + attention 12·L·B·T²·C/2
with P_blocks = every matrix weight inside the blocks (q,k,v,o,gate,up,down).
"""

import argparse
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from okapi_ids import splitmix_tokens  # benches/okapi_ids.py (the script's own directory)

# (name, hidden, layers, heads, ffn, vocab): a copy of okapi's PRESETS (model/src/init.rs)
PRESETS = {
    "tiny": (128, 4, 4, 344, 4096),
    "bench-5m": (256, 4, 4, 688, 4096),
    "bench-33m": (512, 8, 8, 1360, 8192),
    "gpt2-124m-llama": (768, 12, 12, 2048, 32000),
}
CASES = [("bench-5m", 8, 128), ("bench-33m", 4, 256)]
WARMUP = 2


def gemm_ceiling(size=1024):
    """(best, median) GFLOP/s of a square f32 torch.mm over 20 runs after 3 warm-up runs."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t0)
    return 2 * size**3 / min(ts) / 1e9, 2 * size**3 / statistics.median(ts) / 1e9


def run_case(preset, b, t, steps, attn, okapi_ceiling, torch_ceiling, threads):
    hidden, layers, heads, ffn, vocab = PRESETS[preset]
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        hidden_act="silu",
        max_position_embeddings=max(t, 2048),
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.train()
    assert model.config._attn_implementation == attn, model.config._attn_implementation
    n = b * t
    ids = torch.tensor(splitmix_tokens(42, n, vocab), dtype=torch.long).view(b, t)

    p_blocks = sum(
        p.numel() for name, p in model.named_parameters() if name.startswith("model.layers.") and p.dim() == 2
    )
    total_params = sum(p.numel() for p in model.parameters())
    flop = 6 * p_blocks * n + 6 * hidden * vocab * n + 12 * layers * b * t * t * hidden / 2

    print(
        f"\n== torch {preset} attn={attn}: B={b} T={t} ({n} tokens/step) | C={hidden} L={layers} H={heads} "
        f"F={ffn} V={vocab} untied | {total_params / 1e6:.2f}M params ({p_blocks / 1e6:.2f}M in block matrices) "
        f"| {torch.get_num_threads()} threads"
    )
    print(f"   FLOP/step = {flop / 1e9:.3f} GFLOP")
    steps_t, fwd_t, bwd_t, zero_t = [], [], [], []
    first_loss = None
    for i in range(WARMUP + steps):
        t0 = time.perf_counter()
        model.zero_grad()
        t1 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        t2 = time.perf_counter()
        out.loss.backward()
        t3 = time.perf_counter()
        if first_loss is None:
            first_loss = out.loss.item()
        if i >= WARMUP:
            zero_t.append(t1 - t0)
            fwd_t.append(t2 - t1)
            bwd_t.append(t3 - t2)
            steps_t.append(t3 - t0)
    med, mn = statistics.median(steps_t), min(steps_t)
    gflops = flop / med / 1e9
    frac = f" = {100 * gflops / okapi_ceiling:.1f}% of okapi's {okapi_ceiling:.1f} GFLOP/s gemm ceiling" if okapi_ceiling else ""
    print(f"   loss at init {first_loss:.4f}")
    print(
        f"   step: median {med * 1e3:.1f} ms, min {mn * 1e3:.1f} ms ({steps} steps after {WARMUP} warm-up) | "
        f"{n / med:.0f} tokens/s | {gflops:.1f} GFLOP/s{frac} | {100 * gflops / torch_ceiling:.1f}% of torch's "
        f"{torch_ceiling:.1f} GFLOP/s mm ceiling"
    )
    f, bw, z = statistics.median(fwd_t), statistics.median(bwd_t), statistics.median(zero_t)
    print(
        f"   phases (median ms): zero_grad {z * 1e3:.2f} | forward+loss {f * 1e3:.1f} ({100 * f / med:.1f}%) | "
        f"backward {bw * 1e3:.1f} ({100 * bw / med:.1f}%)"
    )
    print(
        f"RESULT torch-{attn} preset={preset} B={b} T={t} threads={threads} median_ms={med * 1e3:.2f} "
        f"min_ms={mn * 1e3:.2f} tokens_per_s={n / med:.0f} gflop_per_step={flop / 1e9:.4f} gflops={gflops:.2f} "
        f"fwd_ms={f * 1e3:.2f} bwd_ms={bw * 1e3:.2f}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="eager,sdpa")
    ap.add_argument("--ceiling", type=float, default=None, help="okapi's gemm ceiling in GFLOP/s")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    torch_ceiling, torch_ceiling_median = gemm_ceiling(1024)
    print(f"torch mm ceiling: 1024³ f32 = {torch_ceiling:.1f} GFLOP/s best of 20 (median {torch_ceiling_median:.1f})")
    print(f"RESULT torch-ceiling gemm=1024 threads={a.threads} gflops={torch_ceiling:.2f} median_gflops={torch_ceiling_median:.2f}")
    cases = [(a.preset, a.batch, a.seq)] if a.preset else CASES
    for preset, b, t in cases:
        for attn in a.attn.split(","):
            run_case(preset, b, t, a.steps, attn, a.ceiling, torch_ceiling, a.threads)


if __name__ == "__main__":
    main()
