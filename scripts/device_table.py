#!/usr/bin/env python3
"""The last table of `scripts/device_check.sh run`: every okapi kernel and training step beside
its peer measured on the same GPU in the same run, then the GPU test suites' counts (issue 15).

    python3 scripts/device_table.py OUT_DIR [--sft gpt2-124m-llama:16x1024,llama-1b:4x1024]

Reads, from OUT_DIR (what device_check.sh writes there):
  peer.jsonl             benches/gpu_peer.py's JSON lines (id, median_ms, tflops / gbps, ...)
  bench.jsonl            okapi-train bench's JSON lines (one per run; {"error": rc} for a failed one)
  kernels-cuda-f32.log   the kernels bench's `RESULT kernel=.. variant=.. preset=.. shape=..` lines,
  kernels-cuda-bf16.log  per backend and precision
  kernels-wgpu.log
  cuda_compile.log, cuda_ops.log, cuda_conformance.log, lora.log, offload.log, wgpu_conformance.log,
  wgpu_model.log
                         the test binaries' output ("test result: ok. N passed; M failed; ...")
  status.txt             "PART EXIT_CODE SECONDS" per part of the run ("skipped" for a part that
                         would have started past the deadline)
  gpu.txt                nvidia-smi's name, driver, memory

Every expected row is printed: a value that is absent is "missing" (the log or the line is not
there), "error ..." or "skipped ..." (as the peer or the bench reported it) — never dropped.
ratio = okapi / peer of a rate (TFLOP/s, GB/s, tokens/s), so higher is better everywhere and
1.00× is parity; "target" is issue 15's goal where it sets one. The peer's ids (the "id" of
peer.jsonl) are in KERNEL_ROWS and "sft.MODE.PRESET.Bb.Tt". Markdown, so it can be pasted into
benches/RESULTS.md.
"""

import argparse
import json
import os
import re
import sys

GPT2 = "gpt2-124m-llama"
P_GPT2 = 134105856  # the kernels bench's P of gpt2-124m-llama (benches/kernels.rs)
N_GPT2, V = 4 * 256, 32000  # its B4 T256 rows × vocabulary

