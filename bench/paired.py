"""The concurrency-1 overhead measured in pairs: one direct ONNX Runtime call, then one request to
the service, repeated, so that the machine's drift (on a shared virtual machine, larger than the
overhead itself) cancels in each pair's difference.

    python -m bench.paired                 # both 512 x 512 CT cases, 40 pairs each
    python -m bench.paired --pairs 100 --cases ct-512-dicom

The direct session has ONNX Runtime's default options plus the service's
``session.force_spinning_stop``, so that its threads do not spin on into the service's request;
only one of the two processes works at any moment. Printed: the median of each side and the median
of the per-pair differences, and the medians of the service's own phase split, read from each
request's ``Server-Timing`` header: the model call inside the service against the direct call of
the same pair, and the time outside every phase (client, HTTP, multipart, response).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnxruntime as ort

from app.inference.registry import LoadedModel, load_registry
from app.observability import PHASES as SERVICE_PHASES
from app.settings import Settings
from bench.baselines import bare_session, model_input
from bench.cases import Case, ct_cases
from bench.service import running_service

REPO = Path(__file__).resolve().parents[1]
# The service's phases; the runs send metrics=none, so that phase is left out.
PHASES = tuple(p for p in SERVICE_PHASES if p != "metrics")


def quiet_session(model: LoadedModel) -> ort.InferenceSession:
    """The bare session, its threads stopping their spin when a call returns."""
    return bare_session(model, {"session.force_spinning_stop": "1"})


def server_timing(header: str) -> dict[str, float]:
    """Seconds per phase from a ``Server-Timing`` header (``decode;dur=6.1, infer;dur=140.2``)."""
    phases: dict[str, float] = {}
    for entry in header.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if name and duration:
            phases[name] = float(duration) / 1000
    return phases


@dataclass(frozen=True)
class Pair:
    """One direct call and the service request after it, with the request's own phase split."""

    direct: float
    service: float
    phases: dict[str, float]

    @property
    def outside_phases(self) -> float:
        """Client, HTTP, multipart parsing and response: what no phase of the service times."""
        return self.service - sum(self.phases.values())


def run_pairs(
    client: httpx.Client, case: Case, model: LoadedModel, session: ort.InferenceSession, pairs: int
) -> list[Pair]:
    """``pairs`` alternating calls, after a warm-up of each (the first calls are slow)."""
    feed = {model.card.input.name: model_input(model, case.units)}
    outputs = [model.card.output.name]
    files = {"file": (case.upload.name, case.upload.content)}

    def request() -> dict[str, float]:
        answer = client.post("/v1/denoise", files=files, data=case.upload.fields)
        answer.raise_for_status()
        return server_timing(answer.headers["server-timing"])

    for _ in range(2):
        session.run(outputs, feed)
        request()
    measured = []
    for _ in range(pairs):
        started = time.perf_counter()
        session.run(outputs, feed)
        direct = time.perf_counter() - started
        started = time.perf_counter()
        phases = request()
        measured.append(Pair(direct, time.perf_counter() - started, phases))
    return measured


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--cases", default="ct-512-png,ct-512-dicom")
    args = parser.parse_args(argv)

    registry = load_registry(Settings(models_dir=args.models_dir))
    cases = [c for c in ct_cases("none") if c.name in args.cases.split(",")]
    columns = [
        "case", "pairs", "direct p50 ms", "service p50 ms", "p50 of (service - direct) ms",
        *(f"{p} ms" for p in PHASES), "p50 of (infer - direct) ms", "outside the phases ms",
    ]
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")
    with tempfile.TemporaryDirectory() as scratch, running_service(
        args.models_dir, Path(scratch) / "service.log", {}
    ) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        for case in cases:
            model = registry.resolve(case.modality, None)  # type: ignore[arg-type]
            pairs = run_pairs(client, case, model, quiet_session(model), args.pairs)
            cells = [
                median_ms([p.direct for p in pairs]),
                median_ms([p.service for p in pairs]),
                median_ms([p.service - p.direct for p in pairs]),
                *(median_ms([p.phases.get(phase, 0.0) for p in pairs]) for phase in PHASES),
                median_ms([p.phases.get("infer", 0.0) - p.direct for p in pairs]),
                median_ms([p.outside_phases for p in pairs]),
            ]
            print(f"| {case.name} | {len(pairs)} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
