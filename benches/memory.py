#!/usr/bin/env python3
"""Issue 16's verification: the memory plan against the measured peak memory (CPU: VmHWM).

Runs `okapi-train sft / reward / ppo` on the bench-33m and gpt2-124m-llama LLaMA presets, with and
without each memory technique (--grad-checkpointing, --lm-head-chunk, --offload-optimizer, the
reward model's --frozen-bf16, PPO's --reference hydra vs full), each as a subprocess whose /proc/PID/status VmHWM is polled every 20 ms (and cross-checked
with the ru_maxrss that wait4 reports when it exits). For each run it takes:

  * the plan the command itself prints on stderr (its `total` line, human units), and the exact
    bytes from `okapi-train plan … ` with the same sizes (its JSON `total_bytes`);
  * the measured peak (VmHWM), and when it happened (seconds before the process exited);
  * the step time from the run's metrics.jsonl: SFT / reward the medians of `tokens_per_s` and of
    the step-to-step `elapsed_s` over the steps after the first; PPO its iteration's
    time_generate_s + time_score_s + time_update_s; and the process's CPU seconds (user + system,
    from wait4), which other processes on the machine disturb less than the wall-clock times do.

It also records VmHWM at the moment the run prints its last step's line (SFT / reward `step N/N`,
PPO `ppo iteration N/N`): the peak of everything before the final save, model loading included,
compared with the plan less its "saving" part. It prints one markdown table (ratios outside
[0.85, 1.15] flagged ⚠); with --json every detail (the plan's parts, the RSS trace, the load
average around each run); each run's stderr stays in --work/runs/.

Setup (in --work, reused when present): a byte-level BPE tokenizer trained on every bundled text
(data/assets: SFT, ranking, RL prompts, evaluation items; `--vocab-size 8000`, the bundled text
runs out of merges a little before), the two models (`okapi-train init --arch llama --preset P`),
an SFT file whose sequences are longer than --max-len (cut to it), a ranking file whose responses
fill the reward run's --max-len, a PPO prompt file, and for each preset a reward model trained for
one step from the same init (`reward --max-steps 1`), so it shares the policy's tokenizer.

Standard library only. Usage (from the repository root):

    python3 benches/memory.py --bin target/release/okapi-train [--work /tmp/okapi-memory]
        [--models bench-33m,gpt2-124m-llama] [--only REGEX] [--json results.json]
"""

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4, "PiB": 1024 ** 5}
POLL_S = 0.020

# Per preset: SFT micro-batch (B, T) chosen so that the activations dominate yet a step takes
# seconds on 2 cores; reward: prompts per batch (4 responses each) and tokens per sequence.
SIZES = {
    "bench-33m": {"sft": (8, 512), "reward": (4, 256)},
    "gpt2-124m-llama": {"sft": (4, 512), "reward": (2, 256)},
}
PPO_FLAGS = ["--iterations", "1", "--rollouts", "4", "--chunk-size", "4", "--ppo-batch-size", "2",
             "--max-new-tokens", "32", "--unfrozen-layers", "2"]
PPO_PLAN = {"rollouts": 4, "chunk_size": 4, "ppo_batch_size": 2, "max_new_tokens": 32, "unfrozen_layers": 2}