# (what, okapi source, peer, peer id in peer.jsonl, metric, target)
# okapi source: (log, kernel, variant, preset, shape) of a RESULT line; a list of them is summed
# as times (forward + backward); ("copy", log) is that log's device-copy ceiling.
F32, BF16, WGPU = "kernels-cuda-f32", "kernels-cuda-bf16", "kernels-wgpu"
ATT_S, ATT_L = "B4xT256xH12/12xD64:causal", "B2xT2048xH32/32xD128:causal"
KERNEL_ROWS = [
    ("matmul 4096³ f32 (okapi exact)", (F32, "matmul.square", "-", "square", "4096x4096x4096"), "cuBLAS f32, TF32 off", "matmul.f32.4096", "tflops", None),
    ("matmul 4096³ bf16", (BF16, "matmul.square", "-", "square", "4096x4096x4096"), "cuBLAS bf16", "matmul.bf16.4096", "tflops", 0.6),
    ("matmul 8192³ bf16", (BF16, "matmul.square", "-", "square", "8192x8192x8192"), "cuBLAS bf16", "matmul.bf16.8192", "tflops", 0.6),
    ("attention fwd bf16 B4 T256 H12 D64 (gpt2)", (BF16, "attention_fwd", "fused", GPT2, ATT_S), "SDPA flash fwd", "sdpa.fwd.B4.H12.T256.D64", "tflops", None),
    ("attention fwd+bwd bf16 B4 T256 H12 D64", [(BF16, "attention_fwd", "fused", GPT2, ATT_S), (BF16, "attention_bwd", "-", GPT2, ATT_S)], "SDPA flash fwd+bwd", "sdpa.fwd_bwd.B4.H12.T256.D64", "tflops", 0.6),
    ("attention fwd bf16 B2 T2048 H32 D128", (BF16, "attention_fwd", "fused", "llama-7b", ATT_L), "SDPA flash fwd", "sdpa.fwd.B2.H32.T2048.D128", "tflops", None),
    ("attention fwd+bwd bf16 B2 T2048 H32 D128", [(BF16, "attention_fwd", "fused", "llama-7b", ATT_L), (BF16, "attention_bwd", "-", "llama-7b", ATT_L)], "SDPA flash fwd+bwd", "sdpa.fwd_bwd.B2.H32.T2048.D128", "tflops", 0.6),
    (f"adamw fused P{P_GPT2} f32", (F32, "adamw", "fused", GPT2, f"P{P_GPT2}"), "AdamW(fused=True)", f"adamw.fused.P{P_GPT2}", "gbps", None),
    ("  adamw vs copy bandwidth", (F32, "adamw", "fused", GPT2, f"P{P_GPT2}"), "copy 1 GiB", "copy.1GiB", "gbps", 0.7),
    (f"softmax fwd {N_GPT2}x{V} f32", (F32, "softmax_fwd", "-", GPT2, f"{N_GPT2}x{V}"), "torch.softmax", f"softmax_fwd.{N_GPT2}x{V}", "gbps", None),
    ("  softmax fwd vs copy bandwidth", (F32, "softmax_fwd", "-", GPT2, f"{N_GPT2}x{V}"), "copy 1 GiB", "copy.1GiB", "gbps", 0.7),
    (f"softmax bwd {N_GPT2}x{V} f32", (F32, "softmax_bwd", "-", GPT2, f"{N_GPT2}x{V}"), "softmax backward", f"softmax_bwd.{N_GPT2}x{V}", "gbps", None),
    ("device copy 64 MiB (median)", ("copy", F32), "copy 64 MiB", "copy.64MiB", "gbps", None),
    ("wgpu matmul 4096³ f32", (WGPU, "matmul.square", "-", "square", "4096x4096x4096"), "cuBLAS f32, TF32 off", "matmul.f32.4096", "tflops", None),
    (f"wgpu adamw fused P{P_GPT2} f32", (WGPU, "adamw", "fused", GPT2, f"P{P_GPT2}"), "AdamW(fused=True)", f"adamw.fused.P{P_GPT2}", "gbps", None),
    (f"wgpu softmax fwd {N_GPT2}x{V} f32", (WGPU, "softmax_fwd", "-", GPT2, f"{N_GPT2}x{V}"), "torch.softmax", f"softmax_fwd.{N_GPT2}x{V}", "gbps", None),
    ("wgpu device copy 64 MiB (median)", ("copy", WGPU), "copy 64 MiB", "copy.64MiB", "gbps", None),
]
# okapi precision -> (peer mode, note), one training row each
SFT_PAIRS = [("bf16", "bf16-amp", 1.0), ("bf16", "bf16", None), ("f32", "f32", None)]
SFT_PEER_NAME = {"bf16-amp": "HF+SDPA bf16 autocast", "bf16": "HF+SDPA pure bf16", "f32": "HF+SDPA f32, TF32 off"}
# (what, log, exit-code key in status.txt, per-stamp prefixes to count)
SUITES = [
    ("NVRTC compile (cuda_compile)", "cuda_compile.log", "compile", []),
    ("cuda ops conformance (every op)", "cuda_ops.log", "ops", [("f32", "cuda::"), ("bf16", "cuda_bf16::")]),
    ("cuda_conformance (models, SFT)", "cuda_conformance.log", "conformance", []),
    ("LoRA on CUDA vs PEFT (lora)", "lora.log", "lora", []),
    ("offloaded AdamW step, pinned (offload)", "offload.log", "offload", []),
    ("wgpu conformance (Vulkan)", "wgpu_conformance.log", "wgpu", []),
    ("wgpu model + commands (Vulkan)", "wgpu_model.log", "wgpu_model", []),
]


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def json_lines(path):
    text = read(path)
    if text is None:
        return None
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def kernel_results(path):
    """RESULT lines of a kernels bench log -> {(kernel, variant, preset, shape): {field: value}}."""
    text = read(path)
    if text is None:
        return None
    rows = {}
    for line in text.splitlines():
        if not line.startswith("RESULT "):
            continue
        f = dict(kv.split("=", 1) for kv in line[len("RESULT "):].split() if "=" in kv)
        rows[(f.get("kernel"), f.get("variant"), f.get("preset"), f.get("shape"))] = f
    return rows


def num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v else None  # nan -> None


class Missing(str):
    """A cell that holds no number: 'missing', 'error ...', 'skipped ...'."""


def fmt_rate(v, metric):
    if isinstance(v, Missing):
        return str(v)
    if metric == "tflops":
        return f"{v:.1f} TFLOP/s" if v >= 1 else f"{v * 1e3:.1f} GFLOP/s"
    if metric == "gbps":
        return f"{v:.0f} GB/s"
    return f"{v:.0f} tok/s"


