from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.tiny_models import write_model_set


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model_set(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def settings(models_dir: Path) -> Settings:
    # Small tiles so modest test images already go through the tiling path.
    return Settings(
        models_dir=models_dir, intra_op_threads=1, tile_size=128, max_upload_bytes=8 * 1024 * 1024
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:  # runs the lifespan: the registry is loaded
        yield test_client
