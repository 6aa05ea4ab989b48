"""Run the benchmark suite and print its tables (Markdown) and the issue's targets.

    python -m bench.run                       # the full run recorded in docs/BENCHMARKS.md
    python -m bench.run --quick               # a smoke run: a few requests per scenario
    python -m bench.run --set batch_max_size=8 --json out.json

In one run: the direct ONNX Runtime baseline on each case's pixels, then the service as a real
uvicorn process under a closed-loop load (concurrency 1, 4 and 16, fixed request counts) with its
per-phase times read from its own Prometheus metrics, then BM3D and non-local means on the CT
slice. Ratios are only ever taken between numbers of the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from app.inference.registry import LoadedModel, load_registry
from app.observability import PHASES
from app.settings import Settings
from bench.baselines import Timing, bare_session, model_input, time_classical, time_direct, time_side_by_side
from bench.cases import Case, ct_cases, radiograph_case
from bench.loadgen import LoadResult, run_load
from bench.png_encoding import EncodeTiming, time_png_variants
from bench.service import MetricsDelta, running_service, scrape

REPO = Path(__file__).resolve().parents[1]
FULL_SMALL = {1: 30, 4: 60, 16: 96}  # 512 x 512: requests per concurrency
FULL_LARGE = {1: 4, 4: 8, 16: 16}  # 2048 x 2048
QUICK = {1: 2, 4: 4, 16: 16}
BATCH_FOR_BASELINE = 4
# Beyond this the direct baseline and the service ran on a machine of another speed: no verdict.
DRIFT_LIMIT = 0.10


@dataclass
class CaseReport:
    case: Case
    model: str
    direct: list[Timing]
    load: dict[int, LoadResult] = field(default_factory=dict)
    phases: dict[int, dict[str, float]] = field(default_factory=dict)
    batch_size: dict[int, float] = field(default_factory=dict)

    @property
    def best_direct(self) -> Timing:
        return max(self.direct, key=lambda t: t.throughput)


def machine() -> dict[str, object]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory = meminfo.read_text().splitlines()[0].split(":", 1)[1].strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
    )
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "commit": commit.stdout.strip() or "unknown",
    }


def parse_counts(text: str) -> dict[int, int]:
    """'1:30,4:60,16:96' -> {1: 30, 4: 60, 16: 96}."""
    counts = {}
    for part in text.split(","):
        concurrency, requests = part.split(":")
        counts[int(concurrency)] = int(requests)
    return counts


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        settings[name.strip().lower().removeprefix("denoise_")] = value.strip()
    return settings


def direct_timings(model: LoadedModel, case: Case, counts: dict[int, int]) -> list[Timing]:
    array = model_input(model, case.units)
    session = bare_session(model)
    # As many calls as concurrency 1 sends; a run without concurrency 1 still gets a baseline.
    timings = [time_direct(model, session, array, calls=max(counts.get(1, min(counts.values())), 3))]
    if case.units.size <= 1024 * 1024:  # a batch of whole 2048 x 2048 images is not a service call
        calls = max(counts.get(4, 4) // BATCH_FOR_BASELINE, 3)
        timings.append(time_direct(model, session, array, calls=calls, batch=BATCH_FOR_BASELINE))
        one_thread = bare_session(model, threads=1)
        timings.append(time_side_by_side(model, one_thread, array, calls=max(counts.get(4, 4), 4)))
    return timings


def run_service(
    reports: list[CaseReport],
    counts: dict[str, dict[int, int]],
    models_dir: Path,
    settings: dict[str, str],
    log_path: Path,
    max_seconds: float,
) -> None:
    with running_service(models_dir, log_path, settings) as base_url:
        for report in reports:
            upload = report.case.upload
            run_load(base_url, upload, concurrency=1, requests=2)  # warm: first-call allocations
            for concurrency, requests in counts[report.case.name].items():
                before = scrape(base_url)
                result = run_load(base_url, upload, concurrency, requests, max_seconds=max_seconds)
                delta = MetricsDelta(before, scrape(base_url))
                report.load[concurrency] = result
                report.phases[concurrency] = delta.phase_ms(report.model)
                report.batch_size[concurrency] = delta.mean_batch_size(report.model)
                print(
                    f"  {report.case.name} c{concurrency}: {result.ok}/{requests} ok, "
                    f"{result.throughput:.2f} img/s, p50 {result.percentile_ms(50):.0f} ms",
                    flush=True,
                )


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def tables(reports: list[CaseReport], classical: dict[str, Timing], ct_report: CaseReport | None) -> str:
    lines = ["### Direct ONNX Runtime (default session options, whole image per call)", ""]
    lines += [
        "| case | model | way | calls | img/s | p50 ms per call | p95 | p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        for timing in report.direct:
            p50, p95, p99 = (timing.percentile_ms(q) for q in (50, 95, 99))
            lines.append(
                f"| {report.case.name} | {report.model} | {timing.name} | {len(timing.seconds)} "
                f"| {timing.throughput:.2f} | {p50:.0f} | {p95:.0f} | {p99:.0f} |"
            )
    lines += ["", "### The service under load (closed loop, loopback HTTP)", ""]
    lines += [
        "| case | concurrency | requests (errors) | img/s | p50 ms | p95 | p99 | p99/p50 | mean batch "
        "| img/s vs direct batch 1 | vs best direct | p50 - direct p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for report in reports:
        single = report.direct[0]
        for concurrency, result in report.load.items():
            p50, p95, p99 = (result.percentile_ms(q) for q in (50, 95, 99))
            truncated = ", truncated" if result.truncated else ""
            lines.append(
                f"| {report.case.name} | {concurrency} | {result.ok + result.errors} ({result.errors}{truncated}) "
                f"| {result.throughput:.2f} | {_fmt(p50, 0)} | {_fmt(p95, 0)} | {_fmt(p99, 0)} "
                f"| {_fmt(p99 / p50, 2)} | {_fmt(report.batch_size[concurrency], 2)} "
                f"| {result.throughput / single.throughput:.0%} "
                f"| {result.throughput / report.best_direct.throughput:.0%} "
                f"| {_fmt(p50 - single.percentile_ms(50), 0)} |"
            )
    lines += ["", "### Service time per phase (mean ms per request, from the service's /metrics)", ""]
    lines += ["| case | concurrency | " + " | ".join(PHASES) + " |", "| --- | --- |" + " --- |" * len(PHASES)]
    for report in reports:
        for concurrency, phases in report.phases.items():
            cells = " | ".join(_fmt(phases.get(p, math.nan)) for p in PHASES)
            lines.append(f"| {report.case.name} | {concurrency} | {cells} |")
    if classical and ct_report is not None:
        megapixels = ct_report.case.megapixels
        unet = ct_report.direct[0].percentile_ms(50) / 1000 / megapixels
        lines += ["", f"### Classical methods on the same CT slice ({ct_report.case.name})", ""]
        lines += [
            "| method | s per image (median) | s per megapixel | x slower than the model |",
            "| --- | --- | --- | --- |",
        ]
        lines.append(
            f"| {ct_report.model} (direct ONNX Runtime) | {unet * megapixels:.3f} | {unet:.3f} | 1 |"
        )
        for name, timing in classical.items():
            per_mp = timing.percentile_ms(50) / 1000 / megapixels
            lines.append(f"| {name} | {per_mp * megapixels:.3f} | {per_mp:.3f} | {per_mp / unet:.1f} |")
    return "\n".join(lines)


def encoding_table(encodings: dict[str, list[EncodeTiming]]) -> str:
    lines = ["### 16-bit PNG encoding of the output (the service's writer and OpenCV)", ""]
    lines += ["| case | encoder setting | ms (median) | KiB |", "| --- | --- | --- | --- |"]
    for case, timings in encodings.items():
        lines += [f"| {case} | {t.variant} | {t.median_ms:.1f} | {t.kilobytes:.0f} |" for t in timings]
    return "\n".join(lines)


def baseline_drift(report: CaseReport) -> float | None:
    """How far the service's own model call at concurrency 1 (mean ``infer`` phase) lies from the
    direct batch-1 call (p50), as a fraction of the direct call; None without both.

    Both run the same model on the same pixels, so they cost the same on a steady machine (the
    paired runs measure -1 to +2 ms); on this shared VM the direct p50 moved from 132 to 244 ms
    between two runs minutes apart, and a comparison across that says nothing.
    """
    infer = report.phases.get(1, {}).get("infer", math.nan)
    direct = report.direct[0].percentile_ms(50) if report.direct else math.nan
    if not (infer > 0 and direct > 0):
        return None
    return abs(infer - direct) / direct


def _verdict(met: bool, drift: float | None) -> str:
    return "DRIFT" if drift is not None and drift > DRIFT_LIMIT else ("PASS" if met else "FAIL")


def _drift_note(report: CaseReport, drift: float | None) -> str:
    if drift is None or drift <= DRIFT_LIMIT:
        return ""
    infer, direct = report.phases[1]["infer"], report.direct[0].percentile_ms(50)
    return (
        f"; not judged: the service's model call ({infer:.0f} ms) and the direct one ({direct:.0f} ms) "
        f"differ by {drift:.0%}, so the machine's speed changed between them (python -m bench.paired "
        "measures in alternating pairs)"
    )


def targets(
    reports: list[CaseReport], classical: dict[str, Timing], ct_report: CaseReport | None
) -> list[str]:
    checks = []
    for report in reports:
        name, load = report.case.name, report.load
        drift = baseline_drift(report)
        if report.case.megapixels < 0.3:
            if 4 in load:
                ratio = load[4].throughput / report.best_direct.throughput
                single = load[4].throughput / report.direct[0].throughput
                checks.append(
                    f"{_verdict(ratio >= 0.85, drift)} {name}: concurrency 4 throughput {ratio:.0%} of "
                    f"the best direct ONNX Runtime run, {single:.0%} of batch 1 (target >= 85%)"
                    + _drift_note(report, drift)
                )
            if 1 in load:
                overhead = load[1].percentile_ms(50) - report.direct[0].percentile_ms(50)
                checks.append(
                    f"{_verdict(overhead <= 15, drift)} {name}: concurrency 1 median overhead "
                    f"{overhead:.1f} ms (target <= 15 ms)" + _drift_note(report, drift)
                )
        if 16 in load:
            result = load[16]
            tail = result.percentile_ms(99) / result.percentile_ms(50)
            ok = result.errors == 0 and tail <= 4
            checks.append(
                f"{'PASS' if ok else 'FAIL'} {name}: concurrency 16 errors {result.errors}, "
                f"p99/p50 {tail:.2f} (target 0 errors, <= 4)"
            )
    if "bm3d" in classical and ct_report is not None:
        ratio = classical["bm3d"].percentile_ms(50) / ct_report.direct[0].percentile_ms(50)
        checks.append(
            f"{'PASS' if ratio >= 30 else 'FAIL'} {ct_report.model} per megapixel {ratio:.0f}x faster "
            "than BM3D (target >= 30x)"
        )
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few requests per scenario")
    parser.add_argument(
        "--small", type=parse_counts, help="concurrency:requests for 512 x 512, e.g. 1:30,4:60"
    )
    parser.add_argument("--large", type=parse_counts, help="concurrency:requests for 2048 x 2048")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--cases", help="comma list of case names to run (default: all)")
    parser.add_argument("--skip-classical", action="store_true")
    parser.add_argument(
        "--metrics",
        default="none",
        choices=("none", "noref"),
        help="the metrics field sent (default none: the model path alone)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting (DENOISE_NAME); the direct baseline keeps ONNX Runtime's defaults",
    )
    parser.add_argument("--max-seconds", type=float, default=240, help="time bound per scenario")
    parser.add_argument(
        "--baseline-provider",
        choices=("tensorrt", "cuda", "cpu"),
        help="the bare ONNX Runtime baseline's provider (default: every one available, as the service's auto)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    for name in [k for k in os.environ if k.upper().startswith("DENOISE_")]:
        del os.environ[name]  # the run states every setting it changes (--set)
    settings = parse_settings(args.set)
    small = args.small or (QUICK if args.quick else FULL_SMALL)
    large = args.large or (QUICK if args.quick else FULL_LARGE)
    info = machine()
    print(f"machine: {json.dumps(info)}", flush=True)

    cases = ct_cases(args.metrics) + ([] if args.skip_large else [radiograph_case(args.metrics)])
    if args.cases:
        cases = [c for c in cases if c.name in args.cases.split(",")]
    counts = {c.name: (large if c.megapixels > 1 else small) for c in cases}
    baseline_providers = ("auto",) if args.baseline_provider is None else tuple(
        dict.fromkeys((args.baseline_provider, "cpu"))
    )
    registry = load_registry(Settings(models_dir=args.models_dir, providers=baseline_providers))
    reports = []
    for case in cases:
        model = registry.resolve(case.modality, None)  # type: ignore[arg-type]
        print(f"direct onnxruntime: {case.name} ({model.card.id})", flush=True)
        reports.append(CaseReport(case, model.card.id, direct_timings(model, case, counts[case.name])))
    del registry  # its sessions' memory is not needed while the service runs

    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "service.log"
        print("service:", flush=True)
        run_service(reports, counts, args.models_dir, settings, log_path, args.max_seconds)

    ct_report = next((r for r in reports if r.case.name == "ct-512-png"), None)
    classical: dict[str, Timing] = {}
    if not args.skip_classical and ct_report is not None:
        print("classical methods:", flush=True)
        unit = model_input(
            load_registry(Settings(models_dir=args.models_dir)).resolve("ct", None), ct_report.case.units
        )[0, 0]
        classical = time_classical(unit, {"bm3d": 1 if args.quick else 3, "nlm_skimage": 3})

    encodings: dict[str, list[EncodeTiming]] = {}
    for case in cases:
        if case.upload.name.endswith(".png"):
            stored = cv2.imdecode(np.frombuffer(case.upload.content, np.uint8), cv2.IMREAD_UNCHANGED)
            encodings[case.name] = time_png_variants(stored)

    print()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; onnxruntime {info['onnxruntime']} "
        f"({', '.join(info['providers'])}); commit {info['commit']}; {info['date_utc']} UTC"
    )  # type: ignore[arg-type]
    print(f"Settings: {settings or 'defaults'}; metrics={args.metrics}")
    print()
    print(tables(reports, classical, ct_report))
    print()
    print(encoding_table(encodings))
    print()
    checks = targets(reports, classical, ct_report)
    print("\n".join(checks))
    if args.json is not None:
        results = _as_json(info, settings, args.metrics, reports, classical, checks)
        results["png_encoding"] = {case: [vars(t) for t in ts] for case, ts in encodings.items()}
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def _as_json(
    info: dict[str, object],
    settings: dict[str, str],
    metrics: str,
    reports: list[CaseReport],
    classical: dict[str, Timing],
    checks: list[str],
) -> dict[str, object]:
    def timing(t: Timing) -> dict[str, object]:
        return {"name": t.name, "images_per_call": t.images_per_call, "seconds": t.seconds, "wall_s": t.wall_s}

    return {
        "machine": info,
        "settings": settings,
        "metrics": metrics,
        "cases": [
            {
                "case": r.case.name,
                "model": r.model,
                "direct": [timing(t) for t in r.direct],
                "service": {
                    str(c): {
                        "latencies_s": result.latencies_s,
                        "statuses": result.statuses,
                        "wall_s": result.wall_s,
                        "truncated": result.truncated,
                        "phases_ms": r.phases[c],
                        "mean_batch_size": r.batch_size[c],
                    }
                    for c, result in r.load.items()
                },
            }
            for r in reports
        ],
        "classical": {name: timing(t) for name, t in classical.items()},
        "targets": checks,
    }


if __name__ == "__main__":
    raise SystemExit(main())
