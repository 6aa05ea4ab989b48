"""The service must run where PyTorch is not installed: importing it must not pull torch in."""

from __future__ import annotations

import subprocess
import sys


def test_service_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import app.main\n"
        "from fastapi.testclient import TestClient\n"
        "with TestClient(app.main.create_app()) as client: client.get('/readyz')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
