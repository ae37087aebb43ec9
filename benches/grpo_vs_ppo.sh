#!/bin/bash
# One GRPO / RLOO iteration against one PPO iteration on bench-5m: the same 32 rollouts of exactly
# 64 new tokens (a random policy never samples EOS), time per phase (median of iterations 2-5) and
# peak resident memory. Needs `cargo build --release` (benches/RESULTS.md, "GRPO and RLOO vs PPO").
set -e
cd "$(dirname "$0")/.."
B=$PWD/target/release/okapi-train
W=${TMPDIR:-/tmp}/okapi-grpo-vs-ppo
rm -rf $W && mkdir -p $W
$B tokenizer --data data/assets/sft/*.json --vocab-size 4096 --out $W/tokenizer.json >/dev/null 2>&1
$B init --arch llama --preset bench-5m --tokenizer $W/tokenizer.json --out $W/policy >/dev/null 2>&1
$B reward --model $W/policy --data data/assets/ranking/*.json --out $W/rm --max-steps 1 >/dev/null 2>&1
PEAK='import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); print("peak_rss_mib %.0f" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024), file=sys.stderr); sys.exit(r.returncode)'
COMMON="--policy $W/policy --prompts data/assets/rl/ --iterations 5 --rollouts 32 --chunk-size 16 --max-new-tokens 64 --seed 1"
run() {
  local name=$1; shift
  python3 -c "$PEAK" $B "$@" $COMMON --out $W/$name 2>&1 | grep peak_rss | sed "s/^/$name /"
  python3 - "$W/$name/metrics.jsonl" "$name" <<'EOF'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])][1:]
med = lambda k: statistics.median(l[k] for l in lines)
print(f"{sys.argv[2]} generate {med('time_generate_s'):.2f} s, score {med('time_score_s'):.2f} s, update {med('time_update_s'):.2f} s, tokens/iteration {med('response_len') * 32:.0f}")
EOF
}
run ppo ppo --reward $W/rm --ppo-epochs 4 --ppo-batch-size 8
run grpo grpo --reward $W/rm --num-generations 8 --batch-size 8
run grpo-4-passes grpo --reward $W/rm --num-generations 8 --batch-size 8 --num-iterations 4
run grpo-beta0 grpo --reward $W/rm --num-generations 8 --batch-size 8 --beta 0
run rloo rloo --reward $W/rm --num-generations 4 --batch-size 8
