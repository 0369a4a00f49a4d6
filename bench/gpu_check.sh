#!/usr/bin/env bash
# The GPU path measured in one call (<= 8 minutes on an H200): training tokens/s and MFU at the
# default shapes and at batch 32/64 (left-padded and padding-free, with liger-kernel when it is
# installed), scoring users/s and a full-catalog evaluation of an ML-100k-sized catalog, peak memory.
# Writes bench/results/gpu.json (and $OUT/gpu.json when $OUT is set, which a device call brings back).
# What is measured and how MFU is computed: bench/gpu_check.py's docstring.
#
#   bash bench/gpu_check.sh           # on a CUDA machine (bf16)
#   bash bench/gpu_check.sh --tiny    # on a CPU, a tiny model, seconds (tests/pipeline/test_gpu_check.py)
#
# Needs only torch, transformers, peft, tokenizers and pyyaml (the lent machine has no mlflow, prefect,
# pydantic or gguf; the check never imports them). liger-kernel is optional: it is a pure-Python wheel,
# so it can travel with the call: `pip download liger-kernel==0.8.5 --no-deps -d wheels/`, carry
# `wheels`, and run with TETHER_WHEELS=wheels; without it the liger section is skipped with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv where there is one (here), else the machine's python (the lent GPU machine).
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON="$(command -v python3 || command -v python)"; fi
fi
if [[ -n "${TETHER_WHEELS:-}" && -d "${TETHER_WHEELS}" ]]; then
  "$PYTHON" -m pip install --quiet --no-deps --no-index "${TETHER_WHEELS}"/*.whl || echo "wheels in ${TETHER_WHEELS} not installed" >&2
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# 470 s: the script's own budgets end well before; this only guards the 8-minute limit of a device call.
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PYTHON" bench/gpu_check.py "$@"
