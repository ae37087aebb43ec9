#!/usr/bin/env python3
"""okapi vs PyTorch + transformers, same shapes, same work, same threads: a comparison table.

    cargo build --release --bin okapi-train
    /opt/pyref/bin/python benches/compare.py [--threads 2] [--steps 10] [--warmup 2]
        [--cases train-llama,generate] [--attn sdpa|eager] [--okapi target/release/okapi-train]
        [--seed 42] [--json-out results.jsonl]

For each case it runs `okapi-train bench …` (a subprocess; its last stdout line is a JSON object)
and then the PyTorch equivalent in this process (torch.set_num_threads(--threads); okapi gets
`--threads` too), prints both JSON objects, and at the end one markdown table: every metric with
the okapi and torch columns and the ratio okapi/torch (for times lower is better, for rates
higher is better).

Default cases (`--cases` keeps those whose name contains any of the comma-separated filters):

    train-llama-bench-5m-B8-T128      train-llama-bench-33m-B4-T256
    train-bloom-bench-5m-B8-T128      train-bloom-bench-33m-B4-T256
    generate-llama-bench-5m-B8-P128-K128

Models: randomly initialised, float32, with exactly okapi's preset shapes (the table PRESETS
below is a copy of model/src/init.rs, as in benches/torch_step.py). LLaMA: LlamaConfig as
`okapi-train init --arch llama` writes it (untied LM head, no biases, RMSNorm eps 1e-5, rope
theta 1e4, max_position_embeddings max(2048, T+K)). BLOOM: BloomConfig (MLP 4·C, LayerNorm eps
1e-5, ALiBi, biases, embedding LayerNorm, tied LM head), as `okapi-train init --arch bloom`
writes it; the parameter counts of both sides are checked equal. Token ids on both sides come
from the same splitmix64 stream (okapi's Rng, `--seed`), `% vocab`.

Train step (both sides, what `okapi-train sft` does per optimizer step): zero the gradients,
forward with labels = input ids (transformers' shifted token-level mean cross-entropy), backward,
clip the global gradient norm to 1.0, AdamW with lr 1e-4 (constant), betas (0.9, 0.95), eps 1e-8,
weight decay 0.05 on tensors with >= 2 dims only (two parameter groups on the torch side;
torch.optim.AdamW's default implementation). model.train(), dropout 0. --warmup steps, then
--steps timed ones; medians (and the minimum step). Phases: "fwd" is forward + loss, "opt" is
clipping + AdamW.

Generate (both sides): B prompts of T tokens, K new tokens each, greedy, no early stop (okapi
passes no EOS; torch sets min_new_tokens = max_new_tokens), KV cache. torch:
`model.generate(ids, attention_mask=ones, max_new_tokens=K, min_new_tokens=K, do_sample=False,
use_cache=True)`, the whole call timed. Prefill timed separately as one forward of the prompts
(torch: `model(ids, use_cache=True, logits_to_keep=1)` under no_grad, which is what generate's
first forward computes; okapi: its generate's prefill, which likewise runs the LM head on the
last prompt position only). decode tokens/s = B·K / (median whole − median prefill); tokens_per_s_total =
B·K / median whole.

--attn picks torch's attention implementation (default sdpa; BLOOM supports only eager in
transformers and falls back to it: the torch JSON's "attn" says which ran). The machine may be
shared: rerun noisy cases, and compare like with like (same --threads on both sides).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers
from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM
from okapi_ids import splitmix_tokens  # benches/okapi_ids.py (the script's own directory)

# (name, hidden, layers, heads, ffn (LLaMA; BLOOM uses 4·hidden), vocab): model/src/init.rs PRESETS
PRESETS = {
    "tiny": (128, 4, 4, 344, 4096),
    "bench-5m": (256, 4, 4, 688, 4096),
    "bench-33m": (512, 8, 8, 1360, 8192),
    "gpt2-124m-llama": (768, 12, 12, 2048, 32000),
}

# (mode, arch, preset, B, T, K)
DEFAULT_CASES = [
    ("train", "llama", "bench-5m", 8, 128, 0),
    ("train", "llama", "bench-33m", 4, 256, 0),
    ("train", "bloom", "bench-5m", 8, 128, 0),
    ("train", "bloom", "bench-33m", 4, 256, 0),
    ("generate", "llama", "bench-5m", 8, 128, 128),
]

LR = 1e-4
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.05
MAX_GRAD_NORM = 1.0

# (key, label, higher is better)
TRAIN_METRICS = [
    ("step_ms_median", "step ms (median)", False),
    ("step_ms_min", "step ms (min)", False),
    ("tokens_per_s", "tokens/s", True),
    ("gflops", "GFLOP/s", True),
    ("fwd_ms_median", "forward+loss ms", False),
    ("bwd_ms_median", "backward ms", False),
    ("opt_ms_median", "clip+AdamW ms", False),
]
GENERATE_METRICS = [
    ("prefill_ms_median", "prefill ms", False),
    ("run_ms_median", "whole generate ms", False),
    ("decode_tokens_per_s", "decode tokens/s", True),
    ("tokens_per_s_total", "new tokens/s overall", True),
]


def case_name(c):
    mode, arch, preset, b, t, k = c
    return f"{mode}-{arch}-{preset}-B{b}-" + (f"T{t}" if mode == "train" else f"P{t}-K{k}")


def build_model(arch, preset, max_positions, attn, seed):
    """A randomly initialised float32 model of okapi's preset shape; returns (model, attn used)."""
    hidden, layers, heads, ffn, vocab = PRESETS[preset]
    if arch == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=hidden // heads,
            hidden_act="silu",
            max_position_embeddings=max_positions,
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
        cls = LlamaForCausalLM
    else:
        cfg = BloomConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            n_layer=layers,
            n_head=heads,
            layer_norm_epsilon=1e-5,
            apply_residual_connection_post_layernorm=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=True,
            initializer_range=0.02,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
        )
        cls = BloomForCausalLM
        if attn == "sdpa" and not getattr(cls, "_supports_sdpa", False):
            attn = "eager"
    torch.manual_seed(seed)
    model = cls._from_config(cfg, attn_implementation=attn, dtype=torch.float32)
    return model.to(torch.float32), model.config._attn_implementation