def okapi_kernel(logs, src, metric):
    """okapi's rate for a KERNEL_ROWS source, or Missing."""
    if isinstance(src, tuple) and src[0] == "copy":
        rows = logs.get(src[1])
        if rows is None:
            return Missing(f"missing ({src[1]}.log)")
        r = next((r for k, r in rows.items() if k[0] == "ceiling_memcpy"), None)
        v = num(r and (r.get("median_gbps") or r.get("gbps")))
        return v if v is not None else Missing("missing")
    parts = src if isinstance(src, list) else [src]
    total_us, total_work = 0.0, 0.0
    for log, kernel, variant, preset, shape in parts:
        rows = logs.get(log)
        if rows is None:
            return Missing(f"missing ({log}.log)")
        r = rows.get((kernel, variant, preset, shape))
        if r is None:
            return Missing("missing")
        us = num(r.get("median_us"))
        rate = num(r.get("gflops" if metric == "tflops" else "gbps"))
        if not us or rate is None:
            return Missing("missing")
        total_us += us
        total_work += rate * us  # GFLOP/s·µs or GB/s·µs: the work, in 1e-6 G
    rate = total_work / total_us  # G/s
    return rate / 1e3 if metric == "tflops" else rate


def peer_value(peer, pid, field):
    if peer is None:
        return Missing("missing (peer.jsonl)")
    r = peer.get(pid)
    if r is None:
        return Missing("missing")
    if "error" in r:
        return Missing("error: " + str(r["error"])[:40])
    if "skipped" in r:
        return Missing("skipped (time)")
    v = num(r.get(field))
    return v if v is not None else Missing("missing")


def ratio(a, b, target):
    if isinstance(a, Missing) or isinstance(b, Missing) or not b:
        return "—", ""
    x = a / b
    goal = ""
    if target is not None:
        goal = f"≥ {target:.1f}× " + ("met" if x >= target else "NOT met")
    return f"{x:.2f}×", goal


def okapi_train(bench, preset, b, t, precision):
    """okapi-train bench train's line for (preset, B, T, precision), or Missing."""
    if bench is None:
        return None, Missing("missing (bench.jsonl)")
    for r in bench:
        if (r.get("mode", "train") == "train" and r.get("preset") == preset and r.get("precision") == precision
                and r.get("batch_size") == b and r.get("seq_len") == t):
            if r.get("error") == "skipped":
                return None, Missing("skipped (deadline)")
            if "error" in r:
                return None, Missing(f"error (exit {r['error']})")
            v = num(r.get("tokens_per_s"))
            return r, (v if v is not None else Missing("missing"))
    return None, Missing("missing")


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def suite_counts(text):
    """Sums of every 'test result:' line: (passed, failed, ignored, results seen)."""
    p = f = i = n = 0
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
        p, f, i, n = p + int(m[1]), f + int(m[2]), i + int(m[3]), n + 1
    return p, f, i, n


def test_outcomes(text):
    """{test name: "ok" | "FAILED" | "ignored"} from libtest's lines, where a test's own stderr
    (the suites' loud "cuda: running on ..." lines, not captured) can come between "test NAME ..."
    and its outcome; and the test that had started without an outcome (a run that was cut)."""
    out, pending = {}, None
    for line in text.splitlines():
        m = re.match(r"^test (\S+) \.\.\. ?(.*)$", line)
        if m:
            pending, rest = m[1], m[2].strip()
        else:
            rest = line.strip()
        word = rest.split(",")[0]
        if pending and word in ("ok", "FAILED", "ignored"):
            out[pending], pending = word, None
    return out, pending


def status_of(path):
    out = {}
    for line in (read(path) or "").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1:]
    return out


