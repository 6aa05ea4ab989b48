"""The concurrency-1 overhead measured in pairs: one direct ONNX Runtime call, then one request to
the service, repeated, so that the machine's drift (on a shared virtual machine, larger than the
overhead itself) cancels in each pair's difference.

    python -m bench.paired                 # both 512 x 512 CT cases, 40 pairs each, 6 rounds
    python -m bench.paired --pairs 100 --cases ct-512-dicom --rounds 0
    python -m bench.paired --client httpx  # the pairs sent by httpx instead of http.client

The direct session has ONNX Runtime's default options plus the service's
``session.force_spinning_stop``, so that its threads do not spin on into the service's request;
only one of the two processes works at any moment. Printed: the median of each side and the median
of the per-pair differences, and the medians of the service's own phase split, read from each
request's ``Server-Timing`` header: the model call inside the service against the direct call of
the same pair, and the time outside every phase (client, HTTP, multipart, response). The paired
requests go out through the standard library's http.client with the multipart body encoded once,
as the direct call's input is prepared once: httpx costs 1-2.4 ms more per request here
(``--client httpx`` measures with it). The last column, each request's latency less its own
model call, is the service's own work without the model call's jitter, which on a shared virtual
machine is larger than the target.

Throughput is compared the same way: rounds of direct calls (batch 1 and batch 4, ONNX Runtime's
default options, and one-thread sessions side by side, one thread per core) and a burst of
requests at concurrency 4 (sent by the same client as the pairs, one thread and connection per
client for http.client), alternating, each round giving the
service's images per second over the fastest direct way; the median round is reported with the
lowest and highest, so a slow minute of the machine moves one round, not the verdict.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import onnxruntime as ort

from app.inference.registry import LoadedModel, ModelRegistry, load_registry
from app.observability import PHASES as SERVICE_PHASES
from app.settings import Settings
from bench.baselines import bare_session, model_input, time_direct, time_side_by_side
from bench.cases import Case, ct_cases
from bench.loadgen import Client, loopback_connection, prepared_body, run_load
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


# Sends one request, returns its phase split from Server-Timing.
Post = Callable[[], dict[str, float]]


def httpx_poster(client: httpx.Client, case: Case) -> Post:
    """httpx as a client application uses it: the multipart body encoded on every request."""
    files = {"file": (case.upload.name, case.upload.content)}

    def post() -> dict[str, float]:
        answer = client.post("/v1/denoise", files=files, data=case.upload.fields)
        answer.raise_for_status()
        return server_timing(answer.headers["server-timing"])

    return post


def stdlib_poster(base_url: str, case: Case) -> Post:
    """The standard library's http.client on one keep-alive connection, sending a multipart body
    encoded once beforehand (by httpx), as the direct call's input is prepared before its loop:
    the least a client adds, so the difference to the direct call is the service's."""
    body, headers = prepared_body(base_url, case.upload)
    connection = loopback_connection(base_url, timeout_s=120)

    def post() -> dict[str, float]:
        connection.request("POST", "/v1/denoise", body=body, headers=headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"the service answered {answer.status}")
        return server_timing(answer.getheader("server-timing") or "")

    return post


def run_pairs(case: Case, model: LoadedModel, session: ort.InferenceSession, post: Post, pairs: int) -> list[Pair]:
    """``pairs`` alternating calls, after a warm-up of each (the first calls are slow)."""
    feed = {model.card.input.name: model_input(model, case.units)}
    outputs = [model.card.output.name]
    for _ in range(2):
        session.run(outputs, feed)
        post()
    measured = []
    for _ in range(pairs):
        started = time.perf_counter()
        session.run(outputs, feed)
        direct = time.perf_counter() - started
        started = time.perf_counter()
        phases = post()
        measured.append(Pair(direct, time.perf_counter() - started, phases))
    return measured


@dataclass(frozen=True)
class Round:
    """One round of the throughput comparison: direct calls, then the service under load."""

    direct_batch_1: float  # images per second
    direct_batch_4: float
    direct_side_by_side: float  # one-thread sessions, one thread per core
    service: float

    @property
    def best_direct(self) -> float:
        return max(self.direct_batch_1, self.direct_batch_4, self.direct_side_by_side)

    @property
    def ratio(self) -> float:
        """The service against the fastest direct way, as the target reads it."""
        return self.service / self.best_direct