def train_flop(model, arch, b, t):
    """6·P_blocks·tokens + 6·C·V·tokens + 12·L·B·T²·C/2 (benches/train_step.rs)."""
    prefix = "model.layers." if arch == "llama" else "transformer.h."
    p_blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix) and p.dim() == 2)
    c, l, v = model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size
    n = b * t
    return 6 * p_blocks * n + 6 * c * v * n + 12 * l * b * t * t * c / 2


def torch_train(arch, preset, b, t, steps, warmup, attn, seed, threads):
    model, attn_used = build_model(arch, preset, max(2048, t), attn, seed)
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor(splitmix_tokens(seed, b * t, vocab), dtype=torch.long).view(b, t)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS
    )
    flop = train_flop(model, arch, b, t)
    step_t, zero_t, fwd_t, bwd_t, opt_t, losses = [], [], [], [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        t1 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        t4 = time.perf_counter()
        lv = loss.item()
        warm = i < warmup
        print(f"torch train: step {i + 1}/{warmup + steps}{' (warm-up)' if warm else ''} {(t4 - t0) * 1e3:.1f} ms, "
              f"loss {lv:.4f}, grad norm {float(norm):.4f}", file=sys.stderr)
        if warm:
            continue
        step_t.append(t4 - t0)
        zero_t.append(t1 - t0)
        fwd_t.append(t2 - t1)
        bwd_t.append(t3 - t2)
        opt_t.append(t4 - t3)
        losses.append(lv)
    med = statistics.median(step_t)
    return {
        "mode": "train", "arch": arch, "preset": preset, "backend": "torch-cpu", "attn": attn_used,
        "threads": torch.get_num_threads(), "batch_size": b, "seq_len": t, "steps": len(step_t), "warmup": warmup,
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms_median": med * 1e3, "step_ms_min": min(step_t) * 1e3, "tokens_per_s": b * t / med,
        "gflop_per_step": flop / 1e9, "gflops": flop / med / 1e9,
        "fwd_ms_median": statistics.median(fwd_t) * 1e3, "bwd_ms_median": statistics.median(bwd_t) * 1e3,
        "opt_ms_median": statistics.median(opt_t) * 1e3, "zero_ms_median": statistics.median(zero_t) * 1e3,
        "lr": LR, "loss_first": losses[0], "loss_last": losses[-1],
    }


def torch_generate(arch, preset, b, t, k, steps, warmup, attn, seed, threads):
    model, attn_used = build_model(arch, preset, max(2048, t + k), attn, seed)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.tensor(splitmix_tokens(seed, b * t, vocab), dtype=torch.long).view(b, t)
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=k, min_new_tokens=k, do_sample=False, use_cache=True, pad_token_id=3,
              num_beams=1, temperature=None, top_p=None, top_k=None)
    pre_t, whole_t = [], []
    for i in range(warmup + steps):
        with torch.no_grad():
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
            dp = time.perf_counter() - t0
            t1 = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, **kw)
            dt = time.perf_counter() - t1
        assert out.shape == (b, t + k), out.shape
        warm = i < warmup
        print(f"torch generate: run {i + 1}/{warmup + steps}{' (warm-up)' if warm else ''} prefill {dp * 1e3:.1f} ms, "
              f"whole {dt * 1e3:.1f} ms ({b * k / dt:.0f} new tokens/s)", file=sys.stderr)
        if not warm:
            pre_t.append(dp)
            whole_t.append(dt)
    mp, mw = statistics.median(pre_t), statistics.median(whole_t)
    decode = max(mw - mp, 1e-9)
    return {
        "mode": "generate", "arch": arch, "preset": preset, "backend": "torch-cpu", "attn": attn_used,
        "threads": torch.get_num_threads(), "batch_size": b, "prompt_len": t, "new_tokens": k,
        "steps": len(whole_t), "warmup": warmup, "params": sum(p.numel() for p in model.parameters()),
        "prefill_ms_median": mp * 1e3, "run_ms_median": mw * 1e3, "run_ms_min": min(whole_t) * 1e3,
        "decode_ms_median": decode * 1e3, "decode_tokens_per_s": b * k / decode, "tokens_per_s_total": b * k / mw,
        "prefill_tokens_per_s": b * t / mp,
    }