def human_to_bytes(s):
    m = re.fullmatch(r"\s*([0-9.]+)\s*(B|KiB|MiB|GiB|TiB|PiB)\s*", s)
    if not m:
        raise ValueError(f"not a size: {s!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def mib(x):
    return x / 1024 ** 2


def fmt_size(b):
    return f"{b / 1024 ** 3:.2f} GiB" if b >= 1024 ** 3 else f"{mib(b):.0f} MiB"


def parse_plan(stderr):
    """The first memory plan on stderr: its parts and its total (bytes, from the human units)."""
    parts, total, inside = {}, None, False
    for line in stderr.splitlines():
        if line.startswith("memory plan for"):
            inside = True
            continue
        if not inside:
            continue
        m = re.match(r"^\s{4}(\S.*?)\s{2,}([0-9.]+ (?:B|KiB|MiB|GiB|TiB|PiB))(?:\s|$)", line)
        if m:
            if m.group(1).strip() == "total":
                total = human_to_bytes(m.group(2))
                break
            parts[m.group(1).strip()] = human_to_bytes(m.group(2))
        elif not line.startswith("  "):
            break
    return parts, total


def read_status(pid):
    """VmHWM and VmRSS in bytes from /proc/PID/status (None once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None, None
    def field(name):
        m = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(m.group(1)) * 1024 if m else None
    return field("VmHWM"), field("VmRSS")


def measure(cmd, log_path, marker=None):
    """Runs cmd, polling VmHWM every 20 ms. Returns a dict: rc, stderr, vmhwm (polled), ru_maxrss
    (wait4's, at exit), wall_s, peak_before_exit_s, hwm_at_marker (VmHWM when `marker`, a regex,
    first matched a stderr line: the peak before the final save), trace [(s, VmRSS)]."""
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        hwm, trace, rc, rusage, peak_t, at_marker = 0, [], None, None, 0.0, None
        while True:
            h, rss = read_status(p.pid)
            now = time.monotonic() - t0
            if h is not None:
                if h > hwm:
                    hwm, peak_t = h, now
                if rss is not None and (not trace or abs(rss - trace[-1][1]) >= 4 << 20):
                    trace.append((round(now, 3), rss))
                if marker and at_marker is None:
                    with open(log_path) as f:
                        if re.search(marker, f.read(), re.M):
                            at_marker = h
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                rc, rusage = os.waitstatus_to_exitcode(status), ru
                break
            time.sleep(POLL_S)
        p.returncode = rc
    wall = time.monotonic() - t0
    with open(log_path) as f:
        stderr = f.read()
    return {"rc": rc, "stderr": stderr, "vmhwm": hwm, "ru_maxrss": rusage.ru_maxrss * 1024, "wall_s": wall, "cpu_s": rusage.ru_utime + rusage.ru_stime,
            "peak_before_exit_s": wall - peak_t, "hwm_at_marker": at_marker, "trace": trace}


def run_ok(cmd, what):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"{what} failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r


def metrics(out):
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def step_time(kind, out):
    """(tokens/s median, s/step median) over the steps after the first; PPO: (rollout tok/s, iteration s, phases)."""
    rows = metrics(out)
    if kind == "ppo":
        if not rows:
            return None, None, ""
        r = rows[-1]
        g, s, u = r.get("time_generate_s", 0.0), r.get("time_score_s", 0.0), r.get("time_update_s", 0.0)
        return r.get("rollout_tokens_per_s"), g + s + u, f"gen {g:.1f} + score {s:.1f} + update {u:.1f} s"
    rows = [r for r in rows if "tokens_per_s" in r]
    after = rows[1:] or rows
    tps = statistics.median(r["tokens_per_s"] for r in after) if after else None
    el = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(rows, rows[1:])]
    sps = statistics.median(el) if el else None
    return tps, sps, f"{len(rows)} steps"


# ---------------------------------------------------------------- setup

def all_text_records():
    """Every bundled text as instruction records (the tokenizer's training text)."""
    def strings(o):
        if isinstance(o, str):
            yield o
        elif isinstance(o, list):
            for x in o:
                yield from strings(x)
        elif isinstance(o, dict):
            for k, v in o.items():
                if k not in ("id", "answer", "label"):
                    yield from strings(v)
    recs = []
    files = sorted(glob.glob(os.path.join(ROOT, "data/assets/*/*.json")) + glob.glob(os.path.join(ROOT, "data/assets/eval/*/*.json")))
    for path in files:
        with open(path) as f:
            for r in json.load(f):
                s = [x for x in strings(r) if x.strip()]
                if len(s) >= 2:
                    recs.append({"instruction": s[0], "input": "", "output": "\n".join(s[1:])})
    return recs


def sentences(field="output"):
    """The bundled SFT outputs (or instructions), every language, in a fixed order."""
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "data/assets/sft/*.json"))):
        with open(path) as f:
            out += [r[field] for r in json.load(f) if r.get(field)]
    return out


def long_text(sents, start, chars):
    parts, i = [], start
    while sum(len(p) + 1 for p in parts) < chars:
        parts.append(sents[i % len(sents)])
        i += 7
    return " ".join(parts)


