"""client.report, directly: the run id, the report's format, which reports can be appended to, the
rows ``ReportWriter`` writes (CSV with one header, or JSON lines) and the summary's text."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from client.report import REPORT_FIELDS, ReportWriter, Result, Summary, report_kind, run_id, unappendable

RUN = "2024-05-01T10:00:00.000Z"


def ok(name: str = "a.png", latency_ms: float = 100.0, bytes_in: int = 1_000_000) -> Result:
    return Result(input=name, output=f"out/{name}", status="ok", http_status=200, latency_ms=latency_ms,
                  bytes_in=bytes_in, metrics={"noref": {"sigma": 1.5}})


def failed(error: str) -> Result:
    return Result(input="b.png", output="out/b.png", status="failed", http_status=400, error=error)


# --- run_id and report_kind ----------------------------------------------------------------------


def test_the_run_id_is_the_utc_time_to_the_millisecond() -> None:
    before = datetime.now(timezone.utc)
    value = run_id()
    assert value.endswith("Z") and len(value) == len("2024-05-01T10:00:00.000Z")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert before - timedelta(milliseconds=1) <= parsed <= datetime.now(timezone.utc)


@pytest.mark.parametrize(
    ("name", "chosen", "kind"),
    [
        ("report.csv", None, "csv"),
        ("report.jsonl", None, "jsonl"),
        ("report.json", None, "jsonl"),
        ("report", None, "csv"),
        ("report.txt", None, "csv"),
        ("report.csv", "jsonl", "jsonl"),
        ("report.jsonl", "csv", "csv"),
    ],
)
def test_the_report_kind_is_as_chosen_else_by_suffix(name: str, chosen: str | None, kind: str) -> None:
    assert report_kind(Path(name), chosen) == kind


# --- unappendable --------------------------------------------------------------------------------


def test_a_new_or_empty_report_can_be_appended_to(tmp_path: Path) -> None:
    assert unappendable(tmp_path / "new.csv", "csv") is None
    (tmp_path / "empty.csv").write_text("")
    assert unappendable(tmp_path / "empty.csv", "csv") is None


def test_a_csv_with_this_client_s_header_can_be_appended_to(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    report.write_text(",".join(REPORT_FIELDS) + "\r\nrow\r\n")
    assert unappendable(report, "csv") is None


@pytest.mark.parametrize("header", ["patient,score", ",".join(REPORT_FIELDS[1:])])  # another tool's; no run column
def test_a_csv_with_other_columns_is_refused(tmp_path: Path, header: str) -> None:
    report = tmp_path / "report.csv"
    report.write_text(header + "\n")
    assert unappendable(report, "csv") == f"the report {report} has other columns than this client's; name another --report"


def test_json_lines_are_appended_to_whatever_the_file_holds(tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    report.write_text("patient,score\n")
    assert unappendable(report, "jsonl") is None


def test_a_folder_is_no_report(tmp_path: Path) -> None:
    assert unappendable(tmp_path, "csv") == f"the report {tmp_path} is a folder"
    assert unappendable(tmp_path, "jsonl") == f"the report {tmp_path} is a folder"


# --- ReportWriter --------------------------------------------------------------------------------


def test_a_new_csv_gets_one_header_and_its_rows(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    with report.open("a", newline="", encoding="utf-8") as handle:
        writer = ReportWriter(handle, "csv", RUN)
        writer.write(ok())
        writer.write(failed("invalid_image"))
    with report.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == REPORT_FIELDS and len(rows) == 3
    first = dict(zip(REPORT_FIELDS, rows[1], strict=True))
    assert (first["run"], first["input"], first["status"], first["http_status"]) == (RUN, "a.png", "ok", "200")
    assert first["metrics"] == '{"noref":{"sigma":1.5}}'  # compact JSON in one cell
    second = dict(zip(REPORT_FIELDS, rows[2], strict=True))
    assert (second["error"], second["metrics"], second["latency_ms"]) == ("invalid_image", "", "")


def test_appending_to_a_csv_adds_rows_without_a_second_header(tmp_path: Path) -> None:
    report = tmp_path / "report.csv"
    for run in ("run-1", "run-2"):
        with report.open("a", newline="", encoding="utf-8") as handle:
            ReportWriter(handle, "csv", run).write(ok())
    with report.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["run-1", "run-2"]
    assert unappendable(report, "csv") is None  # still this client's report


def test_json_lines_hold_one_object_per_row_with_its_run(tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    with report.open("a", encoding="utf-8") as handle:
        writer = ReportWriter(handle, "jsonl", RUN)
        writer.write(ok())
        writer.write(failed("timeout"))
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert list(rows[0]) == list(REPORT_FIELDS)
    assert rows[0]["run"] == RUN and rows[0]["metrics"] == {"noref": {"sigma": 1.5}}  # an object, not text
    assert rows[1]["error"] == "timeout" and rows[1]["latency_ms"] is None


@pytest.mark.parametrize(("kind", "name"), [("csv", "r.csv"), ("jsonl", "r.jsonl")])
def test_each_row_is_on_disk_as_soon_as_it_is_written(tmp_path: Path, kind: str, name: str) -> None:
    report = tmp_path / name
    with report.open("a", newline="", encoding="utf-8") as handle:
        ReportWriter(handle, kind, RUN).write(ok("flushed.png"))
        assert "flushed.png" in report.read_text()  # an interrupted run still leaves it


# --- Summary -------------------------------------------------------------------------------------


def test_the_counts_rate_and_throughput() -> None:
    results = [ok("a.png"), ok("b.png"), Result("c.png", "out/c.png", "skipped"), failed("invalid_image")]
    summary = Summary(total=4, results=results, seconds=2.0)
    assert (summary.count("ok"), summary.count("skipped"), summary.count("failed")) == (2, 1, 1)
    first_line = summary.text().splitlines()[0]
    assert first_line == "4 file(s): 2 denoised, 1 skipped (already done), 1 failed in 2.0 s (1.00 files/s, 1.00 MB/s in)"


def test_no_time_gives_a_zero_rate() -> None:
    assert "(0.00 files/s, 0.00 MB/s in)" in Summary(total=0, seconds=0.0).text()


def test_latency_percentiles_of_the_denoised_files_only() -> None:
    results = [ok(f"{index}.png", latency_ms=float(index)) for index in range(1, 21)]
    results.append(Result("slow.png", "out/slow.png", "failed", latency_ms=10_000.0, error="timeout"))
    lines = Summary(total=21, results=results, seconds=1.0).text().splitlines()
    assert lines[1] == "latency per file: p50 11 ms, p95 20 ms"


def test_no_latency_line_without_a_timed_denoised_file() -> None:
    text = Summary(total=1, results=[failed("invalid_image")], seconds=1.0).text()
    assert "latency" not in text


def test_failures_are_counted_by_code_in_order() -> None:
    results = [failed("timeout"), failed("invalid_image"), failed("timeout"), ok()]
    lines = Summary(total=4, results=results, seconds=1.0).text().splitlines()
    assert lines[-1] == "failures: invalid_image x1, timeout x2"


def test_a_refused_key_says_how_many_files_were_not_sent() -> None:
    summary = Summary(total=5, results=[failed("api_key_invalid")], seconds=1.0,
                      key_refused="HTTP 401 api_key_invalid: wrong key")
    last = summary.text().splitlines()[-1]
    assert last == ("stopped: the service refused the API key (HTTP 401 api_key_invalid: wrong key); "
                    "4 file(s) not sent; check --api-key or DENOISE_API_KEY")


def test_a_clean_run_has_no_failure_or_stop_lines() -> None:
    text = Summary(total=1, results=[ok()], seconds=1.0).text()
    assert "failures" not in text and "stopped" not in text
    assert len(text.splitlines()) == 2
