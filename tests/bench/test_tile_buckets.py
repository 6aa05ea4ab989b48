"""The tile-bucket bench runs both tilings on tiny models and prints its figures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench import tile_buckets


def test_a_small_run_reports_shapes_throughput_and_the_skipped_quality(
    models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tile_buckets.main(["--rounds", "1", "--models", str(models_dir), "--prepared", str(tmp_path / "none")])
    out = capsys.readouterr().out
    shapes = {mode: int(count) for mode, count in re.findall(r"^(exact|buckets): (\d+) input shapes over 20", out, re.MULTILINE)}
    assert shapes["buckets"] <= 4 < shapes["exact"]
    assert re.search(r"round 1: 4 clients, mixed sizes: exact [\d.]+ images/s, buckets [\d.]+ images/s "
                     r"\(ratio [\d.]+\)", out)
    assert "quality skipped: no prepared data" in out
