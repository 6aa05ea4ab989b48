"""denoise-batch: send a folder tree (or a list) of PNG and DICOM files to the service, concurrently.

    denoise-batch scans/ --out denoised/ --url http://gpu-node:8000 --concurrency 8

* Inputs: files and folders (walked recursively), or ``--list FILE`` (one path a line, ``-`` for
  stdin). A file is taken when its bytes say PNG or DICOM (``DICM`` at byte 128), whatever its
  name, so archives of extension-less DICOM files work.
* Outputs mirror the inputs under ``--out``: a folder's files keep their path relative to that
  folder; files named one by one (on the command line or in ``--list``) keep theirs relative to
  the deepest folder that holds them all, so ``a/x.png`` and ``b/x.png`` land apart. Two inputs
  that would still land on one output (two named folders each with an ``x.png``; names compared
  without case, as a case-insensitive disk would), or an output that another needs as its folder,
  stop the run before anything is sent, naming both. Each output is written to ``<name>.part``
  and renamed when complete, so an existing output is a complete one; a second run skips it
  (``--overwrite`` redoes it).
* Before the first file, ``/readyz`` must answer 200. A 503 (no model loaded, a stopped worker)
  stops the run with the service's reasons; only no answer yet and a gateway's 502-504 are
  retried, as the service loads its models before it listens. ``--dry-run`` lists each file and
  its output and sends nothing (it needs neither the service nor the client extra).
* At most ``--concurrency`` requests are in flight. 5xx answers and connection errors are retried
  with exponential backoff and jitter (``Retry-After`` honoured); 4xx answers are not retried:
  the file itself is the problem and the report says why. A refused API key (401, 403) stops the
  run at once: no request starts after it, and the summary names the status and error code.
* The report (``--report``, CSV or JSON lines by its suffix or ``--report-format``) has one row
  per file: run, status, HTTP status, error, model, provider, attempts, latency and metrics. Each
  run appends its rows, ``run`` being its start time (UTC), so earlier runs' rows stay. A summary
  goes to stderr at the end.
* Exit status: 0 when every file was denoised or skipped, 1 when some failed, 2 for a usage
  error, nothing to do, clashing outputs, an unusable report or the client extra missing, 3 when
  the server cannot be reached, is not ready or refuses the key.

Needs only httpx and tqdm (``pip install 'medical-denoise[client]'``), imported only to send;
never imports the server.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from client.inputs import Job, find_jobs, is_complete, output_conflicts
from client.report import DEFAULT_REPORT_NAME, ReportWriter, report_kind, run_id, unappendable

if TYPE_CHECKING:
    from client.send import Options

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "find_jobs", "is_complete", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
CLIENT_EXTRA = "medical-denoise[client]"  # pyproject.toml: the project's name and its client extra
SHOWN_CLASHES = 10

EPILOG = f"""\
outputs:
  A folder's files keep their path relative to that folder. Files named one by one (here or in
  --list) keep theirs relative to the deepest folder that holds them all. Two inputs on one
  output (names compared without case), or an output another needs as its folder, stop the run
  before anything is sent.

report:
  Each run appends one row per file to --report (default <out>/{DEFAULT_REPORT_NAME}; CSV, or
  JSON lines for .jsonl), its "run" column the run's start time (UTC): earlier runs' rows stay.

exit status:
  0 all denoised or skipped, 1 some failed, 2 usage error, nothing to do, clashing outputs, an
  unusable report or the client extra missing, 3 the service does not answer, is not ready
  (/readyz) or refuses the API key.

