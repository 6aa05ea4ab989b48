"""denoise-batch against the real service (a uvicorn process) and against a scripted fake server
that fails on purpose: mirrored outputs, report, resume, retries only where a retry can help."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from client.batch import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, find_jobs, is_complete, main
from tests.files import dicom_file, png_bytes, read_png
from tests.tiny_models import write_model_set
from tests.uvicorn_server import REPO, free_port, uvicorn_server

FAST = ["--no-progress", "--backoff", "0.01", "--max-backoff", "0.05"]


def ct_png(seed: int) -> bytes:
    noisy = np.random.default_rng(seed).normal(1064, 25, (48, 40))
    return png_bytes(np.clip(noisy, 0, 65535).astype(np.uint16))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = write_model_set(tmp_path_factory.mktemp("models"))
    with uvicorn_server(models, tmp_path_factory.mktemp("batch") / "server.log") as base_url:
        yield base_url


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    (root / "patient-a" / "series-1").mkdir(parents=True)
    (root / "patient-b").mkdir()
    (root / "patient-a" / "series-1" / "slice-1.png").write_bytes(ct_png(1))
    (root / "patient-a" / "series-1" / "slice-2.png").write_bytes(ct_png(2))
    (root / "patient-b" / "IM0001").write_bytes(dicom_file("CT_small.dcm"))  # no suffix: sniffed
    (root / "patient-b" / "notes.txt").write_text("not an image")
    (root / "patient-b" / "broken.png").write_bytes(ct_png(3)[:60])  # truncated: the server says 400
    return root


def read_report(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {Path(row["input"]).name: row for row in csv.DictReader(handle)}


def test_folder_tree_mirrored_with_report_and_exit_code(
    service: str, scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [str(scans), "--out", str(out), "--url", service, "--modality", "ct", "--concurrency", "3", *FAST]
    )
    assert code == EXIT_FAILED  # the broken file
    slice_1 = read_png((out / "patient-a" / "series-1" / "slice-1.png").read_bytes())
    assert slice_1.dtype == np.uint16 and slice_1.shape == (48, 40)
    assert (out / "patient-b" / "IM0001").read_bytes()[128:132] == b"DICM"
    assert not (out / "patient-b" / "notes.txt").exists() and not (out / "patient-b" / "broken.png").exists()

    rows = read_report(out / "denoise-report.csv")
    assert set(rows) == {"slice-1.png", "slice-2.png", "IM0001", "broken.png"}
    ok = rows["slice-1.png"]
    assert ok["status"] == "ok" and ok["http_status"] == "200" and ok["model"] == "ct-unet"
    assert ok["execution_provider"] == "CPUExecutionProvider" and float(ok["latency_ms"]) > 0
    assert "noise_sigma_wavelet_mad" in json.loads(ok["metrics"])["noref"]
    broken = rows["broken.png"]
    assert (broken["status"], broken["http_status"], broken["error"], broken["attempts"]) == (
        "failed",
        "400",
        "invalid_image",
        "1",  # a 4xx is never retried
    )
    summary = capsys.readouterr().err
    assert "4 file(s): 3 denoised, 0 skipped (already done), 1 failed" in summary
    assert "invalid_image x1" in summary


def test_resume_skips_complete_outputs_and_redoes_partial_ones(
    service: str, scans: Path, tmp_path: Path
) -> None:
    (scans / "patient-b" / "broken.png").unlink()
    out = tmp_path / "out"
    args = [str(scans), "--out", str(out), "--url", service, "--modality", "ct", *FAST]
    assert main([*args, "--report", str(tmp_path / "first.jsonl")]) == EXIT_OK
    truncated = out / "patient-a" / "series-1" / "slice-2.png"
    truncated.write_bytes(truncated.read_bytes()[:-20])  # as if a copy had been cut short
    (out / "patient-b" / "IM0001.part").write_bytes(b"left over by a killed run")

    assert main([*args, "--report", str(tmp_path / "second.jsonl")]) == EXIT_OK
    rows = [json.loads(line) for line in (tmp_path / "second.jsonl").read_text().splitlines()]
    status = {Path(row["input"]).name: row["status"] for row in rows}
    assert status == {"slice-1.png": "skipped", "slice-2.png": "ok", "IM0001": "skipped"}
    assert is_complete(truncated)


def test_list_input_and_a_4xx_for_a_png_without_modality(service: str, scans: Path, tmp_path: Path) -> None:
    listing = tmp_path / "files.txt"
    listing.write_text(
        f"{scans / 'patient-a' / 'series-1' / 'slice-1.png'}\n\n{scans / 'patient-b' / 'IM0001'}\n"
    )
    out = tmp_path / "out"
    assert main(["--list", str(listing), "--out", str(out), "--url", service, *FAST]) == EXIT_FAILED
    rows = read_report(out / "denoise-report.csv")
    assert rows["slice-1.png"]["error"] == "modality_required" and rows["slice-1.png"]["attempts"] == "1"
    assert rows["IM0001"]["status"] == "ok" and (out / "IM0001").is_file()  # named alone: lands by name


class ScriptedServer(BaseHTTPRequestHandler):
    """Answers POST /v1/denoise with the statuses in ``script`` in turn, then 200."""

    script: ClassVar[list[int]] = []
    posts: ClassVar[list[dict[str, str]]] = []
    readiness: ClassVar[int] = 200

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # /readyz
        if self.readiness == 200:
            self._send(200, {"status": "ready"})
        else:
            self._send(self.readiness, {"error": "not_ready", "detail": "No model is loaded."})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        self.posts.append(dict(self.headers))
        status = self.script.pop(0) if self.script else 200
        if status == 200:
            body = {
                "image_base64": base64.b64encode(ct_png(9)).decode(),
                "model": "ct-fake",
                "modality": "ct",
                "metrics": {},
                "timings_ms": {"infer": 1.0},
                "request_id": "r",
                "execution_provider": "CPUExecutionProvider",
            }
            self._send(200, body)
        else:
            self._send(status, {"error": f"scripted_{status}", "detail": "scripted"})

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if status == 503:
            self.send_header("retry-after", "0")
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def scripted() -> Iterator[str]:
    ScriptedServer.script, ScriptedServer.posts, ScriptedServer.readiness = [], [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def one_file(tmp_path: Path) -> Path:
    source = tmp_path / "in" / "a.png"
    source.parent.mkdir()
    source.write_bytes(ct_png(4))
    return source


@pytest.mark.parametrize(
    ("script", "status", "attempts", "code"),
    [
        ([503, 502], "ok", 3, EXIT_OK),  # 5xx: retried until it works
        ([500, 500, 500], "failed", 3, EXIT_FAILED),  # --retries 2: three attempts, then given up
        ([429], "failed", 1, EXIT_FAILED),  # 4xx: never retried
        ([422], "failed", 1, EXIT_FAILED),
    ],
)
def test_retries_on_5xx_only(
    scripted: str, tmp_path: Path, script: list[int], status: str, attempts: int, code: int
) -> None:
    ScriptedServer.script = list(script)
    source = one_file(tmp_path)
    report = tmp_path / "report.jsonl"
    args = [str(source.parent), "--out", str(tmp_path / "out"), "--url", scripted, "--retries", "2"]
    assert main([*args, "--report", str(report), "--api-key", "s3cret", *FAST]) == code
    (row,) = [json.loads(line) for line in report.read_text().splitlines()]
    assert (row["status"], row["attempts"]) == (status, attempts)
    assert len(ScriptedServer.posts) == attempts
    assert ScriptedServer.posts[0]["authorization"] == "Bearer s3cret"
    assert (tmp_path / "out" / "a.png").exists() == (status == "ok")


def test_connection_errors_are_retried_then_reported_as_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = one_file(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert (
        main([str(source), "--out", str(tmp_path / "out"), "--url", url, "--retries", "1", *FAST])
        == EXIT_UNREACHABLE
    )
    assert "does not answer (ConnectError)" in capsys.readouterr().err


def test_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out"), *FAST]) == EXIT_USAGE
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "out"), *FAST]) == EXIT_USAGE
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "out")])


def test_an_output_folder_inside_the_input_is_not_walked(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "a.png").write_bytes(ct_png(5))
    (tmp_path / "out" / "sub" / "a.png").write_bytes(ct_png(5))
    jobs = find_jobs([tmp_path], tmp_path / "out")
    assert [(job.source.name, job.target) for job in jobs] == [
        ("a.png", (tmp_path / "out" / "a.png").resolve())
    ]


def test_the_client_needs_neither_the_server_nor_its_dependencies() -> None:
    probe = (
        "import sys, client.batch; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'fastapi', 'numpy', 'onnxruntime', 'pydicom'}); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


def test_two_inputs_for_one_output_stop_the_run_before_anything_is_sent(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("day-1", "day-2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(ct_png(6))
    listing = tmp_path / "files.txt"
    listing.write_text(f"{tmp_path / 'day-1' / 'a.png'}\n{tmp_path / 'day-2' / 'a.png'}\n")
    assert main(["--list", str(listing), "--out", str(tmp_path / "out"), "--url", scripted, *FAST]) == EXIT_USAGE
    assert "would all be written to" in capsys.readouterr().err
    assert ScriptedServer.posts == [] and not (tmp_path / "out").exists()
    # Their common folder mirrors the tree: both land, apart.
    assert main([str(tmp_path / "day-1"), str(tmp_path / "day-2"), "--out", str(tmp_path / "out"),
                 "--url", scripted, "--dry-run", *FAST]) == EXIT_USAGE
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--url", scripted, "--modality", "ct",
                 *FAST]) == EXIT_OK
    assert (tmp_path / "out" / "day-1" / "a.png").is_file() and (tmp_path / "out" / "day-2" / "a.png").is_file()


def test_a_refused_key_stops_at_once(scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{name}.png").write_bytes(ct_png(7))
    ScriptedServer.script = [401] * 10
    args = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--url", scripted, "--concurrency", "1"]
    assert main([*args, "--api-key", "wrong-key-0000000000", *FAST]) == EXIT_UNREACHABLE
    assert len(ScriptedServer.posts) == 1  # not file after file
    assert "refused the API key" in capsys.readouterr().err


def test_a_service_that_is_not_ready_gets_no_files(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ScriptedServer.readiness = 503
    source = one_file(tmp_path)
    assert main([str(source), "--out", str(tmp_path / "out"), "--url", scripted, "--retries", "1", *FAST]) == (
        EXIT_UNREACHABLE
    )
    assert "not ready, HTTP 503: No model is loaded." in capsys.readouterr().err
    assert ScriptedServer.posts == []
    ScriptedServer.readiness = 401
    assert main([str(source), "--out", str(tmp_path / "out"), "--url", scripted, *FAST]) == EXIT_UNREACHABLE
    assert "API key was refused" in capsys.readouterr().err


def test_reports_are_appended_and_dry_run_sends_nothing(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = one_file(tmp_path)
    out = tmp_path / "out"
    assert main([str(source.parent), "--out", str(out), "--url", scripted, "--dry-run", *FAST]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"{source} -> {(out / 'a.png').resolve()}"
    assert ScriptedServer.posts == []
    for _ in range(2):
        assert main([str(source.parent), "--out", str(out), "--url", scripted, "--overwrite", *FAST]) == EXIT_OK
    lines = (out / "denoise-report.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("input,output,status")  # one header, both runs


def test_without_the_client_extra_it_says_what_to_install() -> None:
    probe = "import sys; sys.modules['httpx'] = None; import client.batch"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and "pip install 'medical-denoise[client]'" in result.stderr