def setup(bin_, work):
    os.makedirs(work, exist_ok=True)
    p = lambda *x: os.path.join(work, *x)
    sents, instrs = sentences(), sentences("instruction")
    if not os.path.exists(p("tok.json")):
        with open(p("alltext.json"), "w") as f:
            json.dump(all_text_records(), f, ensure_ascii=False)
        run_ok([bin_, "tokenizer", "--data", p("alltext.json"), "--vocab-size", "8000", "--out", p("tok.json")], "tokenizer")
    # SFT: 32 records far longer than 512 tokens (every language mixed): each is cut to --max-len
    if not os.path.exists(p("sft.json")):
        recs = [{"instruction": instrs[11 * i], "input": "", "output": long_text(sents, 3 * i + 1, 12000)} for i in range(32)]
        with open(p("sft.json"), "w") as f:
            json.dump(recs, f, ensure_ascii=False)
    # ranking: 16 prompts with 4 responses each, every response longer than the reward run's
    # --max-len (cut from the right), so each batch holds prompts × 4 full sequences
    if not os.path.exists(p("ranking.json")):
        recs = [{"instruction": instrs[13 * i + 5], "input": "", "responses": [long_text(sents, 5 * i + k + 2, 3000 + 500 * k) for k in range(4)]} for i in range(16)]
        with open(p("ranking.json"), "w") as f:
            json.dump(recs, f, ensure_ascii=False)
    if not os.path.exists(p("prompts.json")):
        recs = []
        for lang in ("en", "de", "ru", "zh", "hi", "vi", "ar", "fr"):
            with open(os.path.join(ROOT, "data/assets/rl", f"{lang}.json")) as f:
                recs += json.load(f)[:2]
        with open(p("prompts.json"), "w") as f:
            json.dump(recs, f, ensure_ascii=False)
    for preset in SIZES:
        m = p("models", preset)
        if not os.path.exists(os.path.join(m, "config.json")):
            run_ok([bin_, "init", "--arch", "llama", "--preset", preset, "--tokenizer", p("tok.json"), "--out", m], f"init {preset}")
        rm = p("models", preset + "-rm")
        if not os.path.exists(os.path.join(rm, "config.json")):
            run_ok([bin_, "reward", "--model", m, "--data", p("ranking.json"), "--out", rm, "--max-steps", "1",
                    "--batch-size", "1", "--max-len", "128", "--overwrite"], f"reward model {preset}")
    with open(p("tok.json")) as f:
        vocab = len(json.load(f)["model"]["vocab"])
    return vocab


