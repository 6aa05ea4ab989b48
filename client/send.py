"""The batch client's HTTP side: the readiness check, the concurrent sends and their retries.

Needs httpx and tqdm (the project's ``client`` extra): ``client.batch`` imports this module only
when a run is to send something, and says what to install when it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from client.inputs import PART_SUFFIX, Job, is_complete
from client.report import ReportWriter, Result, Summary

KEY_REFUSED = (401, 403)
NOT_READY = 503


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


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """The service's ``error`` code and ``detail``; for another answer (a gateway's), the status and text."""
    body = _body(response)
    error = str(body.get("error") or f"http_{response.status_code}")
    return error, str(body.get("detail") or ("" if body else response.text[:200]))


def _headers(options: Options) -> dict[str, str]:
    headers = {"user-agent": "denoise-batch"}
    if options.api_key:
        headers["authorization"] = f"Bearer {options.api_key}"
    return headers


def _not_ready(response: httpx.Response) -> str:
    """A 503 from /readyz as its reasons: the detail, then each model not served that it leaves out."""
    body = _body(response)
    detail = str(body.get("detail") or "no reason given")
    lines = [f"not ready, HTTP {NOT_READY}: {detail}"]
    for unserved in body.get("unserved") or []:
        if not isinstance(unserved, dict):
            continue
        reason = f"{unserved.get('path', '?')}: {unserved.get('reason', '?')}"
        if reason not in detail:  # "No model is loaded (...)" quotes them already
            lines.append(f"  not served: {reason}")
    return "\n".join(lines)


def _readiness(response: httpx.Response) -> tuple[bool, str | None]:
    """(whether this /readyz answer is final, why the service is not ready or None when it is)."""
    status = response.status_code
    if status == 200:
        return True, None
    if status == NOT_READY:  # no model, or a stopped worker: waiting does not bring them back
        return True, _not_ready(response)
    error, detail = _error_of(response)
    if status in KEY_REFUSED:
        return True, f"the API key was refused: HTTP {status} {error}: {detail}"
    if status > 500:  # a gateway in front of a service that is still starting
        return False, f"answers /readyz with HTTP {status} {error}"
    hint = "" if status >= 500 else "; is --url the denoising service?"  # a 404: no /readyz there
    return True, f"answers /readyz with HTTP {status} {error}{hint}"


async def ready(options: Options) -> str | None:
    """None when /readyz answers 200, else why no file should be sent.

    Only what start-up explains is retried, with the files' backoff: no answer yet (the service
    loads its models before it listens) and a gateway's 502-504. A 503 is the service's own
    verdict (no model, a stopped worker) and a 401/403 a refused key: both stop at once.
    """
    async with httpx.AsyncClient(base_url=options.url, headers=_headers(options), timeout=10) as client:
        reason: str | None = "no answer"
        for attempt in range(1, options.retries + 2):
            hint = None
            try:
                response = await client.get("/readyz")
            except httpx.TransportError as error:
                reason = f"does not answer ({type(error).__name__})"
            else:
                final, reason = _readiness(response)
                if final:
                    return reason
                hint = _retry_after(response)
            if attempt <= options.retries:
                await asyncio.sleep(_backoff(options, attempt, hint))
        return reason


def _write_atomically(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + PART_SUFFIX)
    partial.write_bytes(content)
    os.replace(partial, target)


async def _stopped_during(stop: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` s, cut short when the run is stopped; whether it was."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


async def denoise_one(client: httpx.AsyncClient, job: Job, options: Options, stop: asyncio.Event) -> Result | None:
    """The file's result; None when the run was stopped before it was sent. Once ``stop`` is set
    no attempt starts: a retry waiting for its turn gives up with the error it had."""
    result = Result(str(job.source), str(job.target), "failed")
    if not options.overwrite and is_complete(job.target):
        result.status = "skipped"
        return result
    data = await asyncio.to_thread(job.source.read_bytes)
    if stop.is_set():
        return None
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
        if attempt > options.retries or await _stopped_during(stop, _backoff(options, attempt, hint)):
            break
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


def _stop_on_refused_key(result: Result, summary: Summary, stop: asyncio.Event) -> None:
    # One key for every request: after a 401/403 every other file would be refused alike.
    if result.http_status in KEY_REFUSED and not stop.is_set():
        summary.key_refused = f"HTTP {result.http_status} {result.error}: {result.detail}"
        stop.set()


async def run(jobs: list[Job], options: Options, report: ReportWriter, progress: bool) -> Summary:
    """Send every job, ``options.concurrency`` at a time, until done or a refused key stops the run.

    After a refusal nothing more is sent; requests already in flight are answered and reported.
    """
    summary = Summary(total=len(jobs))
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    stop = asyncio.Event()
    bar = tqdm(total=len(jobs), unit="file", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=options.url, headers=_headers(options), timeout=options.timeout_s, limits=limits
    ) as client:

        async def worker() -> None:
            while not stop.is_set() and not queue.empty():
                result = await denoise_one(client, queue.get_nowait(), options, stop)
                if result is None:
                    return
                _stop_on_refused_key(result, summary, stop)
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
