"""The node throughput bench runs end to end on tiny models and prints its ratio."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import node_throughput
from tests.e2e.pacs import require_pacs_tools


def test_a_small_run_reports_both_rates_and_the_ratio(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_pacs_tools()  # storescu; skipped without dcmtk unless CI_REQUIRE_PACS=1
    node_throughput.main(["--slices", "3", "--rounds", "1", "--models", str(models_dir)])
    out = capsys.readouterr().out
    assert re.search(r"round 1: one by one [\d.]+ slices/s, node [\d.]+ slices/s, ratio [\d.]+", out)
    assert "median ratio (node / one by one) over 1 rounds of 3" in out
