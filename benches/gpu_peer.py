#!/usr/bin/env python3
"""The peer of okapi's CUDA benchmarks, on the same GPU in the same run (issue 15): what PyTorch
(cuBLAS, flash attention, fused AdamW) and transformers do with the shapes okapi is timed at.

    python3 benches/gpu_peer.py --out peer.jsonl [--budget-s 170] [--peak-tflops 989]
        [--sft gpt2-124m-llama:16x1024,llama-1b:4x1024] [--sft-modes bf16-amp,bf16,f32]
    python3 benches/gpu_peer.py --dry-run --out /tmp/peer.jsonl   # tiny shapes on the CPU

Without CUDA (and without --dry-run) it refuses in one line, exit code 2. Every measurement is
one JSON line on stdout and in --out (flushed as it comes, so a cut run keeps what it measured):
"id" (the stable key `scripts/device_table.py` pairs with okapi's rows), "name", "shape",
"dtype", "median_ms" and "min_ms" after "warmup" untimed calls over "reps" timed ones, the work
("flop" and "tflops", or "bytes" and "gbps"), and "torch", "transformers", "device". A
measurement that fails (out of memory, say) is a line with "error"; one skipped because the run
ran past --budget-s is a line with "skipped". The first line (id "meta") holds the versions, the
card and the peak FLOP/s assumed for MFU.

Timing: kernels with CUDA events around each call (warm-up 5, median of 20); training steps with
torch.cuda.synchronize() and time.perf_counter() around each whole step (warm-up 3, median of
10). Inputs are random normals (never zeros), on the device before timing.

What is measured (the okapi row it faces, from `scripts/device_check.sh run`, in brackets):
- torch.matmul bf16 (cuBLAS) at 4096³ and 8192³, and f32 at 4096³ with TF32 disabled (okapi's
  exact f32 mode); FLOP = 2·n³. [kernels bench `matmul.square` NxNxN, --precision bf16 / f32]
- scaled_dot_product_attention, causal, bf16, flash backend forced, forward and forward+backward
  (torch.autograd.grad of q, k, v), tensors in okapi's (B, T, H, D) layout viewed as (B, H, T, D):
  B·H = 64 at T 2048 D 128 as (B4, H16) — the issue's shape — and as (B2, H32) — the shape the
  okapi bench runs (llama-7b:2x2048) — and gpt2-124m-llama's attention at the kernels bench's
  B4 T256 (H12 D64). FLOP as okapi counts them: forward 4·B·H·T²·D / 2 (causal), backward 2.5×
  the forward, so forward+backward 3.5×. [attention_fwd, attention_bwd]
- torch.optim.AdamW(fused=True) step over gpt2-124m-llama's parameter tensors in fp32
  (134 105 856 parameters, the P of okapi's kernels bench; lr 3e-4, betas 0.9/0.95, eps 1e-8,
  weight decay 0.1 as there), bytes = 28·P (p, g, m, v read; p, m, v written), as okapi counts
  its AdamW kernel. [adamw fused]
- softmax over rows, f32, N×V = 1024×32000 (gpt2-124m-llama at B4 T256): forward (8·N·V bytes)
  and backward (torch._softmax_backward_data, 12·N·V bytes). [softmax_fwd, softmax_bwd]
- device-to-device copy (dst.copy_(src), f32), 64 MiB (okapi's bytes ceiling) and 1 GiB (the
  card's copy bandwidth, the yardstick of the ≥ 70 % targets); bytes = read + written.
  [ceiling_memcpy]
- one SFT step of transformers' LlamaForCausalLM, random init from a config equal to okapi's
  preset (LlamaConfig as `okapi-train init --arch llama` writes it, untied head, RoPE 1e4), SDPA
  attention, use_cache off, at gpt2-124m-llama B16 T1024 and llama-1b B4 T1024: zero_grad, forward
  with labels = input ids (shifted mean cross-entropy), backward, clip the global norm to 1.0,
  AdamW(fused) lr 1e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.05 on tensors of ≥ 2 dims —
  what `okapi-train bench train` times. Modes: "bf16-amp" (fp32 weights and optimizer,
  torch.autocast bf16 — the mixed precision of HF Trainer's --bf16, and what okapi's bf16 mode
  is: bf16 operands in matmul and attention, fp32 elsewhere), "bf16" (the model cast to bf16,
  bf16 AdamW state) and "f32" (TF32 disabled). Token ids: okapi's splitmix64 stream (seed 42),
  as benches/torch_step.py. tokens/s = B·T / median step; MFU = 6·params·tokens/s / the card's
  peak dense bf16 FLOP/s (H100 SXM and H200: 989 TFLOP/s; printed in "meta"); "tflops_model"
  uses okapi's model-FLOP count (6·P_blocks·tokens + 6·C·V·tokens + 12·L·B·T²·C/2).
  [okapi-train bench train --precision bf16 / f32]

Presets are read from model/src/init.rs (the PRESETS table) when this file sits in the
repository, else from the copy below. On an H100 the whole run takes about 1–1.5 minutes.
"""

