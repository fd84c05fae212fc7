#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one script (all of it takes more than one 10-minute call;
# CHECKS picks): float32 parity of the fast paths on the GPU, `spectral-gpt train --gpu` (NCCL)
# killed and resumed against an uninterrupted run, the one-GPU-per-worker refusal, and the
# benchmarks on the GPU. Results land in DIR (default gpu-results):
# one log per step, the benchmark JSON files, and the runs' metrics and results (checkpoints excluded).
#
#   bash benchmarks/gpu_checks.sh [DIR]        (PYTHON=python3 by default; run from the repository root)
#
# CHECKS="parity train mfu ..." runs only those sections (default: all, in the order below);
# PRECISION=fp32|bf16 (default bf16) is what the training runs use. The section "bigger" measures
# mfu, wave_vs_standard and compile_speedup again at BIGGER_SIZE (default large) into DIR/BIGGER_SIZE,
# since the small model leaves a big GPU idle between kernel launches. The section "compile_modes" trains
# the wave model and the standard GPT through `train --gpu` eagerly and with each of COMPILE_MODES (default
# reduce-overhead: CUDA graphs, which the launch-bound wave model needs most; compile_speedup already
# measures the default mode) and tabulates their steady tokens/s in DIR/compile_modes.txt.
#
# Seconds each section took on an H200 (session 9), to fit one call of at most 10 minutes: parity 20,
# train 130, mfu 14, wave_vs_standard 27, compile_speedup ~70 per 2 models (10 models now), checkpoint_stall
# 67, orchestration_overhead --quick 59; compile_modes is about 50 a run (two per mode), monitoring_overhead
# (10 runs of 1000 tiny steps) perhaps 150, bigger several minutes. Not yet measured on a GPU (as of
# 2026-11-26), so first: CHECKS="parity compile_speedup compile_modes checkpoint_stall orchestration_overhead".
#
# ARCHIVE=FILE.tar.gz also packs DIR (checkpoints left out) after every step, so a session cut short
# by a time limit still carries off everything up to its last finished step.
set -u
out=$(realpath -m "${1:-gpu-results}")
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
checks=${CHECKS:-parity refuse train mfu wave_vs_standard compile_speedup compile_modes linear_attention_scaling orchestration_overhead monitoring_overhead checkpoint_stall bigger}
train=("$py" -m orchestrator.cli train --gpu --model small --steps 400 --checkpoint-interval 100
       --eval-interval 100 --log-interval 1 --viz-interval 200 --precision "${PRECISION:-bf16}"
       --output "$out/runs")

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its log, print its tail
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? in $((SECONDS - started)) s"
    tail -n 4 "$out/$name.log"
    pack
}

wanted() { [[ " $checks " == *" $1 "* ]]; }

pack() {
    [ -z "${ARCHIVE:-}" ] || tar -czf "$ARCHIVE" --exclude='*.pt' -C "$(dirname "$out")" "$(basename "$out")"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, ray; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl',
torch.cuda.nccl.version(), 'ray', ray.__version__)" | tee -a "$out/gpu.txt"

wanted parity && step parity 180 "$py" -m pytest -q -p no:cacheprovider tests/test_device_parity.py \
    tests/test_snapshot.py
wanted refuse && step refuse_two_workers 60 "${train[@]}" --workers 2 --name refused
if wanted train; then
step train_uninterrupted 240 "${train[@]}" --name uninterrupted

# The same run, its driver and Ray killed (SIGKILL, whole process group) once step 200 is checkpointed,
# then the same command again: it must resume from step 200 on the GPU and finish.
setsid "${train[@]}" --name resumed >"$out/train_killed.log" 2>&1 &
leader=$!
for _ in $(seq 600); do
    ls "$out"/runs/resumed_*/checkpoints/checkpoint_step_200.pt >/dev/null 2>&1 && break
    sleep 0.2
done
kill -9 -- "-$leader"
wait "$leader" 2>/dev/null
echo "== killed the run at: $(ls "$out"/runs/resumed_*/checkpoints/)"
step train_resumed 240 "${train[@]}" --name resumed
"$py" - "$out/runs" <<'EOF' | tee "$out/resume_vs_uninterrupted.txt"
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def run(name):
    folder = next(runs.glob(f"{name}_*"))
    rows = {}
    for line in (folder / "logs" / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            rows[row["step"]] = row["loss"]
    return rows, json.loads((folder / "results.json").read_text())
(a, ra), (b, rb) = run("uninterrupted"), run("resumed")
common = sorted(set(a) & set(b))
print("steps compared", len(common), "max |loss difference|", max(abs(a[s] - b[s]) for s in common))
for key in ("val_loss", "best_val_loss", "tokens_per_second", "peak_memory_mb"):
    print(key, "uninterrupted", ra["final_metrics"][key], "resumed", rb["final_metrics"][key])
EOF
fi

for name in mfu wave_vs_standard linear_attention_scaling checkpoint_stall; do
    wanted "$name" && step "$name" 150 "$py" -m benchmarks "$name" --json "$out/$name.json"
done
wanted compile_speedup && step compile_speedup 300 "$py" -m benchmarks compile_speedup --json "$out/compile_speedup.json"
if wanted compile_modes; then
    for experiment in wave_baseline standard_transformer; do
        for mode in eager ${COMPILE_MODES:-reduce-overhead}; do
            flags=(--compile "$mode")
            [ "$mode" = eager ] && flags=()
            step "compile_${experiment}_$mode" 240 "$py" -m orchestrator.cli train --gpu --model small --steps 300 \
                --experiment "$experiment" --precision "${PRECISION:-bf16}" --name "${experiment}_$mode" \
                --output "$out/compile_runs" --log-interval 1 --eval-interval 300 --checkpoint-interval 300 \
                --viz-interval 300 "${flags[@]}"
        done
    done
    "$py" - "$out/compile_runs" <<'EOF' | tee "$out/compile_modes.txt"
import json, statistics, sys
from pathlib import Path
print("run, median step s (steps 100-299), steady tokens/s, status")
for folder in sorted(Path(sys.argv[1]).iterdir()):
    rows = [json.loads(line) for line in (folder / "logs" / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in rows if "step_time_s" in r and r["step"] >= 100]
    spec = json.loads((folder / "config.json").read_text())["config"]["spec"]
    tokens = spec["train"]["batch_size"] * spec["model"]["block_size"]
    done = folder / "results.json"
    status = json.loads(done.read_text())["status"] if done.exists() else "unfinished"
    median = statistics.median(times) if times else float("nan")
    print(folder.name, round(median, 5), round(tokens / median) if times else "-", status)
EOF
fi
wanted orchestration_overhead && step orchestration_overhead 240 "$py" -m benchmarks orchestration_overhead \
    --json "$out/orchestration_overhead.json"
wanted monitoring_overhead && step monitoring_overhead 300 "$py" -m benchmarks monitoring_overhead \
    --json "$out/monitoring_overhead.json"
if wanted bigger; then
    bigger=${BIGGER_SIZE:-large}
    mkdir -p "$out/$bigger"
    for name in mfu wave_vs_standard compile_speedup; do
        step "${name}_$bigger" 300 "$py" -m benchmarks "$name" --size "$bigger" --json "$out/$bigger/$name.json"
    done
fi
pack
