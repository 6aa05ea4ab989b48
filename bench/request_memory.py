"""A request's own memory, in process: one 16-bit PNG through the pipeline per metrics mode, the
resident size's peak above where it stood (Linux: ``/proc/self/clear_refs`` 5, then ``VmHWM``),
less the model calls' working memory the service set aside, per pixel of the image. Compare with
the admission estimate (``app/pipeline.py``: IMAGE_, FRAME_ and REFERENCE_BYTES_PER_PIXEL).

    python -m bench.request_memory --side 4096

The set-aside figure is for a full 1088 x 1088 call; tiles of a 4096-pixel image are ~944 pixels,
so the request's own share printed is low by about 150 MB (docs/BENCHMARKS.md corrects for it).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image as PillowImage

from app.allocator import keep_freed_memory, return_freed_memory
from app.deadline import Deadline
from app.inference.registry import load_registry
from app.inference.working_memory import peak_of
from app.pipeline import FRAME_BYTES_PER_PIXEL, IMAGE_BYTES_PER_PIXEL, REFERENCE_BYTES_PER_PIXEL, DenoisePipeline, DenoiseRequest, RequestLabels
from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.request_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4096)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    args = parser.parse_args(argv)
    keep_freed_memory()
    settings = Settings(models_dir=args.models, memory_budget_bytes=64 << 30)
    pipeline = DenoisePipeline(load_registry(settings), settings)
    calls = pipeline.budget.reserved
    pixels = args.side * args.side
    noisy = np.random.default_rng(0).normal(1000, 30, (args.side, args.side)).clip(0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    PillowImage.fromarray(noisy).save(buffer, format="PNG", compress_level=1)
    data = buffer.getvalue()
    print(f"model calls set aside: {calls / 1e6:.0f} MB")
    print("| metrics | peak above idle MB | the request's own MB | bytes a pixel | estimated bytes a pixel |")
    print("| --- | --- | --- | --- | --- |")
    try:
        for metrics in ("none", "noref", "all"):
            request = DenoiseRequest(data=data, modality="ct", metrics=metrics, reference=data if metrics == "all" else None)
            return_freed_memory()
            started = time.perf_counter()
            peak = peak_of(lambda request=request: pipeline._run(request, RequestLabels(), Deadline(3600)))
            assert peak is not None, "no /proc/self/clear_refs here"
            own = peak - calls
            estimate = IMAGE_BYTES_PER_PIXEL + FRAME_BYTES_PER_PIXEL + (REFERENCE_BYTES_PER_PIXEL if metrics == "all" else 0)
            print(f"| {metrics} | {peak / 1e6:.0f} | {own / 1e6:.0f} | {own / pixels:.0f} | {estimate} |"
                  f"  ({time.perf_counter() - started:.1f} s)", flush=True)
    finally:
        pipeline.close()


if __name__ == "__main__":
    main()
