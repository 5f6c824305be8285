#!/usr/bin/env bash
# Time the README's set-up commands, each as a user runs it, and print the durations with the thread settings
# they ran under, for the README's "Set-up" timings. Run it on an otherwise idle machine: on a busy 2-core machine
# the numbers mean little (the load average is printed before each command to show how idle it was).
#
#   bash scripts/time_setup.sh
#
# Commands timed (as in the README, writing under $OUT instead of outputs/ so no existing folder is replaced):
#   bash scripts/setup.sh                  into a fresh virtual environment ($OUT/venv, deleted first)
#   slam-hf train --config configs/slam-v1-tiny.yaml
#   slam-hf train --config configs/slam-v2-tiny.yaml
#   slam-hf generate --model <the v1 folder> --input "To be, or not to be"
# Settings:
#   OUT=outputs/time-setup   where the environment, the model folders and the logs go
#   SKIP_SETUP=1             time the other commands with the existing .venv instead of installing one
#   TRAIN_ARGS="--max-steps 2 --max-train-rows 16 --max-eval-rows 4"   a quick check of this script (the timings
#                            then mean nothing)
#   OMP_NUM_THREADS          left as you set it (unset: torch uses one thread per core); the YAMLs' torch_threads
#                            sets the training threads either way
# pip's download cache makes setup.sh faster on a second run; PIP_NO_CACHE_DIR=1 times a first install.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/time-setup}
mkdir -p "$OUT"
SUMMARY=()

run_timed() {  # run_timed LABEL COMMAND...: runs it with its output in $OUT/LABEL.log, records the duration
    local label=$1
    shift
    local command start end
    command=$(printf '%q ' "$@")
    echo "[time_setup] $label: load average $(cut -d' ' -f1-3 /proc/loadavg) before; running: $command"
    start=$(date +%s.%N)
    "$@" >"$OUT/$label.log" 2>&1 || { echo "[time_setup] $label failed; see $OUT/$label.log"; tail -20 "$OUT/$label.log"; exit 1; }
    end=$(date +%s.%N)
    SUMMARY+=("$(printf '%-10s %8.1f s   %s' "$label" "$(awk "BEGIN {print $end - $start}")" "$command")")
}

if [[ "${SKIP_SETUP:-0}" == 1 ]]; then
    VENV=.venv
else
    VENV=$OUT/venv
    rm -rf "$VENV"
    run_timed setup env VENV="$VENV" bash scripts/setup.sh
fi
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of flags
run_timed train-v1 "$VENV/bin/slam-hf" train --config configs/slam-v1-tiny.yaml --output-dir "$OUT/slam-v1-tiny" ${TRAIN_ARGS:-}
# shellcheck disable=SC2086
run_timed train-v2 "$VENV/bin/slam-hf" train --config configs/slam-v2-tiny.yaml --output-dir "$OUT/slam-v2-tiny" ${TRAIN_ARGS:-}
run_timed generate "$VENV/bin/slam-hf" generate --model "$OUT/slam-v1-tiny" --input "To be, or not to be"

echo
echo "[time_setup] $(getconf _NPROCESSORS_ONLN) cores online, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, torch's default threads here:" \
    "$("$VENV/bin/python" -c 'import torch; print(torch.get_num_threads())')"
for name in slam-v1-tiny slam-v2-tiny; do
    "$VENV/bin/python" - "$name" "$OUT/$name/training_metrics.json" <<'EOF'
import json, sys, yaml
name, metrics = sys.argv[1], json.load(open(sys.argv[2]))
threads = yaml.safe_load(open(f"configs/{name}.yaml")).get("torch_threads")
print(f"[time_setup] {name}: torch_threads {threads} in the YAML; the run reports {metrics['hardware']}, "
      f"{metrics['wall_seconds']:.1f} s wall, {metrics['train_tokens_per_second']:,.0f} training tokens/s, "
      f"held-out perplexity {metrics['val_perplexity_after']:.1f}; transformers {metrics['versions']['transformers']}")
EOF
done
echo "[time_setup] generate decoded as: $(grep '^\[slam-hf\] decoding' "$OUT/generate.log" || echo '(no decoding line)')"
echo
printf '%s\n' "${SUMMARY[@]}"
