"""What a front end costs per slice when the model runs elsewhere: the CPU seconds a service with
``DENOISE_INFERENCE_URL`` spends on everything but the model call, per 512 x 512 CT slice.

    python -m bench.frontend_cost                  # 60 requests per case
    python -m bench.frontend_cost --requests 200

Two service processes (python -m app.server, the committed models): a backend serving the models
on ``/v2`` (standing in for Triton), and a front end sending every model call to it. The cases are
the benchmark's 512 x 512 CT slice as a 16-bit PNG and as DICOM, sent one at a time. CPU time is
read from each process's ``/proc/<pid>/stat`` (user + system) before and after, so it counts the
process's own work whatever else the machine does; wall time per request is printed beside it.
A site sizes its CPU pool from the front end's figure and its GPUs from the backend's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.cases import ct_cases
from tests.uvicorn_server import uvicorn_server

REPO = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and the threads it has (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.frontend_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    args = parser.parse_args(argv)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        with uvicorn_server(args.models, folder / "backend.log",
                            started=lambda p: processes.__setitem__("backend", p)) as backend, \
                uvicorn_server(args.models, folder / "front.log", inference_url=backend,
                               started=lambda p: processes.__setitem__("front", p)) as front:
            print(f"{'case':<14} {'front end CPU s / slice':>24} {'backend CPU s / slice':>22} {'wall s / request':>17}")
            with httpx.Client(base_url=front, timeout=120) as client:
                for case in ct_cases("none"):
                    files = {"file": (case.upload.name, case.upload.content)}

                    def send() -> None:
                        client.post("/v1/denoise", files=files, data=case.upload.fields).raise_for_status()

                    for _ in range(3):  # warm: first calls set up sessions and arenas
                        send()
                    before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
                    started = time.perf_counter()
                    for _ in range(args.requests):
                        send()
                    wall = (time.perf_counter() - started) / args.requests
                    after = {name: cpu_seconds(p.pid) for name, p in processes.items()}
                    per = {name: (after[name] - before[name]) / args.requests for name in processes}
                    print(f"{case.name:<14} {per['front']:>24.4f} {per['backend']:>22.4f} {wall:>17.4f}", flush=True)


if __name__ == "__main__":
    main()