import argparse
import contextlib
import gc
import json
import os
import re
import statistics
import sys
import time
from okapi_ids import splitmix_tokens  # benches/okapi_ids.py (the script's own directory)

# (hidden, layers, heads, kv heads, ffn, vocab): a copy of okapi's PRESETS (model/src/init.rs)
PRESETS_COPY = {
    "tiny": (128, 4, 4, 4, 344, 4096),
    "gpt2-124m-llama": (768, 12, 12, 12, 2048, 32000),
    "llama-1b": (2048, 16, 32, 8, 5632, 32000),
}
# name substring -> (dense bf16 TFLOP/s, fp32 non-tensor TFLOP/s), first match wins
PEAKS = [
    ("H100 NVL", 835.0, 60.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100", 989.0, 67.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0, 67.0),
    ("H800", 989.0, 67.0),
    ("A100", 312.0, 19.5),
]
KERNEL_WARMUP, KERNEL_REPS = 5, 20
STEP_WARMUP, STEP_REPS = 3, 10


def read_presets():
    """okapi's PRESETS from model/src/init.rs, else the copy."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "src", "init.rs")
    try:
        with open(path) as f:
            src = f.read()
    except OSError:
        return dict(PRESETS_COPY), "copy in gpu_peer.py"
    # `preset("tiny", Arch::Llama, [hidden, layers, heads, kv heads, ffn, vocab])`
    rows = re.findall(r'preset\("([\w.-]+)",\s*Arch::\w+,\s*\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]\)', src)
    presets = {name: tuple(int(x) for x in rest) for name, *rest in rows}
    if not presets:
        return dict(PRESETS_COPY), "copy in gpu_peer.py (model/src/init.rs unparsed)"
    for name, shape in PRESETS_COPY.items():
        if presets.get(name) != shape:
            print(f"gpu_peer.py: warning: preset {name} is {presets.get(name)} in model/src/init.rs, {shape} in the copy; using init.rs", file=sys.stderr)
    return presets, "model/src/init.rs"


def param_shapes(preset):
    """The LLaMA parameter tensors of a preset, as okapi and transformers lay them out."""
    c, layers, hq, hkv, f, v = preset
    d = c // hq
    shapes = [(v, c)]
    for _ in range(layers):
        shapes += [(c,), (hq * d, c), (hkv * d, c), (hkv * d, c), (c, hq * d), (c,), (f, c), (f, c), (c, f)]
    return shapes + [(c,), (v, c)]


def okapi_param_count(preset):
    """The P of benches/kernels.rs: heads·V·C + L·(2·C·Hq·D + 2·C·Hkv·D + 3·C·F + 2·C) + C."""
    c, layers, hq, hkv, f, v = preset
    d = c // hq
    return 2 * v * c + layers * (2 * c * hq * d + 2 * c * hkv * d + 3 * c * f + 2 * c) + c


def parse_bxt(s):
    """'NAME:BxT' -> (NAME, B, T)."""
    name, bt = s.split(":")
    b, t = bt.split("x")
    return name, int(b), int(t)


def peak_of(device_name, override):
    if override:
        return override, None, f"--peak-tflops {override}"
    for key, bf16, fp32 in PEAKS:
        if key in device_name:
            return bf16, fp32, f"{key}: dense bf16 {bf16} TFLOP/s, fp32 (no TF32) {fp32} TFLOP/s (datasheet)"
    return None, None, f"unknown card '{device_name}': no MFU (pass --peak-tflops)"


class Runner:
    def __init__(self, torch, dev, out, meta, budget_s):
        self.torch, self.dev, self.out, self.meta = torch, dev, out, meta
        self.cuda = dev.type == "cuda"
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def emit(self, rec):
        rec = {**rec, **self.meta}
        line = json.dumps(rec)
        print(line, flush=True)
        self.out.write(line + "\n")
        self.out.flush()

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_kernel(self, fn, warmup=KERNEL_WARMUP, reps=KERNEL_REPS):
        """ms per call: CUDA events around each call (perf_counter on the CPU), median and min."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for a, b in ev:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize()
            ts = [a.elapsed_time(b) for a, b in ev]
        else:
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts), min(ts), warmup, reps

    def measure(self, rid, name, shape, dtype, body):
        """Runs body() -> dict of fields; a failure or an exhausted budget is a line too."""
        base = {"id": rid, "name": name, "shape": shape, "dtype": dtype}
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.budget_s:
            self.emit({**base, "skipped": f"time budget {self.budget_s:.0f} s spent ({elapsed:.0f} s)"})
            return
        try:
            self.emit({**base, **body()})
        except Exception as e:  # noqa: BLE001 — every failure becomes a line, the run goes on
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:400]
            print(f"gpu_peer.py: {rid}: {msg}", file=sys.stderr)
            self.emit({**base, "error": msg})
        finally:
            gc.collect()
            if self.cuda:
                self.torch.cuda.empty_cache()


