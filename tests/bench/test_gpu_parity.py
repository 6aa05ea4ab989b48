"""bench.gpu_parity without a GPU: it reports the fallback it got, and its parity holds on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu_parity import main
from tests.tiny_models import write_model_set


def test_without_a_gpu_the_fallback_is_reported_and_fails_the_check(tmp_path: Path) -> None:
    models = write_model_set(tmp_path / "models")
    assert main(["--models-dir", str(models), "--provider", "cuda", "--json", str(tmp_path / "p.json")]) == 1
    rows = json.loads((tmp_path / "p.json").read_text())
    assert {row["model"] for row in rows} == {"ct-autoencoder", "ct-unet", "mr-unet", "xray-unet"}
    assert all(row["provider"] == "CPUExecutionProvider" and row["got_it"] is False for row in rows)
    assert main(["--models-dir", str(models), "--provider", "cpu", "--json", str(tmp_path / "cpu.json")]) == 0
    assert all(row["max_abs_diff_vs_cpu"] == 0.0 for row in json.loads((tmp_path / "cpu.json").read_text()))


def test_the_gpu_check_script_runs_each_step_on_each_provider() -> None:
    script = (Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh").read_text()
    assert 'ensure_venv "gpu,dev"' in script and "bench.gpu_parity --provider tensorrt --provider cuda" in script
    assert "for provider in cuda tensorrt" in script and '--baseline-provider "$provider"' in script
    assert '--set "require_provider=$provider"' in script and "16:" in script
