"""What the service is measured against, in the same process and run: the model called directly
through ONNX Runtime on the case's pixels, and the classical denoisers BM3D and non-local means.

The direct runs build a bare ONNX Runtime session on the served model file with ONNX Runtime's
default session options (which already optimise the graph fully), every core as intra-op threads
and the execution provider the service's session got: ONNX Runtime as anyone would call it, whatever the
service's own ``DENOISE_ORT_*`` settings are. The input is normalised once, outside the timed
loop; only ``session.run`` is timed. The whole image goes in one call (no tiling), so for large
images the comparison includes the cost of tiling.

Throughput has a third direct way beside batch 1 and batch 4: one thread per core, each calling a
one-thread session on its own image, side by side, which is how the service's CPU lanes run under
load; the best of the three is what the service's throughput is judged against.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from app.inference.normalisation import to_unit_range, window_for
from app.inference.noise_map import noise_map
from app.inference.registry import LoadedModel
from app.inference.tiling import round_up


@dataclass(frozen=True)
class Timing:
    name: str
    images_per_call: int
    seconds: list[float]  # per call
    wall_s: float | None = None  # where calls ran side by side: from the first start to the last end

    @property
    def throughput(self) -> float:
        """Images per second."""
        return self.images_per_call * len(self.seconds) / (self.wall_s or sum(self.seconds))

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.seconds, q) * 1000)


def model_input(model: LoadedModel, units: np.ndarray) -> np.ndarray:
    """The (1, C, H, W) float32 array the model sees, padded by reflection to its multiple: the
    image and, for a model conditioned on the noise level, the map the service would estimate
    (made here, outside the timing: the baseline is the bare model call)."""
    window = window_for(units, model.card.normalisation)
    channels = [to_unit_range(units, window)]
    if model.card.noise_map is not None:
        sigma, _ = noise_map(units, model.card.noise_map, 1.0)
        channels.append(sigma / np.float32(window.width))
    stacked = np.stack(channels).astype(np.float32)
    multiple = model.card.spatial_multiple
    rows, cols = stacked.shape[1:]
    pad = ((0, 0), (0, round_up(rows, multiple) - rows), (0, round_up(cols, multiple) - cols))
    return np.ascontiguousarray(np.pad(stacked, pad, mode="reflect"))[np.newaxis]


def bare_session(
    model: LoadedModel, config: dict[str, str] | None = None, threads: int | None = None
) -> ort.InferenceSession:
    """ONNX Runtime with its default options on the model file, on the service's provider.

    Only the thread count is set, to every core as the service's default: ONNX Runtime's own
    default counts physical cores, which on a small virtual machine can be half of them.
    ``config`` adds session config entries (``bench.paired`` stops the spinning after each call);
    ``threads`` sets another thread count (1 for the side-by-side way).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(model.path), options, providers=[model.execution_provider])


def time_direct(
    model: LoadedModel,
    session: ort.InferenceSession,
    array: np.ndarray,
    calls: int,
    batch: int = 1,
    warmup: int = 2,
) -> Timing:
    """Time ``calls`` session.run calls on ``batch`` copies of ``array`` stacked, after a warm-up."""
    feed = {model.card.input.name: np.ascontiguousarray(np.repeat(array, batch, axis=0))}
    outputs = [model.card.output.name]
    for _ in range(warmup):
        session.run(outputs, feed)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(outputs, feed)
        seconds.append(time.perf_counter() - started)
    return Timing(f"onnxruntime batch {batch}", batch, seconds)


def time_side_by_side(
    model: LoadedModel, session: ort.InferenceSession, array: np.ndarray, calls: int, lanes: int | None = None
) -> Timing:
    """``calls`` batch-1 calls of a one-thread ``session`` (``bare_session(model, threads=1)``)
    spread over ``lanes`` threads (every core) running side by side, after a warm-up call each."""
    lanes = lanes or os.cpu_count() or 1
    feed = {model.card.input.name: np.ascontiguousarray(array)}
    outputs = [model.card.output.name]
    start = threading.Barrier(lanes + 1)
    seconds: list[float] = []

    def lane(count: int) -> None:
        session.run(outputs, feed)
        start.wait()
        for _ in range(count):
            began = time.perf_counter()
            session.run(outputs, feed)
            seconds.append(time.perf_counter() - began)  # list.append is atomic

    threads = [threading.Thread(target=lane, args=(calls // lanes + (i < calls % lanes),)) for i in range(lanes)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Timing(f"onnxruntime 1 thread x {lanes} side by side", 1, seconds, wall_s=time.perf_counter() - began)


def time_classical(unit: np.ndarray, repeats: dict[str, int]) -> dict[str, Timing]:
    """BM3D and scikit-image non-local means on a unit-range image, sigma estimated from it."""
    from app.quality.noise import wavelet_mad_sigma
    from training.classical import bm3d_filter, nlm_skimage

    sigma = max(wavelet_mad_sigma(unit), 1e-3)
    methods = {"bm3d": lambda: bm3d_filter(unit, sigma), "nlm_skimage": lambda: nlm_skimage(unit, sigma, 0.8)}
    timings = {}
    for name, method in methods.items():
        seconds = []
        for _ in range(repeats.get(name, 1)):
            started = time.perf_counter()
            method()
            seconds.append(time.perf_counter() - started)
        timings[name] = Timing(name, 1, seconds)
    return timings
