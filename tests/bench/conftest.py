from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import write_model_set


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_set(tmp_path_factory.mktemp("models"))
