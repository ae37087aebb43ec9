#!/bin/bash
# Peak resident memory per rank of a 4-step SFT on bench-33m: one process, and 2 MPI ranks with --zero 0, 1, 2.
# Needs `cargo build --release --features mpi` and Open MPI's mpirun (benches/RESULTS.md, "peak memory per rank").
set -e
cd "$(dirname "$0")/.."
B=$PWD/target/release/okapi-train
D=$PWD/data/assets/sft
W=${TMPDIR:-/tmp}/okapi-zero-memory
rm -rf $W && mkdir -p $W
$B tokenizer --data $D/en.json $D/vi.json $D/ru.json --vocab-size 4714 --out $W/tok.json >/dev/null 2>&1
$B init --arch llama --preset bench-33m --tokenizer $W/tok.json --out $W/b33 >/dev/null 2>&1
PEAK='import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print("peak_rss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)'
ARGS="sft --model $W/b33 --data $D/en.json $D/vi.json $D/ru.json --max-len 256 --batch-size 8 --max-steps 4 --no-shuffle"
echo "one process:"
python3 -c "$PEAK" $B $ARGS --out $W/one 2>&1 | grep -E "peak_rss|step 4/4"
for z in 0 1 2; do
  echo "2 ranks, --zero $z:"
  mpirun -np 2 --oversubscribe $( [ "$(id -u)" = 0 ] && echo --allow-run-as-root ) python3 -c "$PEAK" $B $ARGS --zero $z --out $W/z$z 2>&1 | grep -E "peak_rss|step 4/4|error"
  tail -1 $W/z$z/metrics.jsonl | python3 -c 'import json,sys; m=json.loads(sys.stdin.read()); print("  final loss", m["loss"], "grad_norm", m["grad_norm"])'
done
tail -1 $W/one/metrics.jsonl | python3 -c 'import json,sys; m=json.loads(sys.stdin.read()); print("one process final loss", m["loss"], "grad_norm", m["grad_norm"])'
