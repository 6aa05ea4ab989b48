"""The service as a real uvicorn process on a loopback port, and its Prometheus metrics.

Phase times come from the service's own ``denoise_phase_seconds`` histograms: the sums and counts
are read before and after a scenario, and the difference divided by the requests served.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.settings import Settings
from tests.uvicorn_server import uvicorn_server

_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def running_service(models_dir: Path, log_path: Path, settings: dict[str, str]) -> Iterator[str]:
    """Yield the base URL of the service started as ``scripts/serve.sh`` starts it (uvicorn, one
    worker, default logging) on a loopback port, serving ``models_dir``.

    ``settings`` are DENOISE_* names without the prefix (``{"batch_max_size": "4"}``); other
    DENOISE_* variables of this shell are not passed on, so a run states all it changes. The
    number of ONNX Runtime threads is the service's default (every core) unless set here.
    """
    settings = {"intra_op_threads": str(Settings().intra_op_threads), **settings}
    with uvicorn_server(models_dir, log_path, **settings) as base_url:
        yield base_url


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = tuple(sorted(_LABEL.findall(match["labels"] or "")))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def scrape(base_url: str) -> Samples:
    return parse_metrics(httpx.get(f"{base_url}/metrics", timeout=30).text)


@dataclass(frozen=True)
class MetricsDelta:
    before: Samples
    after: Samples

    def _sum(self, name: str, **match: str) -> float:
        total = 0.0
        for (sample, labels), value in self.after.items():
            if sample == name and all((k, v) in labels for k, v in match.items()):
                total += value - self.before.get((sample, labels), 0.0)
        return total

    def phase_ms(self, model: str) -> dict[str, float]:
        """Mean milliseconds per request and phase, for requests served by ``model``."""
        requests = self._sum("denoise_request_seconds_count", model=model, status="200")
        phases: dict[str, float] = {}
        for sample, labels in self.after:
            if sample == "denoise_phase_seconds_sum" and ("model", model) in labels:
                phase = dict(labels)["phase"]
                seconds = self._sum("denoise_phase_seconds_sum", model=model, phase=phase)
                phases[phase] = 1000 * seconds / requests if requests else float("nan")
        return phases

    def mean_batch_size(self, model: str) -> float:
        calls = self._sum("denoise_batch_size_count", model=model)
        return self._sum("denoise_batch_size_sum", model=model) / calls if calls else float("nan")
