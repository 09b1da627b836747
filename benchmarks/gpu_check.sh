#!/usr/bin/env bash
# The GPU check: one command that, on one GPU, in under 10 minutes, measures what cme-bench's users run at scale and
# writes one JSON + Markdown summary into OUT_DIR (summary.json, summary.md; each part's log under logs/).
#
#   benchmarks/gpu_check.sh OUT_DIR            on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh OUT_DIR --dry-run  the same parts at CPU sizes (tiny shapes, a few steps): CI runs it
#
# Parts (each one's failure is recorded and the others still run; the exit status is 1 if any part failed):
#   efficiency  `cme-bench profile` at a Llama-2-7B shape (random weights, bf16): k = 2, 4, 8; TeamLoRA fused vs
#               LoRA and MoELoRA reference/fused
#   plan        `cme-bench plan --measure` at the 7B shape: predicted vs measured peak memory on the GPU
#   vllm        benchmarks/vllm_throughput.py: vLLM vs HF generation throughput for base, LoRA and TeamLoRA
#               (needs .venv-vllm; skipped, and said so in the summary, without it)
#   run         a short SmolLM2-135M TeamLoRA run (train + evaluation through lm-eval) on the GPU
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out="$1"; shift
dry=0
for arg in "$@"; do
    case "$arg" in --dry-run) dry=1 ;; *) usage ;; esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out/logs"
: >"$out/steps.tsv"
cli=("$py" -m cme_bench.cli)

# step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to logs/NAME.log, record "NAME rc seconds".
step() {
    local name="$1" limit="$2"; shift 2
    local t0=$SECONDS
    echo "== $name: $*" | tee "$out/logs/$name.log"
    timeout --kill-after=10 "$limit" "$@" >>"$out/logs/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$out/steps.tsv"
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
}
skip() { printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$out/steps.tsv"; echo "== $1: skipped ($2)"; }

if [ "$dry" = 1 ]; then
    device=cpu; dtype=fp32; vllm_dtype=float32
    # Tiny shapes: tiny-llama's config for the efficiency table and the plan; a head_dim-64 tiny Llama for vLLM's
    # CPU kernels (written into OUT_DIR, never into the checkout).
    "$py" - "$out/models" <<'PY' || exit 1
import sys
from pathlib import Path

from cme_bench.models import build_tiny_llama, load_config, save_model_folder

root = Path(sys.argv[1])
load_config("tiny-llama").save_pretrained(root / "tiny-config")
if not (root / "tiny-vllm" / "config.json").is_file():
    save_model_folder(*build_tiny_llama(hidden_size=128, num_heads=2, head_dim=64, intermediate_size=256), root / "tiny-vllm")
PY
    shape="$out/models/tiny-config/config.json"
    profile=(--experts 2 --rank 4 --batch 1 --seq-len 16 --new-tokens 2 --repeats 1 --infer-repeats 1 --warmup 0)
    plan=(--batch-size 2 --max-seq-len 32 --gpu-memory 1GiB)
    vllm=(--model "$out/models/tiny-vllm" --batch 2 --max-tokens 4)
    run=(--model tiny-llama --tasks cme_mini_boolq --train-cap 8 --batch-size 4 --max-steps 2 --limit 2)
else
    device=cuda; dtype=bf16; vllm_dtype=bfloat16
    shape="$root/benchmarks/configs/llama-2-7b/config.json"
    profile=(--experts 2,4,8 --rank 32 --batch 2 --seq-len 256 --new-tokens 32 --repeats 5 --infer-repeats 3)
    gpu_memory="$("$py" -c 'import torch; print(torch.cuda.get_device_properties(0).total_memory)')" || exit 1
    plan=(--batch-size 4 --max-seq-len 512 --gpu-memory "$gpu_memory")
    vllm=(--model smollm2-135m --batch 32 --max-tokens 64)
    run=(--model smollm2-135m --tasks cme_mini_sst2,cme_mini_boolq --max-steps 30 --limit 40 --eval-batch-size 32)
fi

"$py" - "$out/environment.json" "$device" "$dtype" "$dry" <<'PY'
import json, platform, sys

import torch

from cme_bench.devices import describe, resolve

path, device, dtype, dry = sys.argv[1:]
device, dtype = resolve(device, dtype)  # a GPU check without a GPU stops here, with one readable line
info = {"dry_run": dry == "1", **describe(device, dtype), "torch": torch.__version__, "python": platform.python_version()}
open(path, "w").write(json.dumps(info, indent=2))
PY
[ $? -eq 0 ] || { echo "no usable $device here; use --dry-run on a machine without a GPU" >&2; exit 2; }

step efficiency 240 "${cli[@]}" profile --model "$shape" --random-weights --adapters lora,moelora,teamlora \
    --forms reference,fused --no-memory --device "$device" --dtype "$dtype" "${profile[@]}" --json "$out/profile.json"
step plan 120 "${cli[@]}" plan --model "$shape" --adapter teamlora --dtype "$dtype" "${plan[@]}" \
    --measure --device "$device" --json "$out/plan.json"
if [ -x "$root/.venv-vllm/bin/python" ]; then
    step vllm 100 "$root/scripts/vllm-run.sh" python "$root/benchmarks/vllm_throughput.py" "${vllm[@]}" \
        --methods base,lora,teamlora --dtype "$vllm_dtype" --device "$device" --out "$out/vllm.json"
else
    skip vllm "no .venv-vllm here (make vllm-env builds it)"
fi
step run 140 "${cli[@]}" run --adapter teamlora "${run[@]}" --device "$device" --dtype "$dtype" \
    --output "$out/results" --no-report

"$py" "$root/benchmarks/gpu_check_summary.py" "$out"
