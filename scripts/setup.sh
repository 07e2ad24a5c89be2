#!/usr/bin/env bash
# Create .venv (seeing any torch already installed system-wide) and install tsode into it.
# Where no torch is importable, install the CPU build of torch 2.13.0 first, so that
# resolving the package's `torch>=2.1` requirement never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv --system-site-packages .venv
fi
VPY=.venv/bin/python
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no torch found: installing the CPU build of torch 2.13.0"
    "$VPY" -m pip install --quiet "torch==2.13.0" \
        || "$VPY" -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
EXTRAS=${TSODE_EXTRAS:-dev}
"$VPY" -m pip install --quiet --disable-pip-version-check -e ".[${EXTRAS}]"
echo "[setup] ready: $("$VPY" -c 'import torch, tsode; print("torch", torch.__version__, "| tsode", tsode.__version__)')"