def render(d, sft_cases):
    peer_lines = json_lines(os.path.join(d, "peer.jsonl"))
    peer = None if peer_lines is None else {r.get("id"): r for r in peer_lines}
    meta = (peer or {}).get("meta", {})
    bench = json_lines(os.path.join(d, "bench.jsonl"))
    logs = {k: kernel_results(os.path.join(d, k + ".log")) for k in ("kernels-cuda-f32", "kernels-cuda-bf16", "kernels-wgpu")}
    status = status_of(os.path.join(d, "status.txt"))
    gpu = (read(os.path.join(d, "gpu.txt")) or "missing").strip().splitlines()
    out = []
    out.append(f"== okapi vs peer, same GPU, same run: {gpu[0] if gpu else 'missing'}")
    peak = num(meta.get("peak_bf16_tflops"))
    out.append(
        f"   peer: torch {meta.get('torch', 'missing')}, transformers {meta.get('transformers', 'missing')}, "
        f"{meta.get('device', 'missing')}; MFU = 6·params·tokens/s / {meta.get('peak_assumed', 'missing (no peer meta line)')}"
    )
    out.append("   ratio = okapi / peer of the rate (TFLOP/s, GB/s, tokens/s): higher is better, 1.00× = parity")
    out.append("")
    rows = []
    for what, src, pname, pid, metric, target in KERNEL_ROWS:
        a = okapi_kernel(logs, src, metric)
        b = peer_value(peer, pid, metric)
        r, goal = ratio(a, b, target)
        rows.append((what, pname, fmt_rate(a, metric), fmt_rate(b, metric), r, goal))
    for preset, b, t in sft_cases:
        for precision, mode, target in SFT_PAIRS:
            orec, a = okapi_train(bench, preset, b, t, precision)
            pid = f"sft.{mode}.{preset}.B{b}.T{t}"
            pv = peer_value(peer, pid, "tokens_per_s")
            r, goal = ratio(a, pv, target)
            a_s = fmt_rate(a, "tok")
            if orec is not None and not isinstance(a, Missing) and peak and num(orec.get("params")):
                a_s += f", MFU {100 * 6 * num(orec['params']) * a / (peak * 1e12):.1f}%"
            b_s = fmt_rate(pv, "tok")
            prec = (peer or {}).get(pid, {})
            if not isinstance(pv, Missing) and num(prec.get("mfu")) is not None:
                b_s += f", MFU {100 * num(prec['mfu']):.1f}%"
            rows.append((f"SFT step {preset} B{b} T{t} {precision}", SFT_PEER_NAME[mode], a_s, b_s, r, goal))
    out.append(table(rows, ("what", "peer", "okapi", "peer", "okapi/peer", "target")))
    out.append("")
    out.append("== GPU test suites")
    srows = []
    for what, log, key, stamps in SUITES:
        text = read(os.path.join(d, log))
        st = status.get(key)
        rc = st[0] if st else "missing"
        if text is None:
            srows.append((what, rc, "missing", "missing", "missing", "missing (no log)"))
            continue
        p, f, i, n = suite_counts(text)
        outcomes, pending = test_outcomes(text)
        if rc == "skipped":
            verdict = "SKIPPED (deadline)"
        elif rc in ("124", "137"):
            verdict = "TIMED OUT"
        elif n == 0:
            verdict = f"no test result (exit {rc})"
        elif f == 0 and rc == "0":
            verdict = "PASS"
        else:
            verdict = "FAIL"
        if n == 0 and pending:
            verdict += f", cut during {pending}"
        if n == 0 and outcomes:
            ok = sum(o == "ok" for o in outcomes.values())
            verdict += f"; before: {ok} ok, {sum(o == 'FAILED' for o in outcomes.values())} failed"
        for label, prefix in stamps:
            ok = sum(o == "ok" for t, o in outcomes.items() if t.startswith(prefix))
            bad = sum(o == "FAILED" for t, o in outcomes.items() if t.startswith(prefix))
            verdict += f"; {label}: {ok} ok, {bad} failed"
        srows.append((what, rc, p if n else "—", f if n else "—", i if n else "—", verdict))
    out.append(table(srows, ("suite", "exit", "passed", "failed", "ignored", "result")))
    timing = [f"{k} skipped" if v[0] == "skipped" else f"{k} {v[1]}s" + ("" if v[0] == "0" else f" (exit {v[0]})") for k, v in status.items() if len(v) >= 2]
    out.append("")
    out.append("parts: " + (", ".join(timing) if timing else "missing (status.txt)"))
    return "\n".join(out)


def parse_cases(s):
    out = []
    for item in filter(None, s.split(",")):
        name, bt = item.split(":")
        b, t = bt.split("x")
        out.append((name, int(b), int(t)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--sft", default="gpt2-124m-llama:16x1024,llama-1b:4x1024", help="PRESET:BxT[,...] of the training rows")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        print(f"device_table.py: {a.dir} is not a directory", file=sys.stderr)
        sys.exit(2)
    print(render(a.dir, parse_cases(a.sft)))


if __name__ == "__main__":
    main()