def longest_prompt(bin_, work, policy, rm):
    """The longest templated PPO prompt in tokens: the smallest --max-prompt-len that skips none
    (each probe is refused by OKAPI_MEMORY_LIMIT right after the prompts are read)."""
    env = dict(os.environ, OKAPI_MEMORY_LIMIT="1K")
    def skipped(limit):
        r = subprocess.run([bin_, "ppo", "--policy", policy, "--reward", rm, "--prompts", os.path.join(work, "prompts.json"),
                            "--out", os.path.join(work, "runs", "probe"), "--max-prompt-len", str(limit), "--overwrite"] + PPO_FLAGS[:-2],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        m = re.search(r"; (\d+) prompts longer than (\d+) tokens", r.stderr) or re.search(r"\((\d+) of \d+ longer than (\d+) tokens\)", r.stderr)
        if not m:
            raise RuntimeError(f"cannot read the prompt lengths: {r.stderr[-500:]}")
        return int(m.group(1))
    lo, hi = 1, 2048
    while lo < hi:
        mid = (lo + hi) // 2
        if skipped(mid) == 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan_bytes(bin_, args):
    r = run_ok([bin_, "plan"] + args, "plan")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- configurations

def configs(work, models, lp):
    p = lambda *x: os.path.join(work, *x)
    out = []
    for preset in models:
        m, rm = p("models", preset), p("models", preset + "-rm")
        b, t = SIZES[preset]["sft"]
        for name, flags in [("none", []), ("ckpt", ["--grad-checkpointing"]), ("chunk256", ["--lm-head-chunk", "256"]),
                            ("ckpt+chunk256", ["--grad-checkpointing", "--lm-head-chunk", "256"]),
                            ("offload", ["--offload-optimizer"])]:
            out.append({
                "name": f"{preset} sft {b}×{t} {name}", "kind": "sft",
                "cmd": ["sft", "--model", m, "--data", p("sft.json"), "--max-steps", "3", "--batch-size", str(b), "--max-len", str(t),
                        "--log-every", "1"] + flags,
                "plan": ["--command", "sft", "--model", m, "--batch-size", str(b), "--max-len", str(t)] + flags,
            })
        k, t = SIZES[preset]["reward"]
        for name, flags in [("none", []), ("ckpt", ["--grad-checkpointing"]), ("bf16", ["--frozen-bf16"])]:
            out.append({
                "name": f"{preset} reward {k}×4×{t} top-2 {name}", "kind": "reward",
                "cmd": ["reward", "--model", m, "--data", p("ranking.json"), "--max-steps", "3", "--batch-size", str(k), "--max-len", str(t),
                        "--unfrozen-layers", "2", "--log-every", "1"] + flags,
                # a batch of k prompts × 4 responses, every one at the longest length: k·4·t rows
                "plan": ["--command", "reward", "--model", m, "--batch-size", str(4 * k), "--max-len", str(t), "--unfrozen-layers", "2"] + flags,
            })
        for ref in ("hydra", "full"):
            for name, flags in [("none", []), ("ckpt", ["--grad-checkpointing"])]:
                out.append({
                    "name": f"{preset} ppo {ref} {name}", "kind": "ppo", "preset": preset,
                    "cmd": ["ppo", "--policy", m, "--reward", rm, "--prompts", p("prompts.json"), "--reference", ref] + PPO_FLAGS + flags,
                    "plan": ["--command", "ppo", "--model", m, "--reward", rm, "--reference", ref, "--max-prompt-len", str(lp[preset])]
                            + [x for k_, v in PPO_PLAN.items() for x in (f"--{k_.replace('_', '-')}", str(v))] + flags,
                })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/okapi-train"))
    ap.add_argument("--work", default="/tmp/okapi-memory")
    ap.add_argument("--models", default="bench-33m,gpt2-124m-llama")
    ap.add_argument("--only", default=None, help="run only the configurations whose name matches this regex")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    bin_ = os.path.abspath(a.bin)
    models = [m for m in a.models.split(",") if m]
    t_start = time.monotonic()
    vocab = setup(bin_, a.work)
    print(f"setup: tokenizer vocabulary {vocab}, models {', '.join(models)} in {time.monotonic() - t_start:.0f} s", file=sys.stderr)
    lp = {pr: longest_prompt(bin_, a.work, os.path.join(a.work, "models", pr), os.path.join(a.work, "models", pr + "-rm")) for pr in models}
    print(f"longest PPO prompt: {lp}", file=sys.stderr)
    # the process alone: `plan` loads nothing but the binary and its runtime
    base = measure([bin_, "plan", "--command", "sft", "--preset", "bench-33m"], os.path.join(a.work, "baseline.log"))["ru_maxrss"]
    results = []
    os.makedirs(os.path.join(a.work, "runs"), exist_ok=True)
    for c in configs(a.work, models, lp):
        if a.only and not re.search(a.only, c["name"]):
            continue
        out = os.path.join(a.work, "runs", re.sub(r"[^A-Za-z0-9_.+-]+", "_", c["name"]))
        cmd = [bin_] + c["cmd"] + ["--out", out, "--overwrite"]
        plan = plan_bytes(bin_, c["plan"])
        marker = r"^ppo iteration (\d+)/\1:" if c["kind"] == "ppo" else r"^step (\d+)/\1:"
        load0 = os.getloadavg()[0]
        m = measure(cmd, out.rstrip("/") + ".stderr.log", marker)
        parts, printed = parse_plan(m["stderr"])
        tps, step_s, note = step_time(c["kind"], out)
        save = plan.get("saving_tensor_copies_encoded_file", 0)
        # the run's own printed total must be the `plan` total to its rounding (one decimal)
        agrees = printed is not None and abs(printed - plan["total_bytes"]) <= 0.051 * (1024 ** 3 if printed >= 1024 ** 3 else 1024 ** 2)
        r = {"name": c["name"], "kind": c["kind"], "cmd": " ".join(["okapi-train"] + c["cmd"]), "plan_cmd": " ".join(["okapi-train", "plan"] + c["plan"]),
             "rc": m["rc"], "plan_printed": printed, "plan_agrees": agrees, "plan": plan["total_bytes"], "plan_save": save,
             "plan_parts": {k: v for k, v in plan.items() if isinstance(v, int) and k not in ("device_bytes",)}, "plan_parts_printed": parts,
             "vmhwm": max(m["vmhwm"], m["ru_maxrss"]), "vmhwm_polled": m["vmhwm"], "ru_maxrss": m["ru_maxrss"],
             "hwm_before_save": m["hwm_at_marker"], "wall_s": m["wall_s"], "cpu_s": m["cpu_s"], "peak_before_exit_s": m["peak_before_exit_s"],
             "tokens_per_s": tps, "step_s": step_s, "note": note, "rss_trace": m["trace"],
             "loadavg_before_after": [load0, os.getloadavg()[0]]}
        results.append(r)
        print(f"{c['name']}: rc {m['rc']}, plan {fmt_size(plan['total_bytes'])} (printed {fmt_size(printed or 0)}{'' if agrees else ', DISAGREES'}), "
              f"VmHWM {fmt_size(r['vmhwm'])} (polled {fmt_size(m['vmhwm'])}), before the save {fmt_size(m['hwm_at_marker'] or 0)}, "
              f"ratio {plan['total_bytes'] / max(r['vmhwm'], 1):.2f}, {m['wall_s']:.0f} s, peak {m['peak_before_exit_s']:.1f} s before exit, "
              f"load average {load0:.1f} → {os.getloadavg()[0]:.1f}", file=sys.stderr)
        if m["rc"] != 0:
            print(m["stderr"][-2000:], file=sys.stderr)
    total_s = time.monotonic() - t_start
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"vocab": vocab, "longest_prompt": lp, "baseline_maxrss": base, "total_s": total_s, "results": results}, f, indent=1)

    def ratio(x, y):
        if not x or not y:
            return "—"
        q = x / y
        return f"{q:.2f}" + ("" if 0.85 <= q <= 1.15 else " ⚠")
    print("| config | the run's plan | `okapi-train plan` | measured VmHWM | run's plan / measured | `plan` / measured "
          "| run's plan without the save | VmHWM before the save (loading included) | ratio before the save | step time | tokens/s | CPU s (whole run) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if r["kind"] == "ppo":
            st = f"{r['step_s']:.1f} s/iteration ({r['note']})" if r["step_s"] is not None else "—"
        else:
            st = f"{r['step_s']:.1f} s/step" if r["step_s"] is not None else "—"
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] is not None else "—"
        fail = "" if r["rc"] == 0 else f" (exit {r['rc']})"
        # the run's plan: `plan`'s exact bytes where the printed total is the same to its rounding
        if r["plan_agrees"]:
            run_plan, run_save, shown = r["plan"], r["plan_save"], f"{mib(r['plan']):.0f} MiB"
        else:
            run_plan, run_save = r["plan_printed"] or 0, r["plan_parts_printed"].get("saving (tensor copies, encoded file)", 0)
            shown = f"{fmt_size(run_plan)} (printed; differs)"
        before = r["hwm_before_save"]
        print(f"| {r['name']}{fail} | {shown} | {mib(r['plan']):.0f} MiB | {mib(r['vmhwm']):.0f} MiB | {ratio(run_plan, r['vmhwm'])} | "
              f"{ratio(r['plan'], r['vmhwm'])} | {mib(run_plan - run_save):.0f} MiB | {f'{mib(before):.0f} MiB' if before else '—'} | "
              f"{ratio(run_plan - run_save, before)} | {st} | {tps} | {r['cpu_s']:.0f} |")
    print(f"\n⚠: outside [0.85, 1.15]. Process baseline (`okapi-train plan`, ru_maxrss): {mib(base):.1f} MiB; tokenizer vocabulary {vocab}; "
          f"longest PPO prompt {lp} tokens; 1-min load average during the runs {min(l for r in results for l in r['loadavg_before_after']):.1f}–"
          f"{max(l for r in results for l in r['loadavg_before_after']):.1f}; whole run {total_s / 60:.1f} min")

if __name__ == "__main__":
    main()
