"""The benchmark suite's own logic, and one smoke run of it against tiny models (no timing checked)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bench.baselines import Timing
from bench.cases import Case, ct_cases, radiograph_case
from bench.loadgen import LoadResult, Upload, percentile_ms, run_load
from bench.paired import main as paired_main
from bench.run import CaseReport, main, parse_counts, parse_settings, targets
from bench.service import MetricsDelta, parse_metrics

METRICS_BEFORE = """
# HELP denoise_phase_seconds Time per processing phase of a denoise request.
denoise_phase_seconds_sum{phase="infer",modality="ct",model="ct-unet"} 1.0
denoise_phase_seconds_sum{phase="encode",modality="ct",model="ct-unet"} 0.5
denoise_request_seconds_count{modality="ct",model="ct-unet",status="200"} 10.0
"""
METRICS_AFTER = """
denoise_phase_seconds_sum{phase="infer",modality="ct",model="ct-unet"} 3.0
denoise_phase_seconds_sum{phase="encode",modality="ct",model="ct-unet"} 0.7
denoise_request_seconds_count{modality="ct",model="ct-unet",status="200"} 20.0
denoise_request_seconds_count{modality="ct",model="ct-unet",status="503"} 5.0
denoise_batch_size_sum{model="ct-unet"} 12.0
denoise_batch_size_count{model="ct-unet"} 4.0
"""


def test_phase_times_are_per_request_differences_of_the_service_metrics() -> None:
    delta = MetricsDelta(parse_metrics(METRICS_BEFORE), parse_metrics(METRICS_AFTER))
    assert delta.phase_ms("ct-unet") == pytest.approx({"infer": 200.0, "encode": 20.0})
    assert delta.mean_batch_size("ct-unet") == 3.0
    assert np.isnan(delta.mean_batch_size("mr-unet"))


def test_load_statistics() -> None:
    result = LoadResult(4, [0.1, 0.2, 0.3, 0.4], {200: 4, 503: 1}, wall_s=2.0, truncated=False)
    assert (result.ok, result.errors, result.throughput) == (4, 1, 2.0)
    assert result.percentile_ms(50) == pytest.approx(250.0)
    assert np.isnan(percentile_ms([], 99))


class _Echo(BaseHTTPRequestHandler):
    """200 with the request's form back for /v1/denoise; 503 for every third request."""

    protocol_version = "HTTP/1.1"
    count = 0
    bodies: list[bytes] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - the standard library's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).count += 1
            type(self).bodies.append(body)
            status = 503 if type(self).count % 3 == 0 else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    _Echo.count, _Echo.bodies = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("client", ["httpx", "stdlib"])
def test_both_load_generators_send_the_form_and_count_every_answer(echo_url: str, client: str) -> None:
    upload = Upload("ct.dcm", b"DICM-bytes", {"metrics": "none"})
    result = run_load(echo_url, upload, 3, 9, client=client)  # type: ignore[arg-type]
    assert (result.ok, result.errors, result.statuses) == (6, 3, {200: 6, 503: 3})
    assert len(result.latencies_s) == 6 and not result.truncated and result.wall_s > 0
    assert all(b'name="file"; filename="ct.dcm"' in body and b"DICM-bytes" in body for body in _Echo.bodies)
    assert all(b'name="metrics"' in body for body in _Echo.bodies)


def test_command_line_values() -> None:
    assert parse_counts("1:30,4:60") == {1: 30, 4: 60}
    assert parse_settings(["DENOISE_BATCH_MAX_SIZE=8", "ort_spinning = false"]) == {
        "batch_max_size": "8",
        "ort_spinning": "false",
    }


def test_the_cases_are_the_documented_images() -> None:
    png, dicom = ct_cases("none")
    assert png.units.shape == dicom.units.shape == (512, 512)
    inside = dicom.units >= -1024  # HU + 1024 PNG = the DICOM's HU, except the -3024 padding
    np.testing.assert_allclose(png.units[inside], dicom.units[inside], atol=0.5)
    assert np.all(png.units[~inside] == -1024)
    radiograph = radiograph_case("none", size=2048)
    assert radiograph.units.shape == (2048, 2048) and radiograph.upload.fields["modality"] == "xray"


