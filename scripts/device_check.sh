#!/usr/bin/env bash
# The CUDA device check: one prepared script for a GPU session (issues #7 and #15). The device
# machine has no cargo, so the test and CLI binaries are built here and carried there.
#
#   1. here (any machine with the Rust toolchain):
#        scripts/device_check.sh build
#      builds release test binaries (cargo test --no-run) and okapi-train, and packs them,
#      stripped, into target/device/bins.tar.xz (ignored by git; ~12 MiB: with the working
#      tree under the tool's 64 MiB carry limit, which the ~62 MiB of plain binaries are not).
#   2. on the GPU machine, from the repository root, carrying target/device:
#        run(command="scripts/device_check.sh run", carry=["target/device"], timeout_s=540)
#      It runs the NVRTC compile test, the CUDA conformance suite (every op vs the CPU backend,
#      f32 tight and bf16 loose), whole-model parity (logits, loss, every gradient), the SFT
#      run against the CPU losses, LoRA against PEFT, the offloaded AdamW step through page-locked
#      stages — all `#[ignore]`d tests, run with --ignored and
#      OKAPI_REQUIRE_CUDA=1 so a missing driver fails instead of skipping — then the wgpu
#      conformance suite and whole-model/command tests on the GPU through Vulkan
#      (OKAPI_REQUIRE_WGPU=1, WGPU_BACKEND=vulkan; the Vulkan loader is carried as a .deb in
#      target/device/gl and unpacked when the machine lacks it), then the peer
#      (benches/gpu_peer.py: cuBLAS, SDPA flash, fused AdamW, softmax, the device copy and
#      transformers' SFT step on the same GPU), okapi's training benchmarks (bench train at the
#      $SFT cases, bf16 and f32; bench generate) and kernel microbenchmarks (cuda f32, cuda bf16,
#      wgpu), and prints LAST one table (scripts/device_table.py): every okapi kernel and
#      training step beside its peer with the ratio okapi/peer (higher is better), then the
#      pass/fail counts of each GPU test suite and the seconds each part took.
#      Logs go to $WORK (/tmp/okapi-device-check); when $OUT is set, the table, peer.jsonl,
#      bench.jsonl, status.txt and a tarball of every log are copied there (the tool brings back
#      at most 8 files).
#
# Time on an H100, estimated (nothing has run on a GPU yet; the table's "parts:" line gives the
# real seconds, to correct this next time): setup 5 s; cuda_compile 15 (9–15 s here); cuda ops
# conformance 60 (50 tests, the NVRTC disk cache after the first compile of each module);
# cuda_conformance (models, SFT vs CPU) 30; wgpu conformance 25 and wgpu model + commands 60 (52 s
# and 108 s here on lavapipe, 2 cores); gpu_peer.py 60 (about 40 s of GPU work, imports and
# model builds); okapi bench train 70 (4 runs: gpt2-124m-llama B16 T1024 bf16 2+8 steps, f32 1+4;
# llama-1b B4 T1024 the same; each ~5–10 s of set-up); bench generate 10; kernels cuda f32 20
# (every op at gpt2-124m-llama B4 T256, 10 repetitions a row), cuda bf16 15 (square 4096 and
# 8192, attention), wgpu 25; the table 1 — about 400 s, under 7 min. A deadline
# (OKAPI_DEVICE_DEADLINE, default 455 s from the start) bounds it whatever the estimate's error:
# every part runs under `timeout`, cut at its own cap and at the deadline, and a part that would
# start within 15 s of it is skipped; what was cut or skipped shows as such in the table (checked
# here with a 30 s deadline). So the whole run, table included, ends before 8 minutes.
#
# NVRTC: the device's own (driver 580 / CUDA 13.0: libnvrtc.so.13 on the default search path or
# under a pip site-packages, e.g. PyTorch's); OKAPI_NVRTC_LIB=/path/libnvrtc.so.13 overrides.
# The test binaries find tests/fixtures through the absolute path they were built at
# (CARGO_MANIFEST_DIR); when that path does not exist here it is linked to this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DEV=target/device
# the test and bench binaries `build` makes and `run` runs, and with okapi-train all it packs
TESTS="cuda_conformance cuda_compile conformance wgpu_model lora offload kernels"
BINS="$TESTS okapi-train"

build() {
  set -e
  cargo build --release --bin okapi-train
  local json
  json=$(cargo test --release --no-run --message-format=json --test cuda_conformance --test conformance --test wgpu_model --test lora --test offload -p okapi 2>/dev/null; \
         cargo test --release --no-run --message-format=json --test cuda_compile -p okapi-runtime --features cuda 2>/dev/null; \
         cargo bench --no-run --message-format=json --bench kernels -p okapi 2>/dev/null)
  rm -rf "$DEV" && mkdir -p "$DEV/gl"
  for t in $TESTS; do
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
  # packed: the device tool carries at most 64 MiB with the working tree (~18 MiB), and the
  # stripped binaries are ~62 MiB (xz: ~12 MiB); `run` unpacks them
  (cd "$DEV" && tar -cJf bins.tar.xz $BINS && rm -f $BINS)
  ls -la "$DEV"
  du -sh "$DEV"
  echo "with the tracked files: $(( ($(du -sb "$DEV" | cut -f1) + $(git ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')) / 1048576 )) MiB of the 64 MiB the device tool carries"
}

