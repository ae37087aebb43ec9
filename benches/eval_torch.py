#!/usr/bin/env python3
"""The transformers side of benches/eval_items.rs: the same ARC 25-shot items, the same model.

  cargo bench --bench eval_items -- [--items N] [--batch B]     # writes target/bench-eval
  /opt/pyref/bin/python benches/eval_torch.py [--dir target/bench-eval] [--batch B]
        [--repeats R] [--threads T] [--baseline-items M]

Reads DIR/bench-33m (HF layout, tokenizer.json), DIR/requests.jsonl ({"context",
"continuations", "okapi_logliks"} per item) and DIR/okapi_summary.json, then times
1. "harness": lm-evaluation-harness v0.3 `BaseLM._loglikelihood_tokens`, verbatim in
   substance: every (context, continuation) request on its own, sorted longest first, batches of
   B right-padded with 0, `F.log_softmax(model(batch).logits)` over all positions, the
   continuation's log-probs gathered and summed — over the first M items (okapi's from-scratch
   count unless --baseline-items);
2. "kv-cache": the context (minus its last token) once per item with `use_cache=True`, then each
   continuation as `[last context token] + continuation[:-1]` on the cache, cropped back
   (`DynamicCache.crop`) after each — okapi's algorithm, one item at a time — over all N items.
Each: one warm-up run on B items, then R runs (default 3), the median reported in items/s;
the logliks are checked against okapi's (max |Δ|). float32, the default attention (sdpa),
torch.set_num_threads(T) (default: all cores, as rayon).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="target/bench-eval")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--baseline-items", type=int)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM
    import transformers
    transformers.logging.set_verbosity_error()

    summary = json.load(open(os.path.join(a.dir, "okapi_summary.json")))
    batch = a.batch or summary["batch"]
    m = a.baseline_items or summary["baseline_items"]
    model_dir = os.path.join(a.dir, "bench-33m")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    max_len = model.config.max_position_embeddings
    items = [json.loads(l) for l in open(os.path.join(a.dir, "requests.jsonl"), encoding="utf-8") if l.strip()]
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    for it in items:
        it["ctx"] = enc(it["context"])
        it["conts"] = [enc(c) for c in it["continuations"]]
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, {a.threads} threads, "
          f"{len(items)} items, batch {batch}, attention {model.config._attn_implementation}")

    @torch.no_grad()
    def harness(items):
        reqs = [(it["ctx"], c) for it in items for c in it["conts"]]
        order = sorted(range(len(reqs)), key=lambda i: (-len(reqs[i][0] + reqs[i][1]), tuple(reqs[i][0] + reqs[i][1])))
        res = [0.0] * len(reqs)
        for s in range(0, len(order), batch):
            chunk = order[s:s + batch]
            inps, lens = [], []
            padding_length = None
            for i in chunk:
                ctx, cont = reqs[i]
                inp = torch.tensor((ctx + cont)[-(max_len + 1):][:-1], dtype=torch.long)
                padding_length = padding_length if padding_length is not None else inp.shape[0]
                lens.append(inp.shape[0])
                inps.append(torch.cat([inp, torch.zeros(padding_length - inp.shape[0], dtype=torch.long)]).unsqueeze(0))
            multi_logits = F.log_softmax(model(torch.cat(inps, dim=0)).logits, dim=-1)
            for i, logits, inplen in zip(chunk, multi_logits, lens):
                cont = reqs[i][1]
                lo = logits[inplen - len(cont):inplen]
                res[i] = float(lo.gather(1, torch.tensor(cont)[:, None]).sum())
        out, k = [], 0
        for it in items:
            out.append(res[k:k + len(it["conts"])])
            k += len(it["conts"])
        return out

    @torch.no_grad()
    def kv_cache(items):
        out = []
        for it in items:
            ctx = it["ctx"]
            cache = None
            if len(ctx) > 1:
                cache = model(torch.tensor([ctx[:-1]]), use_cache=True).past_key_values
            lls = []
            for cont in it["conts"]:
                inp = torch.tensor([[ctx[-1]] + cont[:-1]])
                r = model(inp, past_key_values=cache, use_cache=True)
                lo = F.log_softmax(r.logits[0].float(), dim=-1)
                lls.append(float(lo.gather(1, torch.tensor(cont)[:, None]).sum()))
                cache = r.past_key_values
                cache.crop(-len(inp[0]))  # drop what this continuation appended (negative: a count)
            out.append(lls)
        return out

    def timed(fn, items):
        fn(items[:batch])
        times, res = [], None
        for _ in range(a.repeats):
            t = time.perf_counter()
            res = fn(items)
            times.append(time.perf_counter() - t)
        return statistics.median(times), res

    results = {}
    for name, fn, its in [("harness", harness, items[:m]), ("kv-cache", kv_cache, items)]:
        t, res = timed(fn, its)
        worst = max(abs(x - y) for it, r in zip(its, res) for x, y in zip(it["okapi_logliks"], r))
        results[name] = len(its) / t
        print(f"transformers {name:<9} {len(its) / t:>7.3f} items/s  ({t:.1f}s median of {a.repeats} runs over "
              f"{len(its)} items; max |loglik - okapi| {worst:.2e})")
    print(f"okapi (same machine, eval_items): cached {summary['cached_items_per_s']:.3f} items/s, "
          f"from scratch {summary['scratch_items_per_s']:.3f} items/s")
    json.dump(results, open(os.path.join(a.dir, "torch_summary.json"), "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
