"""The remote-overhead bench runs three real processes on tiny models and prints its figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import remote_overhead


def test_a_small_run_reports_latency_and_throughput_of_both(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    remote_overhead.main(["--requests", "2", "--rounds", "1", "--models", str(models_dir)])
    out = capsys.readouterr().out
    assert re.search(r"round 1: c1 median local [\d.]+ ms, remote [\d.]+ ms \(\+-?[\d.]+ ms\); c4 throughput "
                     r"local [\d.]+/s, remote [\d.]+/s \(ratio [\d.]+\)", out)