# unpacks the binaries `build` packed (python's tarfile: the device machine may lack xz)
unpack() {
  [ -f "$DEV/bins.tar.xz" ] || return 0
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$DEV/bins.tar.xz" "$DEV" && rm -f "$DEV/bins.tar.xz"
}

# The training cases, PRESET:BxT, of okapi's bench and of the peer (and of the table's rows).
SFT="gpt2-124m-llama:16x1024,llama-1b:4x1024"

# part NAME CAP CMD...: CMD under `timeout`, cut at CAP seconds and at the deadline; appends
# "NAME EXIT SECONDS" to $STATUS ("NAME skipped 0" and exit 125 when within 15 s of the deadline).
part() {
  local name=$1 cap=$2 s rc left
  shift 2
  left=$((DEADLINE - (SECONDS - T0)))
  if [ "$left" -lt 15 ]; then
    echo "$name skipped 0" >> "$STATUS"
    echo "!! $name: skipped, ${DEADLINE}s deadline" >&3
    return 125
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  s=$SECONDS
  timeout -k 5 "$cap" "$@"
  rc=$?
  echo "$name $rc $((SECONDS - s))" >> "$STATUS"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "!! $name: cut at ${cap}s" >&3
  return $rc
}

run() {
  T0=$SECONDS
  DEADLINE=${OKAPI_DEVICE_DEADLINE:-455}
  local work="${WORK:-/tmp/okapi-device-check}"
  rm -rf "$work" && mkdir -p "$work"
  STATUS="$work/status.txt"
  : > "$STATUS"
  exec 3>&1
  unpack || { echo "cannot unpack $DEV/bins.tar.xz" >&2; exit 2; }
  [ -x "$DEV/cuda_conformance" ] || { echo "no $DEV/cuda_conformance: run 'scripts/device_check.sh build' first and carry $DEV" >&2; exit 2; }
  local built_at
  built_at=$(cat "$DEV/built_at")
  if [ "$built_at" != "$ROOT" ] && [ ! -e "$built_at" ]; then
    mkdir -p "$(dirname "$built_at")" && ln -s "$ROOT" "$built_at" || echo "!! cannot link $built_at -> $ROOT: fixture paths will fail"
  fi
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: nvidia-smi failed or is missing"; } | tee "$work/gpu.txt"
  # NVRTC: when none is named or on the loader's path, the one of python3's site-packages (PyTorch's)
  if [ -z "${OKAPI_NVRTC_LIB:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so\.1'; then
    local lib
    lib=$(python3 -c 'import glob, site
dirs = site.getsitepackages() + [site.getusersitepackages()]
libs = [f for d in dirs for s in ("nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib") for f in sorted(glob.glob(f"{d}/{s}/libnvrtc.so.1*"))]
print(libs[0] if libs else "")' 2>/dev/null)
    [ -n "$lib" ] && export OKAPI_NVRTC_LIB="$lib"
  fi
  echo "NVRTC: ${OKAPI_NVRTC_LIB:-the default search path}"
  export OKAPI_REQUIRE_CUDA=1 OKAPI_REQUIRE_NVRTC=1 OKAPI_TRAIN_BIN="$ROOT/$DEV/okapi-train" RUST_BACKTRACE=1
  declare -A status
  part compile 60 "$DEV/cuda_compile" --test-threads=1 --nocapture > "$work/cuda_compile.log" 2>&1; status[compile]=$?
  # every op vs the CPU (tests/conformance.rs, stamped cuda:: f32 and cuda_bf16::), then the
  # whole models and the SFT run (tests/cuda_conformance.rs)
  part ops 150 "$DEV/conformance" cuda --ignored --test-threads=1 > "$work/cuda_ops.log" 2>&1; status[ops]=$?
  grep -E "^test .*FAILED|panicked|outside|past its output" "$work/cuda_ops.log" | head -30
  part conformance 90 "$DEV/cuda_conformance" --ignored --test-threads=1 --nocapture > "$work/cuda_conformance.log" 2>&1; status[conformance]=$?
  grep -E "^test |max abs err|loss cuda|sft .* step|panicked" "$work/cuda_conformance.log" | tail -40
  # LoRA on CUDA against PEFT's logits and adapter gradients (tests/lora.rs)
  part lora 30 "$DEV/lora" lora_on_cuda --ignored --test-threads=1 > "$work/lora.log" 2>&1; status[lora]=$?
  grep -E "^test |panicked" "$work/lora.log" | tail -5
  # the offloaded AdamW step through page-locked stages and queued copies vs the CPU, bit for bit
  # (tests/offload.rs)
  part offload 30 "$DEV/offload" on_cuda --ignored --test-threads=1 > "$work/offload.log" 2>&1; status[offload]=$?
  grep -E "^test |panicked" "$work/offload.log" | tail -5
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
  part wgpu 60 env WGPU_BACKEND=vulkan OKAPI_REQUIRE_WGPU=1 "$DEV/conformance" wgpu:: --test-threads=1 > "$work/wgpu_conformance.log" 2>&1; status[wgpu]=$?
  part wgpu_model 120 env WGPU_BACKEND=vulkan OKAPI_REQUIRE_WGPU=1 "$DEV/wgpu_model" --test-threads=1 --nocapture > "$work/wgpu_model.log" 2>&1; status[wgpu_model]=$?
  grep -E "adapter|^test .*FAILED|panicked" "$work/wgpu_conformance.log" "$work/wgpu_model.log" | head -20
  # the peer: PyTorch + transformers on the same GPU (JSON lines; refuses with exit 2 without CUDA)
  part peer 150 env PYTHONUNBUFFERED=1 python3 benches/gpu_peer.py --out "$work/peer.jsonl" --sft "$SFT" --budget-s 120 > "$work/peer.log" 2>&1
  tail -3 "$work/peer.log"
  # okapi's training step at the same cases (one JSON line each; a failed run is an error line)
  : > "$work/bench.jsonl"
  local case preset bt b t prec w n rc
  for case in ${SFT//,/ }; do
    preset=${case%%:*} bt=${case#*:}
    b=${bt%x*} t=${bt#*x}
    for prec in bf16 f32; do
      if [ "$prec" = bf16 ]; then w=2 n=8; else w=1 n=4; fi
      part "train-$preset-$prec" 120 "$DEV/okapi-train" bench train --backend cuda --precision "$prec" --preset "$preset" \
        --batch-size "$b" --seq-len "$t" --warmup "$w" --steps "$n" > "$work/train-$preset-$prec.out" 2> "$work/train-$preset-$prec.err"
      rc=$?
      if [ "$rc" = 0 ] && tail -1 "$work/train-$preset-$prec.out" | grep -q '^{'; then
        tail -1 "$work/train-$preset-$prec.out" >> "$work/bench.jsonl"
      else
        [ "$rc" = 125 ] && rc='"skipped"'
        echo "{\"mode\":\"train\",\"preset\":\"$preset\",\"precision\":\"$prec\",\"batch_size\":$b,\"seq_len\":$t,\"error\":$rc}" >> "$work/bench.jsonl"
        tail -2 "$work/train-$preset-$prec.err"
      fi
    done
  done
  part generate 45 "$DEV/okapi-train" bench generate --backend cuda --preset gpt2-124m-llama --batch-size 8 --seq-len 128 --new-tokens 128 --warmup 1 --steps 3 \
    > "$work/generate.out" 2> "$work/generate.err" && tail -1 "$work/generate.out" >> "$work/bench.jsonl"
  # kernel microbenchmarks (RESULT lines: GFLOP/s, GB/s): every op on cuda f32; the square GEMMs
  # and attention (gpt2-124m-llama's, and B·H 64 T 2048 D 128 as llama-7b B2) in bf16; wgpu
  part kernels-cuda-f32 60 "$DEV/kernels" --backend cuda --square 4096 --preset gpt2-124m-llama --reps 10 > "$work/kernels-cuda-f32.log" 2>&1
  part kernels-cuda-bf16 60 "$DEV/kernels" --backend cuda --precision bf16 --square 4096,8192 --preset gpt2-124m-llama,llama-7b:2x2048 \
    --filter matmul.square,attention --reps 10 > "$work/kernels-cuda-bf16.log" 2>&1
  part kernels-wgpu 60 env WGPU_BACKEND=vulkan "$DEV/kernels" --backend wgpu --square 4096 --preset gpt2-124m-llama \
    --filter matmul.square,softmax,adamw --reps 10 > "$work/kernels-wgpu.log" 2>&1
  grep -hE "^device:|ceiling:|panicked" "$work"/kernels-*.log | cut -c1-160
  echo "bench (JSON lines, medians):"
  cut -c1-400 "$work/bench.jsonl"
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/logs.tar.gz" -C "$work" . 2>/dev/null
    cp "$work/peer.jsonl" "$work/bench.jsonl" "$work/status.txt" "$OUT/" 2>/dev/null
  fi
  echo "total $((SECONDS - T0)) s (deadline ${DEADLINE} s)"
  echo
  python3 scripts/device_table.py "$work" --sft "$SFT" | tee "$work/table.md"
  [ -n "${OUT:-}" ] && cp "$work/table.md" "$OUT/"
  [ "${status[compile]}" = 0 ] && [ "${status[ops]}" = 0 ] && [ "${status[conformance]}" = 0 ] && [ "${status[lora]}" = 0 ] && [ "${status[offload]}" = 0 ] && [ "${status[wgpu]}" = 0 ] && [ "${status[wgpu_model]}" = 0 ]
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: scripts/device_check.sh build|run" >&2; exit 2 ;;
esac
