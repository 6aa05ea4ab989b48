"""The batch client's report and summary: standard library only.

Each run appends its rows to the report (CSV or JSON lines), under a ``run`` column holding the
run's start time, so a rerun keeps every earlier run's rows and each run's rows can be picked out.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

DEFAULT_REPORT_NAME = "denoise-report.csv"


@dataclass
class Result:
    input: str
    output: str
    status: str  # ok, skipped, failed
    http_status: int | None = None
    error: str = ""
    detail: str = ""
    model: str = ""
    modality: str = ""
    execution_provider: str = ""
    attempts: int = 0
    latency_ms: float | None = None
    server_ms: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    request_id: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


REPORT_FIELDS = ("run", *(f.name for f in fields(Result)))


def run_id() -> str:
    """This run's start time (UTC, to the millisecond): the ``run`` column of its rows."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report_kind(path: Path, chosen: str | None) -> str:
    """``csv`` or ``jsonl``: as chosen, else by the report's suffix."""
    return chosen or ("jsonl" if path.suffix in (".jsonl", ".json") else "csv")


def unappendable(path: Path, kind: str) -> str | None:
    """Why rows cannot be appended to ``path``, or None. A CSV with other columns (another tool's,
    or an older client's without ``run``) is refused: rows under the wrong header corrupt it."""
    if path.is_dir():
        return f"the report {path} is a folder"
    if kind != "csv" or not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle), [])
    if tuple(header) == REPORT_FIELDS:
        return None
    return f"the report {path} has other columns than this client's; name another --report"


class ReportWriter:
    """Rows as they finish, flushed, so an interrupted run still leaves its report."""

    def __init__(self, handle: IO[str], kind: str, run: str) -> None:
        self.handle = handle
        self.run = run
        self.csv = csv.DictWriter(handle, REPORT_FIELDS) if kind == "csv" else None
        if self.csv is not None and handle.tell() == 0:  # appended to: the header is there already
            self.csv.writeheader()

    def write(self, result: Result) -> None:
        row = {"run": self.run, **asdict(result)}
        if self.csv is not None:
            row["metrics"] = json.dumps(row["metrics"], separators=(",", ":")) if row["metrics"] else ""
            self.csv.writerow(row)
        else:
            self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()


@dataclass
class Summary:
    total: int = 0  # files planned; fewer are in results when a refused key stopped the run
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    key_refused: str = ""  # the refusal that stopped the run, e.g. "HTTP 401 api_key_required: ..."

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def text(self) -> str:
        lines = [self._counts(), *self._latency(), *self._failures()]
        if self.key_refused:
            lines.append(
                f"stopped: the service refused the API key ({self.key_refused}); "
                f"{self.total - len(self.results)} file(s) not sent; check --api-key or DENOISE_API_KEY"
            )
        return "\n".join(lines)

    def _counts(self) -> str:
        done = [r for r in self.results if r.status == "ok"]
        megabytes = sum(r.bytes_in for r in done) / 1e6
        rate = len(done) / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{len(self.results)} file(s): {len(done)} denoised, {self.count('skipped')} skipped "
            f"(already done), {self.count('failed')} failed in {self.seconds:.1f} s "
            f"({rate:.2f} files/s, {megabytes / max(self.seconds, 1e-9):.2f} MB/s in)"
        )

    def _latency(self) -> list[str]:
        latencies = sorted(r.latency_ms for r in self.results if r.status == "ok" and r.latency_ms is not None)
        if not latencies:
            return []
        p50 = latencies[len(latencies) // 2]
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
        return [f"latency per file: p50 {p50:.0f} ms, p95 {p95:.0f} ms"]

    def _failures(self) -> list[str]:
        errors: dict[str, int] = {}
        for r in self.results:
            if r.status == "failed":
                errors[r.error] = errors.get(r.error, 0) + 1
        if not errors:
            return []
        return ["failures: " + ", ".join(f"{code} x{n}" for code, n in sorted(errors.items()))]
