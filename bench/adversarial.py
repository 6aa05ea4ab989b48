"""The adversarial corpus (``bench/attacks.py``) against a real uvicorn: what each attack costs.

For each attack: its statuses, the server's peak resident memory above its idle size, the
resident memory 5 s after the attack (and how long it took to come back within 20% of idle), and
/healthz latency while the attack ran, probed every 50 ms from another connection, against the
same probe's latency with no attack in the same run (the ratio). Issue #15's targets: peak under
2 GB, back within 20% of idle within 5 s, /healthz p99 under 200 ms, no 500.

    python -m bench.adversarial                      # the committed models, default settings
    python -m bench.adversarial --only "huge header"  # attacks whose name contains the text
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from bench.attacks import CORPUS, NONE, Attack, Headers
from tests.load_client import resident_kib
from tests.uvicorn_server import uvicorn_server

REPO = Path(__file__).resolve().parents[1]
PROBE_INTERVAL_S = 0.05
SETTLE_S = 5.0


class _Background:
    """Runs ``_run`` on a thread while in its ``with``; ``_stop`` ends it."""

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Probe(_Background):
    """/healthz every ``PROBE_INTERVAL_S``: latencies (s) and statuses (0: failed)."""

    base_url: str
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.HTTPError:
                    status = 0
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(status)
                self._stop.wait(PROBE_INTERVAL_S)

    def p99_ms(self) -> float:
        if len(self.latencies) < 2:
            return max(self.latencies, default=0.0) * 1000
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[98] * 1000


@dataclass
class Peak(_Background):
    """The highest resident size of process ``pid``, sampled every 10 ms."""

    pid: int
    peak_kib: int = 0

    def _run(self) -> None:
        while True:
            self.peak_kib = max(self.peak_kib, resident_kib(self.pid))
            if self._stop.wait(0.01):
                return


@dataclass(frozen=True)
class Result:
    name: str
    statuses: list[int]
    seconds: float
    idle_mb: float
    peak_mb: float
    settled_mb: float
    settle_s: float | None  # until within 20% of idle; None: not within SETTLE_S
    health_p99_ms: float
    health_max_ms: float
    health_failures: int


def _settle(pid: int, idle_kib: int) -> tuple[float, float | None]:
    started = time.monotonic()
    within = None
    while time.monotonic() - started < SETTLE_S:
        now = resident_kib(pid)
        if within is None and now <= 1.2 * idle_kib:
            within = time.monotonic() - started
        time.sleep(0.1)
    return resident_kib(pid) / 1024, within


def run_attack(base_url: str, pid: int, attack: Attack, headers: Headers = NONE) -> Result:
    idle = resident_kib(pid)
    with Peak(pid) as peak, Probe(base_url) as probe:
        started = time.perf_counter()
        statuses = attack.send(base_url, headers)
        seconds = time.perf_counter() - started
    settled, settle_s = _settle(pid, idle)
    return Result(
        attack.name,
        statuses,
        seconds,
        idle / 1024,
        peak.peak_kib / 1024,
        settled,
        settle_s,
        probe.p99_ms(),
        max(probe.latencies, default=0.0) * 1000,
        sum(status != 200 for status in probe.statuses),
    )


def baseline_health(base_url: str, seconds: float = 3.0) -> float:
    with Probe(base_url) as probe:
        time.sleep(seconds)
    return probe.p99_ms()


def report(results: list[Result], baseline_p99_ms: float) -> str:
    lines = [
        f"/healthz p99 with no attack: {baseline_p99_ms:.1f} ms",
        "| attack | statuses | s | idle MB | peak MB | after 5 s MB | back within 20% | /healthz p99 ms (x no attack) | max ms | failed probes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        back = f"{r.settle_s:.1f} s" if r.settle_s is not None else "no"
        lines.append(
            f"| {r.name} | {sorted(set(r.statuses))} | {r.seconds:.1f} | {r.idle_mb:.0f} | {r.peak_mb:.0f} | "
            f"{r.settled_mb:.0f} | {back} | {r.health_p99_ms:.1f} ({r.health_p99_ms / baseline_p99_ms:.1f}x) | "
            f"{r.health_max_ms:.0f} | {r.health_failures} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.adversarial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--only", help="run the attacks whose name contains this text")
    args = parser.parse_args(argv)
    attacks = [a for a in CORPUS if args.only is None or args.only in a.name]
    processes = []
    with tempfile.TemporaryDirectory() as folder, uvicorn_server(
        args.models, Path(folder) / "server.log", started=processes.append, intra_op_threads="2"
    ) as base_url:
        pid = processes[0].pid
        baseline = baseline_health(base_url)
        results = []
        for attack in attacks:
            results.append(run_attack(base_url, pid, attack))
            print(f"{attack.name}: done", flush=True)
    print(report(results, baseline))


if __name__ == "__main__":
    main()
