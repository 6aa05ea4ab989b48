"""denoise-batch: send a folder tree (or a list) of PNG and DICOM files to the service, concurrently.

    denoise-batch scans/ --out denoised/ --url http://gpu-node:8000 --concurrency 8

* Inputs: files and folders (walked recursively), or ``--list FILE`` (one path a line, ``-`` for
  stdin). A file is taken when its bytes say PNG or DICOM (``DICM`` at byte 128), whatever its
  name, so archives of extension-less DICOM files work.
* Outputs: the same relative path under ``--out`` (a file named on its own lands under its
  name); two inputs that would land on one output stop the run before anything is sent. Each is
  written to ``<name>.part`` and renamed when complete, so an existing output is a
  complete one; a second run skips it (``--overwrite`` redoes it).
* At most ``--concurrency`` requests are in flight. 5xx answers and connection errors are retried
  with exponential backoff and jitter (``Retry-After`` honoured); 4xx answers are not retried:
  the file itself is the problem and the report says why. A refused API key (401, 403) stops the
  run at once: every other file would be refused too.
* Before the first file, ``/readyz`` must answer 200 (a service without models would refuse
  every file); ``--dry-run`` lists the files and their outputs and sends nothing.
* The report (``--report``, CSV or JSON lines by its suffix or ``--report-format``) has one row
  per file: status, HTTP status, error, model, provider, attempts, latency and metrics; each run
  appends to it, so an earlier run's rows stay. A summary goes to stderr at the end.
* Exit status: 0 when every file was denoised or skipped, 1 when some failed, 2 for a usage
  error or nothing to do, 3 when the server cannot be reached, is not ready or refuses the key.

Needs only httpx and tqdm (``pip install 'medical-denoise[client]'``); never imports the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

try:
    import httpx
    from tqdm import tqdm
except ModuleNotFoundError as missing:  # installed without the client extra
    sys.exit(
        f"denoise-batch needs {missing.name}, from the project's client extra: "
        "pip install 'medical-denoise[client]' (or pip install httpx tqdm)"
    )

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
DICOM_MAGIC_AT = 128
PART_SUFFIX = ".part"
REPORT_FIELDS = (
    "input",
    "output",
    "status",
    "http_status",
    "error",
    "detail",
    "model",
    "modality",
    "execution_provider",
    "attempts",
    "latency_ms",
    "server_ms",
    "bytes_in",
    "bytes_out",
    "request_id",
    "metrics",
)


def image_kind(head: bytes) -> str | None:
    """``png``, ``dicom`` or None, from a file's first 132 bytes."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[DICOM_MAGIC_AT : DICOM_MAGIC_AT + 4] == b"DICM":
        return "dicom"
    return None


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(DICOM_MAGIC_AT + 4)
    except OSError:
        return b""


def is_complete(path: Path) -> bool:
    """An output written by this client: renamed from .part once whole, and of a known kind.

    PNG must end with its IEND chunk; DICOM must carry its magic. Anything else is redone.
    """
    try:
        size = path.stat().st_size
    except OSError:
        return False
    kind = image_kind(_head(path))
    if kind == "png":
        with path.open("rb") as handle:
            handle.seek(max(0, size - len(PNG_END)))
            return handle.read() == PNG_END
    return kind == "dicom"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def _walk(root: Path, out: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if (here / d).resolve() != out)
        for name in sorted(files):
            if not name.endswith(PART_SUFFIX):
                yield here / name


def find_jobs(inputs: Iterable[Path], out: Path) -> list[Job]:
    """PNG and DICOM files under ``inputs``, each with its mirrored output path under ``out``."""
    out = out.resolve()
    jobs: list[Job] = []
    seen: set[Path] = set()
    for given in inputs:
        if given.is_dir():
            candidates = ((path, path.relative_to(given)) for path in _walk(given, out))
        else:
            candidates = iter([(given, Path(given.name))])
        for path, relative in candidates:
            resolved = path.resolve()
            if resolved in seen or image_kind(_head(path)) is None:
                continue
            seen.add(resolved)
            jobs.append(Job(path, out / relative))
    return jobs


def colliding_outputs(jobs: list[Job]) -> dict[Path, list[Path]]:
    """Outputs that more than one input would be written to (files of one name from two folders)."""
    by_target: dict[Path, list[Path]] = {}
    for job in jobs:
        by_target.setdefault(job.target, []).append(job.source)
    return {target: sources for target, sources in by_target.items() if len(sources) > 1}


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


@dataclass(frozen=True)
class Options:
    url: str
    modality: str | None
    model: str | None
    metrics: str
    api_key: str | None
    concurrency: int
    retries: int
    backoff_s: float
    max_backoff_s: float
    timeout_s: float
    overwrite: bool


