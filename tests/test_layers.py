"""The import contracts in pyproject.toml ([tool.importlinter]) hold: the service's layers import
only downwards, imaging and inference do not import each other, the service never imports
training, the benchmarks or the client, and the client imports nothing from the service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept_with_no_exceptions_listed() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout
    assert "ignore_imports" not in (REPO / "pyproject.toml").read_text()


def test_a_wrong_import_breaks_the_layers() -> None:
    """The contract is live: with a module of imaging importing the pipeline, it fails."""
    probe = REPO / "app" / "imaging" / "_layer_probe.py"
    probe.write_text("from app import pipeline  # noqa: F401\n")
    try:
        result = lint_imports()
    finally:
        probe.unlink()
    assert result.returncode != 0 and "app.imaging._layer_probe -> app.pipeline" in result.stdout
