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
#      OKAPI_REQUIRE_CUDA=1 so a missing driver fails instead of skipping — then the wgpu
#      conformance suite and whole-model/command tests on the GPU through Vulkan
#      (OKAPI_REQUIRE_WGPU=1, WGPU_BACKEND=vulkan; the Vulkan loader is carried as a .deb in
#      target/device/gl and unpacked when the machine lacks it), then the training benchmarks and
#      the kernel microbenchmarks on cuda and on wgpu, and prints a short table last. Logs go to
#      $OUT when set.
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
  json=$(cargo test --release --no-run --message-format=json --test cuda_conformance --test conformance --test wgpu_model -p okapi 2>/dev/null; \
         cargo test --release --no-run --message-format=json --test cuda_compile -p okapi-runtime --features cuda 2>/dev/null; \
         cargo bench --no-run --message-format=json --bench kernels -p okapi 2>/dev/null)
  rm -rf "$DEV" && mkdir -p "$DEV/gl"
  for t in cuda_conformance cuda_compile conformance wgpu_model kernels; do
    local exe
    exe=$(printf '%s\n' "$json" | grep "\"name\":\"$t\"" | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
    [ -n "$exe" ] || { echo "no executable for test $t" >&2; exit 1; }
    cp "$exe" "$DEV/$t"
  done
  cp target/release/okapi-train "$DEV/okapi-train"
  strip "$DEV"/* 2>/dev/null || true
  # the Vulkan loader for the device machine (x86-64), unpacked there only when it lacks one
  local o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/okapi-amd64'
  mkdir -p /tmp/okapi-amd64/partial
  # shellcheck disable=SC2086
  (apt-get $o update -q >/dev/null && cd "$DEV/gl" && apt-get $o download libvulkan1 >/dev/null) || echo "!! could not download libvulkan1: the wgpu part of the run needs a Vulkan loader on the device"
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
  # every op vs the CPU (tests/conformance.rs, stamped cuda:: f32 and cuda_bf16::), then the
  # whole models and the SFT run (tests/cuda_conformance.rs)
  "$DEV/conformance" cuda --ignored --test-threads=1 > "$out/cuda_ops.log" 2>&1; status[ops]=$?
  grep -E "^test .*FAILED|panicked|outside|past its output" "$out/cuda_ops.log" | head -40
  "$DEV/cuda_conformance" --ignored --test-threads=1 --nocapture > "$out/cuda_conformance.log" 2>&1; status[conformance]=$?
  grep -E "^test |max abs err|loss cuda|sft .* step|panicked" "$out/cuda_conformance.log" | tail -80
  # wgpu on the GPU through Vulkan: the loader when missing, NVIDIA's ICD when not registered
  if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in "$DEV"/gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
    ldconfig
  fi
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -e "$icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES="$icd"
  fi
  # the wgpu model tests run okapi-train from the path cargo built it at (CARGO_BIN_EXE)
  mkdir -p target/release && cp "$DEV/okapi-train" target/release/okapi-train
  WGPU_BACKEND=vulkan OKAPI_REQUIRE_WGPU=1 "$DEV/conformance" wgpu:: --test-threads=1 > "$out/wgpu_conformance.log" 2>&1; status[wgpu]=$?
  WGPU_BACKEND=vulkan OKAPI_REQUIRE_WGPU=1 "$DEV/wgpu_model" --test-threads=1 --nocapture > "$out/wgpu_model.log" 2>&1; status[wgpu_model]=$?
  grep -E "adapter|^test .*FAILED|panicked" "$out/wgpu_conformance.log" "$out/wgpu_model.log" | head -20
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
  # kernel microbenchmarks (GFLOP/s, GB/s against the backend's GEMM and device copy)
  for be in cuda wgpu; do
    WGPU_BACKEND=vulkan timeout 150 "$DEV/kernels" --backend "$be" --square 1024,2048,4096 --preset gpt2-124m-llama > "$out/kernels-$be.log" 2>&1 \
      || echo "kernels --backend $be: exit $?" >> "$out/kernels-$be.log"
  done
  echo
  echo "== device check: $(head -1 "$out/gpu.txt")"
  printf '%-34s %s\n' "NVRTC compile (sm_80, sm_90a)" "$([ "${status[compile]}" = 0 ] && echo PASS || echo FAIL)"
  printf '%-34s %s\n' "every op, cuda f32 + bf16" "$([ "${status[ops]}" = 0 ] && echo PASS || echo FAIL) ($(grep -c '^test .* ok$' "$out/cuda_ops.log") ok, $(grep -c '^test .* FAILED$' "$out/cuda_ops.log") failed)"
  printf '%-34s %s\n' "model + SFT (--ignored)" "$([ "${status[conformance]}" = 0 ] && echo PASS || echo FAIL)"
  grep -E "^test .* (ok|FAILED)$" "$out/cuda_conformance.log" | sed 's/^test /  /'
  printf '%-34s %s\n' "wgpu conformance (Vulkan)" "$([ "${status[wgpu]}" = 0 ] && echo PASS || echo FAIL)"
  printf '%-34s %s\n' "wgpu model + commands (Vulkan)" "$([ "${status[wgpu_model]}" = 0 ] && echo PASS || echo FAIL)"
  echo "bench (JSON lines, medians):"
  cat "$out/bench.jsonl"
  echo "kernels (square GEMM and selected rows):"
  grep -hE "^device:|ceiling|matmul.square|attention_(fwd|bwd) |softmax_fwd|adamw  " "$out"/kernels-*.log | cut -c1-150
  [ "${status[compile]}" = 0 ] && [ "${status[ops]}" = 0 ] && [ "${status[conformance]}" = 0 ] && [ "${status[wgpu]}" = 0 ] && [ "${status[wgpu_model]}" = 0 ]
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/device_check.sh build|run" >&2; exit 2 ;;
esac
