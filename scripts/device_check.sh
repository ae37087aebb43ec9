#!/usr/bin/env bash
# The CUDA device check: one prepared script for a GPU session (issue #7). The device machine
# has no cargo, so the test and CLI binaries are built here and carried there.
#
#   1. here (any machine with the Rust toolchain):
#        scripts/device_check.sh build
#      builds release test binaries (cargo test --no-run) and okapi-train, and copies them,
#      stripped, into target/device/ (ignored by git; well under the 64 MiB carry limit).
#   2. on the GPU machine, from the repository root, carrying target/device:
#        run(command="scripts/device_check.sh run", carry=["target/device"], timeout_s=540)
#      It runs the NVRTC compile test, the CUDA conformance suite (every op vs the CPU backend,
#      f32 tight and bf16 loose), whole-model parity (logits, loss, every gradient), the SFT
#      run against the CPU losses — all `#[ignore]`d tests, run with --ignored and
#      OKAPI_REQUIRE_CUDA=1 so a missing driver fails instead of skipping — then the training
#      benchmarks, and prints a short table last. Logs go to $OUT when set.
#
# NVRTC: the device's own (driver 580 / CUDA 13.0: libnvrtc.so.13 on the default search path or
# under a pip site-packages); OKAPI_NVRTC_LIB=/path/libnvrtc.so.13 overrides.
# The test binaries find tests/fixtures through the absolute path they were built at
# (CARGO_MANIFEST_DIR); when that path does not exist here it is linked to this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DEV=target/device

build() {
  set -e
  cargo build --release --bin okapi-train
  local json
  json=$(cargo test --release --no-run --message-format=json --test cuda_conformance -p okapi 2>/dev/null; \
         cargo test --release --no-run --message-format=json --test cuda_compile -p okapi-runtime --features cuda 2>/dev/null)
  rm -rf "$DEV" && mkdir -p "$DEV"
  for t in cuda_conformance cuda_compile; do
    local exe
    exe=$(printf '%s\n' "$json" | grep "\"name\":\"$t\"" | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    [ -n "$exe" ] || { echo "no executable for test $t" >&2; exit 1; }
    cp "$exe" "$DEV/$t"
  done
  cp target/release/okapi-train "$DEV/okapi-train"
  strip "$DEV"/* 2>/dev/null || true
  echo "$ROOT" > "$DEV/built_at"
  ls -la "$DEV"
  du -sh "$DEV"
}

run() {
  local out="${OUT:-/tmp/okapi-device-check}"
  mkdir -p "$out"
  [ -x "$DEV/cuda_conformance" ] || { echo "no $DEV/cuda_conformance: run 'scripts/device_check.sh build' first and carry $DEV" >&2; exit 2; }
  local built_at
  built_at=$(cat "$DEV/built_at")
  if [ "$built_at" != "$ROOT" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$ROOT" "$built_at" || echo "!! cannot link $built_at -> $ROOT: fixture paths will fail"
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
  export OKAPI_REQUIRE_CUDA=1 OKAPI_REQUIRE_NVRTC=1 OKAPI_TRAIN_BIN="$ROOT/$DEV/okapi-train" RUST_BACKTRACE=1
  declare -A status
  "$DEV/cuda_compile" --test-threads=1 --nocapture > "$out/cuda_compile.log" 2>&1; status[compile]=$?
  "$DEV/cuda_conformance" --ignored --test-threads=1 --nocapture > "$out/cuda_conformance.log" 2>&1; status[conformance]=$?
  grep -E "^test |max abs err|loss cuda|sft .* step|panicked" "$out/cuda_conformance.log" | tail -80
  # benchmarks: JSON lines (medians) of one training step, cpu reference, cuda f32 and bf16
  : > "$out/bench.jsonl"
  for preset in bench-33m gpt2-124m-llama; do
    for prec in f32 bf16; do
      timeout 120 "$DEV/okapi-train" bench train --backend cuda --precision "$prec" --preset "$preset" --batch-size 8 --seq-len 512 --steps 10 \
        >> "$out/bench.jsonl" 2> "$out/bench-$preset-$prec.err" || echo "{\"preset\":\"$preset\",\"precision\":\"$prec\",\"error\":$?}" >> "$out/bench.jsonl"
    done
  done
  timeout 120 "$DEV/okapi-train" bench generate --backend cuda --preset gpt2-124m-llama --batch-size 8 --seq-len 128 --new-tokens 128 --steps 3 \
    >> "$out/bench.jsonl" 2> "$out/bench-generate.err" || true
  echo
  echo "== device check: $(head -1 "$out/gpu.txt")"
  printf '%-34s %s\n' "NVRTC compile (sm_80, sm_90a)" "$([ "${status[compile]}" = 0 ] && echo PASS || echo FAIL)"
  printf '%-34s %s\n' "conformance + model + SFT (--ignored)" "$([ "${status[conformance]}" = 0 ] && echo PASS || echo FAIL)"
  grep -E "^test .* (ok|FAILED)$" "$out/cuda_conformance.log" | sed 's/^test /  /'
  echo "bench (JSON lines, medians):"
  cat "$out/bench.jsonl"
  [ "${status[compile]}" = 0 ] && [ "${status[conformance]}" = 0 ]
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/device_check.sh build|run" >&2; exit 2 ;;
esac