def run_okapi(binary, case, a):
    mode, arch, preset, b, t, k = case
    cmd = [binary, "bench", mode, "--arch", arch, "--preset", preset, "--batch-size", str(b), "--seq-len", str(t),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed)]
    if mode == "generate":
        cmd += ["--new-tokens", str(k)]
    print("$ " + " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if a.verbose else subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"okapi failed ({p.returncode}): {(p.stderr or '').strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fmt(x):
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--okapi", default=os.path.join(root, "target", "release", "okapi-train"), help="okapi-train binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="measured steps / generate calls per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names (default: all)")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="torch attention implementation")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json-out", help="append both JSON objects of every case to this file (JSON lines)")
    ap.add_argument("--verbose", action="store_true", help="show okapi's per-step progress")
    a = ap.parse_args()

    filters = [f for f in a.cases.split(",") if f]
    cases = [c for c in DEFAULT_CASES if not filters or any(f in case_name(c) for f in filters)]
    if not cases:
        sys.exit(f"--cases {a.cases}: no case matches (cases: {', '.join(case_name(c) for c in DEFAULT_CASES)})")
    if not os.path.exists(a.okapi):
        sys.exit(f"{a.okapi}: not found (cargo build --release --bin okapi-train, or --okapi PATH)")
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; okapi {a.okapi}", file=sys.stderr)

    results = []
    for case in cases:
        name = case_name(case)
        mode, arch, preset, b, t, k = case
        print(f"\n== {name}", file=sys.stderr)
        ok = run_okapi(a.okapi, case, a)
        if mode == "train":
            th = torch_train(arch, preset, b, t, a.steps, a.warmup, a.attn, a.seed, a.threads)
        else:
            th = torch_generate(arch, preset, b, t, k, a.steps, a.warmup, a.attn, a.seed, a.threads)
        if ok.get("params") != th["params"]:
            print(f"warning: {name}: okapi has {ok.get('params')} parameters, torch {th['params']}", file=sys.stderr)
        print(f"okapi {name}: {json.dumps(ok)}")
        print(f"torch {name}: {json.dumps(th)}")
        sys.stdout.flush()
        if a.json_out:
            with open(a.json_out, "a") as f:
                for side, v in (("okapi", ok), ("torch", th)):
                    f.write(json.dumps({"case": name, "side": side, **v}) + "\n")
        results.append((name, mode, ok, th))

    print(f"\n### okapi vs torch ({a.threads} threads, torch attn {a.attn}, {a.steps} measured after {a.warmup} warm-up)\n")
    print("| case | metric | okapi | torch | okapi/torch |")
    print("|---|---|---:|---:|---:|")
    for name, mode, ok, th in results:
        metrics = TRAIN_METRICS if mode == "train" else GENERATE_METRICS
        for key, label, higher in metrics:
            o, t_ = ok.get(key), th.get(key)
            ratio = f"{o / t_:.2f}×" if o is not None and t_ else "—"
            arrow = "↑" if higher else "↓"
            print(f"| {name} | {label} {arrow} | {fmt(o)} | {fmt(t_)} | {ratio} |")
    print("\n↑: higher is better (okapi/torch > 1: okapi faster); ↓: lower is better (okapi/torch < 1: okapi faster).")


if __name__ == "__main__":
    main()