@pytest.mark.slow
def test_a_smoke_run_reports_every_scenario(models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--models-dir", str(models_dir), "--skip-large", "--skip-classical", "--small", "1:2,4:4"]
    assert main([*argv, "--cases", "ct-512-png", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    assert case["case"] == "ct-512-png" and set(case["service"]) == {"1", "4"}
    assert case["service"]["4"]["statuses"] == {"200": 4}
    assert case["service"]["4"]["phases_ms"]["infer"] > 0
    assert any("concurrency 4 throughput" in line for line in result["targets"])
    # The direct ways the service is judged against: batch 1, batch 4, one-thread side by side.
    ways = {way["name"]: way for way in case["direct"]}
    side_by_side = next(way for name, way in ways.items() if "side by side" in name)
    assert len(ways) == 3 and len(side_by_side["seconds"]) == 4
    # Overlapping calls: the wall time is shorter than their sum, never longer than it.
    assert 0 < side_by_side["wall_s"] <= sum(side_by_side["seconds"]) * 1.05


def test_throughput_of_calls_side_by_side_counts_the_wall_time() -> None:
    assert Timing("one after another", 1, [0.5, 0.5]).throughput == 2.0
    assert Timing("side by side", 1, [0.5, 0.5], wall_s=0.5).throughput == 4.0


def _table(lines: list[str]) -> dict[str, str]:
    header, _, row = lines
    return dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | "), strict=True))


@pytest.mark.slow
def test_the_paired_run_reports_each_sides_median_the_service_phases_and_rounds(
    models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arguments = ["--models-dir", str(models_dir), "--pairs", "3", "--cases", "ct-512-dicom"]
    assert paired_main([*arguments, "--rounds", "2", "--round-requests", "4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    cells, rounds = _table(lines[:3]), _table(lines[3:])
    assert cells["case"] == "ct-512-dicom" and cells["pairs"] == "3"
    assert float(cells["direct p50 ms"]) > 0 and float(cells["service p50 ms"]) > 0
    float(cells["p50 of (service - direct) ms"])  # a number, whatever its sign on a busy machine
    # From each request's Server-Timing: the phases, and the request less its own model call.
    assert float(cells["infer ms"]) > 0 and float(cells["decode ms"]) > 0
    assert 0 < float(cells["p50 of (service - infer) ms"]) < float(cells["service p50 ms"])
    assert rounds["case"] == "ct-512-dicom" and rounds["rounds"] == "2"
    assert float(rounds["service img/s"]) > 0 and float(rounds["direct batch 4 img/s"]) > 0
    assert float(rounds["direct side by side img/s"]) > 0
    lowest, median, highest = (
        float(rounds[k].rstrip("%"))
        for k in ("lowest round", "service / best direct (median of rounds)", "highest round")
    )
    assert 0 < lowest <= median <= highest


@pytest.mark.slow
def test_the_paired_run_with_httpx_as_the_client(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--models-dir", str(models_dir), "--pairs", "2", "--cases", "ct-512-png", "--rounds", "0"]
    assert paired_main([*arguments, "--client", "httpx"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(lines) == 3 and _table(lines)["case"] == "ct-512-png"


def _report(direct_s: float, infer_ms: float, service_s: float) -> CaseReport:
    case = Case("ct-512-png", "ct", Upload("ct.png", b""), np.zeros((512, 512)))
    report = CaseReport(case, "ct-unet", [Timing("batch 1", 1, [direct_s] * 5)])
    report.load[1] = LoadResult(1, [service_s] * 5, {200: 5}, wall_s=5 * service_s, truncated=False)
    report.phases[1] = {"infer": infer_ms}
    return report


def test_targets_are_judged_only_when_the_direct_call_and_the_service_agree_on_the_model() -> None:
    steady = targets([_report(0.130, 131.0, 0.140)], {}, None)
    assert steady == ["PASS ct-512-png: concurrency 1 median overhead 10.0 ms (target <= 15 ms)"]
    assert targets([_report(0.130, 131.0, 0.150)], {}, None)[0].startswith("FAIL")
    # The direct call ran on a slower machine than the service's own model call: no verdict.
    (drifted,) = targets([_report(0.244, 171.0, 0.184)], {}, None)
    assert drifted.startswith("DRIFT") and "differ by 30%" in drifted
