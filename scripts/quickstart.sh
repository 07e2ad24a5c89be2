#!/usr/bin/env bash
# The README's main job: set up .venv, then train the default model (latent ODE) from
# recipes/quickstart.yaml on the embedded synthetic ICU data, print its test metrics next to
# the LOCF baseline, and say where the MLflow run (local SQLite store ./mlflow.db unless
# MLFLOW_TRACKING_URI is set) and the forecast plot are. Extra arguments go to
# `tsode quickstart` (e.g. --max_epochs 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# small models, many small ops: one intra-op thread is fastest (and kind to shared CPUs)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/tsode quickstart "$@"
