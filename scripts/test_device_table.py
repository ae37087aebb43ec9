#!/usr/bin/env python3
"""Tests of scripts/device_table.py on made-up run outputs (no GPU, no torch):

    python3 scripts/test_device_table.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "benches"))
import device_table as dt  # noqa: E402
import gpu_peer  # noqa: E402  (imports no torch at module level)

META = {"torch": "2.11.0+cu130", "transformers": "5.17.0", "device": "NVIDIA H100 80GB HBM3"}


def peer_line(pid, **kw):
    return json.dumps({"id": pid, "name": f"peer {pid}", **kw, **META})


def result(kernel, variant, preset, shape, median_us, gflops="nan", gbps="nan"):
    return f"RESULT kernel={kernel} variant={variant} preset={preset} shape={shape} reps=10 median_us={median_us} min_us={median_us} gflops={gflops} gbps={gbps} frac=0.5000"


def read(path):
    with open(path) as f:
        return f.read()


def write(d, name, text):
    with open(os.path.join(d, name), "w") as f:
        f.write(text)


def fake_run(d):
    write(d, "gpu.txt", "NVIDIA H100 80GB HBM3, 580.159.04, 81559 MiB\n")
    write(d, "peer.jsonl", "\n".join([
        json.dumps({"id": "meta", "peak_bf16_tflops": 989.0, "peak_assumed": "H100: dense bf16 989.0 TFLOP/s", **META}),
        peer_line("matmul.f32.4096", tflops=50.0, median_ms=2.7),
        peer_line("matmul.bf16.4096", tflops=800.0, median_ms=0.17),
        peer_line("matmul.bf16.8192", error="OutOfMemoryError: CUDA out of memory"),
        peer_line("sdpa.fwd.B4.H12.T256.D64", tflops=100.0),
        peer_line("sdpa.fwd_bwd.B4.H12.T256.D64", tflops=100.0),
        peer_line(f"adamw.fused.P{dt.P_GPT2}", gbps=2000.0),
        peer_line(f"softmax_fwd.{dt.N_GPT2}x{dt.V}", gbps=2500.0),
        peer_line("copy.64MiB", gbps=2600.0),
        peer_line("copy.1GiB", gbps=3000.0),
        peer_line("sft.bf16-amp.gpt2-124m-llama.B16.T1024", tokens_per_s=200000.0, mfu=0.163),
        peer_line("sft.bf16.gpt2-124m-llama.B16.T1024", tokens_per_s=400000.0, mfu=0.326),
        peer_line("sft.f32.llama-1b.B4.T1024", skipped="time budget 170 s spent"),
        "not json: a stray line",
    ]) + "\n")
    write(d, "bench.jsonl", "\n".join([
        json.dumps({"mode": "train", "preset": "gpt2-124m-llama", "precision": "bf16", "batch_size": 16, "seq_len": 1024, "tokens_per_s": 100000.0, "params": 134105856}),
        json.dumps({"mode": "train", "preset": "gpt2-124m-llama", "precision": "f32", "batch_size": 16, "seq_len": 1024, "error": 124}),
        json.dumps({"mode": "generate", "preset": "gpt2-124m-llama", "precision": "bf16", "batch_size": 8, "decode_tokens_per_s": 5000.0}),
    ]) + "\n")
    shape_a = "B4xT256xH12/12xD64:causal"
    write(d, "kernels-cuda-f32.log", "\n".join([
        "device: cuda:0 NVIDIA H100 80GB HBM3 (sm_90a, f32)",
        "RESULT kernel=ceiling_gemm variant=- preset=- shape=1024x1024x1024 gflops=20000.000 median_gflops=19000.000",
        "RESULT kernel=ceiling_memcpy variant=- preset=- shape=64MiB:device gbps=2700.000 median_gbps=2600.000",
        result("matmul.square", "-", "square", "4096x4096x4096", 5497.558, gflops="25000.000"),
        result("adamw", "fused", dt.GPT2, f"P{dt.P_GPT2}", 1700.0, gbps="2208.000"),
        result("softmax_fwd", "-", dt.GPT2, f"{dt.N_GPT2}x{dt.V}", 150.0, gbps="1365.000"),
    ]) + "\n")
    write(d, "kernels-cuda-bf16.log", "\n".join([
        result("matmul.square", "-", "square", "4096x4096x4096", 343.6, gflops="400000.000"),
        # forward 1 ms at 50 TFLOP/s, backward 2.5× the work in 2.5 ms: 50 TFLOP/s together
        result("attention_fwd", "fused", dt.GPT2, shape_a, 1000.0, gflops="50000.000"),
        result("attention_bwd", "-", dt.GPT2, shape_a, 2500.0, gflops="50000.000"),
    ]) + "\n")
    write(d, "cuda_compile.log", "running 2 tests\ntest a ... ok\ntest b ... ok\n\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 3.1s\n")
    write(d, "cuda_ops.log", "\n".join([
        # the suites' own stderr line comes between a test's name and its outcome
        "test cuda::matmul ... cuda: running on cuda:0 NVIDIA H100 80GB HBM3 (sm_90a, f32)", "ok",
        "test cuda::softmax ... ok", "test cuda_bf16::matmul ... cuda: running on cuda:0 NVIDIA H100 80GB HBM3 (sm_90a, bf16)", "FAILED",
        "test cuda_bf16::softmax ... ok",
        "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 75 filtered out; finished in 40.0s",
    ]) + "\n")
    write(d, "cuda_conformance.log", "running 4 tests\ntest model_a ... cuda: running on cuda:0 H100\nok\ntest sft_b ... cuda: running on cuda:0 H100\n")
    write(d, "status.txt", "compile 0 12\nops 101 40\nconformance 124 90\nwgpu skipped 0\npeer 0 61\n")


class DeviceTable(unittest.TestCase):
    def render(self, fill):
        with tempfile.TemporaryDirectory() as d:
            if fill:
                fake_run(d)
            return dt.render(d, dt.parse_cases("gpt2-124m-llama:16x1024,llama-1b:4x1024"))

    def row(self, text, start, peer=""):
        """The cells of the one row whose first cell starts with `start` (and second with `peer`)."""
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
        rows = [c for c in cells if c[0].startswith(start.strip()) and c[1].startswith(peer)]
        self.assertEqual(len(rows), 1, f"{start!r} {peer!r} in\n{text}")
        return rows[0]

    def test_every_row_is_printed_with_ratios_and_missing_entries(self):
        t = self.render(True)
        for what, *_ in dt.KERNEL_ROWS:
            self.assertIn(what, t)
        # 25 vs 50 TFLOP/s
        self.assertEqual(self.row(t, "matmul 4096³ f32")[2:5], ["25.0 TFLOP/s", "50.0 TFLOP/s", "0.50×"])
        # 400 vs 800: the target is 0.6×
        self.assertEqual(self.row(t, "matmul 4096³ bf16")[4:], ["0.50×", "≥ 0.6× NOT met"])
        m8 = self.row(t, "matmul 8192³ bf16")
        self.assertEqual(m8[2], "missing")
        self.assertTrue(m8[3].startswith("error: OutOfMemoryError"), m8)
        self.assertEqual(m8[4], "—")
        # forward + backward summed as times: 50 TFLOP/s vs 100
        self.assertEqual(self.row(t, "attention fwd+bwd bf16 B4")[2:5], ["50.0 TFLOP/s", "100.0 TFLOP/s", "0.50×"])
        self.assertEqual(self.row(t, "attention fwd+bwd bf16 B2")[2:5], ["missing", "missing", "—"])
        self.assertEqual(self.row(t, "adamw fused")[4], "1.10×")
        self.assertEqual(self.row(t, "adamw vs copy")[3:], ["3000 GB/s", "0.74×", "≥ 0.7× met"])
        self.assertEqual(self.row(t, "device copy 64 MiB")[2:5], ["2600 GB/s", "2600 GB/s", "1.00×"])
        self.assertEqual(self.row(t, "wgpu matmul")[2], "missing (kernels-wgpu.log)")
        # training: 100k vs 200k tokens/s; MFU 6·134.1M·100k / 989 TFLOP/s = 8.1 %
        s = self.row(t, "SFT step gpt2-124m-llama B16 T1024 bf16", "HF+SDPA bf16 autocast")
        self.assertEqual(s[2:], ["100000 tok/s, MFU 8.1%", "200000 tok/s, MFU 16.3%", "0.50×", "≥ 1.0× NOT met"])
        self.assertEqual(self.row(t, "SFT step gpt2-124m-llama B16 T1024 f32")[2:5], ["error (exit 124)", "missing", "—"])
        self.assertEqual(self.row(t, "SFT step llama-1b B4 T1024 f32")[2:5], ["missing", "skipped (time)", "—"])
        self.assertEqual(len([x for x in t.splitlines() if x.startswith("| SFT step")]), 6)
        # suites
        self.assertEqual(self.row(t, "NVRTC compile")[1:], ["0", "2", "0", "0", "PASS"])
        self.assertEqual(self.row(t, "cuda ops conformance")[1:], ["101", "3", "1", "0", "FAIL; f32: 2 ok, 0 failed; bf16: 1 ok, 1 failed"])
        self.assertEqual(self.row(t, "cuda_conformance")[1:], ["124", "—", "—", "—", "TIMED OUT, cut during sft_b; before: 1 ok, 0 failed"])
        self.assertEqual(self.row(t, "wgpu conformance")[1:], ["skipped", "missing", "missing", "missing", "missing (no log)"])
        self.assertEqual(self.row(t, "wgpu model")[1:], ["missing", "missing", "missing", "missing", "missing (no log)"])
        self.assertIn("parts: compile 12s, ops 40s (exit 101), conformance 90s (exit 124), wgpu skipped, peer 61s", t)
        self.assertIn("NVIDIA H100 80GB HBM3, 580.159.04", t.splitlines()[0])

    def test_an_empty_directory_renders_every_row_as_missing(self):
        t = self.render(False)
        body = [x for x in t.splitlines() if x.startswith("| ") and not x.startswith("| what ") and not x.startswith("| suite ")]
        self.assertEqual(len(body), len(dt.KERNEL_ROWS) + 6 + len(dt.SUITES))
        for line in body:
            self.assertIn("missing", line)
        self.assertIn("parts: missing (status.txt)", t)

    def test_the_command_line(self):
        with tempfile.TemporaryDirectory() as d:
            fake_run(d)
            o = subprocess.run([sys.executable, os.path.join(HERE, "device_table.py"), d], capture_output=True, text=True)
            self.assertEqual(o.returncode, 0, o.stderr)
            self.assertTrue(o.stdout.startswith("== okapi vs peer"))
            o = subprocess.run([sys.executable, os.path.join(HERE, "device_table.py"), os.path.join(d, "nope")], capture_output=True, text=True)
            self.assertEqual(o.returncode, 2)

    def test_the_table_keys_match_the_peer_and_the_presets(self):
        presets, source = gpu_peer.read_presets()
        self.assertEqual(source, "model/src/init.rs")
        self.assertEqual(dt.P_GPT2, gpu_peer.okapi_param_count(presets[dt.GPT2]))
        self.assertEqual(dt.V, presets[dt.GPT2][5])
        self.assertEqual(gpu_peer.okapi_param_count(presets["llama-1b"]), 852_559_872)
        # the peer's default SFT cases are the table's
        self.assertIn('default="gpt2-124m-llama:16x1024,llama-1b:4x1024"', read(gpu_peer.__file__))


if __name__ == "__main__":
    unittest.main()
