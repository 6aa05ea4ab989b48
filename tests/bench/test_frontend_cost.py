"""The front-end cost bench runs two real processes on tiny models and prints both columns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import frontend_cost


def test_cpu_seconds_of_this_process_grow_with_work() -> None:
    import os

    before = frontend_cost.cpu_seconds(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert frontend_cost.cpu_seconds(os.getpid()) > before


def test_a_small_run_reports_the_front_end_and_the_backend(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frontend_cost.main(["--requests", "2", "--models", str(models_dir)])
    out = capsys.readouterr().out
    assert re.search(r"ct-512-png\s+[\d.]+\s+[\d.]+\s+[\d.]+", out)
    assert re.search(r"ct-512-dicom\s+[\d.]+\s+[\d.]+\s+[\d.]+", out)
