"""What the remote call costs against local inference, at 1 and 4 clients, 512 x 512 CT.

    python -m bench.remote_overhead                 # 40 requests at c1, 80 at c4, 2 rounds
    python -m bench.remote_overhead --rounds 1 --requests 20

Three service processes (python -m app.server, the committed models): a local instance, a backend
serving the models on /v2 (standing in for Triton), and a front end with DENOISE_INFERENCE_URL
pointing at it. The same 512 x 512 CT PNG is sent to the local instance and to the front end, in
alternating runs: at concurrency 1 the median latency of each and their difference (the remote
call's overhead per request), at concurrency 4 the throughput of each and their ratio. On one
machine the front end and the backend share its cores with each other (and the idle local
instance), so this is the protocol's and the extra hop's cost, not a two-node deployment's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.cases import ct_cases
from bench.loadgen import run_load
from tests.uvicorn_server import uvicorn_server

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.remote_overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=40, help="requests per run at concurrency 1 (twice that at 4)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    args = parser.parse_args(argv)
    upload = next(case for case in ct_cases("none") if case.name == "ct-512-png").upload
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        with uvicorn_server(args.models, folder / "local.log") as local, \
                uvicorn_server(args.models, folder / "backend.log") as backend, \
                uvicorn_server(args.models, folder / "front.log", inference_url=backend) as front:
            for url in (local, front):  # warm both paths
                run_load(url, upload, 1, 3)
            for round_number in range(1, args.rounds + 1):
                c1 = {name: run_load(url, upload, 1, args.requests) for name, url in (("local", local), ("remote", front))}
                c4 = {name: run_load(url, upload, 4, 2 * args.requests) for name, url in (("local", local), ("remote", front))}
                for result in (*c1.values(), *c4.values()):
                    assert result.errors == 0, result.statuses
                local_ms = statistics.median(c1["local"].latencies_s) * 1000
                remote_ms = statistics.median(c1["remote"].latencies_s) * 1000
                print(f"round {round_number}: c1 median local {local_ms:.1f} ms, remote {remote_ms:.1f} ms "
                      f"(+{remote_ms - local_ms:.1f} ms); c4 throughput local {c4['local'].throughput:.2f}/s, "
                      f"remote {c4['remote'].throughput:.2f}/s (ratio {c4['remote'].throughput / c4['local'].throughput:.2f})",
                      flush=True)


if __name__ == "__main__":
    main()