def flops_rec(ms, mn, w, r, flop):
    return {"median_ms": ms, "min_ms": mn, "warmup": w, "reps": r, "flop": flop, "tflops": flop / (ms * 1e-3) / 1e12}


def bytes_rec(ms, mn, w, r, nbytes):
    return {"median_ms": ms, "min_ms": mn, "warmup": w, "reps": r, "bytes": nbytes, "gbps": nbytes / (ms * 1e-3) / 1e9}


def bench_matmul(run, sizes_bf16, sizes_f32):
    torch, dev = run.torch, run.dev

    def case(n, dtype):
        def body():
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            out = torch.empty(n, n, device=dev, dtype=dtype)
            rec = flops_rec(*run.time_kernel(lambda: torch.matmul(a, b, out=out)), 2.0 * n**3)
            if dtype == torch.float32:
                rec["allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
            return rec

        return body

    for n in sizes_bf16:
        run.measure(f"matmul.bf16.{n}", "torch.matmul bf16 (cuBLAS)", f"{n}x{n}x{n}", "bf16", case(n, torch.bfloat16))
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        for n in sizes_f32:
            run.measure(f"matmul.f32.{n}", "torch.matmul f32, TF32 off (cuBLAS)", f"{n}x{n}x{n}", "f32", case(n, torch.float32))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev[0]
        torch.set_float32_matmul_precision(prev[1])


def bench_sdpa(run, shapes):
    torch, dev = run.torch, run.dev
    F = torch.nn.functional
    if run.cuda:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)  # noqa: E731
        how = "flash"
    else:
        backend = contextlib.nullcontext
        how = "default (CPU dry run)"
    for b, h, t, d in shapes:
        fwd_flop = 4.0 * b * h * t * t * d * 0.5
        shape = f"B{b}xT{t}xH{h}xD{d}:causal"

        def tensors(grad):
            # okapi's (B, T, H, D) layout, viewed as SDPA's (B, H, T, D)
            mk = lambda: torch.randn(b, t, h, d, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_(grad)  # noqa: E731
            return mk(), mk(), mk()

        def fwd():
            q, k, v = tensors(False)
            with torch.no_grad(), backend():
                rec = flops_rec(*run.time_kernel(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), fwd_flop)
            return {**rec, "backend": how}

        def fwd_bwd():
            q, k, v = tensors(True)
            dout = torch.randn(b, t, h, d, device=dev, dtype=torch.bfloat16).transpose(1, 2)

            def step():
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                torch.autograd.grad(o, (q, k, v), dout)

            with backend():
                rec = flops_rec(*run.time_kernel(step), 3.5 * fwd_flop)
            return {**rec, "backend": how}

        key = f"B{b}.H{h}.T{t}.D{d}"
        run.measure(f"sdpa.fwd.{key}", f"scaled_dot_product_attention causal fwd ({how})", shape, "bf16", fwd)
        run.measure(f"sdpa.fwd_bwd.{key}", f"scaled_dot_product_attention causal fwd+bwd ({how})", shape, "bf16", fwd_bwd)


def bench_adamw(run, preset_name, preset):
    torch, dev = run.torch, run.dev
    shapes = param_shapes(preset)
    p_count = sum(int(torch.Size(s).numel()) for s in shapes)
    assert p_count == okapi_param_count(preset), (p_count, okapi_param_count(preset))

    def body():
        params = [torch.nn.Parameter(torch.randn(s, device=dev) * 0.02) for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
        rec = bytes_rec(*run.time_kernel(opt.step), 28.0 * p_count)
        return {**rec, "params": p_count, "tensors": len(shapes), "preset": preset_name}

    run.measure(f"adamw.fused.P{p_count}", "torch.optim.AdamW(fused=True).step", f"P{p_count}", "f32", body)


def bench_softmax(run, n, v):
    torch, dev = run.torch, run.dev
    shape = f"{n}x{v}"

    def fwd():
        x = torch.randn(n, v, device=dev) * 2.0
        return bytes_rec(*run.time_kernel(lambda: torch.softmax(x, dim=-1)), 8.0 * n * v)

    def bwd():
        y = torch.softmax(torch.randn(n, v, device=dev) * 2.0, dim=-1)
        dy = torch.randn(n, v, device=dev)
        return bytes_rec(*run.time_kernel(lambda: torch._softmax_backward_data(dy, y, -1, torch.float32)), 12.0 * n * v)

    run.measure(f"softmax_fwd.{shape}", "torch.softmax over rows", shape, "f32", fwd)
    run.measure(f"softmax_bwd.{shape}", "torch._softmax_backward_data over rows", shape, "f32", bwd)


def bench_copy(run, sizes_mib):
    torch, dev = run.torch, run.dev
    for mib in sizes_mib:
        n = mib * (1 << 20) // 4

        def body():
            src = torch.randn(n, device=dev)
            dst = torch.empty_like(src)
            return bytes_rec(*run.time_kernel(lambda: dst.copy_(src)), 2.0 * 4 * n)

        label = f"{mib // 1024}GiB" if mib % 1024 == 0 else f"{mib}MiB"
        run.measure(f"copy.{label}", "device-to-device copy (dst.copy_(src), read+write counted)", label, "f32", body)


def bench_sft(run, presets, cases, modes, peaks):
    torch, dev = run.torch, run.dev
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    peak_bf16, peak_fp32 = peaks
    for preset_name, b, t in cases:
        for mode in modes:

            def body():
                if preset_name not in presets:
                    raise KeyError(f"unknown preset {preset_name} (known: {', '.join(sorted(presets))})")
                c, layers, hq, hkv, f, v = presets[preset_name]
                cfg = LlamaConfig(
                    vocab_size=v, hidden_size=c, intermediate_size=f, num_hidden_layers=layers,
                    num_attention_heads=hq, num_key_value_heads=hkv, head_dim=c // hq, hidden_act="silu",
                    max_position_embeddings=max(t, 2048), rms_norm_eps=1e-5, rope_theta=10000.0,
                    attention_bias=False, mlp_bias=False, attention_dropout=0.0, tie_word_embeddings=False,
                    initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=3, use_cache=False,
                )
                cfg._attn_implementation = "sdpa"
                torch.manual_seed(1234)
                with torch.device(dev):
                    model = LlamaForCausalLM(cfg)
                assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
                if mode == "bf16":
                    model = model.to(torch.bfloat16)
                model.train()
                params = sum(p.numel() for p in model.parameters())
                p_blocks = sum(p.numel() for n_, p in model.named_parameters() if n_.startswith("model.layers.") and p.dim() == 2)
                decay = [p for p in model.parameters() if p.dim() >= 2]
                no_decay = [p for p in model.parameters() if p.dim() < 2]
                opt = torch.optim.AdamW(
                    [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                    lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True,
                )
                ids = torch.tensor(splitmix_tokens(42, b * t, v), dtype=torch.long, device=dev).view(b, t)
                amp = torch.autocast(dev.type, dtype=torch.bfloat16) if mode == "bf16-amp" else contextlib.nullcontext()
                tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
                if mode == "f32":
                    torch.backends.cuda.matmul.allow_tf32 = False
                    torch.backends.cudnn.allow_tf32 = False
                try:
                    if run.cuda:
                        torch.cuda.reset_peak_memory_stats()
                    losses, ts = [], []
                    for i in range(run.step_warmup + run.step_reps):
                        run.sync()
                        t0 = time.perf_counter()
                        opt.zero_grad(set_to_none=True)
                        with amp:
                            loss = model(input_ids=ids, labels=ids).loss
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                        opt.step()
                        run.sync()
                        dt = time.perf_counter() - t0
                        losses.append(float(loss.detach()))
                        if i >= run.step_warmup:
                            ts.append(dt)
                finally:
                    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
                med = statistics.median(ts)
                tokens = b * t
                model_flop = 6.0 * p_blocks * tokens + 6.0 * c * v * tokens + 12.0 * layers * b * t * t * c / 2
                rec = {
                    "preset": preset_name, "batch": b, "seq": t, "mode": mode, "attn": model.config._attn_implementation,
                    "params": params, "median_ms": med * 1e3, "min_ms": min(ts) * 1e3,
                    "warmup": run.step_warmup, "reps": run.step_reps, "tokens_per_s": tokens / med,
                    "tflop_per_step_6nd": 6.0 * params * tokens / 1e12, "tflop_per_step_model": model_flop / 1e12,
                    "tflops_model": model_flop / med / 1e12,
                    "mfu": 6.0 * params * tokens / med / (peak_bf16 * 1e12) if peak_bf16 else None,
                    "loss_first": losses[0], "loss_last": losses[-1],
                    "finite": all(x == x and abs(x) != float("inf") for x in losses),
                }
                if mode == "f32" and peak_fp32:
                    rec["mfu_vs_fp32_peak"] = 6.0 * params * tokens / med / (peak_fp32 * 1e12)
                if run.cuda:
                    rec["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                del model, opt
                return rec

            what = {"bf16-amp": "bf16 autocast, fp32 weights + AdamW", "bf16": "bf16 weights + AdamW", "f32": "f32, TF32 off"}[mode]
            run.measure(
                f"sft.{mode}.{preset_name}.B{b}.T{t}",
                f"transformers {transformers.__version__} LlamaForCausalLM SFT step ({what}; SDPA; clip 1.0; AdamW fused)",
                f"{preset_name}:B{b}xT{t}", mode, body,
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="JSON lines file (overwritten)")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU: checks the script, measures nothing")
    ap.add_argument("--budget-s", type=float, default=170.0, help="skip (as 'skipped' lines) what would start after this many seconds")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: from the card's name)")
    ap.add_argument("--sft", default="gpt2-124m-llama:16x1024,llama-1b:4x1024", help="PRESET:BxT[,...]")
    ap.add_argument("--sft-modes", default="bf16-amp,bf16,f32")
    ap.add_argument("--attn", default="4x16x2048x128,2x32x2048x128,4x12x256x64", help="BxHxTxD[,...] causal")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu_peer.py: no PyTorch in this python3 (needs torch and transformers): nothing measured", file=sys.stderr)
        sys.exit(2)
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu_peer.py: no CUDA device visible to PyTorch: nothing measured (use --dry-run to check the script on the CPU)", file=sys.stderr)
        sys.exit(2)
    import transformers

    presets, source = read_presets()
    if a.dry_run:
        dev = torch.device("cpu")
        device_name = "cpu (dry run)"
        mm_bf16, mm_f32, copies = [64], [64], [1]
        attn = [(1, 2, 64, 16)]
        adamw_preset, softmax = "tiny", (8, 1000)
        sft = [("tiny", 2, 16)]
    else:
        dev = torch.device("cuda")
        device_name = torch.cuda.get_device_name(0)
        mm_bf16, mm_f32, copies = [4096, 8192], [4096], [64, 1024]
        attn = [tuple(int(x) for x in s.split("x")) for s in a.attn.split(",") if s]
        # the kernels bench's gpt2-124m-llama case: B4 T256 -> N = 1024 rows of V = 32000
        adamw_preset, softmax = "gpt2-124m-llama", (4 * 256, presets["gpt2-124m-llama"][5])
        sft = [parse_bxt(s) for s in a.sft.split(",") if s]
    peak_bf16, peak_fp32, peak_note = peak_of(device_name, a.peak_tflops)
    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device_name}
    with open(a.out, "w") as out:
        run = Runner(torch, dev, out, meta, a.budget_s)
        run.step_warmup, run.step_reps = (1, 2) if a.dry_run else (STEP_WARMUP, STEP_REPS)
        info = {"id": "meta", "name": "gpu_peer.py", "peak_bf16_tflops": peak_bf16, "peak_fp32_tflops": peak_fp32, "peak_assumed": peak_note, "presets_from": source, "dry_run": a.dry_run}
        if run.cuda:
            p = torch.cuda.get_device_properties(0)
            info.update({"sm_count": p.multi_processor_count, "memory_gib": p.total_memory / 2**30, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
        run.emit(info)
        print(f"gpu_peer.py: peak assumed for MFU: {peak_note}", file=sys.stderr)
        bench_matmul(run, mm_bf16, mm_f32)
        bench_sdpa(run, attn)
        bench_adamw(run, adamw_preset, presets[adamw_preset])
        bench_softmax(run, *softmax)
        bench_copy(run, copies)
        bench_sft(run, presets, sft, [m for m in a.sft_modes.split(",") if m], (peak_bf16, peak_fp32))
        run.emit({"id": "done", "name": "gpu_peer.py", "total_s": time.perf_counter() - run.t0})
    print(f"gpu_peer.py: done in {time.perf_counter() - run.t0:.1f} s, {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
