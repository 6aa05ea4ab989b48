#!/usr/bin/env bash
# Reproduce the committed models from scratch: prepare the data, train, export and evaluate every
# model. Each step is resumable: rerunning skips finished work (prepared data is cached, training
# resumes from runs/<name>/last.pt and stops at its budget). About 3.5 hours on two CPU cores;
# PROFILE=gpu runs the U-Net schedule with the GPU profile (training/schedule.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "cpu,train,dev"

python=.venv/bin/python
[ -f "${DENOISE_DATA_CACHE:-$HOME/.cache/medical-denoise}/prepared/manifest.json" ] || $python -m training.data prepare
# The default U-Nets: pretrained on every modality, fine-tuned per modality, exported with --default.
$python -m training.schedule --profile "${PROFILE:-cpu}"
# The blind autoencoder baselines.
for modality in ct mr xray; do
  $python -m training.train --config "training/configs/$modality-autoencoder.toml" --minutes 4 --no-progress
  $python -m training.export --run "runs/$modality-autoencoder"
done
$python -m training.evaluate
