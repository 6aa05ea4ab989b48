"""Each committed model on a GPU provider against the CPU: ``python -m bench.gpu_parity``.

For every model under ``--models-dir``: the provider its session really gets when ``--provider``
is asked for (TensorRT or CUDA, CPU as the fallback ONNX Runtime would take silently), and the
largest difference of its output from the CPU session's on the benchmark's 512 x 512 CT slice
(in model units). Part of ``bench/gpu_check.sh``; on a machine without a GPU it reports the CPU
fallback, which is how it is tested.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.inference.registry import ORT_PROVIDERS, load_registry
from app.settings import Settings
from bench.baselines import model_input
from bench.cases import ct_cases

REPO = Path(__file__).resolve().parents[1]


def parity(models_dir: Path, provider: str) -> list[dict[str, object]]:
    units = ct_cases("none")[0].units
    cpu = load_registry(Settings(models_dir=models_dir, providers=("cpu",)))
    gpu = load_registry(Settings(models_dir=models_dir, providers=tuple(dict.fromkeys((provider, "cpu")))))
    rows = []
    for model_id, reference in sorted(cpu.models.items()):
        model = gpu.models[model_id]
        array = model_input(reference, units)
        feed = {reference.card.input.name: array}
        expected = reference.session.run([reference.card.output.name], feed)[0]
        actual = model.session.run([model.card.output.name], feed)[0]
        rows.append({
            "model": model_id,
            "asked_for": ORT_PROVIDERS[provider],
            "provider": model.execution_provider,
            "got_it": model.execution_provider == ORT_PROVIDERS[provider],
            "max_abs_diff_vs_cpu": float(np.max(np.abs(actual - expected))),
            "input_shape": list(array.shape),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_parity", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--provider", action="append", choices=("tensorrt", "cuda", "cpu"))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"onnxruntime {ort.__version__}, available: {', '.join(ort.get_available_providers())}")
    rows = [row for provider in args.provider or ["tensorrt", "cuda"] for row in parity(args.models_dir, provider)]
    for row in rows:
        print(f"{row['model']}: asked {row['asked_for']}, got {row['provider']}, "
              f"max |output - CPU| {row['max_abs_diff_vs_cpu']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(row["got_it"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
