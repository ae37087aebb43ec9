#!/usr/bin/env python3
"""LoRA vs full fine-tuning, okapi vs PyTorch + peft: one SFT step's tokens/s and the process's
peak memory, same shapes, same work, same threads.

    cargo build --release --bin okapi-train
    /opt/pyref/bin/python benches/lora.py [--threads 2] [--steps 5] [--warmup 1] [--r 16]
        [--cases bench-33m,gpt2-124m-llama] [--okapi target/release/okapi-train]

Each measurement runs in its own process, so its peak resident memory (VmHWM) is its own:
`okapi-train bench train [--lora-r R]` and this script with `--torch-one` (the model of
benches/compare.py — the same preset shape, initialisation and token ids — trained with
torch.optim.AdamW; with LoRA wrapped by peft.get_peft_model(LoraConfig(r=R, lora_alpha=2R,
target_modules="all-linear", lora_dropout=0)) and only the adapters in the optimizer). The
step is what `okapi-train sft` does: zero the gradients, forward with labels = input ids,
backward, clip the norm to 1.0, AdamW lr 1e-4, betas 0.9/0.95, weight decay 0.05 on ≥2-dim
tensors. Medians after the warm-up steps. Prints a markdown table (benches/RESULTS.md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# (preset, B, T)
CASES = [("bench-33m", 4, 256), ("gpt2-124m-llama", 2, 256)]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def torch_one(preset, b, t, r, steps, warmup, threads, seed):
    import torch

    import compare

    torch.set_num_threads(threads)
    model, _ = compare.build_model("llama", preset, max(2048, t), "sdpa", seed)
    if r:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", lora_dropout=0.0))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    ids = torch.tensor(compare.splitmix_tokens(seed, b * t, model.config.vocab_size), dtype=torch.long).view(b, t)
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": compare.WEIGHT_DECAY},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=compare.LR, betas=compare.BETAS, eps=compare.EPS)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, compare.MAX_GRAD_NORM)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"step_ms_median": med * 1e3, "tokens_per_s": b * t / med, "trainable_params": sum(p.numel() for p in params),
            "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--cases", default="")
    ap.add_argument("--okapi", default="target/release/okapi-train")
    ap.add_argument("--torch-one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_one:
        preset, b, t, r = json.loads(a.torch_one)
        print(json.dumps(torch_one(preset, b, t, r, a.steps, a.warmup, a.threads, a.seed)))
        return
    rows = []
    for preset, b, t in [c for c in CASES if not a.cases or any(f in c[0] for f in a.cases.split(","))]:
        for r in (0, a.r):
            cmd = [a.okapi, "bench", "train", "--arch", "llama", "--preset", preset, "--batch-size", str(b), "--seq-len", str(t),
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed)]
            ok = run(cmd + (["--lora-r", str(r)] if r else []))
            tr = run([sys.executable, os.path.abspath(__file__), "--torch-one", json.dumps([preset, b, t, r]), "--steps", str(a.steps),
                      "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed)])
            assert ok["trainable_params"] == tr["trainable_params"], (ok["trainable_params"], tr["trainable_params"])
            rows.append((f"{preset} B={b} T={t}", f"LoRA r {r} all-linear" if r else "full", ok, tr))
            print(json.dumps({"case": rows[-1][:2], "okapi": ok, "torch": tr}), file=sys.stderr)
    print("| model | training | trainable params | okapi tokens/s | torch+peft tokens/s | okapi/torch | okapi peak RSS | torch peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for model, how, ok, tr in rows:
        print(f"| {model} | {how} | {ok['trainable_params']:,} | {ok['tokens_per_s']:.0f} ({ok['step_ms_median']:.0f} ms) | "
              f"{tr['tokens_per_s']:.0f} ({tr['step_ms_median']:.0f} ms) | {ok['tokens_per_s'] / tr['tokens_per_s']:.2f}× | "
              f"{ok['peak_rss_mib']:.0f} MiB | {tr['peak_rss_mib']:.0f} MiB |")


if __name__ == "__main__":
    main()