Sending needs httpx and tqdm: pip install '{CLIENT_EXTRA}'
"""


def _say(message: str) -> None:
    print(f"denoise-batch: {message}", file=sys.stderr)


def load_sender() -> ModuleType | None:
    """client.send, or None after saying what to install when httpx or tqdm is missing.

    The console script is installed by every install of the project, the client extra only on
    request: a bare ModuleNotFoundError would tell the user nothing they can act on.
    """
    try:
        send = importlib.import_module("client.send")  # by sys.modules, not the package's attribute
    except ModuleNotFoundError as missing:
        if (missing.name or "").partition(".")[0] == "client":
            raise  # our own module missing is a broken install, not a missing extra
        _say(
            f"{missing.name} is not installed; sending needs the project's client extra:\n"
            f"    pip install '{CLIENT_EXTRA}'\n"
            "(in a source checkout: pip install -e '.[client]')"
        )
        return None
    return send


def _read_list(source: str) -> list[Path]:
    handle = sys.stdin if source == "-" else open(source, encoding="utf-8")  # noqa: SIM115
    with handle:
        return [Path(line.strip()) for line in handle if line.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="denoise-batch",
        description="Denoise many PNG and DICOM files with the service, into a mirrored folder tree.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", type=Path, help="files and folders (walked recursively)")
    parser.add_argument("--list", dest="list_file", help="file with one input path a line ('-': stdin)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (the inputs mirrored: see below)")
    parser.add_argument("--url", default=os.environ.get("DENOISE_URL", "http://localhost:8000"))
    parser.add_argument("--api-key", default=os.environ.get("DENOISE_API_KEY"), help="sent as a Bearer token")
    parser.add_argument(
        "--modality", help="the modality the service should denoise PNGs as (ct, mr, xray, or another it serves); required for PNG; DICOM says its own"
    )
    parser.add_argument("--model", help="model id or architecture (default: the modality's default model)")
    parser.add_argument("--metrics", choices=("none", "noref"), default="noref")
    parser.add_argument(
        "--report", type=Path, help=f"appended to by each run (default: <out>/{DEFAULT_REPORT_NAME})"
    )
    parser.add_argument("--report-format", choices=("csv", "jsonl"), help="default: from the report's suffix")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--retries", type=int, default=5, help="retries of 5xx and connection errors")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay, doubled each time (s)")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest retry delay (s)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dry-run", action="store_true", help="list each file and where its result goes; send nothing"
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        parser.error("--concurrency must be >= 1, --retries and --backoff >= 0, --timeout > 0")
    if not args.inputs and not args.list_file:
        parser.error("name input files or folders, or --list")
    return args


def _report_path(args: argparse.Namespace) -> Path:
    return args.report or args.out / DEFAULT_REPORT_NAME


def _refused_plan(jobs: list[Job], report: Path, kind: str) -> bool:
    """Whether the outputs or the report cannot be written as planned; says why when so."""
    clashes = output_conflicts(jobs, report)
    for clash in clashes[:SHOWN_CLASHES]:
        _say(clash)
    if len(clashes) > SHOWN_CLASHES:
        _say(f"... and {len(clashes) - SHOWN_CLASHES} more clash(es)")
    if clashes:
        _say("nothing sent; name the folder that holds them (its tree is mirrored), or another --report")
        return True
    why = unappendable(report, kind)
    if why is not None:
        _say(f"{why}; nothing sent")
    return why is not None


def plan(args: argparse.Namespace) -> list[Job] | None:
    """The jobs, checked so that every answer can be kept; None (having said why) when they cannot."""
    inputs = [*args.inputs, *(_read_list(args.list_file) if args.list_file else [])]
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        _say(f"not found: {', '.join(missing[:5])}")
        return None
    jobs = find_jobs(inputs, args.out)
    if not jobs:
        _say("no PNG or DICOM file among the inputs")
        return None
    report = _report_path(args)
    if _refused_plan(jobs, report, report_kind(report, args.report_format)):
        return None
    return jobs


def dry_run(jobs: list[Job], args: argparse.Namespace) -> int:
    """Each file and its output on stdout, a line on stderr; nothing is sent or written."""
    done = 0
    for job in jobs:
        skipped = not args.overwrite and is_complete(job.target)
        done += skipped
        print(f"{job.source} -> {job.target}" + ("  (complete: would be skipped)" if skipped else ""))
    _say(
        f"dry run: {len(jobs)} file(s) for {args.url}, {done} already done; "
        f"report: {_report_path(args)} (appended); nothing sent"
    )
    return EXIT_OK


def _options(send: ModuleType, args: argparse.Namespace) -> Options:
    return send.Options(
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


def send_all(send: ModuleType, jobs: list[Job], args: argparse.Namespace) -> int:
    """Readiness first, then every file; the summary on stderr and the exit status."""
    options = _options(send, args)
    why = asyncio.run(send.ready(options))
    if why is not None:
        _say(f"the service at {args.url.rstrip('/')}: {why}")
        _say("nothing sent")
        return EXIT_UNREACHABLE
    report = _report_path(args)
    report.parent.mkdir(parents=True, exist_ok=True)
    with report.open("a", newline="", encoding="utf-8") as handle:
        writer = ReportWriter(handle, report_kind(report, args.report_format), run_id())
        summary = asyncio.run(send.run(jobs, options, writer, not args.no_progress))
    print(summary.text(), file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    if summary.key_refused:
        return EXIT_UNREACHABLE
    return EXIT_FAILED if summary.count("failed") else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:  # needs neither the service nor the client extra
        jobs = plan(args)
        return EXIT_USAGE if jobs is None else dry_run(jobs, args)
    # Before walking the inputs, which can take minutes: a missing extra is told at once.
    send = load_sender()
    if send is None:
        return EXIT_USAGE
    jobs = plan(args)
    return EXIT_USAGE if jobs is None else send_all(send, jobs, args)


if __name__ == "__main__":
    sys.exit(main())