def run_rounds(
    base_url: str, case: Case, model: LoadedModel, rounds: int, concurrency: int, requests: int, client: Client
) -> list[Round]:
    """``rounds`` times: direct batch 1, batch 4 and side by side on ``requests`` images each, then
    ``requests`` requests at ``concurrency`` sent by ``client`` (stdlib or httpx, see ``bench.loadgen``); the
    direct session has ONNX Runtime's default options (threads keep spinning between calls: its
    fastest for back-to-back calls)."""
    session, one_thread = bare_session(model), bare_session(model, threads=1)
    array = model_input(model, case.units)
    run_load(base_url, case.upload, concurrency, concurrency, client=client)  # warm-up
    measured = []
    for _ in range(rounds):
        single = time_direct(model, session, array, calls=requests, warmup=1)
        batched = time_direct(model, session, array, calls=max(1, requests // 4), batch=4, warmup=1)
        side_by_side = time_side_by_side(model, one_thread, array, calls=requests)
        load = run_load(base_url, case.upload, concurrency, requests, client=client)
        if load.errors:
            raise RuntimeError(f"{load.errors} requests failed: {load.statuses}")
        measured.append(Round(single.throughput, batched.throughput, side_by_side.throughput, load.throughput))
    return measured


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def print_header(columns: list[str]) -> None:
    """A Markdown table's header and separator rows."""
    print("| " + " | ".join(columns) + " |")
    print("| --- " * len(columns) + "|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--cases", default="ct-512-png,ct-512-dicom")
    parser.add_argument(
        "--client", choices=["stdlib", "httpx"], default="stdlib",
        help="who sends the requests, in pairs and rounds: http.client with a body encoded once "
        "(default), or httpx (bench.loadgen)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds per case (0: none)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--round-requests", type=int, default=16, help="requests (and direct images) per round")
    args = parser.parse_args(argv)

    registry = load_registry(Settings(models_dir=args.models_dir))
    cases = [c for c in ct_cases("none") if c.name in args.cases.split(",")]
    columns = [
        "case", "pairs", "direct p50 ms", "service p50 ms", "p50 of (service - direct) ms",
        *(f"{p} ms" for p in PHASES), "p50 of (infer - direct) ms", "outside the phases ms",
        "p50 of (service - infer) ms",
    ]
    print_header(columns)
    with tempfile.TemporaryDirectory() as scratch, running_service(
        args.models_dir, Path(scratch) / "service.log", {}
    ) as base_url, httpx.Client(base_url=base_url, timeout=120) as client:
        for case in cases:
            model = registry.resolve(case.modality, None)  # type: ignore[arg-type]
            post = stdlib_poster(base_url, case) if args.client == "stdlib" else httpx_poster(client, case)
            pairs = run_pairs(case, model, quiet_session(model), post, args.pairs)
            cells = [
                median_ms([p.direct for p in pairs]),
                median_ms([p.service for p in pairs]),
                median_ms([p.service - p.direct for p in pairs]),
                *(median_ms([p.phases.get(phase, 0.0) for p in pairs]) for phase in PHASES),
                median_ms([p.phases.get("infer", 0.0) - p.direct for p in pairs]),
                median_ms([p.outside_phases for p in pairs]),
                median_ms([p.service - p.phases.get("infer", 0.0) for p in pairs]),
            ]
            print(f"| {case.name} | {len(pairs)} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
        if args.rounds:
            print_rounds(base_url, cases, registry, args)
    return 0


def print_rounds(base_url: str, cases: list[Case], registry: ModelRegistry, args: argparse.Namespace) -> None:
    print(f"\nThroughput at concurrency {args.concurrency}, in alternating rounds of "
          f"{args.round_requests} images:\n")
    columns = [
        "case", "rounds", "direct batch 1 img/s", "direct batch 4 img/s", "direct side by side img/s",
        "service img/s", "service / best direct (median of rounds)", "lowest round", "highest round",
    ]
    print_header(columns)
    for case in cases:
        model = registry.resolve(case.modality, None)  # type: ignore[arg-type]
        rounds = run_rounds(
            base_url, case, model, args.rounds, args.concurrency, args.round_requests, args.client
        )
        ratios = [r.ratio for r in rounds]
        cells = [
            f"{statistics.median(r.direct_batch_1 for r in rounds):.2f}",
            f"{statistics.median(r.direct_batch_4 for r in rounds):.2f}",
            f"{statistics.median(r.direct_side_by_side for r in rounds):.2f}",
            f"{statistics.median(r.service for r in rounds):.2f}",
            f"{statistics.median(ratios):.0%}",
            f"{min(ratios):.0%}",
            f"{max(ratios):.0%}",
        ]
        print(f"| {case.name} | {len(rounds)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
