"""denoise-batch against the real service (a uvicorn process) and against a scripted fake server
that fails on purpose: mirrored outputs, report, resume, retries only where a retry can help, a
service that is not ready or refuses the key, and an install without the client extra."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from client.batch import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, find_jobs, is_complete, main
from client.inputs import output_conflicts
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
    # Files named one by one mirror from the deepest folder holding them all (scans/ here).
    assert rows["IM0001"]["status"] == "ok" and (out / "patient-b" / "IM0001").is_file()
    assert rows["slice-1.png"]["output"] == str((out / "patient-a" / "series-1" / "slice-1.png").resolve())


class ScriptedServer(BaseHTTPRequestHandler):
    """Answers POST /v1/denoise with the statuses in ``script`` in turn, then 200."""

    script: ClassVar[list[int]] = []
    posts: ClassVar[list[dict[str, str]]] = []
    gets: ClassVar[list[str]] = []
    readiness: ClassVar[int] = 200
    readiness_script: ClassVar[list[int]] = []  # /readyz's first answers, before ``readiness``
    unserved: ClassVar[list[dict[str, str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # /readyz
        self.gets.append(self.path)
        status = self.readiness_script.pop(0) if self.readiness_script else self.readiness
        if status == 200:
            self._send(200, {"status": "ready"})
        elif status == 503:  # as app/api/routes/health.py answers it
            body = {"error": "not_ready", "detail": "No model is loaded.", "unserved": self.unserved}
            self._send(503, body)
        else:
            self._send(status, {"error": f"scripted_{status}", "detail": "scripted"})

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
    ScriptedServer.script, ScriptedServer.posts, ScriptedServer.gets = [], [], []
    ScriptedServer.readiness, ScriptedServer.readiness_script, ScriptedServer.unserved = 200, [], []
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
        "import sys, client.batch, client.send; "
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
    out = tmp_path / "out"
    # Each named folder is its own root: both a.png land on out/a.png, and the run is refused.
    for extra in (["--dry-run"], []):
        code = main([str(tmp_path / "day-1"), str(tmp_path / "day-2"), "--out", str(out), "--url", scripted,
                     "--modality", "ct", *extra, *FAST])
        assert code == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"{tmp_path / 'day-1' / 'a.png'} and {tmp_path / 'day-2' / 'a.png'} would both be written to" in err
    assert ScriptedServer.gets == [] and ScriptedServer.posts == [] and not out.exists()
    # Their common folder mirrors the tree: both land, apart.
    assert main([str(tmp_path), "--out", str(out), "--url", scripted, "--modality", "ct", *FAST]) == EXIT_OK
    assert (out / "day-1" / "a.png").is_file() and (out / "day-2" / "a.png").is_file()


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
    assert len(lines) == 3 and lines[0].startswith("run,input,output,status")  # one header, both runs


# --- The review's findings: each test below fails on the client before its fix ----------------


def write_pngs(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(ct_png(8))


def test_listed_files_of_one_name_mirror_from_their_common_folder(scripted: str, tmp_path: Path) -> None:
    names = ("day-1/a.png", "day-2/a.png", "day-2/night/a.png")
    write_pngs(tmp_path / "in", *names)
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{tmp_path / 'in' / name}\n" for name in names))
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    args = ["--list", str(listing), "--out", str(out), "--url", scripted, "--modality", "ct"]
    assert main([*args, "--report", str(report), *FAST]) == EXIT_OK
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert len({row["output"] for row in rows}) == 3 and len(ScriptedServer.posts) == 3
    for name in names:  # mirrored from in/, the deepest folder holding them all
        assert (out / name).is_file()


@pytest.mark.parametrize(
    ("first", "second", "says"),
    [
        ("scan.png", "scan.png", "would both be written to"),  # one name in two named folders
        ("Scan.png", "scan.png", "would both be written to"),  # one file on a case-insensitive disk
        ("x", "x/y.png", "the folder"),  # a file where the other needs a folder
    ],
)
def test_clashing_outputs_are_refused_naming_both(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str, second: str, says: str
) -> None:
    write_pngs(tmp_path / "r1", first)
    write_pngs(tmp_path / "r2", second)
    out = tmp_path / "out"
    args = [str(tmp_path / "r1"), str(tmp_path / "r2"), "--out", str(out), "--url", scripted, "--modality", "ct"]
    assert main([*args, *FAST]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert says in err and str(tmp_path / "r1" / first) in err and str(tmp_path / "r2" / second) in err
    assert "nothing sent" in err
    assert ScriptedServer.gets == [] and ScriptedServer.posts == [] and not out.exists()


def test_an_output_on_the_report_is_refused(tmp_path: Path) -> None:
    write_pngs(tmp_path / "in", "denoise-report.csv")  # a PNG by its bytes, whatever its name
    jobs = find_jobs([tmp_path / "in"], tmp_path / "out")
    (clash,) = output_conflicts(jobs, tmp_path / "out" / "denoise-report.csv")
    assert "would be written to the report" in clash


def test_a_service_without_models_stops_the_run_at_once_with_its_reasons(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ScriptedServer.readiness = 503
    ScriptedServer.unserved = [{"path": "ct/unet", "model_id": "ct-unet", "reason": "model.onnx is missing"}]
    source = one_file(tmp_path)
    args = [str(source), "--out", str(tmp_path / "out"), "--url", scripted, "--retries", "3", *FAST]
    assert main(args) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert "not ready, HTTP 503: No model is loaded." in err and "ct/unet: model.onnx is missing" in err
    assert "nothing sent" in err
    assert ScriptedServer.gets == ["/readyz"]  # a 503 is the service's verdict: not retried
    assert ScriptedServer.posts == [] and not (tmp_path / "out").exists()


def test_a_gateway_error_at_start_up_is_retried_and_a_wrong_url_is_not(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = one_file(tmp_path)
    args = [str(source), "--out", str(tmp_path / "out"), "--url", scripted, "--modality", "ct", "--retries", "3"]
    args += FAST
    ScriptedServer.readiness_script = [502, 504]  # a gateway whose service still loads its models
    assert main(args) == EXIT_OK
    assert ScriptedServer.gets == ["/readyz"] * 3 and len(ScriptedServer.posts) == 1
    ScriptedServer.gets, ScriptedServer.readiness = [], 404
    assert main([*args, "--overwrite"]) == EXIT_UNREACHABLE
    assert "is --url the denoising service?" in capsys.readouterr().err
    assert ScriptedServer.gets == ["/readyz"] and len(ScriptedServer.posts) == 1


def test_the_real_service_without_models_gets_no_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "models").mkdir()
    source = one_file(tmp_path)
    with uvicorn_server(tmp_path / "models", tmp_path / "server.log") as url:
        started = time.monotonic()
        args = [str(source), "--out", str(tmp_path / "out"), "--url", url, "--modality", "ct", "--no-progress"]
        assert main([*args, "--retries", "3", "--backoff", "10", "--max-backoff", "10"]) == EXIT_UNREACHABLE
        elapsed = time.monotonic() - started
    assert "not ready, HTTP 503: No model is loaded" in capsys.readouterr().err
    assert elapsed < 4  # one retry would have waited 5 s at least
    assert not (tmp_path / "out").exists()


def test_a_refused_key_stops_every_worker_and_names_the_refusal(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_pngs(tmp_path / "in", "a.png", "b.png", "c.png", "d.png")
    # Two in flight: one gets a 500 and waits to retry, the other a 401. The retry must not go out.
    ScriptedServer.script = [500, 401]
    report = tmp_path / "report.jsonl"
    args = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--url", scripted, "--modality", "ct"]
    slow_retry = ["--no-progress", "--backoff", "4", "--max-backoff", "4", "--concurrency", "2"]
    started = time.monotonic()
    assert main([*args, "--report", str(report), *slow_retry]) == EXIT_UNREACHABLE
    assert time.monotonic() - started < 1.5  # the retry's wait (2 s at least) was cut short
    assert len(ScriptedServer.posts) == 2
    err = capsys.readouterr().err
    assert "refused the API key (HTTP 401 scripted_401: scripted)" in err and "2 file(s) not sent" in err
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(row["http_status"] for row in rows) == [401, 500]
    assert not (tmp_path / "out").exists()


def test_every_run_keeps_its_rows_under_its_own_run(scripted: str, tmp_path: Path) -> None:
    source = one_file(tmp_path)
    out = tmp_path / "out"
    for report in (out / "denoise-report.csv", tmp_path / "runs.jsonl"):
        args = [str(source.parent), "--out", str(out), "--url", scripted, "--report", str(report), *FAST]
        for _ in range(2):
            assert main([*args, "--modality", "ct", "--overwrite"]) == EXIT_OK
        if report.suffix == ".csv":
            with report.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = [json.loads(line) for line in report.read_text().splitlines()]
        assert [row["status"] for row in rows] == ["ok", "ok"]
        assert len({row["run"] for row in rows}) == 2  # the two runs told apart


def test_a_csv_report_with_other_columns_is_not_appended_to(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = one_file(tmp_path)
    report = tmp_path / "other.csv"
    report.write_text("patient,score\nx,1\n")
    args = [str(source), "--out", str(tmp_path / "out"), "--url", scripted, "--report", str(report), *FAST]
    assert main(args) == EXIT_USAGE
    assert "has other columns" in capsys.readouterr().err
    assert report.read_text() == "patient,score\nx,1\n"
    assert ScriptedServer.gets == [] and ScriptedServer.posts == []


def test_dry_run_lists_outputs_and_touches_nothing(
    scripted: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_pngs(tmp_path / "in", "day-1/a.png", "day-2/a.png")
    listing = tmp_path / "files.txt"
    listing.write_text(f"{tmp_path / 'in' / 'day-1' / 'a.png'}\n{tmp_path / 'in' / 'day-2' / 'a.png'}\n")
    out = tmp_path / "out"
    write_pngs(out, "day-2/a.png")  # a complete output from an earlier run
    monkeypatch.setitem(sys.modules, "httpx", None)  # neither the service nor the extra is needed
    monkeypatch.delitem(sys.modules, "client.send", raising=False)
    assert main(["--list", str(listing), "--out", str(out), "--url", scripted, "--dry-run", *FAST]) == EXIT_OK
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [
        f"{tmp_path / 'in' / 'day-1' / 'a.png'} -> {(out / 'day-1' / 'a.png').resolve()}",
        f"{tmp_path / 'in' / 'day-2' / 'a.png'} -> {(out / 'day-2' / 'a.png').resolve()}"
        "  (complete: would be skipped)",
    ]
    assert "2 file(s)" in printed.err and "1 already done" in printed.err and "nothing sent" in printed.err
    assert ScriptedServer.gets == [] and ScriptedServer.posts == []
    assert sorted(p.name for p in out.rglob("*")) == ["a.png", "day-2"]  # no report, no day-1


@pytest.mark.parametrize("module", ["httpx", "tqdm"])
def test_without_the_client_extra_main_says_what_to_install(
    module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if never installed
    monkeypatch.delitem(sys.modules, "client.send", raising=False)
    source = one_file(tmp_path)
    assert main([str(source), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{module} is not installed" in err and "pip install 'medical-denoise[client]'" in err
    assert not (tmp_path / "out").exists()


ENTRY_POINT = """
from importlib.metadata import entry_points
(script,) = entry_points(group="console_scripts", name="denoise-batch")
sys.exit(script.load()())
"""
RUN_MODULE = "import runpy; runpy.run_module('client.batch', run_name='__main__', alter_sys=True)"


# httpx is also the service's own dependency now (the DICOM node), so a plain install lacks only tqdm.
@pytest.mark.parametrize("module", ["httpx", "tqdm"])
@pytest.mark.parametrize("launch", [ENTRY_POINT, RUN_MODULE], ids=["console-script", "python-m"])
def test_the_installed_command_without_the_extra_exits_2_with_the_pip_line(
    launch: str, module: str, tmp_path: Path
) -> None:
    source = one_file(tmp_path)
    probe = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"  # what an install without the client extra looks like
        f"sys.argv = ['denoise-batch', {str(source)!r}, '--out', {str(tmp_path / 'out')!r}]\n" + launch
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == EXIT_USAGE == 2, result.stderr
    assert f"{module} is not installed" in result.stderr
    assert "pip install 'medical-denoise[client]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_files_named_alone_mirror_from_the_deepest_folder_holding_the_images(tmp_path: Path) -> None:
    write_pngs(tmp_path / "in", "a/x.png", "a/deep/y.png")
    (tmp_path / "in" / "b").mkdir()
    (tmp_path / "in" / "b" / "notes.txt").write_text("not an image: it does not move the root")
    out = tmp_path / "out"
    inputs = [tmp_path / "in" / name for name in ("a/x.png", "a/deep/y.png", "b/notes.txt")]
    targets = [job.target for job in find_jobs(inputs, out)]
    assert targets == [(out / "x.png").resolve(), (out / "deep" / "y.png").resolve()]
    assert [job.target for job in find_jobs(inputs[1:2], out)] == [(out / "y.png").resolve()]  # alone: by name
