#!/usr/bin/env bash
# Reproduce the committed models from scratch: prepare the data, train, export and evaluate every
# model. Each step is resumable: rerunning skips finished work (prepared data is cached, training
# resumes from runs/<name>/last.pt and stops at its budget). About 2 hours on two CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv "cpu,train,dev"

python=.venv/bin/python
[ -f "${DENOISE_DATA_CACHE:-$HOME/.cache/medical-denoise}/prepared/manifest.json" ] || $python -m training.data prepare
for modality in ${MODALITIES:-ct mr xray}; do
  for architecture in unet autoencoder; do
    name="$modality-$architecture"
    $python -m training.train --config "training/configs/$name.toml" --no-progress
    default=""; [ "$architecture" = unet ] && default="--default"
    $python -m training.export --run "runs/$name" $default
  done
done
$python -m training.evaluate
