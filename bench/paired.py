"""The concurrency-1 overhead measured in pairs: one direct ONNX Runtime call, then one request to
the service, repeated, so that the machine's drift (on a shared virtual machine, larger than the
overhead itself) cancels in each pair's difference.

    python -m bench.paired                 # both 512 x 512 CT cases, 40 pairs each
    python -m bench.paired --pairs 100 --cases ct-512-dicom

The direct session has ONNX Runtime's default options plus the service's
``session.force_spinning_stop``, so that its threads do not spin on into the service's request;
only one of the two processes works at any moment. Printed: the median of each side and the median
of the per-pair differences, and the service's own phase split from its metrics.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from app.inference.registry import LoadedModel, load_registry
from app.observability import PHASES as SERVICE_PHASES
from app.settings import Settings
from bench.baselines import bare_session, model_input
from bench.cases import Case, ct_cases
from bench.service import MetricsDelta, running_service, scrape

REPO = Path(__file__).resolve().parents[1]
# The service's phases; the runs send metrics=none, so that phase is left out.
PHASES = tuple(p for p in SERVICE_PHASES if p != "metrics")


def quiet_session(model: LoadedModel) -> ort.InferenceSession:
    """The bare session, its threads stopping their spin when a call returns."""
    return bare_session(model, {"session.force_spinning_stop": "1"})


def pair_differences(
    client: httpx.Client, case: Case, model: LoadedModel, session: ort.InferenceSession, pairs: int
) -> tuple[list[float], list[float]]:
    """(direct seconds, service seconds) for ``pairs`` alternating calls, after a warm-up of each."""
    feed = {model.card.input.name: model_input(model, case.units)}
    outputs = [model.card.output.name]
    files = {"file": (case.upload.name, case.upload.content)}

    def request() -> None:
        answer = client.post("/v1/denoise", files=files, data=case.upload.fields)
        answer.raise_for_status()

    for _ in range(2):
        session.run(outputs, feed)
        request()
    direct, service = [], []
    for _ in range(pairs):
        started = time.perf_counter()
        session.run(outputs, feed)
        direct.append(time.perf_counter() - started)
        started = time.perf_counter()
        request()
        service.append(time.perf_counter() - started)
    return direct, service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--cases", default="ct-512-png,ct-512-dicom")
    args = parser.parse_args(argv)

    registry = load_registry(Settings(models_dir=args.models_dir))
    cases = [c for c in ct_cases("none") if c.name in args.cases.split(",")]
    print("| case | pairs | direct p50 ms | service p50 ms | p50 of (service - direct) ms | "
          + " | ".join(f"{p} ms" for p in PHASES) + " |")
    print("| --- " * (5 + len(PHASES)) + "|")
    with tempfile.TemporaryDirectory() as scratch, running_service(
        args.models_dir, Path(scratch) / "service.log", {}
    ) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        for case in cases:
            model = registry.resolve(case.modality, None)  # type: ignore[arg-type]
            session = quiet_session(model)
            before = scrape(base_url)
            direct, service = pair_differences(client, case, model, session, args.pairs)
            delta = MetricsDelta(before, scrape(base_url))
            split = delta.phase_ms(model.card.id)
            phases = [split.get(p, float("nan")) for p in PHASES]
            differences = np.subtract(service, direct)
            print(
                f"| {case.name} | {args.pairs} | {statistics.median(direct) * 1000:.0f} | "
                f"{statistics.median(service) * 1000:.0f} | {float(np.median(differences)) * 1000:.1f} | "
                + " | ".join(f"{p:.1f}" for p in phases)
                + " |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