class ReportWriter:
    """Rows as they finish, flushed, so an interrupted run still leaves its report."""

    def __init__(self, handle: IO[str], kind: str) -> None:
        self.handle = handle
        self.kind = kind
        self.csv = csv.DictWriter(handle, REPORT_FIELDS) if kind == "csv" else None
        if self.csv is not None and handle.tell() == 0:  # appended to: the header is there already
            self.csv.writeheader()

    def write(self, result: Result) -> None:
        row = asdict(result)
        if self.csv is not None:
            row["metrics"] = json.dumps(row["metrics"], separators=(",", ":")) if row["metrics"] else ""
            self.csv.writerow(row)
        else:
            self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _backoff(options: Options, attempt: int, hint: float | None) -> float:
    if hint is not None:
        return min(hint, options.max_backoff_s)
    delay = min(options.backoff_s * 2 ** (attempt - 1), options.max_backoff_s)
    return delay * random.uniform(0.5, 1.0)


def _form(options: Options) -> dict[str, str]:
    form = {"metrics": options.metrics}
    if options.modality:
        form["modality"] = options.modality
    if options.model:
        form["model"] = options.model
    return form


def _error_of(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
        return str(body.get("error", "")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        return f"http_{response.status_code}", response.text[:200]


def _write_atomically(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PART_SUFFIX)
    partial.write_bytes(content)
    os.replace(partial, target)


async def denoise_one(client: httpx.AsyncClient, job: Job, options: Options) -> Result:
    result = Result(str(job.source), str(job.target), "failed")
    if not options.overwrite and is_complete(job.target):
        result.status = "skipped"
        return result
    data = await asyncio.to_thread(job.source.read_bytes)
    result.bytes_in = len(data)
    started = time.perf_counter()
    for attempt in range(1, options.retries + 2):
        result.attempts = attempt
        hint = None
        try:
            response = await client.post(
                "/v1/denoise",
                files={"file": (job.source.name, data, "application/octet-stream")},
                data=_form(options),
                headers={"accept": "application/json"},
            )
        except httpx.TransportError as error:
            result.http_status, result.error, result.detail = None, "connection_error", type(error).__name__
        else:
            result.http_status = response.status_code
            if response.status_code == 200:
                return await _finish(result, job, response, started)
            result.error, result.detail = _error_of(response)
            if response.status_code < 500:
                break  # the request itself is wrong: the same bytes would fail again
            hint = _retry_after(response)
        if attempt <= options.retries:
            await asyncio.sleep(_backoff(options, attempt, hint))
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    return result


async def _finish(result: Result, job: Job, response: httpx.Response, started: float) -> Result:
    result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
    body = response.json()
    content = base64.b64decode(body["image_base64"])
    await asyncio.to_thread(_write_atomically, job.target, content)
    result.status = "ok"
    result.bytes_out = len(content)
    result.model = body.get("model", "")
    result.modality = body.get("modality", "")
    result.execution_provider = body.get("execution_provider", "")
    result.request_id = body.get("request_id", "")
    result.metrics = body.get("metrics") or {}
    result.server_ms = round(sum((body.get("timings_ms") or {}).values()), 1)
    return result


def _headers(options: Options) -> dict[str, str]:
    headers = {"user-agent": "denoise-batch"}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    return headers


KEY_REFUSED = (401, 403)


async def ready(options: Options) -> str | None:
    """None when /readyz answers 200 (after the same retries as a file), else why not. A refused
    key is not retried; a service still loading its models is, like a 5xx."""
    async with httpx.AsyncClient(base_url=options.url, headers=_headers(options), timeout=10) as client:
        reason = "no answer"
        for attempt in range(1, options.retries + 2):
            try:
                response = await client.get("/readyz")
                if response.status_code == 200:
                    return None
                if response.status_code in KEY_REFUSED:
                    return f"the API key was refused: HTTP {response.status_code} {_error_of(response)[0]}"
                reason = f"not ready, HTTP {response.status_code}: {_error_of(response)[1] or 'no reason given'}"
            except httpx.TransportError as error:
                reason = f"does not answer ({type(error).__name__})"
            if attempt <= options.retries:
                await asyncio.sleep(_backoff(options, attempt, None))
        return reason


@dataclass
class Summary:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    key_refused: bool = False

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def text(self) -> str:
        done = [r for r in self.results if r.status == "ok"]
        latencies = sorted(r.latency_ms for r in done if r.latency_ms is not None)
        megabytes = sum(r.bytes_in for r in done) / 1e6
        rate = len(done) / self.seconds if self.seconds > 0 else 0.0
        lines = [
            (
                f"{len(self.results)} file(s): {len(done)} denoised, {self.count('skipped')} skipped "
                f"(already done), {self.count('failed')} failed in {self.seconds:.1f} s "
                f"({rate:.2f} files/s, {megabytes / max(self.seconds, 1e-9):.2f} MB/s in)"
            )
        ]
        if latencies:
            p50 = latencies[len(latencies) // 2]
            p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
            lines.append(f"latency per file: p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        errors: dict[str, int] = {}
        for r in self.results:
            if r.status == "failed":
                errors[r.error] = errors.get(r.error, 0) + 1
        if errors:
            lines.append("failures: " + ", ".join(f"{code} x{n}" for code, n in sorted(errors.items())))
        if self.key_refused:
            lines.append("stopped: the service refused the API key; check --api-key or DENOISE_API_KEY")
        return "\n".join(lines)


async def run(jobs: list[Job], options: Options, report: ReportWriter, progress: bool) -> Summary:
    summary = Summary()
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    bar = tqdm(total=len(jobs), unit="file", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=options.url, headers=_headers(options), timeout=options.timeout_s, limits=limits
    ) as client:

        async def worker() -> None:
            while not queue.empty() and not summary.key_refused:
                result = await denoise_one(client, queue.get_nowait(), options)
                if result.http_status in KEY_REFUSED:
                    summary.key_refused = True  # every other file would be refused alike
                summary.results.append(result)
                report.write(result)
                bar.update(1)
                bar.set_postfix(
                    ok=summary.count("ok"), skipped=summary.count("skipped"), failed=summary.count("failed")
                )

        await asyncio.gather(*(worker() for _ in range(min(options.concurrency, max(1, len(jobs))))))
    bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _read_list(source: str) -> list[Path]:
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    with handle:
        return [Path(line.strip()) for line in handle if line.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="denoise-batch",
        description="Denoise many PNG and DICOM files with the service, into a mirrored folder tree.",
    )
    parser.add_argument("inputs", nargs="*", type=Path, help="files and folders (walked recursively)")
    parser.add_argument("--list", dest="list_file", help="file with one input path a line ('-': stdin)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (the input tree is mirrored)")
    parser.add_argument("--url", default=os.environ.get("DENOISE_URL", "http://localhost:8000"))
    parser.add_argument("--api-key", default=os.environ.get("DENOISE_API_KEY"), help="sent as a Bearer token")
    parser.add_argument(
        "--modality", help="the modality the service should denoise PNGs as (ct, mr, xray, or another it serves); required for PNG; DICOM says its own"
    )
    parser.add_argument("--model", help="model id or architecture (default: the modality's default model)")
    parser.add_argument("--metrics", choices=("none", "noref"), default="noref")
    parser.add_argument("--report", type=Path, help="default: <out>/denoise-report.csv")
    parser.add_argument("--report-format", choices=("csv", "jsonl"), help="default: from the report's suffix")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="retries of 5xx and connection errors")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay, doubled each time (s)")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest retry delay (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true", help="list each file and its output; send nothing")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        parser.error("--concurrency must be >= 1, --retries and --backoff >= 0, --timeout > 0")
    if not args.inputs and not args.list_file:
        parser.error("name input files or folders, or --list")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = [*args.inputs, *(_read_list(args.list_file) if args.list_file else [])]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        print(f"denoise-batch: not found: {', '.join(missing[:5])}", file=sys.stderr)
        return EXIT_USAGE
    jobs = find_jobs(inputs, args.out)
    if not jobs:
        print("denoise-batch: no PNG or DICOM file among the inputs", file=sys.stderr)
        return EXIT_USAGE
    collisions = colliding_outputs(jobs)
    if collisions:
        for target, sources in list(collisions.items())[:5]:
            print(f"denoise-batch: {', '.join(map(str, sources))} would all be written to {target}", file=sys.stderr)
        print("denoise-batch: nothing sent; name their common folder instead, so its tree is mirrored",
              file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        for job in jobs:
            print(f"{job.source} -> {job.target}")
        return EXIT_OK
    options = Options(
        url=args.url.rstrip("/"),
        modality=args.modality,
        model=args.model,
        metrics=args.metrics,
        api_key=args.api_key,
        concurrency=args.concurrency,
        retries=args.retries,
        backoff_s=args.backoff,
        max_backoff_s=args.max_backoff,
        timeout_s=args.timeout,
        overwrite=args.overwrite,
    )
    why = asyncio.run(ready(options))
    if why is not None:
        print(f"denoise-batch: the service at {options.url}: {why}", file=sys.stderr)
        return EXIT_UNREACHABLE
    report_path = args.report or args.out / "denoise-report.csv"
    kind = args.report_format or ("jsonl" if report_path.suffix in (".jsonl", ".json") else "csv")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    with report_path.open("a", newline="", encoding="utf-8") as handle:
        summary = asyncio.run(run(jobs, options, ReportWriter(handle, kind), not args.no_progress))
    print(summary.text(), file=sys.stderr)
    print(f"report: {report_path}", file=sys.stderr)
    if summary.key_refused:
        return EXIT_UNREACHABLE
    return EXIT_FAILED if summary.count("failed") else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
