"""transformers' `generate` on the same randomly initialised LLaMA preset as benches/generate.rs.

    /opt/pyref/bin/python benches/generate_torch.py [--preset bench-5m] [--batch 16] [--prompt 64] [--new 64] [--runs 5] [--threads 2]

do_sample=True, temperature 1, top_k 0, top_p 1, min_new_tokens = max_new_tokens (no early EOS),
KV cache on (the default), float32, eager and sdpa attention. One warm-up, median of --runs.
"""
import argparse, statistics, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {"bench-5m": (256, 4, 4, 688, 4096), "bench-33m": (512, 8, 8, 1360, 8192), "gpt2-124m-llama": (768, 12, 12, 2048, 32000)}

ap = argparse.ArgumentParser()
ap.add_argument("--preset", default="bench-5m")
ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--prompt", type=int, default=64)
ap.add_argument("--new", type=int, default=64)
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
c, l, h, f, v = PRESETS[a.preset]
for impl in ["eager", "sdpa"]:
    cfg = LlamaConfig(hidden_size=c, num_hidden_layers=l, num_attention_heads=h, num_key_value_heads=h, intermediate_size=f, vocab_size=v,
                      max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3, attn_implementation=impl)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(4, v, (a.batch, a.prompt))
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=a.new, min_new_tokens=a.new, pad_token_id=3)
    times = []
    with torch.no_grad():
        for r in range(a.runs + 1):
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            dt = time.perf_counter() - t
            assert out.shape[1] == a.prompt + a.new
            if r:
                times.append(dt)
    med = statistics.median(times)
    print(f"torch {impl} generate {a.preset}: batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, {a.threads} threads: "
          f"median {med:.3f} s, {a.batch * a.new / med:.0f} new tokens/s (min {min(times):.3f} s)")
