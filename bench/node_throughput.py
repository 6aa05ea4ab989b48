"""Series throughput through the DICOM node against the same slices sent to /v1/denoise one by one.

    python -m bench.node_throughput                 # 40 slices of a 512 x 512 CT, 3 rounds
    python -m bench.node_throughput --slices 100 --rounds 1

One service process (python -m app.server, the committed models) with the node on: its Storage
SCP on a loopback port, delivering by STOW-RS to a receiver in this process (an HTTP server that
reads each body whole and answers 200, as a PACS's DICOMweb endpoint would, so delivery costs
what a fast PACS costs). Each round, alternately:

* one by one: the series' slices POSTed to /v1/denoise in order, each answer awaited before the
  next request, as a site's script would do it; slices per second;
* the node: the same slices sent by dcmtk's storescu in one association, timed from the first
  byte sent until the receiver has every derived instance; slices per second.

Printed: both rates per round and their ratio (node / one by one), and the median ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.uvicorn_server import free_port, uvicorn_server

REPO = Path(__file__).resolve().parents[1]
CT_FILE = "693_UNCR.dcm"  # a real 512 x 512 head CT slice
STORESCU = "/usr/bin/storescu"  # dcmtk's, not pynetdicom's script of the same name


class _Receiver(BaseHTTPRequestHandler):
    received: list[int] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        with self.lock:
            self.received.append(length)
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/dicom+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def write_series(folder: Path, count: int) -> list[Path]:
    """``count`` copies of the real CT slice as one new series (new UIDs, Instance Numbers 1..)."""
    source = pydicom.dcmread(get_testdata_file(CT_FILE))
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, count + 1):
        source.StudyInstanceUID, source.SeriesInstanceUID = study, series
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = number
        path = folder / f"{number:04d}.dcm"
        source.save_as(path)
        paths.append(path)
    return paths


def one_by_one(base_url: str, files: list[Path]) -> float:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        started = time.perf_counter()
        for path in files:
            response = client.post("/v1/denoise", files={"file": (path.name, path.read_bytes())},
                                   data={"metrics": "none"})
            response.raise_for_status()
        return len(files) / (time.perf_counter() - started)


def through_node(port: int, files: list[Path], timeout: float = 600.0) -> float:
    with _Receiver.lock:
        _Receiver.received.clear()
    started = time.perf_counter()
    sent = subprocess.run([STORESCU, "-aet", "BENCH", "-aec", "DENOISE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)
    if sent.returncode != 0:
        raise RuntimeError(f"storescu failed: {sent.stderr[-2000:]}")
    while True:
        with _Receiver.lock:
            if len(_Receiver.received) >= len(files):
                break
        if time.perf_counter() - started > timeout:
            raise RuntimeError("the node did not deliver every slice in time")
        time.sleep(0.01)
    return len(files) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.node_throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", type=Path, default=REPO / "models")
    args = parser.parse_args(argv)

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        port = free_port()
        settings = {"forward_to": f"http://127.0.0.1:{receiver.server_port}/dicom-web",
                    "spool_dir": str(folder / "spool"), "dicom_port": str(port), "dicom_host": "127.0.0.1"}
        ratios = []
        with uvicorn_server(args.models, folder / "service.log", **settings) as base_url:
            for round_number in range(1, args.rounds + 1):
                # New UIDs each round: the node would take a resend as done already.
                direct = one_by_one(base_url, write_series(folder / f"a{round_number}", args.slices))
                node = through_node(port, write_series(folder / f"b{round_number}", args.slices))
                ratios.append(node / direct)
                print(f"round {round_number}: one by one {direct:.2f} slices/s, node {node:.2f} slices/s, "
                      f"ratio {node / direct:.2f}", flush=True)
        print(f"median ratio (node / one by one) over {args.rounds} rounds of {args.slices} 512 x 512 CT "
              f"slices: {statistics.median(ratios):.2f}")
    receiver.shutdown()


if __name__ == "__main__":
    main()
